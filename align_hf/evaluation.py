"""Zero-shot evaluation: classification metrics, image-text retrieval recall and batched encoding.

The metric functions work on plain tensors so they can be checked by hand; ``evaluate_zero_shot``
and ``evaluate_retrieval`` wire them to a model, a processor and any iterable of rows (a
``datasets.Dataset``, an ``IterableDataset`` or a list of dicts).

Conventions follow CLIP_benchmark:
  * classification: top-1, top-5 (only with at least 5 classes) and mean per-class recall;
  * retrieval with several captions per image: text->image R@K is the share of captions whose image
    is among the K best images; image->text R@K is the share of images with at least one of their
    captions among the K best captions.
A candidate outranks the true match only when it scores strictly higher, so exact ties resolve in
favour of the true match.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import numbers
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from PIL import Image
from tqdm.auto import tqdm

from .processing_align import to_rgb

logger = logging.getLogger(__name__)

ImageLike = Any  # PIL.Image.Image, a path, raw bytes, or a {"bytes"/"path"} dict (datasets Image(decode=False))


# ----------------------------------------------------------------------------------------------
# Metrics on tensors
# ----------------------------------------------------------------------------------------------


def classification_metrics(
    logits: torch.Tensor, labels: torch.Tensor, topk: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Top-k accuracy and mean per-class recall.

    Args:
        logits: ``(N, C)`` scores, higher is better.
        labels: ``(N,)`` integer class ids in ``[0, C)``.
        topk: which top-k accuracies to report; a k larger than ``C`` is left out.

    Returns:
        ``{"top1": ..., "top5": ..., "mean_per_class_recall": ..., "num_samples": N}`` with values in
        [0, 1]. Mean per-class recall averages top-1 recall over the classes present in ``labels``.
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, C), got shape {tuple(logits.shape)}")
    labels = torch.as_tensor(labels, dtype=torch.long, device=logits.device)
    if labels.shape != logits.shape[:1]:
        raise ValueError(f"labels must be ({logits.shape[0]},), got shape {tuple(labels.shape)}")
    n, num_classes = logits.shape
    if n == 0:
        raise ValueError("no samples to score")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got range [{labels.min()}, {labels.max()}]")
    # Rank of the true class = classes scoring strictly higher; ties count for the true class.
    true_scores = logits.gather(1, labels[:, None])
    rank = (logits > true_scores).sum(1)
    out: dict[str, float] = {}
    for k in topk:
        if k <= num_classes:
            out[f"top{k}"] = (rank < k).float().mean().item()
    hit = (rank == 0).float()
    per_class_hits = torch.zeros(num_classes, device=logits.device).index_add_(0, labels, hit)
    per_class_count = torch.bincount(labels, minlength=num_classes).float()
    present = per_class_count > 0
    out["mean_per_class_recall"] = (per_class_hits[present] / per_class_count[present]).mean().item()
    out["num_samples"] = n
    return out


def retrieval_metrics(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    text_to_image: torch.Tensor | Sequence[int],
    ks: Sequence[int] = (1, 5, 10),
    block_size: int = 1024,
) -> dict[str, float]:
    """Recall@K in both directions, computed block by block.

    Only one ``(block_size, N_img)`` block of scores exists at a time (two passes over the
    caption blocks), so 25k captions x 5k images needs about 20 MB of scores with the default
    block size instead of 500 MB for the full matrix.

    Args:
        image_embeds: ``(N_img, D)`` image embeddings (normalised for cosine similarity).
        text_embeds: ``(N_txt, D)`` text embeddings.
        text_to_image: ``(N_txt,)`` index of the image each caption belongs to.
        ks: the K values.
        block_size: rows of the score matrix computed at once.

    Returns:
        ``{"image_to_text_R@K": ..., "text_to_image_R@K": ..., "num_images": ..., "num_texts": ...}``.
        Images without any caption are left out of image->text and counted in
        ``"images_without_captions"``.
    """
    image_embeds = torch.as_tensor(image_embeds)
    text_embeds = torch.as_tensor(text_embeds)
    t2i = torch.as_tensor(text_to_image, dtype=torch.long, device=text_embeds.device)
    n_img, n_txt = image_embeds.shape[0], text_embeds.shape[0]
    if image_embeds.ndim != 2 or text_embeds.ndim != 2 or image_embeds.shape[1] != text_embeds.shape[1]:
        raise ValueError(
            f"embeddings must be (N_img, D) and (N_txt, D), got {tuple(image_embeds.shape)} and {tuple(text_embeds.shape)}"
        )
    if n_img == 0 or n_txt == 0:
        raise ValueError(f"need at least one image and one text, got {n_img} images and {n_txt} texts")
    if t2i.shape != (n_txt,):
        raise ValueError(f"text_to_image must be ({n_txt},), got shape {tuple(t2i.shape)}")
    if t2i.min() < 0 or t2i.max() >= n_img:
        raise ValueError(f"text_to_image entries must lie in [0, {n_img})")
    if block_size < 1:
        raise ValueError("block_size must be positive")
    image_embeds = image_embeds.float()
    text_embeds = text_embeds.float().to(image_embeds.device)
    t2i = t2i.to(image_embeds.device)

    # Both directions come from the same (text block x all images) score blocks, so a caption's
    # score against its own image is bit-identical wherever it is compared.
    def text_blocks() -> Iterator[tuple[slice, torch.Tensor]]:
        for start in range(0, n_txt, block_size):
            rows = slice(start, start + block_size)
            yield rows, text_embeds[rows] @ image_embeds.T  # (b, N_img)

    # Pass 1, text -> image: rank of each caption's own image; also each image's best own caption.
    t2i_rank = torch.empty(n_txt, dtype=torch.long, device=image_embeds.device)
    own_score = torch.empty(n_txt, dtype=image_embeds.dtype, device=image_embeds.device)
    for rows, scores in text_blocks():
        own = scores.gather(1, t2i[rows, None])
        own_score[rows] = own[:, 0]
        t2i_rank[rows] = (scores > own).sum(1, dtype=torch.int32)
    best = torch.full((n_img,), float("-inf"), device=image_embeds.device)
    best = best.scatter_reduce(0, t2i, own_score, reduce="amax")

    # Pass 2, image -> text: captions scoring above the image's best own caption. Its other
    # captions cannot, so they never push it down.
    i2t_rank = torch.zeros(n_img, dtype=torch.long, device=image_embeds.device)
    for _, scores in text_blocks():
        i2t_rank += (scores > best).sum(0, dtype=torch.int32)
    has_caption = torch.isfinite(best)

    out: dict[str, float] = {}
    for k in ks:
        out[f"image_to_text_R@{k}"] = (i2t_rank[has_caption] < k).float().mean().item()
    for k in ks:
        out[f"text_to_image_R@{k}"] = (t2i_rank < k).float().mean().item()
    out["num_images"] = n_img
    out["num_texts"] = n_txt
    out["images_without_captions"] = int((~has_caption).sum())
    return out


# ----------------------------------------------------------------------------------------------
# Images and batched encoding
# ----------------------------------------------------------------------------------------------


def load_image(item: ImageLike) -> Image.Image:
    """Open an image given as PIL, a path, raw bytes or a ``{"bytes", "path"}`` dict; returns RGB.

    The pixels are decoded here, so a corrupt file fails on its own rather than inside a batch.
    Raises whatever PIL raises for unreadable data (callers skip and count those).
    """
    if isinstance(item, Image.Image):
        image = item
    elif isinstance(item, (str, os.PathLike)):
        with Image.open(item) as f:
            image = f.copy()  # copy() forces the decode while the file is open
    elif isinstance(item, (bytes, bytearray)):
        image = Image.open(io.BytesIO(item))
        image.load()
    elif isinstance(item, dict) and (item.get("bytes") or item.get("path")):
        return load_image(item["bytes"] if item.get("bytes") else item["path"])
    else:
        raise TypeError(f"cannot read an image from {type(item).__name__}")
    return to_rgb(image)


def _model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _batched(items: Iterable[Any], batch_size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


@torch.no_grad()
def encode_texts(
    model: torch.nn.Module,
    processor: Any,
    texts: Sequence[str],
    batch_size: int = 256,
    progress: bool = True,
) -> torch.Tensor:
    """Embed texts with ``model.encode_text``; returns ``(N, D)`` float32 L2-normalised, on CPU."""
    texts = list(texts)
    if not texts:
        raise ValueError("no texts to encode")
    device = _model_device(model)
    chunks = []
    for batch in tqdm(list(_batched(texts, batch_size)), desc="encode texts", disable=not progress, unit="batch"):
        enc = processor(text=batch, return_tensors="pt", padding=True, truncation=True)
        inputs = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        chunks.append(model.encode_text(**inputs, normalize=True).float().cpu())
    return torch.cat(chunks)


@torch.no_grad()
def encode_pil_images(model: torch.nn.Module, processor: Any, images: Sequence[Image.Image]) -> torch.Tensor:
    """Embed one batch of already opened images; returns ``(B, D)`` float32 normalised, on CPU."""
    pixel_values = processor(images=list(images), return_tensors="pt")["pixel_values"]
    param = next(model.parameters())  # inputs follow the model's device and dtype (fp16/bf16 models)
    emb = model.encode_image(pixel_values.to(device=param.device, dtype=param.dtype), normalize=True)
    return emb.float().cpu()


@dataclass
class EncodedImages:
    """Result of :func:`encode_images`: embeddings of the readable images and what was skipped."""

    embeddings: torch.Tensor  # (N_ok, D)
    kept: list[int]  # positions (in the input order) of the rows in ``embeddings``
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (position, reason)


@torch.no_grad()
def encode_images(
    model: torch.nn.Module,
    processor: Any,
    images: Iterable[ImageLike],
    batch_size: int = 64,
    progress: bool = True,
    total: int | None = None,
    loader: Callable[[Any], Image.Image] = load_image,
) -> EncodedImages:
    """Embed images in batches, skipping (and listing) the ones that cannot be read.

    Args:
        images: items ``loader`` turns into PIL images (by default PIL images, paths, bytes or
            ``{"bytes", "path"}`` dicts).
        loader: opens one item; any exception it raises marks the item as skipped.

    Returns:
        :class:`EncodedImages` with ``(N_ok, D)`` float32 normalised embeddings on CPU (``N_ok`` may
        be 0 when nothing could be read).
    """
    if total is None and hasattr(images, "__len__"):
        total = len(images)  # type: ignore[arg-type]
    chunks: list[torch.Tensor] = []
    kept: list[int] = []
    skipped: list[tuple[int, str]] = []
    pending: list[Image.Image] = []
    pending_pos: list[int] = []
    bar = tqdm(total=total, desc="encode images", disable=not progress, unit="img")

    def flush() -> None:
        if pending:
            chunks.append(encode_pil_images(model, processor, pending))
            kept.extend(pending_pos)
            bar.update(len(pending))
            pending.clear()
            pending_pos.clear()

    for pos, item in enumerate(images):
        try:
            pending.append(loader(item))
            pending_pos.append(pos)
        except Exception as err:  # unreadable file: skip it, a long job must not die on one image
            skipped.append((pos, f"{type(err).__name__}: {err}"))
            bar.update(1)
            continue
        if len(pending) == batch_size:
            flush()
    flush()
    bar.close()
    if skipped:
        logger.warning("skipped %d unreadable images", len(skipped))
    if not chunks:  # nothing readable: an empty (0, D) result, the caller decides whether that is fatal
        dim = int(getattr(getattr(model, "config", None), "projection_dim", 0) or 0)
        return EncodedImages(torch.zeros(0, dim), kept, skipped)
    return EncodedImages(torch.cat(chunks), kept, skipped)


# ----------------------------------------------------------------------------------------------
# End-to-end evaluations
# ----------------------------------------------------------------------------------------------

_MISSING = object()


def get_field(row: dict, column: str, default: Any = _MISSING) -> Any:
    """``row[column]``, where ``column`` may be a dotted path into nested dicts or JSON sidecars.

    ``"json.label_index"`` reads ``label_index`` from a webdataset ``.json`` field, whether it
    is still bytes, a string or already a dict.
    """
    if column in row:
        return row[column]
    value: Any = row
    for part in column.split("."):
        if isinstance(value, (bytes, bytearray, str)):
            try:
                value = json.loads(value)
            except ValueError:
                value = None
        if not isinstance(value, dict) or part not in value:
            if default is _MISSING:
                raise KeyError(f"no field {column!r} in row with fields {sorted(row)}")
            return default
        value = value[part]
    return value


def _limited(rows: Iterable[dict], limit: int | None) -> Iterable[dict]:
    return rows if limit is None else itertools.islice(rows, limit)


def _row_total(rows: Iterable[dict], limit: int | None) -> int | None:
    if hasattr(rows, "__len__"):
        n = len(rows)  # type: ignore[arg-type]
        return n if limit is None else min(n, limit)
    return limit


def evaluate_zero_shot(
    model: torch.nn.Module,
    processor: Any,
    dataset: Iterable[dict],
    class_names: Sequence[str],
    templates: str | os.PathLike | Sequence[str] = "imagenet",
    image_column: str = "image",
    label_column: str = "label",
    batch_size: int = 64,
    limit: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Zero-shot classification accuracy of ``model`` on a labelled image dataset.

    Args:
        dataset: rows (a ``datasets`` dataset, a list of dicts...) with an image (PIL / path /
            bytes / ``{"bytes", "path"}``) in ``image_column`` and a label in ``label_column``:
            an index into ``class_names`` (int, or digits as text/bytes such as a webdataset
            ``.cls``) or a class name. Columns may be dotted paths (``"json.label_index"``).
        class_names: one name per class, in label order.
        templates: prompt templates (``"imagenet"``, ``"short"``, a file path or a list).
        limit: evaluate at most this many rows.
        cache_dir: where to cache the class embeddings (see :class:`ZeroShotClassifier`).

    The model is put in eval mode.

    Returns:
        :func:`classification_metrics` plus ``"skipped"``: rows left out because the image could
        not be read or the label was missing or unknown.
    """
    from .zero_shot import ZeroShotClassifier

    model.eval()
    classifier = ZeroShotClassifier(
        model, processor, class_names, templates, cache_dir=cache_dir, progress=progress
    )
    index_of = {name: i for i, name in enumerate(classifier.class_names)}
    num_classes = len(index_of)
    labels: list[int] = []
    bad_labels = 0

    def images() -> Iterator[ImageLike]:
        nonlocal bad_labels
        for row in _limited(dataset, limit):
            label = get_field(row, label_column, None)
            if isinstance(label, (bytes, bytearray)):  # e.g. a webdataset .cls field
                label = label.decode("utf-8", "replace")
            if isinstance(label, str):
                text = label.strip()
                label = index_of.get(text, int(text) if text.isdigit() else None)
            if isinstance(label, bool) or not isinstance(label, numbers.Integral) or not 0 <= label < num_classes:
                bad_labels += 1
                continue
            labels.append(int(label))
            yield get_field(row, image_column, None)

    encoded = encode_images(
        model, processor, images(), batch_size=batch_size, progress=progress, total=_row_total(dataset, limit)
    )
    if bad_labels:
        logger.warning("skipped %d rows without a usable label in %r", bad_labels, label_column)
    if not encoded.kept:
        raise ValueError(
            f"nothing to evaluate: {len(encoded.skipped)} unreadable images, {bad_labels} rows without a usable label"
        )
    kept_labels = torch.tensor([labels[i] for i in encoded.kept])
    metrics = classification_metrics(classifier.logits(encoded.embeddings), kept_labels)
    metrics["skipped"] = len(encoded.skipped) + bad_labels
    return metrics


