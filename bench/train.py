"""Training throughput: streamed epoch 0, cached epochs, and in-memory training.

For two reference networks, trained by :func:`mlaas4hep.train.train` on a
generated ttH / tt̄ sample:

* ``tth``: MLaaS4HEP's ttH network (Dense 128 → Dropout → Dense 64 → Dropout → 1)
  on 32 features (MET, nJet, 5 jet variables × 6 jets);
* ``mlp111``: the 111 → 256 → 256 → 128 → 1 MLP on 111 features (7 flat
  branches, 8 jet variables × 10 jets, 4 muon and 4 electron variables × 3);
* ``tth_deepsets``, ``tth_transformer`` (``--nets``): the object-level
  reference models on the ``inputs:`` groups jets (10 × 5, with a mask) and
  event (MET, nJet): the batches carry per-group tensors cut from ``x``.

Each is trained three ways with the same seed and batch size:

1. *streamed*, cold decoded cache: epoch 0 decodes the ROOT files (and fills the
   cache), epochs ≥ 1 read the cache memory-mapped;
2. *in memory*: ``Dataset.to_numpy`` first, then every epoch from RAM (the
   traditional path);
3. *compute only*: the same model and optimizer on random tensors already in
   memory, no data handling at all (the ceiling).

The figure of merit is events/s of the training pass (reading included,
validation excluded), over epochs ≥ 1 (epoch 0 for streaming). Runs are
repeated and interleaved (``--repeat``; streamed and in memory take turns at
going first, each with its own cold cache). On a shared machine other tenants only
ever slow an epoch down, so the table gives the *best* epoch of each kind (the
uncontended figure, used for the ratio) and the median next to it; ``--append``
adds the median over repeats of the per-repeat ratio (median cached epoch /
median in-memory epoch of the same repeat) and the median seconds per epoch.

Usage::

    python bench/train.py [--events 60000] [--epochs 4] [--batch-size 1024] [--repeat 2] [--device auto]
                          [--nets tth,tth_transformer] [--workers 0] [--append "TITLE"]

Writes ``bench/RESULTS-train.md`` (with ``--append``: adds a section to it).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _machine import cpu_model

from mlaas4hep import MODELS_DIR as MODELS

ROOT = Path(__file__).resolve().parents[1]

BRANCHES = {
    "tth": (["MET_pt", "nJet", "Jet_pt", "Jet_eta", "Jet_phi", "Jet_mass", "Jet_btagDeepFlavB"], {"Jet": 6}),
    "mlp111": (
        [
            "MET_pt",
            "MET_phi",
            "MET_sumEt",
            "PV_npvs",
            "fixedGridRhoFastjet",
            "nMuon",
            "nElectron",
            "Jet_pt",
            "Jet_eta",
            "Jet_phi",
            "Jet_mass",
            "Jet_btagDeepFlavB",
            "Jet_btagDeepFlavCvL",
            "Jet_qgl",
            "Jet_nConstituents",
            "Muon_pt",
            "Muon_eta",
            "Muon_phi",
            "Muon_pfRelIso04_all",
            "Electron_pt",
            "Electron_eta",
            "Electron_phi",
            "Electron_pfRelIso03_all",
        ],
        {"Jet": 10, "Muon": 3, "Electron": 3},
    ),
}
MODEL_FILES = {
    "tth": "tth_mlp.py",
    "mlp111": "mlp111.py",
    "tth_deepsets": "tth_deepsets.py",
    "tth_transformer": "tth_transformer.py",
}
#: ``inputs:`` groups of the object-level networks, and their per-event shapes.
GROUPS = {
    "jets": {
        "branches": ["Jet_pt", "Jet_eta", "Jet_phi", "Jet_mass", "Jet_btagDeepFlavB"],
        "length": 10,
        "sort_by": "Jet_pt",
    },
    "event": {"branches": ["MET_pt", "nJet"]},
}
SHAPES = {"jets": (10, 5), "event": (2,)}


def config(data: Path, cache: Path, net: str, args) -> dict:
    branches, jagged = BRANCHES.get(net, ([], {}))
    groups = {"inputs": GROUPS} if net not in BRANCHES else {"branches": branches, "jagged": jagged}
    return {
        **groups,
        "tree": "Events",
        "files": [
            {"path": str(data / "ttH_*.root"), "label": 1, "name": "ttH"},
            {"path": str(data / "ttbar_*.root"), "label": 0, "name": "ttbar"},
        ],
        "chunk_size": 20_000,
        "workers": args.workers,
        "cache_dir": str(cache),
        "seed": 1,
        "model": str(MODELS / MODEL_FILES[net]),
        "training": {
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "early_stopping": 0,
            "plots": False,
            "seed": 1,
            "device": args.device,
            "amp": args.amp,
        },
    }


def compute_only(net: str, n_features: int, args, n_events: int) -> float:
    """Events/s of the bare training step on tensors already on the device."""
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("m", MODELS / MODEL_FILES[net])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    dev = torch.device("cuda" if args.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    objects = net not in BRANCHES
    model = (mod.model(dict(SHAPES)) if objects else mod.model(n_features)).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(n_events, n_features, device=dev)
    jets = torch.rand(n_events, *SHAPES["jets"], device=dev)
    event = torch.rand(n_events, *SHAPES["event"], device=dev)
    pad = torch.rand(n_events, SHAPES["jets"][0], device=dev) > 0.6
    y = (torch.rand(n_events, device=dev) > 0.5).float()
    rates = []
    for _ in range(max(2, args.epochs)):
        perm = torch.randperm(n_events, device=dev)
        xs, ys, js, es, ps = x[perm], y[perm], jets[perm], event[perm], pad[perm]
        t = time.perf_counter()
        for s in range(0, n_events, args.batch_size):
            b = slice(s, s + args.batch_size)
            out = model({"jets": js[b], "event": es[b]}, {"jets": ps[b]}) if objects else model(xs[b])
            loss = torch.nn.functional.binary_cross_entropy_with_logits(out.reshape(-1), ys[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        rates.append(n_events / (time.perf_counter() - t))
    return max(rates[1:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=60_000, help="events per file (2 files: ttH, tt̄)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--workers", type=int, default=None, help="decoding processes (default: all cores)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--data", default=None, help="where to generate the sample (default: a temporary dir)")
    ap.add_argument("--nets", default="tth,mlp111")
    ap.add_argument("--amp", action="store_true", help="bfloat16 autocast (training.amp)")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads (default: torch's own; 1 keeps a shared machine's other load from "
        "stalling the threads of one step on each other)",
    )
    ap.add_argument("--out", default=str(ROOT / "bench" / "RESULTS-train.md"))
    ap.add_argument(
        "--append",
        default=None,
        metavar="TITLE",
        help="append a section TITLE (per-repeat ratios, epoch times, loads) to --out instead of rewriting it",
    )
    args = ap.parse_args()

    from mlaas4hep.generate import generate
    from mlaas4hep.train import train

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    work = Path(tempfile.mkdtemp(prefix="mlaas4hep-bench-train-"))
    data = Path(args.data) if args.data else work / "data"
    if not (data / "ttbar_0.root").exists():
        t = time.perf_counter()
        generate(data, events=args.events, files=1, seed=11, show_progress=False)
        print(f"generated 2 x {args.events} events in {time.perf_counter() - t:.1f} s", file=sys.stderr)

    rows = []
    loads = [os.getloadavg()[0]]
    for net in args.nets.split(","):
        res = {"stream": [], "cache": [], "memory": [], "auc_s": [], "auc_m": [], "ratio_rep": []}
        res["cache_s"], res["memory_s"] = [], []
        nf = None
        for rep in range(args.repeat):
            # alternate which path goes first (ABBA...), each with its own cold cache, so that
            # neither always follows the other; epoch 0 of the streamed run always decodes
            order = ("stream", "memory") if rep % 2 == 0 else ("memory", "stream")
            runs = {}
            for kind in order:
                cache = work / f"cache-{net}-{rep}-{kind}"
                runs[kind] = train(
                    config(data, cache, net, args),
                    work / f"out-{net}-{kind}{rep}",
                    in_memory=kind == "memory",
                    show_progress=False,
                )
                shutil.rmtree(cache, ignore_errors=True)
                loads.append(os.getloadavg()[0])
            r, m = runs["stream"], runs["memory"]
            nf = r.metrics["n_features"]
            res["stream"].append(r.history[0]["events_per_s"])
            cached = [h["events_per_s"] for h in r.history[1:]]
            memory = [h["events_per_s"] for h in m.history[1:]]
            res["cache"] += cached
            res["memory"] += memory
            res["cache_s"] += [h["seconds"] for h in r.history[1:]]
            res["memory_s"] += [h["seconds"] for h in m.history[1:]]
            res["ratio_rep"].append(statistics.median(cached) / statistics.median(memory))
            res["auc_s"].append(r.metrics["val_auc"])
            res["auc_m"].append(m.metrics["val_auc"])
            n_train = r.metrics["n_train"]
            device = r.metrics["device"]
            print(
                f"{net} repeat {rep + 1} ({' then '.join(order)}): cached epochs "
                f"{', '.join(f'{x:,.0f}' for x in cached)} ev/s; in memory "
                f"{', '.join(f'{x:,.0f}' for x in memory)} ev/s; ratio of medians "
                f"{res['ratio_rep'][-1]:.2f}; load average {loads[-1]:.2f}",
                flush=True,
            )
        ceiling = compute_only(net, nf, args, n_train)
        row = {
            "net": net,
            "features": nf,
            "n_train": n_train,
            "device": device,
            "stream": max(res["stream"]),
            "cache": max(res["cache"]),
            "memory": max(res["memory"]),
            "stream_med": statistics.median(res["stream"]),
            "cache_med": statistics.median(res["cache"]),
            "memory_med": statistics.median(res["memory"]),
            "cache_s": statistics.median(res["cache_s"]),
            "memory_s": statistics.median(res["memory_s"]),
            "ratio_reps": res["ratio_rep"],
            "ratio_med": statistics.median(res["ratio_rep"]),
            "compute": ceiling,
            "auc_s": statistics.median(res["auc_s"]),
            "auc_m": statistics.median(res["auc_m"]),
        }
        row["ratio"] = row["cache"] / row["memory"]
        rows.append(row)
        print(_line(row), flush=True)
    args.loads = loads

    text = report(rows, args)
    if args.append:
        with open(args.out, "a") as f:
            f.write("\n" + section(rows, args))
    else:
        Path(args.out).write_text(text)
    print(text)
    print(section(rows, args))
    return 0


HEAD = (
    "| network | features | device | epoch 0, streamed (ev/s) | epochs ≥ 1, cache (ev/s) | in memory (ev/s) "
    "| cache / in memory | compute only (ev/s) | val AUC stream / memory |"
)
#: best epoch, and (median) of all epochs of that kind


def _line(r: dict) -> str:
    return (
        f"| {r['net']} | {r['features']} | {r['device']} | {r['stream']:,.0f} ({r['stream_med']:,.0f}) | "
        f"{r['cache']:,.0f} ({r['cache_med']:,.0f}) | {r['memory']:,.0f} ({r['memory_med']:,.0f}) | "
        f"{r['ratio']:.2f} | {r['compute']:,.0f} | {r['auc_s']:.3f} / {r['auc_m']:.3f} |"
    )


def report(rows: list[dict], args) -> str:
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    cpu = cpu_model()
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    lines = [
        "# Training throughput (`bench/train.py`)",
        "",
        f"Machine: {len(os.sched_getaffinity(0))} cores ({cpu}), GPU: {gpu}; torch {torch.__version__}, "
        f"Python {platform.python_version()}. Load average at the end: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
        f"The machine is shared with other jobs: each cell gives the best epoch of its kind over {args.repeat} "
        f"interleaved repeats, and (in brackets) the median epoch.",
        "",
        f"Sample: generated ttH + tt̄, 2 × {args.events:,} events (ZLIB), 20% held out for validation; "
        f"batch {args.batch_size}, {args.epochs} epochs, Adam, decoding workers: "
        f"{args.workers if args.workers is not None else 'all cores'}.",
        "",
        HEAD,
        "|" + "---|" * 9,
        *[_line(r) for r in rows],
        "",
        "* *epoch 0, streamed*: decoding the ROOT files while training (and writing the decoded cache);",
        "* *epochs ≥ 1, cache*: the same loop reading the decoded cache memory-mapped;",
        "* *in memory*: `--in-memory`, `Dataset.to_numpy()` first, then every epoch from RAM (load time excluded);",
        "* *compute only*: the model's forward/backward/Adam step on random tensors already in memory: the ceiling.",
        "* Target: cached epochs ≥ 0.9 × in memory.",
        "",
    ]
    return "\n".join(lines)


def section(rows: list[dict], args) -> str:
    """A Markdown section: per network, best and median cached / in-memory epochs and their ratios."""
    loads = getattr(args, "loads", [])
    cmd = " ".join(["python bench/train.py", *sys.argv[1:]])
    lines = [
        f"## {args.append or 'Cached epochs vs in memory'}",
        "",
        f"`{cmd}`",
        "",
        f"Machine: {len(os.sched_getaffinity(0))} cores ({cpu_model()}), shared with other sessions. "
        f"2 × {args.events:,} events, batch {args.batch_size}, {args.epochs} epochs (epochs 1..{args.epochs - 1} "
        f"counted: the first epoch and the specs pass excluded), {args.repeat} repeats of streamed (cold cache) "
        f"and in memory, alternating which runs first, each in the same process with the same seeds and data; "
        f"decoding workers: {args.workers if args.workers is not None else 'all cores'}; torch threads: "
        f"{args.threads or 'default'}. Load average (1 min) "
        f"before and after each run: {', '.join(f'{x:.2f}' for x in loads)}.",
        "",
        "| network | cached epoch (ev/s) best / median | in memory (ev/s) best / median "
        "| cached / in memory: best / best | median of the per-repeat ratios (of median epochs) "
        "| per-repeat ratios | s per epoch, median: cached / in memory |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['net']} | {r['cache']:,.0f} / {r['cache_med']:,.0f} | {r['memory']:,.0f} / {r['memory_med']:,.0f} "
            f"| {r['ratio']:.2f} | {r['ratio_med']:.2f} | {', '.join(f'{x:.2f}' for x in r['ratio_reps'])} "
            f"| {r['cache_s']:.2f} / {r['memory_s']:.2f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
