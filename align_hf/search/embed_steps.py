"""The steps of an embedding build, shared by the single-process and the Ray engines.

1. :func:`plan_inputs`: the input shards (one per tar, parquet file, 256-image chunk of a folder,
   range of a ``datasets`` split: the shards of :func:`~align_hf.data.sources.load_pairs`), each
   becoming one part of the embedding folder.
2. :func:`read_shard`: read one shard, decode its images (never raising: unreadable samples become
   rows with a skip reason), run the processor, and yield fixed-shape numpy batches. CPU work: Ray
   runs it in plain tasks.
3. :class:`Embedder`: embed a batch with the inference copy of the model (BatchNorm folded,
   channels-last; bf16 on GPU, fp32 on CPU). Ray runs it in an actor pool, one model per actor.

Batches carry ``part`` and ``row`` (the sample's position in its shard), so the writer
(:class:`~align_hf.search.embeddings.EmbeddingWriter`) can check and order them; each shard ends
with one extra row whose reason is ``END_OF_SHARD`` and whose ``row`` is the number of records read.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

logger = logging.getLogger(__name__)

END_OF_SHARD = "end_of_shard"  # reason of the row closing each shard; its ``row`` is the shard's record count

# Columns passed from the reader through the embedder to the writer.
ROW_COLUMNS = ("part", "row", "ok", "reason", "key", "image_path", "caption", "has_text")
TOKEN_COLUMNS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True)
class InputPlan:
    """The input shards of a build (picklable: sent to every Ray read task).

    Args:
        source: what :func:`~align_hf.data.sources.load_pairs` opens (absolute paths / globs, or a
            ``datasets`` object).
        labels: one label per shard: the file for tars and parquet files, ``<source>#i-of-n`` otherwise.
        fingerprint: identifies the inputs (the listed files, or the dataset's fingerprint), so a
            rerun only resumes a build of the same inputs.
    """

    source: Any
    image_column: str | None
    text_column: str | None
    split: str
    labels: tuple[str, ...]
    fingerprint: dict

    @property
    def num_shards(self) -> int:
        return len(self.labels)


def _absolute(source: Any) -> Any:
    """Local paths made absolute (Ray workers may not share the driver's working directory)."""
    if isinstance(source, (str, os.PathLike)):
        source = os.fspath(source)
        return source if "://" in source else os.path.abspath(source)
    if isinstance(source, (list, tuple)) and all(isinstance(s, (str, os.PathLike)) for s in source):
        return tuple(_absolute(s) for s in source)
    return source


def plan_inputs(source: Any, image_column: str | None = None, text_column: str | None = None, split: str = "train") -> InputPlan:
    """List the shards of ``source`` (anything :func:`~align_hf.data.sources.load_pairs` reads)."""
    from align_hf.data.sources import _is_tar, _resolve_files, load_pairs

    source = _absolute(source)
    pairs = load_pairs(list(source) if isinstance(source, tuple) else source, image_column=image_column,
                       text_column=text_column, split=split)
    count = pairs.n_shards
    digest = hashlib.sha1(repr(source if isinstance(source, (str, tuple)) else type(source)).encode("utf-8", "surrogatepass"))
    labels: list[str] | None = None
    if isinstance(source, (str, tuple)):
        files = [f for s in ([source] if isinstance(source, str) else source) for f in _resolve_files(s)]
        for name in files:
            digest.update(name.encode("utf-8", "surrogatepass") + b"\0")
        # load_pairs makes one shard per tar or per parquet file, in this order.
        for group in ([f for f in files if _is_tar(f)], [f for f in files if f.endswith(".parquet")]):
            if group and len(group) == count:
                labels = group
                break
        name = source if isinstance(source, str) else source[0]
    else:
        digest.update(f"{type(source).__name__}:{getattr(source, '_fingerprint', '')}:{count}".encode())
        name = f"<{type(source).__name__}>"
    if labels is None:
        labels = [f"{name}#{i:05d}-of-{count:05d}" for i in range(count)]
    return InputPlan(source, image_column, text_column, split, tuple(labels), {"inputs": digest.hexdigest(), "columns": [image_column, text_column, split]})


def open_shard(plan: InputPlan, part: int) -> Iterator[dict]:
    """The records of shard ``part`` (a stream failure becomes one error record, see ``iter_records``)."""
    from align_hf.data.sources import iter_records, load_pairs

    source = list(plan.source) if isinstance(plan.source, tuple) else plan.source
    pairs = load_pairs(source, image_column=plan.image_column, text_column=plan.text_column, split=plan.split)
    if plan.num_shards > 1:
        pairs = pairs.shard(num_shards=plan.num_shards, index=part)
    return iter_records(pairs)


def _image_path(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("path") or "")
    return os.fspath(value) if isinstance(value, (str, os.PathLike)) else ""


def _fixed_width(array: np.ndarray, width: int) -> np.ndarray:
    """Token arrays padded (with 0 = [PAD] / masked) or cut to ``width`` columns, so every batch has one shape."""
    if array.shape[1] >= width:
        return array[:, :width]
    return np.pad(array, ((0, 0), (0, width - array.shape[1])))


class _Preprocess:
    """The processor's image and text steps, with the fixed output shapes Ray's tensor columns need."""

    def __init__(self, processor: Any, text: bool) -> None:
        self.processor = processor
        self.text = text
        probe = processor(images=[np.zeros((8, 8, 3), np.uint8)], return_tensors="np")["pixel_values"]
        self.pixel_shape = tuple(probe.shape[1:])
        size = getattr(getattr(processor, "image_processor", None), "size", None) or {}
        self.draft = (int(size["width"]), int(size["height"])) if "width" in size and "height" in size else None
        self.width = int(processor(text=["a"], return_tensors="np")["input_ids"].shape[1]) if text else 0

    def batch(self, part: int, rows: list[dict]) -> dict[str, np.ndarray]:
        n = len(rows)
        out: dict[str, np.ndarray] = {
            "part": np.full(n, part, np.int64),
            "row": np.array([r["row"] for r in rows], np.int64),
            "ok": np.array([r["image"] is not None for r in rows], bool),
            **{name: np.array([r[name] for r in rows], dtype=object) for name in ("reason", "key", "image_path", "caption")},
            "has_text": np.array([bool(r["caption"]) for r in rows], bool),
        }
        pixels = np.zeros((n,) + self.pixel_shape, np.float32)
        good = np.flatnonzero(out["ok"])
        if good.size:
            pixels[good] = self.processor(images=[rows[i]["image"] for i in good], return_tensors="np")["pixel_values"]
        out["pixel_values"] = pixels
        if self.text:
            tokens = self.processor(text=[r["caption"] or "" for r in rows], return_tensors="np")
            for name in TOKEN_COLUMNS:
                values = tokens[name] if name in tokens else np.zeros_like(tokens["input_ids"])
                out[name] = _fixed_width(np.asarray(values, np.int64), self.width)
        return out


def read_shard(plan: InputPlan, processor: Any, part: int, batch_size: int = 64, text: bool = True) -> Iterator[dict[str, np.ndarray]]:
    """Decoded, preprocessed batches of shard ``part``, then its end-of-shard row.

    Columns: :data:`ROW_COLUMNS`, ``pixel_values`` ``(B, 3, H, W)`` float32 (zeros for skipped
    rows) and, with ``text``, :data:`TOKEN_COLUMNS` ``(B, L)`` int64. Unreadable samples get
    ``ok=False`` and a reason from :mod:`align_hf.data.decoding`; nothing raises.
    """
    from align_hf.data.decoding import DecodeLimits, clean_caption, decode_image, image_bytes

    # Only broken data is skipped: the search index keeps banners and tiny icons a training filter drops.
    limits = DecodeLimits(max_aspect_ratio=float("inf"))
    prep = _Preprocess(processor, text)
    rows: list[dict] = []
    count = 0
    for count, record in enumerate(open_shard(plan, part), 1):
        row = {"row": count - 1, "key": str(record.get("key") or ""), "image": None, "reason": "",
               "image_path": _image_path(record.get("image")), "caption": ""}
        if record.get("error"):
            row["reason"] = str(record["error"]).split(":", 1)[0]  # e.g. corrupt_shard, stream_error
        else:
            decoded = decode_image(image_bytes(record.get("image")), limits, draft_size=prep.draft)
            row["image"], row["reason"] = decoded.image, decoded.reason or ""
            row["caption"] = clean_caption(record.get("text"))[0] or ""
        rows.append(row)
        if len(rows) == batch_size:
            yield prep.batch(part, rows)
            rows = []
    rows.append({"row": count, "key": "", "image": None, "reason": END_OF_SHARD, "image_path": "", "caption": ""})
    yield prep.batch(part, rows)


def load_driver_model(model: Any, processor: Any) -> tuple[Any, Any]:
    """``(model, processor)``, loading either from a folder / Hub id when given as a name (on CPU)."""
    if isinstance(model, (str, os.PathLike)):
        from align_hf.loading import load_model_and_processor

        loaded, loaded_processor = load_model_and_processor(model, device="cpu")
        return loaded, processor if processor is not None else loaded_processor
    if processor is None:
        raise ValueError("pass the processor with a model object (or a model folder / Hub id)")
    return model, processor


def prepare_model(model: Any, device: Any, dtype: Any, copy: bool = True) -> Any:
    """The model ready for embedding: BatchNorm folded, eval mode, channels-last, on ``device`` in ``dtype``.

    ``copy=False`` folds ``model`` itself (when nothing else uses it: a Ray actor's own copy).
    """
    from align_hf.evaluation.encoding import prepare_for_embedding

    return prepare_for_embedding(model, device=device, dtype=dtype, copy=copy)


class Embedder:
    """Embeds :func:`read_shard` batches; Ray Data runs one per actor (the model is loaded once).

    Args:
        model: an ``AlignModel``, or a folder / Hub id loaded here (each Ray actor loads its own).
        dim: embedding size (for batches with no readable image).
        device: torch device; default cuda if available, else cpu.
        dtype: default bfloat16 on GPU, float32 on CPU.
        threads: torch CPU threads (default: torch's choice, which Ray sets to the actor's CPUs).
        prepare: use :func:`prepare_model` (else the model as given, in eval mode).
        in_place: prepare ``model`` itself rather than a copy (it belongs to this embedder).
        keep_freed_memory: the process is this embedder's alone (a Ray actor): tell glibc to keep
            freed memory (:func:`~align_hf.training.allocator.keep_freed_memory`, as the
            ``align-hf`` program does), or every batch faults in fresh pages for its activations.

    Returns per batch the :data:`ROW_COLUMNS` plus ``image_emb`` and, with tokens, ``text_emb``
    ``(B, D)`` float32, L2-normalised (rows that were not embedded are zeros).
    """

    def __init__(self, model: Any, dim: int, device: str | None = None, dtype: Any = None,
                 threads: int | None = None, prepare: bool = True, in_place: bool = False,
                 keep_freed_memory: bool = False) -> None:
        import torch

        if keep_freed_memory:
            from align_hf.training.allocator import keep_freed_memory as keep

            keep()
        if threads:
            torch.set_num_threads(threads)
        if isinstance(model, (str, os.PathLike)):
            from align_hf.loading import load_model_and_processor

            model, _ = load_model_and_processor(model, device="cpu")
            in_place = True
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        if prepare:
            self.model = prepare_model(model, self.device, self.dtype, copy=not in_place)
        else:
            self.model = model.to(self.device).eval()
        self.dim = dim

    def _unit(self, embeddings: Any) -> np.ndarray:
        out = embeddings.float().cpu().numpy()
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)  # renormalised in fp32 after bf16

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        out = {name: batch[name] for name in ROW_COLUMNS}
        n = len(batch["ok"])
        ok = np.asarray(batch["ok"], bool)
        out["image_emb"] = np.zeros((n, self.dim), np.float32)
        with torch.inference_mode():
            if ok.any():
                pixels = torch.from_numpy(np.ascontiguousarray(batch["pixel_values"][ok]))
                pixels = pixels.to(self.device, self.dtype).contiguous(memory_format=torch.channels_last)
                out["image_emb"][ok] = self._unit(self.model.encode_image(pixels, normalize=False))
            if "input_ids" in batch:
                out["text_emb"] = np.zeros((n, self.dim), np.float32)
                take = ok & np.asarray(batch["has_text"], bool)
                if take.any():
                    mask = batch["attention_mask"][take]
                    width = max(1, int(mask.sum(1).max()))  # drop the padding columns no row uses
                    tokens = {name: torch.from_numpy(np.ascontiguousarray(batch[name][take][:, :width])).to(self.device)
                              for name in TOKEN_COLUMNS}
                    out["text_emb"][take] = self._unit(self.model.encode_text(**tokens, normalize=False))
        return out


__all__ = ["END_OF_SHARD", "ROW_COLUMNS", "TOKEN_COLUMNS", "Embedder", "InputPlan", "load_driver_model", "open_shard",
           "plan_inputs", "prepare_model", "read_shard"]
