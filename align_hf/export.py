"""Export the two towers as standalone graphs: ONNX models for onnxruntime, ``torch.export`` programs.

Each tower becomes its own graph, so a search service can embed queries with the text tower while
the image tower runs offline over a collection:

- ``image_encoder``: ``pixel_values`` ``(B, 3, H, W)`` float32 -> ``image_embeds`` ``(B, D)``;
- ``text_encoder``: ``input_ids``, ``attention_mask``, ``token_type_ids`` ``(B, L)`` int64 ->
  ``text_embeds`` ``(B, D)``.

Both outputs are unit-norm (``model.encode_image`` / ``model.encode_text``), so cosine similarity
is a dot product. ``B`` is dynamic in both graphs and ``L`` in the text graph (up to the text
encoder's position table); ``H, W`` are fixed at the processor's crop size. The graphs come from
the exporters torch ships: ``torch.export.export`` traces each tower, and ``torch.onnx.export``
(its dynamo exporter, which runs ``torch.export`` itself) translates it to ONNX. BatchNorm is
folded into the convolutions first (:meth:`~align_hf.modeling_align.AlignModel.for_inference`).
Beside the graphs go the processor files and ``export_config.json`` naming inputs, outputs,
opset, preprocessing and the parity measured against PyTorch, enough to serve with onnxruntime
(or torch) alone.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

MANIFEST = "export_config.json"
IMAGE_INPUTS = ("pixel_values",)
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
IMAGE_OUTPUT = "image_embeds"
TEXT_OUTPUT = "text_embeds"
# Encoders whose position ids start after the padding index (RoBERTa's scheme) lose that many
# rows of their position table.
_OFFSET_POSITION_MODELS = ("roberta", "xlm-roberta", "camembert")
# Sample sizes for tracing. Not 0 or 1 (torch.export specialises those) and distinct from each
# other, so no two dynamic dimensions are taken for one.
_TRACE_BATCH, _TRACE_LENGTH = 2, 7


class ImageTower(nn.Module):
    """``pixel_values`` ``(B, 3, H, W)`` -> unit-norm ``image_embeds`` ``(B, D)``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixel_values)


class TextTower(nn.Module):
    """``input_ids``, ``attention_mask``, ``token_type_ids`` ``(B, L)`` -> unit-norm ``text_embeds`` ``(B, D)``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        return self.model.encode_text(input_ids, attention_mask, token_type_ids)


def image_size(processor: Any) -> tuple[int, int]:
    """``(H, W)`` of the processor's output: the crop when it crops, else the resize."""
    image_processor = processor.image_processor
    size = image_processor.crop_size if image_processor.do_center_crop else image_processor.size
    return int(size["height"]), int(size["width"])


def max_text_length(model: nn.Module) -> int:
    """The longest text the text tower embeds: its position table, less RoBERTa's padding offset."""
    text_config = model.config.text_config
    limit = int(text_config.max_position_embeddings)
    if text_config.text_model_type in _OFFSET_POSITION_MODELS:
        limit -= int(getattr(text_config, "pad_token_id", 1) or 1) + 1
    return limit


def prepare_towers(model: nn.Module, fold_batchnorm: bool = True) -> tuple[ImageTower, TextTower]:
    """The two towers of a float32 CPU copy of ``model`` (left as it is), in eval mode, BatchNorm
    folded if asked. ONNX has no memory formats, so the copy stays contiguous (not channels-last)."""
    copied = model.for_inference(channels_last=False) if fold_batchnorm else copy.deepcopy(model).eval()
    copied = copied.float().cpu()
    return ImageTower(copied).eval(), TextTower(copied).eval()


def trace_inputs(model: nn.Module, processor: Any) -> tuple[tuple[torch.Tensor], tuple[torch.Tensor, ...]]:
    """Sample ``(pixel_values,)`` and ``(input_ids, attention_mask, token_type_ids)`` for tracing."""
    height, width = image_size(processor)
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(_TRACE_BATCH, model.config.vision_config.num_channels, height, width, generator=generator)
    vocab = int(model.config.text_config.vocab_size)
    ids = torch.randint(0, vocab, (_TRACE_BATCH, _TRACE_LENGTH), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, _TRACE_LENGTH - 2 :] = 0  # one padded row: the traced graph must not depend on it
    return (pixels * 2 - 1,), (ids, mask, torch.zeros_like(ids))


