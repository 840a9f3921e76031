"""AlignModel against transformers' AlignModel, the loss oracle, and its own invariants."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers.modeling_outputs import BaseModelOutputWithPooling, BaseModelOutputWithPoolingAndNoAttention

from align_hf import AlignConfig, AlignModel
from align_hf.conversion.hf_format import config_to_hf, state_dict_to_hf
from align_hf.testing import tiny_model
from hf_reference import HF_TEXT, healthy_hf_align


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A transformers-format ALIGN checkpoint folder (like kakaobrain/align-base, but small)."""
    model = healthy_hf_align(seed=0)
    folder = tmp_path_factory.mktemp("hf_align")
    model.save_pretrained(folder)
    return model, folder


def _inputs(size: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    # Smooth random patterns: global pooling of pure noise would make every image look alike.
    coarse = torch.rand(3, 3, 4, 4, generator=g) * 2 - 1
    pixels = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    ids = torch.randint(5, HF_TEXT["vocab_size"], (3, 12), generator=g)
    ids[:, 0] = 2
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    return pixels, ids, mask


@pytest.mark.parametrize("size", [64, 65])
def test_parity_with_transformers_align(hf_folder, size):
    hf_model, folder = hf_folder
    ours = AlignModel.from_pretrained(folder)
    assert isinstance(ours, AlignModel)
    pixels, ids, mask = _inputs(size)
    with torch.no_grad():
        ref = hf_model(input_ids=ids, attention_mask=mask, pixel_values=pixels)
        out = ours(input_ids=ids, attention_mask=mask, pixel_values=pixels)
    # Not a degenerate comparison: embeddings differ between inputs.
    assert torch.cdist(ref.image_embeds, ref.image_embeds).max() > 0.05
    for name in ("image_embeds", "text_embeds", "logits_per_image", "logits_per_text"):
        diff = (getattr(out, name) - getattr(ref, name)).abs().max().item()
        assert diff <= 1e-5, f"{name} differs by {diff} at {size}px"


def test_feature_getters_match_transformers_types_and_values(hf_folder):
    hf_model, folder = hf_folder
    ours = AlignModel.from_pretrained(folder)
    pixels, ids, mask = _inputs(64)
    with torch.no_grad():
        ref_text = hf_model.get_text_features(input_ids=ids, attention_mask=mask)
        ref_image = hf_model.get_image_features(pixel_values=pixels)
        text = ours.get_text_features(input_ids=ids, attention_mask=mask)
        image = ours.get_image_features(pixel_values=pixels)
    assert isinstance(text, BaseModelOutputWithPooling)
    assert isinstance(image, BaseModelOutputWithPoolingAndNoAttention)
    assert type(text).__name__ == type(ref_text).__name__ and type(image).__name__ == type(ref_image).__name__
    torch.testing.assert_close(text.pooler_output, ref_text.pooler_output, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(image.pooler_output, ref_image.pooler_output, atol=1e-5, rtol=1e-4)
    # Rows that are fully attended keep the same hidden states; padded positions are zero-filled.
    torch.testing.assert_close(text.last_hidden_state[0], ref_text.last_hidden_state[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(image.last_hidden_state, ref_image.last_hidden_state, atol=1e-5, rtol=1e-4)


def test_loss_matches_transformers_align_loss(hf_folder):
    hf_model, folder = hf_folder
    ours = AlignModel.from_pretrained(folder)
    pixels, ids, mask = _inputs(64)
    with torch.no_grad():
        ref = hf_model(input_ids=ids, attention_mask=mask, pixel_values=pixels, return_loss=True)
        out = ours(input_ids=ids, attention_mask=mask, pixel_values=pixels, return_loss=True)
    assert abs(out.loss.item() - ref.loss.item()) <= 1e-5


def test_export_to_transformers_roundtrip(hf_folder, tmp_path):
    hf_model, folder = hf_folder
    ours = AlignModel.from_pretrained(folder)
    exported = transformers.AlignModel(transformers.AlignConfig(**config_to_hf(ours.config))).eval()
    exported.load_state_dict(state_dict_to_hf(ours.state_dict(), ours.config), strict=True)
    pixels, ids, mask = _inputs(65)
    with torch.no_grad():
        a = exported(input_ids=ids, attention_mask=mask, pixel_values=pixels)
        b = ours(input_ids=ids, attention_mask=mask, pixel_values=pixels)
    torch.testing.assert_close(a.logits_per_image, b.logits_per_image, atol=1e-5, rtol=1e-4)


def test_wrong_shapes_in_transformers_checkpoint_are_refused(tmp_path):
    model = healthy_hf_align(seed=1)
    model.save_pretrained(tmp_path)
    import json

    config = json.loads((tmp_path / "config.json").read_text())
    config["text_config"]["vocab_size"] = 100  # the stored word embeddings have 120 rows
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="does not fit"):
        AlignModel.from_pretrained(tmp_path)


def test_align_base_preset_has_transformers_align_base_structure():
    """align-base's tensors are those of transformers' default AlignConfig (kakaobrain/align-base)."""
    with torch.device("meta"):
        ours = AlignModel(AlignConfig.from_preset("align-base"))
        reference = transformers.AlignModel(transformers.AlignConfig())
    converted = state_dict_to_hf(ours.state_dict(), ours.config)
    ref_shapes = {k: tuple(v.shape) for k, v in reference.state_dict().items() if "position_ids" not in k}
    our_shapes = {k: tuple(v.shape) for k, v in converted.items()}
    assert our_shapes == ref_shapes
    assert ours.config.projection_dim == 640 and ours.vision_model.embed_dim == 640


def test_l2_preset_is_the_papers_largest_model():
    with torch.device("meta"):
        model = AlignModel(AlignConfig.from_preset("align-l2"))
    assert model.vision_model.embed_dim == 1376
    assert model.config.text_config.num_hidden_layers == 24 and model.config.text_config.hidden_size == 1024


def test_config_roundtrip(tmp_path):
    config = AlignConfig.from_preset("tiny", loss_type="sigmoid", vision_config={"drop_path_rate": 0.1})
    config.save_pretrained(tmp_path)
    loaded = AlignConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.model_type == "align_hf"
    assert loaded.vision_config.drop_path_rate == 0.1
    loaded_auto = transformers.AutoConfig.from_pretrained(tmp_path)
    assert type(loaded_auto) is AlignConfig


def test_config_validation():
    with pytest.raises(ValueError, match="padding"):
        AlignConfig(vision_config={"padding": "reflect"})
    with pytest.raises(ValueError, match="preset"):
        AlignConfig.from_preset("align-huge")
    with pytest.raises(ValueError, match="projection_dim"):
        AlignModel(AlignConfig.from_preset("tiny", projection_dim=96))


def test_embeddings_finite_for_degenerate_images():
    model = tiny_model()
    pixels = torch.zeros(2, 3, 64, 64)
    model.vision_model.backbone.blocks[-1][-1].bn3.weight.data.zero_()
    model.vision_model.backbone.blocks[-1][-1].bn3.bias.data.zero_()
    model.image_projection.bias.data.zero_()
    ids = torch.tensor([[2, 7, 3], [2, 8, 3]])
    out = model(input_ids=ids, pixel_values=pixels, return_loss=True)
    assert torch.isfinite(out.image_embeds).all() and torch.isfinite(out.logits_per_image).all()
    assert torch.isfinite(out.loss)


def test_random_init_gives_distinct_unit_embeddings_and_live_training_activations():
    model = tiny_model(seed=3)
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(4, 3, 64, 64, generator=g) * 2 - 1
    ids = torch.randint(5, 1000, (4, 10), generator=g)
    out = model(input_ids=ids, pixel_values=pixels)
    assert torch.allclose(out.image_embeds.norm(dim=-1), torch.ones(4), atol=1e-5)
    off_diagonal = out.image_embeds @ out.image_embeds.T - torch.eye(4)
    assert off_diagonal.max() < 0.999  # different images, different embeddings
    model.train()
    features = model.vision_model(pixels).last_hidden_state
    assert 0.1 < features.std().item() < 10  # BatchNorm batch statistics keep the tower alive


def test_activation_checkpointing_keeps_gradients():
    def grads(checkpointing: bool):
        model = tiny_model(seed=5)
        model.train()
        if checkpointing:
            model.activation_checkpointing_enable()
        g = torch.Generator().manual_seed(0)
        pixels = torch.rand(4, 3, 64, 64, generator=g)
        ids = torch.randint(5, 1000, (4, 10), generator=g)
        model(input_ids=ids, pixel_values=pixels, return_loss=True).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain, checkpointed = grads(False), grads(True)
    assert plain.keys() == checkpointed.keys() and len(plain) > 50
    for name in plain:
        torch.testing.assert_close(plain[name], checkpointed[name], atol=1e-6, rtol=1e-4, msg=name)


def test_batchnorm_momentum_has_torch_meaning():
    model = tiny_model()
    config = AlignConfig.from_preset("align-base")
    assert config.vision_config.batch_norm_momentum == 0.01
    bn = model.vision_model.backbone.bn1
    assert bn.momentum == model.config.vision_config.batch_norm_momentum
    model.train()
    before = bn.running_mean.clone()
    model.vision_model(torch.rand(2, 3, 64, 64) + 1.0)
    moved = (bn.running_mean - before).abs().max()
    assert 0 < moved < 10


def test_return_loss_needs_pairs():
    model = tiny_model()
    with pytest.raises(ValueError, match="as many images as texts"):
        model(input_ids=torch.tensor([[2, 5, 3]]), pixel_values=torch.rand(2, 3, 64, 64), return_loss=True)
    with pytest.raises(ValueError, match="pixel_values must be"):
        model.encode_image(torch.rand(3, 64, 64))


def test_for_inference_folds_batchnorm_without_changing_outputs():
    model = tiny_model(seed=7)
    model.train()
    model.vision_model(torch.rand(8, 3, 64, 64))  # non-trivial running statistics
    model.eval()
    fast = model.for_inference()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.vision_model.modules())
    pixels = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fast.encode_image(pixels), model.encode_image(pixels), atol=1e-5, rtol=1e-4)
    with pytest.raises(RuntimeError, match="for_inference"):
        fast.train()
    # The original is untouched and still trainable.
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.vision_model.modules())


def test_loss_without_logits_is_the_same_loss():
    model = tiny_model(seed=8)
    pixels, ids = torch.rand(4, 3, 64, 64), torch.randint(5, 1000, (4, 9))
    full = model(input_ids=ids, pixel_values=pixels, return_loss=True)
    lean = model(input_ids=ids, pixel_values=pixels, return_loss=True, return_logits=False)
    assert lean.logits_per_image is None and lean.logits_per_text is None
    torch.testing.assert_close(lean.loss, full.loss)
