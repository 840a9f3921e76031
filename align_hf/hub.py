"""Hub helpers: reading config/weights of a folder or repo, the model card, and the upload."""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from typing import Any

from huggingface_hub import HfApi, ModelCard, ModelCardData
from huggingface_hub.repocard_data import EvalResult

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
PICKLE_WEIGHTS = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"
# The ``from_pretrained`` keyword arguments that say where and how files are fetched.
HUB_OPTIONS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")


def hub_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The :data:`HUB_OPTIONS` set (not None) in ``kwargs``, to hand to ``cached_file``."""
    return {k: kwargs[k] for k in HUB_OPTIONS if kwargs.get(k) is not None}


def resolve_file(repo: str | os.PathLike, filename: str, **options) -> str | None:
    """Local path of ``filename`` in a folder or Hub repo (downloaded/cached as usual), or None."""
    from transformers.utils import cached_file

    return cached_file(
        str(repo),
        filename,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
        **options,
    )


def read_config_dict(repo: str | os.PathLike, **options) -> dict[str, Any] | None:
    path = resolve_file(repo, "config.json", **options)
    if path is None:
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


class UnsafePickleError(ValueError):
    """A ``.bin`` checkpoint that ``torch.load(weights_only=True)`` refuses: unpickling it would run code."""


def weight_files(
    repo: str | os.PathLike, allow_pickle: bool = False, use_safetensors: bool | None = None, **options
) -> list[str]:
    """Local paths of a repo's weight files, the way transformers picks them.

    safetensors (single file, else sharded index) come first; ``pytorch_model.bin`` (single or
    sharded) only when no safetensors exist or ``use_safetensors=False``. A pickle is checked to
    load with ``torch.load(weights_only=True)`` (tensors and plain containers only) unless
    ``allow_pickle=True``, which trusts the file to be fully unpickled.

    Raises:
        UnsafePickleError: a ``.bin`` file needs code execution to load (and ``allow_pickle`` is off).
        FileNotFoundError: the repo has no weights at all.
    """
    formats = [(SAFE_WEIGHTS, SAFE_INDEX), (PICKLE_WEIGHTS, PICKLE_INDEX)]
    if use_safetensors is False:
        formats = formats[1:]
    for single, index in formats:
        paths = _resolve_weight_set(repo, single, index, options)
        if not paths:
            continue
        if single == PICKLE_WEIGHTS and not allow_pickle:
            for path in paths:
                check_weights_only(path)
        return paths
    names = ", ".join(name for pair in formats for name in pair)
    raise FileNotFoundError(f"No model weights ({names}) found in {repo}")


def _resolve_weight_set(repo, single: str, index: str, options: dict[str, Any]) -> list[str]:
    """``[single]``, or every shard named by ``index``, as local paths; ``[]`` when neither exists."""
    path = resolve_file(repo, single, **options)
    if path:
        return [path]
    index_path = resolve_file(repo, index, **options)
    if not index_path:
        return []
    with open(index_path, encoding="utf-8") as handle:
        shards = sorted(set(json.load(handle)["weight_map"].values()))
    paths = [resolve_file(repo, shard, **options) for shard in shards]
    missing = [shard for shard, shard_path in zip(shards, paths) if not shard_path]
    if missing:
        raise FileNotFoundError(f"{repo}: {index} names shards that are missing: {missing}")
    return paths


def _unsafe_pickle(path: str, cause: BaseException) -> UnsafePickleError:
    # torch's message is long; the line naming the refused global is the informative one.
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    reason = next((line for line in lines if "GLOBAL" in line), lines[0] if lines else type(cause).__name__)
    return UnsafePickleError(
        f"{path} cannot be loaded with torch.load(weights_only=True): unpickling it would run code "
        f"({reason}). "
        "Plain state dicts of tensors load without this error. If you trust the source, pass "
        "allow_pickle=True (AlignModel.from_pretrained / load_model_and_processor; "
        "`align-hf convert from-transformers --allow-pickle`), or convert the file to safetensors."
    )


def check_weights_only(path: str) -> None:
    """Raise :class:`UnsafePickleError` unless ``path`` loads with ``torch.load(weights_only=True)``.

    Tensors land on the meta device, so the check costs the unpickling, not the tensor bytes.
    """
    import pickle

    import torch

    try:
        torch.load(path, map_location="meta", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _unsafe_pickle(path, exc) from exc


def load_weight_file(path: str, allow_pickle: bool = False) -> dict:
    """The state dict in one weight file (safetensors, or a pickle read with ``weights_only=True``
    unless ``allow_pickle``), on the CPU."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as exc:
        if allow_pickle:
            raise
        raise _unsafe_pickle(path, exc) from exc


