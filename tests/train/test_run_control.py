"""Controlling a run from the command line: --out that holds a run, --resume with more epochs,
Ctrl-C, the per-epoch lines, --scheduler/--executor, the device, and the learning rate given
to the model file's optimizer()."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

from mlaas4hep import MODELS_DIR
from mlaas4hep.train import train

pytest.importorskip("torch")

#: The small sample's train.yaml (tests/conftest.py): two epochs, no plots.
SMALL_TRAINING = {"epochs": 2, "plots": False}
#: One epoch's line: train loss, validation loss and AUC, the rate and where the events came from.
EPOCH_LINE = re.compile(
    r"^epoch (\d+): train loss \d\.\d{4}, val loss \d\.\d{4}, val AUC \d\.\d{4}, val accuracy \d\.\d{4}, "
    r"[\d,]+ events/s \((stream|cache)\)$"
)


def cli(cwd, *args, timeout=180):
    r = subprocess.run(
        [sys.executable, "-m", "mlaas4hep.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    return r.returncode, r.stdout, r.stderr


def test_an_out_that_holds_a_run_is_refused_unless_overwrite(small):
    code, _, err = cli(small, "train", "train.yaml", "-o", "first", "--threads", "1")
    assert code == 0, err
    lines = err.splitlines()
    # one line per epoch by default (no -v), with the validation loss and AUC
    assert [EPOCH_LINE.match(ln).group(1, 2) for ln in lines if ln.startswith("epoch ")] == [
        ("0", "stream"),
        ("1", "cache"),
    ], err
    state = (small / "first" / "checkpoint" / "state.json").read_text()
    code, _, err = cli(small, "train", "train.yaml", "-o", "first", "--threads", "1")
    assert code == 2
    assert err == (
        "error: 'first' already holds a training run (bundle, checkpoint, metrics.json): give --overwrite "
        "to replace it, --resume to continue it, or another --out\n"
    )
    assert (small / "first" / "checkpoint" / "state.json").read_text() == state  # untouched
    code, _, err = cli(
        small, "train", "train.yaml", "-o", "first", "--threads", "1", "--overwrite", "--epochs", "1"
    )
    assert code == 0, err
    assert json.loads((small / "first" / "metrics.json").read_text())["epochs_trained"] == 1


def test_resume_with_more_epochs_trains_them(small, caplog):
    cfg = str(small / "train.yaml")
    out = small / "more"
    first = train(cfg, out, show_progress=False, overrides={"threads": 1})
    assert [e["epoch"] for e in first.history] == [0, 1]
    more = train(cfg, out, resume=True, epochs=4, show_progress=False, overrides={"threads": 1})
    assert [e["epoch"] for e in more.history] == [0, 1, 2, 3]
    assert [e["source"] for e in more.history[2:]] == ["cache", "cache"]
    assert json.loads((out / "checkpoint" / "state.json").read_text())["epoch"] == 3
    with caplog.at_level(logging.WARNING, logger="mlaas4hep.train"):
        again = train(cfg, out, resume=True, epochs=4, show_progress=False, overrides={"threads": 1})
    assert len(again.history) == 4
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f"--resume: nothing to train: the checkpoint in {out / 'checkpoint'} holds epochs 0-3 and "
        "training.epochs is 4; give --epochs 5 or more to train more"
    ]


def test_ctrl_c_names_the_checkpoint_and_the_command_to_resume(small):
    argv = [sys.executable, "-m", "mlaas4hep.cli", "train", "train.yaml", "-o", "stopped", "--epochs", "60"]
    proc = subprocess.Popen(
        [*argv, "--threads", "1", "--no-progress"],
        cwd=small,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        # as a terminal gives it: a pytest started in the background (`cmd &` in a script) ignores
        # SIGINT, and its children inherit that: the run then ignored the signal and trained its 60
        # epochs to the end (exit 0), as any program told to ignore SIGINT does
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 120
        assert proc.stderr is not None
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if line.startswith("epoch 1:") or not line:
                break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    epoch = json.loads((small / "stopped" / "checkpoint" / "state.json").read_text())["epoch"]
    assert 0 <= epoch < 59  # the line of epoch 1 comes just before its checkpoint
    assert err.splitlines()[-2:] == [
        f"interrupted: the checkpoint of epoch {epoch} is in stopped/checkpoint",
        "continue with: mlaas4hep train train.yaml -o stopped --resume --epochs 60",
    ]
    # the command it gives continues the run (with fewer epochs, to keep the test short)
    code, _, err = cli(small, "train", "train.yaml", "-o", "stopped", "--resume", "--epochs", str(epoch + 2))
    assert code == 0, err
    assert [ln.split(":")[0] for ln in err.splitlines() if ln.startswith("epoch ")] == [f"epoch {epoch + 1}"]
    assert (
        err.splitlines()[0]
        == f"resuming from stopped/checkpoint: epochs {epoch + 1}-{epoch + 1} of {epoch + 2}"
    )


def test_a_checkpoint_write_stopped_between_its_renames_is_completed(small, caplog):
    """Ctrl-C between the two renames of a checkpoint write (``checkpoint`` -> ``checkpoint.old``,
    ``checkpoint.tmp`` -> ``checkpoint``) left no ``checkpoint``: the interruption's message said
    there was none and --resume started again from epoch 0. The next read completes the write."""
    import shutil

    from mlaas4hep.train import checkpoint

    cfg, out = str(small / "train.yaml"), small / "renames"
    train(cfg, out, epochs=1, show_progress=False, overrides={"threads": 1})
    shutil.copytree(out / "checkpoint", small / "epoch0")
    train(cfg, out, resume=True, epochs=2, show_progress=False, overrides={"threads": 1})
    (out / "checkpoint").rename(out / "checkpoint.tmp")  # epoch 1, complete, not yet renamed
    shutil.copytree(small / "epoch0", out / "checkpoint.old")  # the one it replaces
    assert checkpoint.read_state(out / "checkpoint")["epoch"] == 1  # what Ctrl-C's message names
    assert sorted(p.name for p in out.glob("checkpoint*")) == ["checkpoint", "checkpoint.old"]
    # the same with the write stopped before state.json was whole: the epoch before
    shutil.rmtree(out / "checkpoint")
    (out / "checkpoint.old").rename(out / "checkpoint.tmp")
    shutil.copytree(out / "checkpoint.tmp", out / "checkpoint.old")
    (out / "checkpoint.tmp" / "state.json").rename(out / "checkpoint.tmp" / "state.json.part")
    with caplog.at_level(logging.INFO, logger="mlaas4hep.train"):
        more = train(cfg, out, resume=True, epochs=3, show_progress=False, overrides={"threads": 1})
    assert caplog.records[0].getMessage() == f"resuming from {out / 'checkpoint'}: epochs 1-2 of 3"
    assert [e["epoch"] for e in more.history] == [0, 1, 2]


def test_ctrl_c_while_the_reading_thread_starts_stops_that_thread(monkeypatch):
    """The main thread waits in ``Thread.start`` for the reading thread to be up: a Ctrl-C that
    comes there must stop that thread too (it went on reading and waiting to hand over forever)."""
    import threading

    from mlaas4hep.train.data import prefetch

    start = threading.Thread.start

    def start_then_ctrl_c(thread):
        start(thread)
        if thread.name == "mlaas4hep-prefetch":
            signal.raise_signal(signal.SIGINT)  # Ctrl-C, before start() returns

    # Python's own handler, even under a pytest started in the background (which ignores SIGINT)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        monkeypatch.setattr(threading.Thread, "start", start_then_ctrl_c)
        with pytest.raises(KeyboardInterrupt):
            next(prefetch(iter(range(1000)), depth=2))
    finally:
        signal.signal(signal.SIGINT, before)
        monkeypatch.undo()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(t.name == "mlaas4hep-prefetch" for t in threading.enumerate()):
        time.sleep(0.05)
    assert [t.name for t in threading.enumerate() if t.name == "mlaas4hep-prefetch"] == []


def test_train_takes_the_dataset_options_of_the_docs(small):
    code, _, err = cli(small, "train", "train.yaml", "-o", "sched", "--scheduler", "nowhere.json")
    assert code == 2
    assert err == "error: Dask scheduler file 'nowhere.json' does not exist\n"
    r = train(
        str(small / "train.yaml"),
        small / "procs",
        epochs=1,
        show_progress=False,
        dataset_overrides={"executor": "processes", "workers": 1},
        overrides={"threads": 1},
    )
    assert (r.dataset.config.executor, r.dataset.config.workers) == ("processes", 1)
    assert r.metrics["epochs_trained"] == 1


def test_the_device_is_reported_in_full(small):
    import torch

    code, _, err = cli(small, "train", "train.yaml", "-o", "gpu1", "--device", "cuda:1")
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n >= 2:
        assert code == 0, err
        assert json.loads((small / "gpu1" / "metrics.json").read_text())["device"] == "cuda:1"
        return
    assert code == 1
    seen = "no CUDA device" if n == 0 else "1 CUDA device (cuda:0)"
    assert err.splitlines()[0] == f"error: device 'cuda:1' was asked for but PyTorch sees {seen}"
    code, _, err = cli(small, "train", "train.yaml", "-o", "gpu1", "--device", "gpu")
    assert code == 2
    assert "'gpu' is not a device: give cpu, cuda, cuda:N (e.g. cuda:1) or auto" in err


def test_the_learning_rate_reaches_the_optimizer_hook(small, tmp_path, caplog):
    body = (MODELS_DIR / "tth_mlp.py").read_text()
    new = tmp_path / "new.py"
    new.write_text(body)
    old = tmp_path / "old.py"  # a file written before: optimizer(params) chooses its own rate
    old.write_text(
        body.replace(
            "def optimizer(params, learning_rate):  # training.learning_rate\n"
            "    return torch.optim.Adam(params, lr=learning_rate)",
            "def optimizer(params):\n    return torch.optim.SGD(params, lr=0.05)",
        )
    )
    assert old.read_text() != body
    cfg = yaml.safe_load((small / "train.yaml").read_text())
    cfg["files"] = [{**g, "path": str(small / g["path"])} for g in cfg["files"]]
    cfg["cache_dir"] = str(small / "cache")
    cfg["training"].update(epochs=1, learning_rate=0.0123, threads=1)
    r = train({**cfg, "model": str(new)}, tmp_path / "new", show_progress=False)
    assert [g["lr"] for g in r.backend.optimizer.param_groups] == [0.0123]
    assert r.metrics["training"]["learning_rate"] == 0.0123
    with caplog.at_level(logging.WARNING, logger="mlaas4hep.train"):
        r = train({**cfg, "model": str(old)}, tmp_path / "old", show_progress=False)
    assert [g["lr"] for g in r.backend.optimizer.param_groups] == [0.05]
    assert [rec.getMessage() for rec in caplog.records] == [
        f"training.learning_rate (0.0123) is not passed to optimizer(params) in {old}: give the function "
        "a learning_rate argument to receive it"
    ]
