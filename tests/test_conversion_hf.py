"""transformers ALIGN <-> align_hf conversion scripts, against transformers' own AlignModel."""

from __future__ import annotations

import json

import pytest
import torch
import transformers


from align_hf import AlignModel, AlignProcessor
from align_hf.testing import tiny_model, tiny_tokenizer
from align_hf.conversion import from_transformers as convert_hf_to_align_hf, to_transformers as convert_align_hf_to_hf
from hf_reference import healthy_hf_align


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A random transformers-format ALIGN folder with its processor, as kakaobrain/align-base is laid out."""
    folder = tmp_path_factory.mktemp("hf") / "align"
    model = healthy_hf_align(seed=3)
    model.save_pretrained(folder)
    image_processor = transformers.EfficientNetImageProcessor(
        size={"height": 77, "width": 77}, crop_size={"height": 65, "width": 65}, rescale_factor=1 / 127.5,
        rescale_offset=True, do_normalize=False, include_top=False,
    )
    transformers.AlignProcessor(image_processor=image_processor, tokenizer=tiny_tokenizer()).save_pretrained(folder)
    return folder, model


def _inputs(vocab_size: int):
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(2, 3, 65, 65, generator=g)
    ids = torch.randint(5, vocab_size, (2, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return pixels, ids, mask


def test_transformers_to_align_hf_and_back(hf_folder, tmp_path):
    folder, hf = hf_folder
    ours_dir, back_dir = tmp_path / "ours", tmp_path / "back"
    assert convert_hf_to_align_hf.main(["--model", str(folder), "--output-dir", str(ours_dir)]) == 0
    assert json.loads((ours_dir / "config.json").read_text())["model_type"] == "align_hf"
    ours = AlignModel.from_pretrained(ours_dir).eval()
    pixels, ids, mask = _inputs(hf.config.text_config.vocab_size)
    with torch.no_grad():
        want_image = hf.get_image_features(pixel_values=pixels).pooler_output
        want_text = hf.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
        torch.testing.assert_close(ours.encode_image(pixels, normalize=False), want_image, atol=1e-5, rtol=0)
        torch.testing.assert_close(ours.encode_text(ids, mask, normalize=False), want_text, atol=1e-5, rtol=0)
    processor = AlignProcessor.from_pretrained(ours_dir)
    assert processor.image_processor.crop_size["height"] == 65 and processor.tokenizer.vocab == tiny_tokenizer().vocab

    assert convert_align_hf_to_hf.main(["--model", str(ours_dir), "--output-dir", str(back_dir)]) == 0
    back = transformers.AlignModel.from_pretrained(back_dir).eval()
    with torch.no_grad():
        torch.testing.assert_close(back.get_image_features(pixel_values=pixels).pooler_output, want_image, atol=1e-5, rtol=0)
        torch.testing.assert_close(
            back.get_text_features(input_ids=ids, attention_mask=mask).pooler_output, want_text, atol=1e-5, rtol=0
        )
        torch.testing.assert_close(back.temperature, hf.temperature)
    hf_processor = transformers.AlignProcessor.from_pretrained(back_dir)
    assert hf_processor.image_processor.crop_size["height"] == 65 and hf_processor.image_processor.size["height"] == 77


def test_refusals(tmp_path, capsys):
    # an align_hf folder is not a transformers one
    ours = tiny_model()
    ours.save_pretrained(tmp_path / "tiny")
    assert convert_hf_to_align_hf.main(["--model", str(tmp_path / "tiny"), "--output-dir", str(tmp_path / "x")]) == 1
    assert "not a transformers ALIGN checkpoint" in capsys.readouterr().err
    # transformers' ALIGN has no image projection and no timm test_efficientnet tower
    assert convert_align_hf_to_hf.main(["--model", str(tmp_path / "tiny"), "--output-dir", str(tmp_path / "y")]) == 1
    assert "transformers" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()
