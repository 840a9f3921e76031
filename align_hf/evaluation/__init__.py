"""Zero-shot evaluation of ALIGN models, used alike by ``align-hf eval`` and the trainer.

* :mod:`~align_hf.evaluation.metrics`: top-k accuracy and retrieval recall@K on embedding tensors;
* :mod:`~align_hf.evaluation.encoding`: batched image and text embedding that skips unreadable images;
* :mod:`~align_hf.evaluation.fields`: reading rows: dotted field paths, captions, class labels;
* :mod:`~align_hf.evaluation.eval_sets`: which rows and fields make a retrieval or zero-shot set;
* :mod:`~align_hf.evaluation.zero_shot`: prompt templates, class embeddings, a zero-shot classifier;
* :mod:`~align_hf.evaluation.sharding`: splitting the embedding work over ranks and gathering it;
* :mod:`~align_hf.evaluation.runner`: the one evaluation run, over the trainer's sets
  (:func:`evaluate_sets`) or one dataset for the CLI (:func:`evaluate_zero_shot`,
  :func:`evaluate_retrieval`).
"""

from align_hf.evaluation.encoding import EncodedImages, ImageLike, encode_images, encode_pil_images, encode_texts
from align_hf.evaluation.eval_sets import EvalSet, RetrievalEvalSet, ZeroShotEvalSet, as_eval_sets
from align_hf.evaluation.fields import get_field, read_captions, read_label
from align_hf.evaluation.metrics import classification_metrics, retrieval_metrics
from align_hf.evaluation.runner import evaluate_retrieval, evaluate_sets, evaluate_zero_shot
from align_hf.evaluation.zero_shot import ZeroShotClassifier, build_class_embeddings, load_class_names, load_templates

__all__ = [
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
