"""A coffea processor that scores events with a model bundle, in process and on the server, and compares.

1. **In process**: ``mlaas4hep.coffea.BundleWrapper`` runs the bundle (its
   preprocessing, then its ONNX model) on the NanoEvents of each chunk.
2. **On the server**: coffea's own ``triton_wrapper`` sends the model's input
   tensors to ``mlaas4hep serve`` over Triton's gRPC API
   (``triton+grpc://HOST:PORT/MODEL/VERSION``, no TLS here); the tensors are
   made from the events by the same bundle (``BundleWrapper.tensors``), the model
   runs on the server.

Both scores are histogrammed per dataset, and the script fails (exit 1) unless
they agree to 1e-5 for every event. Run it as::

    mlaas4hep generate --out data --events 20000
    mlaas4hep train examples/train.yaml --out runs/tth --epochs 1
    mkdir -p models/tth && cp -r runs/tth/bundle models/tth/1
    mlaas4hep serve --repo models --grpc-port 8001 &
    python examples/coffea_processor.py --bundle runs/tth/bundle --server 127.0.0.1:8001 \\
        data/ttH_0.root data/ttbar_0.root

``--workers N`` runs the chunks on N processes (coffea's ``FuturesExecutor``:
both wrappers are pickled and open their ONNX session or gRPC client in each
worker); ``--dask`` builds dask-awkward NanoEvents instead (needs
``dask-awkward``) and computes both scores lazily.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from pathlib import Path

import awkward as ak
import hist
import numpy as np
from coffea import processor
from coffea.ml_tools.triton_wrapper import triton_wrapper
from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

from mlaas4hep.coffea import BundleWrapper

TOLERANCE = 1e-5


class ServerWrapper(triton_wrapper):
    """The bundle's model on the server: the tensors are made here, with the bundle's preprocessing."""

    def __init__(self, url: str, local: BundleWrapper):
        super().__init__(url, client_args={"ssl": False})
        self.local = local
        self.output = local.spec.output_name  # the model's output tensor, e.g. "probabilities"

    def prepare_awkward(self, events):
        return [], {"output_list": [self.output], "input_dict": self.local.tensors(events)}


class ScoreProcessor(processor.ProcessorABC):
    """Per dataset: the events, both scores' histograms, and the largest difference between them."""

    def __init__(self, local: BundleWrapper, server: ServerWrapper):
        self.local, self.server = local, server

    def scores(self, events):
        """The probability of the bundle's label 1 (ttH) per event: in process, and from the server."""
        here = self.local(events)[:, 0]
        there = self.server(events)[self.server.output][:, 0]
        return here, there

    def process(self, events):
        return {events.metadata["dataset"]: summary(*self.scores(events))}

    def postprocess(self, accumulator):
        return accumulator


def summary(here, there) -> dict:
    """What a chunk adds to its dataset's result (coffea adds the chunks' results up)."""
    h = hist.Hist.new.StrCat(["in process", "server"], name="where").Reg(20, 0, 1, name="score").Double()
    h.fill(where="in process", score=here)
    h.fill(where="server", score=there)
    # summed over chunks, the largest differences make an upper bound of the largest difference
    return {"events": len(here), "scores": h, "max_diff": float(ak.max(abs(here - there), initial=0.0))}


def run_chunks(files: dict[str, list[str]], proc: ScoreProcessor, workers: int, chunk_size: int) -> dict:
    """coffea's Runner over chunks of ``chunk_size`` entries (virtual NanoEvents), on ``workers`` processes."""
    executor = processor.FuturesExecutor(workers=workers) if workers > 1 else processor.IterativeExecutor()
    runner = processor.Runner(executor=executor, schema=NanoAODSchema, chunksize=chunk_size)
    return runner({name: {"files": {f: "Events" for f in fs}} for name, fs in files.items()}, proc)


def run_dask(files: dict[str, list[str]], proc: ScoreProcessor) -> dict:
    """NanoEvents as dask-awkward arrays (``mode="dask"``): both scores of every dataset computed at once."""
    import dask

    lazy = {}
    for name, fs in files.items():
        events = NanoEventsFactory.from_root(
            {f: "Events" for f in fs}, schemaclass=NanoAODSchema, mode="dask"
        )
        lazy[name] = proc.scores(events.events())
    (scores,) = dask.compute(lazy)
    return {name: summary(*pair) for name, pair in scores.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "files", nargs="+", help="NanoAOD files; the dataset of each is its name up to the last '_'"
    )
    p.add_argument("--bundle", required=True, help="the bundle directory (runs/tth/bundle)")
    p.add_argument("--server", required=True, help="the server's gRPC address, HOST:PORT")
    p.add_argument("--model", default="tth", help="the model's name on the server (default tth)")
    p.add_argument("--version", default="1", help="the model's version on the server (default 1)")
    p.add_argument("--workers", type=int, default=1, help="processes for the chunks (default 1)")
    p.add_argument("--chunk-size", type=int, default=10_000, help="entries per chunk (default 10000)")
    p.add_argument("--dask", action="store_true", help="dask-awkward NanoEvents (needs dask-awkward)")
    args = p.parse_args(argv)

    local = BundleWrapper(args.bundle)
    server = ServerWrapper(f"triton+grpc://{args.server}/{args.model}/{args.version}", local)
    files: dict[str, list[str]] = {}
    for f in args.files:
        files.setdefault(Path(f).stem.rpartition("_")[0] or Path(f).stem, []).append(f)
    proc = ScoreProcessor(local, server)
    # coffea's progress bars go to standard error, the table below to standard output
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore", RuntimeWarning)  # NanoAODSchema: cross-references the sample lacks
        out = run_dask(files, proc) if args.dask else run_chunks(files, proc, args.workers, args.chunk_size)

    worst = 0.0
    print(f"{'dataset':<10} {'events':>8} {'mean in process':>16} {'mean on server':>15} {'max |diff|':>11}")
    for name, res in sorted(out.items()):
        h = res["scores"]
        centers = h.axes["score"].centers
        means = [np.average(centers, weights=h[w, :].values()) for w in ("in process", "server")]
        worst = max(worst, float(res["max_diff"]))
        print(
            f"{name:<10} {int(res['events']):>8} {means[0]:>16.4f} {means[1]:>15.4f} {float(res['max_diff']):>11.2e}"
        )
    if worst > TOLERANCE:
        print(f"in-process and server scores differ by up to {worst:.2e} (> {TOLERANCE:g})", file=sys.stderr)
        return 1
    print(
        f"in-process and server scores agree for every event (max |difference| {worst:.1e} <= {TOLERANCE:g})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
