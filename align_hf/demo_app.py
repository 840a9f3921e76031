"""The Gradio web demo: zero-shot classification and cross-modal search.

:class:`DemoBackend` holds the model, processor and (optionally) a search index and does the work;
:func:`build_demo` lays out the Gradio Blocks around it and :func:`launch_demo` serves it with safe
defaults (127.0.0.1, no share link, bounded uploads, analytics off).

Several users are served at once: Gradio runs up to ``concurrency`` handlers in parallel and each
handler hands its image or text to a :class:`MicroBatcher`, which merges whatever is waiting into
one forward pass. Validation happens in the handler, so one user's bad upload fails only their own
request (Gradio's ``batch=True`` would fail the whole batch).

Example::

    from align_hf.demo_app import DemoBackend, build_demo, launch_demo
    backend = DemoBackend(model, processor, index=CrossModalIndex.load("my-index"), index_path="my-index")
    launch_demo(build_demo(backend))
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

# Gradio reads this when it is imported; nothing should phone home from a local demo.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageOps, UnidentifiedImageError  # noqa: E402

from .evaluation import encode_pil_images, encode_texts  # noqa: E402
from .processing_align import to_rgb  # noqa: E402
from .search import CrossModalIndex, Hit, Searcher, compose_query  # noqa: E402
from .zero_shot import build_class_embeddings, load_templates, logit_scale  # noqa: E402

logger = logging.getLogger(__name__)

DEFAULT_MAX_FILE_SIZE = "10mb"
DEFAULT_MAX_PIXELS = 40_000_000  # 40 MP: a large phone photo; beyond that decoding alone costs seconds
DEFAULT_CONCURRENCY = 4
DEFAULT_MAX_BATCH_SIZE = 16
MAX_LABELS = 200
MAX_LABEL_CHARS = 100
MAX_QUERY_CHARS = 1000
MAX_RESULTS = 50
THUMBNAIL_SIDE = 256
CLASS_CACHE_SIZE = 32
SUPPORTED_FORMATS = "PNG, JPEG, WebP, GIF, BMP or TIFF"

LABEL_PRESETS: dict[str, list[str]] = {
    "everyday objects": [
        "cat",
        "dog",
        "bird",
        "car",
        "bicycle",
        "airplane",
        "boat",
        "train",
        "chair",
        "cup",
        "laptop",
        "phone",
        "book",
        "flower",
        "tree",
        "house",
    ],
    "animals": ["cat", "dog", "horse", "cow", "sheep", "bird", "fish", "elephant", "bear", "zebra", "giraffe"],
    "scenes": ["beach", "forest", "mountain", "city street", "kitchen", "office", "desert", "snow field"],
}

TEMPLATE_SETS: dict[str, Sequence[str] | str] = {
    "none (label only)": ["{}"],
    "single: 'a photo of a {}.'": ["a photo of a {}."],
    "short ensemble (8 prompts)": "short",
    "ImageNet ensemble (80 prompts)": "imagenet",
}


class DemoInputError(ValueError):
    """A user input the demo cannot use; the message is shown to the user as is."""


# ----------------------------------------------------------------------------------------------
# Merging concurrent requests into one model call
# ----------------------------------------------------------------------------------------------

_STOP = object()


class MicroBatcher:
    """Run ``fn`` on lists of items submitted by concurrent callers.

    A worker thread takes the oldest waiting item plus everything else already queued (waiting at
    most ``max_wait_s`` for more) and calls ``fn`` once on the list; each caller blocks until its own
    result is ready. While one batch runs, new requests pile up and go together in the next one,
    so under load the model sees full batches and nobody waits for a queue of single calls.

    Args:
        fn: maps a list of ``n`` items to a sequence of ``n`` results (same order).
        max_batch_size: most items per call.
        max_wait_s: how long the worker waits for company once it has one item.
    """

    def __init__(
        self,
        fn: Callable[[list[Any]], Sequence[Any]],
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        max_wait_s: float = 0.005,
        name: str = "batcher",
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self.fn = fn
        self.max_batch_size = int(max_batch_size)
        self.max_wait_s = float(max_wait_s)
        self.name = name
        self.batch_sizes: collections.deque[int] = collections.deque(maxlen=1000)  # recent batch sizes
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    def __call__(self, item: Any) -> Any:
        """Submit one item and wait for its result (exceptions of ``fn`` are re-raised here)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.name} is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            self._queue.put((item, future))
        return future.result()

    def pending(self) -> int:
        """Items queued and not yet picked up by the worker."""
        return self._queue.qsize()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            thread = self._thread
            self._queue.put((_STOP, None))
        if thread is not None:
            thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first[0] is _STOP:
                return
            batch = [first]
            stop = False
            deadline = time.monotonic() + self.max_wait_s
            while len(batch) < self.max_batch_size:
                try:
                    nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt[0] is _STOP:
                    stop = True
                    break
                batch.append(nxt)
            self._execute(batch)
            if stop:
                return

    def _execute(self, batch: list[tuple[Any, concurrent.futures.Future]]) -> None:
        self.batch_sizes.append(len(batch))
        try:
            results = self.fn([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"{self.name}: got {len(results)} results for {len(batch)} items")
        except BaseException as err:  # every waiting caller must hear about the failure
            for _, future in batch:
                future.set_exception(err)
            return
        for (_, future), result in zip(batch, results):
            future.set_result(result)


# ----------------------------------------------------------------------------------------------
# The work behind the tabs
# ----------------------------------------------------------------------------------------------


@dataclass
class SearchResult:
    """One search hit ready for display: its score, a label, and the row's metadata."""

    rank: int
    id: int
    score: float
    label: str
    metadata: dict[str, Any]


class DemoBackend:
    """Model, processor and optional index behind the demo; every method validates its inputs.

    Args:
        model: an ``AlignModel`` (anything with ``encode_image``/``encode_text``), put in eval mode.
        processor: its ``AlignProcessor``.
        index: a :class:`~align_hf.search.CrossModalIndex` built with this model, or ``None``
            (the search tabs then say that no index is loaded).
        model_name / index_path: shown in the about panel.
        max_pixels: largest accepted upload in pixels (width x height).
        max_batch_size: most images or texts merged into one forward pass.
        label_presets: preset label sets offered by the classification tab.
        template_sets: named prompt-template sets offered for ensembling.
        default_labels / default_templates: what the classification tab starts with.
        check_index: verify that the index was built with this model (probe embedding).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        processor: Any,
        index: CrossModalIndex | None = None,
        model_name: str | None = None,
        index_path: str | os.PathLike | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        label_presets: dict[str, list[str]] | None = None,
        template_sets: dict[str, Sequence[str] | str] | None = None,
        default_labels: str = "",
        default_templates: str | None = None,
        check_index: bool = True,
    ) -> None:
        self.model = model.eval()
        self.processor = processor
        self.model_name = model_name or str(getattr(getattr(model, "config", None), "_name_or_path", "") or "model")
        self.index = index
        self.index_path = Path(index_path) if index_path is not None else None
        self.max_pixels = int(max_pixels)
        self.label_presets = dict(LABEL_PRESETS if label_presets is None else label_presets)
        self.template_sets = dict(TEMPLATE_SETS if template_sets is None else template_sets)
        self.default_labels = default_labels
        names = list(self.template_sets)
        self.default_templates = (
            default_templates if default_templates in self.template_sets else names[min(1, len(names) - 1)]
        )
        self.searcher = Searcher(index, model, processor, check=check_index) if index is not None else None
        self.image_batcher = MicroBatcher(self._encode_images, max_batch_size, name="image-encoder")
        self.text_batcher = MicroBatcher(self._encode_texts, max_batch_size, name="text-encoder")
        self._class_cache: collections.OrderedDict[tuple, torch.Tensor] = collections.OrderedDict()
        self._class_lock = threading.Lock()
        self.logit_scale = logit_scale(model)

    def close(self) -> None:
        self.image_batcher.close()
        self.text_batcher.close()

    # -------------------------------------------------------------- embeddings

    def _encode_images(self, images: list[Image.Image]) -> list[np.ndarray]:
        return list(encode_pil_images(self.model, self.processor, images).numpy())

    def _encode_texts(self, texts: list[str]) -> list[np.ndarray]:
        return list(encode_texts(self.model, self.processor, texts, batch_size=len(texts), progress=False).numpy())

    def embed_image(self, image: Any) -> np.ndarray:
        """``(D,)`` unit embedding of one upload (validated with :meth:`open_image`)."""
        return self.image_batcher(self.open_image(image))

    def embed_text(self, text: str) -> np.ndarray:
        """``(D,)`` unit embedding of one text."""
        return self.text_batcher(text)

    # -------------------------------------------------------------- input checks

    def open_image(self, upload: Any) -> Image.Image:
        """Open an upload (PIL image, path, or Gradio file dict) as RGB, refusing non-images and huge images."""
        if upload is None or upload == "":
            raise DemoInputError("Upload an image first.")
        if isinstance(upload, Image.Image):
            self._check_pixels(*upload.size)
            return to_rgb(upload)
        path = upload.get("path") if isinstance(upload, dict) else upload
        if not path:
            raise DemoInputError("Upload an image first.")
        name = (upload.get("orig_name") if isinstance(upload, dict) else None) or Path(str(path)).name
        try:
            with Image.open(path) as handle:
                self._check_pixels(*handle.size)  # from the header, before any pixel is decoded
                handle.load()
                image = ImageOps.exif_transpose(handle)
                return to_rgb(image)
        except DemoInputError:
            raise
        except Image.DecompressionBombError as err:
            raise DemoInputError(f"The image is too large to decode safely ({err}).") from err
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, TypeError) as err:
            raise DemoInputError(
                f"{name!r} is not an image that can be read ({type(err).__name__}). Upload a {SUPPORTED_FORMATS} file."
            ) from err

    def _check_pixels(self, width: int, height: int) -> None:
        if width <= 0 or height <= 0:
            raise DemoInputError("The image is empty (zero width or height).")
        if width * height > self.max_pixels:
            raise DemoInputError(
                f"The image is too large: {width} x {height} pixels ({width * height / 1e6:.1f} MP); "
                f"the limit is {self.max_pixels / 1e6:.1f} MP. Downscale it and try again."
            )

    def parse_labels(self, labels: str | Sequence[str] | None, preset: str | None = None) -> list[str]:
        """Comma-separated labels (or a list), stripped and de-duplicated; a preset name is used when
        no labels are typed."""
        if isinstance(labels, str):
            items = labels.split(",")
        else:
            items = list(labels or [])
        names = list(dict.fromkeys(str(n).strip() for n in items if str(n).strip()))
        if not names and preset:
            if preset not in self.label_presets:
                raise DemoInputError(
                    f"Unknown label preset {preset!r}; choose one of: {', '.join(self.label_presets)}."
                )
            names = list(self.label_presets[preset])
        if not names:
            raise DemoInputError("Enter at least one label (comma-separated, e.g. 'cat, dog, car') or pick a preset.")
        if len(names) > MAX_LABELS:
            raise DemoInputError(f"Too many labels: {len(names)}; the limit is {MAX_LABELS}.")
        long = [n for n in names if len(n) > MAX_LABEL_CHARS]
        if long:
            raise DemoInputError(f"Labels must be at most {MAX_LABEL_CHARS} characters; {long[0][:40]!r}... is longer.")
        return names

    def templates(self, choice: str | Sequence[str] | None) -> list[str]:
        """Prompt templates for a template-set name (or a list of templates)."""
        if choice is None or choice == "":
            choice = next(iter(self.template_sets))
        if isinstance(choice, str):
            if choice not in self.template_sets:
                raise DemoInputError(f"Unknown prompt set {choice!r}; choose one of: {', '.join(self.template_sets)}.")
            return load_templates(self.template_sets[choice])
        try:
            return load_templates(list(choice))
        except ValueError as err:
            raise DemoInputError(str(err)) from err

    @staticmethod
    def _query_text(text: str | None, what: str = "query") -> str:
        text = (text or "").strip()
        if len(text) > MAX_QUERY_CHARS:
            raise DemoInputError(f"The {what} is too long: {len(text)} characters; the limit is {MAX_QUERY_CHARS}.")
        return text

    @staticmethod
    def _k(k: float | int | None, default: int = 8) -> int:
        if k is None:
            return default
        k = int(k)
        if not 1 <= k <= MAX_RESULTS:
            raise DemoInputError(f"The number of results must be between 1 and {MAX_RESULTS}, got {k}.")
        return k

    def _collection(self, kind: str):
        if self.index is None:
            raise DemoInputError(
                "No search index is loaded; start the demo with --index DIR (built by `align-hf index build`)."
            )
        if kind not in self.index:
            have = ", ".join(self.index.collections)
            raise DemoInputError(
                f"The loaded index has no {kind} collection (it has: {have}); rebuild it with {kind}s."
            )
        return self.index[kind]

    # -------------------------------------------------------------- zero-shot classification

    def class_embeddings(self, labels: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
        """``(C, D)`` class embeddings (prompt-ensembled), cached for the most recent label sets."""
        key = (tuple(labels), tuple(templates))
        with self._class_lock:
            if key in self._class_cache:
                self._class_cache.move_to_end(key)
                return self._class_cache[key]

        def encode(prompts: list[str]) -> torch.Tensor:
            return encode_texts(self.model, self.processor, prompts, batch_size=256, progress=False)

        weights = build_class_embeddings(encode, labels, templates)
        with self._class_lock:
            self._class_cache[key] = weights
            while len(self._class_cache) > CLASS_CACHE_SIZE:
                self._class_cache.popitem(last=False)
        return weights

    def classify(
        self,
        image: Any,
        labels: str | Sequence[str] | None,
        preset: str | None = None,
        templates: str | Sequence[str] | None = None,
    ) -> dict[str, float]:
        """Zero-shot probabilities ``{label: p}`` (softmax of cosine x logit scale), best first."""
        names = self.parse_labels(labels, preset)
        prompts = self.templates(templates)
        pil = self.open_image(image)
        weights = self.class_embeddings(names, prompts)
        embedding = torch.from_numpy(np.asarray(self.image_batcher(pil), dtype=np.float32))
        probs = (self.logit_scale * embedding @ weights.T).softmax(-1)
        order = probs.argsort(descending=True).tolist()
        return {names[i]: float(probs[i]) for i in order}

    # -------------------------------------------------------------- search

    def _results(self, hits: list[Hit]) -> list[SearchResult]:
        return [SearchResult(h.rank + 1, h.id, h.score, describe_hit(h.metadata, h.id), h.metadata) for h in hits]

    def search_text_to_image(self, query: str, k: int | float | None = 8) -> list[SearchResult]:
        """Images best matching ``query``."""
        collection = self._collection("image")
        text = self._query_text(query)
        if not text:
            raise DemoInputError("Type a text query first.")
        k = self._k(k)
        return self._results(collection.search(self.embed_text(text), k)[0])

    def search_image_to_text(self, image: Any, k: int | float | None = 8) -> list[SearchResult]:
        """Captions best matching an uploaded image."""
        collection = self._collection("text")
        k = self._k(k)
        return self._results(collection.search(self.embed_image(image), k)[0])

    def search_composed(
        self,
        image: Any,
        text: str | None,
        minus: str | None = None,
        text_weight: float = 2.0,
        k: int | float | None = 8,
        image_weight: float = 1.0,
    ) -> list[SearchResult]:
        """Images best matching ``image_weight * image + text_weight * (text - minus)`` (unit vectors, renormalised)."""
        collection = self._collection("image")
        plus_text = self._query_text(text)
        minus_text = self._query_text(minus, "minus text")
        k = self._k(k)
        if image is None and not plus_text and not minus_text:
            raise DemoInputError("Give an image, a text or both.")
        if text_weight is None or not 0.0 <= float(text_weight) <= 10.0:
            raise DemoInputError("The text weight must be between 0 and 10.")
        try:
            query = compose_query(
                image=self.embed_image(image) if image is not None else None,
                texts=self.embed_text(plus_text)[None] if plus_text else None,
                minus=self.embed_text(minus_text)[None] if minus_text else None,
                image_weight=float(image_weight),
                text_weight=float(text_weight),
            )
        except ValueError as err:
            raise DemoInputError(str(err)) from err
        return self._results(collection.search(query, k)[0])

    # -------------------------------------------------------------- display helpers

    def image_for(self, result: SearchResult) -> Image.Image:
        """A thumbnail of an indexed image (only paths listed in the index are ever opened)."""
        path = self.resolve_image_path(result.metadata)
        if path is not None:
            try:
                with Image.open(path) as handle:
                    handle.draft("RGB", (THUMBNAIL_SIDE, THUMBNAIL_SIDE))  # JPEG: decode at reduced size
                    image = to_rgb(ImageOps.exif_transpose(handle))
                image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
                return image
            except Exception as err:  # a file deleted or damaged since indexing: show a placeholder
                logger.warning("cannot open indexed image %s: %s", path, err)
        return Image.new("RGB", (THUMBNAIL_SIDE // 2, THUMBNAIL_SIDE // 2), (200, 200, 200))

    def example_images(self, count: int = 4) -> list[str]:
        """Up to ``count`` indexed image files, offered as clickable examples."""
        if self.index is None or "image" not in self.index:
            return []
        found = []
        for record in self.index["image"].metadata[: count * 4]:
            path = self.resolve_image_path(record)
            if path is not None:
                found.append(str(path))
            if len(found) == count:
                break
        return found

    def resolve_image_path(self, metadata: dict[str, Any]) -> Path | None:
        """Where the image of an index row lives: as recorded, else relative to the index directory."""
        recorded = metadata.get("path")
        if not recorded:
            return None
        path = Path(recorded)
        candidates = [path] if path.is_absolute() else [Path.cwd() / path]
        if self.index_path is not None:
            candidates.append(self.index_path / path if not path.is_absolute() else self.index_path / path.name)
        return next((c for c in candidates if c.is_file()), None)

    def gallery(self, results: list[SearchResult]) -> list[tuple[Image.Image, str]]:
        """``(thumbnail, "score · label")`` pairs for a ``gr.Gallery``."""
        return [(self.image_for(r), f"{r.score:.3f} · {r.label}") for r in results]

    def about_markdown(self) -> str:
        """What is loaded: model, embedding size, index collections and limits."""
        config = getattr(self.model, "config", None)
        params = sum(p.numel() for p in self.model.parameters())
        dim = getattr(config, "projection_dim", None)
        vision = getattr(config, "vision_config", None)
        text = getattr(config, "text_config", None)
        lines = [
            "### Model",
            f"- **{self.model_name}**: {params:,} parameters, embedding dim {dim}, logit scale {self.logit_scale:.2f}",
        ]
        if vision is not None:
            lines.append(
                f"- image tower: `{getattr(vision, 'model_name', '?')}` at {getattr(vision, 'image_size', '?')} px"
            )
        if text is not None:
            lines.append(
                f"- text tower: {getattr(text, 'num_hidden_layers', '?')} layers, width {getattr(text, 'hidden_size', '?')}"
            )
        lines.append("### Index")
        if self.index is None:
            lines.append("- none loaded (search tabs are disabled); pass `--index DIR`")
        else:
            lines.append(
                f"- **{self.index_path or 'in memory'}**, built with model `{self.index.model_id}`, embedding dim {self.index.dim}"
            )
            for kind, coll in self.index.collections.items():
                lines.append(f"- {kind} collection: {len(coll):,} vectors ({coll.info.get('index_type', '?')} index)")
        lines += [
            "### Limits",
            f"- uploads up to {self.max_pixels / 1e6:.0f} MP; at most {MAX_LABELS} labels; at most {MAX_RESULTS} results",
        ]
        return "\n".join(lines)


def describe_hit(metadata: dict[str, Any], row: int) -> str:
    """A short human label for an index row: its text, caption, file name or row number."""
    for key in ("text", "caption"):
        if metadata.get(key):
            return str(metadata[key])
    if metadata.get("path"):
        return Path(str(metadata["path"])).name
    return f"row {metadata.get('row', row)}"


# ----------------------------------------------------------------------------------------------
# Gradio layout
# ----------------------------------------------------------------------------------------------


def build_demo(backend: DemoBackend, title: str = "ALIGN: zero-shot classification and cross-modal search"):
    """The Gradio Blocks app around ``backend``.

    API endpoints (for ``gradio_client``): ``/classify``, ``/text_to_image``, ``/image_to_text``,
    ``/composed`` and ``/about``.
    """
    import gradio as gr

    def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any) -> Any:
            try:
                return fn(*args)
            except DemoInputError as err:
                raise gr.Error(str(err)) from err
            except Exception as err:
                logger.exception("demo request failed")
                raise gr.Error(f"Internal error ({type(err).__name__}); see the server log.") from err

        run.__name__ = fn.__name__
        return run

    def classify(image, labels, preset, templates):
        preset = None if preset in (None, "", "(type labels)") else preset
        return backend.classify(image, labels, preset, templates)

    def text_to_image(query, k):
        return backend.gallery(backend.search_text_to_image(query, k))

    def image_to_text(image, k):
        return [[r.rank, round(r.score, 4), r.label] for r in backend.search_image_to_text(image, k)]

    def composed(image, text, minus, text_weight, k):
        return backend.gallery(backend.search_composed(image, text, minus, text_weight, k))

    def about():
        return backend.about_markdown()

    has_images = backend.index is not None and "image" in backend.index
    has_texts = backend.index is not None and "text" in backend.index
    examples = backend.example_images()
    no_index_note = "No index with {} is loaded: start the demo with `--index DIR` (built by `align-hf index build`)."
    # Preprocessing of uploads is ours (preprocess=False), so a non-image gets a clear message
    # instead of Gradio's generic error; Gradio still only hands us files from its upload cache.
    events = dict(preprocess=False, show_progress="minimal")

    with gr.Blocks(title="ALIGN demo", analytics_enabled=False) as demo:
        gr.Markdown(f"# {title}\nModel: **{backend.model_name}**")
        with gr.Tabs():
            with gr.Tab("Zero-shot classification", id="zero-shot"):
                with gr.Row():
                    with gr.Column():
                        zs_image = gr.Image(
                            label="Image", type="filepath", sources=["upload", "clipboard"], elem_id="zs-image"
                        )
                        zs_labels = gr.Textbox(
                            value=backend.default_labels,
                            label="Labels (comma-separated)",
                            placeholder="cat, dog, car",
                            elem_id="zs-labels",
                        )
                        zs_preset = gr.Dropdown(
                            ["(type labels)", *backend.label_presets],
                            value="(type labels)",
                            label="…or a preset label set (used when no labels are typed)",
                            elem_id="zs-preset",
                        )
                        zs_templates = gr.Dropdown(
                            list(backend.template_sets),
                            value=backend.default_templates,
                            label="Prompt templates (several = ensembling)",
                            elem_id="zs-templates",
                        )
                        zs_button = gr.Button("Classify", variant="primary", elem_id="zs-button")
                        if examples:
                            gr.Examples([[p] for p in examples], inputs=[zs_image], label="Examples from the index")
                    zs_output = gr.Label(label="Probabilities", num_top_classes=5, elem_id="zs-output")
                zs_button.click(
                    guarded(classify),
                    [zs_image, zs_labels, zs_preset, zs_templates],
                    zs_output,
                    api_name="classify",
                    **events,
                )

            with gr.Tab("Text -> image search", id="text-to-image"):
                if not has_images:
                    gr.Markdown(no_index_note.format("images"))
                with gr.Row():
                    ti_query = gr.Textbox(
                        label="Query", placeholder="a red circle on a white background", scale=4, elem_id="ti-query"
                    )
                    ti_k = gr.Slider(1, MAX_RESULTS, value=8, step=1, label="Results", scale=1, elem_id="ti-k")
                ti_button = gr.Button("Search", variant="primary", interactive=has_images, elem_id="ti-button")
                ti_gallery = gr.Gallery(
                    label="Results (score · image)",
                    columns=4,
                    height="auto",
                    format="png",
                    interactive=False,
                    elem_id="ti-gallery",
                )
                ti_button.click(
                    guarded(text_to_image), [ti_query, ti_k], ti_gallery, api_name="text_to_image", **events
                )
                ti_query.submit(
                    guarded(text_to_image), [ti_query, ti_k], ti_gallery, api_visibility="private", **events
                )

            with gr.Tab("Image -> text search", id="image-to-text"):
                if not has_texts:
                    gr.Markdown(no_index_note.format("texts"))
                with gr.Row():
                    with gr.Column():
                        it_image = gr.Image(
                            label="Image", type="filepath", sources=["upload", "clipboard"], elem_id="it-image"
                        )
                        it_k = gr.Slider(1, MAX_RESULTS, value=8, step=1, label="Results", elem_id="it-k")
                        it_button = gr.Button(
                            "Search captions", variant="primary", interactive=has_texts, elem_id="it-button"
                        )
                        if examples:
                            gr.Examples([[p] for p in examples], inputs=[it_image], label="Examples from the index")
                    it_table = gr.Dataframe(
                        headers=["rank", "score", "caption"],
                        label="Captions",
                        interactive=False,
                        wrap=True,
                        elem_id="it-table",
                    )
                it_button.click(guarded(image_to_text), [it_image, it_k], it_table, api_name="image_to_text", **events)

            with gr.Tab("Image + text query", id="composed"):
                if not has_images:
                    gr.Markdown(no_index_note.format("images"))
                gr.Markdown(
                    "The paper's composed query: `image + w * text - w * minus`, all unit embeddings, renormalised "
                    "(the paper weighs text x2)."
                )
                with gr.Row():
                    with gr.Column():
                        cq_image = gr.Image(
                            label="Image", type="filepath", sources=["upload", "clipboard"], elem_id="cq-image"
                        )
                        cq_text = gr.Textbox(label="Add text", placeholder="blue", elem_id="cq-text")
                        cq_minus = gr.Textbox(label="Minus text (optional)", placeholder="red", elem_id="cq-minus")
                        cq_weight = gr.Slider(
                            0.0, 4.0, value=2.0, step=0.1, label="Text weight (image weight is 1)", elem_id="cq-weight"
                        )
                        cq_k = gr.Slider(1, MAX_RESULTS, value=8, step=1, label="Results", elem_id="cq-k")
                        cq_button = gr.Button("Search", variant="primary", interactive=has_images, elem_id="cq-button")
                        if examples:
                            gr.Examples([[p] for p in examples], inputs=[cq_image], label="Examples from the index")
                    cq_gallery = gr.Gallery(
                        label="Results (score · image)",
                        columns=4,
                        height="auto",
                        format="png",
                        interactive=False,
                        elem_id="cq-gallery",
                    )
                cq_button.click(
                    guarded(composed),
                    [cq_image, cq_text, cq_minus, cq_weight, cq_k],
                    cq_gallery,
                    api_name="composed",
                    **events,
                )

            with gr.Tab("About", id="about"):
                about_md = gr.Markdown(backend.about_markdown(), elem_id="about")
                about_button = gr.Button("Refresh", size="sm")
                about_button.click(about, None, about_md, api_name="about")
    return demo


def launch_demo(
    demo: Any,
    host: str | None = "127.0.0.1",
    port: int | None = None,
    share: bool = False,
    max_file_size: str | int = DEFAULT_MAX_FILE_SIZE,
    concurrency: int = DEFAULT_CONCURRENCY,
    queue_size: int = 64,
    prevent_thread_lock: bool = False,
    quiet: bool = False,
    open_browser: bool = False,
) -> tuple[Any, str, str | None]:
    """Serve the demo: local address only unless ``host`` says otherwise, no share link unless asked,
    bounded uploads and queue, no analytics, no server-side rendering, no MCP server.

    ``host=None`` lets Gradio decide (``GRADIO_SERVER_NAME``, which Hugging Face Spaces set to 0.0.0.0).
    Returns Gradio's ``(app, local_url, share_url)``.
    """
    import gradio as gr

    demo.queue(default_concurrency_limit=max(1, int(concurrency)), max_size=queue_size)
    return demo.launch(
        server_name=host,
        server_port=port,
        share=share,
        max_file_size=max_file_size,
        prevent_thread_lock=prevent_thread_lock,
        quiet=quiet,
        inbrowser=open_browser,
        show_error=False,  # gr.Error messages still reach users; other exceptions stay in the log
        ssr_mode=False,
        mcp_server=False,
        run_history=False,  # record nothing about users' calls
        pwa=False,
        # System fonts: the default Google fonts would be fetched from the internet by every browser.
        theme=gr.themes.Soft(
            font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
        ),
    )


__all__ = [
    "DemoBackend",
    "DemoInputError",
    "MicroBatcher",
    "SearchResult",
    "build_demo",
    "describe_hit",
    "launch_demo",
    "LABEL_PRESETS",
    "TEMPLATE_SETS",
]
