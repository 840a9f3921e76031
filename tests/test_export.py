"""``align-hf export``: the two towers as ONNX models and torch.export programs, checked against PyTorch.

One tiny random model is saved, exported through the command line both ways, and the graphs are
run by onnxruntime / ``torch.export.load`` on processor outputs at two batch sizes and two text
lengths; the reference is the saved model loaded afresh (BatchNorm unfolded) and its
``encode_image`` / ``encode_text``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hf_reference import HF_TEXT, healthy_hf_align
from PIL import Image

from align_hf.cli import main
from align_hf.modeling_align import AlignModel
from align_hf.processing_align import AlignProcessor
from align_hf.testing import tiny_model, tiny_processor

TOLERANCE = 1e-4
BATCH_SIZES = (1, 5)
CAPTIONS = [
    "a photo of a red circle",
    "two small blue squares on a white background",
    "a dog",
    "the big yellow star in the top left",
    "a striped green triangle",
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The tiny model saved, then exported by ``align-hf export onnx`` and ``align-hf export torch-export``."""
    root = tmp_path_factory.mktemp("export")
    processor = tiny_processor()
    model = tiny_model(seed=3, vocab_size=len(processor.tokenizer))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        # Non-trivial BatchNorm statistics, so folding them into the convolutions is put to the test.
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                size = module.num_features
                module.running_mean.copy_(torch.randn(size, generator=generator) * 0.2)
                module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(size, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(size, generator=generator) * 0.1)
        model.contrastive_head.temperature.fill_(1 / 64)
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    assert main(["export", "onnx", "--model", str(root / "model"), "--output", str(root / "onnx")]) == 0
    assert main(
        ["export", "torch-export", "--model", str(root / "model"), "--output", str(root / "pt2"), "--no-verify"]
    ) == 0
    reference = AlignModel.from_pretrained(root / "model").eval()
    return SimpleNamespace(root=root, onnx=root / "onnx", pt2=root / "pt2", reference=reference, processor=processor)


def _images(count: int, seed: int) -> list[Image.Image]:
    """Noise images of assorted sizes, so the processor's resize and crop both act."""
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 256, (50 + 13 * i, 90 - 7 * i, 3), dtype=np.uint8)) for i in range(count)
    ]


def _pixels(processor: AlignProcessor, images: list[Image.Image]) -> np.ndarray:
    """``(B, 3, H, W)`` float32 pixels, as the processor makes them."""
    return processor(images=images, return_tensors="np")["pixel_values"].astype(np.float32)


