"""Fine-tuning with the stock ``transformers.Trainer`` and default ``TrainingArguments``
(``remove_unused_columns=True``): the shipped collator marks batches ``return_loss=True`` and takes
tokens prepared in the dataset (the processor or ``collator.tokenize`` in ``datasets.map``), so the
columns the Trainer keeps are enough. Checked against ``AlignTrainer`` and against gradients
computed by hand."""

from __future__ import annotations

import datasets
import pytest
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from align_hf import AlignConfig, AlignModel
from align_hf.data import (
    ImageTextCollator,
    ImageTransform,
    SyntheticConfig,
    SyntheticCorpus,
    make_tokenizer,
)
from align_hf.training.arguments import AlignTrainingArguments
from align_hf.training.factories import preset_processor
from align_hf.training.trainer import AlignTrainer

NUM_PAIRS = 8


@pytest.fixture(scope="module")
def corpus_setup():
    """8 synthetic 32 px pairs as a ``datasets.Dataset`` (``image``, ``text``) and a processor over
    the corpus vocabulary (captions fit in 32 tokens)."""
    corpus = SyntheticCorpus(
        SyntheticConfig(image_size=32, num_train=NUM_PAIRS, colours=("red", "green", "blue"), shapes=("circle", "square", "star"))
    )
    rows = [corpus.sample("train", i) for i in range(NUM_PAIRS)]
    processor = preset_processor(32, make_tokenizer(corpus.vocab(), model_max_length=32))
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
    raw = datasets.Dataset.from_dict({"image": [r.image for r in rows], "text": [r.caption for r in rows]}, features=features)
    return raw, processor


def new_model(processor, seed: int = 0) -> AlignModel:
    torch.manual_seed(seed)
    text = {"vocab_size": processor.tokenizer.vocab_size, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    config = AlignConfig.from_preset("tiny", vision_config={"image_size": 32}, text_config=text, temperature_init_value=0.1)
    return AlignModel(config).train()


def processed(raw: datasets.Dataset, processor) -> datasets.Dataset:
    """The processor-based recipe: every column becomes a forward argument, so none is dropped."""
    return raw.map(
        lambda batch: processor(text=batch["text"], images=batch["image"], return_tensors=None),
        batched=True,
        remove_columns=raw.column_names,
    )


def stock_args(tmp_path, **kwargs) -> TrainingArguments:
    """Default TrainingArguments except for the run's size, CPU, and no saving/reporting."""
    options = dict(output_dir=str(tmp_path), use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True,
                   per_device_train_batch_size=NUM_PAIRS, logging_steps=1, seed=0)
    options.update(kwargs)
    return TrainingArguments(**options)


def test_collator_marks_the_loss_and_takes_tokens_prepared_in_the_dataset(corpus_setup):
    raw, processor = corpus_setup
    collator = ImageTextCollator(processor.tokenizer, return_loss=True)
    assert "return_loss" not in ImageTextCollator(processor.tokenizer)([{"pixel_values": torch.zeros(3, 32, 32), "text": "a"}])
    pixels = [torch.randn(3, 32, 32) for _ in range(4)]
    from_text = collator([{"pixel_values": p, "text": t} for p, t in zip(pixels, raw["text"][:4])])
    tokenized = raw.select(range(4)).map(collator.tokenize, batched=True, remove_columns=["image", "text"])
    from_tokens = collator([{"pixel_values": p.tolist(), **row} for p, row in zip(pixels, tokenized)])
    assert from_text["return_loss"] is True and from_tokens["return_loss"] is True
    assert set(from_text) == set(from_tokens) == {"pixel_values", "input_ids", "attention_mask", "return_loss"}
    for key in ("pixel_values", "input_ids", "attention_mask"):
        assert torch.equal(from_text[key], from_tokens[key]), key
    # What the Trainer's column removal leaves of raw captions: a clear error, not a KeyError.
    with pytest.raises(ValueError, match="remove_unused_columns"):
        collator([{"pixel_values": pixels[0]}])


def test_stock_trainer_with_default_arguments_lowers_the_loss(corpus_setup, tmp_path):
    raw, processor = corpus_setup
    train = processed(raw, processor)
    collator = ImageTextCollator(processor.tokenizer, return_loss=True)
    model = new_model(processor)
    batch = collator(list(train))

    def loss() -> float:
        with torch.no_grad():  # train mode: the objective the optimiser saw
            return model(**batch).loss.item()

    before = loss()
    steps = 10
    args = stock_args(tmp_path, max_steps=steps, learning_rate=5e-3, warmup_steps=0)
    assert args.remove_unused_columns and args.gradient_accumulation_steps == 1
    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=collator)
    trainer.train()
    after = loss()
    assert after < before - 0.3, (before, after)
    logged = [e["loss"] for e in trainer.state.log_history if "loss" in e and "step" in e]
    assert len(logged) == steps and logged[0] == pytest.approx(before, rel=1e-4)
    # Evaluation: the stock prediction loop reads return_loss from the batch.
    model.eval()
    with torch.no_grad():
        expected = model(**batch).loss.item()
    metrics = trainer.evaluate(train)
    assert metrics["eval_loss"] == pytest.approx(expected, rel=1e-5)


