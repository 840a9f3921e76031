"""Zero-shot image classification from class names and prompt templates.

Each class is embedded as the mean of the L2-normalised text embeddings of its prompts
("a photo of a {}." filled with the class name, for every template), renormalised. An image is
scored against every class by cosine similarity times the model's logit scale.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

from align_hf.evaluation.encoding import ImageLike, encode_images, encode_texts

logger = logging.getLogger(__name__)

BUILTIN_TEMPLATES = ("imagenet", "short")
PLACEHOLDER = "{}"


def load_templates(spec: str | os.PathLike | Sequence[str] = "imagenet") -> list[str]:
    """Prompt templates, each holding one ``{}`` where the class name goes.

    Args:
        spec: ``"imagenet"`` (the 80 CLIP ImageNet templates), ``"short"`` (8 of them), a path to a
            text file with one template per line (blank lines and ``#`` comments ignored), or a list.
    """
    if isinstance(spec, (str, os.PathLike)):
        name = str(spec)
        if name in BUILTIN_TEMPLATES:
            text = resources.files("align_hf").joinpath("templates", f"{name}.txt").read_text(encoding="utf-8")
        elif Path(name).is_file():
            text = Path(name).read_text(encoding="utf-8")
        else:
            raise FileNotFoundError(
                f"templates {name!r} is neither a built-in set {BUILTIN_TEMPLATES} nor an existing file"
            )
        templates = [line.strip() for line in text.splitlines()]
        templates = [t for t in templates if t and not t.startswith("#")]
    else:
        templates = [str(t) for t in spec]
    if not templates:
        raise ValueError("no prompt templates given")
    bad = [t for t in templates if t.count(PLACEHOLDER) != 1]
    if bad:
        raise ValueError(f"each template needs exactly one '{{}}' for the class name; bad: {bad[:3]}")
    return templates


def load_class_names(spec: str | os.PathLike | Sequence[str]) -> list[str]:
    """Class names from a list, a text file (one per line) or a JSON file holding a list."""
    if isinstance(spec, (str, os.PathLike)):
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"class-name file {path} does not exist")
        if path.suffix == ".json":
            names = json.loads(path.read_text(encoding="utf-8"))
        else:
            names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        names = list(spec)
    names = [str(n) for n in names]
    if not names:
        raise ValueError("no class names given")
    return names


def build_class_embeddings(
    encode: Callable[[list[str]], torch.Tensor],
    class_names: Sequence[str],
    templates: Sequence[str],
) -> torch.Tensor:
    """Average of the normalised prompt embeddings of each class, renormalised.

    Args:
        encode: maps a list of ``C * T`` prompts to ``(C * T, D)`` embeddings (normalised or not;
            they are normalised here).
        class_names: ``C`` names.
        templates: ``T`` templates with one ``{}``.

    Returns:
        ``(C, D)`` float32 unit vectors.
    """
    prompts = [t.replace(PLACEHOLDER, name) for name in class_names for t in templates]
    emb = encode(prompts).float()
    if emb.shape[0] != len(prompts):
        raise ValueError(f"encoder returned {emb.shape[0]} embeddings for {len(prompts)} prompts")
    emb = torch.nn.functional.normalize(emb, dim=-1)
    mean = emb.view(len(class_names), len(templates), -1).mean(1)
    return torch.nn.functional.normalize(mean, dim=-1)


def logit_scale(model: torch.nn.Module) -> float:
    """``1 / temperature`` of the model's contrastive head (100 when the model has none)."""
    head = getattr(model, "contrastive_head", None)
    temperature = getattr(head, "temperature", None)
    if temperature is None:
        return 100.0
    return float(1.0 / torch.as_tensor(temperature).detach().float().cpu())


def text_tower_digest(model: torch.nn.Module) -> str:
    """SHA-1 over the name, shape and bytes of every text-side parameter (cache key)."""
    digest = hashlib.sha1()
    for name, tensor in model.state_dict().items():
        if name.startswith(("text_model.", "text_projection.")):
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class ZeroShotClassifier:
    """Classify images into ``class_names`` without training.

    The class embeddings are computed once (lazily) and kept; with ``cache_dir`` they are also
    stored on disk, keyed by the text tower's weights, the class names and the templates.

    Example::

        clf = ZeroShotClassifier(model, processor, ["cat", "dog"], templates="short")
        clf.predict([image])  # [[{"label": "cat", "score": 0.93}, {"label": "dog", "score": 0.07}]]
    """

    def __init__(
        self,
        model: torch.nn.Module,
        processor: Any,
        class_names: str | os.PathLike | Sequence[str],
        templates: str | os.PathLike | Sequence[str] = "imagenet",
        batch_size: int = 256,
        cache_dir: str | os.PathLike | None = None,
        progress: bool = True,
    ) -> None:
        self.model = model
        self.processor = processor
        self.class_names = load_class_names(class_names)
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError("class names must be unique")
        self.templates = load_templates(templates)
        self.batch_size = batch_size
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.progress = progress
        self._weights: torch.Tensor | None = None

    @property
    def weights(self) -> torch.Tensor:
        """``(C, D)`` normalised class embeddings."""
        if self._weights is None:
            self._weights = self._load_or_build()
        return self._weights

    def _cache_path(self) -> Path | None:
        if self.cache_dir is None:
            return None
        key = hashlib.sha1(
            json.dumps([text_tower_digest(self.model), self.class_names, self.templates]).encode()
        ).hexdigest()
        return self.cache_dir / f"zero_shot_{key[:20]}.pt"

    def _load_or_build(self) -> torch.Tensor:
        path = self._cache_path()
        if path is not None and path.is_file():
            logger.info("loading class embeddings from %s", path)
            return torch.load(path, map_location="cpu", weights_only=True)
        was_training = self.model.training
        self.model.eval()
        try:
            weights = build_class_embeddings(
                lambda prompts: encode_texts(
                    self.model, self.processor, prompts, batch_size=self.batch_size, progress=self.progress
                ),
                self.class_names,
                self.templates,
            )
        finally:
            self.model.train(was_training)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            torch.save(weights, tmp)
            os.replace(tmp, path)
        return weights

    def logits(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """``(N, D)`` normalised image embeddings -> ``(N, C)`` logits (cosine x logit scale)."""
        weights = self.weights
        if image_embeds.shape[-1] != weights.shape[-1]:
            raise ValueError(f"image embeddings have dim {image_embeds.shape[-1]}, classes {weights.shape[-1]}")
        return logit_scale(self.model) * image_embeds.float().cpu() @ weights.T

    def predict(
        self, images: Iterable[ImageLike], top_k: int = 5, batch_size: int = 64
    ) -> list[list[dict[str, float | str]]]:
        """Top-``k`` ``{"label", "score"}`` (softmax probabilities) per image, best first.

        Unreadable images give an empty list in their place.
        """
        images = list(images)
        encoded = encode_images(self.model, self.processor, images, batch_size=batch_size, progress=self.progress)
        probs = self.logits(encoded.embeddings).softmax(-1)
        k = min(top_k, len(self.class_names))
        top = probs.topk(k, dim=-1)
        out: list[list[dict[str, float | str]]] = [[] for _ in images]
        for row, pos in enumerate(encoded.kept):
            out[pos] = [
                {"label": self.class_names[j], "score": float(s)}
                for s, j in zip(top.values[row].tolist(), top.indices[row].tolist())
            ]
        return out


__all__ = [
    "load_templates",
    "load_class_names",
    "build_class_embeddings",
    "logit_scale",
    "text_tower_digest",
    "ZeroShotClassifier",
]
