"""Image transforms (ALIGN train augmentation / eval centre crop) and the batch collator.

Sizes come from the processor (``processor.image_processor.size`` / ``crop_size``) so training
sees exactly what inference sees: resize to ``size`` (both sides, as the paper's 346x346), then a
random ``crop_size`` crop plus horizontal flip for training, or the centre crop for evaluation,
then ``x * rescale_factor + offset`` (ALIGN: x / 127.5 - 1). Work is done on PIL images and one
numpy conversion, which is cheaper per image than tensor-based transform chains.
"""

from __future__ import annotations

import random
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

SizeLike = int | Sequence[int] | Mapping[str, int]

# The statistics key a pipeline sample may carry (see pipeline.ImageTextPairs).
STATS_KEY = "_stats"


def as_hw(size: SizeLike) -> tuple[int, int]:
    """``289`` / ``(h, w)`` / ``{"height": h, "width": w}`` / ``{"shortest_edge": s}`` -> ``(h, w)``."""
    if isinstance(size, Mapping):
        if "height" in size and "width" in size:
            return int(size["height"]), int(size["width"])
        if "shortest_edge" in size:
            return int(size["shortest_edge"]), int(size["shortest_edge"])
        raise ValueError(f"size dict needs height/width or shortest_edge, got {dict(size)}")
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


class ImageTransform:
    """PIL RGB image -> float tensor ``(3, crop_h, crop_w)``.

    Args:
        size: resize target (both sides are resized to it, aspect ratio not kept, as ALIGN does).
        crop_size: crop taken from the resized image; ``None`` means no crop.
        train: random crop + horizontal flip when ``True``, centre crop otherwise.
        resample: PIL resampling filter.
        rescale_factor / offset: pixel values become ``x * rescale_factor + offset``
            (ALIGN: 1/127.5 and -1, i.e. [-1, 1]).
        mean / std: optional per-channel normalisation applied after rescaling.
        hflip_prob: probability of the horizontal flip in training.
        seed: seeds the augmentation RNG (``None``: nondeterministic); workers offset it by their id.
    """

    def __init__(
        self,
        size: SizeLike,
        crop_size: SizeLike | None = None,
        train: bool = False,
        resample: int = Image.BICUBIC,
        rescale_factor: float = 1 / 127.5,
        offset: float = -1.0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        hflip_prob: float = 0.5,
        seed: int | None = None,
    ):
        self.size = as_hw(size)
        self.crop_size = as_hw(crop_size) if crop_size is not None else None
        if self.crop_size is not None and (self.crop_size[0] > self.size[0] or self.crop_size[1] > self.size[1]):
            raise ValueError(f"crop_size {self.crop_size} is larger than size {self.size}")
        self.train = train
        self.resample = resample
        self.rescale_factor = rescale_factor
        self.offset = offset
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.hflip_prob = hflip_prob
        self.seed = seed
        self.rng = random.Random(seed)

    @classmethod
    def from_image_processor(cls, image_processor: Any, train: bool = False, **overrides: Any) -> "ImageTransform":
        """Build from a transformers image processor (``size``, ``crop_size``, ``resample``, rescale...)."""
        get = lambda name, default=None: getattr(image_processor, name, default)  # noqa: E731
        size = get("size")
        crop = get("crop_size") if get("do_center_crop", True) else None
        resample = get("resample", Image.BICUBIC)
        kwargs: dict[str, Any] = dict(size=size, crop_size=crop, train=train, resample=int(resample))
        if get("do_rescale", True):
            factor = float(get("rescale_factor", 1 / 255))
            kwargs["rescale_factor"] = factor
            kwargs["offset"] = -1.0 if get("rescale_offset", False) else 0.0
        else:
            kwargs["rescale_factor"], kwargs["offset"] = 1.0, 0.0
        if get("do_normalize", False):
            kwargs["mean"], kwargs["std"] = get("image_mean"), get("image_std")
        kwargs.update(overrides)
        return cls(**kwargs)

    @property
    def output_size(self) -> tuple[int, int]:
        return self.crop_size or self.size

    def reseed(self, offset: int) -> None:
        """Give each dataloader worker its own augmentation stream (same seed would flip alike)."""
        self.rng = random.Random(None if self.seed is None else self.seed + offset)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        height, width = self.size
        if image.size != (width, height):
            image = image.resize((width, height), resample=self.resample)
        if self.crop_size is not None and self.crop_size != self.size:
            crop_h, crop_w = self.crop_size
            if self.train:
                top = self.rng.randint(0, height - crop_h)
                left = self.rng.randint(0, width - crop_w)
            else:
                # Same rounding as transformers' center_crop.
                top = int(round((height - crop_h) / 2.0))
                left = int(round((width - crop_w) / 2.0))
            image = image.crop((left, top, left + crop_w, top + crop_h))
        if self.train and self.hflip_prob > 0 and self.rng.random() < self.hflip_prob:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        array = np.asarray(image.convert("RGB") if image.mode != "RGB" else image, dtype=np.uint8)
        pixels = torch.from_numpy(array.copy()).permute(2, 0, 1).to(torch.float32)
        pixels.mul_(self.rescale_factor).add_(self.offset)
        if self.mean is not None:
            pixels.sub_(self.mean).div_(self.std)
        return pixels


class ImageTextCollator:
    """Batch samples ``{"pixel_values": (3,H,W), "text": str}`` into model inputs.

    Returns ``pixel_values`` (B,3,H,W) float, ``input_ids`` and ``attention_mask`` (B,L) long,
    tokenised with truncation to ``max_length`` (ALIGN: 64). ``padding="longest"`` pads to the
    longest caption in the batch (cheaper for short alt-texts); ``"max_length"`` always pads to
    ``max_length``, as transformers' ALIGN processor does.

    Samples without ``pixel_values`` (statistics-only records) are left out of the tensors;
    with ``keep_stats=True`` their statistics are summed under ``"_stats"``.
    """

    def __init__(
        self,
        tokenizer: Any,
        max_length: int = 64,
        padding: str = "longest",
        return_token_type_ids: bool = False,
        keep_stats: bool = False,
    ):
        if padding not in ("longest", "max_length"):
            raise ValueError(f"padding must be 'longest' or 'max_length', got {padding!r}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.padding = padding
        self.return_token_type_ids = return_token_type_ids
        self.keep_stats = keep_stats

    def __call__(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        real = [s for s in samples if s.get("pixel_values") is not None]
        batch: dict[str, Any] = {}
        if real:
            batch["pixel_values"] = torch.stack([s["pixel_values"] for s in real])
            encoded = self.tokenizer(
                [s["text"] for s in real],
                padding=self.padding,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
                return_token_type_ids=self.return_token_type_ids,
            )
            batch["input_ids"] = encoded["input_ids"]
            batch["attention_mask"] = encoded["attention_mask"]
            if self.return_token_type_ids and "token_type_ids" in encoded:
                batch["token_type_ids"] = encoded["token_type_ids"]
        if self.keep_stats:
            total: dict[str, int] = {}
            for sample in samples:
                for name, value in (sample.get(STATS_KEY) or {}).items():
                    total[name] = total.get(name, 0) + value
            batch[STATS_KEY] = total
        return batch
