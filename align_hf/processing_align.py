"""Image and text preprocessing for ALIGN.

Images: any PIL mode, numpy or torch image is turned into 8-bit RGB, then resized to 346x346,
centre-cropped to 289x289 and scaled to ``x / 127.5 - 1`` (no mean/std), as align-base.
Texts: BERT uncased WordPiece, padded to 64 tokens.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer
from transformers.image_utils import PILImageResampling
from transformers.models.efficientnet.image_processing_efficientnet import EfficientNetImageProcessor
from transformers.processing_utils import ProcessorMixin

ALIGN_RESIZE = 346
ALIGN_CROP = 289
ALIGN_MAX_LENGTH = 64
# Decompression-bomb guard for arrays handed to us directly (PIL has its own for files).
MAX_IMAGE_PIXELS = 178_956_970


def _composite_on_white(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _pil_to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # PIL's own convert clips wide integers at 255; rescale the real range instead.
        array = np.asarray(image).astype(np.float64)
        peak = 65535.0 if mode.startswith("I;16") else max(float(array.max()), 1.0)
        if mode == "F" and array.max() <= 1.0:
            peak = 1.0
        gray = np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        return _composite_on_white(image)
    return image.convert("RGB")


def _array_to_rgb(array: np.ndarray) -> Image.Image:
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise ValueError(f"An image array must be (H, W), (H, W, C) or (C, H, W); got shape {array.shape}")
    if array.shape[-1] not in (1, 3, 4) and array.shape[0] in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.shape[-1] not in (1, 3, 4):
        raise ValueError(f"Cannot tell the channel axis of an image array of shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"Empty image of shape {array.shape}")
    if array.shape[0] * array.shape[1] > MAX_IMAGE_PIXELS:
        raise ValueError(f"Image of {array.shape[0]}x{array.shape[1]} pixels exceeds the limit of {MAX_IMAGE_PIXELS}")
    if array.dtype == np.uint8:
        scaled = array
    elif array.dtype == np.uint16:
        scaled = (array.astype(np.float64) / 257.0 + 0.5).astype(np.uint8)
    elif array.dtype == bool:
        scaled = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer):
        values = array.astype(np.float64)
        if not np.isfinite(values).all():
            raise ValueError("Image array contains NaN or infinite values")
        # Floats in [0, 1] are fractions; anything else is taken as 0..255.
        factor = 255.0 if np.issubdtype(array.dtype, np.floating) and values.max() <= 1.0 and values.min() >= 0 else 1.0
        scaled = np.clip(values * factor + 0.5, 0, 255).astype(np.uint8)
    else:
        raise TypeError(f"Unsupported image array dtype {array.dtype}")
    channels = scaled.shape[-1]
    if channels == 1:
        return Image.fromarray(scaled[..., 0], mode="L").convert("RGB")
    if channels == 4:
        return _composite_on_white(Image.fromarray(scaled, mode="RGBA"))
    return Image.fromarray(np.ascontiguousarray(scaled), mode="RGB")


def to_rgb(image: Any) -> Image.Image:
    """Convert a PIL image of any mode, a numpy array or a torch tensor to an 8-bit RGB PIL image.

    Transparent pixels are composited on white; 16-bit and float images are rescaled, not clipped.
    """
    if isinstance(image, Image.Image):
        if image.width == 0 or image.height == 0:
            raise ValueError("Empty image (zero width or height)")
        return _pil_to_rgb(image)
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image)
    raise TypeError(
        f"Unsupported image type {type(image).__name__}: pass PIL images, numpy arrays (H, W[, C]) or torch tensors"
    )


def _as_image_list(images: Any) -> list:
    if isinstance(images, (Image.Image,)):
        return [images]
    if isinstance(images, (np.ndarray, torch.Tensor)):
        return list(images) if images.ndim == 4 else [images]
    if isinstance(images, (list, tuple)):
        return list(images)
    return [images]


class AlignImageProcessor(EfficientNetImageProcessor):
    """EfficientNet-style image processor with ALIGN's defaults and tolerant input handling.

    Defaults: bicubic resize to 346x346, centre crop 289x289, ``x / 127.5 - 1``, no mean/std.
    Returns ``pixel_values`` of shape ``(B, 3, crop_height, crop_width)``.
    """

    model_input_names = ["pixel_values"]

    def __init__(self, **kwargs):
        defaults = dict(
            do_resize=True,
            size={"height": ALIGN_RESIZE, "width": ALIGN_RESIZE},
            resample=PILImageResampling.BICUBIC,
            do_center_crop=True,
            crop_size={"height": ALIGN_CROP, "width": ALIGN_CROP},
            do_rescale=True,
            rescale_factor=1 / 127.5,
            rescale_offset=True,
            do_normalize=False,
            include_top=False,
        )
        defaults.update(kwargs)
        defaults.pop("image_processor_type", None)
        super().__init__(**defaults)

    def preprocess(self, images, *args, **kwargs):
        converted = [to_rgb(image) for image in _as_image_list(images)]
        if not converted:
            raise ValueError("No images given")
        return super().preprocess(converted, *args, **kwargs)


class AlignProcessor(ProcessorMixin):
    """Wraps an :class:`AlignImageProcessor` and a BERT tokenizer into one callable.

    ``processor(text=..., images=..., return_tensors="pt")`` returns ``input_ids``,
    ``attention_mask``, ``token_type_ids`` (texts padded to 64 tokens by default) and
    ``pixel_values``. Loads align_hf folders and transformers-format ALIGN folders alike.
    """

    attributes = ["image_processor", "tokenizer"]
    text_kwargs = {"padding": "max_length", "truncation": True}

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        if image_processor is None:
            image_processor = AlignImageProcessor()
        if tokenizer is None:
            raise ValueError("AlignProcessor needs a tokenizer (e.g. BertTokenizer for bert-base-uncased)")
        super().__init__(image_processor, tokenizer, **kwargs)

    def __call__(self, text=None, images=None, return_tensors: str | None = "pt", **kwargs):
        if text is None and images is None:
            raise ValueError("Give text, images or both")
        encoding: dict[str, Any] = {}
        if text is not None:
            texts = [text] if isinstance(text, str) else list(text)
            if not texts:
                raise ValueError("Empty list of texts")
            # ALIGN's 64 tokens, or less when the tokenizer was made for shorter texts.
            max_length = min(ALIGN_MAX_LENGTH, self.tokenizer.model_max_length or ALIGN_MAX_LENGTH)
            text_options = {"max_length": max_length, **self.text_kwargs}
            text_options.update({k: v for k, v in kwargs.items() if k in _TOKENIZER_OPTIONS})
            encoding.update(self.tokenizer(texts, return_tensors=return_tensors, **text_options))
        if images is not None:
            image_options = {k: v for k, v in kwargs.items() if k not in _TOKENIZER_OPTIONS}
            encoding.update(self.image_processor(images, return_tensors=return_tensors, **image_options))
        from transformers import BatchEncoding

        return BatchEncoding(encoding, tensor_type=return_tensors)

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        return list(dict.fromkeys(self.tokenizer.model_input_names + self.image_processor.model_input_names))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> "AlignProcessor":
        """Load from an align_hf or transformers-format ALIGN folder or Hub repo."""
        hub_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in _HUB_OPTIONS}
        image_processor = AlignImageProcessor.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
        tokenizer = AutoTokenizer.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
        return cls(image_processor=image_processor, tokenizer=tokenizer, **kwargs)


_TOKENIZER_OPTIONS = {"padding", "max_length", "truncation", "return_attention_mask", "return_token_type_ids", "pad_to_multiple_of"}
_HUB_OPTIONS = {"cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "trust_remote_code"}


__all__ = ["AlignImageProcessor", "AlignProcessor", "to_rgb"]
