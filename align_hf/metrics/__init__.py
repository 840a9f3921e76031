"""Zero-shot metrics as Hugging Face ``evaluate`` modules, loadable offline from this package.

Example::

    import evaluate
    from align_hf.metrics import metric_path

    accuracy = evaluate.load(metric_path("zero_shot_accuracy"))
    accuracy.compute(predictions=logits, references=labels)   # logits (N, C), labels (N,)

    recall = evaluate.load(metric_path("retrieval_recall"))
    recall.compute(predictions=text_embeds, references=text_to_image, image_embeds=image_embeds)
"""

from __future__ import annotations

from pathlib import Path

METRICS = ("zero_shot_accuracy", "retrieval_recall")


def metric_path(name: str) -> str:
    """Directory of a bundled metric, for ``evaluate.load``."""
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; bundled metrics: {METRICS}")
    return str(Path(__file__).parent / name)


def load(name: str, **kwargs):
    """``evaluate.load`` of a bundled metric (no network)."""
    import evaluate

    return evaluate.load(metric_path(name), **kwargs)


__all__ = ["METRICS", "metric_path", "load"]
