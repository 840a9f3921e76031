"""CLIP_benchmark interop: its webdataset layout, its result JSON, and a loader for its model registry.

CLIP_benchmark (``clip_benchmark eval``) is the harness most CLIP-like papers report with. This
module lets the two meet in both directions:

* ``align-hf eval`` reads a dataset in CLIP_benchmark's webdataset layout
  (:func:`open_clip_benchmark_dataset`) and writes its result JSON (:func:`clip_benchmark_result`);
  :func:`write_clip_benchmark_dataset` writes that layout, e.g. for tests or to share a set;
* ``clip_benchmark eval`` runs an align_hf model through :func:`load_align_hf`, registered under the
  model type ``align_hf`` by :func:`register_with_clip_benchmark` or by the launcher
  ``python -m align_hf.evaluation.clip_benchmark eval ...`` (CLIP_benchmark's own command line).

The layout (``clip_benchmark.datasets.builder.build_wds_dataset``)::

    <root>/<split>/nshards.txt     number of shards n
    <root>/<split>/{0..n-1}.tar    samples: an image (.webp/.png/.jpg/.jpeg) and a .cls label
                                   or a .txt of captions, one per line
    <root>/classnames.txt          one class name per line, in label order
    <root>/zeroshot_classification_templates.txt   one prompt per line, "{c}" for the class
    <root>/dataset_type.txt        "retrieval" for captioned sets (else classification)

Result keys: classification ``acc1``, ``acc5`` (NaN under 5 classes), ``mean_per_class_recall``;
retrieval ``image_retrieval_recall@K`` (a caption finds its image: our ``text_to_image_R@K``) and
``text_retrieval_recall@K`` (an image finds any of its captions: our ``image_to_text_R@K``).
"""

from __future__ import annotations

import builtins
import itertools
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from align_hf.image_io import open_image

logger = logging.getLogger(__name__)

SHARD_COUNT_FILE = "nshards.txt"
CLASSNAMES_FILE = "classnames.txt"
TEMPLATES_FILE = "zeroshot_classification_templates.txt"
DATASET_TYPE_FILE = "dataset_type.txt"
# CLIP_benchmark's order of preference when a sample holds several images.
IMAGE_EXTENSIONS = ("webp", "png", "jpg", "jpeg")
MODEL_TYPE = "align_hf"
# What CLIP_benchmark's "task" field says for each of our evaluations.
TASKS = {"zero_shot": "zeroshot_classification", "retrieval": "zeroshot_retrieval"}


# --------------------------------------------------------------------------- templates


def templates_from_clip_benchmark(lines: Sequence[str]) -> list[str]:
    """CLIP_benchmark prompts (``"a photo of a {c}."``, filled with ``str.format(c=...)``) in our ``{}`` form.

    Formatting with ``c="{}"`` applies CLIP_benchmark's own rules (``{{`` is a literal brace);
    blank lines are dropped.
    """
    return [line.strip().format(c="{}") for line in lines if line.strip()]


def templates_to_clip_benchmark(templates: Sequence[str]) -> list[str]:
    """Our ``{}`` templates as CLIP_benchmark prompts: ``{c}`` for the class, other braces escaped."""
    out = []
    for template in templates:
        head, placeholder, tail = template.partition("{}")
        if not placeholder:
            raise ValueError(f"template {template!r} has no '{{}}' for the class name")
        escape = lambda part: part.replace("{", "{{").replace("}", "}}")  # noqa: E731
        out.append(f"{escape(head)}{{c}}{escape(tail)}")
    return out


# --------------------------------------------------------------------------- the dataset layout


def _read_lines(path: Path) -> list[str] | None:
    return path.read_text(encoding="utf-8").splitlines() if path.is_file() else None


def is_clip_benchmark_dataset(root: str | os.PathLike, split: str = "test") -> bool:
    """Whether ``root`` holds ``<split>/nshards.txt``, the one file CLIP_benchmark requires."""
    return (Path(root) / split / SHARD_COUNT_FILE).is_file()


