"""Hub helpers: reading config/weights of a folder or repo, the model card, and the upload."""

from __future__ import annotations

import json
import os
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


def build_model_card(
    config,
    repo_id: str | None = None,
    tags: list[str] | None = None,
    metrics: dict[str, dict[str, float]] | None = None,
) -> ModelCard:
    """A model card for an align_hf model.

    ``metrics``: ``{dataset name: {metric name: value}}``, e.g.
    ``{"synthetic-heldout": {"zero_shot_top1": 0.83}}``; written to the card's model-index.
    """
    vision, text = config.vision_config, config.text_config
    all_tags = ["align", "align_hf", "custom_code", "dual-encoder", "image-text-retrieval"]
    all_tags += [t for t in (tags or []) if t not in all_tags]
    name = (repo_id or "align_hf-model").split("/")[-1]
    eval_results = [
        EvalResult(
            task_type="zero-shot-image-classification",
            dataset_type=dataset,
            dataset_name=dataset,
            metric_type=metric,
            metric_value=float(value),
        )
        for dataset, values in (metrics or {}).items()
        for metric, value in values.items()
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
        f"| {dataset} | {metric} | {value:.4f} |" for dataset, values in (metrics or {}).items() for metric, value in values.items()
    )
    content = f"""---
{data.to_yaml()}
---

# {name}

An [ALIGN](https://arxiv.org/abs/2102.05918) dual encoder (image tower `{vision.model_name}` at
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

| dataset | metric | value |
|---|---|---|
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
