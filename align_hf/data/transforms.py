"""Image transforms (ALIGN train augmentation / eval centre crop) and the batch collator.

Sizes come from the processor (``processor.image_processor.size`` / ``crop_size``) so training
sees exactly what inference sees: resize to ``size`` (both sides, as the paper's 346x346), then a
random ``crop_size`` crop plus horizontal flip for training, or the centre crop for evaluation,
then ``x * rescale_factor + offset`` (ALIGN: x / 127.5 - 1). Resizing uses torchvision's uint8
kernels by default (as transformers' image processors do, so pixels match them exactly), or PIL.
"""

from __future__ import annotations

import random
import re
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

SizeLike = int | Sequence[int] | Mapping[str, int]

# The statistics key a pipeline sample may carry (see pipeline.ImageTextPairs).
STATS_KEY = "_stats"
# Tokenizer outputs the model's forward takes, in the order the collator returns them.
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_PIL_TO_TORCHVISION = {Image.NEAREST: "nearest", Image.BILINEAR: "bilinear", Image.BICUBIC: "bicubic", Image.LANCZOS: "bicubic", Image.BOX: "bilinear"}
# Word swaps that keep a caption true after a horizontal flip (captions that mention sides).
LEFT_RIGHT_SWAP = {"left": "right", "right": "left"}


def swap_words(text: str, swaps: Mapping[str, str]) -> str:
    """Replace whole words of ``text`` by ``swaps`` simultaneously (case-insensitive)."""
    if not swaps:
        return text
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, swaps)) + r")\b", re.IGNORECASE)
    lowered = {k.lower(): v for k, v in swaps.items()}
    return pattern.sub(lambda m: lowered[m.group(0).lower()], text)