def dynamic_shapes(model: nn.Module) -> tuple[dict, dict]:
    """``dynamic_shapes`` for the image and the text tower: dynamic batch, and dynamic text length."""
    batch = torch.export.Dim("batch", min=1)
    length = torch.export.Dim("length", min=1, max=max_text_length(model))
    return {"pixel_values": {0: batch}}, {name: {0: batch, 1: length} for name in TEXT_INPUTS}


def export_programs(
    model: nn.Module, processor: Any, fold_batchnorm: bool = True
) -> dict[str, torch.export.ExportedProgram]:
    """``{"image_encoder": ..., "text_encoder": ...}``: ``torch.export`` programs of the two towers."""
    image_tower, text_tower = prepare_towers(model, fold_batchnorm)
    image_args, text_args = trace_inputs(model, processor)
    image_shapes, text_shapes = dynamic_shapes(model)
    with torch.no_grad():
        return {
            "image_encoder": torch.export.export(image_tower, image_args, dynamic_shapes=image_shapes),
            "text_encoder": torch.export.export(text_tower, text_args, dynamic_shapes=text_shapes),
        }


def save_torch_export(
    model: nn.Module,
    processor: Any,
    output_dir: str | os.PathLike,
    fold_batchnorm: bool = True,
    verify: bool = True,
    source: str | None = None,
) -> dict[str, Any]:
    """Write ``image_encoder.pt2`` and ``text_encoder.pt2`` (``torch.export.save``), the processor
    files and the manifest to ``output_dir``; returns the manifest."""
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    programs = export_programs(model, processor, fold_batchnorm)
    for name, program in programs.items():
        torch.export.save(program, output / f"{name}.pt2")
    seconds = time.perf_counter() - started
    manifest = _manifest(model, processor, "torch.export", fold_batchnorm, seconds, source)
    manifest["image_encoder"]["file"] = "image_encoder.pt2"
    manifest["text_encoder"]["file"] = "text_encoder.pt2"
    if verify:
        loaded = {name: torch.export.load(output / f"{name}.pt2").module() for name in programs}
        manifest["max_abs_diff"] = measure_parity(model, processor, _torch_runner(loaded))
    return _finish(manifest, processor, output)


def save_onnx(
    model: nn.Module,
    processor: Any,
    output_dir: str | os.PathLike,
    opset: int | None = None,
    fold_batchnorm: bool = True,
    verify: bool = True,
    source: str | None = None,
) -> dict[str, Any]:
    """Write ``image_encoder.onnx`` and ``text_encoder.onnx``, the processor files and the manifest
    to ``output_dir``; returns the manifest.

    Weights go inside each ``.onnx`` file unless the tower passes protobuf's 2 GB limit, where
    torch writes them to a ``.onnx.data`` file beside it. ``opset``: ONNX opset (default: the
    exporter's). ``verify`` runs onnxruntime on fresh inputs and records the largest difference
    to PyTorch in the manifest.
    """
    require_onnx_packages()
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    image_tower, text_tower = prepare_towers(model, fold_batchnorm)
    image_args, text_args = trace_inputs(model, processor)
    image_shapes, text_shapes = dynamic_shapes(model)
    started = time.perf_counter()
    jobs = (
        ("image_encoder", image_tower, image_args, image_shapes, IMAGE_INPUTS, IMAGE_OUTPUT),
        ("text_encoder", text_tower, text_args, text_shapes, TEXT_INPUTS, TEXT_OUTPUT),
    )
    opsets = set()
    for name, tower, args, shapes, inputs, output_name in jobs:
        with torch.no_grad(), warnings.catch_warnings():
            # The text inputs share one batch and one length dimension; torch.onnx warns once per
            # input that it names the axis only once.
            warnings.filterwarnings("ignore", message=".*axis name.*will not be used")
            program = torch.onnx.export(
                tower,
                args,
                dynamo=True,
                dynamic_shapes=shapes,
                input_names=list(inputs),
                output_names=[output_name],
                opset_version=opset,
                verbose=False,
            )
        program.save(output / f"{name}.onnx")
        opsets.add(_default_opset(program.model_proto))
    seconds = time.perf_counter() - started
    manifest = _manifest(model, processor, "torch.onnx.export(dynamo=True)", fold_batchnorm, seconds, source)
    manifest["opset"] = max(opsets)
    manifest["image_encoder"]["file"] = "image_encoder.onnx"
    manifest["text_encoder"]["file"] = "text_encoder.onnx"
    if verify:
        manifest["max_abs_diff"] = measure_parity(model, processor, onnx_runner(output))
    return _finish(manifest, processor, output)


