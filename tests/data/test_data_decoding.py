import random

import numpy as np
import pytest
from PIL import Image

from align_hf.data.decoding import (
    DecodeLimits,
    clean_caption,
    decode_image,
    image_bytes,
)
from data_samples import bad_samples, cmyk_jpeg, encode, gradient_image, huge_png_header, palette_png_transparent, png16


@pytest.mark.parametrize("sample", bad_samples(), ids=lambda s: s["key"])
def test_each_sample_decodes_or_gives_its_reason(sample):
    result = decode_image(sample["data"])
    if sample["expect"] in (None, "empty_caption"):
        assert result.reason is None
        assert result.image.mode == "RGB"
    else:
        assert result.image is None
        assert result.reason == sample["expect"]


def test_good_png_is_lossless_and_reports_header_size():
    image = gradient_image(37, 21, seed=3)
    result = decode_image(encode(image, "PNG"))
    assert result.original_size == (37, 21)
    np.testing.assert_array_equal(np.asarray(result.image), np.asarray(image))


def test_cmyk_jpeg_becomes_red_rgb():
    pixels = np.asarray(decode_image(cmyk_jpeg()).image).astype(int)
    assert pixels[..., 0].min() > 230 and pixels[..., 1].max() < 25 and pixels[..., 2].max() < 25


def test_16_bit_png_is_rescaled_not_clipped():
    data, ramp = png16()
    pixels = np.asarray(decode_image(data).image)
    expected = np.round(ramp / 65535 * 255).astype(int)
    # PIL's plain convert would clip everything above 255 to white; the ramp must survive.
    np.testing.assert_allclose(pixels[..., 0], expected, atol=1)
    assert (pixels[..., 0] == pixels[..., 2]).all()


def test_palette_transparency_is_composited_on_white():
    pixels = np.asarray(decode_image(palette_png_transparent()).image)
    assert (pixels[:, :8] == [0, 0, 255]).all()
    assert (pixels[:, 8:] == 255).all()


def test_rgba_and_greyscale_modes():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (0, 255, 0, 255))
    pixels = np.asarray(decode_image(encode(rgba, "PNG")).image)
    assert tuple(pixels[0, 0]) == (0, 255, 0) and tuple(pixels[3, 3]) == (255, 255, 255)
    grey = np.asarray(decode_image(encode(Image.new("L", (4, 4), 77), "PNG")).image)
    assert (grey == 77).all()


def test_pixel_cap_is_checked_before_decoding():
    # Below PIL's own bomb threshold but above ours: caught from the header alone.
    assert decode_image(huge_png_header(2000, 2000), DecodeLimits(max_pixels=1_000_000)).reason == "too_many_pixels"
    assert decode_image(encode(gradient_image(), "PNG"), DecodeLimits(min_side=41)).reason == "too_small"


def test_exif_orientation_is_applied():
    image = gradient_image(30, 10)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    result = decode_image(encode(image, "JPEG", exif=exif.tobytes(), quality=95))
    assert result.image.size == (10, 30)


def test_jpeg_draft_decodes_smaller_but_reports_header_size():
    data = encode(gradient_image(400, 320), "JPEG", quality=90)
    result = decode_image(data, draft_size=(100, 80))
    assert result.original_size == (400, 320)
    assert 100 <= result.image.width < 400 and 80 <= result.image.height < 320


def test_image_bytes_accepts_every_column_shape(tmp_path):
    data = encode(gradient_image(), "PNG")
    path = tmp_path / "x.png"
    path.write_bytes(data)
    assert image_bytes(data) == data
    assert image_bytes({"bytes": data, "path": None}) == data
    assert image_bytes({"bytes": None, "path": str(path)}) == data
    assert image_bytes("x.png", root=str(tmp_path)) == data
    assert image_bytes(str(tmp_path / "missing.png")) is None
    assert image_bytes(None) is None
    assert decode_image(None).reason == "missing_image"


def test_clean_caption():
    assert clean_caption("  a  red\n circle ") == ("a red circle", None)
    assert clean_caption(b"caf\xc3\xa9 \xff") == ("caf\u00e9 \ufffd", None)
    assert clean_caption(" \t\n") == (None, "empty_caption")
    assert clean_caption(None) == (None, "missing_caption")
    assert clean_caption(["", " first ", "second"]) == ("first", None)
    assert clean_caption(["  ", ""]) == (None, "empty_caption")
    picks = {clean_caption(["one", "two"], random.Random(seed))[0] for seed in range(20)}
    assert picks == {"one", "two"}
