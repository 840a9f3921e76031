"""Zero-shot evaluation of ALIGN models, used alike by ``align-hf eval`` and the trainer.

* :mod:`~align_hf.evaluation.metrics`: top-k accuracy and retrieval recall@K on embedding tensors;
* :mod:`~align_hf.evaluation.encoding`: batched image and text embedding that skips unreadable images;
* :mod:`~align_hf.evaluation.fields`: reading rows: dotted field paths, captions, class labels;
* :mod:`~align_hf.evaluation.eval_sets`: which rows and fields make a retrieval or zero-shot set;
* :mod:`~align_hf.evaluation.zero_shot`: prompt templates, class embeddings, a zero-shot classifier;
* :mod:`~align_hf.evaluation.sharding`: splitting the embedding work over ranks and gathering it;
* :mod:`~align_hf.evaluation.runner`: the one evaluation run, over the trainer's sets
  (:func:`evaluate_sets`) or one dataset for the CLI (:func:`evaluate_zero_shot`,
  :func:`evaluate_retrieval`);
* :mod:`~align_hf.evaluation.clip_benchmark`: CLIP_benchmark's webdataset layout and result JSON,
  and :func:`load_align_hf` for its model registry (imported on first use, so that
  ``python -m align_hf.evaluation.clip_benchmark`` runs it once).
"""

from typing import Any

from align_hf.evaluation.encoding import EncodedImages, ImageLike, encode_images, encode_pil_images, encode_texts
from align_hf.evaluation.eval_sets import EvalSet, RetrievalEvalSet, ZeroShotEvalSet, as_eval_sets
from align_hf.evaluation.fields import get_field, read_captions, read_label
from align_hf.evaluation.metrics import classification_metrics, retrieval_metrics
from align_hf.evaluation.runner import evaluate_retrieval, evaluate_sets, evaluate_zero_shot
from align_hf.evaluation.zero_shot import ZeroShotClassifier, build_class_embeddings, load_class_names, load_templates

# Names of align_hf.evaluation.clip_benchmark, loaded on first access (see the module docstring).
_CLIP_BENCHMARK_NAMES = (
    "ClipBenchmarkDataset",
    "clip_benchmark_result",
    "load_align_hf",
    "open_clip_benchmark_dataset",
    "register_with_clip_benchmark",
    "write_clip_benchmark_dataset",
)


def __getattr__(name: str) -> Any:
    if name in _CLIP_BENCHMARK_NAMES:
        from align_hf.evaluation import clip_benchmark

        return getattr(clip_benchmark, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    *_CLIP_BENCHMARK_NAMES,
    "EncodedImages",
    "EvalSet",
    "ImageLike",
    "RetrievalEvalSet",
    "ZeroShotClassifier",
    "ZeroShotEvalSet",
    "as_eval_sets",
    "build_class_embeddings",
    "classification_metrics",
    "encode_images",
    "encode_pil_images",
    "encode_texts",
    "evaluate_retrieval",
    "evaluate_sets",
    "evaluate_zero_shot",
    "get_field",
    "load_class_names",
    "load_templates",
    "read_captions",
    "read_label",
    "retrieval_metrics",
]
