"""Zero-shot classification accuracy: top-1, top-5 and mean per-class recall from class scores."""

import datasets
import evaluate
import torch

from align_hf.evaluation import classification_metrics

_DESCRIPTION = """
Top-k accuracy and mean per-class recall of a classifier that scores every class, as reported for
zero-shot ImageNet-style evaluation (CLIP_benchmark conventions). Top-5 is left out with fewer
than 5 classes; mean per-class recall averages top-1 recall over the classes present in the references.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: one list of C class scores (logits or probabilities) per example.
    references: the true class index of each example.
    topk: top-k accuracies to report (default (1, 5)).
Returns:
    top1, top5, mean_per_class_recall (fractions in [0, 1]) and num_samples.
Example:
    >>> metric = evaluate.load(align_hf.metrics.metric_path("zero_shot_accuracy"))
    >>> metric.compute(predictions=[[0.1, 0.9], [0.8, 0.2]], references=[1, 1])
    {'top1': 0.5, 'mean_per_class_recall': 0.5, 'num_samples': 2}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ZeroShotAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float32")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, topk=(1, 5)):
        logits = torch.as_tensor(predictions, dtype=torch.float32)
        labels = torch.as_tensor(references, dtype=torch.long)
        return classification_metrics(logits, labels, topk=tuple(topk))
