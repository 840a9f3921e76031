"""Hugging Face interop: Auto classes, remote code, pipelines, Hub layout, push, pickle refusal."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
import transformers
from huggingface_hub import ModelCard
from PIL import Image

import align_hf.hub
from align_hf import AlignModel, AlignProcessor
from align_hf.testing import tiny_model, tiny_processor
from hf_reference import healthy_hf_align


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    processor = tiny_processor()
    model = tiny_model(seed=2, vocab_size=len(processor.tokenizer))
    folder = tmp_path_factory.mktemp("saved")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, processor, folder


def test_saved_folder_is_hub_ready(saved):
    _, _, folder = saved
    names = set(os.listdir(folder))
    assert {"config.json", "model.safetensors", "modeling_align.py", "configuration_align.py", "loss.py"} <= names
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in names)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "align_hf"
    assert config["auto_map"]["AutoModel"] == "modeling_align.AlignModel"
    assert config["auto_map"]["AutoModelForZeroShotImageClassification"] == "modeling_align.AlignModel"


def test_saved_folder_carries_only_the_model_code(saved, tmp_path):
    # save_pretrained copies modeling_align.py and, recursively, every module it imports
    # relatively: this is what a remote-code load of the model needs, and nothing more.
    model, _, folder = saved
    model.save_pretrained(tmp_path)
    model_code = {name for name in os.listdir(tmp_path) if name.endswith(".py")}
    assert model_code == {
        "configuration_align.py",
        "modeling_align.py",
        "image_backbone.py",
        "loss.py",
        "loss_tiles.py",
        "hub.py",  # from_pretrained reads configs and weight lists through it
        "batchnorm_folding.py",  # for_inference()
        "fast_blocks.py",  # the image tower's fast path
        "text_fast_path.py",  # the text tower's
        "loss_triton.py",  # the head's Triton kernels (the torch path when triton is missing)
    }
    # The processor adds its own module and the image loader it imports (AutoProcessor and the
    # pipeline load them as remote code; tests/test_remote_code.py).
    code = {name for name in os.listdir(folder) if name.endswith(".py")}
    assert code == model_code | {"processing_align.py", "image_io.py"}


def test_auto_classes_resolve_to_align_hf(saved):
    _, _, folder = saved
    assert type(transformers.AutoModel.from_pretrained(folder)) is AlignModel
    assert type(transformers.AutoModelForZeroShotImageClassification.from_pretrained(folder)) is AlignModel
    image_processor = transformers.AutoImageProcessor.from_pretrained(folder)
    assert type(image_processor).__name__ == "AlignImageProcessor"


REMOTE_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys
    class HideAlignHF(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "align_hf" or name.startswith("align_hf."):
                raise ImportError("align_hf is not installed in this interpreter")
    sys.meta_path.insert(0, HideAlignHF())
    import torch
    from transformers import AutoModel
    folder = sys.argv[1]
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    assert not any(name.startswith("align_hf") for name in sys.modules), "align_hf leaked in"
    expected = torch.load(sys.argv[2])
    with torch.no_grad():
        out = model(input_ids=expected["ids"], pixel_values=expected["pixels"])
    print(type(model).__module__)
    print((out.logits_per_image - expected["logits"]).abs().max().item())
    """
)


