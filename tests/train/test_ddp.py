"""PyTorch DDP: 2 gloo processes on CPU, launched by ``torchrun --standalone`` on this host.

One launch of ``ddp_worker.py`` runs three trainings (full; interrupted after
epoch 0; resumed) and leaves per-rank reports; the tests below read them:

* every event of the dataset is read by exactly one rank in each epoch, and the
  ranks' shards change from epoch to epoch;
* every training event is trained on once (the per-rank counts add up, with the
  shorter shard kept in step by idle steps), and the validation set is the union
  of the ranks' shares;
* both ranks end with identical weights, and interrupt + ``--resume`` ends with
  the weights of the uninterrupted run;
* only rank 0 writes in the output directory (checkpoints, metrics, plots, bundle);
* ``mlaas4hep train`` itself under torchrun: one report, per-rank events/s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from mlaas4hep import MODELS_DIR
from mlaas4hep.io import Dataset
from mlaas4hep.train import split_config
from mlaas4hep.train.ddp import DistEnv, detect

from ..conftest import sample_config

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("ddp_worker.py")
MODEL = MODELS_DIR / "tth_mlp.py"
NEVTS = 2_500  # per file: 10k events; 1000-event units give the ranks uneven shards
LAUNCH_TIMEOUT = 150


def torchrun(args: list[str], cwd: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --standalone`` (loopback), one thread per process, bounded in time."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MLAAS4HEP_DDP_TIMEOUT="60", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc-per-node",
        str(nproc),
        # torchrun binds the rendezvous port itself (port 0, kept open): no port picked here,
        # released, and bound again later by a process that may lose it to another one
        "--standalone",
        *args,
    ]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    assert proc.returncode == 0, (
        f"torchrun failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    )
    return proc


def _config(data_dir: Path, cache: Path, **training) -> dict:
    cfg = sample_config(data_dir, cache, nevts=NEVTS, chunk_size=1_000)
    cfg["model"] = str(MODEL)
    cfg["training"] = {"epochs": 2, "batch_size": 128, "early_stopping": 0, "seed": 3, **training}
    return cfg


@pytest.fixture(scope="module")
def ddp_run(data_dir, tmp_path_factory):
    """Launch the worker once; return its paths, config and per-rank results."""
    tmp = tmp_path_factory.mktemp("ddp")
    cfg = _config(data_dir, tmp / "cache")
    (tmp / "cfg.json").write_text(json.dumps(cfg))
    base, report = tmp / "base", tmp / "report"
    report.mkdir()
    torchrun([str(WORKER), str(tmp / "cfg.json"), str(base), str(report)], cwd=tmp)
    results = [json.loads((report / f"result-r{r}.json").read_text()) for r in (0, 1)]
    return {"cfg": cfg, "base": base, "report": report, "results": results}


def _ids(report: Path, epoch: int, rank: int) -> np.ndarray:
    files = sorted(report.glob(f"ids-full-e{epoch}-r{rank}-*.npy"))
    return np.concatenate([np.load(f) for f in files]) if files else np.zeros((0, 2), np.int64)


def _keys(ids: np.ndarray) -> np.ndarray:
    return ids[:, 0].astype(np.int64) * 2**32 + ids[:, 1]


def test_each_event_read_by_exactly_one_rank_per_epoch(ddp_run):
    dcfg, _ = split_config(ddp_run["cfg"])
    expected = np.sort(
        _keys(np.concatenate([c.event_id for c in Dataset(dcfg, show_progress=False).chunks(0)]))
    )
    assert len(expected) == 4 * NEVTS
    shards = {}
    for epoch in (0, 1):
        per_rank = [_keys(_ids(ddp_run["report"], epoch, r)) for r in (0, 1)]
        assert all(len(p) for p in per_rank), "a rank read nothing"
        assert not np.intersect1d(per_rank[0], per_rank[1]).size, (
            f"epoch {epoch}: an event read by both ranks"
        )
        union = np.sort(np.concatenate(per_rank))
        np.testing.assert_array_equal(union, expected)  # all events, none twice
        shards[epoch] = set(per_rank[0].tolist())
    assert shards[0] != shards[1], "the shard assignment should be reshuffled each epoch"


def test_every_training_event_trained_once(ddp_run):
    r0, r1 = (r["full"] for r in ddp_run["results"])
    m = r0["metrics"]
    assert r0["world_size"] == r1["world_size"] == 2 and (r0["rank"], r1["rank"]) == (0, 1)
    n_val = m["n_val"]
    assert (
        r0["n_val_local"] + r1["n_val_local"] == n_val
    )  # the validation set is the union of the ranks' shares
    for rec in m["epochs"]:
        ranks = rec["ranks"]
        assert [r["rank"] for r in ranks] == [0, 1]
        assert sum(r["events"] for r in ranks) == rec["events"] == 4 * NEVTS - n_val
        assert rec["val_events"] == n_val
        assert all(r["events_per_s"] > 0 for r in ranks) and rec["events_per_s"] > 0
    # the shards are uneven here: the shorter one took idle (zero-gradient) steps to keep in step
    assert r0["idle_steps"] + r1["idle_steps"] > 0
    # metrics are computed on the union, so they are the same on both ranks
    assert r0["metrics"]["val_auc"] == r1["metrics"]["val_auc"]
    assert [e["val_loss"] for e in r0["metrics"]["epochs"]] == [
        e["val_loss"] for e in r1["metrics"]["epochs"]
    ]
    assert m["val_auc"] > 0.6


def test_weights_identical_across_ranks_and_after_resume(ddp_run):
    from safetensors.numpy import load_file

    rep = ddp_run["report"]
    w = {
        (run, r): load_file(str(rep / f"weights-{run}-r{r}.safetensors"))
        for run in ("full", "resumed")
        for r in (0, 1)
    }
    for run in ("full", "resumed"):
        a, b = w[(run, 0)], w[(run, 1)]
        assert a.keys() == b.keys() and a
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{run}: {k} differs between ranks")
    # the bundle holds the same weights
    bundle = load_file(str(ddp_run["base"] / "full" / "bundle" / "model.safetensors"))
    for k in bundle:
        np.testing.assert_array_equal(bundle[k], w[("full", 0)][k])
    # interrupted after epoch 0, resumed by both ranks from rank 0's checkpoint: same end state
    res = ddp_run["results"][0]
    assert res["part"] == {"interrupted": True, "epochs": 1}
    assert [e["epoch"] for e in res["resumed"]["metrics"]["epochs"]] == [0, 1]
    for k in w[("full", 0)]:
        np.testing.assert_allclose(w[("resumed", 0)][k], w[("full", 0)][k], atol=1e-6)
    for x, y in zip(res["full"]["metrics"]["epochs"], res["resumed"]["metrics"]["epochs"]):
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-6)


def test_only_rank0_writes(ddp_run):
    rep, base = ddp_run["report"], ddp_run["base"]
    assert json.loads((rep / "writes-r1.json").read_text()) == []
    written = "\n".join(json.loads((rep / "writes-r0.json").read_text()))
    for name in (
        "checkpoint.tmp/state.json",
        "metrics.json",
        "bundle/model.onnx",
        "bundle/bundle.json",
        "plots/roc.png",
    ):
        assert f"full/{name}" in written, name
    for name in ("metrics.json", "checkpoint/state.json", "bundle/model.onnx", "bundle/model.safetensors"):
        assert (base / "full" / name).is_file(), name
    m = json.loads((base / "full" / "metrics.json").read_text())
    assert m["world_size"] == 2 and len(m["epochs"][0]["ranks"]) == 2


def test_cli_train_under_torchrun(data_dir, tmp_path):
    cfg = _config(data_dir, tmp_path / "cache", plots=False, epochs=3)
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(cfg))
    proc = torchrun(
        [
            "-m",
            "mlaas4hep.cli",
            "-v",
            "train",
            "train.yaml",
            "--out",
            "run",
            "--epochs",
            "1",
            "--no-progress",
        ],
        cwd=tmp_path,
    )
    out = f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-6000:]}"  # shown if an assertion fails
    assert proc.stdout.count("val AUC") == 1, out  # rank 0 reports for both
    assert "DDP, 2 ranks" in proc.stdout and "per rank" in proc.stdout, out
    assert proc.stderr.count("epoch 0: ") == 1, out  # the epoch's log line, from rank 0 only
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["epochs_trained"] == 1
    assert (tmp_path / "run" / "bundle" / "model.onnx").is_file()
    ranks = m["epochs"][0]["ranks"]
    assert sum(r["events"] for r in ranks) == m["n_train"]


def test_detect_environment():
    assert detect({}) is None
    assert detect({"WORLD_SIZE": "1", "RANK": "0"}) is None
    env = detect(
        {
            "WORLD_SIZE": "8",
            "RANK": "5",
            "LOCAL_RANK": "1",
            "LOCAL_WORLD_SIZE": "4",
            "MASTER_ADDR": "node0",
            "MASTER_PORT": "29400",
        }
    )
    assert env == DistEnv(
        rank=5, world_size=8, local_rank=1, local_world_size=4, master_addr="node0", master_port=29400
    )
    assert not env.is_main
    with pytest.raises(RuntimeError, match="RANK"):
        detect({"WORLD_SIZE": "2"})
