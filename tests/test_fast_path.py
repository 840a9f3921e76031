"""The image tower's fast path (align_hf.fast_blocks): same embeddings as transformers' AlignModel
and as the default path, same gradients in training, and used wherever the package embeds images."""

from __future__ import annotations

import copy

import pytest
import torch
from PIL import Image

from align_hf import AlignModel
from align_hf.evaluation.encoding import encode_images, encode_pil_images, fast_path, prepare_for_embedding
from align_hf.testing import tiny_model, tiny_processor
from hf_reference import healthy_hf_align


@pytest.fixture(scope="module")
def hf_pair(tmp_path_factory):
    """transformers' AlignModel (a half-width, half-depth EfficientNet-B0: every block kind, stride
    and kernel size of B0, quicker; no drop-connect) and align_hf loading its checkpoint."""
    hf = healthy_hf_align(seed=0, drop_connect_rate=0.0, width_coefficient=0.5, depth_coefficient=0.5)
    folder = tmp_path_factory.mktemp("hf_fast")
    hf.save_pretrained(folder)
    return hf, AlignModel.from_pretrained(folder)


@pytest.fixture(scope="module")
def tiny():
    return tiny_model(), tiny_processor()


def _pixels(size: int, n: int = 3, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1  # smooth images: pooled features differ between them
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def _close_to_scale(got: torch.Tensor, want: torch.Tensor, rel: float) -> None:
    # The tower's activations reach O(100) here and float rounding of reordered sums (channels-last
    # convolutions, folded BatchNorm) grows through 16 blocks to ~1e-5 of that scale.
    scale = want.abs().max().item()
    diff = (got - want).abs().max().item()
    assert diff <= rel * scale, f"max difference {diff} exceeds {rel} x {scale}"


@pytest.mark.parametrize("size", [48, 49])  # 49: odd size, Keras' asymmetric padding
def test_fast_embeddings_match_transformers(hf_pair, size):
    hf, ours = hf_pair
    hf.eval()
    model = copy.deepcopy(ours).eval()
    pixels = _pixels(size)
    with torch.no_grad():
        want = hf.get_image_features(pixel_values=pixels).pooler_output
        default = model.encode_image(pixels, normalize=False)
        model.set_fast_path(True)
        assert model.vision_model.fast_path
        on_the_fly = model.encode_image(pixels, normalize=False)
        again = model.encode_image(pixels, normalize=False)  # from the folded-weight cache
        prepared = prepare_for_embedding(ours)
        folded = prepared.encode_image(pixels.contiguous(memory_format=torch.channels_last), normalize=False)
    # The images give different features, so the check can fail.
    assert torch.cdist(want, want).max() > 0.1 * want.norm(dim=-1).max()
    torch.testing.assert_close(default, want, atol=1e-5, rtol=1e-4)  # the default path: transformers' ops
    for got in (on_the_fly, again, folded):
        _close_to_scale(got, want, 3e-4)
        normalised = torch.nn.functional.normalize(got, dim=-1) - torch.nn.functional.normalize(want, dim=-1)
        assert normalised.abs().max() <= 1e-5
    assert prepared is not ours and prepared._inference_only and not ours.vision_model.fast_path


def test_fast_training_step_matches_default_path(hf_pair):
    """Train mode (batch statistics): same features, gradients and BatchNorm running statistics as
    the default path, which test_modeling checks against transformers op for op."""
    _, ours = hf_pair
    slow = copy.deepcopy(ours).train()
    fast = copy.deepcopy(ours).train().set_fast_path(True)
    pixels = _pixels(48, n=4, seed=2)
    target = torch.randn(4, slow.config.projection_dim, generator=torch.Generator().manual_seed(3))
    outputs = []
    for model in (slow, fast):
        features = model.get_image_features(pixel_values=pixels).pooler_output
        (features * target).sum().backward()
        outputs.append(features.detach())
    _close_to_scale(outputs[1], outputs[0], 3e-4)
    slow_params = dict(slow.vision_model.named_parameters())
    pairs = [(param.grad, slow_params[name].grad) for name, param in fast.vision_model.named_parameters()]
    assert len(pairs) > 50 and all(got is not None and want is not None for got, want in pairs)
    # Some gradients are analytically zero (a bias followed by a linear map and a training-mode
    # BatchNorm), i.e. rounding noise on both sides: they are held to the scale of all gradients.
    overall = max(want.abs().max().item() for _, want in pairs)
    for got, want in pairs:
        scale = max(want.abs().max().item(), 1e-2 * overall)
        assert (got - want).abs().max().item() <= 1e-3 * scale
    slow_buffers = dict(slow.vision_model.named_buffers())
    for name, buffer in fast.vision_model.named_buffers():
        if buffer.is_floating_point():
            _close_to_scale(buffer, slow_buffers[name], 3e-4)


def test_folded_cache_follows_weight_updates(tiny):
    """Evaluating between optimiser steps must see the new weights, not a stale folded copy."""
    model = copy.deepcopy(tiny[0]).set_fast_path(True)
    pixels = _pixels(model.config.vision_config.image_size, n=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(2):
        model.train()
        loss = model.encode_image(_pixels(model.config.vision_config.image_size, n=4, seed=5)).pow(3).sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        model.eval()
        with torch.no_grad():
            cached = model.encode_image(pixels)
            reference = copy.deepcopy(model).set_fast_path(False).encode_image(pixels)
        torch.testing.assert_close(cached, reference, atol=1e-5, rtol=1e-4)


def test_prepare_for_embedding_options(tiny):
    model = tiny[0]
    pixels = _pixels(model.config.vision_config.image_size, n=2)
    with torch.no_grad():
        want = model.eval().encode_image(pixels)
        bf16 = prepare_for_embedding(model, dtype=torch.bfloat16)
        assert next(bf16.parameters()).dtype == torch.bfloat16 and model.dtype == torch.float32
        assert prepare_for_embedding(bf16) is bf16  # idempotent
        got = bf16.encode_image(pixels.bfloat16()).float()
        in_place = copy.deepcopy(model)
        assert prepare_for_embedding(in_place, copy=False) is in_place
        torch.testing.assert_close(in_place.encode_image(pixels), want, atol=1e-5, rtol=1e-4)
    assert (got - want).abs().max() < 0.05
    with pytest.raises(RuntimeError, match="for_inference"):
        in_place.train()


class _Spy:
    """Records, for every image-tower call, whether the fast path was on and the input layout."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.calls: list[tuple[bool, bool]] = []
        self.handle = model.vision_model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs) -> None:
        pixels = kwargs["pixel_values"] if "pixel_values" in kwargs else args[0]
        self.calls.append((module.fast_path, pixels.is_contiguous(memory_format=torch.channels_last)))


def test_encoding_and_zero_shot_use_the_fast_path(tiny):
    from align_hf.evaluation.zero_shot import ZeroShotClassifier

    model, processor = copy.deepcopy(tiny[0]).eval(), tiny[1]
    images = [Image.new("RGB", (40, 30), (i * 60, 20, 200 - i * 50)) for i in range(3)]
    spy = _Spy(model)
    with torch.no_grad():
        want = model.encode_image(processor(images=images, return_tensors="pt")["pixel_values"])
    assert spy.calls == [(False, False)]  # the model's own default: transformers' ops
    spy.calls.clear()
    encoded = encode_images(model, processor, images + ["/no/such/file.jpg"], batch_size=2, progress=False)
    single = encode_pil_images(model, processor, images[:1])
    ZeroShotClassifier(model, processor, ["red", "blue"], templates=["a {} picture."], progress=False).predict(images)
    assert spy.calls and all(call == (True, True) for call in spy.calls), spy.calls
    assert not model.vision_model.fast_path  # the caller's setting is restored
    assert encoded.kept == [0, 1, 2] and len(encoded.skipped) == 1
    torch.testing.assert_close(encoded.embeddings, want, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(single, want[:1], atol=1e-5, rtol=1e-4)
    with fast_path(model):
        assert model.vision_model.fast_path
    assert not model.vision_model.fast_path


def test_demo_model_is_prepared(tiny, saved_model):
    from align_hf.demo.setup import load_model

    model, _, _ = load_model(saved_model)
    assert model._inference_only and model.vision_model.fast_path and not model.training
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.vision_model.modules())
