"""Saved and pushed folders load through transformers alone (``trust_remote_code=True``).

Each check runs in a fresh interpreter where ``import align_hf`` fails (a meta-path finder refuses
it, as on a machine where align_hf is not installed), loads the folder with ``AutoProcessor``,
``AutoImageProcessor``, ``AutoModel``, ``AutoModelForZeroShotImageClassification`` and the
zero-shot pipeline, and compares what they compute with align_hf's own classes run here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import align_hf.hub
from align_hf.processing_align import AlignImageProcessor, AlignProcessor
from align_hf.testing import tiny_model, tiny_processor

LABELS = ["red circle", "blue square", "green star"]
TEMPLATE = "This is a photo of {}."  # the zero-shot pipeline's default hypothesis template
MODEL_CODE = {
    "configuration_align.py", "modeling_align.py", "image_backbone.py", "loss.py", "loss_tiles.py", "hub.py",
    "batchnorm_folding.py", "fast_blocks.py", "text_fast_path.py", "loss_triton.py",
}
PROCESSOR_CODE = {"processing_align.py", "image_io.py"}

# Prepended to every script run by run_without_align_hf: from here on ``import align_hf`` fails.
# Scripts fill ``report``; the runner prints it as JSON at the end.
HIDE_ALIGN_HF = textwrap.dedent(
    """
    import importlib.abc, json, sys
    class HideAlignHF(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "align_hf" or name.startswith("align_hf."):
                raise ImportError("align_hf is not installed in this interpreter")
    sys.meta_path.insert(0, HideAlignHF())
    report = {}
    """
)
PRINT_REPORT = textwrap.dedent(
    """
    report["leaked"] = sorted(name for name in sys.modules if name.split(".")[0] == "align_hf")
    print(json.dumps(report))
    """
)

# Loads ``source`` (folder or repo id) every way transformers offers and scores ``image`` against ``labels``.
LOAD_EVERYTHING = textwrap.dedent(
    """
    import torch, transformers
    from PIL import Image
    def load_everything(source, image, labels):
        prompts = ["This is a photo of {}.".format(label) for label in labels]
        auto = lambda name: getattr(transformers, name).from_pretrained(source, trust_remote_code=True)
        processor, image_processor = auto("AutoProcessor"), auto("AutoImageProcessor")
        model, zero_shot = auto("AutoModel").eval(), auto("AutoModelForZeroShotImageClassification").eval()
        pipe = transformers.pipeline("zero-shot-image-classification", model=source, trust_remote_code=True)
        inputs = processor(text=prompts, images=image)
        with torch.no_grad():
            logits = model(**inputs).logits_per_image[0]
            zero_shot_logits = zero_shot(**inputs).logits_per_image[0]
        # A processor loaded as remote code saves itself with both auto_map entries again.
        processor.save_pretrained("resaved")
        resaved = json.load(open("resaved/processor_config.json"))
        return {
            "classes": {name: type(obj).__module__ + "." + type(obj).__name__ for name, obj in [
                ("processor", processor), ("image_processor", image_processor), ("model", model),
                ("zero_shot", zero_shot), ("pipeline_model", pipe.model),
                ("pipeline_image_processor", pipe.image_processor)]},
            "pixel_values": inputs["pixel_values"].flatten().tolist(),
            "image_processor_pixels": image_processor(image, return_tensors="pt")["pixel_values"].flatten().tolist(),
            "logits": logits.tolist(),
            "zero_shot_logits": zero_shot_logits.tolist(),
            "pipeline": {r["label"]: r["score"] for r in pipe(image, candidate_labels=labels)},
            "resaved_auto_map": {**resaved["auto_map"], **resaved["image_processor"]["auto_map"]},
        }
    """
)


def run_without_align_hf(script: str, *args: str, workdir: Path, env: dict[str, str] | None = None) -> dict:
    """Run ``script`` in a new interpreter that cannot import align_hf; return its ``report`` dict.

    The dynamic-module cache (where transformers copies remote code) lives in ``workdir``, so no
    earlier run's copy is reused, and the Hub is offline. ``report["leaked"]`` lists the align_hf
    modules that got imported anyway (must be empty).
    """
    environment = dict(os.environ, HF_MODULES_CACHE=str(workdir / "modules"), HF_HUB_OFFLINE="1", **(env or {}))
    result = subprocess.run(
        [sys.executable, "-c", HIDE_ALIGN_HF + script + PRINT_REPORT, *args],
        capture_output=True, text=True, env=environment, cwd=workdir, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def as_hub_cache(source: Path, cache_dir: Path, repo_id: str) -> None:
    """Lay ``source`` out as huggingface_hub's cache stores a downloaded ``repo_id``."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache_dir / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(source, repo / "snapshots" / commit)


def peaked_tiny_model(processor: AlignProcessor):
    """A tiny model at the paper's converged temperature (1/64), so probabilities move with the pixels."""
    model = tiny_model(seed=5, vocab_size=len(processor.tokenizer))
    with torch.no_grad():
        model.contrastive_head.temperature.fill_(1 / 64)
    return model


def sample_image() -> Image.Image:
    """A 90x70 photo-like image (not square, so resize and crop both matter)."""
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, size=(70, 90, 3), dtype=np.uint8)
    pixels[20:50, 30:60] = (220, 30, 30)
    return Image.fromarray(pixels)



