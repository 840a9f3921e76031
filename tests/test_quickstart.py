"""``align-hf quickstart`` end to end, shortened: corpus, training, evaluation, the files it promises."""

from __future__ import annotations

import json

import pytest

from align_hf.cli import main
from align_hf.training.quickstart import QuickstartRecipe, apply_overrides


@pytest.mark.slow
def test_quickstart_writes_metrics_model_and_curves(tmp_path, capsys):
    out = tmp_path / "quickstart"
    code = main(["quickstart", "--output-dir", str(out), "--num-train", "300", "--steps", "4", "--batch-size", "16",
                 "--workers", "1", "--no-progress", "--threads", "2", "--set", "image_size=48"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("zero_shot_top1", "zero_shot_chance", "zero_shot_top1_unseen_combinations",
                "text_to_image_recall@1", "image_to_text_recall@1", "train_seconds"):
        assert key in metrics, key
    assert metrics["zero_shot_chance"] == pytest.approx(1 / 48)
    assert 0.0 <= metrics["zero_shot_top1"] <= 1.0 and metrics["train_seconds"] > 0
    assert (out / "model" / "config.json").is_file() and (out / "model" / "model.safetensors").is_file()
    assert (out / "model" / "README.md").is_file()
    # The image size reaches corpus, model and processor alike; the images go in whole (no crop).
    images = json.loads((out / "model" / "processor_config.json").read_text())["image_processor"]
    assert images["size"] == images["crop_size"] == {"height": 48, "width": 48}
    assert json.loads((out / "corpus" / "manifest.json").read_text())["config"]["image_size"] == 48
    assert json.loads((out / "model" / "config.json").read_text())["vision_config"]["image_size"] == 48
    assert (out / "training_curves.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "zero-shot top-1" in printed and "chance level" in printed and "text->image recall@1" in printed


def test_recipe_overrides_are_typed_and_checked():
    recipe = apply_overrides(QuickstartRecipe(), ["learning_rate=1e-3", "steps=7", "learnable_temperature=false"])
    assert recipe.learning_rate == 1e-3 and recipe.steps == 7 and recipe.learnable_temperature is False
    with pytest.raises(SystemExit, match="FIELD=VALUE"):
        apply_overrides(QuickstartRecipe(), ["no_such_field=1"])


def _decoded_and_streamed(corpus, train: bool):
    from align_hf.data.decoded import decode_once
    from align_hf.data.pipeline import ImageTextPairs
    from align_hf.data.sources import load_pairs
    from align_hf.data.transforms import LEFT_RIGHT_SWAP, ImageTransform
    from align_hf.training.factories import build_filter

    source = str(corpus / "train")
    align_filter = build_filter("small", source, 32, progress=False)
    transform = ImageTransform(32, train=train, seed=0)
    decoded = decode_once(load_pairs(source), transform, filter=align_filter, flip_swap=LEFT_RIGHT_SWAP, progress=False)
    streamed = list(ImageTextPairs(load_pairs(source), ImageTransform(32, train=False), filter=align_filter, rank=0, world_size=1))
    return decoded, streamed


def test_decoded_cache_equals_decoding_the_files(train_corpus):
    """The pre-decoded cache holds exactly what the streaming pipeline yields (same filter, same counts)."""
    import torch

    decoded, streamed = _decoded_and_streamed(train_corpus, train=False)
    assert decoded.stats.total == 64 and 0 < len(decoded) == len(streamed) == decoded.stats.kept
    assert decoded.pixels.dtype == torch.uint8 and tuple(decoded.pixels.shape[1:]) == (3, 32, 32)
    for index, sample in enumerate(streamed):
        item = decoded[index]
        assert item["text"] == sample["text"]
        torch.testing.assert_close(item["pixel_values"], sample["pixel_values"], rtol=0, atol=0)


def test_decoded_cache_flips_images_and_captions_together(train_corpus):
    """Training mode: a flipped image gets its left/right words swapped; draws differ by epoch but repeat per epoch."""
    import torch

    from align_hf.data.transforms import LEFT_RIGHT_SWAP, swap_words

    decoded, streamed = _decoded_and_streamed(train_corpus, train=True)
    flips = 0
    for epoch in (0, 1):
        decoded.set_epoch(epoch)
        for index, sample in enumerate(streamed):
            item = decoded[index]
            assert torch.equal(item["pixel_values"], decoded[index]["pixel_values"])  # same draw within an epoch
            if torch.equal(item["pixel_values"], sample["pixel_values"].flip(-1)) and not torch.equal(
                item["pixel_values"], sample["pixel_values"]
            ):
                flips += 1
                assert item["text"] == swap_words(sample["text"], LEFT_RIGHT_SWAP)
            else:
                torch.testing.assert_close(item["pixel_values"], sample["pixel_values"], rtol=0, atol=0)
                assert item["text"] == sample["text"]
    assert 0.3 < flips / (2 * len(streamed)) < 0.7


@pytest.mark.parametrize("padding", ["longest", "max_length"])
def test_pretokenized_cache_gives_the_batches_of_tokenising_each_step(train_corpus, padding):
    """Captions tokenised once (flipped forms included) and padded by the collator give the same
    batches as the collator tokenising the captions of every step; samples then carry no text."""
    import torch

    from align_hf.data import ImageTextCollator, make_tokenizer

    decoded, _ = _decoded_and_streamed(train_corpus, train=True)
    tokenized, _ = _decoded_and_streamed(train_corpus, train=True)
    vocab = (train_corpus / "vocab.txt").read_text(encoding="utf-8").split()
    collator = ImageTextCollator(make_tokenizer(vocab, model_max_length=32), max_length=32, padding=padding)
    tokenized.pretokenize(collator.tokenize)
    assert tokenized._flipped_tokens  # some captions name a side
    assert "text" not in tokenized[0] and isinstance(tokenized[0]["input_ids"], list)
    for epoch in (0, 1, 2):
        decoded.set_epoch(epoch)
        tokenized.set_epoch(epoch)
        for start in range(0, len(decoded), 16):
            indices = range(start, min(len(decoded), start + 16))
            expected, batch = collator([decoded[i] for i in indices]), collator([tokenized[i] for i in indices])
            assert expected.keys() == batch.keys()
            for key in expected:
                assert torch.equal(expected[key], batch[key]), key


@pytest.mark.slow
def test_scaled_down_recipe_trains_every_step_on_a_slow_clock_and_learns(train_corpus, tmp_path, monkeypatch):
    """Quality must not depend on the machine's speed: the default recipe has no time budget, so a clock
    that says hours have passed after every call changes nothing; and the short run lowers the loss."""
    import itertools

    import align_hf.training.budget as budget
    from align_hf.training.quickstart import train_on_corpus

    hours = itertools.count(start=0.0, step=3600.0)  # every reading of the budget clock: another hour gone
    monkeypatch.setattr(budget, "now", lambda: float(next(hours)))
    recipe = apply_overrides(QuickstartRecipe(), ["image_size=32", "steps=40", "batch_size=16", "num_train=64",
                                                  "learning_rate=3e-3", "text_layers=1"])
    trainer, metrics, _ = train_on_corpus(str(train_corpus), str(tmp_path / "run"), recipe, progress=False, log_every=10)
    assert trainer.state.global_step == 40
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 4 and losses[-1] < 0.8 * losses[0], losses
    assert "zero_shot_top1" in metrics
