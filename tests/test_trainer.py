"""AlignTrainer: the loss goes down, the recipe's optimiser/schedule, gradient accumulation,
freezing, whole-set evaluation against the one-by-one reference, and exact resumption after a
kill (including a kill in the middle of writing a checkpoint)."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from align_hf import AlignConfig, AlignModel
from align_hf.data import ImageTextCollator, clean_caption, ImageTransform, load_manifest, load_pairs, make_tokenizer
from align_hf.evaluation import evaluate_retrieval, evaluate_zero_shot
from align_hf.image_io import open_image as load_image
from align_hf.training.factories import preset_processor
from align_hf.evaluation.eval_sets import RetrievalEvalSet, ZeroShotEvalSet
from align_hf.training.checkpointing import STAGING_PREFIX
from align_hf.training.freezing import can_fuse_adamw, parameter_groups
from align_hf.training.trainer import AlignTrainer
from align_hf.training.arguments import AlignTrainingArguments


def tiny_setup(corpus, seed: int = 0, **overrides):
    """A 32 px tiny model without dropout and its processor over the corpus vocabulary."""
    with open(os.path.join(corpus, "vocab.txt"), encoding="utf-8") as handle:
        vocab = [line.rstrip("\n") for line in handle if line.strip()]
    processor = preset_processor(32, make_tokenizer(vocab, model_max_length=32))
    torch.manual_seed(seed)
    text = {"vocab_size": len(vocab), "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    text.update(overrides.pop("text_config", {}))
    config = AlignConfig.from_preset(
        "tiny", vision_config={"image_size": 32}, text_config=text, temperature_init_value=0.1, **overrides
    )
    return AlignModel(config).train(), processor


def fixed_samples(corpus, processor, n: int) -> list[dict]:
    """``n`` training pairs, centre-cropped once, as ready samples for the stock Trainer path."""
    transform = ImageTransform.from_image_processor(processor.image_processor, train=False)
    rows = list(load_pairs(os.path.join(corpus, "train")))[:n]
    return [{"pixel_values": transform(load_image(r["image"])), "text": clean_caption(r["text"])[0]} for r in rows]


def training_args(tmp_path, **kwargs) -> AlignTrainingArguments:
    defaults = dict(
        output_dir=str(tmp_path), use_cpu=True, disable_tqdm=True, save_strategy="no", logging_steps=1,
        per_device_train_batch_size=8, train_sampling_strategy="sequential", seed=0,
    )
    defaults.update(kwargs)
    return AlignTrainingArguments(**defaults)


def test_parameter_groups_keep_decay_off_norms_biases_and_temperature(train_corpus):
    model, _ = tiny_setup(train_corpus)
    decay, no_decay = parameter_groups(model, 1e-5)
    assert decay["weight_decay"] == 1e-5 and no_decay["weight_decay"] == 0.0
    decayed = {id(p) for p in decay["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert id(model.contrastive_head.temperature) not in decayed
    for module in model.modules():
        if isinstance(module, (torch.nn.LayerNorm, torch.nn.modules.batchnorm._BatchNorm)):
            assert all(id(p) not in decayed for p in module.parameters(recurse=False))
    assert all(not names[i].endswith("bias") for i in decayed)
    assert id(model.text_projection.weight) in decayed
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_training_lowers_the_loss_with_lamb_and_a_linear_schedule(train_corpus, tmp_path):
    model, processor = tiny_setup(train_corpus)
    samples = fixed_samples(train_corpus, processor, 8)
    batch = ImageTextCollator(processor.tokenizer)(samples)

    def loss() -> float:
        with torch.no_grad():  # train mode: the objective the optimiser saw
            return model(**batch, return_loss=True).loss.item()

    before = loss()
    steps, warmup, lr = 20, 2, 1e-2
    args = training_args(tmp_path, max_steps=steps, warmup_steps=warmup, learning_rate=lr)
    trainer = AlignTrainer(model=model, args=args, train_dataset=samples, processing_class=processor)
    trainer.train()
    after = loss()
    assert after < before - 0.3, (before, after)

    from timm.optim import Lamb

    assert isinstance(getattr(trainer.optimizer, "optimizer", trainer.optimizer), Lamb)  # under accelerate's wrapper
    logs = [e for e in trainer.state.log_history if "loss" in e and "step" in e]
    assert [e["step"] for e in logs] == list(range(1, steps + 1))
    # Logged after the optimiser step, before the scheduler step: the rate step k-1 ran with.
    expected = [lr * (k / warmup if k < warmup else (steps - k) / (steps - warmup)) for k in range(steps)]
    assert [e["learning_rate"] for e in logs] == pytest.approx(expected, rel=1e-6)
    last = logs[-1]
    assert 0 < last["temperature"] < 1 and 0 <= last["image_to_text_accuracy"] <= 1
    assert last["text_to_image_accuracy"] > 0.5  # 8 memorised pairs
    assert last["pairs_per_second"] > 0


def test_gradient_accumulation_averages_micro_batch_gradients(train_corpus, tmp_path):
    model, processor = tiny_setup(train_corpus, seed=1)
    reference = AlignModel(model.config).train()
    reference.load_state_dict(model.state_dict())
    reference.set_fast_path(True)  # as AlignTrainer trains (fast_path=True): same ops, same rounding
    samples = fixed_samples(train_corpus, processor, 8)
    collate = ImageTextCollator(processor.tokenizer)
    for half in (samples[:4], samples[4:]):
        (reference(**collate(half), return_loss=True).loss / 2).backward()
    expected = {n: p.grad.clone() for n, p in reference.named_parameters()}

    captured = {}

    class Capture(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            captured.update({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})

    args = training_args(tmp_path, max_steps=1, per_device_train_batch_size=4, gradient_accumulation_steps=2,
                         max_grad_norm=0.0, optimizer="adamw")
    AlignTrainer(model=model, args=args, train_dataset=samples, processing_class=processor, callbacks=[Capture()]).train()
    assert set(captured) == set(expected)
    for name, grad in expected.items():
        torch.testing.assert_close(captured[name], grad, atol=1e-6, rtol=1e-4, msg=name)


def test_adamw_uses_torchs_fused_kernel_where_it_applies(train_corpus, tmp_path):
    model, processor = tiny_setup(train_corpus)
    samples = fixed_samples(train_corpus, processor, 4)
    trainer = AlignTrainer(model=model, args=training_args(tmp_path, max_steps=1, optimizer="adamw"),
                           train_dataset=samples, processing_class=processor)
    trainer.train()
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["fused"]
    assert not can_fuse_adamw([{"params": [torch.nn.Parameter(torch.zeros(2, device="meta"))]}])
    assert not can_fuse_adamw([{"params": []}])


def test_freezing_towers_and_batch_norm(train_corpus, tmp_path):
    samples = None
    for option in ("freeze_vision_tower", "freeze_batch_norm"):
        model, processor = tiny_setup(train_corpus, seed=2)
        samples = samples or fixed_samples(train_corpus, processor, 8)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        args = training_args(tmp_path / option, max_steps=2, optimizer="adamw", **{option: True})
        AlignTrainer(model=model, args=args, train_dataset=samples, processing_class=processor).train()
        after = model.state_dict()
        changed = {k for k in before if not torch.equal(before[k], after[k])}
        running = {k for k in before if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
        assert not changed & running, option  # BatchNorm statistics never move
        assert any(k.startswith("text_model.") for k in changed)
        if option == "freeze_vision_tower":
            assert not any(k.startswith(("vision_model.", "image_projection.")) for k in changed)
        else:
            assert any(k.startswith("vision_model.") and k.endswith(".weight") for k in changed)


def test_evaluation_matches_one_by_one_reference(train_corpus, tmp_path):
    model, processor = tiny_setup(train_corpus, seed=3)
    model.eval()
    manifest = load_manifest(train_corpus)
    retrieval_rows = list(load_pairs(os.path.join(train_corpus, "retrieval")))
    zero_shot_rows = list(load_pairs(os.path.join(train_corpus, "zeroshot")))
    sets = [
        RetrievalEvalSet(retrieval_rows, caption_column="meta.captions"),
        ZeroShotEvalSet(zero_shot_rows, manifest["class_names"], templates=manifest["zeroshot_templates"],
                        label_column="meta.label_index", subsets={"unseen": manifest["unseen_class_names"]}),
    ]
    trainer = AlignTrainer(model=model, args=training_args(tmp_path, per_device_eval_batch_size=5), eval_dataset=sets,
                           processing_class=processor)
    metrics = trainer.evaluate()
    ref = evaluate_retrieval(model, processor, retrieval_rows, caption_column="meta.captions", batch_size=1, progress=False)
    for key in ("image_to_text_R@1", "image_to_text_R@5", "text_to_image_R@1", "text_to_image_R@10"):
        assert metrics[f"eval_retrieval_{key}"] == pytest.approx(ref[key])
    assert metrics["eval_retrieval_num_texts"] == 2 * len(retrieval_rows)
    zs = evaluate_zero_shot(model, processor, zero_shot_rows, manifest["class_names"], manifest["zeroshot_templates"],
                            label_column="meta.label_index", batch_size=1, progress=False)
    assert metrics["eval_zero_shot_top1"] == pytest.approx(zs["top1"])
    assert metrics["eval_zero_shot_chance"] == pytest.approx(1 / 9)
    # Unseen-combination top-1 by brute force: each image against every class prompt set.
    unseen = set(manifest["unseen_class_names"])
    hits = []
    for row in zero_shot_rows:
        meta = __import__("json").loads(row["meta"])
        if meta["label"] in unseen:
            single = evaluate_zero_shot(model, processor, [row], manifest["class_names"], manifest["zeroshot_templates"],
                                        label_column="meta.label_index", progress=False)
            hits.append(single["top1"])
    assert metrics["eval_zero_shot_unseen_num_samples"] == len(hits) == 3
    assert metrics["eval_zero_shot_unseen_top1"] == pytest.approx(sum(hits) / len(hits))


class KillDuringSave(TrainerCallback):
    """Simulates a kill: raises while the checkpoint of ``step`` is being written."""

    def __init__(self, trainer, step):
        original = trainer._save_rng_state

        def save_rng_state(output_dir):
            if trainer.state.global_step == step:
                raise KeyboardInterrupt("killed while writing a checkpoint")
            return original(output_dir)

        trainer._save_rng_state = save_rng_state


def test_resume_after_a_kill_continues_the_same_run(train_corpus, tmp_path):
    source = os.path.join(train_corpus, "train")

    def make_trainer(output_dir):
        model, processor = tiny_setup(train_corpus, seed=5, text_config={"hidden_dropout_prob": 0.1})
        args = training_args(output_dir, max_steps=4, save_strategy="steps", save_steps=2, warmup_steps=1,
                             train_sampling_strategy="random")
        return AlignTrainer(model=model, args=args, train_dataset=source, processing_class=processor)

    straight = make_trainer(tmp_path / "straight")
    straight.train()

    killed = make_trainer(tmp_path / "killed")
    KillDuringSave(killed, step=4)
    with pytest.raises(KeyboardInterrupt):
        killed.train()
    out = tmp_path / "killed"
    assert sorted(p for p in os.listdir(out) if not p.startswith(STAGING_PREFIX)) == ["checkpoint-2"]
    assert get_last_checkpoint(out) == str(out / "checkpoint-2")  # the half-written one is invisible

    resumed = make_trainer(out)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 4
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)
    state_a, state_b = straight.optimizer.state_dict(), resumed.optimizer.state_dict()
    for key in state_a["state"]:
        for slot in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(state_a["state"][key][slot], state_b["state"][key][slot], atol=1e-7, rtol=1e-5)
    assert straight.lr_scheduler.get_last_lr() == resumed.lr_scheduler.get_last_lr()
    def losses(trainer):
        return {e["step"]: e["loss"] for e in trainer.state.log_history if "loss" in e and e["step"] > 2}

    assert losses(resumed) == pytest.approx(losses(straight)) and sorted(losses(resumed)) == [3, 4]
    assert os.path.isdir(out / "checkpoint-4") and not any(p.startswith(STAGING_PREFIX) for p in os.listdir(out))


def test_activation_checkpointing_and_bf16_autocast_options(train_corpus, tmp_path):
    """Activation checkpointing gives the same gradients; bf16 autocast trains with a close loss."""
    grads, losses = {}, {}

    class Capture(TrainerCallback):
        def __init__(self, name):
            self.name = name

        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            grads[self.name] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    samples = None
    for name, options in (("plain", {}), ("checkpointed", {"activation_checkpointing": True}), ("bf16", {"bf16": True})):
        model, processor = tiny_setup(train_corpus, seed=4)
        samples = samples or fixed_samples(train_corpus, processor, 8)
        args = training_args(tmp_path / name, max_steps=1, max_grad_norm=0.0, optimizer="adamw", **options)
        trainer = AlignTrainer(model=model, args=args, train_dataset=samples, processing_class=processor,
                               callbacks=[Capture(name)])
        trainer.train()
        losses[name] = trainer.state.log_history[0]["loss"]
        checkpointing = trainer.model.vision_model.backbone.grad_checkpointing
        assert checkpointing == (name == "checkpointed") and trainer.model.text_model.transformer.is_activation_checkpointing == checkpointing
    assert losses["checkpointed"] == pytest.approx(losses["plain"], rel=1e-6)
    for key, grad in grads["plain"].items():
        torch.testing.assert_close(grads["checkpointed"][key], grad, atol=1e-6, rtol=1e-4, msg=key)
    assert losses["bf16"] == pytest.approx(losses["plain"], rel=0.05) and losses["bf16"] != losses["plain"]


def test_time_budget_stops_the_run_with_the_learning_rate_decayed(train_corpus, tmp_path):
    model, processor = tiny_setup(train_corpus, seed=6)
    samples = fixed_samples(train_corpus, processor, 8)
    args = training_args(tmp_path, max_steps=50, warmup_steps=0, optimizer="adamw", max_train_seconds=1e-6)
    trainer = AlignTrainer(model=model, args=args, train_dataset=samples, processing_class=processor)
    trainer.train()
    assert trainer.state.global_step == 1  # the budget was spent by the end of the first step
    assert trainer.lr_scheduler.get_last_lr() == [0.0, 0.0]  # and the schedule reached its end with it
    generous = AlignTrainer(model=tiny_setup(train_corpus, seed=6)[0], processing_class=processor, train_dataset=samples,
                            args=training_args(tmp_path / "b", max_steps=3, warmup_steps=0, optimizer="adamw",
                                               max_train_seconds=3600))
    generous.train()
    logged = [e["learning_rate"] for e in generous.state.log_history if "loss" in e and "step" in e]
    assert generous.state.global_step == 3 and logged == pytest.approx([1e-3, 1e-3 * 2 / 3, 1e-3 / 3], rel=1e-3)


def test_preset_processor_sizes_with_and_without_crop(train_corpus):
    tokenizer = tiny_setup(train_corpus)[1].tokenizer
    cropped = preset_processor(289, tokenizer).image_processor
    assert (cropped.size["height"], cropped.crop_size["height"]) == (346, 289)
    assert preset_processor(32, tokenizer).image_processor.size["height"] == 38  # 32 * 346 / 289, rounded
    whole = preset_processor(64, tokenizer, crop=False).image_processor
    assert (whole.size["height"], whole.crop_size["height"]) == (64, 64)


def test_build_train_stream_is_the_trainers_stream(train_corpus, tmp_path):
    from align_hf.data.pipeline import ImageTextPairs, build_train_stream
    from align_hf.data.transforms import LEFT_RIGHT_SWAP

    model, processor = tiny_setup(train_corpus)
    source = os.path.join(train_corpus, "train")
    stream = build_train_stream(source, processor.image_processor, seed=3, flip_swap=LEFT_RIGHT_SWAP, shuffle_buffer=16)
    sample = next(iter(stream))
    assert sample["pixel_values"].shape == (3, 32, 32) and isinstance(sample["text"], str)
    assert stream.seed == 3 and stream.flip_swap is LEFT_RIGHT_SWAP
    with pytest.raises(ValueError, match="image_processor"):
        build_train_stream(source)

    trainer = AlignTrainer(model=model, args=training_args(tmp_path, max_steps=1), train_dataset=source,
                           processing_class=processor, flip_swap=LEFT_RIGHT_SWAP)
    assert isinstance(trainer.train_dataset, ImageTextPairs) and trainer.train_dataset.flip_swap is LEFT_RIGHT_SWAP
    assert trainer.train_transform is not None and trainer.data_stats() is None  # nothing streamed yet
    trainer.train()
    stats = trainer.data_stats()
    assert stats.kept >= 8 and stats.total >= stats.kept


def test_data_stats_is_none_for_map_style_data(train_corpus, tmp_path):
    model, processor = tiny_setup(train_corpus)
    trainer = AlignTrainer(model=model, args=training_args(tmp_path, max_steps=1),
                           train_dataset=fixed_samples(train_corpus, processor, 8), processing_class=processor)
    trainer.train()
    assert trainer.data_stats() is None


def test_run_training_rejects_other_tasks(tmp_path):
    from align_hf.training.arguments import DataArguments, ModelArguments
    from align_hf.training.pretrain import run_training

    with pytest.raises(ValueError, match="run_classification"):
        run_training(ModelArguments(), DataArguments(task="classification", train_data="x"), training_args(tmp_path))
    with pytest.raises(ValueError, match="train_data"):
        run_training(ModelArguments(), DataArguments(), training_args(tmp_path))
