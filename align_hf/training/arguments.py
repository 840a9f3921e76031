"""Arguments of a training run: what to train (:class:`ModelArguments`), on what data
(:class:`DataArguments`) and how (:class:`AlignTrainingArguments`).

``AlignTrainingArguments`` is ``transformers.TrainingArguments`` with the ALIGN paper's recipe as
defaults (LAMB, learning rate 1e-3 with linear warm-up then linear decay, weight decay 1e-5 kept
off norms, biases and the temperature) plus the few switches ALIGN training needs. Every field is a
command-line flag through ``transformers.HfArgumentParser`` (``align-hf train --help``); so are
the fields of the two other dataclasses.
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
    fast_path: bool = field(
        default=True,
        metadata={"help": "Run the image tower on align_hf's fast path (AlignModel.set_fast_path): channels-last "
                  "convolutions, Keras padding inside the convolution, BatchNorm folded in eval; the same results to "
                  "float rounding. --no-fast-path repeats transformers' AlignModel op for op."},
    )
    channels_last: bool = field(
        default=False,
        metadata={"help": "Keep the image tower and pixel batches channels-last (faster convolutions on most hardware)."},
    )
    max_train_seconds: float | None = field(
        default=None,
        metadata={"help": "Wall-clock budget for training. The run stops when it is spent; with the linear schedule the "
                  "learning rate follows whichever is further along, steps or time, so a slow machine still ends the "
                  "run fully decayed. Ranks agree on the clock."},
    )
    eval_on_end: bool = field(default=True, metadata={"help": "Evaluate once more after the last step."})
    accum_freq: int = field(
        default=1,
        metadata={"help": "Feature-cached accumulation: each optimiser step contrasts accum_freq micro-batches of "
                  "per_device_train_batch_size pairs as ONE batch (more negatives) while holding one micro-batch's "
                  "activations (align_hf.training.feature_cache). Global batch = per_device_train_batch_size x "
                  "accum_freq x world size; costs one extra forward per micro-batch. Replaces "
                  "gradient_accumulation_steps (which adds no negatives); single process or DDP."},
    )
    sync_batch_norm: bool = field(
        default=False,
        metadata={"help": "With more than one process, BatchNorm in the image tower normalises with the statistics of "
                  "the global batch (SyncBatchNorm) instead of each rank's own."},
    )

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.freeze_vision_tower and self.freeze_text_tower:
            raise ValueError("freezing both towers leaves nothing to train but the temperature")
        if self.accum_freq < 1:
            raise ValueError(f"accum_freq must be >= 1, got {self.accum_freq}")
        if self.accum_freq > 1 and self.gradient_accumulation_steps > 1:
            raise ValueError("accum_freq (feature-cached, adds negatives) replaces gradient_accumulation_steps: set one of them")
        if self.accum_freq > 1 and (self.deepspeed or self.fsdp):
            raise ValueError("accum_freq needs one process or DDP: DeepSpeed steps at every backward, FSDP shards the head")
        if self.sync_batch_norm and self.freeze_batch_norm:
            raise ValueError("sync_batch_norm and freeze_batch_norm contradict each other: frozen BatchNorm uses no batch statistics")
        super().__post_init__()

    @property
    def train_batch_size(self) -> int:
        """Pairs one process loads per optimiser step: ``per_device_train_batch_size x accum_freq``
        (x GPUs under DataParallel). AlignTrainer cuts the batch into ``accum_freq`` micro-batches."""
        return super().train_batch_size * self.accum_freq


TASKS = ("contrastive", "classification")
FILTERS = ("none", "paper", "small")


@dataclass
class ModelArguments:
    """Which model to train and how to build it (see :func:`~align_hf.training.factories.build_model_and_processor`)."""

    model: str = field(
        default="tiny",
        metadata={"help": "A preset (tiny, align-base, align-l2) trained from scratch, or a checkpoint folder / Hub repo "
                  "(align_hf or transformers-format ALIGN) to fine-tune."},
    )
    processor: str | None = field(default=None, metadata={"help": "Processor folder/repo (default: the checkpoint's)."})
    tokenizer: str | None = field(
        default=None, metadata={"help": "Tokenizer folder/repo for a preset model (e.g. bert-base-uncased)."}
    )
    vocab: str | None = field(
        default=None, metadata={"help": "vocab.txt for a preset model's WordPiece tokenizer (default: the synthetic corpus's)."}
    )
    image_size: int | None = field(default=None, metadata={"help": "Image size of a preset model (crop size; resize is 346/289 of it)."})
    temperature_init: float | None = field(default=None, metadata={"help": "Initial temperature of a preset model (paper: 1.0)."})
    config_overrides: str | None = field(
        default=None, metadata={"help": "JSON of AlignConfig.from_preset overrides, e.g. '{\"text_config\": {\"num_hidden_layers\": 1}}'."}
    )
    allow_pickle: bool = field(default=False, metadata={"help": "Fully unpickle pytorch_model.bin (trusted sources only; plain state dicts load without it)."})


@dataclass
class DataArguments:
    """Training and evaluation data."""

    task: str = field(
        default="contrastive",
        metadata={"help": "contrastive (image-caption pretraining / fine-tuning) or classification (labelled images: "
                  "linear probe with --freeze_vision_tower, else full fine-tune).", "choices": list(TASKS)},
    )
    train_data: str | None = field(
        default=None,
        metadata={"help": "Training pairs: anything the data entry point takes (webdataset shards/glob/brace pattern, image "
                  "folder, parquet, saved dataset, Hub name), or a synthetic corpus folder (align-hf data synth)."},
    )
    eval_data: str | None = field(default=None, metadata={"help": "Retrieval eval pairs (same formats)."})
    eval_image_column: str = field(default="image", metadata={"help": "Image field of eval rows."})
    eval_caption_column: str = field(default="text", metadata={"help": "Caption field(s) of eval rows, e.g. meta.captions."})
    zero_shot_data: str | None = field(default=None, metadata={"help": "Labelled images for zero-shot evaluation."})
    class_names: str | None = field(default=None, metadata={"help": "Class names: a text file (one per line) or JSON list."})
    templates: str = field(default="imagenet", metadata={"help": "Prompt templates: imagenet, short, or a file."})
    label_column: str = field(default="label", metadata={"help": "Label field (class index or name), e.g. meta.label_index."})
    image_column: str | None = field(default=None, metadata={"help": "Image column / webdataset extension of the training data."})
    text_column: str | None = field(default=None, metadata={"help": "Caption column / webdataset extension of the training data."})
    shuffle_buffer: int = field(default=10_000, metadata={"help": "Shuffle buffer of the training stream."})
    filter: str = field(
        default="none",
        metadata={"help": "ALIGN frequency filter on the training data: none, paper thresholds, or small (small corpora).",
                  "choices": list(FILTERS)},
    )
    filter_counts: str | None = field(
        default=None,
        metadata={"help": "Corpus counts for --filter from `align-hf data count` (store folder or .json); skips the "
                  "counting pass over the training data."},
    )
    flip_swap_left_right: bool = field(
        default=False, metadata={"help": "Swap 'left'/'right' in captions of flipped images (on by default for the synthetic corpus)."}
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate on at most this many rows per set."})


__all__ = ["AlignTrainingArguments", "DataArguments", "FILTERS", "ModelArguments", "OPTIMIZERS", "TASKS"]
