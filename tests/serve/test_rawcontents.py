"""``serve/rawcontents.py``: a ModelInferRequest's raw tensors taken out of its bytes.

What a user relies on: whatever bytes a client sends, the server reads the
same request as protobuf does (the same fields, the same tensors in the same
order) and refuses the same messages.
"""

from __future__ import annotations

import random
import time

import numpy as np
import pytest
from google.protobuf.message import DecodeError

from mlaas4hep.serve._proto import grpc_service_pb2 as pb
from mlaas4hep.serve.rawcontents import split_raw


def request(rows: int = 3) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="tth", model_version="2", id="call-1")
    req.parameters["priority"].int64_param = 7
    for name, width in (("jets", 4), ("met", 2)):
        req.inputs.add(name=name, datatype="FP32", shape=[rows, width])
        req.raw_input_contents.append(np.arange(rows * width, dtype=np.float32).tobytes())
    req.outputs.add(name="score")
    return req


def decoded(data: bytes) -> tuple[pb.ModelInferRequest, list[bytes]] | None:
    """(the message without its raw contents, the raw contents) as protobuf reads it; None: refused."""
    try:
        full = pb.ModelInferRequest.FromString(data)
    except DecodeError:
        return None
    raws = list(full.raw_input_contents)
    full.ClearField("raw_input_contents")
    return full, raws


def split_decoded(data: bytes) -> tuple[pb.ModelInferRequest, list[bytes]] | None:
    """The same through :func:`split_raw`, as the wire front end reads it."""
    split = split_raw(memoryview(data))
    if split is None:
        return decoded(data)
    rest, raws = split
    try:
        msg = pb.ModelInferRequest.FromString(rest)
    except DecodeError:
        return None
    assert not msg.raw_input_contents
    return msg, [bytes(r) for r in raws]


def test_the_tensors_are_views_of_the_request_in_their_order():
    req = request()
    data = req.SerializeToString()
    rest, raws = split_raw(memoryview(data))
    assert [bytes(r) for r in raws] == list(req.raw_input_contents)
    assert all(r.obj is data for r in raws)  # not copied
    assert len(rest) < 200
    req.ClearField("raw_input_contents")
    assert pb.ModelInferRequest.FromString(rest) == req


def test_entries_anywhere_in_the_message_keep_their_order():
    # a writer other than protobuf's may put field 7 first, or between other fields
    a, b = b"\x01\x02\x03\x04", b"\x05\x06\x07\x08"
    head = pb.ModelInferRequest(model_name="m").SerializeToString()
    tail = pb.ModelInferRequest(id="x").SerializeToString()
    raw_a = pb.ModelInferRequest(raw_input_contents=[a]).SerializeToString()
    raw_b = pb.ModelInferRequest(raw_input_contents=[b]).SerializeToString()
    data = raw_a + head + raw_b + tail
    assert split_decoded(data) == decoded(data)
    assert split_decoded(data)[1] == [a, b]


def test_a_message_without_raw_contents_is_left_to_protobuf():
    req = request()
    req.ClearField("raw_input_contents")
    assert split_raw(memoryview(req.SerializeToString())) is None


@pytest.mark.parametrize("seed", range(4))
def test_damaged_messages_read_as_protobuf_reads_them(seed):
    """Truncations, flipped bytes and random bytes: the same request, or the same refusal."""
    rng = random.Random(seed)
    good = request(rows=rng.randint(0, 5)).SerializeToString()
    for _ in range(500):
        data = bytearray(good)
        kind = rng.randrange(4)
        if kind == 0:
            data = data[: rng.randrange(len(data) + 1)]
        elif kind == 1:
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif kind == 2:
            data[rng.randrange(len(data)) :] = rng.randbytes(rng.randrange(40))
        else:
            data = bytearray(rng.randbytes(rng.randrange(60)))
        data = bytes(data)
        assert split_decoded(data) == decoded(data), data


def test_a_key_protobuf_refuses_is_refused():
    # field 7 with a 6-byte key: protobuf refuses keys longer than 5 bytes, so must the server
    data = b"\x0a\x01x" + b"\xba\x80\x80\x80\x80\x00" + b"\x03abc"
    assert decoded(data) is None
    assert split_decoded(data) is None


@pytest.mark.parametrize(
    "field", [b"\x3a\x00", b"\x78\x00"], ids=["empty-raw-entries", "tiny-unknown-fields"]
)
def test_a_message_of_a_million_fields_is_left_to_protobuf(field):
    """1 MiB of 2-byte fields (a 1 kB gzip): no view per field, the walk stops at MAX_FIELDS."""
    data = field * 524_288
    start = time.perf_counter()
    assert split_raw(memoryview(data)) is None
    assert time.perf_counter() - start < 0.5
    assert split_decoded(data) == decoded(data)
