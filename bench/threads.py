"""PyTorch's CPU threads for the reference networks: one per core, one, or sleeping waits.

    python bench/threads.py [--events 60000] [--repeats 2] [--nets tth_mlp,tth_transformer]

Each figure is a fresh process training the model file of ``mlaas4hep.MODELS_DIR`` on random
inputs of its real shapes (the flat ttH features, or the jets/event groups of
``examples/train_objects.yaml``), batch 1024, Adam: events/s of the best and the median of 3
epochs after a warm-up epoch. Three settings, alternating: PyTorch's default (one thread per
core), ``torch.set_num_threads(1)`` (``training.threads: 1``), and the default threads with
``OMP_WAIT_POLICY=PASSIVE`` (OpenMP threads sleep instead of spinning while they wait). Not a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

SETTINGS = {
    "default": ({}, None),
    "threads=1": ({}, 1),
    "OMP_WAIT_POLICY=PASSIVE": ({"OMP_WAIT_POLICY": "PASSIVE"}, None),
}


def child(net: str, events: int, threads: int | None) -> None:
    """One measurement in this process; prints events/s best and median."""
    import torch

    import mlaas4hep

    sys.path.insert(0, str(mlaas4hep.MODELS_DIR))
    module = __import__(net)
    torch.manual_seed(0)
    if threads is not None:
        torch.set_num_threads(threads)
    if net == "tth_mlp":
        model = module.model(32)
        data = [torch.randn(events, 32)]

        def call(i: int) -> torch.Tensor:
            return model(data[0][i : i + 1024])
    else:
        model = module.model({"jets": (10, 5), "event": (2,)})
        jets, event = torch.randn(events, 10, 5), torch.randn(events, 2)
        pad = torch.rand(events, 10) > 0.6
        pad[:, 0] = False

        def call(i: int) -> torch.Tensor:
            return model(
                {"jets": jets[i : i + 1024], "event": event[i : i + 1024]}, {"jets": pad[i : i + 1024]}
            )

    y = torch.randint(0, 2, (events,)).float()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    loss = torch.nn.BCEWithLogitsLoss()

    def epoch() -> float:
        t = time.perf_counter()
        for i in range(0, events, 1024):
            opt.zero_grad()
            out = call(i)
            out = out.reshape(len(out), -1)[:, -1]
            loss(out, y[i : i + 1024]).backward()
            opt.step()
        return time.perf_counter() - t

    epoch()
    times = [epoch() for _ in range(3)]
    print(events / min(times), events / statistics.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=60_000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--nets", default="tth_mlp,tth_transformer")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        net, events, threads = args.child
        child(net, int(events), None if threads == "-" else int(threads))
        return
    rows = []
    for net in args.nets.split(","):
        events = args.events if net == "tth_mlp" else max(1, args.events // 3)
        runs: dict[str, list[tuple[float, float]]] = {k: [] for k in SETTINGS}
        for _ in range(args.repeats):
            for name, (env, threads) in SETTINGS.items():
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--child",
                        net,
                        str(events),
                        "-" if threads is None else str(threads),
                    ],
                    env={**os.environ, **env},
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout.split()
                runs[name].append((float(out[0]), float(out[1])))
        base = statistics.median(m for _, m in runs["default"])
        for name, r in runs.items():
            median = statistics.median(m for _, m in r)
            rows.append((net, name, max(b for b, _ in r), median, median / base))
    print(f"\n{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end\n")
    print("| network | setting | events/s best | events/s median | x default |")
    print("|---|---|---:|---:|---:|")
    for net, name, best, median, ratio in rows:
        print(f"| {net} | {name} | {best:,.0f} | {median:,.0f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
