"""The index file of a TensorFlow V2 checkpoint (``PREFIX.index``), read without TensorFlow.

It is a LevelDB-style table mapping each key to a BundleEntryProto (dtype, shape, data shard,
offset, size, CRC32C, slices of partitioned variables); its first entry is the bundle header.
TF2 checkpoints also store their TrackableObjectGraph (the Keras variable names) as a string
tensor, parsed here by :class:`ObjectGraph`. :mod:`align_hf.conversion.tf_checkpoint` reads the
tensor data the entries point to.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from align_hf.conversion import checksum as crc32c
from align_hf.conversion.protowire import ProtoError, first, parse, read_varint, repeated_varints, text, to_int64

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_SIZE = 48
OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
_SUPPORTED_BUNDLE_VERSION = 1

# TensorFlow DataType enum -> (name, numpy dtype or None for specially decoded types)
_DTYPES: dict[int, tuple[str, np.dtype | None]] = {
    1: ("float32", np.dtype("<f4")),
    2: ("float64", np.dtype("<f8")),
    3: ("int32", np.dtype("<i4")),
    4: ("uint8", np.dtype("u1")),
    5: ("int16", np.dtype("<i2")),
    6: ("int8", np.dtype("i1")),
    7: ("string", None),
    8: ("complex64", np.dtype("<c8")),
    9: ("int64", np.dtype("<i8")),
    10: ("bool", np.dtype("?")),
    14: ("bfloat16", np.dtype("<u2")),  # read as raw uint16 bits, widened to float32 on request
    17: ("uint16", np.dtype("<u2")),
    18: ("complex128", np.dtype("<c16")),
    19: ("float16", np.dtype("<f2")),
    22: ("uint32", np.dtype("<u4")),
    23: ("uint64", np.dtype("<u8")),
}
NUMPY_DTYPES = {name: np_dtype for name, np_dtype in _DTYPES.values() if np_dtype is not None}
_DTYPE_NAMES_BY_ENUM = {
    11: "qint8", 12: "quint8", 13: "qint32", 15: "qint16", 16: "quint16", 20: "resource", 21: "variant",
}


class CheckpointError(ValueError):
    """The files are missing, corrupted, truncated or not a TensorFlow V2 checkpoint."""


@dataclass(frozen=True)
class TensorEntry:
    """Where and how one tensor is stored (a decoded BundleEntryProto)."""

    key: str
    dtype: str
    shape: tuple[int, ...]
    shard_id: int = 0
    offset: int = 0
    size: int = 0
    crc32c: int | None = None  # masked, as stored
    # For partitioned variables: one ((start, length), ...) per stored slice; length -1 = full dim.
    slices: tuple[tuple[tuple[int, int], ...], ...] = ()

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1


@dataclass
class TrackableNode:
    children: list[tuple[int, str]] = field(default_factory=list)  # (node id, local name)
    attributes: list[tuple[str, str, str]] = field(default_factory=list)  # (name, full_name, checkpoint key)
    slot_variables: list[tuple[int, str, int]] = field(default_factory=list)  # (variable node, slot, slot node)


class ObjectGraph:
    """The TrackableObjectGraph stored in TF2 checkpoints under ``_CHECKPOINTABLE_OBJECT_GRAPH``.

    Gives, for each checkpoint key, the variable's ``full_name`` (the Keras/TF variable name such
    as ``stem_bn/gamma``), the object path it was saved under, and which keys are optimizer slots.
    """

    def __init__(self, nodes: list[TrackableNode]):
        self.nodes = nodes
        self.paths: dict[int, str] = self._paths()
        self.full_names: dict[str, str] = {}
        self.key_nodes: dict[str, int] = {}
        for node_id, node in enumerate(nodes):
            for _name, full_name, key in node.attributes:
                self.full_names[key] = full_name
                self.key_nodes[key] = node_id
        # slot key -> (checkpoint key of the variable it belongs to, slot name)
        self.slots: dict[str, tuple[str | None, str]] = {}
        node_keys = {node_id: key for key, node_id in self.key_nodes.items()}
        for node in nodes:
            for var_id, slot_name, slot_id in node.slot_variables:
                slot_key = node_keys.get(slot_id)
                if slot_key is not None:
                    self.slots[slot_key] = (node_keys.get(var_id), slot_name)

    @classmethod
    def from_bytes(cls, raw: bytes) -> "ObjectGraph":
        nodes = []
        for node_raw in parse(raw).get(1, []):
            f = parse(node_raw)
            node = TrackableNode()
            for child in f.get(1, []):
                c = parse(child)
                node.children.append((first(c, 1, 0), text(c, 2)))
            for attr in f.get(2, []):
                a = parse(attr)
                node.attributes.append((text(a, 1), text(a, 2), text(a, 3)))
            for slot in f.get(3, []):
                s = parse(slot)
                node.slot_variables.append((first(s, 1, 0), text(s, 2), first(s, 3, 0)))
            nodes.append(node)
        return cls(nodes)

    def _paths(self) -> dict[int, str]:
        paths = {0: ""}
        queue = [0]
        while queue:  # breadth first, so each node gets its shortest path, as TF names keys
            node_id = queue.pop(0)
            for child_id, local_name in self.nodes[node_id].children:
                if child_id not in paths and child_id < len(self.nodes):
                    parent = paths[node_id]
                    paths[child_id] = f"{parent}/{local_name}" if parent else local_name
                    queue.append(child_id)
        return paths


def resolve_prefix(path: str | os.PathLike) -> str:
    """Turn what a user points at into a checkpoint prefix.

    Accepts the prefix itself, ``PREFIX.index``, ``PREFIX.data-00000-of-00001``, or a directory
    holding a ``checkpoint`` state file (its latest checkpoint is used) or exactly one ``*.index``.
    """
    p = Path(path)
    s = str(p)
    if s.endswith(".index"):
        s = s[: -len(".index")]
    else:
        m = re.match(r"^(.*)\.data-\d{5}-of-\d{5}$", s)
        if m:
            s = m.group(1)
    if Path(s + ".index").is_file():
        return s
    if p.is_dir():
        state = p / "checkpoint"
        if state.is_file():
            m = re.search(r'^model_checkpoint_path:\s*"(.*)"\s*$', state.read_text(), re.M)
            if m:
                latest = Path(m.group(1))
                latest = latest if latest.is_absolute() else p / latest
                if Path(str(latest) + ".index").is_file():
                    return str(latest)
        indexes = sorted(p.glob("*.index"))
        if len(indexes) == 1:
            return str(indexes[0])[: -len(".index")]
        if len(indexes) > 1:
            names = ", ".join(i.name for i in indexes)
            raise CheckpointError(f"{p} holds several checkpoints ({names}); pass one prefix")
        if (p / "saved_model.pb").is_file():
            raise CheckpointError(
                f"{p} is a SavedModel, not a checkpoint; its weights are in {p / 'variables' / 'variables'}"
            )
        raise CheckpointError(f"no TensorFlow checkpoint (*.index) found in directory {p}")
    hint = ""
    if p.is_file():
        with open(p, "rb") as fh:
            head = fh.read(8)
        if head.startswith(b"\x89HDF"):
            hint = " (this is an HDF5 file, e.g. Keras .h5 weights, not a TF checkpoint)"
        elif head.startswith(b"PK"):
            hint = " (this is a zip file, e.g. a PyTorch or .keras archive, not a TF checkpoint)"
        else:
            hint = " (a file with this name exists, but a TF V2 checkpoint needs PREFIX.index beside it)"
    raise CheckpointError(f"TensorFlow checkpoint not found: {s}.index does not exist{hint}")


def _read_block(data: bytes, offset: int, size: int, what: str, index_path: str) -> bytes:
    if offset + size + 5 > len(data):
        raise CheckpointError(f"{index_path} is truncated: {what} block at {offset}+{size} runs past the end")
    contents = data[offset : offset + size]
    kind = data[offset + size]
    (stored,) = struct.unpack_from("<I", data, offset + size + 1)
    actual = crc32c.mask(crc32c.extend(crc32c.value(contents), bytes([kind])))
    if stored != actual:
        raise CheckpointError(f"{index_path} is corrupted: CRC32C mismatch in the {what} block at byte {offset}")
    if kind != 0:
        raise CheckpointError(f"{index_path}: compressed index blocks (type {kind}) are not supported")
    return contents


def _block_entries(block: bytes, index_path: str) -> Iterator[tuple[bytes, bytes]]:
    if len(block) < 4:
        raise CheckpointError(f"{index_path} is corrupted: block too short")
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    limit = len(block) - 4 - 4 * num_restarts
    if limit < 0:
        raise CheckpointError(f"{index_path} is corrupted: bad restart count {num_restarts}")
    pos = 0
    key = b""
    try:
        while pos < limit:
            shared, pos = read_varint(block, pos)
            non_shared, pos = read_varint(block, pos)
            value_len, pos = read_varint(block, pos)
            if shared > len(key) or pos + non_shared + value_len > limit:
                raise CheckpointError(f"{index_path} is corrupted: bad block entry at byte {pos}")
            key = key[:shared] + block[pos : pos + non_shared]
            pos += non_shared
            yield key, block[pos : pos + value_len]
            pos += value_len
    except ProtoError as exc:
        raise CheckpointError(f"{index_path} is corrupted: {exc}") from exc


def _decode_entry(key: str, raw: bytes) -> TensorEntry:
    f = parse(raw)
    enum = first(f, 1, 0)
    if enum in _DTYPES:
        dtype = _DTYPES[enum][0]
    else:
        dtype = _DTYPE_NAMES_BY_ENUM.get(enum, f"dtype_enum_{enum}")
    shape: tuple[int, ...] = ()
    shape_raw = first(f, 2)
    if shape_raw is not None:
        shape = tuple(to_int64(first(parse(d), 1, 0)) for d in parse(shape_raw).get(2, []))
    slices = []
    for slice_raw in f.get(7, []):
        extents = []
        for ext_raw in parse(slice_raw).get(1, []):
            e = parse(ext_raw)
            length = first(e, 2)
            extents.append((to_int64(first(e, 1, 0)), -1 if length is None else to_int64(length)))
        slices.append(tuple(extents))
    return TensorEntry(
        key=key,
        dtype=dtype,
        shape=shape,
        shard_id=first(f, 3, 0),
        offset=to_int64(first(f, 4, 0)),
        size=to_int64(first(f, 5, 0)),
        crc32c=first(f, 6),
        slices=tuple(slices),
    )


def _ordered_num(value: int) -> bytes:
    """OrderedCode::WriteNumIncreasing: length byte, then big-endian bytes without leading zeros."""
    body = value.to_bytes((value.bit_length() + 7) // 8, "big") if value else b""
    return bytes([len(body)]) + body


def _ordered_signed(value: int) -> bytes:
    """OrderedCode::WriteSignedNumIncreasing: unary length in the leading bits, then the value."""
    x = ~value if value < 0 else value
    length = x.bit_length() // 7 + 1  # 7 payload bits per byte once the header bits are taken
    raw = bytearray((value & ((1 << (8 * length)) - 1)).to_bytes(length, "big"))
    header = ((1 << length) - 1) << (8 * length - length)  # `length` one-bits at the top
    header_bytes = header.to_bytes(length, "big")
    return bytes(b ^ h for b, h in zip(raw, header_bytes))


def slice_key(name: str, extents: tuple[tuple[int, int], ...]) -> str:
    """The key a slice of a partitioned variable is stored under (checkpoint::EncodeTensorNameSlice)."""
    escapes = {0x00: b"\x00\xff", 0xFF: b"\xff\x00"}
    escaped = b"".join(escapes.get(b, bytes([b])) for b in name.encode("utf-8"))
    out = _ordered_num(0) + escaped + b"\x00\x01" + _ordered_num(len(extents))
    for start, length in extents:
        out += _ordered_signed(start) + _ordered_signed(length)
    return out.decode("latin-1")


@dataclass(frozen=True)
class BundleHeader:
    """The index's header entry (BundleHeaderProto)."""

    num_shards: int
    big_endian: bool


