"""The work behind the demo's tabs: zero-shot classification and cross-modal search, with every
user input validated.

:class:`DemoBackend` holds the model, processor and (optionally) a search index. Each image or text
goes through a :class:`~align_hf.demo.batching.MicroBatcher`, so concurrent requests share forward
passes. Validation happens per request, before batching, so one user's bad upload fails only their
own request (Gradio's ``batch=True`` would fail the whole batch).

Example::

    from align_hf.demo.backend import DemoBackend
    from align_hf.demo.ui import build_demo, launch_demo
    backend = DemoBackend(model, processor, index=CrossModalIndex.load("my-index"), index_path="my-index")
    launch_demo(build_demo(backend))
"""

from __future__ import annotations

import collections
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from align_hf.demo.batching import MicroBatcher
from align_hf.demo.limits import (
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_PIXELS,
    MAX_LABEL_CHARS,
    MAX_LABELS,
    MAX_QUERY_CHARS,
    MAX_RESULTS,
)
from align_hf.evaluation.encoding import encode_pil_images, encode_texts
from align_hf.evaluation.zero_shot import build_class_embeddings, load_templates, logit_scale
from align_hf.image_io import ImageTooLargeError, open_image, to_rgb
from align_hf.search import CrossModalIndex, Hit, Searcher, compose_query

logger = logging.getLogger(__name__)

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
        self.model_name = model_name or str(getattr(getattr(model, "config", None), "name_or_path", "") or "model")
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
            return open_image(path, max_pixels=self.max_pixels)  # the size is checked from the header
        except ImageTooLargeError as err:
            self._check_pixels(err.width, err.height)
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
                image = open_image(path, draft_size=(THUMBNAIL_SIDE, THUMBNAIL_SIDE))
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


__all__ = [
    "DemoBackend",
    "DemoInputError",
    "SearchResult",
    "describe_hit",
    "LABEL_PRESETS",
    "TEMPLATE_SETS",
]
