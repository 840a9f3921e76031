"""One image loader: every way an image enters align_hf gives the same upright RGB pixels.

Paths checked: ``image_io.open_image`` (evaluation, search), ``data.decoding.decode_image`` (training
stream), the processor on a lazily opened PIL image (user code, pipelines), the demo's upload check
and the evaluation encoder (same embedding as the processor on the loaded pixels).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from align_hf.data.decoding import decode_image
from align_hf.evaluation.encoding import encode_images, encode_pil_images
from align_hf.image_io import ImageTooLargeError, open_image, to_rgb
from align_hf.testing import tiny_model, tiny_processor

SIZE = (24, 16)  # width, height: not square, so a missed rotation changes the shape


def _ramp(low: float, high: float) -> np.ndarray:
    """(H, W) values from ``low`` to ``high``, left to right and top to bottom."""
    height, width = SIZE[1], SIZE[0]
    grid = np.add.outer(np.arange(height) * width, np.arange(width)) / (height * width - 1)
    return low + grid * (high - low)


def _encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _palette_image(transparent: bool) -> Image.Image:
    rgb = np.zeros((SIZE[1], SIZE[0], 3), np.uint8)
    rgb[:, : SIZE[0] // 2] = (200, 30, 30)
    rgb[:, SIZE[0] // 2 :] = (30, 30, 200)
    image = Image.fromarray(rgb).quantize(colors=4)
    if transparent:
        image.info["transparency"] = int(np.asarray(image)[0, 0])
    return image


def _samples() -> dict[str, bytes]:
    rgba = np.zeros((SIZE[1], SIZE[0], 4), np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = _ramp(0, 255).astype(np.uint8)  # half-transparent red fades in over white
    grey8 = _ramp(0, 255).astype(np.uint8)
    return {
        "1": _encode(Image.fromarray(grey8 > 127).convert("1"), "PNG"),
        "L": _encode(Image.fromarray(grey8, "L"), "PNG"),
        "LA": _encode(Image.fromarray(rgba[..., [0, 3]], "LA"), "PNG"),
        "P": _encode(_palette_image(False), "PNG"),
        "P+transparency": _encode(_palette_image(True), "PNG", transparency=_palette_image(True).info["transparency"]),
        "RGBA": _encode(Image.fromarray(rgba, "RGBA"), "PNG"),
        "CMYK": _encode(Image.new("CMYK", SIZE, (0, 255, 255, 0)), "JPEG", quality=95),
        "I": _encode(Image.fromarray(_ramp(0, 70000).astype(np.int32), "I"), "TIFF"),
        "I;16": _encode(Image.fromarray(_ramp(0, 65535).astype(np.uint16), "I;16"), "PNG"),
        "F": _encode(Image.fromarray(_ramp(0.0, 1.0).astype(np.float32), "F"), "TIFF"),
        "EXIF-rotated JPEG": _exif_rotated(),
    }


def _exif_rotated() -> bytes:
    """A JPEG stored sideways whose EXIF says "rotate 90 degrees clockwise to display"."""
    stored = np.full((SIZE[1], SIZE[0], 3), 255, np.uint8)
    stored[:8, :8] = (255, 0, 0)  # red square at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(Image.fromarray(stored), "JPEG", quality=95, exif=exif.tobytes())


SAMPLES = _samples()


@pytest.fixture(scope="module")
def model_and_processor():
    processor = tiny_processor(image_size=32)
    return tiny_model(seed=0), processor


@pytest.mark.parametrize("name", list(SAMPLES))
def test_every_path_gives_the_same_pixels(name, tmp_path):
    data = SAMPLES[name]
    path = tmp_path / "image.bin"
    path.write_bytes(data)
    reference = np.asarray(open_image(data))
    assert reference.dtype == np.uint8 and reference.shape[2] == 3
    loaded = {
        "open_image(path)": open_image(path),
        "open_image(dict)": open_image({"bytes": data, "path": None}),
        "decode_image": decode_image(data).image,
        "to_rgb(Image.open)": to_rgb(Image.open(io.BytesIO(data))),
    }
    for where, image in loaded.items():
        assert image.mode == "RGB", where
        np.testing.assert_array_equal(np.asarray(image), reference, err_msg=where)


@pytest.mark.parametrize("name", list(SAMPLES))
def test_processor_on_a_lazily_opened_image_matches_the_loader(name):
    processor = tiny_processor(image_size=32)
    raw = processor(images=Image.open(io.BytesIO(SAMPLES[name])), return_tensors="pt")["pixel_values"]
    loaded = processor(images=open_image(SAMPLES[name]), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(raw, loaded, rtol=0, atol=0)


def test_evaluation_encoder_embeds_what_the_loader_reads(model_and_processor, tmp_path):
    model, processor = model_and_processor
    paths = []
    for i, data in enumerate(SAMPLES.values()):
        paths.append(tmp_path / f"{i}.img")
        paths[-1].write_bytes(data)
    encoded = encode_images(model, processor, [str(p) for p in paths], batch_size=4, progress=False)
    assert encoded.kept == list(range(len(paths))) and not encoded.skipped
    expected = encode_pil_images(model, processor, [open_image(p) for p in paths])
    torch.testing.assert_close(encoded.embeddings, expected)


def test_demo_upload_is_read_by_the_same_loader(model_and_processor, tmp_path):
    from align_hf.demo.backend import DemoBackend

    model, processor = model_and_processor
    backend = DemoBackend(model, processor, max_pixels=10_000)
    try:
        for name, data in SAMPLES.items():
            path = tmp_path / "upload.bin"
            path.write_bytes(data)
            np.testing.assert_array_equal(np.asarray(backend.open_image({"path": str(path)})), np.asarray(open_image(data)),
                                          err_msg=name)
    finally:
        backend.close()


def test_exif_orientation_turns_the_photo_upright():
    image = open_image(SAMPLES["EXIF-rotated JPEG"])
    assert image.size == (SIZE[1], SIZE[0])  # displayed 16 wide, 24 high
    pixels = np.asarray(image).astype(int)
    # Rotating 90 degrees clockwise moves the stored top-left corner to the top-right.
    assert (pixels[:6, -6:, 0] > 200).all() and (pixels[:6, -6:, 1] < 60).all()
    assert (pixels[:6, :6] > 200).all()


def test_wide_greyscale_is_rescaled_not_clipped():
    i16 = np.asarray(open_image(SAMPLES["I;16"]))[..., 0]
    assert i16.min() == 0 and i16.max() == 255 and 100 < np.median(i16) < 155
    wide_int = np.asarray(open_image(SAMPLES["I"]))[..., 0]
    assert wide_int.max() == 255 and 100 < np.median(wide_int) < 155
    fraction = np.asarray(open_image(SAMPLES["F"]))[..., 0]
    assert fraction.max() == 255 and 100 < np.median(fraction) < 155
    small_int = to_rgb(Image.fromarray(np.full((4, 4), 77, np.int32), "I"))
    assert np.asarray(small_int)[0, 0, 0] == 77  # values already in 0..255 are kept


def test_transparency_is_composited_on_white():
    la = np.asarray(open_image(SAMPLES["LA"]))
    assert tuple(la[0, 0]) == (255, 255, 255)  # fully transparent corner
    palette = np.asarray(open_image(SAMPLES["P+transparency"]))
    assert tuple(palette[0, 0]) == (255, 255, 255)
    assert tuple(palette[0, -1]) != (255, 255, 255)


def test_pixel_cap_is_checked_from_the_header():
    with pytest.raises(ImageTooLargeError):
        open_image(SAMPLES["L"], max_pixels=SIZE[0] * SIZE[1] - 1)
    assert open_image(SAMPLES["L"], max_pixels=SIZE[0] * SIZE[1]).size == SIZE


def test_unreadable_data_raises():
    with pytest.raises(Exception):
        open_image(b"not an image at all")
    with pytest.raises(ValueError):
        open_image(b"")
