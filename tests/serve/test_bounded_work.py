"""No model can hang the server: a call past its time limit is cut off, the model marked unhealthy.

The attack of issue 24: a bundle whose ONNX holds a ``Loop`` of 2**62 iterations. Before,
two such requests froze every other model for as long as the server ran, while the health
probes said all was well. Here a real server with ``--infer-timeout 3`` serves that model
next to a normal one; the loops are cut, the other model answers meanwhile, and every
interface (HTTP, gRPC, the repository index) says the looping model is not ready until an
operator loads it again. A model whose computation fails on its inputs answers 400, not 500.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from mlaas4hep import bundle
from mlaas4hep.io.preprocess import Preprocessor
from mlaas4hep.localservers import free_port

from .conftest import HTTP, ServerProcess, install_copy, mlp_onnx

N_FEATURES = 4


def looping_onnx(trips: int = 2**62) -> bytes:
    """x [n, F] -> a Loop adding 1 to x ``trips`` times -> mean over F -> sigmoid [n, 1]."""
    import onnx
    from onnx import TensorProto, helper

    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["x_in", "one"], ["x_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x_in", TensorProto.FLOAT, ["n", N_FEATURES]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x_out", TensorProto.FLOAT, ["n", N_FEATURES]),
        ],
        [helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])],
    )
    graph = helper.make_graph(
        [
            helper.make_node("Loop", ["trips", "cond", "x"], ["looped"], body=body),
            helper.make_node("ReduceMean", ["looped"], ["m"], axes=[1], keepdims=1),
            helper.make_node("Sigmoid", ["m"], ["probs"]),
        ],
        "loop",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", N_FEATURES])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["n", 1])],
        [
            helper.make_tensor("trips", TensorProto.INT64, [], [trips]),
            helper.make_tensor("cond", TensorProto.BOOL, [], [True]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _bundle(tmp_path, name: str, onnx_bytes: bytes):
    pre = Preprocessor(flat=[f"f{i}" for i in range(N_FEATURES)], jagged=[], normalize="none")
    return bundle.write(tmp_path / name, onnx_bytes, pre, ["b", "s"], name=name, framework="onnx")


def _infer(url: str, model: str, rows: int = 1):
    x = np.full((rows, N_FEATURES), 0.5, np.float32)
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
    return HTTP.post(f"{url}/v2/models/{model}/infer", json=body, timeout=60)


def test_a_looping_model_is_cut_off_and_the_others_keep_answering(tmp_path):
    repo = tmp_path / "repo"
    install_copy(repo, _bundle(tmp_path, "loop", looping_onnx()), "loop")
    install_copy(repo, _bundle(tmp_path, "mlp", mlp_onnx(N_FEATURES)), "mlp")
    grpc_port = free_port()
    srv = ServerProcess(repo, "--infer-timeout", "3", "--grpc-port", str(grpc_port)).start()
    try:
        with cf.ThreadPoolExecutor(3) as pool:
            loops = [pool.submit(_infer, srv.url, "loop", rows) for rows in (1, 300)]
            time.sleep(0.5)  # both loops are running
            t0 = time.monotonic()
            other = _infer(srv.url, "mlp")
            answered_other = time.monotonic()
            results = [f.result() for f in loops]
            answered_loops = time.monotonic()
        # the other model answered while the looping calls still ran (they end when cut, at 3 s)
        assert other.status_code == 200, other.text
        assert answered_other < answered_loops and answered_other - t0 < answered_loops - answered_other
        assert HTTP.get(srv.url + "/v2/health/live").status_code == 200
        for r in results:  # what an uploaded model does is never a 5xx
            assert r.status_code == 400, r.text
            assert r.json()["error"].startswith("model 'loop' version 1 ran longer than 3 s and was cut off")
        # every interface says the looping model is not ready; the other one is
        assert HTTP.get(srv.url + "/v2/models/loop/ready").status_code != 200
        assert HTTP.get(srv.url + "/v2/models/mlp/ready").status_code == 200
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        assert client.is_model_ready("loop") is False and client.is_model_ready("mlp") is True
        index = {m["name"]: m for m in HTTP.post(srv.url + "/v2/repository/index").json()}
        assert index["loop"]["state"] == "UNAVAILABLE" and "cut off" in index["loop"]["reason"]
        assert index["mlp"]["state"] == "READY"
        # refused at once until loaded again, instead of starting another endless call
        r = _infer(srv.url, "loop")
        assert r.status_code == 400 and "is unhealthy" in r.json()["error"]
        with pytest.raises(InferenceServerException) as err:
            t = grpcclient.InferInput("x", [1, N_FEATURES], "FP32")
            t.set_data_from_numpy(np.zeros((1, N_FEATURES), np.float32))
            client.infer("loop", [t])
        assert err.value.status() == "StatusCode.UNAVAILABLE"
        assert HTTP.post(srv.url + "/v2/repository/models/loop/load", headers=srv.admin).status_code == 200
        assert HTTP.get(srv.url + "/v2/models/loop/ready").status_code == 200
        assert _infer(srv.url, "mlp").status_code == 200
    finally:
        srv.stop()


def test_a_model_failing_on_its_inputs_answers_400_not_500(tmp_path):
    """A ``Reshape`` to a shape that no input fits: onnxruntime fails at run time on every request."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["x", "shape"], ["r"]),
            helper.make_node("ReduceMean", ["r"], ["m"], axes=[1], keepdims=1),
            helper.make_node("Sigmoid", ["m"], ["probs"]),
        ],
        "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", N_FEATURES])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["n", 1])],
        [helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 7])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    repo = tmp_path / "repo"
    install_copy(repo, _bundle(tmp_path, "bad", model.SerializeToString()), "bad")
    srv = ServerProcess(repo).start()
    try:
        r = _infer(srv.url, "bad")
        assert r.status_code == 400, r.text
        assert r.json()["error"].startswith("model 'bad' version 1 failed on these inputs: ")
        assert "/" not in r.json()["error"].split("failed on these inputs:")[0]
    finally:
        srv.stop()