def expected_outputs(model, processor: AlignProcessor, image: Image.Image) -> dict:
    """align_hf's own pixels, logits and zero-shot probabilities (processor + model, in process)."""
    inputs = processor(text=[TEMPLATE.format(label) for label in LABELS], images=image)
    with torch.no_grad():
        logits = model(**inputs).logits_per_image[0]
    return {
        "pixel_values": inputs["pixel_values"].flatten(),
        "logits": logits,
        "probabilities": dict(zip(LABELS, logits.softmax(-1).tolist())),
    }


def check_remote_load(report: dict, expected: dict) -> None:
    """Every class came from the folder's code, and computes what align_hf computes."""
    assert report["leaked"] == []
    for role, name in report["classes"].items():
        assert name.startswith("transformers_modules."), f"{role} is {name}, not the folder's remote code"
    assert report["classes"]["processor"].endswith(".processing_align.AlignProcessor")
    assert report["classes"]["image_processor"].endswith(".processing_align.AlignImageProcessor")
    assert report["classes"]["pipeline_image_processor"].endswith(".processing_align.AlignImageProcessor")
    for role in ("model", "zero_shot", "pipeline_model"):
        assert report["classes"][role].endswith(".modeling_align.AlignModel")
    torch.testing.assert_close(torch.tensor(report["pixel_values"]), expected["pixel_values"], atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.tensor(report["image_processor_pixels"]), expected["pixel_values"], atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.tensor(report["logits"]), expected["logits"], atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(report["zero_shot_logits"]), expected["logits"], atol=1e-5, rtol=0)
    assert report["pipeline"].keys() == expected["probabilities"].keys()
    for label, probability in expected["probabilities"].items():
        assert abs(report["pipeline"][label] - probability) <= 1e-5, (label, report["pipeline"], expected["probabilities"])
    assert report["resaved_auto_map"] == {
        "AutoProcessor": "processing_align.AlignProcessor",
        "AutoImageProcessor": "processing_align.AlignImageProcessor",
    }


@pytest.fixture(scope="module")
def trained():
    processor = tiny_processor()
    model = peaked_tiny_model(processor)
    # The 1e-5 checks below can see a preprocessing error: ALIGN's pixels without the centre crop
    # move the probabilities by far more.
    uncropped = AlignProcessor(AlignImageProcessor.for_image_size(64, crop=False), processor.tokenizer)
    right = expected_outputs(model, processor, sample_image())["probabilities"]
    wrong = expected_outputs(model, uncropped, sample_image())["probabilities"]
    assert max(abs(right[label] - wrong[label]) for label in LABELS) > 1e-3
    return model, processor


def test_saved_processor_carries_its_code_and_auto_map(trained, tmp_path):
    _, processor = trained
    processor.save_pretrained(tmp_path / "processor")
    assert {p.name for p in (tmp_path / "processor").glob("*.py")} == PROCESSOR_CODE
    config = json.loads((tmp_path / "processor" / "processor_config.json").read_text())
    assert config["auto_map"] == {"AutoProcessor": "processing_align.AlignProcessor"}
    assert config["image_processor"]["auto_map"]["AutoImageProcessor"] == "processing_align.AlignImageProcessor"
    # An image processor saved alone (as the classification fine-tuner does) writes preprocessor_config.json.
    AlignImageProcessor.for_image_size(64).save_pretrained(tmp_path / "image_processor")
    assert {p.name for p in (tmp_path / "image_processor").glob("*.py")} == PROCESSOR_CODE
    config = json.loads((tmp_path / "image_processor" / "preprocessor_config.json").read_text())
    assert config["auto_map"]["AutoImageProcessor"] == "processing_align.AlignImageProcessor"
    # The model alone carries the model code and nothing of the processor.
    trained[0].save_pretrained(tmp_path / "model")
    assert {p.name for p in (tmp_path / "model").glob("*.py")} == MODEL_CODE