@dataclass
class ClipBenchmarkDataset:
    """One split of a dataset in CLIP_benchmark's webdataset layout (see the module docstring)."""

    root: Path
    split: str
    dataset_type: str  # "classification", "retrieval" or "multilabel"
    shards: list[Path]
    classes: list[str] | None  # classnames.txt, every line a class (as CLIP_benchmark reads it)
    templates: list[str] | None  # zeroshot_classification_templates.txt, in our "{}" form

    @property
    def name(self) -> str:
        """CLIP_benchmark's name for a local webdataset: ``wds/<folder name>``."""
        return f"wds/{self.root.resolve().name}"

    def rows(self, image_extensions: Sequence[str] = IMAGE_EXTENSIONS) -> Iterator[dict[str, Any]]:
        """The samples in shard order: ``{"key", "image": bytes, "label": bytes | None}`` for
        classification, ``{"key", "image", "captions": [str, ...]}`` for retrieval.

        Samples without an image keep ``image=None`` (counted as unreadable by the evaluation); a
        damaged shard is logged and read up to the damage.
        """
        from align_hf.data.webdataset import ERROR_FIELD, iter_shard

        for shard in self.shards:
            for sample in iter_shard(os.fspath(shard)):
                if ERROR_FIELD in sample:
                    logger.warning("%s: %s", shard, sample[ERROR_FIELD])
                    continue
                image = next((sample[ext] for ext in image_extensions if ext in sample), None)
                row: dict[str, Any] = {"key": sample["__key__"], "image": image}
                if self.dataset_type == "retrieval":
                    # CLIP_benchmark splits the .txt with str.splitlines and keeps every line.
                    row["captions"] = sample.get("txt", b"").decode("utf-8", "replace").splitlines()
                else:
                    row["label"] = sample.get("cls")
                yield row


def open_clip_benchmark_dataset(root: str | os.PathLike, split: str = "test") -> ClipBenchmarkDataset:
    """Read the metadata of ``root``'s ``split`` in CLIP_benchmark's webdataset layout.

    Raises:
        FileNotFoundError: ``<root>/<split>/nshards.txt`` or one of the shards is missing.
        ValueError: a multilabel dataset (``.npy`` labels), which align_hf does not evaluate.
    """
    base = Path(root)
    count_file = base / split / SHARD_COUNT_FILE
    if not count_file.is_file():
        raise FileNotFoundError(f"{count_file} not found: not a CLIP_benchmark webdataset split")
    shards = [base / split / f"{i}.tar" for i in range(int(count_file.read_text().strip()))]
    missing = [str(s) for s in shards if not s.is_file()]
    if missing:
        raise FileNotFoundError(f"{count_file} lists {len(shards)} shards, missing: {missing[:3]}")
    type_lines = _read_lines(base / DATASET_TYPE_FILE)
    dataset_type = (type_lines[0].strip().lower() if type_lines else "") or "classification"
    if dataset_type not in ("classification", "retrieval"):
        raise ValueError(f"{base}: dataset type {dataset_type!r} is not supported (classification or retrieval)")
    classes = _read_lines(base / CLASSNAMES_FILE)
    templates = _read_lines(base / TEMPLATES_FILE)
    return ClipBenchmarkDataset(
        root=base, split=split, dataset_type=dataset_type, shards=shards,
        classes=[c.strip() for c in classes] if classes is not None else None,
        templates=templates_from_clip_benchmark(templates) if templates is not None else None,
    )


