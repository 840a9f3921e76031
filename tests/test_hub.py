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


def test_saved_folder_carries_only_the_model_code(saved):
    # save_pretrained copies modeling_align.py and, recursively, every module it imports
    # relatively: this is what a remote-code load of the model needs, and nothing more.
    _, _, folder = saved
    code = {name for name in os.listdir(folder) if name.endswith(".py")}
    assert code == {
        "configuration_align.py",
        "modeling_align.py",
        "image_backbone.py",
        "loss.py",
        "loss_tiles.py",
        "hub.py",  # from_pretrained reads configs and weight lists through it
        "batchnorm_folding.py",  # for_inference()
    }


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


def test_pickle_checkpoints_are_refused_unless_allowed(saved, tmp_path):
    model, _, _ = saved
    model.save_pretrained(tmp_path)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    (tmp_path / "model.safetensors").unlink()
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="allow_pickle=True"):
        AlignModel.from_pretrained(tmp_path)
    loaded = AlignModel.from_pretrained(tmp_path, allow_pickle=True)
    torch.testing.assert_close(loaded.temperature, model.temperature)

    hf_folder = tmp_path / "hf"
    healthy_hf_align(seed=1).save_pretrained(hf_folder, safe_serialization=True)
    from safetensors.torch import load_file

    hf_state = load_file(hf_folder / "model.safetensors")
    (hf_folder / "model.safetensors").unlink()
    torch.save(hf_state, hf_folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pickle"):
        AlignModel.from_pretrained(hf_folder)
    assert isinstance(AlignModel.from_pretrained(hf_folder, allow_pickle=True), AlignModel)


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