def test_a_ten_kilobyte_model_name_gets_not_found_over_grpc(tmp_path):
    """The name echoed in the error is shortened: gRPC's trailing metadata has a size limit."""
    import grpc

    repo = tmp_path / "repo"
    repo.mkdir()
    grpc_port = free_port()
    srv = ServerProcess(repo, "--grpc-port", str(grpc_port)).start()
    try:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        try:
            client.get_model_metadata("m" * 10_000)
        except Exception as err:  # tritonclient's InferenceServerException
            assert err.status() == str(grpc.StatusCode.NOT_FOUND), err
            assert len(err.message()) <= 1024 and err.message().endswith("(shortened)")
        else:
            raise AssertionError("no error")
    finally:
        srv.stop()


def test_headers_are_bounded_in_count_and_size(tmp_path):
    """10,000 headers, a 1 MB header, a header streamed forever: 431 at once, and the server goes on."""
    import socket

    repo = tmp_path / "repo"
    install_copy(repo, _bundle(tmp_path, "mlp", mlp_onnx(N_FEATURES)), "mlp")
    srv = ServerProcess(repo).start()

    def raw(head: bytes, chunks: int = 0) -> bytes:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
            try:
                s.sendall(head)
                for _ in range(chunks):  # a header value that never ends
                    s.sendall(b"x" * 65536)
            except OSError:  # the server closed the connection: what it said was sent before
                pass
            out = b""
            while chunk := s.recv(65536):
                out += chunk
            return out

    try:

        def fields(n: int) -> bytes:
            return b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n" + b"".join(
                b"X-%d: y\r\n" % i for i in range(n)
            )

        big = b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nX-Big: " + b"y" * 1_000_000 + b"\r\n\r\n"
        endless = b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nX-Endless: "
        for head, chunks, why in (
            (fields(150) + b"\r\n", 0, b"more than 100 header fields"),
            (fields(10_000) + b"\r\n", 0, b"send fewer or smaller headers"),
            (big, 0, b"headers exceed 65536 bytes"),
            (endless, 16, b"headers exceed 65536 bytes"),
        ):
            out = raw(head, chunks)
            assert out.startswith(b"HTTP/1.1 431 "), out[:200]
            assert why in out, out[-300:]
        # within the limits, requests (with their bodies) go through as before
        ok = raw(
            b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n"
            + b"X-A: b\r\n" * 90
            + b"Connection: close\r\n\r\n"
        )
        assert ok.startswith(b"HTTP/1.1 200 "), ok[:200]
        assert _infer(srv.url, "mlp", rows=20_000).status_code == 200  # a 1.6 MB body in one request
    finally:
        srv.stop()