def write_clip_benchmark_dataset(
    root: str | os.PathLike,
    samples: Sequence[tuple[Any, Any]],
    split: str = "test",
    classes: Sequence[str] | None = None,
    templates: Sequence[str] | None = None,
    retrieval: bool = False,
    image_format: str = "png",
    max_count: int = 10_000,
) -> list[Path]:
    """Write ``(image, label)`` or, with ``retrieval``, ``(image, [captions])`` pairs in CLIP_benchmark's layout.

    Args:
        samples: images as PIL images (saved as ``image_format``: ``png`` or ``webp``, lossless)
            or encoded bytes already in that format; labels are class indices.
        classes / templates: written to ``classnames.txt`` and
            ``zeroshot_classification_templates.txt`` (templates in our ``{}`` form).
        max_count: samples per shard.

    Returns:
        the shard paths ``<root>/<split>/{0..n-1}.tar``.
    """
    import io

    from align_hf.data.webdataset import ShardWriter

    if image_format not in ("png", "webp"):
        raise ValueError(f"image_format must be png or webp (lossless), got {image_format!r}")
    base = Path(root)
    folder = base / split
    folder.mkdir(parents=True, exist_ok=True)
    with ShardWriter(os.fspath(folder), prefix="tmp", max_count=max_count) as writer:
        for index, (image, target) in enumerate(samples):
            if not isinstance(image, (bytes, bytearray)):
                buffer = io.BytesIO()
                image.save(buffer, format=image_format, **({"lossless": True} if image_format == "webp" else {}))
                image = buffer.getvalue()
            if retrieval:
                # One caption a line; a newline inside a caption is escaped as CLIP_benchmark's writer does.
                field = {"txt": "\n".join(c.replace("\n", r"\n") for c in target)}
            else:
                field = {"cls": str(int(target))}
            writer.write({"__key__": f"s{index:07d}", image_format: bytes(image), **field})
    # ShardWriter names shards "<prefix>-00000.tar"; CLIP_benchmark expects "0.tar", "1.tar", ...
    shards = []
    for number, path in enumerate(writer.paths):
        shards.append(folder / f"{number}.tar")
        os.replace(path, shards[-1])
    (folder / SHARD_COUNT_FILE).write_text(f"{len(shards)}\n")
    if retrieval:
        (base / DATASET_TYPE_FILE).write_text("retrieval\n")
    if classes is not None:
        (base / CLASSNAMES_FILE).write_text("".join(f"{c}\n" for c in classes), encoding="utf-8")
    if templates is not None:
        lines = templates_to_clip_benchmark(templates)
        (base / TEMPLATES_FILE).write_text("".join(f"{t}\n" for t in lines), encoding="utf-8")
    return shards


# --------------------------------------------------------------------------- results


def clip_benchmark_metrics(metrics: Mapping[str, Any], task: str) -> dict[str, float]:
    """Our metric keys renamed to CLIP_benchmark's, in its order.

    Args:
        metrics: :func:`~align_hf.evaluation.runner.evaluate_zero_shot` or
            :func:`~align_hf.evaluation.runner.evaluate_retrieval` output.
        task: ``"zero_shot"`` or ``"retrieval"``.

    ``acc5`` is NaN without a top-5 (fewer than 5 classes), as CLIP_benchmark writes it.
    """
    if task == "zero_shot":
        return {
            "acc1": metrics["top1"],
            "acc5": metrics.get("top5", float("nan")),
            "mean_per_class_recall": metrics["mean_per_class_recall"],
        }
    if task == "retrieval":
        ks = [int(key.rsplit("@", 1)[1]) for key in metrics if key.startswith("text_to_image_R@")]
        out = {}
        for k in ks:
            out[f"image_retrieval_recall@{k}"] = metrics[f"text_to_image_R@{k}"]
            out[f"text_retrieval_recall@{k}"] = metrics[f"image_to_text_R@{k}"]
        return out
    raise ValueError(f"task must be 'zero_shot' or 'retrieval', got {task!r}")


def clip_benchmark_result(
    metrics: Mapping[str, Any],
    task: str,
    dataset: str,
    model: str,
    pretrained: str = MODEL_TYPE,
    language: str = "en",
) -> dict[str, Any]:
    """A result in the layout ``clip_benchmark eval`` writes (and ``clip_benchmark build`` reads):
    ``{"dataset", "model", "pretrained", "task", "metrics", "language"}``."""
    return {
        "dataset": dataset,
        "model": model,
        "pretrained": pretrained,
        "task": TASKS[task],
        "metrics": clip_benchmark_metrics(metrics, task),
        "language": language,
    }