def load_weight_files(paths: list[str], allow_pickle: bool = False) -> dict:
    """The merged state dict of ``paths`` (the files :func:`weight_files` returns), on the CPU."""
    state: dict = {}
    for path in paths:
        state.update(load_weight_file(path, allow_pickle=allow_pickle))
    return state


def prepare_weights(repo: str | os.PathLike, allow_pickle: bool, kwargs: dict[str, Any]) -> dict | None:
    """The weight check of ``AlignModel.from_pretrained`` before it hands over to transformers.

    Finds the files transformers will pick (safetensors first) and checks that a
    ``pytorch_model.bin`` loads with ``torch.load(weights_only=True)``, so an unsafe pickle fails
    with an error naming it (:class:`UnsafePickleError`). ``allow_pickle`` (or transformers'
    ``weights_only=False``, popped from ``kwargs``) trusts pickles to be fully unpickled; as
    transformers 5 reads ``.bin`` files with ``weights_only=True`` whatever it is told, their
    state dict is returned then, to pass as ``state_dict``. Returns None otherwise.
    """
    trusted = kwargs.pop("weights_only", True) is False or allow_pickle
    files = weight_files(repo, allow_pickle=trusted, use_safetensors=kwargs.get("use_safetensors"), **hub_options(kwargs))
    if trusted and not files[0].endswith(".safetensors"):
        return load_weight_files(files, allow_pickle=True)
    return None


def add_zero_shot_auto_map(save_directory: str | os.PathLike) -> None:
    """After ``save_pretrained``: let ``pipeline("zero-shot-image-classification")`` load the saved
    remote code too (``auto_map`` entry ``AutoModelForZeroShotImageClassification``, as ``AutoModel``)."""
    config_path = os.path.join(save_directory, "config.json")
    if not os.path.exists(config_path):
        return
    with open(config_path, encoding="utf-8") as handle:
        config = json.load(handle)
    auto_map = config.setdefault("auto_map", {})
    if "AutoModel" in auto_map:
        auto_map.setdefault("AutoModelForZeroShotImageClassification", auto_map["AutoModel"])
        with open(config_path, "w", encoding="utf-8") as handle:
            json.dump(config, handle, indent=2, sort_keys=True)
            handle.write("\n")