def test_a_response_leaves_in_one_write():
    """uvicorn writes a response's head and body in two calls; a server killed between them left
    nginx with a head it had passed on and could not retry ("partial file" at the client). The
    protocol's transport joins them: one write per response, and a lone head still leaves."""
    import asyncio

    from mlaas4hep.serve.httpproto import OneWrite

    class Recording:
        def __init__(self) -> None:
            self.writes: list[bytes] = []
            self.closed = False

        def write(self, data: bytes) -> None:
            self.writes.append(data)

        def is_closing(self) -> bool:
            return self.closed

        def close(self) -> None:
            self.closed = True

    async def run() -> list[list[bytes]]:
        loop = asyncio.get_running_loop()
        out = []
        for parts in (
            [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n", b"{}"],  # head + body: one write
            [b"HTTP/1.1 204 No Content\r\n\r\n"],  # a head alone leaves at the next turn
            [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", b"2\r\n{}\r\n", b"0\r\n\r\n"],
        ):
            rec = Recording()
            t = OneWrite(rec, loop)
            for p in parts:
                t.write(p)
            await asyncio.sleep(0)
            out.append(rec.writes)
        rec = Recording()
        t = OneWrite(rec, loop)
        t.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\n\r\n")
        t.close()  # closing writes what is held first
        out.append([*rec.writes, b"closed" if rec.closed else b"open"])
        return out

    one, alone, chunked, closing = asyncio.run(run())
    assert one == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
    assert alone == [b"HTTP/1.1 204 No Content\r\n\r\n"]
    assert chunked == [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n", b"0\r\n\r\n"]
    assert closing == [b"HTTP/1.1 431 Request Header Fields Too Large\r\n\r\n", b"closed"]


def trips_onnx() -> bytes:
    """x [n, F] -> a Loop adding 1 to x max(x) times -> mean over F -> sigmoid [n, 1].

    Cheap for zeros, endless for 1e15: its run time depends on the values, not on the shapes.
    """
    import onnx
    from onnx import helper

    model = onnx.load_model_from_string(looping_onnx())
    graph = model.graph
    del graph.initializer[0]  # the constant trip count
    graph.node.insert(0, helper.make_node("ReduceMax", ["x"], ["xmax"], keepdims=0))
    graph.node.insert(1, helper.make_node("Cast", ["xmax"], ["trips"], to=onnx.TensorProto.INT64))
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _plane(tmp_path, onnx_bytes: bytes, timeout: float):
    from mlaas4hep.serve.auth import Auth
    from mlaas4hep.serve.config import ServeConfig
    from mlaas4hep.serve.dataplane import DataPlane
    from mlaas4hep.serve.metrics import Metrics
    from mlaas4hep.serve.repository import Repository

    repo = tmp_path / "repo"
    install_copy(repo, _bundle(tmp_path, "trips", onnx_bytes), "trips")
    config = ServeConfig(repo=str(repo), infer_timeout=timeout)
    return DataPlane(Repository(repo), Auth(None), config, Metrics(lambda err: 200))


def test_a_model_whose_run_time_depends_on_its_inputs_never_blocks_the_event_loop(tmp_path, monkeypatch):
    """Fast calls of a model with a Loop do not make it run inline: the next inputs may loop for ever.

    Cut off by the time limit, the call never held the event loop (a ticker kept ticking). The
    threshold of inline calls is raised above this model's cost (a Loop costs onnxruntime a few
    hundred microseconds even for zero trips), so that only the Loop keeps it off the event loop.
    """
    import asyncio

    from mlaas4hep.serve import batching

    monkeypatch.setattr(batching, "INLINE_US", 100_000.0)
    from mlaas4hep.serve.dataplane import InferRequest
    from mlaas4hep.serve.errors import ModelTimedOut

    plane = _plane(tmp_path, trips_onnx(), timeout=1.0)

    def request(value: float) -> InferRequest:
        return InferRequest("trips", {"x": np.full((1, N_FEATURES), value, np.float32)})

    async def main():
        for _ in range(20):  # zero trips: microseconds each
            y = (await plane.infer(request(0.0))).outputs["probs"]
            np.testing.assert_allclose(y, [[0.5]])
        ticks = [time.perf_counter()]

        async def ticker():
            while True:
                await asyncio.sleep(0.01)
                ticks.append(time.perf_counter())

        tick = asyncio.get_running_loop().create_task(ticker())
        t0 = time.perf_counter()
        with pytest.raises(
            ModelTimedOut, match=r"model 'trips' version 1 ran longer than 1 s and was cut off"
        ):
            await plane.infer(request(1e15))
        took = time.perf_counter() - t0
        tick.cancel()
        ticks.append(time.perf_counter())
        return took, max(b - a for a, b in itertools.pairwise(ticks))

    try:
        took, longest_gap = asyncio.run(main())
    finally:
        plane.close()
    assert 0.9 < took < 30  # cut off by the time limit ("< 30": it ended, whatever the machine's load)
    assert longest_gap < 0.5, f"the event loop was held for {longest_gap:.2f} s"


def test_the_time_limit_cuts_a_call_running_on_the_event_loop(tmp_path):
    """An inline call (batcher told the model is cheap) is cut by the watchdog like one in a thread."""
    import asyncio
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from mlaas4hep.serve.batching import Batcher
    from mlaas4hep.serve.errors import ModelTimedOut
    from mlaas4hep.serve.watchdog import Watchdog

    predictor = bundle.load(_bundle(tmp_path, "trips", trips_onnx()))
    cut: list[float] = []
    watchdog = Watchdog(lambda key, seconds: cut.append(seconds))
    threads: list[str] = []

    def predict(x):
        threads.append(threading.current_thread().name)
        return watchdog.run(lambda ro: predictor.run(x, ro), "trips", 0.5, "model 'trips' version 1")

    pool = ThreadPoolExecutor(1)
    b = Batcher(predict, max_batch=64, max_delay_ms=0, executor=pool, inline_us=100_000)

    async def main():
        for _ in range(10):
            await b.infer({"x": np.zeros((1, N_FEATURES), np.float32)})
        t0 = time.perf_counter()
        with pytest.raises(ModelTimedOut, match=r"ran longer than 0.5 s and was cut off"):
            await b.infer({"x": np.full((1, N_FEATURES), 1e15, np.float32)})
        return time.perf_counter() - t0

    try:
        took = asyncio.run(main())
    finally:
        watchdog.close()
        pool.shutdown()
    assert threads[0] != "MainThread" and threads[-1] == "MainThread"  # the endless call ran inline
    assert cut == [0.5] and 0.45 < took < 30
