"""Small image files, good and bad, built in memory for the data tests."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

from align_hf.data.webdataset import ShardWriter


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def gradient_image(width: int = 48, height: int = 40, seed: int = 0) -> Image.Image:
    """A smooth random RGB image (compresses well, survives JPEG nearly unchanged)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=3)
    y, x = np.mgrid[0:height, 0:width]
    array = (base + np.stack([x * 3, y * 3, (x + y) * 2], axis=-1)) % 256
    return Image.fromarray(array.astype(np.uint8), "RGB")


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def huge_png_header(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid-looking PNG whose header claims ``width x height`` RGB pixels (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def cmyk_jpeg() -> bytes:
    """Pure red in CMYK (C=0, M=255, Y=255, K=0)."""
    return encode(Image.new("CMYK", (32, 24), (0, 255, 255, 0)), "JPEG", quality=95)


def png16() -> tuple[bytes, np.ndarray]:
    """16-bit greyscale PNG with a horizontal ramp over the full 0..65535 range, and the ramp."""
    ramp = np.tile(np.linspace(0, 65535, 32).astype(np.uint16), (8, 1))
    return encode(Image.fromarray(ramp, mode="I;16"), "PNG"), ramp


def palette_png_transparent() -> bytes:
    """Palette PNG: left half opaque blue (index 1), right half transparent (index 0)."""
    image = Image.new("P", (16, 8), 0)
    image.putpalette([0, 0, 0, 0, 0, 255] + [0] * (254 * 3))
    image.paste(1, (0, 0, 8, 8))
    return encode(image, "PNG", transparency=0)


def bad_samples() -> list[dict]:
    """One sample of each kind of trouble, with what the pipeline must do with it.

    ``expect`` is ``None`` for samples that must be kept, else the skip reason.
    """
    good = encode(gradient_image(), "JPEG", quality=95)
    png16_bytes, _ = png16()
    return [
        {"key": "good_jpeg", "ext": "jpg", "data": good, "text": "a good photo of a thing", "expect": None},
        {"key": "truncated", "ext": "jpg", "data": good[: len(good) // 2], "text": "a truncated jpeg file", "expect": "truncated_or_corrupt"},
        {"key": "zero_bytes", "ext": "jpg", "data": b"", "text": "an empty file here", "expect": "empty_file"},
        {"key": "text_as_jpg", "ext": "jpg", "data": b"<html>404 not found</html>", "text": "not an image at all", "expect": "not_an_image"},
        {"key": "huge_header", "ext": "png", "data": huge_png_header(), "text": "a decompression bomb png", "expect": "too_many_pixels"},
        {"key": "cmyk", "ext": "jpg", "data": cmyk_jpeg(), "text": "a cmyk red jpeg", "expect": None},
        {"key": "png16", "ext": "png", "data": png16_bytes, "text": "a sixteen bit png ramp", "expect": None},
        {"key": "palette_alpha", "ext": "png", "data": palette_png_transparent(), "text": "a palette png with transparency", "expect": None},
        {"key": "empty_caption", "ext": "jpg", "data": good, "text": "   \n\t ", "expect": "empty_caption"},
        {"key": "banner", "ext": "png", "data": encode(Image.new("RGB", (500, 10), "red"), "PNG"), "text": "a very wide banner", "expect": "absurd_aspect_ratio"},
        {"key": "good_png", "ext": "png", "data": encode(gradient_image(seed=1), "PNG"), "text": "a good png of a thing", "expect": None},
    ]


def write_samples(directory: str, samples: list[dict], per_shard: int, prefix: str = "shard") -> list[str]:
    """Write ``samples`` (dicts with key/ext/data/text) as webdataset shards; returns shard paths."""
    with ShardWriter(directory, prefix=prefix, max_count=per_shard) as writer:
        for sample in samples:
            writer.write({"__key__": sample["key"], sample["ext"]: sample["data"], "txt": sample["text"]})
    return writer.paths


def good_samples(count: int, size: tuple[int, int] = (48, 40)) -> list[dict]:
    """``count`` decodable PNG samples with distinct captions ``caption number <i> here``."""
    return [
        {"key": f"s{i:04d}", "ext": "png", "data": encode(gradient_image(*size, seed=i), "PNG"), "text": f"caption number {i} here"}
        for i in range(count)
    ]


def noise_samples(count: int, side: int = 40) -> list[dict]:
    """Samples with incompressible PNGs (a few KB each), so a cut tar loses member data, not padding."""
    samples = []
    for i in range(count):
        pixels = np.random.default_rng(i).integers(0, 256, (side, side, 3), dtype=np.uint8)
        samples.append({"key": f"n{i:04d}", "ext": "png", "data": encode(Image.fromarray(pixels), "PNG"), "text": f"noise image {i} here"})
    return samples
