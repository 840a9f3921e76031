"""Feature-cached gradient accumulation: more negatives per step than one micro-batch holds.

Plain gradient accumulation contrasts each micro-batch only with itself. Here K micro-batches of
N pairs are contrasted together, as one batch of K x N pairs (x world size under
``torch.distributed``, through the head's own gather), while the towers only ever hold the
activations of one micro-batch (the technique of GradCache, Gao et al. 2021; open_clip's
``--accum-freq``):

1. each micro-batch is embedded without an autograd graph, its RNG state (dropout, stochastic
   depth) recorded first, and the (N, d) image and text embeddings are kept;
2. the head computes the loss of all K x N cached pairs once, and its gradient with respect to
   every cached embedding (and to the head's own temperature / bias);
3. each micro-batch is embedded again, with a graph and the RNG state it had in step 1, and
   backpropagated with its slice of the cached gradient (``sum(embeds * cached_grad)`` has
   exactly that gradient).

The towers' parameter gradients are then those of the K x N batch, up to float rounding. Peak
memory is one micro-batch's activations plus the 4 x K x N x d cached embeddings and gradients;
compute is one extra forward per micro-batch (about +30% for a forward:backward cost of 1:2).

Exactness needs the two forwards of a micro-batch to agree: the RNG state is replayed, and
BatchNorm's running statistics are restored after step 1 so they are updated once per
micro-batch, as in plain accumulation. BatchNorm in train mode normalises each micro-batch with its
own statistics (so does plain accumulation); freeze it (or sync it across ranks, which still works
per micro-batch) when the K x N batch should behave like one batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import get_device_states, set_device_states

from align_hf.loss import AlignContrastiveHead, ContrastiveOutput

__all__ = ["RngState", "feature_cached_step", "preserved_batch_norm_stats", "split_micro_batches"]


@dataclass
class RngState:
    """The CPU RNG state and that of every accelerator device the inputs live on."""

    cpu: Tensor
    devices: list[int]
    device_states: list[Tensor]

    @classmethod
    def capture(cls, tensors: Sequence[Tensor]) -> RngState:
        """Record the state that a forward over ``tensors`` will draw its random numbers from."""
        devices, states = get_device_states(*tensors)
        return cls(torch.get_rng_state(), devices, states)

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.devices:
            set_device_states(self.devices, self.device_states)


def split_micro_batches(inputs: Mapping[str, Any], parts: int) -> list[dict[str, Any]]:
    """Cut a collated batch of B = K x N samples into ``parts`` micro-batches along dim 0.

    Tensors whose first dimension is B are split (views, no copy; B need not divide evenly);
    everything else (flags, scalars) is passed to every micro-batch unchanged.
    """
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    sizes = {v.shape[0] for v in inputs.values() if isinstance(v, Tensor) and v.ndim > 0}
    if len(sizes) != 1:
        raise ValueError(f"cannot split a batch whose tensors disagree on the batch size: {sorted(sizes)}")
    (size,) = sizes
    if size < parts:
        raise ValueError(f"a batch of {size} samples cannot feed {parts} micro-batches")
    batches: list[dict[str, Any]] = [{} for _ in range(parts)]
    for key, value in inputs.items():
        chunks = torch.tensor_split(value, parts) if isinstance(value, Tensor) and value.ndim > 0 else [value] * parts
        for batch, chunk in zip(batches, chunks):
            batch[key] = chunk
    return batches


@contextlib.contextmanager
def preserved_batch_norm_stats(module: nn.Module):
    """Undo, on exit, every BatchNorm running-statistics update made inside the block.

    The graph-free pass of a micro-batch must not count as one more BatchNorm update: its re-forward
    makes the update plain accumulation would make.
    """
    saved = []
    for norm in module.modules():
        if isinstance(norm, nn.modules.batchnorm._BatchNorm) and norm.training and norm.track_running_stats:
            buffers = (norm.running_mean, norm.running_var, norm.num_batches_tracked)
            saved.append((buffers, [None if b is None else b.detach().clone() for b in buffers]))
    try:
        yield
    finally:
        with torch.no_grad():
            for buffers, copies in saved:
                for buffer, copy in zip(buffers, copies):
                    if buffer is not None:
                        buffer.copy_(copy)


def _tensors(batch: Mapping[str, Any]) -> list[Tensor]:
    return [v for v in batch.values() if isinstance(v, Tensor)]


def feature_cached_step(
    model: nn.Module,
    micro_batches: Sequence[Mapping[str, Any]],
    head: AlignContrastiveHead,
    *,
    prepare: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None,
    backward: Callable[[Tensor], None] | None = None,
    no_sync: Callable[[], AbstractContextManager] | None = None,
    autocast: Callable[[], AbstractContextManager] | None = None,
) -> ContrastiveOutput:
    """One optimisation step's gradients for K micro-batches contrasted as one batch.

    Accumulates into ``.grad`` the gradient of the contrastive loss of all K x N pairs (the
    global batch's, under ``torch.distributed``), holding one micro-batch's activations at a time.

    Args:
        model: the :class:`~align_hf.AlignModel`, possibly wrapped (DDP); called as
            ``model(**batch, return_loss=False, return_logits=...)``.
        micro_batches: K model-input dicts (``pixel_values`` (N, 3, H, W), ``input_ids`` (N, L), ...).
        head: the model's :class:`~align_hf.loss.AlignContrastiveHead` (unwrapped).
        prepare: maps a micro-batch to model inputs on the right device (default: as is).
            Called twice per micro-batch, so inputs may stay on the host until needed.
        backward: runs the backward of a scalar (default ``Tensor.backward``; the Trainer passes
            ``accelerator.backward`` for loss scaling).
        no_sync: a context in which DDP does not reduce gradients; used for all re-forwards but
            the last, so gradients are all-reduced once per step.
        autocast: the mixed-precision context of forwards and loss.

    Returns:
        The head's output for the K x N batch (loss and accuracies detached).
    """
    if not micro_batches:
        raise ValueError("feature_cached_step needs at least one micro-batch")
    prepare = prepare or dict
    backward = backward or Tensor.backward
    no_sync = no_sync or contextlib.nullcontext
    autocast = autocast or contextlib.nullcontext

    # 1. Graph-free embeddings; each micro-batch's RNG state is recorded for its re-forward.
    states: list[RngState] = []
    image_cache: list[Tensor] = []
    text_cache: list[Tensor] = []
    with torch.no_grad(), preserved_batch_norm_stats(model):
        for batch in micro_batches:
            inputs = prepare(batch)
            states.append(RngState.capture(_tensors(inputs)))
            with autocast():
                out = model(**inputs, return_loss=False, return_logits=False)
            image_cache.append(out.image_embeds)
            text_cache.append(out.text_embeds)
            del out
        # Where the RNG streams stand after the K forwards; restored at the end.
        after = RngState.capture(_tensors(inputs))
        del inputs
    sizes = [t.shape[0] for t in image_cache]

    # 2. The loss of all K x N pairs once, and its gradient w.r.t. every cached embedding.
    images = torch.cat(image_cache).requires_grad_()
    texts = torch.cat(text_cache).requires_grad_()
    del image_cache, text_cache
    head_params = [p for p in head.parameters() if p.requires_grad]
    with autocast():
        result = head(images, texts)
    grads = torch.autograd.grad(result.loss, [images, texts, *head_params])
    image_grads, text_grads = grads[0].split(sizes), grads[1].split(sizes)
    head_grads = grads[2:]
    del images, texts, grads

    # 3. Re-forward each micro-batch with its recorded RNG state; backward its cached gradient.
    last = len(micro_batches) - 1
    for k, batch in enumerate(micro_batches):
        inputs = prepare(batch)
        states[k].restore()
        with no_sync() if k < last else contextlib.nullcontext():
            with autocast():
                # The logits tie the head's parameters into the forward's outputs: DDP then counts
                # them as used (find_unused_parameters) and reduces the gradient given below.
                out = model(**inputs, return_loss=False, return_logits=True)
            surrogate = (out.image_embeds * image_grads[k]).sum() + (out.text_embeds * text_grads[k]).sum()
            surrogate = surrogate + 0.0 * out.logits_per_image.sum()
            if k == last:
                # The head's own gradient came from step 2; these terms have exactly that gradient.
                for param, grad in zip(head_params, head_grads):
                    surrogate = surrogate + (param * grad).sum()
            backward(surrogate)
            del out, surrogate, inputs
    after.restore()
    return ContrastiveOutput(
        loss=result.loss.detach(),
        temperature=result.temperature,
        i2t_accuracy=result.i2t_accuracy.detach(),
        t2i_accuracy=result.t2i_accuracy.detach(),
        bias=result.bias,
    )

