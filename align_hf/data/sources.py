"""One entry point, :func:`load_pairs`, for image-text pairs in the formats the ecosystem produces.

Every source comes back as a streaming ``datasets.IterableDataset`` with the same columns:

- ``key``: sample id (``None`` where the source has none),
- ``image``: undecoded image, ``{"bytes": ..., "path": ...}`` / bytes / path string,
- ``text``: caption (``str``, ``bytes`` or a list of captions), ``None`` when missing,
- ``meta``: the sample's JSON sidecar as a string (webdataset ``.json``), else ``None``,
- ``error``: ``None``, or why the record could not be read (e.g. a truncated tar).

Images are never decoded here: decoding happens in :mod:`align_hf.data.pipeline`, inside
try/except, because ``datasets``' own decoding raises mid-stream and a streaming iterator
cannot resume after an exception.
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import os
import re
from typing import Any, Iterable, Iterator, Sequence

import datasets

from align_hf.data.webdataset import ERROR_FIELD, iter_shard
from align_hf.image_io import IMAGE_EXTENSIONS

logger = logging.getLogger(__name__)

PAIR_COLUMNS = ("key", "image", "text", "meta", "error")
# Stamped on the datasets we return, so passing one back in is recognised and not re-wrapped.
PAIRS_MARKER = "align_hf image-text pairs"
# Column / webdataset-extension names tried in order when the caller does not name them.
IMAGE_COLUMNS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff", "image", "img", "image_bytes", "image_path", "file_name", "filepath", "path")
TEXT_COLUMNS = ("txt", "text", "caption", "alt_text", "alt", "captions", "sentences", "sentence", "title")

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
METADATA_FILES = ("metadata.jsonl", "metadata.csv")
# Rows per shard for image folders, so workers and ranks can split them.
FOLDER_SHARD_ROWS = 256


def _as_list(names: str | Sequence[str] | None, default: Sequence[str]) -> list[str]:
    if names is None:
        return list(default)
    return [names] if isinstance(names, str) else list(names)


def expand_braces(pattern: str) -> list[str]:
    """Expand webdataset-style numeric ranges: ``"s-{000..002}.tar"`` -> ``s-000.tar, s-001.tar, s-002.tar``.

    Comma lists ``{a,b}`` are expanded too. Zero padding follows the first bound's width.
    """
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    head, tail = pattern[: match.start()], pattern[match.end() :]
    body = match.group(1)
    numeric = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if numeric:
        start, stop = numeric.groups()
        width = len(start)
        options = [str(i).zfill(width) for i in range(int(start), int(stop) + 1)]
    else:
        options = body.split(",")
    return [expanded for option in options for expanded in expand_braces(head + option + tail)]


def _is_tar(path: str) -> bool:
    return path.lower().endswith(TAR_SUFFIXES)


def _resolve_files(source: str) -> list[str]:
    """Files named by a path, a glob, a brace pattern or a directory (searched recursively)."""
    if "://" in source and not any(ch in source for ch in "*?["):
        return expand_braces(source)  # remote shards: read through fsspec, no listing
    files: list[str] = []
    for pattern in expand_braces(source):
        if os.path.isdir(pattern):
            for root, _dirs, names in os.walk(pattern):
                files.extend(os.path.join(root, name) for name in names)
        elif any(ch in pattern for ch in "*?["):
            files.extend(glob.glob(pattern, recursive=True))
        elif os.path.exists(pattern):
            files.append(pattern)
    return sorted(set(files))


# --------------------------------------------------------------------------- webdataset


def _webdataset_records(shards: list[str], image_fields: tuple[str, ...], text_fields: tuple[str, ...]) -> Iterator[dict]:
    for shard in shards:
        for sample in iter_shard(shard):
            if ERROR_FIELD in sample:
                yield {"key": sample["__key__"], "image": None, "text": None, "meta": None, "error": sample[ERROR_FIELD]}
                continue
            image = next((sample[f] for f in image_fields if f in sample), None)
            text = next((sample[f] for f in text_fields if f in sample), None)
            meta = sample.get("json")
            meta = meta.decode("utf-8", errors="replace") if isinstance(meta, bytes) else meta
            if text is None and meta:
                # img2dataset also stores the caption in the JSON sidecar.
                try:
                    parsed = json.loads(meta)
                    if isinstance(parsed, dict):
                        text = next((parsed[f] for f in ("caption", "text", "txt") if f in parsed), None)
                except ValueError:
                    pass
            yield {
                "key": sample["__key__"],
                "image": {"bytes": image, "path": None} if image is not None else None,
                "text": text,
                "meta": meta,
                "error": None,
            }


def _load_webdataset(shards: list[str], image_column, text_column) -> datasets.IterableDataset:
    return datasets.IterableDataset.from_generator(
        _webdataset_records,
        gen_kwargs={
            "shards": shards,
            # Tuples, not lists: datasets treats every list in gen_kwargs as a list of shards.
            "image_fields": tuple(_as_list(image_column, IMAGE_COLUMNS)),
            "text_fields": tuple(_as_list(text_column, TEXT_COLUMNS)),
        },
    )


# --------------------------------------------------------------------------- image folders


def _read_metadata(path: str) -> list[dict]:
    if path.endswith(".jsonl"):
        rows = []
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    logger.warning("%s:%d is not valid JSON; row skipped", path, number)
        return rows
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _folder_rows(directory: str, files: list[str], image_column, text_column) -> list[tuple[str, str, Any]]:
    """(key, absolute image path, caption) rows from metadata files, or from ``.txt`` sidecars."""
    rows: list[tuple[str, str, Any]] = []
    metadata = [f for f in files if os.path.basename(f) in METADATA_FILES]
    for meta_path in metadata:
        base = os.path.dirname(meta_path)
        records = _read_metadata(meta_path)
        if not records:
            continue
        columns = list(records[0].keys())
        image_col = _pick_column(columns, _as_list(image_column, ("file_name",) + IMAGE_COLUMNS), "image", meta_path)
        text_col = _pick_column(columns, _as_list(text_column, TEXT_COLUMNS), "text", meta_path)
        for record in records:
            name = record.get(image_col)
            path = os.path.normpath(os.path.join(base, name)) if name else ""
            rel = os.path.relpath(path, directory) if name else f"{meta_path}#missing"
            rows.append((os.path.splitext(rel)[0], path, record.get(text_col)))
    if metadata:
        return rows
    # No metadata file: pair every image with the caption file next to it (img2dataset "files").
    by_stem = {os.path.splitext(f)[0]: f for f in files if f.lower().endswith(".txt")}
    for path in files:
        stem, ext = os.path.splitext(path)
        if ext.lower() in IMAGE_EXTENSIONS:
            rows.append((os.path.relpath(stem, directory), path, {"caption_file": by_stem.get(stem)}))
    return rows


def _folder_records(chunks: list[list[tuple[str, str, Any]]]) -> Iterator[dict]:
    for chunk in chunks:
        for key, path, text in chunk:
            if isinstance(text, dict) and "caption_file" in text:
                caption_file = text["caption_file"]
                text = None
                if caption_file is not None:
                    try:
                        with open(caption_file, "rb") as handle:
                            text = handle.read()
                    except OSError:
                        text = None
            yield {"key": key, "image": {"bytes": None, "path": path} if path else None, "text": text, "meta": None, "error": None}


def _load_folder(directory: str, files: list[str], image_column, text_column) -> datasets.IterableDataset:
    rows = _folder_rows(directory, files, image_column, text_column)
    if not rows:
        raise ValueError(f"{directory}: no images with captions found (expected metadata.jsonl/.csv or .txt next to each image)")
    chunks = [rows[i : i + FOLDER_SHARD_ROWS] for i in range(0, len(rows), FOLDER_SHARD_ROWS)]
    return datasets.IterableDataset.from_generator(_folder_records, gen_kwargs={"chunks": chunks})


# --------------------------------------------------------------------------- datasets sources


def _pick_column(columns: Sequence[str], candidates: Sequence[str], what: str, where: str) -> str:
    for name in candidates:
        if name in columns:
            return name
    raise ValueError(
        f"{where}: no {what} column found among {list(columns)}; "
        f"pass {what}_column= (tried {list(candidates)})"
    )


def _standardise(ds: datasets.IterableDataset, image_column, text_column, image_root: str | None, where: str) -> datasets.IterableDataset:
    features = ds.features
    columns = list(features.keys()) if features is not None else list(next(iter(ds.take(1))).keys())
    if image_column is None and features is not None:
        typed = [name for name, feature in features.items() if isinstance(feature, datasets.Image)]
        image_column = typed[0] if typed else None
    image_col = _pick_column(columns, _as_list(image_column, IMAGE_COLUMNS), "image", where)
    text_col = _pick_column(columns, _as_list(text_column, TEXT_COLUMNS), "text", where)
    if features is not None and isinstance(features.get(image_col), datasets.Image):
        ds = ds.cast_column(image_col, datasets.Image(decode=False))
    key_col = next((c for c in ("key", "__key__", "id", "image_id") if c in columns and c not in (image_col, text_col)), None)

    def to_pair(example: dict) -> dict:
        image = example[image_col]
        if image_root is not None:
            if isinstance(image, str) and not os.path.isabs(image) and "://" not in image:
                image = os.path.join(image_root, image)
            elif isinstance(image, dict) and image.get("bytes") is None and image.get("path") and not os.path.isabs(image["path"]):
                image = {"bytes": None, "path": os.path.join(image_root, image["path"])}
        key = example.get(key_col) if key_col else None
        return {"key": None if key is None else str(key), "image": image, "text": example[text_col], "meta": None, "error": None}

    return ds.map(to_pair, remove_columns=columns)


def _from_dataset(ds, image_column, text_column, image_root, where: str) -> datasets.IterableDataset:
    if isinstance(ds, datasets.DatasetDict) or isinstance(ds, datasets.IterableDatasetDict):
        raise ValueError(f"{where}: got a dataset dict with splits {list(ds.keys())}; pass split=")
    if isinstance(ds, datasets.Dataset):
        # Shards let workers and ranks split a map-style dataset; a few per core is plenty.
        ds = ds.to_iterable_dataset(num_shards=max(1, min(len(ds), 64)))
    return _standardise(ds, image_column, text_column, image_root, where)


def _mark(ds: datasets.IterableDataset) -> datasets.IterableDataset:
    ds.info.description = PAIRS_MARKER
    return ds


def is_pairs(ds: Any) -> bool:
    """Whether ``ds`` is a :func:`load_pairs` result (possibly shuffled or split since)."""
    return isinstance(ds, datasets.IterableDataset) and ds.info.description == PAIRS_MARKER


def load_pairs(
    source: str | Sequence[str] | datasets.Dataset | datasets.IterableDataset,
    image_column: str | Sequence[str] | None = None,
    text_column: str | Sequence[str] | None = None,
    split: str = "train",
    image_root: str | None = None,
    **load_kwargs: Any,
) -> datasets.IterableDataset:
    """Open image-text pairs from any supported source as a streaming dataset.

    Args:
        source: one of
            - webdataset shards: a ``.tar`` path, glob (``"shards/*.tar"``), brace pattern
              (``"shards/{00000..00127}.tar"``, remote URLs allowed), list, or a directory of tars;
            - an image folder with ``metadata.jsonl`` / ``metadata.csv`` (``file_name`` + caption
              column), or with a ``.txt`` caption beside each image;
            - parquet files (path, glob or directory) with image bytes, ``{"bytes", "path"}``
              structs or image paths, and a caption column;
            - a directory written by ``Dataset.save_to_disk``;
            - a ``datasets.Dataset`` / ``IterableDataset`` object, or a Hub dataset name
              (loaded with ``streaming=True``; needs network the first time).
        image_column / text_column: column names (webdataset: file extensions); by default the
            first of :data:`IMAGE_COLUMNS` / :data:`TEXT_COLUMNS` present. A list gives the
            order of preference (e.g. ``["jpg", "png", "webp"]``).
        split: split to load for Hub datasets and saved dataset dicts.
        image_root: directory that relative image paths are resolved against (defaults to the
            parquet files' directory).
        load_kwargs: passed to ``datasets.load_dataset`` for Hub names.

    Returns:
        ``datasets.IterableDataset`` with columns ``key, image, text, meta, error``
        (see the module docstring). Use ``ds.n_shards`` to see how far it can be split.
    """
    if is_pairs(source):
        return source
    if isinstance(source, (datasets.Dataset, datasets.IterableDataset, datasets.DatasetDict, datasets.IterableDatasetDict)):
        return _mark(_from_dataset(source, image_column, text_column, image_root, "dataset"))
    sources = [source] if isinstance(source, str) else list(source)
    files = [f for s in sources for f in _resolve_files(os.fspath(s))]
    where = ", ".join(map(str, sources))

    if not files:
        if len(sources) == 1 and not os.path.exists(sources[0]) and re.fullmatch(r"[\w.-]+(/[\w.-]+)?", sources[0]):
            ds = datasets.load_dataset(sources[0], split=split, streaming=True, **load_kwargs)
            return _mark(_standardise(ds, image_column, text_column, image_root, sources[0]))
        raise FileNotFoundError(f"no files match {where}")

    if len(sources) == 1 and os.path.isdir(sources[0]):
        root = sources[0]
        if os.path.exists(os.path.join(root, "state.json")) or os.path.exists(os.path.join(root, "dataset_dict.json")):
            ds = datasets.load_from_disk(root)
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[split]
            return _mark(_from_dataset(ds, image_column, text_column, image_root or root, root))

    tars = [f for f in files if _is_tar(f)]
    parquets = [f for f in files if f.endswith(".parquet")]
    has_metadata = any(os.path.basename(f) in METADATA_FILES for f in files)
    if tars:
        return _mark(_load_webdataset(tars, image_column, text_column))
    if parquets:
        root = image_root or os.path.dirname(os.path.abspath(parquets[0]))
        ds = datasets.load_dataset("parquet", data_files=parquets, split="train", streaming=True)
        return _mark(_standardise(ds, image_column, text_column, root, where))
    if len(sources) == 1 and os.path.isdir(sources[0]) and (
        has_metadata or any(f.lower().endswith(IMAGE_EXTENSIONS) for f in files)
    ):
        return _mark(_load_folder(os.path.abspath(sources[0]), [os.path.abspath(f) for f in files], image_column, text_column))
    raise ValueError(
        f"{where}: unrecognised data layout; expected .tar shards, .parquet files, "
        f"an image folder with {' or '.join(METADATA_FILES)}, or a saved datasets directory"
    )


def iter_records(pairs: Iterable[dict]) -> Iterator[dict]:
    """Iterate a pairs dataset, turning a failure of the underlying stream into one error record.

    Readers outside our control (parquet, Hub) can raise mid-stream; a streaming iterator cannot
    resume, so the rest of that stream is lost, but the job goes on and the loss is counted.
    """
    iterator = iter(pairs)
    while True:
        try:
            record = next(iterator)
        except StopIteration:
            return
        except Exception as error:  # noqa: BLE001 - see docstring
            logger.error("data stream failed and was cut short: %r", error)
            yield {"key": None, "image": None, "text": None, "meta": None, "error": f"stream_error: {error!r}"}
            return
        yield record
