"""Input groups (objects as sets with masks): our batches against plain uproot and weaver-core.

    python bench/groups.py [--events 200000] [--workers 0,1,2] [--loaders ours,uproot,weaver]
                           [--batch-size 1024] [--repeats 1] [--warmup 1] [--data DIR]
                           [--write bench/RESULTS-groups.md]

Generates (or reuses) two NanoAOD-like files of --events events, one per class
(``ttH_0.root``, label 1; ``ttbar_0.root``, label 0), then delivers the same
three input groups from them with three loaders, each run in a fresh Python
process (imports, configuration and worker start included in the time):

* ``jets``: Jet_pt, eta, phi, mass, btagDeepFlavB, log(pt), Δη and Δφ to the
  leading jet; 10 per event, sorted by pt, with a mask;
* ``leptons``: the union of muons and electrons (pt, eta, phi, charge); 4 per
  event, sorted by pt, with a mask;
* ``event``: MET_pt, MET_phi, nJet.

Loaders:

* ``ours``: ``Dataset.batches`` with ``inputs:`` (shuffled, no cache, no
  normalisation), ``workers`` decoding processes;
* ``ours-buffer`` (not by default): the same with ``shuffle_buffer: 131072``
  (the default, max(8 x chunk_size, 262,144), pools all 400,000 events here);
* ``ours-ordered`` (not by default): the same with ``shuffle: false`` (file
  order, one class at a time, as the uproot loader), to show what the shuffle costs;
* ``uproot``: plain ``uproot.iterate`` + ``ak.argsort``/``ak.concatenate``/
  ``ak.pad_none``/``ak.fill_none``/``ak.to_numpy`` into the same arrays, cut
  into batches in file order; with workers, a torch ``DataLoader`` whose
  workers each take a share of the files (as weaver-core does);
* ``weaver``: weaver-core's own ``SimpleIterDataset`` with a data config of the
  same groups (its new variables do the sorting and the union), built as its
  ``train.py`` builds it (``fetch_step`` 0.01, ``data_fraction`` 1), read
  through a ``DataLoader`` with ``batch_size`` and ``num_workers``.
  weaver-core is not a dependency: install it outside the project's
  environment with ``pip install --no-deps --target /tmp/weaver-pkgs
  weaver-core==0.5.3`` and it is found there (or set ``WEAVER_PATH``).

The package is imported from this tree's ``src`` (or from ``MLAAS4HEP_SRC``), not
from wherever the environment's mlaas4hep is installed.

For each run: events/s and the class mix of its batches (the minority class's
share per batch: mean and minimum over batches; 0 means a batch of one class).
Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
#: the mlaas4hep sources measured: this tree's ``src`` unless ``MLAAS4HEP_SRC`` names another
#: (e.g. an exported commit), for its runs and their subprocesses alike
SRC = Path(os.environ.get("MLAAS4HEP_SRC", ROOT / "src"))
sys.path.insert(0, str(SRC))
WEAVER_PATH = os.environ.get("WEAVER_PATH", "/tmp/weaver-pkgs")
INSTALL = "pip install --no-deps --target /tmp/weaver-pkgs weaver-core==0.5.3"

JETS = ["Jet_pt", "Jet_eta", "Jet_phi", "Jet_mass", "Jet_btagDeepFlavB", "Jet_logpt", "Jet_deta", "Jet_dphi"]
LEP = ["pt", "eta", "phi", "charge"]
EVENT = ["MET_pt", "MET_phi", "nJet"]
NEW = {
    "Jet_logpt": "log(Jet_pt)",
    "Jet_deta": "Jet_eta - leading(Jet_eta)",
    "Jet_dphi": "deltaphi(Jet_phi, leading(Jet_phi))",
}
N_JETS, N_LEP = 10, 4
#: ``shuffle_buffer`` of the ``ours-buffer`` loader: about 1.3 units of 100,000 events, against the
#: default max(8 units, 262,144), which here pools the whole sample before the first batch.
SMALL_BUFFER = 131_072


# ---------------------------------------------------------------------------- the loaders
def ours_config(files: list[str], workers: int, shuffle: bool, buffer: int | None = None) -> dict[str, Any]:
    return {
        "files": [{"path": f, "label": 1 - i} for i, f in enumerate(files)],
        "new_variables": NEW,
        "inputs": {
            "jets": {"branches": JETS, "length": N_JETS, "sort_by": "Jet_pt"},
            "leptons": {
                "branches": [f"{c}_{f}" for c in ("Muon", "Electron") for f in LEP],
                "length": N_LEP,
                "sort_by": "pt",
            },
            "event": {"branches": EVENT},
        },
        "normalize": "none",
        "workers": workers,
        "cache_dir": None,
        "shuffle": shuffle,
        "shuffle_buffer": buffer,
    }


def run_ours(
    files: list[str], workers: int, batch: int, shuffle: bool = True, buffer: int | None = None
) -> list[np.ndarray]:
    from mlaas4hep.io import Dataset

    ds = Dataset.from_config(ours_config(files, workers, shuffle, buffer), show_progress=False)
    ys = []
    for b in ds.batches(batch_size=batch):
        assert b.inputs["jets"].shape[1:] == (N_JETS, len(JETS))
        ys.append(np.asarray(b.y))
    return ys


def uproot_batches(path: str, label: int, batch: int):
    """Plain uproot + awkward: the groups of one file, batch by batch, in file order."""
    import awkward as ak
    import uproot

    def pad(v: Any, order: Any, n: int) -> np.ndarray:
        p = ak.pad_none(v[order], n, clip=True, axis=1)
        return ak.to_numpy(ak.fill_none(p, 0.0)).astype(np.float32)

    names = [b for b in JETS if b in ("Jet_pt", "Jet_eta", "Jet_phi", "Jet_mass", "Jet_btagDeepFlavB")]
    names += [f"{c}_{f}" for c in ("Muon", "Electron") for f in LEP] + EVENT
    for a in uproot.iterate(f"{path}:Events", names, step_size=100_000):
        lead_eta = ak.fill_none(ak.firsts(a["Jet_eta"], axis=1), 0.0)
        lead_phi = ak.fill_none(ak.firsts(a["Jet_phi"], axis=1), 0.0)
        jets = {b: a[b] for b in names if b.startswith("Jet_")}
        jets["Jet_logpt"] = np.log(a["Jet_pt"])
        jets["Jet_deta"] = a["Jet_eta"] - lead_eta
        jets["Jet_dphi"] = (a["Jet_phi"] - lead_phi + np.pi) % (2 * np.pi) - np.pi
        order = ak.argsort(a["Jet_pt"], axis=1, ascending=False)
        jet = np.stack([pad(jets[b], order, N_JETS) for b in JETS], axis=-1)
        jet_mask = ak.to_numpy(ak.is_none(ak.pad_none(a["Jet_pt"], N_JETS, clip=True, axis=1), axis=1))
        lep = {f: ak.concatenate([a[f"Muon_{f}"], a[f"Electron_{f}"]], axis=1) for f in LEP}
        order = ak.argsort(lep["pt"], axis=1, ascending=False)
        leptons = np.stack([pad(lep[f], order, N_LEP) for f in LEP], axis=-1)
        lep_mask = ak.to_numpy(ak.is_none(ak.pad_none(lep["pt"], N_LEP, clip=True, axis=1), axis=1))
        event = np.stack([ak.to_numpy(a[b]).astype(np.float32) for b in EVENT], axis=-1)
        y = np.full(len(event), label, np.int64)
        for s in range(0, len(y), batch):
            yield (
                jet[s : s + batch],
                jet_mask[s : s + batch],
                leptons[s : s + batch],
                lep_mask[s : s + batch],
                (event[s : s + batch]),
                y[s : s + batch],
            )


def run_uproot(files: list[str], workers: int, batch: int) -> list[np.ndarray]:
    labelled = [(files[0], 1), (files[1], 0)]
    if workers == 0:
        return [t[-1] for p, lab in labelled for t in uproot_batches(p, lab, batch)]
    import torch.utils.data

    class Files(torch.utils.data.IterableDataset):  # type: ignore[type-arg]
        def __iter__(self):
            info = torch.utils.data.get_worker_info()
            mine = labelled if info is None else labelled[info.id :: info.num_workers]
            for p, lab in mine:
                yield from uproot_batches(p, lab, batch)

    loader = torch.utils.data.DataLoader(Files(), batch_size=None, num_workers=workers)
    return [np.asarray(t[-1]) for t in loader]


WEAVER_CONFIG = """\
treename: Events
selection: null
new_variables:
  is_ttH: run == 2
  is_ttbar: run == 1
  jet_order: ak.argsort(Jet_pt, axis=1, ascending=False)
  jet_pt: Jet_pt[jet_order]
  jet_eta: Jet_eta[jet_order]
  jet_phi: Jet_phi[jet_order]
  jet_mass: Jet_mass[jet_order]
  jet_btag: Jet_btagDeepFlavB[jet_order]
  jet_logpt: np.log(jet_pt)
  jet_deta: jet_eta - ak.fill_none(ak.firsts(Jet_eta, axis=1), 0.0)
  jet_dphi: (jet_phi - ak.fill_none(ak.firsts(Jet_phi, axis=1), 0.0) + np.pi) % (2 * np.pi) - np.pi
  jet_mask: ak.ones_like(Jet_pt)
  lep_all_pt: ak.concatenate([Muon_pt, Electron_pt], axis=1)
  lep_order: ak.argsort(lep_all_pt, axis=1, ascending=False)
  lep_pt: lep_all_pt[lep_order]
  lep_eta: ak.concatenate([Muon_eta, Electron_eta], axis=1)[lep_order]
  lep_phi: ak.concatenate([Muon_phi, Electron_phi], axis=1)[lep_order]
  lep_charge: ak.concatenate([Muon_charge, Electron_charge], axis=1)[lep_order]
  lep_mask: ak.ones_like(lep_all_pt)