# --------------------------------------------------------------------------- the model loader


class ClipBenchmarkTokenizer:
    """Texts -> one ``(B, 2, L)`` int64 tensor: token ids in ``[:, 0]``, the attention mask in ``[:, 1]``.

    CLIP_benchmark moves what the tokenizer returns with ``.to(device)`` and hands it to
    ``encode_text`` as is, so ids and mask travel as one tensor; BERT needs the mask, or padded
    texts embed differently from unpadded ones. Padding and truncation are those of
    :func:`~align_hf.evaluation.encoding.encode_texts`.
    """

    def __init__(self, processor: Any):
        self.processor = processor

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        enc = self.processor(text=texts, return_tensors="pt", padding=True, truncation=True)
        return torch.stack([enc["input_ids"], enc["attention_mask"]], dim=1)


class ClipBenchmarkTransform:
    """A PIL image -> ``(3, H, W)`` pixel values, as :func:`~align_hf.evaluation.encoding.encode_images` prepares them
    (upright 8-bit RGB, then the processor's resize, crop and rescale)."""

    def __init__(self, processor: Any):
        self.processor = processor

    def __call__(self, image: Any) -> torch.Tensor:
        return self.processor(images=[open_image(image)], return_tensors="pt")["pixel_values"][0]


class ClipBenchmarkModel(torch.nn.Module):
    """An :class:`~align_hf.modeling_align.AlignModel` with CLIP_benchmark's ``encode_image`` /
    ``encode_text`` calls; embeddings are unit-norm (CLIP_benchmark normalises again)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` pixel values -> ``(B, D)``."""
        from align_hf.evaluation.encoding import fast_path

        param = next(self.model.parameters())
        pixels = images.to(device=param.device, dtype=param.dtype).contiguous(memory_format=torch.channels_last)
        with fast_path(self.model):
            return self.model.encode_image(pixels, normalize=True)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, 2, L)`` ids and mask from :class:`ClipBenchmarkTokenizer` -> ``(B, D)``."""
        if tokens.ndim != 3 or tokens.shape[1] != 2:
            raise ValueError(f"expected (B, 2, L) ids and mask from ClipBenchmarkTokenizer, got shape {tuple(tokens.shape)}")
        return self.model.encode_text(input_ids=tokens[:, 0], attention_mask=tokens[:, 1], normalize=True)


def load_align_hf(
    model_name: str,
    pretrained: str | None = None,
    cache_dir: str | None = None,
    device: Any = "cpu",
) -> tuple[ClipBenchmarkModel, ClipBenchmarkTransform, ClipBenchmarkTokenizer]:
    """CLIP_benchmark's loader signature: ``(model, transform, tokenizer)`` for an align_hf model.

    Args:
        model_name: the align_hf or transformers ALIGN checkpoint (folder or Hub id), as
            ``clip_benchmark eval --model``.
        pretrained: only recorded in CLIP_benchmark's results (the checkpoint carries its weights).
        cache_dir: not used: Hub downloads go to the usual Hugging Face cache (``HF_HOME``).
        device: where the model goes.
    """
    from align_hf.loading import load_model_and_processor

    if cache_dir:
        logger.info("cache_dir=%s ignored: Hub files go to the Hugging Face cache", cache_dir)
    model, processor = load_model_and_processor(model_name, device=str(device))
    wrapped = ClipBenchmarkModel(model).eval()
    return wrapped, ClipBenchmarkTransform(processor), ClipBenchmarkTokenizer(processor)


def size_one_float(value: Any) -> float:
    """``float()`` that takes the one element of a size-1 array, as NumPy did before 2.4."""
    if isinstance(value, np.ndarray) and value.size == 1:
        return builtins.float(value.reshape(()))
    return builtins.float(value)


def fix_numpy_scalar_conversion() -> bool:
    """Let CLIP_benchmark's top-k accuracy run under NumPy >= 2.4; True when a fix was needed.

    CLIP_benchmark 1.6.2's ``zeroshot_classification.accuracy`` calls ``float()`` on a ``(1,)``
    array, which NumPy 2.4 refuses ("only 0-dimensional arrays can be converted"), so every
    zero-shot classification run fails. :func:`size_one_float` is put in that module's globals,
    where it shadows the builtin for its code only; the metric code itself is unchanged.
    """
    from clip_benchmark.metrics import zeroshot_classification

    try:
        builtins.float(np.ones(1))
        return False
    except TypeError:
        zeroshot_classification.float = size_one_float
        return True


def register_with_clip_benchmark(name: str = MODEL_TYPE) -> None:
    """Add :func:`load_align_hf` to CLIP_benchmark's model registry as model type ``name``
    (and apply :func:`fix_numpy_scalar_conversion`).

    The registry dict and the list its command line takes ``--model_type`` choices from are
    both changed in place, so the command line parsed afterwards accepts ``name``.
    """
    from clip_benchmark import models

    models.TYPE2FUNC[name] = load_align_hf
    if name not in models.MODEL_TYPES:
        models.MODEL_TYPES.append(name)
    fix_numpy_scalar_conversion()


def _with_defaults(argv: list[str]) -> list[str]:
    """``clip_benchmark eval`` arguments with align_hf defaults for the flags not given."""
    if not argv or argv[0] != "eval":
        return argv
    given = {arg.split("=", 1)[0] for arg in argv if arg.startswith("--")}
    extra: list[str] = []
    if "--model_type" not in given:
        extra += ["--model_type", MODEL_TYPE]
    if not given & {"--pretrained", "--pretrained_model"}:
        extra += ["--pretrained", MODEL_TYPE]  # CLIP_benchmark's default would name an OpenCLIP checkpoint
    if "--output" not in given and "--model" in given:
        # CLIP_benchmark puts the model name in the output file name; a path or Hub id holds "/".
        position = next(i for i, arg in enumerate(argv) if arg.split("=", 1)[0] == "--model")
        models = argv[position].split("=", 1)[1:] or list(
            itertools.takewhile(lambda arg: not arg.startswith("--"), argv[position + 1 :])
        )
        if len(models) == 1:  # several models would share one name: leave CLIP_benchmark's template
            slug = models[0].strip("/").replace("/", "_") or MODEL_TYPE
            extra += ["--output", f"{{dataset}}_{{pretrained}}_{slug}_{{language}}_{{task}}.json"]
    return argv + extra


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m align_hf.evaluation.clip_benchmark eval ...``: CLIP_benchmark's command line with
    ``align_hf`` registered and the default model type (plus ``--pretrained align_hf`` and an output
    name without "/" when not given)."""
    from clip_benchmark import cli

    register_with_clip_benchmark()
    args = _with_defaults(list(sys.argv[1:] if argv is None else argv))
    saved = sys.argv
    sys.argv = ["clip_benchmark", *args]  # its parser reads sys.argv
    try:
        cli.main()
    finally:
        sys.argv = saved
    return 0


__all__ = [
    "ClipBenchmarkDataset",
    "ClipBenchmarkModel",
    "ClipBenchmarkTokenizer",
    "ClipBenchmarkTransform",
    "clip_benchmark_metrics",
    "clip_benchmark_result",
    "fix_numpy_scalar_conversion",
    "is_clip_benchmark_dataset",
    "load_align_hf",
    "main",
    "open_clip_benchmark_dataset",
    "register_with_clip_benchmark",
    "size_one_float",
    "templates_from_clip_benchmark",
    "templates_to_clip_benchmark",
    "write_clip_benchmark_dataset",
]

if __name__ == "__main__":
    sys.exit(main())
