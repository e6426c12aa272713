"""``python -m mlaas4hep.serve --repo DIR ...``: the same as ``mlaas4hep serve``."""

import argparse
import sys

from .cli import add_serve_commands

parser = argparse.ArgumentParser(prog="python -m mlaas4hep.serve")
sub = parser.add_subparsers(dest="command")
add_serve_commands(sub)
args = parser.parse_args(["serve", *sys.argv[1:]])
sys.exit(args.func(args))
