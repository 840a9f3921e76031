"""Reading and writing webdataset tar shards (the layout img2dataset produces).

A shard is a tar file whose members are grouped into samples by key: ``0001.jpg``, ``0001.txt``
and ``0001.json`` form one sample with fields ``jpg``, ``txt`` and ``json``. We read tars
ourselves instead of through ``datasets``' webdataset builder because that builder refuses a
whole dataset when one shard mixes extensions (a ``.png`` among ``.jpg``), and aborts the
stream on a truncated tar; here such problems only cost the affected samples.
"""

from __future__ import annotations

import io
import os
import tarfile
from typing import Iterator

import fsspec

# A record carrying this field reports a problem with the shard itself (e.g. a truncated tar).
ERROR_FIELD = "__error__"
CORRUPT_SHARD = "corrupt_shard"


def split_member_name(name: str) -> tuple[str, str]:
    """``"dir/0001.seg.jpg"`` -> ``("dir/0001", "seg.jpg")``: key is up to the basename's first dot."""
    directory, base = os.path.split(name)
    stem, dot, ext = base.partition(".")
    key = f"{directory}/{stem}" if directory else stem
    return key, ext.lower() if dot else ""


def iter_shard(url: str) -> Iterator[dict]:
    """Yield the samples of one shard as ``{"__key__", "__url__", <ext>: bytes, ...}``.

    Members are grouped while their key stays the same, as in the webdataset format. If the
    tar itself is damaged, the samples read so far are yielded and then one record with
    ``ERROR_FIELD`` set; nothing is raised.
    """
    current: dict | None = None
    try:
        with fsspec.open(url, "rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                key, ext = split_member_name(member.name)
                if not ext or os.path.basename(key).startswith("."):
                    continue  # hidden files and extension-less members are not sample fields
                handle = archive.extractfile(member)
                data = handle.read() if handle is not None else b""
                if current is not None and current["__key__"] != key:
                    yield current
                    current = None
                if current is None:
                    current = {"__key__": key, "__url__": url}
                current[ext] = data
    except (tarfile.TarError, EOFError, OSError, ValueError) as error:
        if current is not None:
            # The last sample may be missing fields the tar lost; it is still offered, and the
            # decoder decides whether what is left is usable.
            yield current
            current = None
        yield {"__key__": f"{url}#error", "__url__": url, ERROR_FIELD: f"{CORRUPT_SHARD}: {error}"}
    if current is not None:
        yield current


class ShardWriter:
    """Write samples into numbered tar shards ``{prefix}-{index:05d}.tar`` of ``max_count`` samples.

    ``write({"__key__": "0001", "jpg": b"...", "txt": "a caption"})``; ``str`` values are stored
    as UTF-8. Member metadata (mtime, owner) is fixed so identical input gives identical files.
    """

    def __init__(self, directory: str, prefix: str = "shard", max_count: int = 1000, start_index: int = 0):
        if max_count < 1:
            raise ValueError(f"max_count must be >= 1, got {max_count}")
        self.directory = directory
        self.prefix = prefix
        self.max_count = max_count
        self.index = start_index
        self.count = 0
        self.paths: list[str] = []
        self._tar: tarfile.TarFile | None = None
        os.makedirs(directory, exist_ok=True)

    def _open_next(self) -> None:
        self.close()
        path = os.path.join(self.directory, f"{self.prefix}-{self.index:05d}.tar")
        self.index += 1
        self._tar = tarfile.open(path, "w", format=tarfile.USTAR_FORMAT)
        self.paths.append(path)
        self.count = 0

    def write(self, sample: dict) -> None:
        key = sample["__key__"]
        if "." in os.path.basename(key):
            raise ValueError(f"sample key {key!r} must not contain a dot (it separates the extension)")
        if self._tar is None or self.count >= self.max_count:
            self._open_next()
        for ext, value in sample.items():
            if ext.startswith("__"):
                continue
            data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            self._tar.addfile(info, io.BytesIO(data))
        self.count += 1

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
