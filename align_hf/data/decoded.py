"""Training pairs decoded once and held in memory: a pre-decoded cache for small corpora.

The streaming pipeline (:class:`~align_hf.data.pipeline.ImageTextPairs`) decodes every JPEG every
time it is read. For a corpus that fits in memory (the 14,639 pairs the quickstart keeps are
180 MB as 64 px uint8) that is wasted work repeated each epoch, done on the training thread or on
a core the model could use. :func:`decode_once` runs the same pipeline (caption cleaning, ALIGN's
filter, decoding, the same skip/filter counts) a single time, keeps each kept image as uint8
pixels at the processor's resize size, and :class:`DecodedPairs` applies the random parts of
ALIGN's train transform (crop, flip with caption word swaps) per sample, per epoch.
"""

from __future__ import annotations

import logging
import random
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from tqdm.auto import tqdm

from align_hf.data.pipeline import DataStats, ImageTextPairs
from align_hf.data.transforms import _PIL_TO_TORCHVISION, ImageTransform, swap_words

logger = logging.getLogger(__name__)


class _ToUint8:
    """PIL RGB image -> ``(3, H, W)`` uint8 at ``size``, resized as :class:`ImageTransform` resizes."""

    def __init__(self, transform: ImageTransform):
        self.size = transform.size  # read by ImageTextPairs for JPEG draft decoding
        self.resample = transform.resample
        self.backend = transform.backend

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if image.mode != "RGB":
            image = image.convert("RGB")
        height, width = self.size
        if self.backend == "pil":
            if image.size != (width, height):
                image = image.resize((width, height), resample=self.resample)
            return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)
        if image.size != (width, height):
            interpolation = TF.InterpolationMode(_PIL_TO_TORCHVISION.get(self.resample, "bicubic"))
            pixels = TF.resize(pixels, [height, width], interpolation=interpolation, antialias=True)
        return pixels.contiguous()


