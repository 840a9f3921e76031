"""Embedding folders: clip-retrieval's layout plus align_hf's manifest, written one input shard at a time.

An embedding folder ``EMB`` holds one *part* per input shard (a tar, a parquet file, a chunk of
an image folder, a range of a ``datasets`` split)::

    EMB/img_emb/img_emb_{i:05d}.npy        (rows_i, D) float32 or float16, L2-normalised
    EMB/text_emb/text_emb_{i:05d}.npy      (rows_i, D), same rows; all zeros where a sample has no caption
    EMB/metadata/metadata_{i:05d}.parquet  id (int64), key, image_path, caption, source (str)
    EMB/align_manifest.json                model signature, dim, dtype, modalities, parts, counts

autofaiss (``embeddings_path=EMB/img_emb``) and clip-retrieval's tools read the ``.npy`` and
parquet files as they are. Global ids follow input order (part order, then row order within a
part) and count only embedded rows, so id ``j`` is row ``j`` of the concatenated ``.npy`` files
(autofaiss's own numbering) and a resumed build assigns the same ids.

Every file is written under a temporary name and renamed. A part's metadata parquet is written
last and carries the part's record (rows, skipped samples, first id) in its footer, so its
presence means the part is complete: a killed build resumes at the first missing part and never
embeds a finished shard again. The manifest summarises the parts; it is rewritten every
:data:`MANIFEST_EVERY_S` seconds and when the build ends (``"complete": true``).

:class:`EmbeddingWriter` is the writer both engines share; :func:`embed_to_folder` is the
single-process build (no Ray needed), :func:`align_hf.search.ray_embed.embed_with_ray` the
distributed one. Reading (:func:`read_manifest`, :func:`iter_parts`, :func:`read_metadata`,
:class:`EmbeddingFolder`) needs only numpy and pyarrow.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from align_hf.search.embed_steps import END_OF_SHARD

logger = logging.getLogger(__name__)

FORMAT = "align_hf-embeddings"
FORMAT_VERSION = 1
MANIFEST = "align_manifest.json"
FOLDERS = {"image": "img_emb", "text": "text_emb"}
METADATA_COLUMNS = ("id", "key", "image_path", "caption", "source")
PART_KEY = b"align_hf.part"  # parquet footer key holding the part's record
MANIFEST_EVERY_S = 30.0
MAX_EXAMPLES = 100  # skipped samples listed by key in the manifest (all are counted)

# Called after each part is written (resumed=False) or found complete on disk (resumed=True).
PartCallback = Callable[[dict, bool], None]


def part_path(root: str | os.PathLike, kind: str, part: int) -> Path:
    """Path of part ``part`` of ``kind`` (``"image"``, ``"text"`` or ``"metadata"``)."""
    root = Path(root)
    if kind == "metadata":
        return root / "metadata" / f"metadata_{part:05d}.parquet"
    folder = FOLDERS[kind]
    return root / folder / f"{folder}_{part:05d}.npy"


def _replace_with(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")  # not matched by *.npy / *.parquet globs
    write(temporary)
    os.replace(temporary, path)


def save_npy(path: Path, array: np.ndarray) -> None:
    """Write one part's ``(rows, D)`` vectors atomically."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.save(handle, np.ascontiguousarray(array))

    _replace_with(path, write)


