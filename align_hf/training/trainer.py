"""``AlignTrainer``: a ``transformers.Trainer`` for ALIGN pretraining and fine-tuning.

What it adds to the stock Trainer:

* the loss is the model's contrastive head over the GLOBAL batch: under ``torch.distributed`` every
  rank's embeddings are gathered (autograd-aware) and each rank's gradient share is weighted so that
  DDP/FSDP/DeepSpeed averaging yields the exact global-batch gradient; under gradient accumulation
  each micro-batch loss is divided by the number of micro-batches; ``--accum_freq K`` instead
  contrasts K micro-batches as one batch (:mod:`align_hf.training.feature_cache`);
* ``--sync_batch_norm`` (:mod:`align_hf.training.sync_batch_norm`);
* the paper's optimiser (LAMB, weight decay 1e-5 kept off norms, biases and the temperature; AdamW
  as an option) with the stock linear warm-up + linear decay schedule;
* logs of the temperature, in-batch image->text / text->image accuracy, throughput in pairs/s and
  the data counts (read, kept, skipped and filtered by reason);
* evaluation over whole eval sets (retrieval recall@K both ways, zero-shot top-1 from prompt
  templates), see :mod:`align_hf.evaluation.runner`;
* atomic checkpoints (:mod:`align_hf.training.checkpointing`), so ``--resume_from_checkpoint``
  never picks up a half-written one;
* streaming training data (webdataset shards and any other :func:`~align_hf.data.load_pairs`
  source, built by :func:`~align_hf.data.pipeline.build_train_stream`) with exact resumption;
* tower / BatchNorm freezing for fine-tuning (:mod:`align_hf.training.freezing`) and a wall-clock
  budget (:mod:`align_hf.training.budget`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from align_hf.data.decoded import DecodedPairs
from align_hf.data.pipeline import DataStats, ImageTextLoader, ImageTextPairs, build_train_stream
from align_hf.data.transforms import STATS_KEY, ImageTextCollator, ImageTransform
from align_hf.evaluation.eval_sets import as_eval_sets
from align_hf.evaluation.runner import evaluate_sets
from align_hf.training import checkpointing, sharding
from align_hf.training.arguments import AlignTrainingArguments
from align_hf.training.budget import BudgetClock, TimeBudgetCallback, budget_schedule_factor
from align_hf.training.feature_cache import feature_cached_step, split_micro_batches
from align_hf.training.freezing import can_fuse_adamw, freeze_batch_norm, freeze_towers, parameter_groups
from align_hf.training.stream import StreamingTrainLoader
from align_hf.training.sync_batch_norm import sync_image_tower

logger = logging.getLogger(__name__)

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "pixel_values")


def _is_pairs_source(data: Any) -> bool:
    """Whether ``data`` is raw image-text pairs for the streaming pipeline rather than ready samples."""
    import datasets

    if isinstance(data, (str, os.PathLike)):
        return True
    if isinstance(data, (list, tuple)) and data and all(isinstance(d, (str, os.PathLike)) for d in data):
        return True
    return isinstance(data, (datasets.Dataset, datasets.IterableDataset, datasets.DatasetDict, datasets.IterableDatasetDict))


def _default_collator(processor: Any) -> ImageTextCollator:
    tokenizer = processor.tokenizer
    max_length = min(64, tokenizer.model_max_length or 64)
    return ImageTextCollator(tokenizer, max_length=max_length)


class AlignTrainer(Trainer):
    """A ``transformers.Trainer`` for :class:`~align_hf.AlignModel` (see the module docstring).

    Args:
        model: an :class:`~align_hf.AlignModel`.
        args: :class:`~align_hf.training.arguments.AlignTrainingArguments` (plain ``TrainingArguments``
            work too and get the AdamW/``--optim`` behaviour of the stock Trainer).
        train_dataset: one of
            - an :class:`~align_hf.data.ImageTextPairs` stream (or anything
              :func:`~align_hf.data.load_pairs` takes: shard patterns, folders, parquet, datasets),
              batched here with ``per_device_train_batch_size`` and ``dataloader_num_workers``;
              needs ``max_steps``;
            - a map-style dataset of ``{"pixel_values": (3, H, W), "text": str}`` samples (or
              already tokenised ``input_ids``), sampled by the stock Trainer.
        eval_dataset: :class:`~align_hf.evaluation.eval_sets.RetrievalEvalSet` /
            :class:`~align_hf.evaluation.eval_sets.ZeroShotEvalSet`, a list or dict of them, or plain rows with
            ``image`` and ``text`` (a retrieval set).
        processing_class: the :class:`~align_hf.AlignProcessor` (tokenizer for training, image
            processor and tokenizer for evaluation; saved with the model).
        data_collator: defaults to :class:`~align_hf.data.ImageTextCollator` over the tokenizer.
        train_transform: image transform of streamed training data (default: the processor's sizes
            with random crop + flip).
        flip_swap: caption word swaps applied when an image is flipped (e.g. left/right).
    """

    # compute_loss returns the mean loss of one micro-batch; the Trainer divides it by the number of
    # accumulation steps, so the accumulated gradient is the mean over micro-batches.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model: nn.Module | None = None,
        args: AlignTrainingArguments | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        data_collator: Any = None,
        train_transform: ImageTransform | None = None,
        flip_swap: dict[str, str] | None = None,
        **kwargs: Any,
    ):
        if args is None:
            args = AlignTrainingArguments(output_dir="align_hf_output")
        if processing_class is None:
            raise ValueError("AlignTrainer needs processing_class=AlignProcessor (tokenizer and image processor)")
        if model is None:
            raise ValueError("AlignTrainer needs a model")
        self.eval_sets = as_eval_sets(eval_dataset)
        self._prepare_model(model, args)
        self.flip_swap = flip_swap
        if _is_pairs_source(train_dataset):
            train_transform = train_transform or ImageTransform.from_image_processor(
                processing_class.image_processor, train=True, seed=args.seed
            )
            train_dataset = build_train_stream(train_dataset, seed=args.seed, flip_swap=flip_swap, transform=train_transform)
        self.train_transform = train_transform
        # While a checkpoint is saved: its staging folder, where Trainer._save_checkpoint writes.
        self._staging_root: str | None = None
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator or _default_collator(processing_class),
            train_dataset=train_dataset,
            eval_dataset=self.eval_sets or None,
            processing_class=processing_class,
            **kwargs,
        )
        self.model_accepts_loss_kwargs = False
        # FSDP2 cannot shard the 0-d temperature: it stays whole on every rank, its gradient averaged here.
        self._replicated = sharding.replicate_scalars(getattr(self.accelerator.state, "fsdp_plugin", None), self.model)
        if isinstance(self.train_dataset, DecodedPairs) and isinstance(self.data_collator, ImageTextCollator):
            self.train_dataset.pretokenize(self.data_collator.tokenize)  # fixed captions: tokenise once
        self._batch_stats = DataStats()  # counts carried by batches of map-style data
        self._stream: StreamingTrainLoader | None = None
        self._window = {"loss_steps": 0, "temperature": 0.0, "i2t": 0.0, "t2i": 0.0, "pairs": 0}
        self._window_start = time.perf_counter()

    # ------------------------------------------------------------------ model set-up

    @staticmethod
    def _prepare_model(model: nn.Module, args: Any) -> None:
        if getattr(args, "sync_batch_norm", False):  # before freezing: frozen layers keep their hooks
            sync_image_tower(model, args.world_size, args.device.type)
        if getattr(args, "freeze_vision_tower", False) or getattr(args, "freeze_text_tower", False) or getattr(
            args, "freeze_temperature", False
        ):
            freeze_towers(
                model,
                vision=getattr(args, "freeze_vision_tower", False),
                text=getattr(args, "freeze_text_tower", False),
                temperature=getattr(args, "freeze_temperature", False),
            )
        if getattr(args, "freeze_batch_norm", False):
            count = freeze_batch_norm(model)
            logger.info("froze %d BatchNorm layers", count)
        if getattr(args, "fast_path", True) and hasattr(model, "set_fast_path"):
            model.set_fast_path(True)
        if getattr(args, "channels_last", False):
            model.vision_model.to(memory_format=torch.channels_last)
        if getattr(args, "compile_towers", False):
            model.compile_towers()
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if trainable == 0:
            raise ValueError("no trainable parameters left after freezing")

    # ------------------------------------------------------------------ data

    def get_train_dataloader(self):
        """Streams get an endless, resumable loader of their own; map-style datasets the stock one."""
        if not isinstance(self.train_dataset, ImageTextPairs):
            return super().get_train_dataloader()
        if self.args.max_steps <= 0:
            raise ValueError("streaming training data has no length: set max_steps (--max_steps)")
        if self.flip_swap is not None and self.train_dataset.flip_swap is None:
            self.train_dataset.flip_swap = self.flip_swap
        loader = ImageTextLoader(
            self.train_dataset,
            self.data_collator,
            batch_size=self._train_batch_size,
            num_workers=self.args.dataloader_num_workers,
            drop_last=True,  # the global-batch loss needs equal batches on every rank
            pin_memory=self.args.dataloader_pin_memory and torch.cuda.is_available(),
            prefetch_factor=self.args.dataloader_prefetch_factor,
        )
        # Its own generator: worker seeds then never draw from (and shift) the global torch RNG, whose
        # state a checkpoint restores for dropout.
        loader.loader.generator = torch.Generator().manual_seed(self.args.seed)
        self._stream = StreamingTrainLoader(loader)
        if getattr(self, "_resume_stream_state", None) is not None:
            self._stream.load_state_dict(self._resume_stream_state)  # shard + offset + buffer, no replay
        else:
            self._stream.skip_batches = getattr(self, "_resume_skip_batches", 0)  # checkpoints without stream state
        return self._stream

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """``Trainer.train``; resuming restores this rank's stream position, data counts and time budget
        from the checkpoint (:func:`~align_hf.training.checkpointing.save_rank_state`), so streamed
        data continues without replay (the stock data skipping only knows torch DataLoaders)."""
        self._resume_skip_batches = 0
        self._resume_stream_state, self._resume_budget_spent = None, 0.0
        streaming = isinstance(self.train_dataset, ImageTextPairs)
        user_ignore_skip = self.args.ignore_data_skip
        if resume_from_checkpoint:
            checkpoint = resume_from_checkpoint
            if isinstance(checkpoint, bool):
                from transformers.trainer_utils import get_last_checkpoint

                checkpoint = get_last_checkpoint(self.args.output_dir)
                if checkpoint is None:
                    raise ValueError(f"no complete checkpoint in {self.args.output_dir} to resume from")
                resume_from_checkpoint = checkpoint
            saved = checkpointing.load_rank_state(checkpoint, self.args.process_index) or {}
            self._resume_budget_spent = saved.get("budget_seconds") or 0.0
            if streaming and not user_ignore_skip and saved.get("stream") is not None:
                self._resume_stream_state = saved["stream"]
            elif streaming and not user_ignore_skip:
                with open(os.path.join(checkpoint, "trainer_state.json"), encoding="utf-8") as handle:
                    step = json.load(handle)["global_step"]
                self._resume_skip_batches = step * self.args.gradient_accumulation_steps
        if streaming:
            self.args.ignore_data_skip = True
        try:
            output = super().train(
                resume_from_checkpoint=resume_from_checkpoint, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval, **kwargs
            )
        finally:
            self.args.ignore_data_skip = user_ignore_skip
        if getattr(self.args, "eval_on_end", False) and self.eval_sets and not self._evaluated_at_last_step():
            self.evaluate()
        return output

    def _evaluated_at_last_step(self) -> bool:
        step = self.state.global_step
        return any(entry.get("step") == step and any(k.startswith("eval_") for k in entry) for entry in self.state.log_history)

    # ------------------------------------------------------------------ optimisation

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """LAMB (timm) or AdamW over :func:`parameter_groups`; ``optimizer="hf"`` defers to ``--optim``."""
        choice = getattr(self.args, "optimizer", "hf")
        if self.optimizer is not None or choice == "hf":
            return super().create_optimizer(model) if self.optimizer is None else self.optimizer
        model = model if model is not None else self.model
        groups = parameter_groups(model, self.args.weight_decay)
        betas = (self.args.adam_beta1, self.args.adam_beta2)
        if choice == "lamb":
            from timm.optim import Lamb

            # Gradient clipping is left to the Trainer (max_grad_norm), which knows about sharding.
            self.optimizer = Lamb(groups, lr=self.args.learning_rate, betas=betas, eps=self.args.adam_epsilon, max_grad_norm=None)
        else:
            self.optimizer = torch.optim.AdamW(groups, lr=self.args.learning_rate, betas=betas, eps=self.args.adam_epsilon,
                                               fused=can_fuse_adamw(groups) or None)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        """The stock schedule, or with ``max_train_seconds`` a linear one driven by steps or time."""
        budget = getattr(self.args, "max_train_seconds", None)
        if self.lr_scheduler is not None or not budget:
            return super().create_scheduler(num_training_steps, optimizer)
        if self.args.lr_scheduler_type != "linear":
            raise ValueError("max_train_seconds needs lr_scheduler_type='linear'")
        clock = BudgetClock(budget, self.args.device, spent=getattr(self, "_resume_budget_spent", 0.0))
        warmup_share = self.args.get_warmup_steps(num_training_steps) / max(1, num_training_steps)
        factor = budget_schedule_factor(num_training_steps, warmup_share, clock)
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, factor)
        self._created_lr_scheduler = True
        self.callback_handler.callbacks = [c for c in self.callback_handler.callbacks if not isinstance(c, TimeBudgetCallback)]
        self.add_callback(TimeBudgetCallback(clock))
        return self.lr_scheduler

    # ------------------------------------------------------------------ the step

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch=None) -> torch.Tensor:
        stats = inputs.pop(STATS_KEY, None)
        if stats:
            self._batch_stats.update(stats)
        pixels = inputs.get("pixel_values")
        if pixels is not None:
            self._window["pairs"] += int(pixels.shape[0]) * max(1, self.args.world_size)
        if getattr(self.args, "accum_freq", 1) > 1:
            loss = self._feature_cached_step(model, inputs)
        else:
            loss = super().training_step(model, inputs, num_items_in_batch)
        if self._replicated and self.accelerator.sync_gradients:
            sharding.average_gradients(self._replicated)
        return loss

    def _feature_cached_step(self, model: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        """``--accum_freq K``: the batch of K x N pairs is cut into K micro-batches contrasted as one
        (:mod:`align_hf.training.feature_cache`); returns the loss of the (global) K x N batch."""
        model.train()
        if callable(getattr(self.optimizer, "train", None)):  # schedule-free optimisers, as the stock step does
            self.optimizer.train()
        micro_batches = split_micro_batches({k: v for k, v in inputs.items() if k in MODEL_INPUTS}, self.args.accum_freq)
        out = feature_cached_step(
            model, micro_batches, self.accelerator.unwrap_model(model).contrastive_head,
            prepare=lambda batch: self._model_inputs(self._prepare_inputs(batch)), backward=self.accelerator.backward,
            no_sync=lambda: self.accelerator.no_sync(model), autocast=self.compute_loss_context_manager,
        )
        self._track_step(out.temperature, out.i2t_accuracy, out.t2i_accuracy)
        return out.loss

    def _model_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        model_inputs = {k: v for k, v in inputs.items() if k in MODEL_INPUTS}
        pixels = model_inputs.get("pixel_values")
        if getattr(self.args, "channels_last", False) and pixels is not None and pixels.ndim == 4:
            model_inputs["pixel_values"] = pixels.contiguous(memory_format=torch.channels_last)
        return model_inputs

    def _track_step(self, temperature: torch.Tensor, i2t: torch.Tensor, t2i: torch.Tensor) -> None:
        window = self._window
        window["loss_steps"] += 1
        # Summed as tensors: a float() here would make the host wait for the GPU every step.
        window["temperature"] += temperature.detach().float()
        window["i2t"] += i2t.detach().float()
        window["t2i"] += t2i.detach().float()

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch=None):
        """The contrastive loss of the (global) batch, as the model's head computes it."""
        # The (N, N) logits are only wanted when the caller asks for the outputs (prediction loops).
        outputs = model(**self._model_inputs(inputs), return_loss=True, return_logits=return_outputs)
        if model.training:
            self._track_step(outputs.temperature, outputs.image_to_text_accuracy, outputs.text_to_image_accuracy)
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    # ------------------------------------------------------------------ logging

    def data_stats(self) -> DataStats | None:
        """What the training stream read, kept, skipped and filtered, summed over ranks; None when the
        training data was not streamed. A collective: call it on every rank."""
        return self._global_data_stats() if self._stream is not None else None

    def _global_data_stats(self) -> DataStats:
        """This run's data counts summed over ranks (a collective: every rank logs at the same step)."""
        local = (self._stream.stats if self._stream is not None else self._batch_stats).as_dict()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            parts: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(parts, local)
        else:
            parts = [local]
        total = DataStats()
        for part in parts:
            delta = {"total": part["total"], "kept": part["kept"]}
            delta.update({f"skipped/{k}": v for k, v in part["skipped"].items()})
            delta.update({f"filtered/{k}": v for k, v in part["filtered"].items()})
            total.update(delta)
        return total

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Training logs also get temperature, in-batch accuracies, pairs/s and data counts."""
        if "loss" in logs and not any(k.startswith("eval_") for k in logs):
            window = self._window
            steps = window["loss_steps"]
            if steps:
                logs["temperature"] = float(window["temperature"]) / steps
                logs["image_to_text_accuracy"] = float(window["i2t"]) / steps
                logs["text_to_image_accuracy"] = float(window["t2i"]) / steps
            elapsed = time.perf_counter() - self._window_start
            if window["pairs"] and elapsed > 0:
                logs["pairs_per_second"] = window["pairs"] / elapsed
            stats = self._global_data_stats()
            if stats.total:
                logs["data_read"] = stats.total
                logs["data_kept"] = stats.kept
                for reason, count in stats.skipped.items():
                    logs[f"data_skipped_{reason}"] = count
                for rule, count in stats.filtered.items():
                    logs[f"data_filtered_{rule}"] = count
            self._window = {"loss_steps": 0, "temperature": 0.0, "i2t": 0.0, "t2i": 0.0, "pairs": 0}
            self._window_start = time.perf_counter()
        super().log(logs, start_time)

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, eval_dataset: Any = None, ignore_keys: list[str] | None = None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Embed every image and text of each eval set, then compute recall@K / zero-shot accuracy.

        Returns ``{"<prefix>_<set>_<metric>": value}`` and logs it.
        """
        sets = as_eval_sets(eval_dataset) if eval_dataset is not None else self.eval_sets
        if not sets:
            raise ValueError("AlignTrainer.evaluate needs eval sets (eval_dataset=...)")
        start = time.perf_counter()
        model = self.accelerator.unwrap_model(self.model)
        sharded_engine = sharding.is_sharded(self)
        autocast = contextlib.nullcontext()
        if self.args.bf16 or self.args.fp16:
            dtype = torch.bfloat16 if self.args.bf16 else torch.float16
            autocast = torch.autocast(self.args.device.type, dtype=dtype)
        with autocast:
            metrics = evaluate_sets(
                model,
                self.processing_class,
                sets,
                batch_size=self.args.per_device_eval_batch_size,
                progress=not self.args.disable_tqdm and self.is_local_process_zero(),
                # Sharded engines need every rank in every forward: each rank embeds everything.
                shard=not sharded_engine,
                context=(lambda: sharding.full_parameters(self)) if sharded_engine else None,
            )
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in metrics.items()}
        metrics[f"{metric_key_prefix}_runtime"] = time.perf_counter() - start
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    # ------------------------------------------------------------------ checkpoints

    def _save_checkpoint(self, model: nn.Module, trial) -> None:
        """Write ``checkpoint-N`` into a staging folder, then rename it into place (atomic on POSIX).

        A kill at any moment leaves either the previous complete checkpoints or the new complete
        one; a half-written staging folder is never picked up by ``resume_from_checkpoint=True``.
        """
        run_dir = self._get_output_dir(trial=trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging_root = checkpointing.staging_folder(run_dir, name)
        if self.args.should_save:
            checkpointing.discard(staging_root)  # left over from a run killed while saving
        self._barrier()
        self._staging_root = staging_root  # super() writes staging_root/checkpoint-N
        limit, self.args.save_total_limit = self.args.save_total_limit, None  # rotate after the rename
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_root = None
            self.args.save_total_limit = limit
        staged = os.path.join(staging_root, name)
        # Every rank: its stream position, data counts and budget spent, published with the rest.
        checkpointing.save_rank_state(staged, self.args.process_index, self._stream, self.callback_handler.callbacks)
        if self.args.should_save:
            best = self.state.best_model_checkpoint
            if best is not None and best.startswith(staging_root):
                self.state.best_model_checkpoint = os.path.join(run_dir, os.path.basename(best))
                self.state.save_to_json(os.path.join(staged, "trainer_state.json"))
        self._barrier()
        if self.args.should_save:
            checkpointing.publish(staged, os.path.join(run_dir, name))
            shutil.rmtree(staging_root, ignore_errors=True)
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=False,
            )
        self._barrier()

    def _get_output_dir(self, trial) -> str:
        """The run folder; while a checkpoint is being saved, its staging folder."""
        if self._staging_root is not None:
            return self._staging_root
        return super()._get_output_dir(trial)

    def _barrier(self) -> None:
        if self.args.world_size > 1 and dist.is_available() and dist.is_initialized():
            dist.barrier()

    # ------------------------------------------------------------------ export

    def save_hub_folder(self, directory: str, metrics: dict[str, dict[str, float]] | None = None, tags: list[str] | None = None) -> str:
        """Save model, processor and a model card with ``metrics`` (``{dataset: {metric: value}}``)."""
        from align_hf.hub import build_model_card

        model = self.accelerator.unwrap_model(self.model)
        if self.args.should_save:
            os.makedirs(directory, exist_ok=True)
            model.save_pretrained(directory)
            self.processing_class.save_pretrained(directory)
            card = build_model_card(model.config, None, tags=tags, metrics=metrics)
            card.save(os.path.join(directory, "README.md"))
        self._barrier()
        return directory


__all__ = ["AlignTrainer", "MODEL_INPUTS"]
