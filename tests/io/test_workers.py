"""Decoder processes without ceremony: a clear stop for unguarded scripts, no orphans.

Both tests run real scripts in real processes: an unguarded script as a user
writes it first, and a parent killed with SIGKILL while its pool is warm.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mlaas4hep.generate import generate

SRC = Path(__file__).resolve().parents[2] / "src"


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
    }


def test_unguarded_script_stops_at_once_with_a_short_message(tmp_path):
    generate(tmp_path / "d", events=1000, files=1, seed=2, show_progress=False)
    script = tmp_path / "train_me.py"
    script.write_text(
        textwrap.dedent(f"""\
            from mlaas4hep.io import Dataset

            ds = Dataset.from_config({{
                "files": [{{"path": "{tmp_path}/d/ttH_*.root", "label": 1}},
                          {{"path": "{tmp_path}/d/ttbar_*.root", "label": 0}}],
                "branches": ["MET_pt"], "workers": 2, "executor": "processes", "cache_dir": None,
            }})
            X, y = ds.to_numpy()
            print("read", len(y))
            """)
    )
    r = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=120
    )
    assert r.returncode == 1 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 5, r.stderr
    assert 'if __name__ == "__main__":' in r.stderr and "workers: 0" in r.stderr
    assert "Traceback" not in r.stderr


def test_an_unguarded_script_reads_with_two_workers_as_threads(tmp_path):
    """``executor: local`` (the default) with 2 workers runs them as threads: nothing re-runs the
    script, so it needs no ``__main__`` guard, and no worker process is started."""
    generate(tmp_path / "d", events=1000, files=1, seed=2, show_progress=False)
    script = tmp_path / "train_me.py"
    script.write_text(
        textwrap.dedent(f"""\
            import multiprocessing
            from mlaas4hep.io import Dataset

            ds = Dataset.from_config({{
                "files": [{{"path": "{tmp_path}/d/ttH_*.root", "label": 1}},
                          {{"path": "{tmp_path}/d/ttbar_*.root", "label": 0}}],
                "branches": ["MET_pt", "Jet_pt"], "jagged": {{}}, "workers": 2, "cache_dir": None,
            }})
            X, y = ds.to_numpy()
            print("read", len(y), ds.executor_kind, len(multiprocessing.active_children()))
            """)
    )
    r = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == "read 2000 threads 0\n" and "Traceback" not in r.stderr


def test_a_script_on_standard_input_reads_with_workers(tmp_path):
    """``python - < job.py``: workers start (nothing of the script is re-run), no traceback at exit."""
    generate(tmp_path / "d", events=1000, files=1, seed=2, show_progress=False)
    script = textwrap.dedent(f"""\
        from mlaas4hep.io import Dataset

        ds = Dataset.from_config({{
            "files": [{{"path": "{tmp_path}/d/ttH_*.root", "label": 1}},
                      {{"path": "{tmp_path}/d/ttbar_*.root", "label": 0}}],
            "branches": ["MET_pt"], "workers": 2, "executor": "processes", "cache_dir": None,
        }})
        for epoch in range(2):
            n = sum(len(b.y) for b in ds.batches(batch_size=256, epoch=epoch))
            print("epoch", epoch, n)
        """)
    for argv in ([sys.executable, "-"], [sys.executable]):
        r = subprocess.run(
            argv, input=script, capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=120
        )
        assert (r.returncode, r.stdout, r.stderr) == (0, "epoch 0 2000\nepoch 1 2000\n", "")


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie holds no memory
    except (FileNotFoundError, ProcessLookupError):  # reading races with the exit
        return True


def test_workers_exit_when_the_parent_is_killed(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(
        textwrap.dedent("""\
            import time
            from mlaas4hep.io.executor import process_pool

            if __name__ == "__main__":
                pool = process_pool(2)
                print(" ".join(str(p) for p in pool._processes), flush=True)
                time.sleep(300)
            """)
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=_env(),
    )
    try:
        workers = [int(p) for p in proc.stdout.readline().split()]
        assert len(workers) == 2 and not any(_gone(p) for p in workers)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(_gone(p) for p in workers):
            time.sleep(0.2)
        left = [p for p in workers if not _gone(p)]
        for p in left:  # do not leave them behind for the rest of the suite
            os.kill(p, signal.SIGKILL)
        assert not left, f"workers {left} outlived their parent"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_ctrl_c_on_a_terminal_stops_workers_quietly(tmp_path):
    """SIGINT reaches every process of the command: the workers leave without a traceback each."""
    import pty
    import select

    from ..terminal import plain, terminal_env

    script = tmp_path / "interrupt_me.py"
    script.write_text(
        textwrap.dedent("""\
            import time
            from mlaas4hep.io.executor import process_pool

            if __name__ == "__main__":
                pool = process_pool(2)
                futures = [pool.submit(time.sleep, 60) for _ in range(2)]
                try:  # "ready" inside the try: Ctrl-C may come the moment it is printed
                    print("ready", flush=True)
                    for f in futures:
                        f.result()
                except KeyboardInterrupt:
                    print("interrupted", flush=True)
                for _ in range(100):  # the pool notices its workers are gone
                    if pool._broken:
                        break
                    time.sleep(0.1)
                print("again", process_pool(2).submit(int, "7").result(), flush=True)
            """)
    )
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=terminal_env(),
        start_new_session=True,
        # as a terminal gives it: a pytest started in the background (`cmd &` in a script)
        # ignores SIGINT, and its children would inherit that
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    os.close(slave)
    out, sent, deadline = b"", False, time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    break
                if not data:
                    break
                out += data
            if not sent and b"ready" in out:
                os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does on a terminal
                sent = True
        rc = proc.wait(30)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = plain(out)
    assert rc == 0 and "interrupted" in text and "again 7" in text, text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text


@pytest.mark.skipif(os.name != "posix", reason="workers are spawned, not forked from a fork server")
def test_a_worker_still_starting_is_already_quiet_on_ctrl_c(tmp_path):
    """Ctrl-C may come before a worker has run its initializer: it is born with the quiet handler."""
    script = tmp_path / "born_quiet.py"
    script.write_text(
        textwrap.dedent("""\
            import os, signal, time
            from mlaas4hep.io.executor import worker_context

            def interrupt_myself():  # runs before any initializer a pool would give
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(30)

            if __name__ == "__main__":
                worker = worker_context().Process(target=interrupt_myself)
                worker.start()
                worker.join(60)
                print("exit", worker.exitcode, flush=True)
            """)
    )
    run = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert run.returncode == 0 and run.stdout == "exit 130\n", run.stdout + run.stderr
    assert run.stderr == "", run.stderr  # no KeyboardInterrupt traceback from the worker


def test_importing_quietworkers_elsewhere_leaves_ctrl_c_alone():
    """Only the fork server's import installs the quiet handler (a tool may import every module)."""
    code = (
        "import signal; before = signal.getsignal(signal.SIGINT); import mlaas4hep.io.quietworkers; "
        "print(signal.getsignal(signal.SIGINT) is before)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.stdout.strip() == "True", run.stdout + run.stderr


def test_tasks_run_here_until_the_workers_are_up():
    """The calling process runs what it needs while the workers start; the rest goes to them."""
    from concurrent.futures import wait

    from mlaas4hep.io.executor import StartingPool, get_executor, shutdown_pools

    shutdown_pools()
    ex = get_executor("local", 2)
    assert isinstance(ex, StartingPool)  # handed out at once, its workers still importing
    assert ex.submit(os.getpid).result() == os.getpid()  # asked for at once: ran here
    held = [ex.submit(abs, -i) for i in range(6)]
    wait(held, timeout=120)  # waiting does not run them here: the workers do, once up
    assert [h.result() for h in held] == list(range(6))
    assert ex.up
    pool = get_executor("local", 2)
    assert not isinstance(pool, StartingPool)  # every worker up: the pool itself
    assert pool.submit(os.getpid).result() != os.getpid()


def test_one_pool_per_process_for_every_pass(data_dir, tmp_path, monkeypatch):
    """Specs pass, epochs and to_numpy share one pool, started once, and give the same arrays."""
    import numpy as np

    from mlaas4hep.io import Dataset, executor

    from ..conftest import sample_config

    executor.shutdown_pools()
    started = []
    real = executor.ProcessPoolExecutor

    def counting(*args, **kwargs):
        started.append(kwargs.get("max_workers"))
        return real(*args, **kwargs)

    monkeypatch.setattr(executor, "ProcessPoolExecutor", counting)
    over = dict(jagged={}, shuffle=False)
    ds = Dataset.from_config(sample_config(data_dir, tmp_path / "c", workers=2, executor="processes", **over))
    ds.specs  # noqa: B018
    e0 = [np.array(b.x) for b in ds.batches(4000, 0)]
    e1 = [np.array(b.x) for b in ds.batches(4000, 1)]
    x, y = ds.to_numpy()
    assert started == [2]
    ref = Dataset.from_config(sample_config(data_dir, tmp_path / "r", workers=0, **over), fused=False)
    np.testing.assert_array_equal(np.concatenate(e0), ref.to_numpy()[0])
    np.testing.assert_array_equal(np.concatenate(e1), x)
    assert len(y) == len(x) == ds.nevents
