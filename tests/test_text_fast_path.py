"""align_hf.text_fast_path: the last layer run for [CLS] alone gives the full tower's pooled output
and the same gradients, for BERT and RoBERTa encoders with eager and SDPA attention."""

from __future__ import annotations

import warnings

import pytest
import torch

from align_hf.configuration_align import AlignConfig
from align_hf.modeling_align import AlignModel, AlignTextModel
from align_hf.text_fast_path import supports_cls_only


def _text_model(model_type: str = "bert", attention: str = "sdpa", layers: int = 2, dropout: float = 0.0) -> AlignTextModel:
    torch.manual_seed(0)
    config = AlignConfig.from_preset("tiny", text_config={
        "text_model_type": model_type, "num_hidden_layers": layers, "vocab_size": 120,
        "hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout})
    config.text_config._attn_implementation = attention
    return AlignTextModel(config.text_config).double()


def _inputs(batch: int = 5, length: int = 9):
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 120, (batch, length), generator=generator)
    lengths = torch.tensor([length, 3, 7, 1, 5][:batch])
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    return ids * mask, mask


def _pooled_and_grads(model: AlignTextModel, ids, mask, fast: bool, **kwargs):
    model.set_fast_path(fast)
    model.zero_grad()
    pooled = model(input_ids=ids, attention_mask=mask, **kwargs).pooler_output
    (pooled * torch.linspace(-1, 1, pooled.shape[-1], dtype=pooled.dtype)).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return pooled.detach(), grads


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_pooled_output_and_gradients_match_the_full_tower(model_type, attention):
    model = _text_model(model_type, attention)
    assert supports_cls_only(model.transformer)
    ids, mask = _inputs()
    token_types = torch.zeros_like(ids) if model_type == "bert" else None
    full, full_grads = _pooled_and_grads(model, ids, mask, fast=False, token_type_ids=token_types)
    fast, fast_grads = _pooled_and_grads(model, ids, mask, fast=True, token_type_ids=token_types)
    torch.testing.assert_close(fast, full, rtol=1e-10, atol=1e-10)
    assert fast_grads.keys() == full_grads.keys()
    for name in full_grads:
        torch.testing.assert_close(fast_grads[name], full_grads[name], rtol=1e-9, atol=1e-10, msg=name)


def test_one_layer_tower_and_no_mask():
    model = _text_model(layers=1)
    ids, _ = _inputs()
    full, _ = _pooled_and_grads(model, ids, None, fast=False)
    fast, _ = _pooled_and_grads(model, ids, None, fast=True)
    torch.testing.assert_close(fast, full, rtol=1e-10, atol=1e-10)


def test_per_token_outputs_still_come_from_the_full_tower():
    model = _text_model().set_fast_path(True)
    ids, mask = _inputs()
    assert model(input_ids=ids, attention_mask=mask).last_hidden_state is None
    out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    assert out.last_hidden_state.shape == (*ids.shape, model.config.hidden_size)
    torch.testing.assert_close(out.pooler_output, out.last_hidden_state[:, 0])


def test_dropout_in_training_only_changes_values_not_shapes():
    model = _text_model(dropout=0.3).set_fast_path(True).train()
    ids, mask = _inputs()
    first = model(input_ids=ids, attention_mask=mask).pooler_output
    second = model(input_ids=ids, attention_mask=mask).pooler_output
    assert first.shape == second.shape and not torch.allclose(first, second)
    model.eval()
    torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).pooler_output,
                               model.set_fast_path(False)(input_ids=ids, attention_mask=mask).pooler_output)


def test_align_model_fast_path_turns_on_both_towers_and_keeps_the_loss():
    torch.manual_seed(0)
    model = AlignModel(AlignConfig.from_preset("tiny", text_config={"vocab_size": 120})).double().eval()
    ids, mask = _inputs()
    pixels = torch.randn(5, 3, 32, 32, dtype=torch.float64)
    reference = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, return_loss=True)
    model.set_fast_path(True)
    assert model.text_model.fast_path and model.vision_model.fast_path
    fast = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, return_loss=True)
    torch.testing.assert_close(fast.text_embeds, reference.text_embeds, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(fast.loss, reference.loss, rtol=1e-9, atol=1e-10)


def test_left_padding_and_full_rows_are_not_packed_but_still_exact():
    model = _text_model()
    ids, mask = _inputs()
    mask[2, :3] = 0  # a row whose [CLS] slot is padding: nothing is packed then
    full, full_grads = _pooled_and_grads(model, ids, mask, fast=False)
    fast, fast_grads = _pooled_and_grads(model, ids, mask, fast=True)
    torch.testing.assert_close(fast, full, rtol=1e-10, atol=1e-10)
    for name in full_grads:
        torch.testing.assert_close(fast_grads[name], full_grads[name], rtol=1e-9, atol=1e-10, msg=name)
    ones = torch.ones_like(mask)
    torch.testing.assert_close(_pooled_and_grads(model, ids, ones, fast=True)[0],
                               _pooled_and_grads(model, ids, ones, fast=False)[0], rtol=1e-10, atol=1e-10)


def test_gradient_checkpointing_keeps_the_layers_own_forwards():
    model = _text_model(layers=3).train()
    with warnings.catch_warnings():  # transformers 5.2x renames it activation_checkpointing_enable
        warnings.simplefilter("ignore", FutureWarning)
        model.transformer.gradient_checkpointing_enable()
    assert model.transformer.encoder.layer[0].gradient_checkpointing
    ids, mask = _inputs()
    full, full_grads = _pooled_and_grads(model, ids, mask, fast=False)
    fast, fast_grads = _pooled_and_grads(model, ids, mask, fast=True)
    torch.testing.assert_close(fast, full, rtol=1e-10, atol=1e-10)
    for name in full_grads:
        torch.testing.assert_close(fast_grads[name], full_grads[name], rtol=1e-9, atol=1e-10, msg=name)
