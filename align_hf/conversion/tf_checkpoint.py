"""Read TensorFlow checkpoints (format V2: ``PREFIX.index`` + ``PREFIX.data-*-of-*``) without TensorFlow.

Covers TF2 object-based checkpoints (``tf.train.Checkpoint`` / Keras ``save_weights``) and TF1
name-based ones (``tf.compat.v1.train.Saver``): every numeric dtype, strings, several data shards,
partitioned (sliced) variables, CRC32C checks of the index blocks and of every tensor read, and the
object graph that names each TF2 key after its Keras variable (``full_name``).

Data files are memory-mapped: a tensor is a read-only numpy view onto the mapping, so converting a
2 GB checkpoint does not hold 2 GB of copies at once.

    >>> ckpt = TFCheckpoint("model-weights")          # or the .index path, or a directory
    >>> ckpt.keys()[:2], ckpt.full_name(key), ckpt.get_tensor(key).shape

Command line, to list the variables::

    python -m align_hf.conversion.tf_checkpoint PREFIX [--all] [--filter REGEX] [--json] [--verify]
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import re
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

if __package__ in (None, ""):  # run as a script: make `conversion` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from align_hf.conversion import checksum as crc32c
from align_hf.conversion.protowire import ProtoError, first, parse, read_varint, repeated_varints, text, to_int64

__all__ = ["CheckpointError", "TFCheckpoint", "TensorEntry", "ObjectGraph", "resolve_prefix", "main"]

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_SIZE = 48
_OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
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
_NUMPY_DTYPES = {name: np_dtype for name, np_dtype in _DTYPES.values() if np_dtype is not None}
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


def _slice_key(name: str, extents: tuple[tuple[int, int], ...]) -> str:
    """The key a slice of a partitioned variable is stored under (checkpoint::EncodeTensorNameSlice)."""
    escapes = {0x00: b"\x00\xff", 0xFF: b"\xff\x00"}
    escaped = b"".join(escapes.get(b, bytes([b])) for b in name.encode("utf-8"))
    out = _ordered_num(0) + escaped + b"\x00\x01" + _ordered_num(len(extents))
    for start, length in extents:
        out += _ordered_signed(start) + _ordered_signed(length)
    return out.decode("latin-1")


class TFCheckpoint:
    """A TensorFlow V2-format checkpoint opened for reading.

    Args:
        path: checkpoint prefix, ``.index`` file, a data shard, or a directory (see ``resolve_prefix``).
        verify: check each tensor's CRC32C the first time it is read (default). Index blocks are
            always checked.
    """

    def __init__(self, path: str | os.PathLike, verify: bool = True):
        self.prefix = resolve_prefix(path)
        self.verify = verify
        self.index_path = self.prefix + ".index"
        self.num_shards = 1
        self.big_endian = False
        self._entries: dict[str, TensorEntry] = {}
        self._maps: dict[int, mmap.mmap] = {}
        self._files: dict[int, object] = {}
        self._verified: set[str] = set()
        self._graph: ObjectGraph | None = None
        self._graph_loaded = False
        self._read_index()

    # -- index -------------------------------------------------------------------------------
    def _read_index(self) -> None:
        data = Path(self.index_path).read_bytes()
        if len(data) < _FOOTER_SIZE:
            raise CheckpointError(f"{self.index_path} is too short ({len(data)} bytes) to be a checkpoint index")
        (magic,) = struct.unpack_from("<Q", data, len(data) - 8)
        if magic != _TABLE_MAGIC:
            kind = " (an HDF5 file)" if data.startswith(b"\x89HDF") else ""
            raise CheckpointError(
                f"{self.index_path} is not a TensorFlow checkpoint index{kind}: bad magic number "
                "(truncated or overwritten file?)"
            )
        footer = data[len(data) - _FOOTER_SIZE :]
        try:
            _meta_off, pos = read_varint(footer, 0)
            _meta_size, pos = read_varint(footer, pos)
            index_off, pos = read_varint(footer, pos)
            index_size, pos = read_varint(footer, pos)
        except ProtoError as exc:
            raise CheckpointError(f"{self.index_path} is corrupted: bad footer ({exc})") from exc
        index_block = _read_block(data, index_off, index_size, "index", self.index_path)
        raw_entries: list[tuple[bytes, bytes]] = []
        for _sep, handle in _block_entries(index_block, self.index_path):
            try:
                off, p = read_varint(handle, 0)
                size, _ = read_varint(handle, p)
            except ProtoError as exc:
                raise CheckpointError(f"{self.index_path} is corrupted: bad block handle") from exc
            block = _read_block(data, off, size, "data", self.index_path)
            raw_entries.extend(_block_entries(block, self.index_path))
        if not raw_entries or raw_entries[0][0] != b"":
            raise CheckpointError(f"{self.index_path}: no bundle header; not a V2 checkpoint index")
        try:
            self._read_header(raw_entries[0][1])
            for key, value in raw_entries[1:]:
                name = key.decode("latin-1") if key[:1] == b"\x00" else key.decode("utf-8")
                self._entries[name] = _decode_entry(name, value)
        except ProtoError as exc:
            raise CheckpointError(f"{self.index_path} is corrupted: {exc}") from exc

    def _read_header(self, raw: bytes) -> None:
        f = parse(raw)
        self.num_shards = first(f, 1, 0)
        self.big_endian = first(f, 2, 0) == 1
        version = first(f, 3)
        if version is not None:
            v = parse(version)
            min_consumer = first(v, 2, 0)
            bad = repeated_varints(v, 3)
            if min_consumer > _SUPPORTED_BUNDLE_VERSION or _SUPPORTED_BUNDLE_VERSION in bad:
                raise CheckpointError(
                    f"{self.index_path} needs a reader of bundle version >= {min_consumer}; "
                    f"this reader implements version {_SUPPORTED_BUNDLE_VERSION}"
                )
        if self.num_shards < 1:
            raise CheckpointError(f"{self.index_path}: header says {self.num_shards} shards")

    # -- public API --------------------------------------------------------------------------
    def keys(self) -> list[str]:
        """Checkpoint keys in stored (sorted) order, without the internal slice entries."""
        return [k for k in self._entries if not k.startswith("\x00")]

    def __contains__(self, key: str) -> bool:
        return key in self._entries and not key.startswith("\x00")

    def __len__(self) -> int:
        return len(self.keys())

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __getitem__(self, key: str) -> np.ndarray:
        return self.get_tensor(key)

    def entry(self, key: str) -> TensorEntry:
        try:
            return self._entries[key]
        except KeyError:
            close = [k for k in self.keys() if key.split("/")[-1] in k][:5]
            hint = f"; similar keys: {close}" if close else ""
            raise KeyError(f"{key!r} is not in checkpoint {self.prefix}{hint}") from None

    def data_path(self, shard_id: int) -> str:
        return f"{self.prefix}.data-{shard_id:05d}-of-{self.num_shards:05d}"

    @property
    def object_graph(self) -> ObjectGraph | None:
        """The object graph of a TF2 checkpoint; None for TF1 name-based checkpoints."""
        if not self._graph_loaded:
            self._graph_loaded = True
            if _OBJECT_GRAPH_KEY in self._entries:
                raw = self.get_tensor(_OBJECT_GRAPH_KEY).item()
                try:
                    self._graph = ObjectGraph.from_bytes(raw)
                except ProtoError as exc:
                    raise CheckpointError(f"{self.prefix}: object graph is corrupted ({exc})") from exc
        return self._graph

    @property
    def is_object_based(self) -> bool:
        return _OBJECT_GRAPH_KEY in self._entries

    def full_name(self, key: str) -> str | None:
        """The TF variable name a TF2 key was saved from (e.g. ``stem_bn/gamma``), if recorded."""
        graph = self.object_graph
        return graph.full_names.get(key) if graph is not None else None

    def variables(self) -> dict[str, str]:
        """{checkpoint key: variable name}: the object graph's full_name for TF2, the key for TF1."""
        graph = self.object_graph
        out = {}
        for key in self.keys():
            if key == _OBJECT_GRAPH_KEY:
                continue
            name = graph.full_names.get(key) if graph is not None else None
            out[key] = name or key
        return out

    def is_slot(self, key: str) -> bool:
        """Whether ``key`` holds an optimizer slot (Adam m/v, LAMB, momentum...)."""
        graph = self.object_graph
        if graph is not None and key in graph.slots:
            return True
        return "/.OPTIMIZER_SLOT/" in key

    def get_tensor(self, key: str, bfloat16_as_float32: bool = True) -> np.ndarray:
        """The tensor stored under ``key`` as a numpy array.

        Numeric tensors are read-only views onto the memory-mapped data file when the bytes allow
        it (copy them before writing). bfloat16 is widened exactly to float32 unless
        ``bfloat16_as_float32=False``, which returns the raw uint16 bit patterns. Strings come back
        as an object array of ``bytes``.
        """
        entry = self.entry(key)
        if entry.slices:
            return self._read_partitioned(entry, bfloat16_as_float32)
        return self._read_entry(entry, bfloat16_as_float32)

    def verify_all(self, progress: bool = False) -> None:
        """Check the CRC32C of every tensor; raises CheckpointError on the first mismatch."""
        keys = [k for k, e in self._entries.items() if not e.slices]
        total = sum(self._entries[k].size for k in keys)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, unit="B", unit_scale=True, desc="verifying")
        for key in keys:
            entry = self._entries[key]
            if key not in self._verified:
                self._check_crc(entry, self._raw_bytes(entry))
            if bar is not None:
                bar.update(entry.size)
        if bar is not None:
            bar.close()

    def close(self) -> None:
        for m in self._maps.values():
            try:
                m.close()
            except BufferError:
                pass  # arrays still view the mapping; it is released when they are
        for fh in self._files.values():
            fh.close()
        self._maps.clear()
        self._files.clear()

    def __enter__(self) -> "TFCheckpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        kind = "object-based" if self.is_object_based else "name-based"
        return f"TFCheckpoint({self.prefix!r}, {len(self)} keys, {self.num_shards} shard(s), {kind})"

    # -- data --------------------------------------------------------------------------------
    def _map(self, shard_id: int) -> mmap.mmap:
        if shard_id not in self._maps:
            if not 0 <= shard_id < self.num_shards:
                raise CheckpointError(f"{self.index_path}: entry refers to shard {shard_id} of {self.num_shards}")
            path = self.data_path(shard_id)
            if not os.path.isfile(path):
                raise CheckpointError(f"checkpoint data file missing: {path}")
            fh = open(path, "rb")
            self._files[shard_id] = fh
            if os.fstat(fh.fileno()).st_size == 0:
                self._maps[shard_id] = b""  # mmap refuses empty files
            else:
                self._maps[shard_id] = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        return self._maps[shard_id]

    def _raw_bytes(self, entry: TensorEntry) -> memoryview:
        buf = self._map(entry.shard_id)
        end = entry.offset + entry.size
        if entry.offset < 0 or entry.size < 0 or end > len(buf):
            raise CheckpointError(
                f"{self.data_path(entry.shard_id)} is truncated: {entry.key!r} needs bytes "
                f"[{entry.offset}, {end}) but the file has {len(buf)}"
            )
        return memoryview(buf)[entry.offset : end]

    def _check_crc(self, entry: TensorEntry, raw: memoryview) -> None:
        if entry.crc32c is None:
            return
        if entry.dtype == "string":
            actual = self._string_crc(entry, raw)
        else:
            actual = crc32c.value(raw)
        if crc32c.mask(actual) != entry.crc32c:
            raise CheckpointError(
                f"{self.data_path(entry.shard_id)} is corrupted: CRC32C mismatch for {entry.key!r} "
                f"(bytes {entry.offset}..{entry.offset + entry.size}); refusing to read it"
            )
        self._verified.add(entry.key)

    def _string_crc(self, entry: TensorEntry, raw: memoryview) -> int:
        # Strings: varint64 lengths, a masked CRC of the lengths, then the bytes. The entry CRC
        # covers the lengths as uint32, that stored CRC, and the bytes.
        lengths, pos = self._string_lengths(entry, raw)
        crc = 0
        for n in lengths:
            crc = crc32c.extend(crc, struct.pack("<I", n & 0xFFFFFFFF))
        crc = crc32c.extend(crc, raw[pos : pos + 4])
        return crc32c.extend(crc, raw[pos + 4 :])

    def _string_lengths(self, entry: TensorEntry, raw: memoryview) -> tuple[list[int], int]:
        data = bytes(raw)
        lengths = []
        pos = 0
        try:
            for _ in range(entry.numel):
                n, pos = read_varint(data, pos)
                lengths.append(n)
        except ProtoError as exc:
            raise CheckpointError(f"{self.prefix}: string tensor {entry.key!r} is corrupted ({exc})") from exc
        return lengths, pos

    def _read_entry(self, entry: TensorEntry, bfloat16_as_float32: bool) -> np.ndarray:
        raw = self._raw_bytes(entry)
        if self.verify and entry.key not in self._verified:
            self._check_crc(entry, raw)
        if entry.dtype == "string":
            return self._decode_strings(entry, raw)
        np_dtype = _NUMPY_DTYPES.get(entry.dtype)
        if np_dtype is None:
            raise CheckpointError(f"{entry.key!r}: dtype {entry.dtype} cannot be read as an array")
        if self.big_endian:
            np_dtype = np_dtype.newbyteorder(">")
        if entry.size != entry.numel * np_dtype.itemsize:
            raise CheckpointError(
                f"{entry.key!r}: {entry.size} bytes stored for shape {entry.shape} of {entry.dtype}"
            )
        arr = np.frombuffer(raw, dtype=np_dtype, count=entry.numel).reshape(entry.shape)
        if entry.dtype == "bfloat16" and bfloat16_as_float32:
            # bfloat16 is the top half of a float32: shifting the bits up widens it exactly.
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        elif self.big_endian:
            arr = arr.astype(np_dtype.newbyteorder("<"))
        return arr

    def _decode_strings(self, entry: TensorEntry, raw: memoryview) -> np.ndarray:
        lengths, pos = self._string_lengths(entry, raw)
        data = bytes(raw)
        pos += 4  # masked CRC of the lengths, already covered by the entry CRC
        out = np.empty(entry.numel, dtype=object)
        for i, n in enumerate(lengths):
            if pos + n > len(data):
                raise CheckpointError(f"{self.prefix}: string tensor {entry.key!r} is truncated")
            out[i] = data[pos : pos + n]
            pos += n
        return out.reshape(entry.shape)

    def _read_partitioned(self, entry: TensorEntry, bfloat16_as_float32: bool) -> np.ndarray:
        parts = []
        for extents in entry.slices:
            key = _slice_key(entry.key, extents)
            if key not in self._entries:
                raise CheckpointError(f"{self.prefix}: slice {extents} of {entry.key!r} is missing")
            parts.append((extents, self._read_entry(self._entries[key], bfloat16_as_float32)))
        dtype = parts[0][1].dtype if parts else np.float32
        full = np.zeros(entry.shape, dtype=dtype)
        covered = np.zeros(entry.shape, dtype=bool)
        for extents, part in parts:
            index = tuple(
                slice(None) if length == -1 else slice(start, start + length) for start, length in extents
            )
            full[index] = part
            covered[index] = True
        if not covered.all():
            raise CheckpointError(f"{self.prefix}: the slices of {entry.key!r} do not cover the whole tensor")
        return full


