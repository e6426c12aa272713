"""The demo's steps (see the package docstring)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .. import MODELS_DIR
from ..errors import Mlaas4hepError

#: MLaaS4HEP's ttH network, in PyTorch (Dense 128 → Dropout 0.5 → Dense 64 → Dropout 0.5 → sigmoid).
MODEL_FILE = MODELS_DIR / "tth_mlp.py"
BRANCHES = [
    "nJet",
    "nMuon",
    "nElectron",
    "MET_pt",
    "Jet_pt",
    "Jet_eta",
    "Jet_phi",
    "Jet_mass",
    "Jet_btagDeepFlavB",
    "Jet_qgl",
]
#: DeepJet (DeepFlavB) medium working point.
BTAG_WP = 0.2783


class DemoError(Mlaas4hepError):
    """A demo step failed; the message names the step and the fix."""


#: The demo's steps, in order: each prints ``[n/N] TITLE ...`` (the README's transcript shows
#: them, and its test checks it against this list). ``{files}``, ``{events}`` and ``{wp}`` are
#: filled in; with ``--remote`` step 2 is :data:`REMOTE_STEP` instead.
STEPS = [
    "generating ttH(bb) and ttbar samples: 2 x {files} files x {events} events",
    "reading local files (use --remote for root://)",
    "specs pass, then training the ttH network streamed from ROOT",
    "training the same network in memory (the traditional method)",
    "cut-based selection: >= 4 jets with >= 3 b-tags (DeepFlavB > {wp})",
    "object-level network (Deep Sets over the jets), streamed and in memory",
    "serving the bundle over HTTP and querying it three ways",
    "overtraining check, input variables, summary.json and report.html",
]
REMOTE_STEP = "starting a local XRootD server"


@contextmanager
def step(n: int, total: int, title: str, fix: str = "") -> Iterator[None]:
    print(f"[{n}/{total}] {title} ...", flush=True)
    t0 = time.perf_counter()
    try:
        yield
    except DemoError:
        raise
    except Exception as err:
        hint = f" Fix: {fix}" if fix else ""
        raise DemoError(f"step {n} ({title}) failed: {type(err).__name__}: {err}.{hint}") from err
    print(f"      done in {time.perf_counter() - t0:.1f}s", flush=True)


def demo_config(
    files: list[tuple[str, int, str]], out: Path, epochs: int, workers: int | None
) -> dict[str, Any]:
    return {
        "tree": "Events",
        "files": [{"path": p, "label": lab, "name": name} for p, lab, name in files],
        "branches": BRANCHES,
        "jagged": {"Jet": 6},
        "normalize": "minmax",
        "pad_value": 0.0,
        "chunk_size": 25_000,
        "shuffle": True,
        "seed": 42,
        "workers": workers,
        "cache_dir": str(out / "cache"),
        "label_names": ["ttbar", "ttH"],
        "model": {"path": str(MODEL_FILE), "name": "tth"},
        "training": {
            "epochs": epochs,
            "batch_size": 256,
            "learning_rate": 1e-3,
            "validation_fraction": 0.2,
            "early_stopping": 0,
            "seed": 42,
            "framework": "pytorch",
            "device": "cpu",
            # the demo draws its own figures and report from the results: each run's plots/ and
            # report.html (about 5 s of matplotlib per training) would never be read
            "plots": False,
        },
    }


def run_demo(
    out: str | os.PathLike = "demo-out",
    events: int = 100_000,
    files: int = 2,
    epochs: int = 8,
    remote: bool = False,
    workers: int | None = None,
    show_progress: bool | None = None,
) -> dict[str, Any]:
    """Run the whole demonstration; returns the summary (also written to ``OUT/summary.json``)."""
    from ..generate import generate
    from ..io import Dataset
    from ..train import train
    from . import objects, physics, report

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    total = len(STEPS)
    summary: dict[str, Any] = {
        "events_per_file": events,
        "files_per_class": files,
        "events_signal": events * files,
        "events_background": events * files,
        "remote": remote,
    }
    servers = []
    try:
        with step(1, total, STEPS[0].format(files=files, events=f"{events:,}")):
            if data.exists():
                shutil.rmtree(data)
            generate(data, events=events, files=files, seed=2026, show_progress=show_progress)
            data.chmod(0o755)
            for p in data.iterdir():
                p.chmod(0o644)
        urls = {name: [str(data / f"{name}_{i}.root") for i in range(files)] for name in ("ttH", "ttbar")}
        with step(
            2,
            total,
            REMOTE_STEP if remote else STEPS[1],
            fix="install XRootD (Debian: apt-get install xrootd-server; EL9: dnf install xrootd-server), or run without --remote",
        ):
            if remote:
                from ..localservers import XRootDServer

                srv = XRootDServer(data)
                servers.append(srv)
                urls = {k: [srv.url(Path(u).name) for u in v] for k, v in urls.items()}
                print(f"      reading via {urls['ttH'][0].rsplit('/', 1)[0]}/")
        file_list = [(u, 1, "ttH") for u in urls["ttH"]] + [(u, 0, "ttbar") for u in urls["ttbar"]]
        cfg = demo_config(file_list, out, epochs, workers)
        shutil.rmtree(out / "cache", ignore_errors=True)

        with step(3, total, STEPS[2]):
            ds = Dataset.from_config(
                {k: v for k, v in cfg.items() if k not in ("model", "training")}, show_progress=show_progress
            )
            t0 = time.perf_counter()
            specs = ds.specs
            summary["specs_seconds"] = time.perf_counter() - t0
            summary["events_per_s_specs"] = specs.nevents / max(summary["specs_seconds"], 1e-9)
            stream = train(cfg, out / "stream", show_progress=show_progress)
        with step(4, total, STEPS[3]):
            memory = train(cfg, out / "memory", in_memory=True, show_progress=show_progress)
        with step(5, total, STEPS[4].format(wp=BTAG_WP)):
            cuts = cut_baseline(cfg, stream)
        with step(6, total, STEPS[5]):
            obj_stream, obj_memory = objects.train_objects(cfg, out, show_progress)
            compared = objects.compare(obj_stream, obj_memory, stream, cuts)
        with step(
            7,
            total,
            STEPS[6],
            fix="check that port binding on 127.0.0.1 works and the 'serve' extra is installed",
        ):
            assert stream.bundle_path is not None  # training finished, not interrupted
            served = serve_and_query(stream.bundle_path, out, urls["ttH"][0])
        with step(8, total, STEPS[7]):
            phys = {
                "ot_stream": physics.overtraining(stream),
                "ot_memory": physics.overtraining(memory),
                "ot_objects": physics.overtraining(obj_stream),
                "inputs_signal": physics.key_inputs(urls["ttH"], BTAG_WP),
                "inputs_background": physics.key_inputs(urls["ttbar"], BTAG_WP),
            }
            summary.update(_summary(stream, memory, cuts, served, ds, phys, summary["specs_seconds"]))
            summary["objects"] = compared
            extra = _uncertainties_and_yields(stream, memory, obj_stream, obj_memory, cuts, phys)
            summary["overtraining"]["objects"] = extra.pop("overtraining_objects")
            summary.update(extra)
            (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
            report.write_report(
                out / "report.html",
                summary,
                stream,
                memory,
                cuts,
                cfg,
                phys,
                objects=(obj_stream, obj_memory),
            )
    finally:
        for srv in servers:
            srv.stop()
    print_summary(summary, out)
    return summary


def _summary(stream, memory, cuts, served, ds, phys, specs_seconds: float) -> dict[str, Any]:
    """The numbers of ``summary.json`` (raw values; the report and the table round them)."""
    from .physics import mean_rate, working_points

    s, m = stream.metrics, memory.metrics
    val_y = np.asarray(stream.val_labels)
    ks_keys = ("ks_p_signal", "ks_p_background", "ks_d_signal", "ks_d_background")
    return {
        "auc_stream": float(s["val_auc"]),
        "auc_memory": float(m["val_auc"]),
        "cuts_signal_efficiency": cuts["tpr"],
        "cuts_background_efficiency": cuts["fpr"],
        # signal efficiency at background efficiency 0.01, 0.1 and at the cuts' background efficiency
        "signal_efficiency": {
            "stream": working_points(stream, cuts["fpr"]),
            "memory": working_points(memory, cuts["fpr"]),
        },
        # Kolmogorov-Smirnov test, training vs validation scores per class
        "overtraining": {k: {q: phys[f"ot_{k}"][q] for q in ks_keys} for k in ("stream", "memory")},
        "events_per_s_stream": mean_rate(s),
        "events_per_s_stream_epoch0": float(s["epochs"][0]["events_per_s"]),
        "events_per_s_memory": mean_rate(m),
        "seconds": {
            "specs": float(specs_seconds),
            "train_stream": float(s["seconds"]),
            "train_memory": float(m["seconds"]),
        },
        "events_total": int(ds.nevents),
        "n_val": len(val_y),
        "n_val_signal": int((val_y == 1).sum()),
        "n_val_background": int((val_y == 0).sum()),
        "n_features": int(ds.n_features),
        "selection": ds.config.selection,
        "btag_wp": BTAG_WP,
        "epochs": len(s["epochs"]),
        "served_requests_ok": served["ok"],
        "served": served,
        "bundle": str(stream.bundle_path),
    }


def _uncertainties_and_yields(stream, memory, obj_stream, obj_memory, cuts, phys) -> dict[str, Any]:
    """Bootstrap uncertainties of the AUCs and efficiencies, the object model's KS check,
    and the expected yields (S, B, S/√B at 138 fb⁻¹) of every method (``summary.json``)."""
    from . import physics

    runs = {"stream": stream, "memory": memory, "objects_stream": obj_stream, "objects_memory": obj_memory}
    perf = {k: physics.performance(r.val_labels, r.val_scores, r.val_weights) for k, r in runs.items()}
    ks_keys = ("ks_p_signal", "ks_p_background", "ks_d_signal", "ks_d_background")
    return {
        # the standard deviation over bootstrap resamples of the validation events
        "uncertainty": {k: {"auc": p["auc_unc"], **p["eff_unc"]} for k, p in perf.items()},
        "overtraining_objects": {q: phys["ot_objects"][q] for q in ks_keys},
        "yields": {
            "luminosity_fb": physics.LUMINOSITY_FB,
            "xsec_pb": dict(physics.XSEC_PB),
            **{k: physics.expected_yields(p) for k, p in perf.items()},
            "cuts": physics.expected_yields(perf["stream"], cuts)["cuts"],
        },
    }


def cut_baseline(cfg: dict[str, Any], stream) -> dict[str, Any]:
    """The cut-based selection on the same validation events as the networks."""
    from ..io import Dataset
    from ..train.split import validation_mask

    dcfg = {k: v for k, v in cfg.items() if k not in ("model", "training")}
    dcfg.update(
        branches=["nJet"],
        new_variables={"nBtag": f"count(Jet_btagDeepFlavB > {BTAG_WP})"},
        normalize="none",
        shuffle=False,
        jagged={},
        cache_dir=None,
    )
    ch = Dataset.from_config(dcfg, show_progress=False).to_chunk()
    val = validation_mask(
        np.asarray(ch.event_id), cfg["training"]["validation_fraction"], cfg["training"]["seed"]
    )
    x, y = ch.x[val], ch.y[val]
    passed = (x[:, 0] >= 4) & (x[:, 1] >= 3)
    tpr = float(passed[y == 1].mean())
    fpr = float(passed[y == 0].mean())
    return {"tpr": tpr, "fpr": fpr, "n_val": int(val.sum())}


def serve_and_query(bundle_path: Path, out: Path, root_file: str) -> dict[str, Any]:
    """Start ``mlaas4hep serve``, upload the bundle over HTTP, query it, compare with in-process scores."""
    import awkward as ak
    import uproot

    from .. import bundle
    from ..client import Client
    from ..localservers import free_port

    repo, token = out / "repo", secrets.token_hex(16)
    shutil.rmtree(repo, ignore_errors=True)
    (out / "token.txt").write_text(token)
    port = free_port()
    log = open(out / "server.log", "w")  # noqa: SIM115 (open while the server runs)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlaas4hep.cli",
            "serve",
            "--repo",
            str(repo),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--token-file",
            str(out / "token.txt"),
            "--data-dir",
            str(out / "data"),
            # with --remote the sample file is a root:// URL on this machine's XRootD server
            *(["--allow-remote", "127.0.0.1"] if "://" in root_file else []),
        ],
        stdout=log,
        stderr=log,
    )
    result: dict[str, Any] = {"url": f"http://127.0.0.1:{port}", "requests": 0, "matched": 0}
    try:
        client = Client(result["url"], token=token)
        deadline = time.monotonic() + 60
        while True:
            try:
                client.status()
                break
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not start; see {out / 'server.log'}") from None
                time.sleep(0.2)
        info = client.upload(bundle_path)
        name = info["name"]
        local = bundle.load(bundle_path)
        tree = uproot.open(root_file)["Events"]
        assert local.preprocessor is not None  # the demo's bundle carries its preprocessing
        raw = tree.arrays(local.preprocessor.inputs, entry_stop=200, library="ak", how=dict)
        expected = local.predict_raw(raw)

        def check(label: str, got: np.ndarray, want: np.ndarray) -> None:
            result["requests"] += 1
            diff = float(np.max(np.abs(np.asarray(got).reshape(want.shape) - want))) if len(want) else 0.0
            result[label] = {"rows": len(want), "max_abs_diff": diff}
            result["matched"] += diff < 1e-5

        # 1. TFaaS /json with the model's feature vector of one event
        x0 = local.transform({k: v[:1] for k, v in raw.items()})
        probs = client.predict_json(name, local.features, x0[0].tolist())
        first = expected[:1, :]
        per_label = np.hstack([1 - first, first]) if first.shape[1] == 1 else first  # TFaaS: one per label
        check("tfaas_json", np.asarray(probs, dtype=np.float32), per_label.ravel())
        # 2. v2 infer with raw branch values (jagged branches as lists per event)
        raw_lists = {k: (ak.to_list(v) if v.ndim > 1 else ak.to_numpy(v).tolist()) for k, v in raw.items()}
        check("v2_raw", client.predict(name, raw=raw_lists), expected)
        # 3. predict_root: the server streams the ROOT file itself
        scored = client.predict_root(name, root_file, entry_stop=5_000)
        want = np.concatenate([c["scores"] for c in local.predict_root(root_file, entry_stop=5_000)])
        check("predict_root", scored["scores"], want)
        result["ok"] = result["matched"] == result["requests"] == 3
        result["model"] = name
        return result
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def print_summary(s: dict[str, Any], out: Path) -> None:
    """The result as a physicist reads it: performance table, cut working point, overtraining check."""
    from rich.console import Console
    from rich.table import Table

    from .physics import BACKGROUND_EFFICIENCIES
    from .report import cuts_sentence, objects_sentence, performance_rows, pvalue, secs

    t = Table(
        title=f"mlaas4hep demo: ttH(bb) vs ttbar, {s['n_val']:,} validation events", title_justify="left"
    )
    t.add_column("method", no_wrap=True)
    t.add_column("AUC", justify="right")
    for b in BACKGROUND_EFFICIENCIES:
        t.add_column(f"sig. eff. at\nbkg. eff. {b:.0%}", justify="right")
    t.add_column("training", justify="right", no_wrap=True)
    for row in performance_rows(s, short=True):
        t.add_row(*row)
    c = Console()
    c.print(t)
    c.print(f"cuts (>= 4 jets, >= 3 b-tags): {cuts_sentence(s)}")
    if "objects" in s:
        c.print(objects_sentence(s["objects"]))
    ot = s["overtraining"]
    c.print(
        "overtraining check, KS p-value training vs validation scores: "
        + "; ".join(
            f"{name} signal {pvalue(ot[k]['ks_p_signal'])}, background {pvalue(ot[k]['ks_p_background'])}"
            for k, name in (
                ("stream", "streamed"),
                ("memory", "in memory"),
                ("objects", "Deep Sets streamed"),
            )
            if k in ot
        )
    )
    sec = s["seconds"]
    c.print(
        f"wall time: specs pass {secs(sec['specs'])}, streamed training {secs(sec['train_stream'])}, "
        f"in-memory training {secs(sec['train_memory'])}"
    )
    c.print(
        f"served: {s['served']['matched']}/{s['served']['requests']} query types matched in-process scores "
        f"(TFaaS /json, v2 raw branches, predict_root)"
    )
    c.print(f"wrote {out / 'summary.json'} and {out / 'report.html'}")


def add_demo_command(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole ttH(bb) pipeline offline and write a report",
        description="Generate ttH(bb) and ttbar samples, train MLaaS4HEP's ttH network streamed and in memory, "
        "compare with a cut-based selection and an object-level network (Deep Sets over the jets), serve the bundle over HTTP and query it, and write "
        "OUT/summary.json and OUT/report.html. The default size takes a few minutes on 2 cores.",
    )
    p.add_argument("--out", default="demo-out", help="output directory (default demo-out)")
    p.add_argument("--events", type=int, default=100_000, help="events per generated file (default 100000)")
    p.add_argument("--files", type=int, default=2, help="files per process (default 2)")
    p.add_argument("--epochs", type=int, default=8, help="training epochs of both networks (default 8)")
    p.add_argument("--workers", type=int, help="decoding processes (default: all cores)")
    p.add_argument(
        "--remote", action="store_true", help="serve the samples from a local XRootD server and read root://"
    )
    p.set_defaults(
        func=lambda a: 0 if run_demo(a.out, a.events, a.files, a.epochs, a.remote, a.workers) else 1
    )