def as_hw(size: SizeLike) -> tuple[int, int]:
    """``289`` / ``(h, w)`` / ``{"height": h, "width": w}`` / ``{"shortest_edge": s}`` / ``SizeDict`` -> ``(h, w)``."""
    if isinstance(size, Mapping):
        if "height" in size and "width" in size:
            return int(size["height"]), int(size["width"])
        if "shortest_edge" in size:
            return int(size["shortest_edge"]), int(size["shortest_edge"])
        raise ValueError(f"size dict needs height/width or shortest_edge, got {dict(size)}")
    if isinstance(size, int):
        return size, size
    if getattr(size, "height", None) is not None and getattr(size, "width", None) is not None:
        return int(size.height), int(size.width)  # transformers' SizeDict
    if getattr(size, "shortest_edge", None) is not None:
        return int(size.shortest_edge), int(size.shortest_edge)
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
        backend: ``"torchvision"`` resizes with torchvision's antialiased uint8 tensor kernels,
            as transformers' default (torchvision-backed) image processors do, so results match
            them exactly; it is also several times faster than PIL's bicubic resize on photos.
            ``"pil"`` resizes with PIL (matches PIL-based processors). The two differ by
            rounding only (a level or two on a few pixels).
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
        backend: str = "torchvision",
    ):
        if backend not in ("pil", "torchvision"):
            raise ValueError(f"backend must be 'pil' or 'torchvision', got {backend!r}")
        self.backend = backend
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
        self.last_flipped = False  # whether the latest call flipped (captions may need swapping)

    @classmethod
    def from_image_processor(cls, image_processor: Any, train: bool = False, **overrides: Any) -> "ImageTransform":
        """Build from a transformers image processor (``size``, ``crop_size``, ``resample``, rescale...)."""
        get = lambda name, default=None: getattr(image_processor, name, default)  # noqa: E731
        size = get("size")
        crop = get("crop_size") if get("do_center_crop", True) else None
        resample = get("resample", Image.BICUBIC)
        # Slow (PIL-based) transformers processors have no torchvision backend in their MRO.
        backend = "torchvision" if any("Torchvision" in k.__name__ for k in type(image_processor).__mro__) else "pil"
        kwargs: dict[str, Any] = dict(size=size, crop_size=crop, train=train, resample=int(resample), backend=backend)
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

    def _crop_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        crop_h, crop_w = self.crop_size
        if self.train:
            top = self.rng.randint(0, height - crop_h)
            left = self.rng.randint(0, width - crop_w)
        else:
            # Floor, as transformers' center_crop does.
            top, left = (height - crop_h) // 2, (width - crop_w) // 2
        return top, left, crop_h, crop_w

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """``image`` (RGB PIL) -> ``(3, crop_h, crop_w)`` float32."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        height, width = self.size
        crop = self.crop_size is not None and self.crop_size != self.size
        if self.backend == "pil":
            if image.size != (width, height):
                image = image.resize((width, height), resample=self.resample)
            if crop:
                top, left, crop_h, crop_w = self._crop_box(height, width)
                image = image.crop((left, top, left + crop_w, top + crop_h))
            pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)
        else:
            pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)
            if image.size != (width, height):
                interpolation = TF.InterpolationMode(_PIL_TO_TORCHVISION.get(self.resample, "bicubic"))
                pixels = TF.resize(pixels, [height, width], interpolation=interpolation, antialias=True)
            if crop:
                top, left, crop_h, crop_w = self._crop_box(height, width)
                pixels = pixels[:, top : top + crop_h, left : left + crop_w]
        self.last_flipped = self.train and self.hflip_prob > 0 and self.rng.random() < self.hflip_prob
        if self.last_flipped:
            pixels = pixels.flip(-1)
        pixels = pixels.to(torch.float32)
        pixels.mul_(self.rescale_factor).add_(self.offset)
        if self.mean is not None:
            pixels.sub_(self.mean).div_(self.std)
        return pixels


class ImageTextCollator:
    """Batch image-text samples into model inputs.

    A sample holds ``pixel_values`` (a ``(3, H, W)`` tensor, an array/nested list of that shape,
    or a PIL image when ``image_transform`` is given) and either the caption ``text`` or its
    tokens ``input_ids`` (plus optional ``attention_mask``/``token_type_ids``, e.g. made by
    :meth:`tokenize` or the processor in ``datasets.map``). Returns ``pixel_values`` (B,3,H,W)
    float, ``input_ids`` and ``attention_mask`` (B,L) long; captions are tokenised with
    truncation to ``max_length`` (ALIGN: 64). ``padding="longest"`` pads to the longest caption
    in the batch (cheaper for short alt-texts); ``"max_length"`` always pads to ``max_length``,
    as transformers' ALIGN processor does.

    ``return_loss=True`` adds ``"return_loss": True`` to every batch, the transformers convention
    for contrastive models (CLIP's fine-tuning example does the same): the stock
    ``transformers.Trainer`` calls ``model(**batch)`` and needs the model to return its loss.

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
        return_loss: bool = False,
        image_transform: ImageTransform | None = None,
    ):
        if padding not in ("longest", "max_length"):
            raise ValueError(f"padding must be 'longest' or 'max_length', got {padding!r}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.padding = padding
        self.return_token_type_ids = return_token_type_ids
        self.keep_stats = keep_stats
        self.return_loss = return_loss
        self.image_transform = image_transform
        self._worker_id: int | None = None

    def tokenize(self, examples: Mapping[str, Any], text_column: str = "text") -> dict[str, list]:
        """Tokens of ``examples[text_column]`` (one caption or a list), truncated as the collator
        truncates and left unpadded: a ``datasets.map`` function (``batched=True`` or not) that
        gives batches identical to collating the captions."""
        encoded = self.tokenizer(
            examples[text_column],
            truncation=True,
            max_length=self.max_length,
            return_token_type_ids=self.return_token_type_ids,
        )
        return {k: encoded[k] for k in TEXT_INPUTS if k in encoded}

    def _pixels(self, value: Any) -> torch.Tensor:
        """One sample's pixels as a float ``(3, H, W)`` tensor."""
        if isinstance(value, torch.Tensor):
            return value
        if isinstance(value, Image.Image):
            if self.image_transform is None:
                raise ValueError("pixel_values holds PIL images: give the collator image_transform=ImageTransform(...)")
            info = torch.utils.data.get_worker_info()
            if info is not None and self._worker_id != info.id:
                # Forked workers inherit the same RNG state and would augment alike.
                self.image_transform.reseed(info.seed % 2**31)
                self._worker_id = info.id
            return self.image_transform(value)
        return torch.as_tensor(np.asarray(value, dtype=np.float32))

    def _encode(self, real: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if all(s.get("text") is not None for s in real):
            encoded = self.tokenizer(
                [s["text"] for s in real],
                padding=self.padding,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
                return_token_type_ids=self.return_token_type_ids,
            )
            keys = TEXT_INPUTS if self.return_token_type_ids else TEXT_INPUTS[:2]
            return {k: encoded[k] for k in keys if k in encoded}
        if all(s.get("input_ids") is not None for s in real):
            keys = [k for k in TEXT_INPUTS if all(s.get(k) is not None for s in real)]
            if all(isinstance(s["input_ids"], list) for s in real) and getattr(self.tokenizer, "padding_side", "right") == "right":
                return self._pad_lists(real, keys)
            features = [{k: s[k] for k in keys} for s in real]
            # Converted to lists first: tokenizer.pad takes lists or 1-D tensors, not Arrow's numpy rows.
            features = [{k: (v.tolist() if hasattr(v, "tolist") else list(v)) for k, v in f.items()} for f in features]
            encoded = self.tokenizer.pad(features, padding=self.padding, max_length=self.max_length, return_tensors="pt")
            return {k: encoded[k] for k in TEXT_INPUTS if k in encoded}
        raise ValueError(
            "each sample needs its caption under 'text' or its tokens under 'input_ids'. The stock "
            "transformers.Trainer drops 'text' (not an argument of the model's forward) unless "
            "remove_unused_columns=False; tokenise in the dataset instead, e.g. "
            "dataset.map(collator.tokenize, batched=True, remove_columns=['text'])"
        )

    def _pad_lists(self, real: Sequence[Mapping[str, Any]], keys: list[str]) -> dict[str, torch.Tensor]:
        """Right-pad token lists as ``tokenizer.pad`` does, without its per-sample Python overhead."""
        ids = [s["input_ids"] for s in real]
        length = max(map(len, ids)) if self.padding == "longest" else max(self.max_length, *map(len, ids))
        pad_values = {"input_ids": self.tokenizer.pad_token_id or 0, "attention_mask": 0,
                      "token_type_ids": getattr(self.tokenizer, "pad_token_type_id", 0)}
        out = {}
        for key in keys:
            rows = [s[key] for s in real]
            out[key] = torch.tensor([row + [pad_values[key]] * (length - len(row)) for row in rows], dtype=torch.long)
        if "attention_mask" not in out:
            out["attention_mask"] = torch.tensor([[1] * len(row) + [0] * (length - len(row)) for row in ids], dtype=torch.long)
        return {k: out[k] for k in TEXT_INPUTS if k in out}

    def __call__(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        real = [s for s in samples if s.get("pixel_values") is not None]
        batch: dict[str, Any] = {}
        if real:
            batch["pixel_values"] = torch.stack([self._pixels(s["pixel_values"]) for s in real])
            batch.update(self._encode(real))
            if self.return_loss:
                batch["return_loss"] = True
        if self.keep_stats:
            total: dict[str, int] = {}
            for sample in samples:
                for name, value in (sample.get(STATS_KEY) or {}).items():
                    total[name] = total.get(name, 0) + value
            batch[STATS_KEY] = total
        return batch
