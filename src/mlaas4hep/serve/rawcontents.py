"""A ``ModelInferRequest``'s raw tensors taken out of its bytes without copying them.

``tritonclient`` (and so perf_analyzer, SONIC and coffea) sends every input as
one ``raw_input_contents`` entry (field 7, bytes): a 1000-row request of the
reference MLP is 444 kB, nearly all of it there. Decoding the message with
protobuf copies each entry into the message, and reading it back out copies
it again. :func:`split_raw` walks only the message's top level (a few fields:
the model's name, the inputs' descriptions, the outputs, the raw contents),
keeps each field-7 entry as a :class:`memoryview` of the request's own bytes,
and returns the rest (a few hundred bytes) for protobuf to decode.
``np.frombuffer`` then reads the tensors in place.

Protobuf's own decoding stays the judge of what is valid: a message whose top
level this walk cannot read (a truncated field, a group, a key longer than five
bytes, a varint past ten) or that has more than :data:`MAX_FIELDS` top-level
fields is left whole to it (:func:`split_raw` returns None), and gets the error
it always got. Taking the entries out changes nothing else, since a
repeated field's entries keep their order wherever they stand in the message.
"""

from __future__ import annotations

#: ``raw_input_contents``'s key: field 7, length-delimited (wire type 2)
RAW_KEY = (7 << 3) | 2
#: top-level fields walked at most: a request has a few per input; more is left to protobuf,
#: whose decoding costs less per field than a view does (a 1 kB gzip can hold a million)
MAX_FIELDS = 1024


def _varint(data: memoryview, pos: int, end: int) -> tuple[int, int]:
    """(value, position after it) of the varint at ``pos``; value -1: none there (truncated or too long)."""
    value, shift = 0, 0
    while pos < end and shift < 64:
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7
    return -1, pos


def split_raw(data: memoryview) -> tuple[bytes, list[memoryview]] | None:
    """(the message without its ``raw_input_contents``, those entries as views of ``data``).

    None: the message has no such entry, or a top level this walk does not read
    (protobuf decodes it whole then).
    """
    end = len(data)
    pos = kept = 0
    parts: list[memoryview] = []
    raws: list[memoryview] = []
    fields = 0
    while pos < end:
        fields += 1
        if fields > MAX_FIELDS:
            return None
        start = pos
        key, pos = _varint(data, pos, end)
        if key < 0 or pos - start > 5:  # protobuf refuses a key longer than 5 bytes
            return None
        wire = key & 7
        if wire == 0:
            value, pos = _varint(data, pos, end)
            if value < 0:
                return None
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = _varint(data, pos, end)
            if length < 0 or length > end - pos:
                return None
            if key == RAW_KEY:
                if start > kept:
                    parts.append(data[kept:start])
                raws.append(data[pos : pos + length])
                kept = pos + length
            pos += length
        else:  # groups (3, 4) and the wire types that do not exist: protobuf's to judge
            return None
        if pos > end:
            return None
    if not raws:
        return None
    parts.append(data[kept:end])
    return b"".join(parts), raws