def test_saved_folder_loads_everything_without_align_hf(trained, tmp_path):
    model, processor = trained
    folder = tmp_path / "saved"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    assert {p.name for p in folder.glob("*.py")} == MODEL_CODE | PROCESSOR_CODE
    # The image processor of a loaded processor, saved alone (preprocessor_config.json, no
    # tokenizer), as the classification fine-tuner saves it: AutoProcessor falls back to it.
    image_processor = AlignProcessor.from_pretrained(folder).image_processor
    image_processor.save_pretrained(tmp_path / "image_processor")
    assert json.loads((tmp_path / "image_processor" / "preprocessor_config.json").read_text())["auto_map"] == {
        "AutoImageProcessor": "processing_align.AlignImageProcessor"}
    image = sample_image()
    image.save(tmp_path / "image.png")
    script = LOAD_EVERYTHING + textwrap.dedent(
        """
        image = Image.open(sys.argv[2])
        report.update(load_everything(sys.argv[1], image, json.loads(sys.argv[3])))
        for name in ("AutoImageProcessor", "AutoProcessor"):
            alone = getattr(transformers, name).from_pretrained(sys.argv[4], trust_remote_code=True)
            report[name] = [type(alone).__module__ + "." + type(alone).__name__,
                            alone(image.convert("RGBA"), return_tensors="pt")["pixel_values"].flatten().tolist()]
        """
    )
    report = run_without_align_hf(script, str(folder), str(tmp_path / "image.png"), json.dumps(LABELS),
                                  str(tmp_path / "image_processor"), workdir=tmp_path)
    check_remote_load(report, expected_outputs(model, processor, image))
    # RGBA goes through align_hf's to_rgb (composited on white) in the remote copy too.
    expected = image_processor(image.convert("RGBA"), return_tensors="pt")["pixel_values"].flatten()
    for name in ("AutoImageProcessor", "AutoProcessor"):
        loaded_class, pixels = report[name]
        assert loaded_class.startswith("transformers_modules.") and loaded_class.endswith(".AlignImageProcessor")
        torch.testing.assert_close(torch.tensor(pixels), expected, atol=1e-6, rtol=0)

class FakeHfApi:
    """Stands in for ``huggingface_hub.HfApi`` in :mod:`align_hf.hub`: keeps a copy of each upload."""

    target: Path
    uploads: list[tuple[str, Path]] = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, private=None, exist_ok=False):
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def upload_folder(self, repo_id, folder_path, commit_message, revision=None, create_pr=False):
        destination = FakeHfApi.target / repo_id.replace("/", "--")
        shutil.copytree(folder_path, destination)
        FakeHfApi.uploads.append((repo_id, destination))
        return f"https://huggingface.co/{repo_id}/commit/0"


def test_pushed_repo_and_its_model_card_snippet_load_without_align_hf(trained, tmp_path, monkeypatch):
    model, processor = trained
    FakeHfApi.target, FakeHfApi.uploads = tmp_path / "uploads", []
    monkeypatch.setattr(align_hf.hub, "HfApi", FakeHfApi)
    model.push_to_hub("me/align-tiny", processor=processor)
    ((repo_id, folder),) = FakeHfApi.uploads
    assert repo_id == "me/align-tiny"
    assert {p.name for p in folder.glob("*.py")} == MODEL_CODE | PROCESSOR_CODE
    # Loaded by repo id, as a user would after the push: the upload laid out as the Hub cache.
    as_hub_cache(folder, tmp_path / "hub-cache", repo_id)
    blocks = re.findall(r"```python\n(.*?)```", (folder / "README.md").read_text(), flags=re.DOTALL)
    snippets = [code for code in blocks if "trust_remote_code=True" in code]  # the ones for users without align_hf
    assert snippets and all(repo_id in code for code in snippets)
    image = sample_image()
    image.save(tmp_path / "image.png")
    # Everything transformers offers on the repo id; then the card's code blocks exactly as written,
    # and the model and processor they made score the image.
    script = LOAD_EVERYTHING + textwrap.dedent(
        """
        report.update(load_everything(sys.argv[1], Image.open(sys.argv[2]), json.loads(sys.argv[3])))
        """
    ) + "\n".join(snippets) + textwrap.dedent(
        """
        inputs = processor(text=["This is a photo of {}.".format(l) for l in json.loads(sys.argv[3])],
                           images=Image.open(sys.argv[2]))
        with torch.no_grad():
            report["card_logits"] = model.eval()(**inputs).logits_per_image[0].tolist()
        report["card_classes"] = [type(model).__module__, type(processor).__module__]
        """
    )
    report = run_without_align_hf(script, repo_id, str(tmp_path / "image.png"), json.dumps(LABELS), workdir=tmp_path,
                                  env={"HF_HUB_CACHE": str(tmp_path / "hub-cache")})
    expected = expected_outputs(model, processor, image)
    check_remote_load(report, expected)
    assert all(name.startswith("transformers_modules.") for name in report["card_classes"])
    torch.testing.assert_close(torch.tensor(report["card_logits"]), expected["logits"], atol=1e-5, rtol=0)
