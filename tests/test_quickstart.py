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
