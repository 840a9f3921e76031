"""Everything the demo needs before it can serve: the model, the index, the backend.

With neither a model nor an index given, :func:`create_backend` serves the quickstart model
(``outputs/quickstart/model``) over an index of the synthetic corpus's held-out gallery, built on
first use under ``outputs/demo/index`` and reused while the model stays the same, so ``make demo``
works offline. Used by ``align-hf demo`` and by the Hugging Face Space entry point ``demo/app.py``.

Heavy imports stay inside the functions: the CLI reads this module's defaults at start-up.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from align_hf.demo.backend import DemoBackend
    from align_hf.search import CrossModalIndex

logger = logging.getLogger(__name__)

QUICKSTART_MODEL = Path("outputs") / "quickstart" / "model"
DEFAULT_INDEX_DIR = Path("outputs") / "demo" / "index"
DEFAULT_GALLERY_SIZE = 200
GALLERY_RECORD = "demo_gallery.json"


class DemoSetupError(RuntimeError):
    """The demo cannot start; the message says what to do."""


def load_model(spec: str | os.PathLike | None, device: str | None = None) -> tuple[Any, Any, str]:
    """``(model, processor, name)`` from a local folder or Hub id (align_hf or transformers ALIGN
    format), in eval mode with BatchNorm folded into the convolutions (same embeddings, faster).

    ``spec=None`` means the quickstart model; a missing one raises :class:`DemoSetupError` saying
    how to create it, as does a checkpoint that cannot be read.
    """
    from align_hf.loading import ModelLoadError, load_model_and_processor

    if spec is None:
        if not (QUICKSTART_MODEL / "config.json").is_file():
            raise DemoSetupError(
                f"No --model given and the quickstart model does not exist yet ({QUICKSTART_MODEL}/ has no "
                "config.json). Create it with `make quickstart` (offline, trains a small model on the synthetic "
                "corpus), or pass a checkpoint, e.g. `align-hf demo --model kakaobrain/align-base`."
            )
        spec = QUICKSTART_MODEL
    try:
        model, processor = load_model_and_processor(spec, device)
    except ModelLoadError as err:
        raise DemoSetupError(str(err)) from err
    return model.for_inference(), processor, str(spec)


def find_corpus_config(model_dir: str | os.PathLike) -> Any:
    """The :class:`~align_hf.data.SyntheticConfig` of the corpus a quickstart model was trained on,
    read from a synthetic-corpus ``manifest.json`` next to the model; defaults when there is none."""
    from align_hf.data import SyntheticConfig, find_manifest

    root = Path(model_dir).resolve().parent
    found = find_manifest(root, *sorted(root.glob("*/")), *sorted(root.glob("*/*/")))
    if found is not None and "config" in found[0]:
        logger.info("synthetic corpus settings from %s", found[1] / "manifest.json")
        return SyntheticConfig.from_dict(found[0]["config"])
    return SyntheticConfig()


def synthetic_gallery_index(
    model: Any,
    processor: Any,
    output_dir: str | os.PathLike = DEFAULT_INDEX_DIR,
    num_images: int = DEFAULT_GALLERY_SIZE,
    corpus_config: Any = None,
    rebuild: bool = False,
    progress: bool = True,
) -> CrossModalIndex:
    """An index of the first ``num_images`` scenes of the synthetic corpus's held-out ``retrieval``
    split (images + their captions), built under ``output_dir`` unless a matching one is there.

    The index is rebuilt when the model embeds differently from the one that built it, or when the
    gallery settings change.
    """
    from align_hf.data import SyntheticConfig, SyntheticCorpus
    from align_hf.search import CrossModalIndex, ModelMismatchError, check_model, model_signature

    config = corpus_config or SyntheticConfig()
    corpus = SyntheticCorpus(config)
    num_images = min(int(num_images), corpus.split_size("retrieval"))
    if num_images < 1:
        raise DemoSetupError("the gallery needs at least one image")
    output_dir = Path(output_dir)
    record = {"split": "retrieval", "num_images": num_images, "corpus": config.to_dict()}
    record_path = output_dir / GALLERY_RECORD
    if not rebuild and record_path.is_file():
        try:
            same_gallery = json.loads(record_path.read_text(encoding="utf-8")) == json.loads(json.dumps(record))
            index = CrossModalIndex.load(output_dir)
            check_model(index.signature, model_signature(model, processor))
            if same_gallery:
                return index
        except (OSError, ValueError, KeyError, ModelMismatchError) as err:
            logger.info("rebuilding the demo index: %s", err)

    gallery = output_dir / "gallery"
    gallery.mkdir(parents=True, exist_ok=True)
    paths, captions, texts = [], [], []
    for sample in corpus.iter_split("retrieval", 0, num_images):
        path = gallery / f"{sample.key}.png"
        sample.image.save(path)
        paths.append(str(path.resolve()))
        captions.append(sample.caption)
        texts.extend(sample.meta.get("captions", [sample.caption]))
    texts = list(dict.fromkeys(texts))
    index = CrossModalIndex.build(
        model, processor, output_dir, images=paths, texts=texts, index_type="flat", progress=progress
    )
    # Keep each gallery image's caption with it so results can show what the scene is.
    by_path = dict(zip(paths, captions))
    for record_meta in index["image"].metadata:
        record_meta["caption"] = by_path.get(record_meta.get("path"), "")
    index["image"].save(output_dir)
    record_path.write_text(json.dumps(record, indent=1), encoding="utf-8")
    return index


def create_backend(
    model: str | os.PathLike | None = None,
    index: str | os.PathLike | None = None,
    no_index: bool = False,
    device: str | None = None,
    gallery_size: int = DEFAULT_GALLERY_SIZE,
    index_dir: str | os.PathLike = DEFAULT_INDEX_DIR,
    rebuild_index: bool = False,
    max_pixels: int | None = None,
    max_batch_size: int | None = None,
    progress: bool = True,
) -> DemoBackend:
    """Everything ``align-hf demo`` and the Space entry point need: model, processor, index, backend.

    Args:
        model: checkpoint folder or Hub id; ``None`` = the quickstart model.
        index: index folder (``align-hf index build``) or a Hub dataset repo id holding one; ``None``
            indexes the synthetic held-out gallery (see :func:`synthetic_gallery_index`).
        no_index: classification only.
    """
    from align_hf.demo.backend import DemoBackend
    from align_hf.demo.limits import DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_PIXELS
    from align_hf.search import CrossModalIndex, ModelMismatchError

    net, processor, name = load_model(model, device)
    index_obj, index_path, presets, template_sets = None, None, None, None
    default_labels, default_templates = "", None
    if not no_index:
        if index is not None:
            index_path = resolve_index_dir(index)
            try:
                index_obj = CrossModalIndex.load(index_path)
            except (OSError, ValueError) as err:
                raise DemoSetupError(f"cannot load index {str(index)!r}: {err}") from err
        else:
            from align_hf.data import SyntheticConfig, SyntheticCorpus
            from align_hf.demo.backend import LABEL_PRESETS, TEMPLATE_SETS

            model_dir = Path(model) if model is not None else QUICKSTART_MODEL
            config = find_corpus_config(model_dir) if model_dir.is_dir() else SyntheticConfig()
            index_path = Path(index_dir)
            index_obj = synthetic_gallery_index(
                net, processor, index_path, gallery_size, config, rebuild=rebuild_index, progress=progress
            )
            corpus = SyntheticCorpus(config)
            presets = {"synthetic shapes (colour x shape)": corpus.class_names, **LABEL_PRESETS}
            template_sets = {**TEMPLATE_SETS, "synthetic corpus prompts": list(corpus.zeroshot_templates)}
            # Start the classification tab on labels and prompts this corpus can answer.
            step = max(1, len(corpus.class_names) // 6)
            default_labels = ", ".join(corpus.class_names[::step][:6])
            default_templates = "synthetic corpus prompts"
    try:
        backend = DemoBackend(
            net,
            processor,
            index=index_obj,
            model_name=name,
            index_path=index_path,
            max_pixels=max_pixels or DEFAULT_MAX_PIXELS,
            max_batch_size=max_batch_size or DEFAULT_MAX_BATCH_SIZE,
            label_presets=presets,
            template_sets=template_sets,
            default_labels=default_labels,
            default_templates=default_templates,
        )
    except ModelMismatchError as err:
        raise DemoSetupError(f"the index does not match the model: {err}") from err
    return backend


def resolve_index_dir(spec: str | os.PathLike) -> Path:
    """A local index folder, or a Hub dataset repo id downloaded (or read from the cache) as one."""
    path = Path(spec)
    if path.is_dir():
        return path
    text = str(spec)
    if text.count("/") == 1 and not text.startswith((".", "/")) and not path.exists():
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(text, repo_type="dataset"))
        except Exception as err:
            raise DemoSetupError(
                f"index {text!r} is neither a local folder nor a downloadable Hub dataset repo: {err}"
            ) from err
    raise DemoSetupError(f"index folder {text!r} does not exist; build one with `align-hf index build`")


__all__ = [
    "DEFAULT_GALLERY_SIZE",
    "DEFAULT_INDEX_DIR",
    "QUICKSTART_MODEL",
    "DemoSetupError",
    "create_backend",
    "find_corpus_config",
    "load_model",
    "resolve_index_dir",
    "synthetic_gallery_index",
]