def require_onnx_packages() -> None:
    """Raise ImportError naming the ``[export]`` extra when torch.onnx's dependencies are missing."""
    import importlib.util

    missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(
            f"ONNX export needs {', '.join(missing)}: pip install 'align_hf[export]' (onnx, onnxscript, onnxruntime)"
        )


def onnx_runner(output_dir: str | os.PathLike) -> Callable[[str, Mapping[str, np.ndarray]], np.ndarray]:
    """``run(tower, feeds)`` over the two ONNX files of ``output_dir`` with onnxruntime (CPU)."""
    import onnxruntime as ort

    sessions = {
        name: ort.InferenceSession(str(Path(output_dir) / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        for name in ("image_encoder", "text_encoder")
    }

    def run(tower: str, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        return sessions[tower].run(None, dict(feeds))[0]

    return run


def measure_parity(
    model: nn.Module,
    processor: Any,
    run: Callable[[str, Mapping[str, np.ndarray]], np.ndarray],
    batch_sizes: tuple[int, ...] = (1, 3),
    seed: int = 1,
) -> dict[str, float]:
    """Largest ``|exported - PyTorch|`` of each tower over fresh inputs at ``batch_sizes``.

    The text inputs take two lengths (short, and the longest the tower takes) with a padded row
    in every batch, so both the graph's masking and PyTorch's padding trim are exercised.
    ``run(tower, feeds)`` returns the exported tower's ``(B, D)`` output as numpy.
    """
    reference = _cpu_float32(model)
    height, width = image_size(processor)
    channels = int(model.config.vision_config.num_channels)
    generator = torch.Generator().manual_seed(seed)
    worst = {"image_encoder": 0.0, "text_encoder": 0.0}
    lengths = sorted({min(5, max_text_length(model)), max_text_length(model)})
    with torch.no_grad():
        for batch in batch_sizes:
            pixels = torch.rand(batch, channels, height, width, generator=generator) * 2 - 1
            expected = reference.encode_image(pixels).numpy()
            got = run("image_encoder", {"pixel_values": pixels.numpy()})
            worst["image_encoder"] = max(worst["image_encoder"], float(np.abs(got - expected).max()))
            for length in lengths:
                feeds = random_text_batch(batch, length, int(model.config.text_config.vocab_size), generator)
                expected = reference.encode_text(**{k: torch.from_numpy(v) for k, v in feeds.items()}).numpy()
                got = run("text_encoder", feeds)
                worst["text_encoder"] = max(worst["text_encoder"], float(np.abs(got - expected).max()))
    return worst


def random_text_batch(
    batch: int, length: int, vocab_size: int, generator: torch.Generator | None = None
) -> dict[str, np.ndarray]:
    """int64 ``input_ids``/``attention_mask``/``token_type_ids`` ``(batch, length)``; the last row is
    padded after its first half (when ``length > 1``)."""
    ids = torch.randint(0, vocab_size, (batch, length), generator=generator)
    mask = torch.ones_like(ids)
    if length > 1:
        mask[-1, max(1, length // 2) :] = 0
    return {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": np.zeros_like(ids.numpy())}


def _torch_runner(modules: Mapping[str, nn.Module]) -> Callable[[str, Mapping[str, np.ndarray]], np.ndarray]:
    def run(tower: str, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        names = IMAGE_INPUTS if tower == "image_encoder" else TEXT_INPUTS
        with torch.no_grad():
            return modules[tower](*(torch.from_numpy(feeds[n]) for n in names)).numpy()

    return run


def _cpu_float32(model: nn.Module) -> nn.Module:
    """``model`` itself when it is a float32 CPU model in eval mode, else such a copy."""
    first = next(model.parameters())
    if first.device.type == "cpu" and first.dtype == torch.float32 and not model.training:
        return model
    return copy.deepcopy(model).float().cpu().eval()


def _default_opset(model_proto: Any) -> int:
    return next(entry.version for entry in model_proto.opset_import if entry.domain in ("", "ai.onnx"))


def _manifest(
    model: nn.Module, processor: Any, exporter: str, fold_batchnorm: bool, seconds: float, source: str | None
) -> dict[str, Any]:
    """What a user needs to feed the graphs and read their outputs, without align_hf."""
    from align_hf import __version__
    from align_hf.processing_align import ALIGN_MAX_LENGTH

    height, width = image_size(processor)
    dim = int(model.config.projection_dim)
    head = model.contrastive_head
    image_processor = processor.image_processor
    return {
        "source_model": source or str(getattr(model.config, "_name_or_path", "") or ""),
        "exporter": exporter,
        "torch_version": torch.__version__.split("+")[0],
        "align_hf_version": __version__,
        "batchnorm_folded": bool(fold_batchnorm),
        "export_seconds": round(seconds, 2),
        "embedding_dim": dim,
        "image_encoder": {
            "inputs": [{"name": "pixel_values", "dtype": "float32", "shape": ["batch", 3, height, width]}],
            "outputs": [{"name": IMAGE_OUTPUT, "dtype": "float32", "shape": ["batch", dim], "unit_norm": True}],
        },
        "text_encoder": {
            "inputs": [{"name": name, "dtype": "int64", "shape": ["batch", "length"]} for name in TEXT_INPUTS],
            "outputs": [{"name": TEXT_OUTPUT, "dtype": "float32", "shape": ["batch", dim], "unit_norm": True}],
            "max_length": max_text_length(model),
        },
        # Zero-shot / retrieval scores as the model computes them.
        "logits": "image_embeds @ text_embeds.T / temperature" + (" + bias" if head.bias is not None else ""),
        "temperature": float(head.get_temperature().detach()),
        "bias": None if head.bias is None else float(head.bias.detach()),
        # The processor files beside the graphs hold these too; repeated for users without transformers.
        "preprocessing": {
            "resize": (
                {"height": int(image_processor.size["height"]), "width": int(image_processor.size["width"])}
                if image_processor.do_resize
                else None
            ),
            "resample": int(image_processor.resample),
            "center_crop": {"height": height, "width": width} if image_processor.do_center_crop else None,
            "rescale_factor": float(image_processor.rescale_factor) if image_processor.do_rescale else None,
            "rescale_offset": bool(getattr(image_processor, "rescale_offset", False)),
            "normalize": (
                {"mean": list(image_processor.image_mean), "std": list(image_processor.image_std)}
                if image_processor.do_normalize
                else None
            ),
            "text_padding": "max_length",
            "text_max_length": min(ALIGN_MAX_LENGTH, int(processor.tokenizer.model_max_length or ALIGN_MAX_LENGTH)),
        },
    }


def _finish(manifest: dict[str, Any], processor: Any, output: Path) -> dict[str, Any]:
    processor.save_pretrained(output)
    with open(output / MANIFEST, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=2)
    logger.info("exported %s to %s in %.1fs", manifest["exporter"], output, manifest["export_seconds"])
    return manifest


__all__ = [
    "IMAGE_INPUTS",
    "IMAGE_OUTPUT",
    "ImageTower",
    "MANIFEST",
    "TEXT_INPUTS",
    "TEXT_OUTPUT",
    "TextTower",
    "dynamic_shapes",
    "export_programs",
    "image_size",
    "max_text_length",
    "measure_parity",
    "onnx_runner",
    "prepare_towers",
    "random_text_batch",
    "require_onnx_packages",
    "save_onnx",
    "save_torch_export",
    "trace_inputs",
]
