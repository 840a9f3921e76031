"""Cross-modal search: FAISS indices over image and text embeddings, and a searcher for
text->image, image->text, image->image and image+text queries.

- :mod:`~align_hf.search.faiss_index`: index type choice, memory estimate, building and tuning.
- :mod:`~align_hf.search.collection`: :class:`Hit` and :class:`VectorCollection` (one searchable collection).
- :mod:`~align_hf.search.signature`: the model identity an index records and checks.
- :mod:`~align_hf.search.index`: :class:`CrossModalIndex` (the index directory) and resumable embedding.
- :mod:`~align_hf.search.searcher`: :class:`Searcher` and :func:`compose_query`.
- :mod:`~align_hf.search.embeddings`: embedding folders (clip-retrieval layout), written by
  ``align-hf index embed`` (:mod:`~align_hf.search.ray_embed` on Ray).
- :mod:`~align_hf.search.sharded`: on-disk sharded IVF index built from an embedding folder
  (:func:`build_sharded`), searched through :mod:`~align_hf.search.sharded_search` (:class:`ShardedCollection`).
"""

from align_hf.image_io import list_images
from align_hf.search.collection import Hit, VectorCollection
from align_hf.search.embeddings import EmbeddingFolder, embed_to_folder, iter_parts, read_manifest, read_metadata
from align_hf.search.faiss_index import (
    FLAT_MAX_VECTORS,
    HNSW_EF_SEARCH,
    INDEX_TYPES,
    build_faiss_index,
    choose_index_type,
    index_memory_bytes,
    set_search_params,
)
from align_hf.search.index import CrossModalIndex, embed_resumable
from align_hf.search.searcher import Searcher, compose_query
from align_hf.search.sharded import build_sharded, plan_index
from align_hf.search.sharded_search import ShardedCollection, exact_search, recall_at_k, tune_nprobe
from align_hf.search.signature import ModelMismatchError, check_model, model_signature

__all__ = [
    "CrossModalIndex",
    "EmbeddingFolder",
    "embed_to_folder",
    "iter_parts",
    "read_manifest",
    "read_metadata",
    "VectorCollection",
    "Searcher",
    "ShardedCollection",
    "Hit",
    "ModelMismatchError",
    "build_faiss_index",
    "build_sharded",
    "plan_index",
    "exact_search",
    "recall_at_k",
    "tune_nprobe",
    "choose_index_type",
    "compose_query",
    "embed_resumable",
    "list_images",
    "model_signature",
    "check_model",
    "set_search_params",
    "index_memory_bytes",
    "FLAT_MAX_VECTORS",
    "HNSW_EF_SEARCH",
    "INDEX_TYPES",
]