def test_stock_trainer_loss_equals_align_trainer_loss(corpus_setup, tmp_path):
    raw, processor = corpus_setup
    collator = ImageTextCollator(processor.tokenizer, return_loss=True)
    transform = ImageTransform.from_image_processor(processor.image_processor, train=False)
    samples = [{"pixel_values": transform(image), "text": text} for image, text in zip(raw["image"], raw["text"])]
    batch = collator(samples)

    stock_model, align_model = new_model(processor), new_model(processor)
    stock = Trainer(model=stock_model, args=stock_args(tmp_path / "stock", max_steps=1), data_collator=collator)
    aligned = AlignTrainer(
        model=align_model,
        args=AlignTrainingArguments(output_dir=str(tmp_path / "align"), use_cpu=True, report_to="none", save_strategy="no",
                                    disable_tqdm=True, per_device_train_batch_size=NUM_PAIRS, max_steps=1, logging_steps=1,
                                    optimizer="adamw", train_sampling_strategy="sequential"),
        train_dataset=samples,
        processing_class=processor,
    )
    with torch.no_grad():
        stock_loss = stock.compute_loss(stock_model, dict(batch))
        align_loss = aligned.compute_loss(align_model, dict(batch))
    assert torch.isfinite(stock_loss)
    torch.testing.assert_close(stock_loss, align_loss, rtol=1e-6, atol=0)

    # The first logged training loss (before any update) of a whole run of each trainer.
    stock = Trainer(
        model=stock_model,
        args=stock_args(tmp_path / "stock", max_steps=1, train_sampling_strategy="sequential"),
        train_dataset=datasets.Dataset.from_list([{**s, "pixel_values": s["pixel_values"].tolist()} for s in samples]).map(
            collator.tokenize, batched=True, remove_columns=["text"]
        ),
        data_collator=collator,
    )
    stock.train()
    aligned.train()
    first = lambda t: next(e["loss"] for e in t.state.log_history if "loss" in e)
    assert first(stock) == pytest.approx(first(aligned), rel=1e-5)
    assert first(stock) == pytest.approx(stock_loss.item(), rel=1e-5)


def test_stock_trainer_gradient_accumulation_averages_micro_batch_losses(corpus_setup, tmp_path):
    """With gradient_accumulation_steps=2 the stock Trainer's gradient is that of
    (loss(micro-batch 1) + loss(micro-batch 2)) / 2, each loss a contrastive mean over its own 4
    pairs. It is NOT the gradient of the contrastive loss of the 8 pairs together: a pair's
    negatives are its micro-batch's, so the loss is not additive across micro-batches."""
    raw, processor = corpus_setup
    train = processed(raw, processor)
    model = new_model(processor, seed=1)
    reference = AlignModel(model.config).train()
    reference.load_state_dict(model.state_dict())
    collator = ImageTextCollator(processor.tokenizer, return_loss=True)
    seen: list[dict] = []

    def recording_collator(samples):
        batch = collator(samples)
        seen.append({k: v.clone() if torch.is_tensor(v) else v for k, v in batch.items()})
        return batch

    captured: dict[str, torch.Tensor] = {}

    class Capture(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            captured.update({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})

    args = stock_args(tmp_path, max_steps=1, per_device_train_batch_size=4, gradient_accumulation_steps=2, max_grad_norm=0.0)
    Trainer(model=model, args=args, train_dataset=train, data_collator=recording_collator, callbacks=[Capture()]).train()

    micro = seen[:2]
    assert [b["pixel_values"].shape[0] for b in micro] == [4, 4]
    for batch in micro:
        (reference(**batch).loss / 2).backward()
    expected = {n: p.grad.clone() for n, p in reference.named_parameters() if p.grad is not None}
    assert set(captured) == set(expected)
    for name, grad in expected.items():
        torch.testing.assert_close(captured[name], grad, atol=1e-6, rtol=1e-4, msg=name)

    # The 8-pair loss has other negatives, hence another gradient.
    reference.zero_grad()
    whole = {k: torch.cat([b[k] for b in micro]) for k in ("pixel_values", "attention_mask")}
    whole["input_ids"] = torch.cat([b["input_ids"] for b in micro])
    reference(**whole, return_loss=True).loss.backward()
    gap = max((reference.get_parameter(n).grad - g).abs().max().item() for n, g in expected.items())
    assert gap > 1e-3
