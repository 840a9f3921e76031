"""transformers ALIGN <-> align_hf conversion scripts, against transformers' own AlignModel."""

from __future__ import annotations

import copy
import json
import math

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
    # Compared in float64: the image features are ~300 in size, and float32 rounding at that scale
    # (transformers' own tower differs by 1e-4 of it between one and two threads) exceeds 1e-5.
    reference = copy.deepcopy(hf).double()
    ours = AlignModel.from_pretrained(ours_dir).eval().double()
    pixels, ids, mask = _inputs(hf.config.text_config.vocab_size)
    pixels = pixels.double()
    with torch.no_grad():
        want_image = reference.get_image_features(pixel_values=pixels).pooler_output
        want_text = reference.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
        torch.testing.assert_close(ours.encode_image(pixels, normalize=False), want_image, atol=1e-5, rtol=0)
        torch.testing.assert_close(ours.encode_text(ids, mask, normalize=False), want_text, atol=1e-5, rtol=0)
    processor = AlignProcessor.from_pretrained(ours_dir)
    assert processor.image_processor.crop_size["height"] == 65 and processor.tokenizer.vocab == tiny_tokenizer().vocab

    assert convert_align_hf_to_hf.main(["--model", str(ours_dir), "--output-dir", str(back_dir)]) == 0
    back = transformers.AlignModel.from_pretrained(back_dir).eval().double()
    with torch.no_grad():
        torch.testing.assert_close(back.get_image_features(pixel_values=pixels).pooler_output, want_image, atol=1e-5, rtol=0)
        torch.testing.assert_close(
            back.get_text_features(input_ids=ids, attention_mask=mask).pooler_output, want_text, atol=1e-5, rtol=0
        )
        torch.testing.assert_close(back.temperature, reference.temperature)
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


@pytest.mark.parametrize("width, depth", [(0.5, 0.5), (1.0, 1.0), (0.7, 1.3)])
def test_any_efficientnet_coefficients_match_transformers(width, depth, tmp_path):
    """transformers builds EfficientNet at any width/depth; so do we, with the same image embeddings
    at odd and even sizes, and the same model again after converting back to its format."""
    hf = healthy_hf_align(seed=7, width_coefficient=width, depth_coefficient=depth)
    hf.save_pretrained(tmp_path / "hf")
    ours = AlignModel.from_pretrained(tmp_path / "hf").eval()
    vision = ours.config.vision_config
    assert vision.model_name == "tf_efficientnet_b0"
    assert vision.timm_kwargs == ({} if (width, depth) == (1.0, 1.0) else {"channel_multiplier": width, "depth_multiplier": depth})
    blocks_per_stage = [len(stage) for stage in ours.vision_model.backbone.blocks]
    assert blocks_per_stage == [math.ceil(depth * n) for n in hf.config.vision_config.num_block_repeats]

    ours_dir, back_dir = tmp_path / "ours", tmp_path / "back"
    ours.save_pretrained(ours_dir)
    assert convert_align_hf_to_hf.main(["--model", str(ours_dir), "--output-dir", str(back_dir)]) == 0
    back = transformers.AlignModel.from_pretrained(back_dir).eval()
    assert (back.config.vision_config.width_coefficient, back.config.vision_config.depth_coefficient) == (width, depth)
    reloaded = AlignModel.from_pretrained(ours_dir).eval()
    # In float64: these random towers amplify float32 rounding up to a few percent at 0.7/1.3, and
    # which kernels round how differs between two copies of the same weights on one thread.
    hf, ours, reloaded, back = (m.double() for m in (hf, ours, reloaded, back))
    for size in (33, 32):
        pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size), dtype=torch.float64)
        with torch.no_grad():
            want = hf.get_image_features(pixel_values=pixels).pooler_output
            assert (want[0] - want[1]).abs().max() > 1e-3  # two images, two embeddings: the check can fail
            for got in (
                ours.encode_image(pixels, normalize=False),
                reloaded.encode_image(pixels, normalize=False),
                back.get_image_features(pixel_values=pixels).pooler_output,
            ):
                assert got.shape == want.shape
                assert (got - want).abs().max().item() <= 1e-9 * want.abs().max().item()


def test_scaled_b0_is_the_named_variant_when_coefficients_match():
    """timm's B0 rescaled to B2's coefficients builds exactly tf_efficientnet_b2 (same tensors, same
    modules): the rescaling path is timm's own generator, not a look-alike."""
    from align_hf.configuration_align import AlignVisionConfig
    from align_hf.image_backbone import build_image_backbone

    named, named_width = build_image_backbone(AlignVisionConfig(model_name="tf_efficientnet_b2", image_size=64))
    scaled, scaled_width = build_image_backbone(AlignVisionConfig(
        model_name="tf_efficientnet_b0", image_size=64, timm_kwargs={"channel_multiplier": 1.1, "depth_multiplier": 1.2},
    ))
    assert named_width == scaled_width == 352
    assert str(named) == str(scaled)
    assert {k: v.shape for k, v in named.state_dict().items()} == {k: v.shape for k, v in scaled.state_dict().items()}
    with pytest.raises(ValueError, match="scale EfficientNet-B0 only"):
        build_image_backbone(AlignVisionConfig(model_name="tf_efficientnet_b3", timm_kwargs={"depth_multiplier": 2.0}))
