"""``AlignTrainer``: a ``transformers.Trainer`` for ALIGN pretraining and fine-tuning.

What it adds to the stock Trainer:

* the loss is the model's contrastive head over the GLOBAL batch: under ``torch.distributed`` every
  rank's embeddings are gathered (autograd-aware) and each rank's gradient share is weighted so that
  DDP/FSDP/DeepSpeed averaging yields the exact global-batch gradient; under gradient accumulation
  each micro-batch loss is divided by the number of micro-batches;
* the paper's optimiser (LAMB, weight decay 1e-5 kept off norms, biases and the temperature; AdamW
  as an option) with the stock linear warm-up + linear decay schedule;
* logs of the temperature, in-batch image->text / text->image accuracy, throughput in pairs/s and
  the data counts (read, kept, skipped and filtered by reason);
* evaluation over whole eval sets (retrieval recall@K both ways, zero-shot top-1 from prompt
  templates), see :mod:`align_hf.train_eval`;
* atomic checkpoints: a checkpoint is written to a hidden staging folder and renamed into place
  once complete, so ``--resume_from_checkpoint`` never picks up a half-written one;
* streaming training data (webdataset shards and any other :func:`~align_hf.data.load_pairs`
  source) with exact resumption, and tower / BatchNorm freezing for fine-tuning.
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
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from .data.pipeline import DataStats, ImageTextLoader, ImageTextPairs
from .data.transforms import STATS_KEY, ImageTextCollator, ImageTransform
from .train_data import StreamingTrainLoader, as_eval_sets
from .train_eval import evaluate_sets
from .training_args import AlignTrainingArguments

logger = logging.getLogger(__name__)

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "pixel_values")
STAGING_PREFIX = ".staging-"


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two optimiser groups: decayed weight matrices / kernels, and the rest without decay.

    Parameters with fewer than two dimensions are biases, norm scales and shifts, and the scalar
    temperature (and sigmoid bias); ALIGN applies no weight decay to them.
    """
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def _batch_norms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _keep_in_eval_mode(module: nn.Module, *_args) -> None:
    # A forward pre-hook: Trainer calls model.train() every step, this undoes it for one module.
    module.training = False


def freeze_batch_norm(module: nn.Module) -> int:
    """Keep every BatchNorm under ``module`` in eval mode for good (running statistics frozen).

    Returns how many BatchNorm layers were frozen.
    """
    norms = _batch_norms(module)
    for norm in norms:
        if not getattr(norm, "_align_hf_frozen", False):
            norm.register_forward_pre_hook(_keep_in_eval_mode)
            norm._align_hf_frozen = True
        norm.eval()
    return len(norms)


