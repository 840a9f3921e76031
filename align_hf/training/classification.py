"""Image classification on top of ALIGN's image tower: linear probes and full fine-tuning.

:class:`AlignForImageClassification` keeps the image tower (and image projection) of an
:class:`~align_hf.AlignModel` under the same parameter names and adds a linear classifier on the
L2-normalised image embedding. The classifier can start from the zero-shot classifier (class
prompt embeddings divided by the temperature), so step 0 already scores the zero-shot accuracy.
``align-hf train --task classification`` drives it with the stock ``transformers.Trainer``;
``--freeze_vision_tower`` makes it a linear probe.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Sequence

import torch
from torch import nn
from transformers import Trainer
from transformers.modeling_outputs import ImageClassifierOutput

from align_hf.configuration_align import AlignConfig
from align_hf.modeling_align import AlignPreTrainedModel, AlignVisionModel, l2_normalize

logger = logging.getLogger(__name__)


class AlignForImageClassification(AlignPreTrainedModel):
    """ALIGN image tower + linear classifier over ``config.num_labels`` classes.

    ``forward(pixel_values (B, 3, H, W), labels (B,) optional)`` returns ``ImageClassifierOutput`` with
    ``logits (B, num_labels)`` and the cross-entropy ``loss`` when labels are given.
    """

    config_class = AlignConfig
    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def __init__(self, config: AlignConfig):
        super().__init__(config)
        self.vision_model = AlignVisionModel(config.vision_config)
        width = self.vision_model.embed_dim
        projection = config.vision_config.image_projection_dim
        self.image_projection = nn.Linear(width, projection) if projection else None
        self.classifier = nn.Linear(projection or width, config.num_labels)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **kwargs) -> ImageClassifierOutput:
        pooled = self.vision_model(pixel_values=pixel_values).pooler_output
        if self.image_projection is not None:
            pooled = self.image_projection(pooled)
        logits = self.classifier(l2_normalize(pooled))
        loss = nn.functional.cross_entropy(logits.float(), labels) if labels is not None else None
        return ImageClassifierOutput(loss=loss, logits=logits)

    @classmethod
    def from_align_model(
        cls,
        model: Any,
        class_names: Sequence[str],
        processor: Any = None,
        templates: Any = "imagenet",
    ) -> "AlignForImageClassification":
        """Copy the image side of ``model``; with a ``processor``, start from the zero-shot classifier."""
        config = AlignConfig.from_dict(model.config.to_dict())
        config.num_labels = len(class_names)
        config.id2label = dict(enumerate(class_names))
        config.label2id = {name: i for i, name in enumerate(class_names)}
        classifier = cls(config)
        state = {k: v for k, v in model.state_dict().items() if k.startswith(("vision_model.", "image_projection."))}
        missing, unexpected = classifier.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith("classifier.") for k in missing):
            raise ValueError(f"image tower mismatch: missing {missing}, unexpected {unexpected}")
        if processor is not None:
            from align_hf.evaluation.zero_shot import ZeroShotClassifier, logit_scale

            weights = ZeroShotClassifier(model, processor, list(class_names), templates, progress=False).weights
            with torch.no_grad():
                classifier.classifier.weight.copy_(weights * logit_scale(model))
                classifier.classifier.bias.zero_()
        return classifier


class LabelledImages(torch.utils.data.Dataset):
    """Decoded, labelled images kept in memory; unreadable images and unknown labels are skipped and counted."""

    def __init__(self, rows: Any, label_column: str, class_names: Sequence[str], transform: Any, image_column: str = "image"):
        from align_hf.data.decoding import decode_image, image_bytes
        from align_hf.evaluation.fields import get_field, read_label

        index_of = {name: i for i, name in enumerate(class_names)}
        self.images, self.labels, self.skipped = [], [], {"unreadable": 0, "bad_label": 0}
        self.transform = transform
        for row in rows:
            label = read_label(get_field(row, label_column, None), index_of, len(class_names))
            if label is None:
                self.skipped["bad_label"] += 1
                continue
            decoded = decode_image(image_bytes(get_field(row, image_column, None)))
            if decoded.image is None:
                self.skipped["unreadable"] += 1
                continue
            self.images.append(decoded.image)
            self.labels.append(label)
        if any(self.skipped.values()):
            logger.warning("skipped %s", self.skipped)
        if not self.images:
            raise ValueError(f"no usable labelled image (skipped {self.skipped})")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"pixel_values": self.transform(self.images[index]), "labels": self.labels[index]}


def _accuracy(prediction) -> dict[str, float]:
    logits, labels = prediction.predictions, prediction.label_ids
    import numpy as np

    return {"top1": float(np.mean(np.argmax(logits, axis=-1) == labels))}


def run_classification(model_args, data_args, training_args) -> int:
    """``align-hf train --task classification``: linear probe (``--freeze_vision_tower``) or fine-tune."""
    import json

    from transformers import set_seed

    from align_hf.data.sources import load_pairs
    from align_hf.data.transforms import ImageTransform
    from align_hf.hub import build_model_card
    from align_hf.training.plotting import plot_training_curves
    from align_hf.training.factories import build_model_and_processor
    from align_hf.training.freezing import freeze_batch_norm
    from align_hf.evaluation.zero_shot import load_class_names

    if not data_args.class_names:
        raise SystemExit("--task classification needs --class_names")
    set_seed(training_args.seed)
    class_names = load_class_names(data_args.class_names)
    base, processor = build_model_and_processor(model_args)
    model = AlignForImageClassification.from_align_model(
        base, class_names, processor, data_args.templates
    )
    if training_args.freeze_vision_tower:
        model.vision_model.requires_grad_(False)
        if model.image_projection is not None:
            model.image_projection.requires_grad_(False)
        freeze_batch_norm(model.vision_model)
    elif training_args.freeze_batch_norm:
        freeze_batch_norm(model)

    def rows(source):
        text_column = data_args.label_column if "." not in data_args.label_column else None
        return load_pairs(source, data_args.image_column, text_column)

    label_column = data_args.label_column if "." in data_args.label_column else "text"
    image_processor = processor.image_processor
    train = LabelledImages(rows(data_args.train_data), label_column, class_names,
                           ImageTransform.from_image_processor(image_processor, train=True, seed=training_args.seed))
    evaluation = None
    if data_args.eval_data:
        evaluation = LabelledImages(rows(data_args.eval_data), label_column, class_names,
                                    ImageTransform.from_image_processor(image_processor, train=False))
    training_args.remove_unused_columns = False
    # No global-batch loss here, and evaluation must see every image (drop_last also applies to eval).
    training_args.dataloader_drop_last = False
    if evaluation is None:
        training_args.eval_strategy = "no"
    trainer = Trainer(model=model, args=training_args, train_dataset=train, eval_dataset=evaluation,
                      compute_metrics=_accuracy)
    metrics = trainer.evaluate() if evaluation is not None else {}
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    if evaluation is not None:
        metrics = {"zero_shot_init_top1": metrics.get("eval_top1"), **trainer.evaluate()}
    out = training_args.output_dir
    if trainer.is_world_process_zero():
        model_dir = os.path.join(out, "model")
        model.save_pretrained(model_dir)
        image_processor.save_pretrained(model_dir)
        card_metrics = {"eval": {k: float(v) for k, v in metrics.items() if isinstance(v, float)}} if metrics else None
        build_model_card(model.config, None, tags=["image-classification"], metrics=card_metrics).save(
            os.path.join(model_dir, "README.md"))
        plot_training_curves(trainer.state.log_history, os.path.join(out, "training_curves.png"), title="classification")
        with open(os.path.join(out, "metrics.json"), "w", encoding="utf-8") as handle:
            json.dump({**metrics, "train_skipped": train.skipped}, handle, indent=2)
        print(f"trained {trainer.state.global_step} steps; eval {metrics}")
        print(f"model: {model_dir}")
    return 0


__all__ = ["AlignForImageClassification", "LabelledImages", "run_classification"]
