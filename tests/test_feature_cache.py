"""Feature-cached accumulation (``--accum_freq``): K micro-batches contrasted as one batch.

* float64, BatchNorm frozen, no dropout: the loss and every parameter gradient equal those of one
  batch of K x N pairs to 1e-6 (softmax and sigmoid heads);
* with dropout and BatchNorm in train mode: equal to K forwards kept with their graphs under the
  same RNG stream (the cached and re-forward passes draw the same dropout masks; BatchNorm
  running statistics are updated once per micro-batch);
* peak memory (bytes of live CPU tensors, from the profiler's allocation events) stays that of one
  micro-batch plus O(K N d), while one K x N batch needs several times more;
* through ``AlignTrainer``: the step's gradients equal the one-batch step's, and differ from the
  stock ``gradient_accumulation_steps`` (which adds no negatives).
"""

from __future__ import annotations

import os

import pytest
import torch
from transformers import TrainerCallback

from align_hf.testing import peak_cpu_allocation, tiny_model
from align_hf.training.arguments import AlignTrainingArguments
from align_hf.training.feature_cache import feature_cached_step, split_micro_batches
from align_hf.training.freezing import freeze_batch_norm

K, N = 4, 3


def _batch(size: int, image_size: int = 32, dtype=torch.float64, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(size, 12, dtype=torch.long)
    mask[::2, 7:] = 0  # padded captions too
    return {
        "pixel_values": torch.randn(size, 3, image_size, image_size, generator=g, dtype=dtype),
        "input_ids": torch.randint(5, 1000, (size, 12), generator=g),
        "attention_mask": mask,
    }


def _model(dropout: float = 0.0, frozen_bn: bool = True, **overrides) -> torch.nn.Module:
    text = {"hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}
    overrides.setdefault("vision_config", {})["image_size"] = 32
    model = tiny_model(seed=0, text_config=text, **overrides).double().train()
    if frozen_bn:
        freeze_batch_norm(model)
    return model


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same_grads(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for name, grad in expected.items():
        # atol only matters for gradients that are zero in exact arithmetic (attention key biases, ~1e-20)
        torch.testing.assert_close(actual[name], grad, rtol=1e-6, atol=1e-12, msg=name)


def test_split_micro_batches_cuts_batched_tensors_only():
    batch = {"input_ids": torch.arange(10).reshape(5, 2), "pixel_values": torch.zeros(5, 3), "return_loss": True}
    parts = split_micro_batches(batch, 2)
    assert [p["input_ids"].shape[0] for p in parts] == [3, 2]
    assert torch.equal(torch.cat([p["input_ids"] for p in parts]), batch["input_ids"])
    assert all(p["return_loss"] is True for p in parts)
    assert parts[0]["input_ids"].data_ptr() == batch["input_ids"].data_ptr()  # views, no copies
    with pytest.raises(ValueError, match="disagree"):
        split_micro_batches({"a": torch.zeros(4), "b": torch.zeros(3)}, 2)
    with pytest.raises(ValueError, match="cannot feed"):
        split_micro_batches({"a": torch.zeros(2)}, 3)


@pytest.mark.parametrize("loss_type", ["softmax", "sigmoid"])
def test_equals_one_batch_of_k_times_n_in_float64(loss_type):
    batch = _batch(K * N)
    reference = _model(loss_type=loss_type)
    expected = reference(**batch, return_loss=True, return_logits=False)
    expected.loss.backward()

    model = _model(loss_type=loss_type)
    out = feature_cached_step(model, split_micro_batches(batch, K), model.contrastive_head)

    assert out.loss.dtype == torch.float64
    torch.testing.assert_close(out.loss, expected.loss.detach(), rtol=1e-6, atol=0)
    torch.testing.assert_close(out.i2t_accuracy, expected.image_to_text_accuracy)
    grads = _grads(model)
    assert "contrastive_head.temperature" in grads and (loss_type == "softmax" or "contrastive_head.bias" in grads)
    assert len(grads) == sum(p.requires_grad for p in model.parameters())
    _assert_same_grads(grads, _grads(reference))

    # The same micro-batches, each contrasted only with itself (plain accumulation), give other gradients.
    plain = _model(loss_type=loss_type)
    for micro in split_micro_batches(batch, K):
        (plain(**micro, return_loss=True, return_logits=False).loss / K).backward()
    differs = max((plain_grad - grads[n]).abs().max().item() / grads[n].abs().max().item()
                  for n, plain_grad in _grads(plain).items() if grads[n].abs().max() > 0)
    assert differs > 1e-2


def test_dropout_masks_and_batch_norm_updates_are_replayed():
    """Dropout on, BatchNorm in train mode: the reference keeps K graphs under the same RNG stream."""
    batch = _batch(K * N, seed=1)
    micro = split_micro_batches(batch, K)

    reference = _model(dropout=0.2, frozen_bn=False, vision_config={"drop_path_rate": 0.2})
    torch.manual_seed(123)
    outs = [reference(**m, return_loss=False, return_logits=False) for m in micro]
    images = torch.cat([o.image_embeds for o in outs])
    texts = torch.cat([o.text_embeds for o in outs])
    expected = reference.contrastive_head(images, texts)
    expected.loss.backward()
    next_reference_draw = torch.rand(4)

    model = _model(dropout=0.2, frozen_bn=False, vision_config={"drop_path_rate": 0.2})
    torch.manual_seed(123)
    out = feature_cached_step(model, micro, model.contrastive_head)
    next_draw = torch.rand(4)

    torch.testing.assert_close(out.loss, expected.loss.detach(), rtol=1e-6, atol=0)
    _assert_same_grads(_grads(model), _grads(reference))
    # BatchNorm statistics: updated once per micro-batch, as the reference's K forwards did.
    for (name, buffer), (_, ref_buffer) in zip(model.named_buffers(), reference.named_buffers()):
        torch.testing.assert_close(buffer, ref_buffer, rtol=1e-9, atol=1e-12, msg=name)
    assert int(model.vision_model.backbone.bn1.num_batches_tracked) == K
    # The RNG stream continues where K plain forwards leave it.
    assert torch.equal(next_draw, next_reference_draw)
    # The test can fail: dropout is live (another seed draws other masks, another loss).
    torch.manual_seed(124)
    with torch.no_grad():
        other = model(**micro[0], return_loss=False, return_logits=False)
    assert not torch.allclose(other.text_embeds, outs[0].text_embeds.detach())


def test_peak_memory_is_one_micro_batch_plus_cached_embeddings():
    torch.set_num_threads(min(4, torch.get_num_threads()))
    size, n = 96, 4  # 96 px: activations dominate
    model = tiny_model(seed=0, vision_config={"image_size": size}).train()
    d = model.config.projection_dim
    one = _batch(n, image_size=size, dtype=torch.float32)
    # Parameter gradients exist from the first micro-batch on in any accumulation: allocate them
    # first so each measurement counts activations and caches only.
    model(**one, return_loss=True, return_logits=False).loss.backward()

    def micro_step():
        model(**one, return_loss=True, return_logits=False).loss.backward()

    peak_micro = peak_cpu_allocation(micro_step)
    rng_bytes = torch.get_rng_state().numel()
    bn_bytes = sum(b.numel() * b.element_size() for m in model.modules()
                   if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for b in m.buffers())
    for k in (4, 8):
        big = _batch(k * n, image_size=size, dtype=torch.float32, seed=k)
        peak_cached = peak_cpu_allocation(lambda big=big, k=k: feature_cached_step(model, split_micro_batches(big, k), model.contrastive_head))
        peak_big = peak_cpu_allocation(lambda big=big: model(**big, return_loss=True, return_logits=False).loss.backward())
        # O(K N d): image and text embeddings and their gradients (4 x K N d floats), with twice
        # that for concatenation copies; plus K + 1 RNG states, the BatchNorm snapshot, and 64 KiB
        # for the per-micro-batch (N, N) logits and small temporaries.
        allowance = 8 * k * n * d * 4 + (k + 1) * rng_bytes + bn_bytes + 64 * 1024
        assert peak_cached <= peak_micro + allowance, (k, peak_micro, peak_cached, allowance)
        # The measurement can tell: one K x N batch holds K micro-batches' activations.
        assert peak_big - peak_micro > 0.5 * (k - 1) * (peak_micro - bn_bytes) > 10 * allowance, (k, peak_micro, peak_big)


# ------------------------------------------------------------------------------------------------ trainer


def test_arguments_give_accum_freq_one_meaning(tmp_path):
    args = AlignTrainingArguments(output_dir=str(tmp_path), use_cpu=True, per_device_train_batch_size=4, accum_freq=3)
    assert args.train_batch_size == 12  # what one process loads per optimiser step
    with pytest.raises(ValueError, match="replaces gradient_accumulation_steps"):
        AlignTrainingArguments(output_dir=str(tmp_path), use_cpu=True, accum_freq=2, gradient_accumulation_steps=2)
    with pytest.raises(ValueError, match="accum_freq must be"):
        AlignTrainingArguments(output_dir=str(tmp_path), use_cpu=True, accum_freq=0)
    with pytest.raises(ValueError, match="contradict"):
        AlignTrainingArguments(output_dir=str(tmp_path), use_cpu=True, sync_batch_norm=True, freeze_batch_norm=True)


def _trainer_step_grads(corpus, tmp_path, **kwargs):
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from test_trainer import fixed_samples, tiny_setup, training_args

    from align_hf.training.trainer import AlignTrainer

    model, processor = tiny_setup(corpus, seed=1)
    samples = fixed_samples(corpus, processor, 8)
    captured = {}

    class Capture(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **_):
            captured.update({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})

    args = training_args(tmp_path, max_steps=1, max_grad_norm=0.0, optimizer="adamw", freeze_batch_norm=True,
                         eval_on_end=False, **kwargs)
    trainer = AlignTrainer(model=model, args=args, train_dataset=samples, processing_class=processor, callbacks=[Capture()])
    trainer.train()
    logged = [e for e in trainer.state.log_history if "loss" in e and "step" in e]
    return captured, logged[0], trainer


def test_trainer_accum_freq_step_equals_one_batch_step(train_corpus, tmp_path):
    expected, expected_log, _ = _trainer_step_grads(train_corpus, tmp_path / "one", per_device_train_batch_size=8)
    grads, log, trainer = _trainer_step_grads(train_corpus, tmp_path / "cached", per_device_train_batch_size=2, accum_freq=4)
    assert trainer.get_total_train_batch_size(trainer.args) == 8
    assert log["loss"] == pytest.approx(expected_log["loss"], rel=1e-6)
    assert log["text_to_image_accuracy"] == pytest.approx(expected_log["text_to_image_accuracy"])
    assert grads.keys() == expected.keys() and len(grads) > 50
    for name, grad in expected.items():
        # float32: micro-batch sums round differently from the one-batch sums; the absolute floor covers
        # gradients that are zero in exact arithmetic (attention key biases)
        atol = max(1e-5 * grad.abs().max().item(), 1e-6)
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=atol, msg=name)
    plain, plain_log, _ = _trainer_step_grads(train_corpus, tmp_path / "plain", per_device_train_batch_size=2,
                                              gradient_accumulation_steps=4)
    assert plain_log["loss"] != pytest.approx(expected_log["loss"], rel=1e-3)  # 2-pair batches: other loss
    assert not torch.allclose(plain["text_projection.weight"], expected["text_projection.weight"], rtol=1e-2)
