"""A tiny protobuf wire-format decoder for the few TensorFlow messages a checkpoint holds.

Why a hand decoder rather than the ``protobuf`` package: the messages are small and fixed
(BundleHeaderProto, BundleEntryProto, TensorShapeProto, TensorSliceProto, TrackableObjectGraph),
``protobuf`` ships none of TensorFlow's ``.proto`` definitions (we would have to vendor generated
``_pb2`` modules tied to one protobuf major version), and ~100 lines of decoding keep the reader
dependency-free. Unknown fields are skipped, as protobuf itself does.
"""

from __future__ import annotations

import struct
from collections import defaultdict

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5


class ProtoError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Decode a base-128 varint at ``pos``; returns (value, next position)."""
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise ProtoError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ProtoError("varint longer than 10 bytes")


def parse(buf: bytes) -> dict[int, list]:
    """Split a message into {field number: [raw values in order]}.

    Varints come back as non-negative ints, fixed32/fixed64 as unsigned ints, length-delimited
    fields as bytes (sub-messages, strings and packed repeated fields alike).
    """
    fields: dict[int, list] = defaultdict(list)
    pos = 0
    end = len(buf)
    while pos < end:
        tag, pos = read_varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise ProtoError("field number 0")
        if wire == VARINT:
            value, pos = read_varint(buf, pos)
        elif wire == FIXED64:
            if pos + 8 > end:
                raise ProtoError("truncated fixed64")
            (value,) = struct.unpack_from("<Q", buf, pos)
            pos += 8
        elif wire == LENGTH:
            size, pos = read_varint(buf, pos)
            if pos + size > end:
                raise ProtoError("truncated length-delimited field")
            value = bytes(buf[pos : pos + size])
            pos += size
        elif wire == FIXED32:
            if pos + 4 > end:
                raise ProtoError("truncated fixed32")
            (value,) = struct.unpack_from("<I", buf, pos)
            pos += 4
        else:
            raise ProtoError(f"unsupported wire type {wire}")
        fields[number].append(value)
    return fields


def to_int64(value: int) -> int:
    """Reinterpret a decoded varint as a two's-complement int64 (how int64 fields are sent)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def first(fields: dict[int, list], number: int, default=None):
    values = fields.get(number)
    return values[-1] if values else default  # protobuf: last value wins for scalars


def text(fields: dict[int, list], number: int, default: str = "") -> str:
    raw = first(fields, number)
    return raw.decode("utf-8") if raw is not None else default


def repeated_varints(fields: dict[int, list], number: int) -> list[int]:
    """A repeated scalar field, accepting both packed and unpacked encodings."""
    out: list[int] = []
    for value in fields.get(number, []):
        if isinstance(value, bytes):
            pos = 0
            while pos < len(value):
                v, pos = read_varint(value, pos)
                out.append(v)
        else:
            out.append(value)
    return out
