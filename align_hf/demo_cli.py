"""``align-hf demo``: start the Gradio web demo.

With neither ``--model`` nor ``--index`` it serves the quickstart model (``outputs/quickstart/model``)
over an index of the synthetic corpus's held-out gallery, built on first use under
``outputs/demo/index`` and reused while the model stays the same, so ``make demo`` works offline.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

QUICKSTART_MODEL = Path("outputs") / "quickstart" / "model"
DEFAULT_INDEX_DIR = Path("outputs") / "demo" / "index"
DEFAULT_GALLERY_SIZE = 200
SYNTHETIC_FORMAT = "align_hf.synthetic/1"
GALLERY_RECORD = "demo_gallery.json"


class DemoSetupError(RuntimeError):
    """The demo cannot start; the message says what to do."""


def load_model(spec: str | os.PathLike | None, device: str | None = None) -> tuple[Any, Any, str]:
    """Load ``(model, processor, name)`` from a local folder or Hub id (align_hf or transformers ALIGN format).

    ``spec=None`` means the quickstart model; a missing one raises :class:`DemoSetupError` saying
    how to create it.
    """
    from . import AlignModel, AlignProcessor

    if spec is None:
        if not (QUICKSTART_MODEL / "config.json").is_file():
            raise DemoSetupError(
                f"No --model given and the quickstart model does not exist yet ({QUICKSTART_MODEL}/ has no "
                "config.json). Create it with `make quickstart` (offline, trains a small model on the synthetic "
                "corpus), or pass a checkpoint, e.g. `align-hf demo --model kakaobrain/align-base`."
            )
        spec = QUICKSTART_MODEL
    try:
        model = AlignModel.from_pretrained(spec)
        processor = AlignProcessor.from_pretrained(spec)
    except (OSError, ValueError) as err:
        raise DemoSetupError(f"cannot load model {str(spec)!r}: {err}") from err
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).eval()
    if hasattr(model, "for_inference"):  # BatchNorm folded: same embeddings, faster image tower
        model = model.for_inference()
    return model, processor, str(spec)


def find_corpus_config(model_dir: str | os.PathLike) -> Any:
    """The :class:`~align_hf.data.SyntheticConfig` of the corpus a quickstart model was trained on,
    read from a synthetic-corpus ``manifest.json`` next to the model; defaults when there is none."""
    from .data import SyntheticConfig

    root = Path(model_dir).resolve().parent
    candidates = [
        root / "manifest.json",
        *sorted(root.glob("*/manifest.json")),
        *sorted(root.glob("*/*/manifest.json")),
    ]
    for path in candidates:
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(manifest, dict) and manifest.get("format") == SYNTHETIC_FORMAT and "config" in manifest:
            logger.info("synthetic corpus settings from %s", path)
            return SyntheticConfig.from_dict(manifest["config"])
    return SyntheticConfig()


def synthetic_gallery_index(
    model: Any,
    processor: Any,
    output_dir: str | os.PathLike = DEFAULT_INDEX_DIR,
    num_images: int = DEFAULT_GALLERY_SIZE,
    corpus_config: Any = None,
    rebuild: bool = False,
    progress: bool = True,
):
    """An index of the first ``num_images`` scenes of the synthetic corpus's held-out ``retrieval``
    split (images + their captions), built under ``output_dir`` unless a matching one is there.

    The index is rebuilt when the model embeds differently from the one that built it, or when the
    gallery settings change.
    """
    from .data import SyntheticConfig, SyntheticCorpus
    from .search import CrossModalIndex, ModelMismatchError, check_model, model_signature

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
):
    """Everything ``align-hf demo`` and the Space entry point need: model, processor, index, backend.

    Args:
        model: checkpoint folder or Hub id; ``None`` = the quickstart model.
        index: index folder (``align-hf index build``) or a Hub dataset repo id holding one; ``None``
            indexes the synthetic held-out gallery (see :func:`synthetic_gallery_index`).
        no_index: classification only.
    """
    from .demo_app import DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_PIXELS, DemoBackend
    from .search import CrossModalIndex, ModelMismatchError

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
            from .data import SyntheticConfig, SyntheticCorpus
            from .demo_app import LABEL_PRESETS, TEMPLATE_SETS

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


def run_demo(args: argparse.Namespace) -> int:
    from .demo_app import launch_demo

    try:
        backend = create_backend(
            model=args.model,
            index=args.index,
            no_index=args.no_index,
            device=args.device,
            gallery_size=args.gallery_size,
            index_dir=args.index_dir,
            rebuild_index=args.rebuild_index,
            max_pixels=int(args.max_megapixels * 1e6),
            max_batch_size=args.max_batch_size,
            progress=not args.no_progress,
        )
    except DemoSetupError as err:
        print(f"align-hf demo: {err}", file=sys.stderr)
        return 2
    if args.check:
        print(backend.about_markdown())
        backend.close()
        return 0
    from .demo_app import build_demo

    demo = build_demo(backend)
    launch_demo(
        demo,
        host=args.host,
        port=args.port,
        share=args.share,
        max_file_size=args.max_file_size,
        concurrency=args.concurrency,
        open_browser=args.open_browser,
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="start the Gradio web demo (zero-shot classification, text/image search)",
        description=(
            "Start the Gradio web demo. Without --model and --index it serves the quickstart model "
            f"({QUICKSTART_MODEL}) over an index of the synthetic held-out gallery (built on first use)."
        ),
    )
    parser.add_argument(
        "--model",
        help="checkpoint folder or Hub id (align_hf or transformers ALIGN format); default: the quickstart model",
    )
    parser.add_argument(
        "--index",
        help="index folder built by `align-hf index build`, or a Hub dataset repo holding one; default: the synthetic gallery",
    )
    parser.add_argument("--no-index", action="store_true", help="classification only, no search index")
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default: 127.0.0.1, this machine only; 0.0.0.0 exposes it)",
    )
    parser.add_argument("--port", type=int, default=None, help="port (default: 7860 or the next free one)")
    parser.add_argument(
        "--share", action="store_true", help="also open a public gradio.live share link (off by default)"
    )
    parser.add_argument("--max-file-size", default="10mb", help="largest upload (default: 10mb)")
    parser.add_argument("--max-megapixels", type=float, default=40.0, help="largest image in megapixels (default: 40)")
    parser.add_argument("--concurrency", type=int, default=4, help="requests handled at once per endpoint (default: 4)")
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=16,
        help="most concurrent images/texts merged into one forward pass (default: 16)",
    )
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    parser.add_argument(
        "--gallery-size",
        type=int,
        default=DEFAULT_GALLERY_SIZE,
        help=f"synthetic gallery images when no --index is given (default: {DEFAULT_GALLERY_SIZE})",
    )
    parser.add_argument(
        "--index-dir",
        default=str(DEFAULT_INDEX_DIR),
        help=f"where the synthetic gallery index is kept (default: {DEFAULT_INDEX_DIR})",
    )
    parser.add_argument(
        "--rebuild-index", action="store_true", help="rebuild the synthetic gallery index even if a matching one exists"
    )
    parser.add_argument("--open-browser", action="store_true", help="open the demo in the default web browser")
    parser.add_argument(
        "--check", action="store_true", help="load model and index, print what was loaded, and exit without serving"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run_demo)