class DecodedPairs(torch.utils.data.Dataset):
    """A map-style dataset of pre-decoded pairs: ``{"pixel_values": (3, crop_h, crop_w) float, "text": str}``
    (the caption's tokens instead of ``text`` once :meth:`pretokenize` has run).

    Args:
        pixels: ``(N, 3, H, W)`` uint8, resized to the transform's ``size`` (not yet cropped).
        texts: the N captions.
        transform: the :class:`ImageTransform` whose random part (crop, flip) and rescaling are
            applied per sample; ``transform.train`` selects random crop + flip or the centre crop.
        stats: the counts of the decoding pass (read, kept, skipped, filtered).
        flip_swap: caption words swapped when the image is flipped (e.g. left/right).
        seed: seeds the augmentation; sample ``i`` of epoch ``e`` always gets the same crop and flip,
            whatever the order or the process it is read in.
    """

    def __init__(
        self,
        pixels: torch.Tensor,
        texts: list[str],
        transform: ImageTransform,
        stats: DataStats | None = None,
        flip_swap: Mapping[str, str] | None = None,
        seed: int = 0,
    ):
        if pixels.dtype != torch.uint8 or pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"pixels must be (N, 3, H, W) uint8, got {tuple(pixels.shape)} {pixels.dtype}")
        if len(texts) != pixels.shape[0]:
            raise ValueError(f"{pixels.shape[0]} images but {len(texts)} captions")
        self.pixels = pixels
        self.texts = list(texts)
        self.transform = transform
        self.stats = stats or DataStats(total=len(texts), kept=len(texts))
        self.flip_swap = dict(flip_swap) if flip_swap else None
        self.seed = seed
        self.epoch = 0
        self._tokens: list[dict[str, list[int]]] | None = None
        self._flipped_tokens: dict[int, dict[str, list[int]]] = {}

    def pretokenize(self, tokenize: Callable[[Mapping[str, Any]], Mapping[str, Any]]) -> None:
        """Tokenise every caption, and every caption that a flip changes, once.

        ``tokenize`` is :meth:`~align_hf.data.transforms.ImageTextCollator.tokenize` (``{"text": [...]}``
        -> unpadded ``input_ids`` etc.). Samples then carry their tokens instead of ``text``, and the
        collator only pads them: the same batches as tokenising the captions at every step, without
        re-tokenising the same few thousand captions each epoch (a third of the quickstart's data time).
        """

        def rows(texts: list[str]) -> list[dict[str, list[int]]]:
            encoded = tokenize({"text": texts})
            return [{key: list(values[i]) for key, values in encoded.items()} for i in range(len(texts))]

        self._tokens = rows(self.texts)
        self._flipped_tokens = {}
        if self.flip_swap:
            swapped = {i: swap_words(text, self.flip_swap) for i, text in enumerate(self.texts)}
            changed = [i for i, text in swapped.items() if text != self.texts[i]]
            if changed:
                self._flipped_tokens = dict(zip(changed, rows([swapped[i] for i in changed])))

    def __len__(self) -> int:
        return len(self.texts)

    def set_epoch(self, epoch: int) -> None:
        """New crops and flips for a new epoch (the Trainer calls this through its sampler hook)."""
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict[str, Any]:
        transform = self.transform
        pixels = self.pixels[index]
        text = self.texts[index]
        flipped = False
        height, width = pixels.shape[-2:]
        rng = random.Random((self.seed * 1_000_003 + self.epoch) * 10_000_019 + index) if transform.train else None
        if transform.crop_size is not None and transform.crop_size != (height, width):
            crop_h, crop_w = transform.crop_size
            if rng is not None:
                top, left = rng.randint(0, height - crop_h), rng.randint(0, width - crop_w)
            else:
                top, left = (height - crop_h) // 2, (width - crop_w) // 2
            pixels = pixels[:, top : top + crop_h, left : left + crop_w]
        if rng is not None and transform.hflip_prob > 0 and rng.random() < transform.hflip_prob:
            pixels = pixels.flip(-1)
            flipped = True
            if self.flip_swap and self._tokens is None:
                text = swap_words(text, self.flip_swap)
        values = pixels.to(torch.float32).mul_(transform.rescale_factor).add_(transform.offset)
        if transform.mean is not None:
            values.sub_(transform.mean).div_(transform.std)
        if self._tokens is not None:
            tokens = self._flipped_tokens.get(index) if flipped else None
            return {"pixel_values": values, **(tokens or self._tokens[index])}
        return {"pixel_values": values, "text": text}


def decode_once(
    pairs: Iterable[Mapping[str, Any]] | Any,
    transform: ImageTransform,
    *,
    filter: Any = None,  # noqa: A002 - the natural name
    flip_swap: Mapping[str, str] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> DecodedPairs:
    """Read ``pairs`` (a :func:`~align_hf.data.sources.load_pairs` stream) once through the streaming
    pipeline without augmentation and keep what survives as a :class:`DecodedPairs`.

    Captions are cleaned and filtered, images decoded and checked exactly as
    :class:`~align_hf.data.pipeline.ImageTextPairs` does (bad records are skipped and counted in
    ``stats``, never raised); a record with several captions keeps the one drawn in this pass.
    """
    stream = ImageTextPairs(pairs, _ToUint8(transform), filter=filter, shuffle_buffer=0, seed=seed, rank=0, world_size=1)
    images: list[torch.Tensor] = []
    texts: list[str] = []
    for sample in tqdm(stream, desc="decoding training pairs", unit=" pairs", disable=not progress):
        images.append(sample["pixel_values"])
        texts.append(sample["text"])
    if not images:
        raise ValueError(f"no usable training pairs: {stream.stats.summary()}")
    logger.info("decoded once: %s", stream.stats.summary())
    return DecodedPairs(torch.stack(images), texts, transform, stats=stream.stats, flip_swap=flip_swap, seed=seed)


__all__ = ["DecodedPairs", "decode_once"]
