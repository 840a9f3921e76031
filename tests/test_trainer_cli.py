"""``align-hf train`` end to end on a tiny corpus: YAML config + flag overrides, the Hub-ready folder,
the model card with measured metrics, the curves PNG; fine-tuning a transformers-format checkpoint;
a linear probe that starts from the zero-shot classifier."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
import yaml

from align_hf import AlignModel, AlignProcessor
from align_hf.cli import main
from align_hf.data import load_manifest, load_pairs
from align_hf.evaluation import evaluate_zero_shot
from align_hf.testing import tiny_processor
from hf_reference import healthy_hf_align

FAST = ["--use_cpu", "--disable_tqdm", "true", "--logging_steps", "1", "--save_strategy", "no", "--seed", "0"]


def test_train_command_with_yaml_config_writes_a_hub_ready_folder(train_corpus, tmp_path, capsys):
    out = tmp_path / "run"
    config = {
        "model": "tiny", "image_size": 32, "train_data": str(train_corpus), "output_dir": str(out),
        "max_steps": 50, "per_device_train_batch_size": 8, "learning_rate": 2e-3, "optimizer": "adamw",
        "config_overrides": json.dumps({"text_config": {"num_hidden_layers": 1}}), "filter": "small",
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", str(path), "--max_steps", "3", *FAST]) == 0  # the flag overrides the file
    printed = capsys.readouterr().out
    assert "trained 3 steps" in printed and "zero_shot_top1" in printed

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["global_step"] == 3
    assert {"retrieval_text_to_image_R@1", "zero_shot_top1", "zero_shot_unseen_combinations_top1"} <= set(metrics)
    assert metrics["data"]["kept"] + sum(metrics["data"]["filtered"].values()) + sum(metrics["data"]["skipped"].values()) == metrics["data"]["total"]
    model = AlignModel.from_pretrained(out / "model")
    processor = AlignProcessor.from_pretrained(out / "model")
    assert model.config.text_config.num_hidden_layers == 1 and model.config.vision_config.image_size == 32
    assert processor.image_processor.crop_size["height"] == 32
    card = (out / "model" / "README.md").read_text()
    assert "zero_shot_top1" in card and f"{metrics['zero_shot_top1']:.4f}" in card
    assert (out / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _transformers_checkpoint(folder):
    reference = healthy_hf_align(seed=3, image_size=32)
    reference.save_pretrained(folder)
    transformers.AlignProcessor(
        image_processor=transformers.EfficientNetImageProcessor(
            size={"height": 38, "width": 38}, crop_size={"height": 32, "width": 32}, do_center_crop=True,
            rescale_factor=1 / 127.5, rescale_offset=True, do_normalize=False, include_top=False,
        ),
        tokenizer=tiny_processor().tokenizer,
    ).save_pretrained(folder)
    return reference


def test_fine_tune_from_a_transformers_format_checkpoint(train_corpus, tmp_path):
    source = tmp_path / "kakaobrain-style"
    _transformers_checkpoint(source)
    start = AlignModel.from_pretrained(source).state_dict()
    out = tmp_path / "finetuned"
    argv = ["train", "--model", str(source), "--train_data", str(train_corpus), "--output_dir", str(out),
            "--max_steps", "2", "--per_device_train_batch_size", "4", "--freeze_text_tower", "--optimizer", "adamw",
            "--learning_rate", "1e-3", *FAST]
    assert main(argv) == 0
    tuned = AlignModel.from_pretrained(out / "model")
    assert tuned.config.model_type == "align_hf"
    after = tuned.state_dict()
    text = [k for k in start if k.startswith(("text_model.", "text_projection."))]
    vision = [k for k in start if k.startswith("vision_model.") and k.endswith("weight")]
    assert all(torch.equal(start[k], after[k]) for k in text)
    assert any(not torch.equal(start[k], after[k]) for k in vision)
    assert json.loads((out / "metrics.json").read_text())["global_step"] == 2


def test_linear_probe_starts_from_the_zero_shot_classifier(train_corpus, tmp_path):
    source = tmp_path / "base"
    _transformers_checkpoint(source)
    base = AlignModel.from_pretrained(source)
    processor = AlignProcessor.from_pretrained(source)
    manifest = load_manifest(train_corpus)
    names = tmp_path / "classes.txt"
    names.write_text("\n".join(manifest["class_names"]))
    zero_shot = evaluate_zero_shot(base, processor, list(load_pairs(str(train_corpus / "zeroshot"))), manifest["class_names"],
                                   "imagenet", label_column="meta.label_index", progress=False)
    out = tmp_path / "probe"
    argv = ["train", "--task", "classification", "--model", str(source), "--train_data", str(train_corpus / "zeroshot"),
            "--eval_data", str(train_corpus / "zeroshot"), "--label_column", "meta.label_index", "--class_names", str(names),
            "--templates", "imagenet", "--output_dir", str(out), "--max_steps", "3", "--per_device_train_batch_size", "4",
            "--freeze_vision_tower", "--learning_rate", "1e-2", "--optimizer", "adamw", *FAST]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["zero_shot_init_top1"] == pytest.approx(zero_shot["top1"])
    assert "eval_top1" in metrics
    from align_hf.training.classification import AlignForImageClassification

    probe = AlignForImageClassification.from_pretrained(out / "model")
    assert probe.config.id2label[0] == manifest["class_names"][0]
    for name, value in probe.state_dict().items():
        if name.startswith("vision_model."):
            torch.testing.assert_close(value, base.state_dict()[name], msg=name)


def test_train_config_file_with_an_unknown_key_is_refused(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"model": "tiny", "learning_rat": 1e-3}))
    with pytest.raises(ValueError, match="learning_rat"):
        main(["train", str(path)])