def save_metadata(path: Path, columns: dict[str, Sequence], info: dict) -> None:
    """Write one part's metadata parquet atomically, with the part's record ``info`` in its footer."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [("id", pa.int64())] + [(name, pa.string()) for name in METADATA_COLUMNS[1:]],
        metadata={PART_KEY: json.dumps(info).encode("utf-8")},
    )
    table = pa.table({name: columns[name] for name in METADATA_COLUMNS}, schema=schema)
    _replace_with(path, lambda tmp: pq.write_table(table, tmp))


def read_part_info(root: str | os.PathLike, part: int) -> dict | None:
    """The record of a complete part (from its metadata footer), or ``None`` if it is not complete."""
    import pyarrow.parquet as pq

    path = part_path(root, "metadata", part)
    if not path.is_file():
        return None
    try:
        metadata = pq.read_schema(path).metadata or {}
        return json.loads(metadata[PART_KEY])
    except Exception as error:  # noqa: BLE001 - a damaged file means: embed the part again
        logger.warning("%s is unreadable (%r); part %d will be embedded again", path, error, part)
        return None


def write_manifest(root: str | os.PathLike, manifest: dict) -> None:
    _replace_with(Path(root) / MANIFEST, lambda tmp: tmp.write_text(json.dumps(manifest, indent=1), encoding="utf-8"))


def read_manifest(path: str | os.PathLike) -> dict:
    """The manifest of the embedding folder ``path`` (see the module docstring)."""
    file = Path(path) / MANIFEST
    if not file.is_file():
        raise FileNotFoundError(f"no embedding folder at {path} ({MANIFEST} is missing)")
    manifest = json.loads(file.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{file} is not an align_hf embedding manifest")
    if manifest.get("version", 0) > FORMAT_VERSION:
        raise ValueError(f"embedding format version {manifest['version']} is newer than this align_hf supports")
    return manifest


class EmbeddingFolder:
    """Read access to an embedding folder: its parts' vectors (memory-mapped) and metadata (per part, lazily)."""

    def __init__(self, path: str | os.PathLike, require_complete: bool = True) -> None:
        self.path = Path(path)
        self.manifest = read_manifest(path)
        if require_complete and not self.manifest.get("complete"):
            raise ValueError(
                f"{path} is an unfinished embedding build; rerun 'align-hf index embed' with the same arguments to complete it"
            )
        self.parts = sorted(self.manifest["parts"], key=lambda p: p["first_id"])
        self._first_ids = np.array([p["first_id"] for p in self.parts], dtype=np.int64)

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def rows(self) -> int:
        return int(self.manifest["rows"])

    @property
    def modalities(self) -> list[str]:
        return list(self.manifest["modalities"])

    def vectors(self, part: int, modality: str = "image") -> np.ndarray:
        """``(rows, D)`` vectors of one part as stored (float32 or float16), memory-mapped."""
        if modality not in self.modalities:
            raise ValueError(f"{self.path} has no {modality} embeddings (it has: {', '.join(self.modalities)})")
        return np.load(part_path(self.path, modality, part), mmap_mode="r")

    def iter_parts(self, modality: str = "image") -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """``(part, ids (rows,) int64, vectors (rows, D))`` for each non-empty part, in id order."""
        for info in self.parts:
            if info["rows"]:
                ids = np.arange(info["first_id"], info["first_id"] + info["rows"], dtype=np.int64)
                yield info["part"], ids, self.vectors(info["part"], modality)

    def read_metadata(self, ids: Sequence[int] | np.ndarray) -> list[dict]:
        """Metadata rows (``id, key, image_path, caption, source``) of ``ids``, in the order given.

        Only the parquet parts that hold the ids are opened. Raises ``IndexError`` for an id that
        is not in the folder.
        """
        import pyarrow.parquet as pq

        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.rows):
            raise IndexError(f"ids must be in [0, {self.rows}); got {ids.min()}..{ids.max()}")
        # The last part starting at or before each id (an empty part shares its first id with the next).
        slot = np.searchsorted(self._first_ids, ids, side="right") - 1
        out: list[dict | None] = [None] * len(ids)
        for s in np.unique(slot):
            info = self.parts[int(s)]
            table = pq.read_table(part_path(self.path, "metadata", info["part"]), columns=list(METADATA_COLUMNS))
            where = np.flatnonzero(slot == s)
            rows = table.take(ids[where] - info["first_id"]).to_pylist()
            for position, row in zip(where, rows):
                out[position] = row
        return out  # type: ignore[return-value]


def iter_parts(path: str | os.PathLike, modality: str = "image") -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """``(part, ids, vectors)`` of each non-empty part of the embedding folder ``path`` (see :class:`EmbeddingFolder`)."""
    return EmbeddingFolder(path).iter_parts(modality)


def read_metadata(path: str | os.PathLike, ids: Sequence[int] | np.ndarray) -> list[dict]:
    """Metadata rows of ``ids`` in the embedding folder ``path`` (see :meth:`EmbeddingFolder.read_metadata`)."""
    return EmbeddingFolder(path).read_metadata(ids)


def _renumber(root: Path, info: dict, first_id: int) -> dict:
    """Give a finished part new ids (an earlier part was embedded again with another row count)."""
    import pyarrow.parquet as pq

    path = part_path(root, "metadata", info["part"])
    columns = pq.read_table(path).to_pydict()
    columns["id"] = list(range(first_id, first_id + info["rows"]))
    info = {**info, "first_id": first_id}
    save_metadata(path, columns, info)
    return info


