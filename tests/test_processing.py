"""AlignProcessor: align-base defaults, parity with transformers' EfficientNet processor, odd inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from align_hf import AlignImageProcessor, AlignProcessor
from align_hf.processing_align import to_rgb
from align_hf.testing import tiny_processor, tiny_tokenizer


def _photo(width=120, height=90, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_defaults_are_align_base():
    processor = AlignImageProcessor()
    out = processor(_photo(), return_tensors="pt")["pixel_values"]
    assert out.shape == (1, 3, 289, 289)
    assert -1.0 <= out.min() and out.max() <= 1.0
    assert processor.size["height"] == 346 and processor.crop_size["height"] == 289


def test_pixels_match_transformers_efficientnet_processor_with_align_settings():
    reference = transformers.EfficientNetImageProcessor(
        size={"height": 346, "width": 346},
        crop_size={"height": 289, "width": 289},
        do_center_crop=True,
        rescale_factor=1 / 127.5,
        rescale_offset=True,
        do_normalize=False,
        include_top=False,
    )
    images = [_photo(400, 300, 1), _photo(350, 500, 2)]
    ours = AlignImageProcessor()(images, return_tensors="pt")["pixel_values"]
    theirs = reference(images, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


def test_rescale_is_x_over_127_5_minus_1():
    image = Image.new("RGB", (346, 346), (0, 255, 51))
    out = AlignImageProcessor()(image, return_tensors="pt")["pixel_values"][0]
    assert torch.allclose(out[:, 100, 100], torch.tensor([-1.0, 1.0, 51 / 127.5 - 1]), atol=1e-6)


@pytest.mark.parametrize(
    "image, expected",
    [
        (Image.new("L", (20, 20), 128), (128, 128, 128)),
        (Image.new("LA", (20, 20), (10, 0)), (255, 255, 255)),  # fully transparent -> white background
        (Image.new("RGBA", (20, 20), (255, 0, 0, 255)), (255, 0, 0)),
        (Image.new("CMYK", (20, 20), (0, 0, 0, 0)), (255, 255, 255)),
        (Image.new("I;16", (20, 20), 65535), (255, 255, 255)),
        (Image.new("1", (20, 20), 1), (255, 255, 255)),
        (np.full((20, 20), 0.5, dtype=np.float32), (128, 128, 128)),
        (np.full((3, 20, 20), 255, dtype=np.uint8), (255, 255, 255)),
        (np.full((20, 20, 4), (0, 0, 255, 255), dtype=np.uint8), (0, 0, 255)),
        (np.full((20, 20), 65535, dtype=np.uint16), (255, 255, 255)),
        (torch.zeros(3, 20, 20), (0, 0, 0)),
    ],
    ids=["L", "LA", "RGBA", "CMYK", "I;16", "1", "float-gray", "CHW-uint8", "RGBA-array", "uint16", "torch"],
)
def test_any_mode_becomes_rgb(image, expected):
    rgb = to_rgb(image)
    assert rgb.mode == "RGB"
    assert rgb.getpixel((5, 5)) == pytest.approx(expected, abs=1)


def test_palette_with_transparency_is_composited():
    image = Image.new("P", (10, 10), 0)
    image.putpalette([255, 0, 0] + [0, 0, 0] * 255)
    image.info["transparency"] = 0
    assert to_rgb(image).getpixel((3, 3)) == (255, 255, 255)


@pytest.mark.parametrize(
    "bad, message",
    [
        ("not an image", "Unsupported image type"),
        (np.zeros((2, 3, 4, 5, 6)), "must be"),
        (np.zeros((0, 5, 3), dtype=np.uint8), "Empty image"),
        (np.full((4, 4), np.nan, dtype=np.float32), "NaN"),
        (np.zeros((5, 5, 7), dtype=np.uint8), "channel axis"),
    ],
)
def test_clear_errors(bad, message):
    with pytest.raises((TypeError, ValueError), match=message):
        to_rgb(bad)


def test_processor_text_and_images_batched_and_single(tmp_path):
    processor = tiny_processor()
    single = processor(text="a red circle", images=_photo())
    assert single["input_ids"].shape == (1, 16) and single["pixel_values"].shape == (1, 3, 64, 64)
    batch = processor(text=["a", "b c"], images=np.stack([np.asarray(_photo(70, 70, i)) for i in range(2)]))
    assert batch["pixel_values"].shape == (2, 3, 64, 64)
    assert batch["attention_mask"].sum(-1).tolist() == [3, 4]
    with pytest.raises(ValueError, match="Give text, images or both"):
        processor()


def test_processor_roundtrip(tmp_path):
    processor = tiny_processor(image_size=48)
    processor.save_pretrained(tmp_path)
    loaded = AlignProcessor.from_pretrained(tmp_path)
    image = _photo()
    a = processor(text=["a photo of a cat"], images=image)
    b = loaded(text=["a photo of a cat"], images=image)
    for key in a:
        torch.testing.assert_close(a[key], b[key])


def test_default_max_length_is_64():
    processor = AlignProcessor(tokenizer=tiny_tokenizer(max_length=512))
    assert processor(text="a cat")["input_ids"].shape == (1, 64)
    long = processor(text=" ".join(["cat"] * 200))["input_ids"]
    assert long.shape == (1, 64)
