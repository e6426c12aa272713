"""The grpcio front end's listeners: several ``grpc.aio`` servers on one port (SO_REUSEPORT), in process."""

from __future__ import annotations

import asyncio
import socket

import numpy as np
import pytest

from .conftest import install_copy
from .oracle import ATOL

grpc = pytest.importorskip("grpc")
from mlaas4hep.serve import create_app  # noqa: E402
from mlaas4hep.serve._proto import grpc_service_pb2 as pb  # noqa: E402
from mlaas4hep.serve._proto import grpc_service_pb2_grpc as pb_grpc  # noqa: E402
from mlaas4hep.serve.grpc_server import GrpcServer  # noqa: E402


@pytest.fixture
def app(tth_bundle, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    install_copy(repo, tth_bundle.path, "tth")
    return create_app(repo)


def test_listeners_share_one_port_and_all_answer(app, tth_bundle):
    x = np.ascontiguousarray(tth_bundle.x[:2], dtype=np.float32)
    req = pb.ModelInferRequest(model_name="tth")
    req.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    req.raw_input_contents.append(x.tobytes())

    async def main() -> list[np.ndarray]:
        srv = GrpcServer(app.state, 0, listeners=3, frontend="grpcio")
        await srv.start()
        try:
            assert srv.port > 0 and len(srv.servers) == 3
            out = []
            for _ in range(6):  # new connections: the kernel spreads them over the listeners
                async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
                    stub = pb_grpc.GRPCInferenceServiceStub(ch)
                    r = await stub.ModelInfer(req, timeout=30)
                    out.append(np.frombuffer(r.raw_output_contents[0], np.float32).reshape(2, -1))
            return out
        finally:
            await srv.stop(0)
            assert srv.server is None

    for y in asyncio.run(main()):
        np.testing.assert_allclose(y, tth_bundle.oracle.score(x), atol=ATOL)


@pytest.mark.parametrize(("frontend", "listeners"), [("grpcio", 1), ("grpcio", 4), ("wire", 1)])
def test_port_in_use_is_an_error(app, frontend, listeners):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        srv = GrpcServer(app.state, port, listeners=listeners, frontend=frontend)
        with pytest.raises(RuntimeError, match=f"gRPC cannot listen on 127.0.0.1:{port}"):
            asyncio.run(srv.start())
        assert srv.servers == [] and srv.wire is None