def evaluate_retrieval(
    model: torch.nn.Module,
    processor: Any,
    dataset: Iterable[dict],
    image_column: str = "image",
    caption_column: str = "caption",
    batch_size: int = 64,
    ks: Sequence[int] = (1, 5, 10),
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Zero-shot image<->text retrieval recall on rows holding an image and one or more captions.

    Args:
        dataset: rows with an image in ``image_column`` and, in ``caption_column``, a caption or a
            list of captions (Flickr30K / MSCOCO style: all captions of an image in one row).
            Columns may be dotted paths (``"json.captions"``).
        limit: evaluate at most this many rows.

    Returns:
        :func:`retrieval_metrics` plus ``"skipped"``: rows left out because the image could not be
        read or no caption was given.
    """
    model.eval()
    captions: list[list[str]] = []
    no_caption = 0

    def images() -> Iterator[ImageLike]:
        nonlocal no_caption
        for row in _limited(dataset, limit):
            caps = get_field(row, caption_column, None)
            if isinstance(caps, (bytes, bytearray)):
                caps = caps.decode("utf-8", "replace")
            caps = [caps] if isinstance(caps, str) else list(caps or [])
            caps = [c.strip() for c in caps if isinstance(c, str) and c.strip()]
            if not caps:
                no_caption += 1
                continue
            captions.append(caps)
            yield get_field(row, image_column, None)

    encoded = encode_images(
        model, processor, images(), batch_size=batch_size, progress=progress, total=_row_total(dataset, limit)
    )
    if no_caption:
        logger.warning("skipped %d rows without a caption in %r", no_caption, caption_column)
    if not encoded.kept:
        raise ValueError(f"nothing to evaluate: {len(encoded.skipped)} unreadable images, {no_caption} rows without captions")
    texts: list[str] = []
    owner: list[int] = []
    for img_idx, pos in enumerate(encoded.kept):
        texts.extend(captions[pos])
        owner.extend([img_idx] * len(captions[pos]))
    text_embeds = encode_texts(model, processor, texts, batch_size=max(batch_size, 128), progress=progress)
    metrics = retrieval_metrics(encoded.embeddings, text_embeds, torch.tensor(owner), ks=ks)
    metrics["skipped"] = len(encoded.skipped) + no_caption
    return metrics


__all__: list[str] = [
    "classification_metrics",
    "retrieval_metrics",
    "load_image",
    "get_field",
    "encode_texts",
    "encode_images",
    "encode_pil_images",
    "EncodedImages",
    "evaluate_zero_shot",
    "evaluate_retrieval",
]
