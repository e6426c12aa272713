"""onnxruntime calls of 1000 rows under different session options, side by side in one process.

    bench/ort_calls.py [--rows 1000] [--rounds 5] [--seconds 1] [--configs ours,triton,...]

The ONNX MLP of ``bench/serve.py`` (111-256-256-128-1), one session per
configuration, all loaded at once; each round runs every configuration for
``--seconds`` in turn (the order rotates by round, so the drift of a shared
machine falls on all alike). Prints per configuration the median over rounds of
the wall time per call and the CPU time per call (the whole process, all
onnxruntime threads), and checks that every configuration gives the same bits.

Configurations (onnxruntime's defaults unless named):

* ``ours``: the server before stop 14 (no CPU memory arena, inter-op 1, no spinning);
* ``triton``: Triton's onnxruntime backend as bench/peers.py configures it (all defaults:
  arena, memory patterns, spinning);
* ``arena``: ours with the memory arena; ``spin``: ours with spinning;
* ``bind``: ours with the output bound to a preallocated array (IOBinding).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve import SIZES, mlp_onnx


def session(model: bytes, arena: bool, spin: bool | None, inter1: bool, threads: int = 0) -> Any:
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    if inter1:
        o.inter_op_num_threads = 1
    if spin is not None:
        o.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    o.enable_cpu_mem_arena = arena
    return ort.InferenceSession(model, sess_options=o, providers=["CPUExecutionProvider"])


def runner(name: str, model: bytes, x: np.ndarray) -> Callable[[], np.ndarray]:
    if name == "ours":
        s = session(model, arena=False, spin=False, inter1=True)
    elif name == "triton":
        s = session(model, arena=True, spin=None, inter1=False)
    elif name == "arena":
        s = session(model, arena=True, spin=False, inter1=True)
    elif name == "spin":
        s = session(model, arena=False, spin=True, inter1=True)
    elif name == "t1":
        s = session(model, arena=False, spin=False, inter1=True, threads=1)
    elif name == "arena-t1":
        s = session(model, arena=True, spin=False, inter1=True, threads=1)
    elif name in ("bind", "arena-bind"):
        s = session(model, arena=name == "arena-bind", spin=False, inter1=True)
        out = np.empty((x.shape[0], 1), np.float32)
        b = s.io_binding()
        b.bind_cpu_input("x", x)
        b.bind_output("probs", "cpu", 0, np.float32, list(out.shape), out.ctypes.data)

        def call() -> np.ndarray:
            s.run_with_iobinding(b)
            return out

        return call
    else:
        raise SystemExit(f"unknown configuration {name!r}")
    return lambda: s.run(["probs"], {"x": x})[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--configs", default="ours,triton,arena,spin,bind")
    args = ap.parse_args()
    names = [c for c in args.configs.split(",") if c]
    x = np.random.default_rng(1).random((args.rows, SIZES[0]), dtype=np.float32)
    model = mlp_onnx()
    calls = {n: runner(n, model, x) for n in names}
    ref = calls[names[0]]().copy()
    for n, c in calls.items():
        got = c()
        if not np.array_equal(got.view(np.uint32), ref.view(np.uint32)):
            print(f"{n}: scores differ from {names[0]}'s", file=sys.stderr)
        for _ in range(20):
            c()
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    loads = []
    for r in range(args.rounds):
        loads.append(os.getloadavg()[0])
        for n in names[r % len(names) :] + names[: r % len(names)]:
            c, k = calls[n], 0
            c0, t0 = time.process_time(), time.perf_counter()
            while time.perf_counter() - t0 < args.seconds:
                c()
                k += 1
            wall[n].append((time.perf_counter() - t0) / k * 1e6)
            cpu[n].append((time.process_time() - c0) / k * 1e6)
    base = statistics.median(wall[names[0]])
    print(f"{args.rows} rows per call, {args.rounds} rounds of {args.seconds:g} s, load average {loads}")
    print(f"{'config':<12}{'wall us/call':>14}{'cpu us/call':>14}{'calls/s vs ' + names[0]:>18}")
    for n in names:
        w, c = statistics.median(wall[n]), statistics.median(cpu[n])
        print(f"{n:<12}{w:>14.0f}{c:>14.0f}{base / w:>17.2f}x")


if __name__ == "__main__":
    main()