def _text_batches(processor: AlignProcessor) -> list[dict[str, np.ndarray]]:
    """Processor outputs at both batch sizes, each padded to the longest caption and to max_length."""
    batches = []
    for batch in BATCH_SIZES:
        for padding in ("longest", "max_length"):
            encoded = processor(text=CAPTIONS[:batch], padding=padding, return_tensors="np")
            batches.append({k: encoded[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")})
    return batches


def _expected_text(reference: AlignModel, feeds: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        return reference.encode_text(**{k: torch.from_numpy(v) for k, v in feeds.items()}).numpy()


def _expected_images(reference: AlignModel, pixels: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return reference.encode_image(torch.from_numpy(pixels)).numpy()


def test_text_batches_cover_two_lengths(exported):
    lengths = {feeds["input_ids"].shape[1] for feeds in _text_batches(exported.processor)}
    assert len(lengths) >= 2, lengths


def test_onnx_towers_match_pytorch(exported):
    import onnxruntime as ort

    image = ort.InferenceSession(str(exported.onnx / "image_encoder.onnx"), providers=["CPUExecutionProvider"])
    text = ort.InferenceSession(str(exported.onnx / "text_encoder.onnx"), providers=["CPUExecutionProvider"])
    for batch in BATCH_SIZES:
        pixels = _pixels(exported.processor, _images(batch, seed=batch))
        got = image.run(["image_embeds"], {"pixel_values": pixels})[0]
        assert got.shape == (batch, exported.reference.config.projection_dim)
        np.testing.assert_allclose(got, _expected_images(exported.reference, pixels), atol=TOLERANCE, rtol=0)
    for feeds in _text_batches(exported.processor):
        got = text.run(["text_embeds"], feeds)[0]
        assert got.shape == (feeds["input_ids"].shape[0], exported.reference.config.projection_dim)
        np.testing.assert_allclose(got, _expected_text(exported.reference, feeds), atol=TOLERANCE, rtol=0)


def test_torch_export_programs_match_pytorch(exported):
    program = torch.export.load(exported.pt2 / "image_encoder.pt2")
    # BatchNorm went into the convolutions before export (for_inference()).
    assert not [node for node in program.graph.nodes if "batch_norm" in str(node.target)]
    assert [node for node in program.graph.nodes if "conv" in str(node.target)]
    image = program.module()
    text = torch.export.load(exported.pt2 / "text_encoder.pt2").module()
    with torch.no_grad():
        for batch in BATCH_SIZES:
            pixels = _pixels(exported.processor, _images(batch, seed=10 + batch))
            got = image(torch.from_numpy(pixels)).numpy()
            np.testing.assert_allclose(got, _expected_images(exported.reference, pixels), atol=TOLERANCE, rtol=0)
        for feeds in _text_batches(exported.processor):
            got = text(*(torch.from_numpy(feeds[k]) for k in ("input_ids", "attention_mask", "token_type_ids")))
            np.testing.assert_allclose(got.numpy(), _expected_text(exported.reference, feeds), atol=TOLERANCE, rtol=0)


def test_onnx_graphs_are_plain_onnx_with_named_dynamic_axes(exported):
    import onnx

    manifest = json.loads((exported.onnx / "export_config.json").read_text())
    dim = exported.reference.config.projection_dim

    def shapes(values):
        return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}

    image = onnx.load(str(exported.onnx / "image_encoder.onnx"))
    text = onnx.load(str(exported.onnx / "text_encoder.onnx"))
    for graph in (image, text):
        onnx.checker.check_model(graph, full_check=True)
        # Standard operators only: no custom domain that onnxruntime would need a plugin for.
        assert {entry.domain for entry in graph.opset_import} <= {"", "ai.onnx"}
        assert {node.domain for node in graph.graph.node} <= {"", "ai.onnx"}
        assert max(e.version for e in graph.opset_import) == manifest["opset"]
    assert shapes(image.graph.input) == {"pixel_values": ["batch", 3, 64, 64]}
    assert shapes(image.graph.output) == {"image_embeds": ["batch", dim]}
    text_axes = ["batch", "length"]
    assert shapes(text.graph.input) == {k: text_axes for k in ("input_ids", "attention_mask", "token_type_ids")}
    assert shapes(text.graph.output) == {"text_embeds": ["batch", dim]}
    assert manifest["batchnorm_folded"] is True
    # The manifest says what the graphs hold.
    for tower, graph in (("image_encoder", image), ("text_encoder", text)):
        described = manifest[tower]
        assert (exported.onnx / described["file"]).is_file()
        assert {i["name"]: i["shape"] for i in described["inputs"]} == shapes(graph.graph.input)
        assert {o["name"]: o["shape"] for o in described["outputs"]} == shapes(graph.graph.output)


def test_export_folders_carry_the_processor_and_the_parity_measured(exported):
    onnx_manifest = json.loads((exported.onnx / "export_config.json").read_text())
    pt2_manifest = json.loads((exported.pt2 / "export_config.json").read_text())
    assert onnx_manifest["exporter"].startswith("torch.onnx.export")
    assert pt2_manifest["exporter"] == "torch.export"
    assert pt2_manifest["image_encoder"]["file"] == "image_encoder.pt2"
    assert "max_abs_diff" not in pt2_manifest  # --no-verify
    assert set(onnx_manifest["max_abs_diff"]) == {"image_encoder", "text_encoder"}
    assert max(onnx_manifest["max_abs_diff"].values()) <= TOLERANCE
    assert onnx_manifest["text_encoder"]["max_length"] == exported.reference.config.text_config.max_position_embeddings
    images = _images(2, seed=7)
    for folder in (exported.onnx, exported.pt2):
        loaded = AlignProcessor.from_pretrained(folder)
        np.testing.assert_array_equal(
            loaded(images=images, return_tensors="np")["pixel_values"],
            exported.processor(images=images, return_tensors="np")["pixel_values"],
        )
        assert loaded(text=CAPTIONS)["input_ids"].tolist() == exported.processor(text=CAPTIONS)["input_ids"].tolist()


# The README's recipe, run where align_hf cannot be imported: the export folder is self-contained
# (transformers loads the processor as remote code from it, onnxruntime runs the graphs).
WITHOUT_ALIGN_HF = textwrap.dedent(
    """
    import importlib.abc, sys
    class HideAlignHF(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "align_hf":
                raise ImportError("align_hf is not installed in this interpreter")
    sys.meta_path.insert(0, HideAlignHF())

    import json
    import numpy as np
    import onnxruntime as ort
    from PIL import Image
    from transformers import AutoProcessor

    folder = sys.argv[1]
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    image_encoder = ort.InferenceSession(f"{folder}/image_encoder.onnx")
    text_encoder = ort.InferenceSession(f"{folder}/text_encoder.onnx")
    inputs = processor(text=["a red circle", "two blue squares"], images=Image.new("RGB", (120, 90), "red"),
                       return_tensors="np")
    image_embeds = image_encoder.run(None, {"pixel_values": inputs["pixel_values"]})[0]
    text_embeds = text_encoder.run(None, {k: inputs[k] for k in ("input_ids", "attention_mask", "token_type_ids")})[0]
    print(json.dumps({"image": image_embeds.tolist(), "text": text_embeds.tolist(),
                      "leaked": [m for m in sys.modules if m.split(".")[0] == "align_hf"]}))
    """
)


def test_export_folder_runs_with_onnxruntime_and_transformers_alone(exported, tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_ALIGN_HF, str(exported.onnx)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["leaked"] == []
    inputs = exported.processor(
        text=["a red circle", "two blue squares"], images=Image.new("RGB", (120, 90), "red"), return_tensors="pt"
    )
    with torch.no_grad():
        image = exported.reference.encode_image(inputs["pixel_values"]).numpy()
        text = exported.reference.encode_text(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"])
    np.testing.assert_allclose(np.array(report["image"]), image, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(np.array(report["text"]), text.numpy(), atol=TOLERANCE, rtol=0)


def test_manifest_temperature_reproduces_the_model_logits(exported):
    """Zero-shot scores from the ONNX embeddings and the manifest's temperature equal the model's."""
    import onnxruntime as ort

    manifest = json.loads((exported.onnx / "export_config.json").read_text())
    assert manifest["logits"] == "image_embeds @ text_embeds.T / temperature"
    image = ort.InferenceSession(str(exported.onnx / "image_encoder.onnx"), providers=["CPUExecutionProvider"])
    text = ort.InferenceSession(str(exported.onnx / "text_encoder.onnx"), providers=["CPUExecutionProvider"])
    inputs = exported.processor(text=CAPTIONS, images=_images(3, seed=20), return_tensors="np")
    inputs["pixel_values"] = inputs["pixel_values"].astype(np.float32)
    image_embeds = image.run(None, {"pixel_values": inputs["pixel_values"]})[0]
    text_embeds = text.run(None, {k: inputs[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")})[0]
    logits = image_embeds @ text_embeds.T / manifest["temperature"]
    with torch.no_grad():
        expected = exported.reference(**{k: torch.from_numpy(v) for k, v in inputs.items()}).logits_per_image.numpy()
    np.testing.assert_allclose(logits, expected, atol=64 * TOLERANCE, rtol=0)  # logits are x64 the cosines


def test_measure_parity_reports_a_wrong_graph():
    """The parity check the command records sees a graph that drifts from PyTorch."""
    from align_hf.export import IMAGE_INPUTS, measure_parity

    processor = tiny_processor()
    model = tiny_model(seed=5, vocab_size=len(processor.tokenizer))

    def run(tower, feeds):
        with torch.no_grad():
            if tower == "image_encoder":
                return model.encode_image(torch.from_numpy(feeds[IMAGE_INPUTS[0]])).numpy()
            tensors = {k: torch.from_numpy(v) for k, v in feeds.items()}
            tensors["attention_mask"] = torch.ones_like(tensors["attention_mask"])  # a graph that ignores the mask
            return model.encode_text(**tensors).numpy()

    worst = measure_parity(model, processor, run)
    assert worst["image_encoder"] == 0.0
    assert worst["text_encoder"] > 1e-3


def test_transformers_format_align_exports_to_onnx_matching_transformers(tmp_path):
    """A transformers-format ALIGN folder (EfficientNet-B0 with ALIGN's Keras padding, odd 65 px
    crop, 2-layer BERT) loads through the model loader, exports, and the ONNX towers give
    transformers' own normalised ``get_image_features`` / ``get_text_features``."""
    import transformers

    from align_hf.export import onnx_runner, random_text_batch, save_onnx
    from align_hf.loading import load_model_and_processor

    reference = healthy_hf_align(seed=4)
    reference.save_pretrained(tmp_path / "hf")
    image_processor = transformers.EfficientNetImageProcessor(
        size={"height": 74, "width": 74}, crop_size={"height": 65, "width": 65}, do_center_crop=True,
        rescale_factor=1 / 127.5, rescale_offset=True, do_normalize=False, include_top=False,
    )
    transformers.AlignProcessor(image_processor=image_processor, tokenizer=tiny_processor().tokenizer).save_pretrained(
        tmp_path / "hf"
    )
    model, processor = load_model_and_processor(tmp_path / "hf", device="cpu")
    manifest = save_onnx(model, processor, tmp_path / "onnx", verify=False)
    assert manifest["image_encoder"]["inputs"][0]["shape"] == ["batch", 3, 65, 65]
    run = onnx_runner(tmp_path / "onnx")

    def unit(features) -> np.ndarray:
        features = getattr(features, "pooler_output", features)  # a tensor or an output, by version
        return torch.nn.functional.normalize(features, dim=-1).numpy()

    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for batch in BATCH_SIZES:
            pixels = torch.rand(batch, 3, 65, 65, generator=generator) * 2 - 1
            got = run("image_encoder", {"pixel_values": pixels.numpy()})
            np.testing.assert_allclose(got, unit(reference.get_image_features(pixel_values=pixels)), atol=TOLERANCE, rtol=0)
            for length in (6, HF_TEXT["max_position_embeddings"]):
                feeds = random_text_batch(batch, length, HF_TEXT["vocab_size"], generator)
                expected = unit(reference.get_text_features(**{k: torch.from_numpy(v) for k, v in feeds.items()}))
                np.testing.assert_allclose(run("text_encoder", feeds), expected, atol=TOLERANCE, rtol=0)


def test_missing_onnx_packages_name_the_extra(monkeypatch):
    import importlib.util

    from align_hf.export import require_onnx_packages

    require_onnx_packages()  # installed here
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    with pytest.raises(ImportError, match=r"onnxscript.*align_hf\[export\]"):
        require_onnx_packages()