# Where the card's model-index files a metric, by its name. The Hub's task list has no image-text
# retrieval task, so recall@K goes under the task id of its direction ("text-to-image": text
# queries ranking images, as CLIP_benchmark's image_retrieval_recall@K) with a task name saying
# it is retrieval; zero-shot accuracy goes under zero-shot-image-classification, a trained
# classifier's accuracy under image-classification. Chance level is a reference, not a score.
_RETRIEVAL = re.compile(r"(?:^|_)(image_to_text|text_to_image)_(?:r|recall)@(\d+)(?=_|$)")
_CLIP_BENCHMARK_RETRIEVAL = re.compile(r"(?:^|_)(image|text)_retrieval_recall@(\d+)(?=_|$)")
_TOP_K = re.compile(r"(?:^|_)(?:top|acc)(\d+)(?=_|$)")
_MEAN_PER_CLASS = re.compile(r"(?:^|_)mean_per_class_recall(?=_|$)")
_ACCURACY = re.compile(r"(?:^|_)accuracy(?=_|$)")
_CHANCE = re.compile(r"(?:^|_)chance(?=_|$)")
_ZERO_SHOT = re.compile(r"(?:^|_)zero_shot(?=_|$)")
# Bookkeeping of an evaluation run, never shown as a result.
_BOOKKEEPING = re.compile(r"(?:^|_)(?:runtime|samples_per_second|steps_per_second|num_\w+|skipped|epoch)$")
_DIRECTIONS = {"image_to_text": "image-to-text", "text_to_image": "text-to-image"}
_TASK_NAMES = {
    "image-to-text": "Image-to-Text Retrieval",
    "text-to-image": "Text-to-Image Retrieval",
    "zero-shot-image-classification": "Zero-Shot Image Classification",
    "image-classification": "Image Classification",
}


def classify_metric(name: str) -> dict[str, Any] | None:
    """How the model card reports the metric called ``name``; None for run bookkeeping.

    Returns ``{"kind", "task_type", "metric_type", "metric_name", "qualifier"}``: ``kind`` is
    ``"score"`` (a model-index result), ``"chance"`` (a reference level, table only) or ``"other"``
    (e.g. a loss, table only); ``qualifier`` is what the name holds besides the metric (an eval
    set or subset, e.g. ``"unseen_combinations"`` in ``zero_shot_top1_unseen_combinations``).
    """
    key = name.lower()
    if _BOOKKEEPING.search(key):
        return None
    found = None
    if match := _RETRIEVAL.search(key):
        task, k = _DIRECTIONS[match.group(1)], int(match.group(2))
        found = ("score", task, f"recall@{k}", f"{task} recall@{k}", match)
    elif match := _CLIP_BENCHMARK_RETRIEVAL.search(key):
        # CLIP_benchmark names the retrieved side: image retrieval = text queries, image results.
        task, k = ("text-to-image" if match.group(1) == "image" else "image-to-text"), int(match.group(2))
        found = ("score", task, f"recall@{k}", f"{task} recall@{k}", match)
    elif match := _CHANCE.search(key):
        found = ("chance", "zero-shot-image-classification", "chance", "chance level (reference, not a score)", match)
    elif match := _MEAN_PER_CLASS.search(key):
        found = ("score", "zero-shot-image-classification", "mean_per_class_recall", "mean per-class recall", match)
    elif match := _TOP_K.search(key):
        k = int(match.group(1))
        found = ("score", "zero-shot-image-classification", "accuracy" if k == 1 else f"top_{k}_accuracy",
                 f"zero-shot top-{k} accuracy", match)
    elif match := _ACCURACY.search(key):
        zero_shot = bool(_ZERO_SHOT.search(key))
        task = "zero-shot-image-classification" if zero_shot else "image-classification"
        found = ("score", task, "accuracy", "zero-shot accuracy" if zero_shot else "accuracy", match)
    if found is None:
        return dict(kind="other", task_type=None, metric_type=key, metric_name=name, qualifier="")
    kind, task, metric_type, metric_name, match = found
    rest = key[: match.start()] + "_" + key[match.end():]
    qualifier = "_".join(part for part in _ZERO_SHOT.sub("_", rest).split("_") if part)
    return dict(kind=kind, task_type=task, metric_type=metric_type, metric_name=metric_name, qualifier=qualifier)


def _card_rows(metrics: dict[str, dict[str, float]] | None) -> list[dict[str, Any]]:
    """One row per reportable metric: finite numbers that are not bookkeeping."""
    rows = []
    for dataset, values in (metrics or {}).items():
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            info = classify_metric(name)
            if info is not None:
                rows.append(dict(info, dataset=dataset, name=name, value=float(value)))
    return rows