preprocess:
  method: manual
  data_fraction: 1
inputs:
  jets:
    length: {n_jets}
    pad_mode: constant
    vars: [[jet_pt, null], [jet_eta, null], [jet_phi, null], [jet_mass, null], [jet_btag, null],
           [jet_logpt, null], [jet_deta, null], [jet_dphi, null]]
  jets_mask:
    length: {n_jets}
    pad_mode: constant
    vars: [[jet_mask, null]]
  leptons:
    length: {n_lep}
    pad_mode: constant
    vars: [[lep_pt, null], [lep_eta, null], [lep_phi, null], [lep_charge, null]]
  leptons_mask:
    length: {n_lep}
    pad_mode: constant
    vars: [[lep_mask, null]]
  event:
    length: null
    vars: [[MET_pt, null], [MET_phi, null], [nJet, null]]
labels:
  type: simple
  value: [is_ttbar, is_ttH]
observers: []
"""


def run_weaver(files: list[str], workers: int, batch: int, fetch_step: float = 0.01) -> list[np.ndarray]:
    sys.path.insert(0, WEAVER_PATH)
    import logging

    from torch.utils.data import DataLoader
    from weaver.utils.dataset import SimpleIterDataset

    logging.getLogger("weaver").setLevel(logging.WARNING)
    cfg = Path(tempfile.mkdtemp(prefix="weaver-cfg-")) / "data.yaml"
    cfg.write_text(WEAVER_CONFIG.format(n_jets=N_JETS, n_lep=N_LEP))
    data = SimpleIterDataset(  # as weaver's train.py builds its training set
        {"_": list(files)},
        str(cfg),
        batch_size=batch,
        for_training=True,
        load_range_and_fraction=((0, 1), 1, 1),
        file_fraction=1,
        fetch_by_files=False,
        fetch_step=fetch_step,
        infinity_mode=False,
        in_memory=False,
        name="train",
    )
    n = min(workers, len(files))
    loader = DataLoader(
        data, batch_size=batch, drop_last=True, pin_memory=False, num_workers=n, persistent_workers=n > 0
    )
    ys = []
    for X, y, _ in loader:
        assert tuple(X["jets"].shape[1:]) == (len(JETS), N_JETS)  # weaver: (batch, features, length)
        ys.append(y["_label_"].numpy())
    return ys


def weaver_available() -> bool:
    return (Path(WEAVER_PATH) / "weaver" / "utils" / "dataset.py").exists()


# ---------------------------------------------------------------------------- one run, in its own process
def one(loader: str, workers: int, batch: int, files: list[str], fetch_step: float) -> dict[str, Any]:
    t0 = time.perf_counter()
    if loader == "ours":
        ys = run_ours(files, workers, batch)
    elif loader == "ours-buffer":
        ys = run_ours(files, workers, batch, buffer=SMALL_BUFFER)
    elif loader == "ours-ordered":
        ys = run_ours(files, workers, batch, shuffle=False)
    elif loader == "uproot":
        ys = run_uproot(files, workers, batch)
    else:
        ys = run_weaver(files, workers, batch, fetch_step)
    seconds = time.perf_counter() - t0
    minority = np.array([min(y.mean(), 1 - y.mean()) for y in ys if len(y) == batch])
    out = {
        "loader": loader,
        "workers": workers,
        "events": int(sum(len(y) for y in ys)),
        "seconds": seconds,
        "batches": len(ys),
        "minority_mean": float(minority.mean()) if len(minority) else 0.0,
        "minority_min": float(minority.min()) if len(minority) else 0.0,
        "pure": float((minority == 0).mean()) if len(minority) else 0.0,
    }
    if loader == "ours":
        out["apply_ms"] = apply_cost(files, batch)
    return out


def split_costs(files: list[str], batch: int) -> dict[str, float]:
    """CPU seconds of decoding, shuffling and cutting the groups, for ours in one process (workers 0).

    CPU time (``time.process_time``), steadier than wall time on a shared machine. Batches are
    consumed one at a time and dropped, as a training loop does (holding them all would time
    the allocator instead).
    """
    from mlaas4hep.io import Dataset
    from mlaas4hep.io.chunk import Chunk
    from mlaas4hep.io.shuffle import batches as cut

    cfg = ours_config(files, 0, True)
    ds = Dataset.from_config(cfg, show_progress=False)
    layout = ds.preprocessor.groups
    assert layout is not None
    t0 = time.process_time()
    tables = [tuple(getattr(c, f) for f in Chunk.FIELDS) for c in ds.chunks(0)]
    decode = time.process_time() - t0
    out = cut(iter(tables), batch, ds.config.buffer, np.random.default_rng([ds.config.seed, 0, 1, 0]))
    shuffle = apply = 0.0
    while True:
        t1 = time.process_time()
        t = next(out, None)
        t2 = time.process_time()
        shuffle += t2 - t1
        if t is None:
            break
        layout.apply(np.asarray(t[0]), np.asarray(t[1]))
        apply += time.process_time() - t2
    return {"decode": decode, "shuffle": shuffle, "apply": apply, "events": sum(len(t[0]) for t in tables)}


def apply_cost(files: list[str], batch: int) -> float:
    """Milliseconds of ``GroupLayout.apply`` per batch (best of 20), on a decoded batch."""
    from mlaas4hep.io import Dataset

    cfg = {**ours_config(files[:1], 0, False), "nevts": batch}
    ds = Dataset.from_config(cfg, show_progress=False)
    b = next(iter(ds.batches(batch_size=batch)))
    layout = ds.preprocessor.groups
    assert layout is not None
    x, mask = np.asarray(b.x), np.asarray(b.mask)
    best = float("inf")
    for _ in range(20):
        t = time.perf_counter()
        layout.apply(x, mask)
        best = min(best, time.perf_counter() - t)
    return best * 1e3


# ---------------------------------------------------------------------------- the driver
def sample(data: Path, events: int) -> list[str]:
    from mlaas4hep.generate import generate

    files = [data / "ttH_0.root", data / "ttbar_0.root"]
    stamp = data / f".events-{events}"
    if not (stamp.exists() and all(f.exists() for f in files)):
        print(f"generating 2 x {events:,} events in {data} ...", flush=True)
        generate(data, events=events, files=1, seed=12, show_progress=False)
        stamp.touch()
    for f in files:  # the page cache holds them for every run alike
        f.read_bytes()
    return [str(f) for f in files]


def table(rows: list[dict[str, Any]], rounds: dict[tuple[str, int, str], list[dict[str, Any]]]) -> str:
    """Best and median events/s of each run, and its ratios to plain uproot and to weaver-core.

    ``rounds`` holds every round's result of each run (None where a run failed). The median ratio
    to uproot is the median over rounds of the ratio within the round (the two ran minutes apart at
    most); the median ratio to weaver-core divides the medians, by weaver-core's configuration
    with the best median.
    """
    base = {r["workers"]: r["rate"] for r in rows if r["loader"] == "uproot"}
    by_run = {(r["loader"], r["workers"]): rounds[k] for k, r in zip(rounds, rows)}
    uproot_rounds = {w: v for (name, w), v in by_run.items() if name == "uproot"}

    def med(v: list[dict[str, Any] | None]) -> float:
        return float(np.median([r["rate"] for r in v if r is not None]))

    weaver_best = max((r["rate"] for r in rows if r["loader"].startswith("weaver")), default=None)
    weaver_med = max((med(v) for (n, _), v in by_run.items() if n.startswith("weaver")), default=None)
    lines = [
        "| loader | workers | events/s best | events/s median | vs uproot (same workers) best / median "
        "| vs weaver-core best / median | minority share per batch, mean / min | one-class batches |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        v = by_run[(r["loader"], r["workers"])]
        vs_u = "-"
        if r["workers"] in base:
            u = uproot_rounds[r["workers"]]
            per = [a["rate"] / b["rate"] for a, b in zip(v, u) if a is not None and b is not None]
            vs_u = f"{r['rate'] / base[r['workers']]:.2f}x / {float(np.median(per)):.2f}x"
        vs_w = (
            f"{r['rate'] / weaver_best:.1f}x / {med(v) / weaver_med:.1f}x"
            if weaver_best and weaver_med
            else "-"
        )
        lines.append(
            f"| {r['loader']} | {r['workers']} | {r['rate']:,.0f} | {med(v):,.0f} | {vs_u} | {vs_w} | "
            f"{r['minority_mean']:.3f} / {r['minority_min']:.3f} | {100 * r['pure']:.0f}% |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000, help="events per file (one file per class)")
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--loaders", default="ours,uproot,weaver")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=1, help="rounds of runs; the best and the median are kept")
    ap.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="discarded runs of each loader (0 workers) before the rounds: the first run of a series was "
        "its slowest",
    )
    ap.add_argument("--weaver-fetch-steps", default="0.01", help="weaver's fetch_step values to try")
    ap.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "mlaas4hep-bench-groups"))
    ap.add_argument("--write", default=None, help="write the table to this Markdown file")
    ap.add_argument("--one", nargs=3, metavar=("LOADER", "WORKERS", "FETCH_STEP"), help=argparse.SUPPRESS)
    ap.add_argument("--files", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.one and args.one[0] == "split":
        print(json.dumps(split_costs(args.files, args.batch_size)))
        return
    if args.one:
        loader, workers, step = args.one
        print(json.dumps(one(loader, int(workers), args.batch_size, args.files, float(step))))
        return

    loaders = args.loaders.split(",")
    if "weaver" in loaders and not weaver_available():
        print(f"weaver-core not found in {WEAVER_PATH}: skipped. To include it: {INSTALL}")
        loaders.remove("weaver")
    files = sample(Path(args.data), args.events)
    runs = []
    for w in (int(x) for x in args.workers.split(",")):
        for loader in loaders:
            steps = args.weaver_fetch_steps.split(",") if loader == "weaver" else ["0"]
            runs += [(loader, w, s) for s in steps]
    for loader in [x for x in loaders if x != "weaver"] * args.warmup:  # discarded
        cmd = [sys.executable, __file__, "--one", loader, "0", "0", "--files", *files]
        subprocess.run(cmd + ["--batch-size", str(args.batch_size)], capture_output=True, text=True)
    load_before = os.getloadavg()
    best: dict[tuple[str, int, str], dict[str, Any]] = {}
    rounds: dict[tuple[str, int, str], list[dict[str, Any] | None]] = {k: [] for k in runs}
    loads = [load_before[0]]
    for rep in range(args.repeats):  # rounds over every run, so that a busy spell hits them alike
        for loader, w, step in runs:
            cmd = [sys.executable, __file__, "--one", loader, str(w), step, "--files", *files]
            cmd += ["--batch-size", str(args.batch_size)]
            env = {**os.environ, "PYTHONWARNINGS": "ignore"}
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                print(f"{loader} workers={w} failed:\n{proc.stderr[-3000:]}")
                rounds[(loader, w, step)].append(None)
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            r["rate"] = r["events"] / r["seconds"]
            if loader == "weaver" and len(args.weaver_fetch_steps.split(",")) > 1:
                r["loader"] = f"weaver (fetch_step {step})"
            extra = f", apply {r['apply_ms']:.2f} ms/batch" if "apply_ms" in r else ""
            print(
                f"round {rep + 1}: {r['loader']:>8} workers={w}: {r['rate']:>9,.0f} events/s ({r['events']:,} "
                f"events in {r['seconds']:.1f} s), minority share mean {r['minority_mean']:.3f} "
                f"min {r['minority_min']:.3f}{extra}",
                flush=True,
            )
            key = (loader, w, step)
            rounds[key].append(r)
            if key not in best or r["rate"] > best[key]["rate"]:
                best[key] = r
        loads.append(os.getloadavg()[0])
        print(f"load average after round {rep + 1}: {loads[-1]:.2f}", flush=True)
    rows = [best[k] for k in runs if k in best]
    rounds = {k: rounds[k] for k in runs if k in best}
    split = ""
    if "ours" in loaders:
        cmd = [sys.executable, __file__, "--one", "split", "0", "0", "--files", *files]
        proc = subprocess.run(cmd + ["--batch-size", str(args.batch_size)], capture_output=True, text=True)
        if proc.returncode == 0:
            c = json.loads(proc.stdout.strip().splitlines()[-1])
            total = c["decode"] + c["shuffle"] + c["apply"]
            split = (
                f"ours, one process, {c['events']:,} events, CPU time: decode {c['decode']:.2f} s, shuffle "
                f"{c['shuffle']:.2f} s, input groups {c['apply']:.2f} s "
                f"({100 * c['apply'] / total:.0f}% of {total:.2f} s)"
            )
    load_after = os.getloadavg()
    text = table(rows, rounds)
    load = (
        f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after ({os.cpu_count()} cores); "
        f"after each round: {', '.join(f'{x:.2f}' for x in loads[1:])}"
    )
    print()
    print(text)
    print(split)
    print(load)
    if args.write:
        Path(args.write).write_text(text + "\n\n" + split + "\n\n" + load + "\n")


if __name__ == "__main__":
    main()