def test_remote_code_loads_without_align_hf(saved, tmp_path):
    model, _, folder = saved
    pixels = torch.rand(2, 3, 64, 64)
    ids = torch.tensor([[2, 10, 11, 3], [2, 12, 3, 0]])
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=pixels).logits_per_image
    expected = tmp_path / "expected.pt"
    torch.save({"ids": ids, "pixels": pixels, "logits": logits}, expected)
    env = dict(os.environ, HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_SCRIPT, str(folder), str(expected)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    module, diff = result.stdout.split()
    assert module.startswith("transformers_modules.")
    assert float(diff) <= 1e-6


def test_zero_shot_pipeline_runs_align_hf(saved):
    model, processor, folder = saved
    pipe = transformers.pipeline("zero-shot-image-classification", model=str(folder))
    assert type(pipe.model) is AlignModel
    image = Image.new("RGB", (90, 70), (200, 30, 30))
    labels = ["red circle", "blue square", "green star"]
    result = pipe(image, candidate_labels=labels)
    assert sorted(r["label"] for r in result) == sorted(labels)
    scores = [r["score"] for r in result]
    assert scores == sorted(scores, reverse=True) and abs(sum(scores) - 1) < 1e-5
    # The pipeline's probabilities are the softmax of our own logits for the same prompts.
    prompts = [f"This is a photo of {label}." for label in labels]
    tokens = pipe.tokenizer(prompts, padding=True, return_tensors="pt")
    pixels = pipe.image_processor(image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        probs = model(**tokens, pixel_values=pixels).logits_per_image.softmax(-1)[0]
    by_label = {r["label"]: r["score"] for r in result}
    for label, p in zip(labels, probs.tolist()):
        assert abs(by_label[label] - p) < 1e-5


def _as_hub_cache(source, cache_dir, repo_id):
    """Lay ``source`` out as huggingface_hub's cache stores a downloaded repo."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache_dir / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    shutil.copytree(source, snapshot)
    return snapshot


def test_transformers_format_repo_loads_by_id_from_hub_cache(tmp_path):
    reference = healthy_hf_align(seed=4)
    source = tmp_path / "src"
    reference.save_pretrained(source)
    reference_processor = transformers.AlignProcessor(
        image_processor=transformers.EfficientNetImageProcessor(
            size={"height": 74, "width": 74}, crop_size={"height": 65, "width": 65}, do_center_crop=True,
            rescale_factor=1 / 127.5, rescale_offset=True, do_normalize=False, include_top=False,
        ),
        tokenizer=tiny_processor().tokenizer,
    )
    reference_processor.save_pretrained(source)
    cache = tmp_path / "cache"
    _as_hub_cache(source, cache, "kakaobrain/align-tiny")
    model = AlignModel.from_pretrained("kakaobrain/align-tiny", cache_dir=cache, local_files_only=True)
    processor = AlignProcessor.from_pretrained("kakaobrain/align-tiny", cache_dir=cache, local_files_only=True)
    assert model.config.vision_config.image_size == 65
    image = Image.new("RGB", (100, 80), (10, 200, 90))
    ours = processor(text=["a green image"], images=image)
    theirs = reference_processor(text=["a green image"], images=image, return_tensors="pt", padding="max_length", max_length=64)
    torch.testing.assert_close(ours["pixel_values"], theirs["pixel_values"], atol=1e-5, rtol=0)
    with torch.no_grad():
        a = model(**ours)
        b = reference(input_ids=ours["input_ids"], attention_mask=ours["attention_mask"], pixel_values=ours["pixel_values"])
    torch.testing.assert_close(a.logits_per_image, b.logits_per_image, atol=1e-5, rtol=1e-5)


def test_plain_pickle_checkpoints_load_as_in_transformers(saved, tmp_path):
    # A pytorch_model.bin holding a plain state dict loads through torch.load(weights_only=True),
    # without allow_pickle (code-executing pickles are refused: tests/test_weights.py).
    model, _, _ = saved
    model.save_pretrained(tmp_path)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    (tmp_path / "model.safetensors").unlink()
    torch.save(state, tmp_path / "pytorch_model.bin")
    for loaded in (AlignModel.from_pretrained(tmp_path), AlignModel.from_pretrained(tmp_path, allow_pickle=True)):
        for key, value in state.items():
            torch.testing.assert_close(loaded.state_dict()[key], value, atol=0, rtol=0)

    hf_folder = tmp_path / "hf"
    reference = healthy_hf_align(seed=1)
    reference.save_pretrained(hf_folder)
    from safetensors.torch import load_file

    hf_state = load_file(hf_folder / "model.safetensors")
    (hf_folder / "model.safetensors").unlink()
    torch.save(hf_state, hf_folder / "pytorch_model.bin")
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = reference.get_image_features(pixel_values=pixels).pooler_output
        got = AlignModel.from_pretrained(hf_folder).encode_image(pixels, normalize=False)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


class FakeHfApi:
    """Stands in for huggingface_hub.HfApi: records the repo and keeps a copy of the upload."""

    uploads: list = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, private=None, exist_ok=False):
        class Url:
            pass

        url = Url()
        url.repo_id = repo_id
        return url

    def upload_folder(self, repo_id, folder_path, commit_message, revision=None, create_pr=False):
        destination = FakeHfApi.target / repo_id.replace("/", "--")
        shutil.copytree(folder_path, destination)
        FakeHfApi.uploads.append(dict(repo_id=repo_id, message=commit_message, create_pr=create_pr, path=destination))
        return f"https://huggingface.co/{repo_id}/commit/abc"


def test_push_to_hub_commits_a_loadable_repo_with_model_card(saved, tmp_path, monkeypatch):
    model, processor, _ = saved
    FakeHfApi.target = tmp_path
    FakeHfApi.uploads = []
    monkeypatch.setattr(align_hf.hub, "HfApi", FakeHfApi)
    model.push_to_hub(
        "me/align-tiny",
        processor=processor,
        metrics={"synthetic-heldout": {"zero_shot_top1": 0.5}},
        commit_message="first",
        private=True,
    )
    (upload,) = FakeHfApi.uploads
    assert upload["repo_id"] == "me/align-tiny" and upload["message"] == "first"
    files = set(os.listdir(upload["path"]))
    assert {"config.json", "model.safetensors", "modeling_align.py", "README.md", "tokenizer.json"} <= files
    card = ModelCard.load(upload["path"] / "README.md")
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "zero-shot-image-classification"
    assert "align_hf" in card.data.tags
    assert card.data.eval_results[0].metric_value == 0.5
    loaded = AlignModel.from_pretrained(upload["path"])
    loaded_processor = AlignProcessor.from_pretrained(upload["path"])
    inputs = loaded_processor(text=["a red circle"], images=Image.new("RGB", (64, 64)))
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits_per_image, model(**inputs).logits_per_image)


def _front_matter(card_text: str) -> dict:
    import yaml

    _, front, _ = card_text.split("---\n", 2)
    return yaml.safe_load(front)


def test_model_card_files_each_metric_under_its_task(saved):
    model, _, _ = saved
    metrics = {
        "synthetic-heldout": {  # the quickstart's names
            "zero_shot_top1": 0.61, "zero_shot_chance": 0.125, "zero_shot_top1_unseen_combinations": 0.4,
            "text_to_image_recall@1": 0.3, "image_to_text_recall@5": 0.7, "missing": float("nan"),
        },
        "eval": {  # AlignTrainer's names: <eval set>_<metric>, with bookkeeping around them
            "coco_image_to_text_R@1": 0.2, "coco_text_to_image_R@10": 0.9, "flowers_top5": 0.8,
            "flowers_chance": 0.01, "flowers_num_samples": 50, "runtime": 3.2, "samples_per_second": 10.0, "loss": 1.5,
        },
        "cifar10": {  # CLIP_benchmark's names
            "acc1": 0.5, "mean_per_class_recall": 0.45, "image_retrieval_recall@5": 0.66, "text_retrieval_recall@5": 0.77,
        },
        "finetuned": {"accuracy": 0.93},  # a trained classifier head, not zero-shot
    }
    card = align_hf.hub.build_model_card(model.config, "me/align-tiny", metrics=metrics)
    (entry,) = _front_matter(card.content)["model-index"]
    found = {}
    for result in entry["results"]:
        for metric in result["metrics"]:
            key = (result["task"]["type"], result["dataset"]["type"], result["dataset"].get("config"), metric["type"])
            assert key not in found
            found[key] = metric["value"]
    zero_shot = "zero-shot-image-classification"
    assert found == {
        (zero_shot, "synthetic-heldout", None, "accuracy"): 0.61,
        (zero_shot, "synthetic-heldout", "unseen_combinations", "accuracy"): 0.4,
        ("text-to-image", "synthetic-heldout", None, "recall@1"): 0.3,
        ("image-to-text", "synthetic-heldout", None, "recall@5"): 0.7,
        ("image-to-text", "eval", "coco", "recall@1"): 0.2,
        ("text-to-image", "eval", "coco", "recall@10"): 0.9,
        (zero_shot, "eval", "flowers", "top_5_accuracy"): 0.8,
        (zero_shot, "cifar10", None, "accuracy"): 0.5,
        (zero_shot, "cifar10", None, "mean_per_class_recall"): 0.45,
        # CLIP_benchmark's image retrieval ranks images for a text query: text-to-image
        ("text-to-image", "cifar10", None, "recall@5"): 0.66,
        ("image-to-text", "cifar10", None, "recall@5"): 0.77,
        ("image-classification", "finetuned", None, "accuracy"): 0.93,
    }
    retrieval_names = {r["task"]["name"] for r in entry["results"] if r["task"]["type"] in ("image-to-text", "text-to-image")}
    assert retrieval_names == {"Image-to-Text Retrieval", "Text-to-Image Retrieval"}
    # chance level is shown for reference in the table, never as a score; bookkeeping nowhere
    assert "chance" not in json.dumps(entry)
    body = card.content.split("---\n", 2)[2]
    assert "| synthetic-heldout | zero_shot_chance | chance level (reference, not a score) | 0.1250 |" in body
    assert "| synthetic-heldout | zero_shot_top1_unseen_combinations | zero-shot top-1 accuracy (unseen_combinations) | 0.4000 |" in body
    assert "runtime" not in body and "samples_per_second" not in body and "num_samples" not in body
    assert "| eval | loss | loss | 1.5000 |" in body and "missing" not in body
    # huggingface_hub parses the card back into the same results
    parsed = ModelCard(card.content).data.eval_results
    assert sorted((r.task_type, r.dataset_type, r.metric_type, r.metric_value) for r in parsed) == sorted(
        (task, dataset, metric, value)
        for r in entry["results"] for m in r["metrics"]
        for task, dataset, metric, value in [(r["task"]["type"], r["dataset"]["type"], m["type"], m["value"])]
    )
