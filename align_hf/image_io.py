"""The one way align_hf opens images: training, evaluation, search, the processor and the demo.

Every path goes through :func:`to_rgb` (EXIF orientation, then any PIL mode, numpy array or torch
tensor to 8-bit RGB) and, for encoded data, :func:`open_image` (header checks before any pixel is
decoded, then :func:`to_rgb`). So a phone photo stored sideways is seen upright, and a
16-bit or transparent image gives the same pixels, wherever it enters.

Conversion rules:

* transparency (RGBA, LA, PA, P with a transparent colour, ...) is composited on white;
* ``I;16*`` is scaled by 65535; ``I`` and ``F`` keep values already in 0..255 and are scaled by
  their maximum when brighter (PIL's own conversion clips them at 255); ``F`` images and float
  arrays with every value in [0, 1] are fractions of full white;
* every other mode (``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ...) uses PIL's conversion.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

# Decompression-bomb guard for images that arrive as pixels (PIL's own guard covers files).
MAX_IMAGE_PIXELS = 178_956_970
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_WIDE_GREY = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_ORIENTATION = 0x0112  # the EXIF tag


class ImageTooLargeError(ValueError):
    """The image holds more pixels than the caller allows (checked from the header)."""

    def __init__(self, width: int, height: int, max_pixels: int):
        self.width, self.height, self.max_pixels = width, height, max_pixels
        super().__init__(f"image of {width}x{height} pixels exceeds the limit of {max_pixels}")


def _composite_on_white(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _grey_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Wide greyscale (16-bit, 32-bit int, float) to 0..255 without clipping the real range."""
    values = values.astype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError("image contains NaN or infinite values")
    top = float(values.max()) if values.size else 0.0
    bottom = float(values.min()) if values.size else 0.0
    if mode.startswith("I;16"):
        scale = 65535.0 / 255.0
    elif mode == "F" and top <= 1.0 and bottom >= 0.0:
        scale = 1.0 / 255.0
    else:
        scale = top / 255.0 if top > 255.0 else 1.0
    return np.clip(values / scale + 0.5, 0, 255).astype(np.uint8)


def _upright(image: Image.Image) -> Image.Image:
    """``image`` turned by its EXIF orientation tag (most phone photos are stored sideways)."""
    try:
        if image.getexif().get(_ORIENTATION, 1) in (None, 1):
            return image
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - a broken EXIF block should not cost the image
        return image


def _pil_to_rgb(image: Image.Image) -> Image.Image:
    image = _upright(image)
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _WIDE_GREY:
        grey = _grey_to_uint8(np.asarray(image), mode)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info):
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
        raise ImageTooLargeError(array.shape[1], array.shape[0], MAX_IMAGE_PIXELS)
    if array.dtype == np.uint8:
        scaled = array
    elif array.dtype == np.uint16:
        scaled = _grey_to_uint8(array, "I;16")
    elif array.dtype == bool:
        scaled = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating):
        scaled = _grey_to_uint8(array, "F")
    elif np.issubdtype(array.dtype, np.integer):
        scaled = _grey_to_uint8(array, "I")
    else:
        raise TypeError(f"Unsupported image array dtype {array.dtype}")
    channels = scaled.shape[-1]
    if channels == 1:
        return Image.fromarray(scaled[..., 0], mode="L").convert("RGB")
    if channels == 4:
        return _composite_on_white(Image.fromarray(scaled, mode="RGBA"))
    return Image.fromarray(np.ascontiguousarray(scaled), mode="RGB")


def to_rgb(image: Any) -> Image.Image:
    """An 8-bit RGB PIL image from a PIL image of any mode, a numpy array or a torch tensor.

    Arrays may be ``(H, W)``, ``(H, W, C)`` or ``(C, H, W)`` with 1, 3 or 4 channels. A PIL image
    with an EXIF orientation tag is turned upright first.
    """
    if isinstance(image, Image.Image):
        if image.width == 0 or image.height == 0:
            raise ValueError("Empty image (zero width or height)")
        return _pil_to_rgb(image)
    if type(image).__module__.startswith("torch"):
        image = image.detach().cpu().numpy()
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image)
    raise TypeError(
        f"Unsupported image type {type(image).__name__}: pass PIL images, numpy arrays (H, W[, C]) or torch tensors"
    )


def _source(item: Any) -> Any:
    """A path or file object PIL can open, from a path, bytes or a ``{"bytes", "path"}`` dict."""
    if isinstance(item, dict):  # datasets Image(decode=False), Gradio file payloads
        if item.get("bytes"):
            return io.BytesIO(bytes(item["bytes"]))
        if item.get("path"):
            return os.fspath(item["path"])
        raise ValueError("an image dict needs 'bytes' or 'path'")
    if isinstance(item, (bytes, bytearray, memoryview)):
        if len(item) == 0:
            raise ValueError("empty image data")
        return io.BytesIO(bytes(item))
    if isinstance(item, (str, os.PathLike)):
        return os.fspath(item)
    raise TypeError(f"cannot read an image from {type(item).__name__}")


def open_image(
    item: Any,
    max_pixels: int | None = None,
    draft_size: tuple[int, int] | None = None,
) -> Image.Image:
    """Open an image and return it as upright 8-bit RGB.

    Args:
        item: a PIL image, numpy array or torch tensor (converted as they are), a path, encoded
            bytes, or a ``{"bytes", "path"}`` dict.
        max_pixels: refuse (``ImageTooLargeError``) images with more pixels, judged from the
            header before any pixel is decoded. ``None``: PIL's decompression-bomb limit.
        draft_size: ``(width, height)`` the caller will shrink to; JPEGs are decoded at the
            smallest DCT scale still at least this large (much faster for big photos).

    Raises what PIL raises for unreadable data (``PIL.UnidentifiedImageError``, ``OSError``, ...):
    callers that must not stop skip the item and count it.
    """
    if isinstance(item, Image.Image):
        if max_pixels is not None and item.width * item.height > max_pixels:
            raise ImageTooLargeError(item.width, item.height, max_pixels)
        return to_rgb(item)
    if isinstance(item, np.ndarray) or type(item).__module__.startswith("torch"):
        return to_rgb(item)
    with warnings.catch_warnings():
        # PIL warns (and above 2x its threshold raises) for huge images; max_pixels is our own cap.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(_source(item)) as handle:
            width, height = handle.size
            if width <= 0 or height <= 0:
                raise ValueError("Empty image (zero width or height)")
            if max_pixels is not None and width * height > max_pixels:
                raise ImageTooLargeError(width, height, max_pixels)
            if draft_size is not None and handle.format == "JPEG":
                handle.draft("RGB", draft_size)
            handle.load()
            rgb = to_rgb(handle)
            return rgb.copy() if rgb is handle else rgb  # detach from the file before it closes


def list_images(folder: str | os.PathLike, recursive: bool = True) -> list[str]:
    """Absolute paths of the image files under ``folder`` (by extension), sorted for reproducible builds."""
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    pattern = "**/*" if recursive else "*"
    files = [p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(str(p) for p in files)


__all__ = ["IMAGE_EXTENSIONS", "MAX_IMAGE_PIXELS", "ImageTooLargeError", "list_images", "open_image", "to_rgb"]