class EmbeddingWriter:
    """Turns embedded rows into parts on disk, in part order, resuming a build that was stopped.

    Feed it the batches of :class:`~align_hf.search.embed_steps.Embedder` (columns ``part, row,
    ok, reason, key, image_path, caption, has_text, image_emb[, text_emb]``) in input order; each
    shard ends with one row whose reason is ``END_OF_SHARD``. Parts listed in :attr:`todo` are
    the ones still to embed; the others were found complete on disk.

    Args:
        root: the embedding folder.
        sources: one label per input shard (the part's ``source``).
        plan: what the parts must have been made from (inputs digest, dtype, text on/off); a
            folder holding another plan is refused unless ``overwrite``.
        signature: :func:`~align_hf.search.signature.model_signature` of the embedding model.
        text: also write ``text_emb`` (caption embeddings).
        fp16: store vectors as float16.
        overwrite: delete an incompatible folder's parts instead of refusing.
        on_part: called with each part's record and whether it was resumed.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        sources: Sequence[str],
        plan: dict,
        signature: dict,
        text: bool = True,
        fp16: bool = False,
        overwrite: bool = False,
        on_part: PartCallback | None = None,
        progress: bool = True,
    ) -> None:
        from tqdm.auto import tqdm

        self.root = Path(root)
        self.sources = list(sources)
        self.signature = signature
        self.dim = int(signature["embedding_dim"])
        self.text = text
        self.dtype = np.float16 if fp16 else np.float32
        self.plan = {**plan, "num_shards": len(self.sources), "dtype": np.dtype(self.dtype).name, "text": text}
        self.on_part = on_part
        self._check_existing(overwrite)
        self.done: dict[int, dict] = {}
        for part in range(len(self.sources)):
            info = read_part_info(self.root, part)
            if info is not None and info.get("source") == self.sources[part] and self._files_present(part):
                self.done[part] = info
        self.todo = [part for part in range(len(self.sources)) if part not in self.done]
        self.parts: list[dict] = []
        self.rows = self.text_rows = 0
        self.skip_reasons: Counter = Counter()
        self.examples: list[dict] = []
        self._next = 0  # the next part to account for
        self._open: tuple[int, list[dict]] | None = None  # (part, batches) being collected
        self._saved_at = 0.0
        self._bar = tqdm(total=len(self.sources), desc="embedding shards", unit="shard", disable=not progress)
        if self.done:
            logger.info("%s: %d of %d shards already embedded; resuming", self.root, len(self.done), len(self.sources))
        self._save_manifest(complete=False)

    # --------------------------------------------------------------------------------- setup
    def _check_existing(self, overwrite: bool) -> None:
        from align_hf.search.signature import ModelMismatchError, check_model

        if not (self.root / MANIFEST).is_file():
            if any((self.root / "metadata").glob("*.parquet")) and not overwrite:
                raise ValueError(f"{self.root} holds embeddings without an align_hf manifest; use another folder or overwrite")
            return
        old = read_manifest(self.root)
        problem = None
        try:
            check_model(old["model"], self.signature)
        except ModelMismatchError as error:
            problem = str(error)
        if problem is None and old.get("plan") != self.plan:
            changed = [k for k in self.plan if old.get("plan", {}).get(k) != self.plan[k]]
            problem = f"it was built from other inputs or settings ({', '.join(changed)} differ)"
        if problem is None:
            return
        if not overwrite:
            raise ValueError(f"{self.root} already holds embeddings that do not match this build: {problem}. "
                             "Use another output folder, or overwrite to replace them.")
        logger.warning("%s: replacing embeddings that do not match this build (%s)", self.root, problem)
        for folder in ("img_emb", "text_emb", "metadata"):
            shutil.rmtree(self.root / folder, ignore_errors=True)

    def _files_present(self, part: int) -> bool:
        kinds = ["image", "text"] if self.text else ["image"]
        return all(part_path(self.root, kind, part).is_file() for kind in kinds)

    # --------------------------------------------------------------------------------- input
    def add(self, batch: dict[str, np.ndarray]) -> None:
        """Take one batch of embedded rows (rows of a part arrive in order, parts in order)."""
        parts = np.asarray(batch["part"])
        if not len(parts):
            return
        cuts = np.flatnonzero(np.diff(parts)) + 1
        for start, stop in zip(np.r_[0, cuts], np.r_[cuts, len(parts)]):
            part = int(parts[start])
            segment = {name: np.asarray(values)[start:stop] for name, values in batch.items()}
            if self._open is None or self._open[0] != part:
                self._advance(part)
                self._open = (part, [])
            self._open[1].append(segment)
            if np.any(segment["reason"] == END_OF_SHARD):
                self._close()

    def _advance(self, part: int) -> None:
        """Account for every part before ``part``: finished ones found on disk, or shards that never reported."""
        if self._open is not None:
            raise RuntimeError(f"part {self._open[0]} ended without its end-of-shard row")
        if part < self._next or part in self.done:
            raise RuntimeError(f"rows of part {part} arrived out of order (expected part {self._next} or later)")
        while self._next < part:
            if self._next in self.done:
                self._account(self.done[self._next], resumed=True)
            else:  # not expected with a healthy reader; keep the ids consistent all the same
                logger.error("shard %s produced no rows; written as an empty part", self.sources[self._next])
                self._write(self._next, [])

    def _close(self) -> None:
        part, segments = self._open  # type: ignore[misc]
        self._open = None
        self._write(part, segments)

    def _write(self, part: int, segments: list[dict]) -> None:
        batch = {name: np.concatenate([s[name] for s in segments]) for name in segments[0]} if segments else {}
        reasons = batch.get("reason", np.array([], dtype=object))
        end = reasons == END_OF_SHARD
        order = np.argsort(batch["row"][~end], kind="stable") if segments else np.array([], dtype=np.int64)
        rows = {name: values[~end][order] for name, values in batch.items()}
        ok = rows["ok"].astype(bool) if segments else np.array([], dtype=bool)
        read = int(batch["row"][end][0]) if end.any() else int(ok.size)
        if ok.size != read:
            raise RuntimeError(f"part {part}: {ok.size} rows arrived but the shard reported {read}")
        first_id = self.rows
        count = int(ok.sum())
        image = rows["image_emb"][ok] if segments else np.zeros((0, self.dim), np.float32)
        save_npy(part_path(self.root, "image", part), image.astype(self.dtype))
        has_text = 0
        if self.text:
            text = rows["text_emb"][ok] if segments else np.zeros((0, self.dim), np.float32)
            has_text = int(rows["has_text"][ok].sum()) if segments else 0
            save_npy(part_path(self.root, "text", part), text.astype(self.dtype))
        source = self.sources[part]
        skipped = [
            {"key": str(k), "source": source, "reason": str(r)}
            for k, r in zip(rows.get("key", [])[~ok], rows.get("reason", [])[~ok])
        ] if segments else []
        info = {
            "part": part, "source": source, "rows": count, "skipped": len(skipped), "first_id": first_id,
            "text_rows": has_text, "skip_reasons": dict(Counter(s["reason"] for s in skipped)),
            "skipped_examples": skipped[:MAX_EXAMPLES],
        }
        columns = {
            "id": np.arange(first_id, first_id + count, dtype=np.int64),
            "key": [str(v) for v in rows["key"][ok]] if segments else [],
            "image_path": [str(v) for v in rows["image_path"][ok]] if segments else [],
            "caption": [str(v) for v in rows["caption"][ok]] if segments else [],
            "source": [source] * count,
        }
        save_metadata(part_path(self.root, "metadata", part), columns, info)  # last: marks the part complete
        self._account(info, resumed=False)

    def _account(self, info: dict, resumed: bool) -> None:
        if info["first_id"] != self.rows:
            info = _renumber(self.root, info, self.rows)
        self.parts.append({k: info[k] for k in ("part", "source", "rows", "skipped", "first_id", "text_rows", "skip_reasons")})
        self.rows += info["rows"]
        self.text_rows += info.get("text_rows", 0)
        self.skip_reasons.update(info["skip_reasons"])
        self.examples.extend(info.get("skipped_examples", [])[: MAX_EXAMPLES - len(self.examples)])
        self._next = info["part"] + 1
        self._bar.update(1)
        self._bar.set_postfix(images=self.rows, skipped=sum(self.skip_reasons.values()), refresh=False)
        if self.on_part is not None:
            self.on_part(info, resumed)
        if time.monotonic() - self._saved_at > MANIFEST_EVERY_S:
            self._save_manifest(complete=False)

    # --------------------------------------------------------------------------------- output
    def _save_manifest(self, complete: bool) -> dict:
        # Without a single caption the (all-zero) text vectors are left out of the modalities.
        modalities = ["image", "text"] if self.text and (self.text_rows or not complete) else ["image"]
        manifest = {
            "format": FORMAT, "version": FORMAT_VERSION, "model": self.signature, "dim": self.dim,
            "dtype": np.dtype(self.dtype).name, "modalities": modalities, "parts": self.parts,
            "rows": self.rows, "skipped": sum(self.skip_reasons.values()), "skip_reasons": dict(self.skip_reasons),
            "text_rows": self.text_rows, "skipped_examples": self.examples, "complete": complete, "plan": self.plan,
        }
        write_manifest(self.root, manifest)
        self._saved_at = time.monotonic()
        return manifest

    def finish(self) -> dict:
        """Account for the remaining parts and write the final manifest; returns it."""
        if self._open is not None:
            raise RuntimeError(f"the input ended inside part {self._open[0]} (no end-of-shard row)")
        self._advance(len(self.sources))
        self._bar.close()
        missing = [p["part"] for p in self.parts if not part_path(self.root, "metadata", p["part"]).is_file()]
        if missing:
            raise RuntimeError(f"parts {missing[:10]} are missing from {self.root}")
        return self._save_manifest(complete=True)

    def close(self) -> None:
        """Save what is finished so far (after an error); a rerun resumes from there."""
        self._bar.close()
        self._save_manifest(complete=False)


def start_build(model: Any, processor: Any, inputs: Any, output: str | os.PathLike, *, text: bool, fp16: bool,
                image_column: str | None, caption_column: str | None, split: str, overwrite: bool,
                on_part: PartCallback | None, progress: bool) -> tuple[Any, Any, Any, EmbeddingWriter]:
    """``(model, processor, input plan, writer)``: the driver's side of a build, the same for both
    engines so that they write the same parts under the same plan and model signature."""
    from align_hf.search.embed_steps import load_driver_model, plan_inputs
    from align_hf.search.signature import model_signature

    model, processor = load_driver_model(model, processor)
    plan = plan_inputs(inputs, image_column, caption_column, split)
    writer = EmbeddingWriter(output, plan.labels, plan.fingerprint, model_signature(model, processor), text=text,
                             fp16=fp16, overwrite=overwrite, on_part=on_part, progress=progress)
    return model, processor, plan, writer


def embed_to_folder(
    model: Any,
    processor: Any,
    inputs: Any,
    output: str | os.PathLike,
    batch_size: int = 64,
    fp16: bool = False,
    text: bool = True,
    image_column: str | None = None,
    caption_column: str | None = None,
    split: str = "train",
    device: str | None = None,
    prepare: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    on_part: PartCallback | None = None,
) -> dict:
    """Embed ``inputs`` into the embedding folder ``output`` in this process (no Ray needed).

    Writes exactly what :func:`~align_hf.search.ray_embed.embed_with_ray` writes (same parts, ids
    and, to float rounding, vectors). Rerunning after an interruption embeds only the missing parts.

    Args:
        model: an align_hf ``AlignModel`` (or a folder / Hub id to load).
        inputs: webdataset tars (path, glob, brace pattern, folder of tars), an image folder,
            parquet files, a saved ``datasets`` folder or a ``datasets`` object (see
            :func:`~align_hf.data.sources.load_pairs`).
        batch_size: images per forward pass.
        fp16: store vectors as float16.
        text: also embed the captions (``text_emb``).
        image_column / caption_column: source columns (webdataset: extensions); default auto-detect.
        device: torch device (default: cuda if available, else cpu); bf16 on GPU, fp32 on CPU.
        prepare: embed with the inference copy of the model (BatchNorm folded, channels-last).

    Returns:
        The final manifest.
    """
    from align_hf.search.embed_steps import Embedder, read_shard

    model, processor, plan, writer = start_build(
        model, processor, inputs, output, text=text, fp16=fp16, image_column=image_column,
        caption_column=caption_column, split=split, overwrite=overwrite, on_part=on_part, progress=progress)
    try:
        if writer.todo:
            embedder = Embedder(model, dim=writer.dim, device=device, prepare=prepare)
            for part in writer.todo:
                for batch in read_shard(plan, processor, part, batch_size=batch_size, text=text):
                    writer.add(embedder(batch))
        return writer.finish()
    except BaseException:
        writer.close()
        raise


__all__ = [
    "END_OF_SHARD", "FOLDERS", "FORMAT", "FORMAT_VERSION", "MANIFEST", "METADATA_COLUMNS", "EmbeddingFolder",
    "EmbeddingWriter", "embed_to_folder", "iter_parts", "part_path", "read_manifest", "read_metadata",
    "read_part_info", "save_metadata", "save_npy", "start_build", "write_manifest",
]