def freeze_towers(model: nn.Module, vision: bool = False, text: bool = False, temperature: bool = False) -> None:
    """Stop gradients to the image tower (+ image projection), the text tower (+ projection), the temperature."""
    if vision:
        for part in (model.vision_model, getattr(model, "image_projection", None)):
            if part is not None:
                part.requires_grad_(False)
        freeze_batch_norm(model.vision_model)
    if text:
        model.text_model.requires_grad_(False)
        model.text_projection.requires_grad_(False)
    if temperature:
        model.contrastive_head.temperature.requires_grad_(False)


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
        args: :class:`~align_hf.training_args.AlignTrainingArguments` (plain ``TrainingArguments``
            work too and get the AdamW/``--optim`` behaviour of the stock Trainer).
        train_dataset: one of
            - an :class:`~align_hf.data.ImageTextPairs` stream (or anything
              :func:`~align_hf.data.load_pairs` takes: shard patterns, folders, parquet, datasets),
              batched here with ``per_device_train_batch_size`` and ``dataloader_num_workers``;
              needs ``max_steps``;
            - a map-style dataset of ``{"pixel_values": (3, H, W), "text": str}`` samples (or
              already tokenised ``input_ids``), sampled by the stock Trainer.
        eval_dataset: :class:`~align_hf.train_data.RetrievalEvalSet` /
            :class:`~align_hf.train_data.ZeroShotEvalSet`, a list or dict of them, or plain rows with
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
        self.train_transform = train_transform
        self.flip_swap = flip_swap
        if _is_pairs_source(train_dataset):
            train_dataset = self._stream_from_source(train_dataset, processing_class, args)
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
        self.data_stats = DataStats()
        self._stream: StreamingTrainLoader | None = None
        self._window = {"loss_steps": 0, "temperature": 0.0, "i2t": 0.0, "t2i": 0.0, "pairs": 0}
        self._window_start = time.perf_counter()

    # ------------------------------------------------------------------ model set-up

    @staticmethod
    def _prepare_model(model: nn.Module, args: Any) -> None:
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
        if getattr(args, "channels_last", False):
            model.vision_model.to(memory_format=torch.channels_last)
        if getattr(args, "compile_towers", False):
            model.compile_towers()
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if trainable == 0:
            raise ValueError("no trainable parameters left after freezing")

    # ------------------------------------------------------------------ data

    def _stream_from_source(self, source: Any, processor: Any, args: Any) -> ImageTextPairs:
        """Anything :func:`~align_hf.data.load_pairs` takes -> a shuffled, decoded training stream."""
        from .data.sources import load_pairs

        transform = self.train_transform or ImageTransform.from_image_processor(
            processor.image_processor, train=True, seed=args.seed
        )
        self.train_transform = transform
        return ImageTextPairs(load_pairs(source), transform, shuffle_buffer=10_000, seed=args.seed, flip_swap=self.flip_swap)

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
        self._stream.skip_batches = getattr(self, "_resume_skip_batches", 0)
        return self._stream

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """``Trainer.train``; for streamed data the resumed stream is fast-forwarded by the loader itself
        (the stock data skipping only knows torch DataLoaders)."""
        self._resume_skip_batches = 0
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
            if streaming and not user_ignore_skip:
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
            self.optimizer = torch.optim.AdamW(groups, lr=self.args.learning_rate, betas=betas, eps=self.args.adam_epsilon)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        """The stock schedule, or with ``max_train_seconds`` a linear one driven by steps or time."""
        budget = getattr(self.args, "max_train_seconds", None)
        if self.lr_scheduler is not None or not budget:
            return super().create_scheduler(num_training_steps, optimizer)
        if self.args.lr_scheduler_type != "linear":
            raise ValueError("max_train_seconds needs lr_scheduler_type='linear'")
        clock = _BudgetClock(budget, self.args.device)
        warmup_share = self.args.get_warmup_steps(num_training_steps) / max(1, num_training_steps)

        def factor(step: int) -> float:
            progress = max(step / max(1, num_training_steps), clock.fraction)
            if progress < warmup_share:
                return progress / warmup_share
            return max(0.0, (1.0 - progress) / max(1e-12, 1.0 - warmup_share))

        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, factor)
        self._created_lr_scheduler = True
        self.callback_handler.callbacks = [c for c in self.callback_handler.callbacks if not isinstance(c, _TimeBudget)]
        self.add_callback(_TimeBudget(clock))
        return self.lr_scheduler

    # ------------------------------------------------------------------ the step

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch=None) -> torch.Tensor:
        stats = inputs.pop(STATS_KEY, None)
        if stats:
            self.data_stats.update(stats)
        pixels = inputs.get("pixel_values")
        if pixels is not None:
            self._window["pairs"] += int(pixels.shape[0]) * max(1, self.args.world_size)
        return super().training_step(model, inputs, num_items_in_batch)

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch=None):
        """The contrastive loss of the (global) batch, as the model's head computes it."""
        model_inputs = {k: v for k, v in inputs.items() if k in MODEL_INPUTS}
        pixels = model_inputs.get("pixel_values")
        if getattr(self.args, "channels_last", False) and pixels is not None and pixels.ndim == 4:
            model_inputs["pixel_values"] = pixels.contiguous(memory_format=torch.channels_last)
        # The (N, N) logits are only wanted when the caller asks for the outputs (prediction loops).
        outputs = model(**model_inputs, return_loss=True, return_logits=return_outputs)
        if model.training:
            window = self._window
            window["loss_steps"] += 1
            # Summed as tensors: a float() here would make the host wait for the GPU every step.
            window["temperature"] += outputs.temperature.detach().float()
            window["i2t"] += outputs.image_to_text_accuracy.detach().float()
            window["t2i"] += outputs.text_to_image_accuracy.detach().float()
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    # ------------------------------------------------------------------ logging

    def _global_data_stats(self) -> DataStats:
        """This run's data counts summed over ranks (a collective: every rank logs at the same step)."""
        local = (self._stream.stats if self._stream is not None else self.data_stats).as_dict()
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

    def _full_parameters(self):
        """A context under which the unwrapped model holds full parameters (ZeRO-3 / FSDP)."""
        if self.is_deepspeed_enabled and getattr(self.accelerator.state.deepspeed_plugin, "zero_stage", 0) == 3:
            import deepspeed

            return deepspeed.zero.GatheredParameters(list(self.model.parameters()), modifier_rank=None)
        if self.is_fsdp_enabled:
            try:
                from torch.distributed.fsdp import FullyShardedDataParallel

                if isinstance(self.model_wrapped, FullyShardedDataParallel):
                    return FullyShardedDataParallel.summon_full_params(self.model_wrapped, writeback=False)
            except ImportError:  # pragma: no cover
                pass
            return _unsharded_fsdp2(self.model)
        return contextlib.nullcontext()

    def evaluate(self, eval_dataset: Any = None, ignore_keys: list[str] | None = None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Embed every image and text of each eval set, then compute recall@K / zero-shot accuracy.

        Returns ``{"<prefix>_<set>_<metric>": value}`` and logs it.
        """
        sets = as_eval_sets(eval_dataset) if eval_dataset is not None else self.eval_sets
        if not sets:
            raise ValueError("AlignTrainer.evaluate needs eval sets (eval_dataset=...)")
        start = time.perf_counter()
        model = self.accelerator.unwrap_model(self.model)
        sharded_engine = self.is_fsdp_enabled or (
            self.is_deepspeed_enabled and getattr(self.accelerator.state.deepspeed_plugin, "zero_stage", 0) == 3
        )
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
                context=self._full_parameters if sharded_engine else None,
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
        staging_root = os.path.join(run_dir, STAGING_PREFIX + name)
        final = os.path.join(run_dir, name)
        if self.args.should_save and os.path.isdir(staging_root):
            shutil.rmtree(staging_root)  # left over from a run killed while saving
        self._barrier()
        self._get_output_dir = lambda trial=None: staging_root  # super() writes staging_root/checkpoint-N
        limit, self.args.save_total_limit = self.args.save_total_limit, None  # rotate after the rename
        try:
            super()._save_checkpoint(model, trial)
        finally:
            del self._get_output_dir  # back to the class's method
            self.args.save_total_limit = limit
        staged = os.path.join(staging_root, name)
        if self.args.should_save:
            best = self.state.best_model_checkpoint
            if best is not None and best.startswith(staging_root):
                self.state.best_model_checkpoint = os.path.join(run_dir, os.path.basename(best))
                self.state.save_to_json(os.path.join(staged, "trainer_state.json"))
        self._barrier()
        if self.args.should_save:
            _fsync_tree(staged)
            if os.path.isdir(final):
                # Same step saved twice (e.g. a final save): swap the old one out, then delete it.
                old = os.path.join(run_dir, STAGING_PREFIX + name + ".old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final, old)
                os.replace(staged, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(staged, final)
            _fsync_dir(run_dir)
            shutil.rmtree(staging_root, ignore_errors=True)
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=False,
            )
        self._barrier()

    def _barrier(self) -> None:
        if self.args.world_size > 1 and dist.is_available() and dist.is_initialized():
            dist.barrier()

    # ------------------------------------------------------------------ export

    def save_hub_folder(self, directory: str, metrics: dict[str, dict[str, float]] | None = None, tags: list[str] | None = None) -> str:
        """Save model, processor and a model card with ``metrics`` (``{dataset: {metric: value}}``)."""
        from .hub import build_model_card

        model = self.accelerator.unwrap_model(self.model)
        if self.args.should_save:
            os.makedirs(directory, exist_ok=True)
            model.save_pretrained(directory)
            self.processing_class.save_pretrained(directory)
            card = build_model_card(model.config, None, tags=tags, metrics=metrics)
            card.save(os.path.join(directory, "README.md"))
        self._barrier()
        return directory


class _BudgetClock:
    """Share of a wall-clock budget spent since creation, agreed on by all ranks (see ``_TimeBudget``)."""

    def __init__(self, seconds: float, device: torch.device):
        self.seconds = float(seconds)
        self.device = device  # where the collective runs (NCCL needs GPU tensors)
        self.start = time.perf_counter()
        self.fraction = 0.0

    def sync(self) -> float:
        local = (time.perf_counter() - self.start) / self.seconds
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # Rank 0's clock decides, so every rank uses the same learning rate and stops at the same step.
            value = torch.tensor([local], dtype=torch.float64, device=self.device)
            dist.broadcast(value, src=0)
            local = float(value)
        self.fraction = min(1.0, local)
        return self.fraction


class _TimeBudget(TrainerCallback):
    """Stops training once the budget of a :class:`_BudgetClock` is spent."""

    def __init__(self, clock: _BudgetClock):
        self.clock = clock

    def on_optimizer_step(self, args, state, control, **kwargs):
        # Between the optimiser step and the scheduler step: the next learning rate sees the current time.
        self.clock.sync()

    def on_step_end(self, args, state, control, **kwargs):
        if self.clock.fraction >= 1.0 and state.global_step < state.max_steps:
            logger.warning("max_train_seconds=%g spent after %d of %d steps: stopping", self.clock.seconds,
                           state.global_step, state.max_steps)
            control.should_training_stop = True
            control.should_save = control.should_save or args.save_strategy != "no"
        return control


@contextlib.contextmanager
def _unsharded_fsdp2(model: nn.Module):
    """Unshard every FSDP2 module for the duration (no-op for models without FSDP2)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover
        yield
        return
    modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for module in modules:
        module.unshard()
    try:
        yield
    finally:
        for module in modules:
            module.reshard()


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: str) -> None:
    """Flush every file of a checkpoint to disk before it is renamed into place."""
    for folder, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_dir(folder)


__all__ = ["AlignTrainer", "AlignTrainingArguments", "parameter_groups", "freeze_batch_norm", "freeze_towers"]