def build_model_card(
    config,
    repo_id: str | None = None,
    tags: list[str] | None = None,
    metrics: dict[str, dict[str, float]] | None = None,
) -> ModelCard:
    """A model card for an align_hf model.

    ``metrics``: ``{dataset name: {metric name: value}}``, e.g.
    ``{"synthetic-heldout": {"zero_shot_top1": 0.83, "text_to_image_R@1": 0.4, "zero_shot_chance": 0.1}}``.
    Scores go to the card's model-index under their task (see :func:`classify_metric`); chance
    levels and losses only to the Markdown table; run bookkeeping (runtime, counts) nowhere.
    """
    vision, text = config.vision_config, config.text_config
    all_tags = ["align", "align_hf", "custom_code", "dual-encoder", "image-text-retrieval"]
    all_tags += [t for t in (tags or []) if t not in all_tags]
    name = (repo_id or "align_hf-model").split("/")[-1]
    rows = _card_rows(metrics)
    eval_results = [
        EvalResult(
            task_type=row["task_type"],
            task_name=_TASK_NAMES[row["task_type"]],
            dataset_type=row["dataset"],
            dataset_name=f"{row['dataset']} ({row['qualifier']})" if row["qualifier"] else row["dataset"],
            dataset_config=row["qualifier"] or None,
            metric_type=row["metric_type"],
            metric_name=row["metric_name"],
            metric_value=row["value"],
        )
        for row in rows
        if row["kind"] == "score"
    ]
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="zero-shot-image-classification",
        tags=all_tags,
        license="apache-2.0",
        model_name=name,
        eval_results=eval_results or None,
    )
    metric_rows = "\n".join(
        f"| {row['dataset']} | {row['name']} | {row['metric_name']}"
        f"{' (' + row['qualifier'] + ')' if row['qualifier'] else ''} | {row['value']:.4f} |"
        for row in rows
    )
    scale = {k: v for k, v in vision.timm_kwargs.items() if k in ("channel_multiplier", "depth_multiplier")}
    scaling = " scaled by " + ", ".join(f"{k}={v}" for k, v in scale.items()) if scale else ""
    content = f"""---
{data.to_yaml()}
---

# {name}

An [ALIGN](https://arxiv.org/abs/2102.05918) dual encoder (image tower `{vision.model_name}`{scaling} at
{vision.image_size} px, text tower {text.text_model_type} with {text.num_hidden_layers} layers of width
{text.hidden_size}, {config.projection_dim}-d embeddings) saved by `align_hf`.

```python
from transformers import AutoModel, AutoProcessor
model = AutoModel.from_pretrained("{repo_id or name}", trust_remote_code=True)
processor = AutoProcessor.from_pretrained("{repo_id or name}", trust_remote_code=True)
```

With `align_hf` installed, `align_hf.AlignModel.from_pretrained("{repo_id or name}")` works without remote code.
""" + (f"""
## Evaluation

| dataset | metric | meaning | value |
|---|---|---|---|
{metric_rows}
""" if metric_rows else "")
    return ModelCard(content)


def upload_folder_to_hub(
    folder: str,
    repo_id: str,
    *,
    commit_message: str | None = None,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
):
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    return api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        commit_message=commit_message or "Upload align_hf model",
        revision=revision,
        create_pr=create_pr,
    )


def push_model_to_hub(
    model,
    repo_id: str,
    *,
    processor=None,
    metrics: dict[str, dict[str, float]] | None = None,
    tags: list[str] | None = None,
    max_shard_size: str | int = "5GB",
    **upload_options,
):
    """Save ``model`` (and ``processor``) with a model card to a temp folder and upload it."""
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder, max_shard_size=max_shard_size)
        if processor is not None:
            processor.save_pretrained(folder)
        build_model_card(model.config, repo_id, tags, metrics).save(os.path.join(folder, "README.md"))
        return upload_folder_to_hub(folder, repo_id, **upload_options)
