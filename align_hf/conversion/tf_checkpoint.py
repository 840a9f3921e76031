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
from typing import Iterator, Sequence

import numpy as np

from align_hf.conversion import checksum as crc32c
from align_hf.conversion.protowire import ProtoError, read_varint
from align_hf.conversion.tf_index import (
    NUMPY_DTYPES,
    OBJECT_GRAPH_KEY,
    CheckpointError,
    ObjectGraph,
    TensorEntry,
    read_index,
    resolve_prefix,
    slice_key,
)

__all__ = ["CheckpointError", "TFCheckpoint", "TensorEntry", "ObjectGraph", "resolve_prefix", "main"]


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
        self._maps: dict[int, mmap.mmap] = {}
        self._files: dict[int, object] = {}
        self._verified: set[str] = set()
        self._graph: ObjectGraph | None = None
        self._graph_loaded = False
        header, self._entries = read_index(self.index_path)
        self.num_shards = header.num_shards
        self.big_endian = header.big_endian

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
            if OBJECT_GRAPH_KEY in self._entries:
                raw = self.get_tensor(OBJECT_GRAPH_KEY).item()
                try:
                    self._graph = ObjectGraph.from_bytes(raw)
                except ProtoError as exc:
                    raise CheckpointError(f"{self.prefix}: object graph is corrupted ({exc})") from exc
        return self._graph

    @property
    def is_object_based(self) -> bool:
        return OBJECT_GRAPH_KEY in self._entries

    def full_name(self, key: str) -> str | None:
        """The TF variable name a TF2 key was saved from (e.g. ``stem_bn/gamma``), if recorded."""
        graph = self.object_graph
        return graph.full_names.get(key) if graph is not None else None

    def variables(self) -> dict[str, str]:
        """{checkpoint key: variable name}: the object graph's full_name for TF2, the key for TF1."""
        graph = self.object_graph
        out = {}
        for key in self.keys():
            if key == OBJECT_GRAPH_KEY:
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
        np_dtype = NUMPY_DTYPES.get(entry.dtype)
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
            key = slice_key(entry.key, extents)
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
    if key == OBJECT_GRAPH_KEY:
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
