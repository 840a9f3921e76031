"""Image and text preprocessing for ALIGN.

Images: any PIL mode, numpy or torch image is turned into 8-bit RGB, then resized to 346x346,
centre-cropped to 289x289 and scaled to ``x / 127.5 - 1`` (no mean/std), as align-base.
Texts: BERT uncased WordPiece, padded to 64 tokens.

This module ships as remote code: a saved processor folder carries it and :mod:`image_io` (its only
relative import), so ``AutoProcessor``/``AutoImageProcessor``/``pipeline(..., trust_remote_code=True)``
load the folder where align_hf is not installed. Keep its imports relative and its dependencies to
that one module.
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

from .image_io import to_rgb

ALIGN_RESIZE = 346
ALIGN_CROP = 289
ALIGN_MAX_LENGTH = 64


def _as_image_list(images: Any) -> list:
    if isinstance(images, (Image.Image,)):
        return [images]
    if isinstance(images, (np.ndarray, torch.Tensor)):
        return list(images) if images.ndim == 4 else [images]
    if isinstance(images, (list, tuple)):
        return list(images)
    return [images]


def resize_for(image_size: int) -> int:
    """The resize side before a centre crop of ``image_size``: ALIGN's 346/289 ratio (346 for 289)."""
    return int(round(image_size * ALIGN_RESIZE / ALIGN_CROP))


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

    def to_dict(self) -> dict[str, Any]:
        """The saved settings, without the ``AutoProcessor`` entry of ``auto_map``.

        ``ProcessorMixin.save_pretrained`` writes that entry into each part's config (and it is read
        back with them). In an image processor saved alone, next to no tokenizer, it would send
        ``AutoProcessor`` to an :class:`AlignProcessor` that cannot load there, instead of to this
        image processor; a processor's own ``AutoProcessor`` entry sits at the top of
        ``processor_config.json`` and stays.
        """
        output = super().to_dict()
        auto_map = {key: value for key, value in (output.pop("auto_map", None) or {}).items() if key != "AutoProcessor"}
        if auto_map:
            output["auto_map"] = auto_map
        return output

    @classmethod
    def for_image_size(cls, image_size: int, crop: bool = True, resize: int | None = None) -> "AlignImageProcessor":
        """ALIGN's preprocessing for a model of ``image_size`` px.

        ``crop=True``: resize to :func:`resize_for` ``(image_size)`` (or ``resize``), centre crop
        ``image_size``. ``crop=False``: resize straight to ``image_size``, so the crop keeps the whole
        image (for corpora rendered at the model's size).
        """
        side = resize or (resize_for(image_size) if crop else image_size)
        return cls(size={"height": side, "width": side}, crop_size={"height": image_size, "width": image_size})


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
        """Load from an align_hf or transformers-format ALIGN folder or Hub repo.

        As ``ProcessorMixin.from_pretrained``, every keyword argument but ``chat_template`` goes to
        both sub-loaders: Hub options (``cache_dir``, ``revision``, ``token``, ...), overrides of
        image-processor settings, and the private flags transformers adds on its way here
        (``_from_auto`` from ``AutoProcessor``, ``_from_pipeline`` from ``pipeline``), which both
        loaders accept. The image processor is always an :class:`AlignImageProcessor`, also where a
        transformers-format folder names ``EfficientNetImageProcessor``.
        """
        own = {key: kwargs.pop(key) for key in ("chat_template",) if key in kwargs}
        image_processor = AlignImageProcessor.from_pretrained(pretrained_model_name_or_path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(pretrained_model_name_or_path, **kwargs)
        return cls(image_processor=image_processor, tokenizer=tokenizer, **own)


_TOKENIZER_OPTIONS = {"padding", "max_length", "truncation", "return_attention_mask", "return_token_type_ids", "pad_to_multiple_of"}


# Marked for remote code here rather than in registration.py: this module also runs as remote code
# without align_hf, where transformers marks only the class it loaded (AutoProcessor marks the
# processor, not its image processor); marking both on import keeps both auto_map entries when a
# processor loaded that way is saved again.
AlignProcessor.register_for_auto_class("AutoProcessor")
AlignImageProcessor.register_for_auto_class("AutoImageProcessor")


__all__ = ["AlignImageProcessor", "AlignProcessor", "resize_for", "to_rgb"]