# -- command line ----------------------------------------------------------------------------

_BOOKKEEPING = re.compile(
    r"(^|/)(save_counter|global_step|iter|iterations|_CHECKPOINTABLE_OBJECT_GRAPH|"
    r"(loss|.*_tracker|.*metric.*)/(count|total))(/|$)"
)


def variable_kind(ckpt: TFCheckpoint, key: str) -> str:
    """'object_graph', 'slot', 'bookkeeping' (counters, metrics, step) or 'model'."""
    if key == _OBJECT_GRAPH_KEY:
        return "object_graph"
    if ckpt.is_slot(key) or re.search(r"/(adam_[mv]|Adam(_\d+)?|Momentum|RMSProp(_\d+)?|Adagrad)$", key):
        return "slot"
    if key.startswith("optimizer/") or _BOOKKEEPING.search(key):
        return "bookkeeping"
    name = ckpt.full_name(key) or ""
    if name in {"count", "total"} or re.match(r".*/(count|total)$", name) and "tracker" in key:
        return "bookkeeping"
    return "model"


def _format_table(rows: list[dict]) -> str:
    if not rows:
        return "(no variables)"
    cols = ["name", "shape", "dtype", "kind", "key"]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols[:-1]}
    lines = ["  ".join(c.ljust(widths.get(c, 0)) for c in cols).rstrip()]
    for r in rows:
        lines.append("  ".join(str(r[c]).ljust(widths.get(c, 0)) for c in cols).rstrip())
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m align_hf.conversion.tf_checkpoint",
        description="List the variables of a TensorFlow checkpoint (no TensorFlow needed).",
    )
    parser.add_argument("checkpoint", help="checkpoint prefix, .index file or directory")
    parser.add_argument("--all", action="store_true", help="also list optimizer slots and bookkeeping variables")
    parser.add_argument("--filter", metavar="REGEX", help="only variables whose name or key matches REGEX")
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    parser.add_argument("--verify", action="store_true", help="check the CRC32C of every tensor")
    args = parser.parse_args(argv)
    try:
        ckpt = TFCheckpoint(args.checkpoint)
        if args.verify:
            ckpt.verify_all(progress=True)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    pattern = re.compile(args.filter) if args.filter else None
    rows = []
    for key, name in ckpt.variables().items():
        kind = variable_kind(ckpt, key)
        if not args.all and kind != "model":
            continue
        if pattern and not (pattern.search(name) or pattern.search(key)):
            continue
        e = ckpt.entry(key)
        rows.append({"name": name, "shape": list(e.shape), "dtype": e.dtype, "kind": kind, "key": key})
    if args.json:
        for r in rows:
            print(json.dumps(r))
    else:
        print(_format_table(rows))
        total = sum(int(np.prod(r["shape"], dtype=np.int64)) for r in rows)
        print(f"\n{len(rows)} variables, {total:,} values; {ckpt!r}")
        if args.verify:
            print("all CRC32C checksums match")
    return 0


if __name__ == "__main__":
    sys.exit(main())
