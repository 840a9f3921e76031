"""Decoding raw image bytes and captions without ever raising on bad data.

Web-scale corpora always contain files that are empty, truncated, not images at all, or
images whose header claims absurd dimensions. Every failure here is turned into a *reason*
string that callers count, so a long job keeps going and can report what it dropped.
"""

from __future__ import annotations

import io
import os
import random
import re
import warnings
from dataclasses import dataclass
from typing import Any

from PIL import Image, UnidentifiedImageError

from align_hf.image_io import to_rgb

# Skip reasons. They are plain strings so they serialise to JSON and merge across workers.
MISSING_IMAGE = "missing_image"
EMPTY_FILE = "empty_file"
NOT_AN_IMAGE = "not_an_image"
TRUNCATED = "truncated_or_corrupt"
TOO_MANY_PIXELS = "too_many_pixels"
BAD_ASPECT_RATIO = "absurd_aspect_ratio"
TOO_SMALL = "too_small"
MISSING_CAPTION = "missing_caption"
EMPTY_CAPTION = "empty_caption"
SKIP_REASONS = (
    MISSING_IMAGE,
    EMPTY_FILE,
    NOT_AN_IMAGE,
    TRUNCATED,
    TOO_MANY_PIXELS,
    BAD_ASPECT_RATIO,
    TOO_SMALL,
    MISSING_CAPTION,
    EMPTY_CAPTION,
)


@dataclass(frozen=True)
class DecodeLimits:
    """Sanity limits applied while decoding (separate from, and looser than, ALIGN filtering).

    Args:
        max_pixels: images whose header claims more pixels are skipped before any pixel data
            is decoded (decompression-bomb guard). The default is PIL's own warning threshold.
        max_aspect_ratio: long side / short side above this is skipped as absurd (banners,
            1-pixel spacer GIFs).
        min_side: images with a shorter side below this are skipped.
    """

    max_pixels: int = 89_478_485
    max_aspect_ratio: float = 20.0
    min_side: int = 1


@dataclass
class DecodedImage:
    """Result of :func:`decode_image`: ``image`` is an RGB PIL image, or ``None`` with a ``reason``."""

    image: Image.Image | None
    reason: str | None = None
    original_size: tuple[int, int] | None = None  # (width, height) from the file header


def image_bytes(value: Any, root: str | None = None) -> bytes | None:
    """Raw encoded bytes of an image column value, whatever shape the source gave it.

    Accepts the ``{"bytes": ..., "path": ...}`` dicts of ``datasets.Image(decode=False)``, raw
    ``bytes``, or a path string (relative paths are resolved against ``root``). Returns ``None``
    when nothing can be read (missing file included): the caller counts it as a missing image.
    """
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return bytes(value["bytes"])
        value = value.get("path")
        if not value:
            return None
    if isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        if root is not None and not os.path.isabs(path):
            path = os.path.join(root, path)
        try:
            with open(path, "rb") as handle:
                return handle.read()
        except OSError:
            return None
    return None


def decode_image(
    data: bytes | None,
    limits: DecodeLimits = DecodeLimits(),
    draft_size: tuple[int, int] | None = None,
) -> DecodedImage:
    """Decode encoded image bytes to an RGB PIL image, never raising.

    Checks the header (pixel count, aspect ratio, minimum side) before decoding any pixel data,
    applies the EXIF orientation, and converts every mode to RGB (CMYK, palette with
    transparency, 16-bit greyscale, alpha...).

    Args:
        data: encoded bytes (JPEG, PNG, WebP, GIF, ...).
        limits: decode-time sanity limits.
        draft_size: (width, height) the caller will resize to; JPEGs are then decoded at the
            smallest DCT scale that is still at least this large, which is much faster for big
            photos. ``original_size`` still reports the size in the file header.
    """
    if data is None:
        return DecodedImage(None, MISSING_IMAGE)
    if len(data) == 0:
        return DecodedImage(None, EMPTY_FILE)
    try:
        with warnings.catch_warnings():
            # PIL warns (and above 2x the threshold raises) for huge images; we apply our own cap.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        return DecodedImage(None, TOO_MANY_PIXELS)
    except (UnidentifiedImageError, ValueError, TypeError, SyntaxError):
        return DecodedImage(None, NOT_AN_IMAGE)
    except Exception:  # noqa: BLE001 - any plugin failure on a header is a bad file
        return DecodedImage(None, TRUNCATED)

    width, height = image.size
    size = (width, height)
    if width <= 0 or height <= 0:
        return DecodedImage(None, NOT_AN_IMAGE, size)
    if width * height > limits.max_pixels:
        return DecodedImage(None, TOO_MANY_PIXELS, size)
    if max(width, height) / min(width, height) > limits.max_aspect_ratio:
        return DecodedImage(None, BAD_ASPECT_RATIO, size)
    if min(width, height) < limits.min_side:
        return DecodedImage(None, TOO_SMALL, size)

    try:
        if draft_size is not None and image.format == "JPEG":
            image.draft("RGB", draft_size)
        image.load()
        return DecodedImage(to_rgb(image), None, size)
    except Image.DecompressionBombError:
        return DecodedImage(None, TOO_MANY_PIXELS, size)
    except Exception:  # noqa: BLE001 - truncated data, bad CRC, broken zlib stream, ...
        return DecodedImage(None, TRUNCATED, size)


_WHITESPACE = re.compile(r"\s+")


def clean_caption(value: Any, rng: random.Random | None = None) -> tuple[str | None, str | None]:
    """Normalise a caption value to a single stripped string.

    ``value`` may be ``str``, UTF-8 ``bytes`` (invalid bytes are replaced), or a list of
    captions (one is drawn with ``rng``, or the first is taken without one). Returns
    ``(caption, None)`` or ``(None, reason)``.
    """
    if isinstance(value, (list, tuple)):
        options = [v for v in value if v is not None]
        options = [c for c in (clean_caption(v)[0] for v in options) if c]
        if not options:
            return None, (EMPTY_CAPTION if value else MISSING_CAPTION)
        return (rng.choice(options) if rng is not None else options[0]), None
    if value is None:
        return None, MISSING_CAPTION
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", errors="replace")
    if not isinstance(value, str):
        value = str(value)
    text = _WHITESPACE.sub(" ", value.replace("\x00", " ")).strip()
    if not text:
        return None, EMPTY_CAPTION
    return text, None
