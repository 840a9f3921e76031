"""Training arguments of :class:`~align_hf.trainer.AlignTrainer`.

``AlignTrainingArguments`` is ``transformers.TrainingArguments`` with the ALIGN paper's recipe as
defaults (LAMB, learning rate 1e-3 with linear warm-up then linear decay, weight decay 1e-5 kept
off norms, biases and the temperature) plus the few switches ALIGN training needs. Every field is a
command-line flag through ``transformers.HfArgumentParser`` (``align-hf train --help``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

OPTIMIZERS = ("lamb", "adamw", "hf")


@dataclass
class AlignTrainingArguments(TrainingArguments):
    """``TrainingArguments`` with ALIGN defaults and options.

    Changed defaults: ``learning_rate=1e-3``, ``weight_decay=1e-5``, ``warmup_steps=0.01`` (a share of
    the run; the paper warms up 10k of 1.2M steps), ``dataloader_drop_last=True`` (the global-batch
    loss needs equal per-rank batches), ``remove_unused_columns=False`` (batches carry data counts),
    ``report_to="none"``.
    """

    optimizer: str = field(
        default="lamb",
        metadata={
            "help": "lamb (timm's LAMB, the paper's), adamw (torch AdamW), or hf (whatever --optim selects). "
            "Weight decay is never applied to norms, biases or the temperature.",
            "choices": list(OPTIMIZERS),
        },
    )
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak learning rate (ALIGN: 1e-3)."})
    weight_decay: float = field(default=1e-5, metadata={"help": "Weight decay on matrices and kernels (ALIGN: 1e-5)."})
    warmup_steps: float = field(
        default=0.01, metadata={"help": "Linear warm-up: steps (>= 1) or a share of the run (< 1)."}
    )
    dataloader_drop_last: bool = field(
        default=True, metadata={"help": "Drop incomplete batches (the distributed loss needs equal batches)."}
    )
    remove_unused_columns: bool = field(default=False, metadata={"help": "Kept False: batches carry data counts."})
    freeze_vision_tower: bool = field(
        default=False, metadata={"help": "Do not train the image tower (and its projection); its BatchNorm stays in eval mode."}
    )
    freeze_text_tower: bool = field(default=False, metadata={"help": "Do not train the text tower (and its projection)."})
    freeze_batch_norm: bool = field(
        default=False,
        metadata={"help": "Keep every BatchNorm in eval mode: running statistics are not updated (affine weights still train)."},
    )
    freeze_temperature: bool = field(default=False, metadata={"help": "Keep the softmax temperature fixed."})
    compile_towers: bool = field(
        default=False, metadata={"help": "torch.compile both towers (AlignModel.compile_towers) before training."}
    )
    channels_last: bool = field(
        default=False,
        metadata={"help": "Keep the image tower and pixel batches channels-last (faster convolutions, 2x on CPU here)."},
    )
    max_train_seconds: float | None = field(
        default=None,
        metadata={"help": "Wall-clock budget for training. The run stops when it is spent; with the linear schedule the "
                  "learning rate follows whichever is further along, steps or time, so a slow machine still ends the "
                  "run fully decayed. Ranks agree on the clock."},
    )
    eval_on_end: bool = field(default=True, metadata={"help": "Evaluate once more after the last step."})

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.freeze_vision_tower and self.freeze_text_tower:
            raise ValueError("freezing both towers leaves nothing to train but the temperature")
        super().__post_init__()


__all__ = ["AlignTrainingArguments", "OPTIMIZERS"]
