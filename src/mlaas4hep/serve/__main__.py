"""``python -m mlaas4hep.serve --repo DIR ...``: the same as ``mlaas4hep serve``."""

import argparse
import sys

from ..terminal import EXIT_STATUS_HELP, ArgumentParser, run
from .cli import SERVE_HELP, add_serve_arguments

parser = ArgumentParser(
    prog="python -m mlaas4hep.serve",
    description=SERVE_HELP,
    epilog=EXIT_STATUS_HELP,
    formatter_class=argparse.RawDescriptionHelpFormatter,
)
parser.add_argument("--debug", action="store_true", help="print the traceback of an error")
add_serve_arguments(parser)
args = parser.parse_args()
sys.exit(run(args.func, args, debug=args.debug))
