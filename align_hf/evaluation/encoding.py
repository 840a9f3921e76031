"""Batched embedding of images and texts for evaluation, search and the demo.

Unreadable images are skipped and listed rather than raised, so a long job keeps going.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from PIL import Image
from tqdm.auto import tqdm

from align_hf.image_io import open_image

logger = logging.getLogger(__name__)

ImageLike = Any  # PIL.Image.Image, a path, raw bytes, or a {"bytes"/"path"} dict (datasets Image(decode=False))


def _model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def prepare_for_embedding(
    model: torch.nn.Module,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    channels_last: bool = True,
    copy: bool = True,
) -> torch.nn.Module:
    """An inference-ready model for embedding: BatchNorm folded into the convolutions, eval mode,
    channels-last image tower, optionally moved to ``device`` and cast to ``dtype`` (e.g. bf16).

    Gives the same embeddings as ``model.eval()`` to float rounding. An align_hf ``AlignModel`` is
    prepared with :meth:`~align_hf.modeling_align.AlignModel.for_inference` (on a copy unless
    ``copy=False``, which folds in place and leaves the original untrainable); a model that is
    already prepared is returned as is (moved/cast if asked); any other model is moved, cast and
    put in eval mode.
    """
    if getattr(model, "_inference_only", False):
        prepared = model
    elif hasattr(model, "for_inference"):
        prepared = model.for_inference(channels_last=channels_last, copy=copy)
    else:
        prepared = model.eval()
    if device is not None or dtype is not None:
        prepared = prepared.to(device=device, dtype=dtype)
    if channels_last and hasattr(prepared, "vision_model"):
        # .to(device) keeps the memory format, but a model prepared without it gets it here.
        prepared.vision_model.to(memory_format=torch.channels_last)
    return prepared.eval()


@contextlib.contextmanager
def fast_path(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Run ``model``'s towers on their fast paths inside the block, then restore the settings.

    The image tower's fast path (:meth:`~align_hf.modeling_align.AlignModel.set_fast_path`) folds
    BatchNorm on the fly in eval mode, caching the folded weights until the model's weights change,
    so nothing is copied and a model being trained can be evaluated between steps; the text tower's
    skips padding and runs its last layer's top for [CLS] alone. Models without the setting (e.g. transformers'
    AlignModel) run unchanged.
    """
    restore = []
    for name in ("vision_model", "text_model"):
        tower = getattr(model, name, None)
        setter = getattr(tower, "set_fast_path", None)
        previous = getattr(tower, "fast_path", None)
        if setter is not None and previous is False:
            setter(True)
            restore.append(setter)
    try:
        yield model
    finally:
        for setter in restore:
            setter(False)


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
    pixel_values = pixel_values.to(device=param.device, dtype=param.dtype).contiguous(memory_format=torch.channels_last)
    with fast_path(model):
        emb = model.encode_image(pixel_values, normalize=True)
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
    loader: Callable[[Any], Image.Image] = open_image,
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


__all__ = [
    "ImageLike",
    "encode_texts",
    "encode_images",
    "encode_pil_images",
    "EncodedImages",
    "fast_path",
    "prepare_for_embedding",
]
