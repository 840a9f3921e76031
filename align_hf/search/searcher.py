"""Queries: text->image, image->text, image->image and composed image+text search over a
:class:`~align_hf.search.index.CrossModalIndex`."""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import torch

from align_hf.evaluation.encoding import ImageLike, encode_pil_images, encode_texts
from align_hf.image_io import open_image
from align_hf.search.collection import Hit
from align_hf.search.index import CrossModalIndex
from align_hf.search.signature import check_model, model_signature


def compose_query(
    image: torch.Tensor | np.ndarray | None = None,
    texts: torch.Tensor | np.ndarray | None = None,
    minus: torch.Tensor | np.ndarray | None = None,
    image_weight: float = 1.0,
    text_weight: float = 2.0,
) -> np.ndarray:
    """Combine unit embeddings into one unit query: ``w_i * image + w_t * sum(texts) - w_t * sum(minus)``.

    The paper's default weighs text x2 and image x1; subtracting a text removes an attribute.

    Args:
        image: ``(D,)`` image embedding or ``None``.
        texts: ``(T, D)`` embeddings of texts to add.
        minus: ``(M, D)`` embeddings of texts to subtract.

    Returns:
        ``(D,)`` float32 unit vector.
    """
    parts = []
    if image is not None:
        parts.append(image_weight * _as_rows(image).sum(0))
    if texts is not None and len(texts):
        parts.append(text_weight * _as_rows(texts).sum(0))
    if minus is not None and len(minus):
        parts.append(-text_weight * _as_rows(minus).sum(0))
    if not parts:
        raise ValueError("empty query: give an image, a text or both")
    query = np.sum(parts, axis=0)
    norm = float(np.linalg.norm(query))
    if not norm > 1e-6:
        raise ValueError("the query terms cancel out (zero vector); change the weights or the terms")
    return (query / norm).astype(np.float32)


def _as_rows(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.atleast_2d(np.asarray(x, dtype=np.float64))


def _query_texts(texts: str | Sequence[str] | None, name: str) -> list[str]:
    """``texts`` as a list; a blank one is an error (its embedding would be the tokenizer's
    special tokens alone, which matches arbitrary items)."""
    if texts is None:
        return []
    texts = [texts] if isinstance(texts, str) else list(texts)
    for i, item in enumerate(texts):
        if not isinstance(item, str) or not item.strip():
            raise ValueError(f"{name} query {i + 1} is empty: give words to search for" if len(texts) > 1
                             else f"the {name} query is empty: give words to search for")
    return texts


class Searcher:
    """Text->image, image->text, image->image and image+text search over a :class:`CrossModalIndex`.

    The query model must embed like the index's model (checked once, here).

    Example::

        searcher = Searcher(CrossModalIndex.load("my-index"), model, processor)
        searcher.search(text="a red bicycle", k=5)             # text -> image
        searcher.search(image="eiffel.jpg", text="snow")       # image + text -> image
        searcher.search(image="cat.jpg", target="text")        # image -> text
    """

    def __init__(
        self, index: CrossModalIndex | str | os.PathLike, model: torch.nn.Module, processor: Any, check: bool = True
    ) -> None:
        self.index = index if isinstance(index, CrossModalIndex) else CrossModalIndex.load(index)
        self.model = model.eval()
        self.processor = processor
        if check:
            check_model(self.index.signature, model_signature(model, processor))

    def embed_text(self, texts: str | Sequence[str]) -> np.ndarray:
        """``(T, D)`` unit text embeddings."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        return encode_texts(self.model, self.processor, texts, progress=False).numpy()

    def embed_image(self, image: ImageLike) -> np.ndarray:
        """``(D,)`` unit embedding of one image (PIL, path, bytes)."""
        try:
            pil = open_image(image)
        except Exception as err:
            raise ValueError(f"cannot read the query image {image!r}: {err}") from err
        return encode_pil_images(self.model, self.processor, [pil])[0].numpy()

    def search(
        self,
        text: str | Sequence[str] | None = None,
        image: ImageLike | None = None,
        minus: str | Sequence[str] | None = None,
        target: str | None = None,
        k: int = 10,
        image_weight: float = 1.0,
        text_weight: float = 2.0,
    ) -> list[Hit]:
        """Search with any mix of image, texts to add and texts to subtract.

        Args:
            text: text(s) to add to the query.
            image: query image.
            minus: text(s) to subtract (removes an attribute).
            target: collection to search, ``"image"`` or ``"text"``; defaults to images when the
                index has them.
            k: number of results.
            image_weight, text_weight: composition weights (paper default 1 and 2).

        Returns:
            Up to ``k`` :class:`~align_hf.search.collection.Hit` s, best first.
        """
        target = target or ("image" if "image" in self.index else "text")
        collection = self.index[target]
        text, minus = _query_texts(text, "text"), _query_texts(minus, "minus")
        query = compose_query(
            image=self.embed_image(image) if image is not None else None,
            texts=self.embed_text(text) if text else None,
            minus=self.embed_text(minus) if minus else None,
            image_weight=image_weight,
            text_weight=text_weight,
        )
        return collection.search(query, k)[0]

    def search_vector(self, query: np.ndarray | torch.Tensor, target: str | None = None, k: int = 10) -> list[Hit]:
        """Search with a ready ``(D,)`` unit embedding (e.g. from :func:`compose_query`)."""
        target = target or ("image" if "image" in self.index else "text")
        return self.index[target].search(query, k)[0]

    def set_search_params(self, target: str | None = None, **params: Any) -> None:
        """Query-time knobs of one collection (default: all): ``nprobe``, ``ef_search``, and for
        sharded indexes ``rerank`` (exact re-ranking factor for PQ)."""
        from align_hf.search.faiss_index import set_search_params

        for kind in [target] if target else list(self.index.collections):
            collection = self.index[kind]
            if hasattr(collection, "set_search_params"):
                collection.set_search_params(**params)
            else:  # knobs the index lacks are skipped
                set_search_params(collection.index, ef_search=params.get("ef_search"), nprobe=params.get("nprobe"))

    def text_to_image(self, text: str, k: int = 10) -> list[Hit]:
        return self.search(text=text, target="image", k=k)

    def image_to_text(self, image: ImageLike, k: int = 10) -> list[Hit]:
        return self.search(image=image, target="text", k=k)

    def image_to_image(self, image: ImageLike, k: int = 10) -> list[Hit]:
        return self.search(image=image, target="image", k=k)


__all__ = ["Searcher", "compose_query"]