def read_index(index_path: str) -> tuple[BundleHeader, dict[str, TensorEntry]]:
    """Parse ``PREFIX.index`` (a LevelDB-style table: data blocks of prefix-compressed entries,
    an index block, a footer), checking every block's CRC32C.

    Returns the header and ``{key: entry}`` in stored (sorted) order; the keys of the slices of
    partitioned variables start with ``"\\x00"`` (see :func:`slice_key`).
    """
    data = Path(index_path).read_bytes()
    if len(data) < _FOOTER_SIZE:
        raise CheckpointError(f"{index_path} is too short ({len(data)} bytes) to be a checkpoint index")
    (magic,) = struct.unpack_from("<Q", data, len(data) - 8)
    if magic != _TABLE_MAGIC:
        kind = " (an HDF5 file)" if data.startswith(b"\x89HDF") else ""
        raise CheckpointError(
            f"{index_path} is not a TensorFlow checkpoint index{kind}: bad magic number "
            "(truncated or overwritten file?)"
        )
    footer = data[len(data) - _FOOTER_SIZE :]
    try:
        _meta_off, pos = read_varint(footer, 0)
        _meta_size, pos = read_varint(footer, pos)
        index_off, pos = read_varint(footer, pos)
        index_size, pos = read_varint(footer, pos)
    except ProtoError as exc:
        raise CheckpointError(f"{index_path} is corrupted: bad footer ({exc})") from exc
    index_block = _read_block(data, index_off, index_size, "index", index_path)
    raw_entries: list[tuple[bytes, bytes]] = []
    for _sep, handle in _block_entries(index_block, index_path):
        try:
            off, p = read_varint(handle, 0)
            size, _ = read_varint(handle, p)
        except ProtoError as exc:
            raise CheckpointError(f"{index_path} is corrupted: bad block handle") from exc
        block = _read_block(data, off, size, "data", index_path)
        raw_entries.extend(_block_entries(block, index_path))
    if not raw_entries or raw_entries[0][0] != b"":
        raise CheckpointError(f"{index_path}: no bundle header; not a V2 checkpoint index")
    entries: dict[str, TensorEntry] = {}
    try:
        header = _read_header(raw_entries[0][1], index_path)
        for key, value in raw_entries[1:]:
            name = key.decode("latin-1") if key[:1] == b"\x00" else key.decode("utf-8")
            entries[name] = _decode_entry(name, value)
    except ProtoError as exc:
        raise CheckpointError(f"{index_path} is corrupted: {exc}") from exc
    return header, entries


def _read_header(raw: bytes, index_path: str) -> BundleHeader:
    f = parse(raw)
    num_shards = first(f, 1, 0)
    version = first(f, 3)
    if version is not None:
        v = parse(version)
        min_consumer = first(v, 2, 0)
        bad = repeated_varints(v, 3)
        if min_consumer > _SUPPORTED_BUNDLE_VERSION or _SUPPORTED_BUNDLE_VERSION in bad:
            raise CheckpointError(
                f"{index_path} needs a reader of bundle version >= {min_consumer}; "
                f"this reader implements version {_SUPPORTED_BUNDLE_VERSION}"
            )
    if num_shards < 1:
        raise CheckpointError(f"{index_path}: header says {num_shards} shards")
    return BundleHeader(num_shards=num_shards, big_endian=first(f, 2, 0) == 1)
