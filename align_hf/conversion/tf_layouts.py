"""Tensor layout changes from TensorFlow to PyTorch, and the strict mapping bookkeeping.

A converter walks every checkpoint variable and either *maps* it to a model tensor or *ignores* it
under a named rule; anything else is an error, and so is any model tensor left unfilled. The
:class:`Mapping` collects all that and reports every problem at once.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np
import torch

from align_hf.conversion.tf_checkpoint import TFCheckpoint

Extra = TypeVar("Extra")


def shape_rule(rule: Callable[[tuple[int, ...]], tuple[int, ...]]):
    """Attach the shape a transform produces, so mappings are checked before any data is read."""

    def attach(fn):
        fn.out_shape = rule
        return fn

    return attach


def _flat(shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(shape) > 1 and int(np.prod(shape[:-1])) != 1:
        raise ValueError(f"expected a vector, got shape {shape}")
    return (int(np.prod(shape)),) if shape else (1,)


@shape_rule(lambda s: (s[3], s[2], s[0], s[1]))
def conv_kernel(k: np.ndarray) -> torch.Tensor:
    """Conv2D kernel (H, W, in, out) -> (out, in, H, W)."""
    return torch.from_numpy(np.ascontiguousarray(k.transpose(3, 2, 0, 1)))


@shape_rule(lambda s: (s[2] * s[3], 1, s[0], s[1]))
def depthwise_kernel(k: np.ndarray) -> torch.Tensor:
    """DepthwiseConv2D kernel (H, W, C, M) -> (C*M, 1, H, W)."""
    h, w, c, m = k.shape
    return torch.from_numpy(np.ascontiguousarray(k.transpose(2, 3, 0, 1)).reshape(c * m, 1, h, w))


@shape_rule(lambda s: (s[1], s[0]))
def dense_kernel(k: np.ndarray) -> torch.Tensor:
    """Dense kernel (in, out) -> nn.Linear weight (out, in)."""
    return torch.from_numpy(np.ascontiguousarray(k.T))


@shape_rule(_flat)
def vector(v: np.ndarray) -> torch.Tensor:
    """Biases and BatchNorm/LayerNorm parameters; Keras virtual-batch BN stores them (1,1,1,1,C)."""
    _flat(v.shape)
    return torch.from_numpy(np.array(v).reshape(-1))


@shape_rule(tuple)
def same(v: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(v))


@shape_rule(lambda s: ())
def scalar(v: np.ndarray) -> torch.Tensor:
    if v.size != 1:
        raise ValueError(f"expected a scalar, got shape {v.shape}")
    return torch.tensor(float(np.asarray(v).reshape(())), dtype=torch.float32)


class ConversionError(ValueError):
    """The checkpoint does not fit: unknown variables, unfilled parameters or wrong shapes."""


@dataclass
class Mapping:
    """Which checkpoint key fills which model tensor, and why the others are ignored."""

    mapped: dict[str, tuple[str, Callable[[np.ndarray], torch.Tensor]]] = field(default_factory=dict)
    ignored: dict[str, str] = field(default_factory=dict)  # checkpoint key -> rule name
    unknown: list[str] = field(default_factory=list)

    def map(self, key: str, target: str, transform: Callable[[np.ndarray], torch.Tensor]) -> None:
        if target in {t for t, _ in self.mapped.values()}:
            other = next(k for k, (t, _) in self.mapped.items() if t == target)
            raise ConversionError(f"both {other!r} and {key!r} map to {target!r}")
        self.mapped[key] = (target, transform)

    def ignore(self, key: str, rule: str) -> None:
        self.ignored[key] = rule

    def ignored_summary(self) -> dict[str, int]:
        return dict(Counter(self.ignored.values()))

    def describe(self) -> str:
        """One report line: how many variables were mapped and why the others were ignored."""
        return f"variables mapped: {len(self.mapped)}; ignored: {describe_ignored(self.ignored_summary())}"

    def check(self, shapes: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]]) -> None:
        """Raise :class:`ConversionError` listing, all at once, checkpoint variables no rule covers,
        model tensors nobody fills (``num_batches_tracked`` counters excepted), mapped names that
        are not model tensors and shape mismatches. ``shapes``: checkpoint key -> TF shape;
        ``expected``: model key -> shape. Reads no tensor data."""
        problems = []
        if self.unknown:
            problems.append(f"{len(self.unknown)} checkpoint variables match no rule: {self.unknown[:30]}")
        targets = {t for t, _ in self.mapped.values()}
        unfilled = [k for k in expected if k not in targets and not k.endswith("num_batches_tracked")]
        if unfilled:
            problems.append(f"{len(unfilled)} model tensors have no checkpoint variable: {unfilled[:30]}")
        extra = sorted(t for t in targets if t not in expected)
        if extra:
            problems.append(f"{len(extra)} mapped names are not model tensors: {extra[:30]}")
        wrong = []
        for key, (target, transform) in self.mapped.items():
            if target not in expected:
                continue
            try:
                got = tuple(transform.out_shape(tuple(shapes[key])))
            except (ValueError, IndexError):
                got = None
            if got != tuple(expected[target]):
                wrong.append(f"{key} {tuple(shapes[key])} -> {target}: model wants {tuple(expected[target])}")
        if wrong:
            problems.append(f"{len(wrong)} shape mismatches: {wrong[:30]}")
        if problems:
            raise ConversionError("; ".join(problems))

    def load_into(self, read: Callable[[str], np.ndarray], shapes: dict[str, tuple[int, ...]],
                  model: torch.nn.Module, progress: bool = False) -> None:
        """Check the mapping against ``model`` (see :meth:`check`), then copy every mapped tensor
        into it, one at a time: peak memory is the model plus one tensor, whatever the checkpoint
        holds besides (optimizer slots are never read)."""
        targets = model.state_dict()
        self.check(shapes, {k: tuple(v.shape) for k, v in targets.items()})
        items = list(self.mapped.items())
        if progress:
            from tqdm.auto import tqdm

            items = tqdm(items, desc="converting", unit="tensor")
        with torch.no_grad():
            for key, (target, transform) in items:
                targets[target].copy_(transform(read(key)))


@dataclass
class CheckpointLayout:
    """What a converter needs to know about a checkpoint before reading any tensor.

    ``names``: key -> variable name (the object graph's ``full_name`` for TF2 checkpoints, the key
    itself for TF1); ``slots``: keys holding optimizer slots.
    """

    prefix: str
    shapes: dict[str, tuple[int, ...]]
    names: dict[str, str]
    slots: set[str] = field(default_factory=set)
    object_based: bool = False

    def keys(self) -> list[str]:
        return list(self.shapes)

    @classmethod
    def of(cls, ckpt) -> "CheckpointLayout":
        """The layout of an open :class:`align_hf.conversion.tf_checkpoint.TFCheckpoint`."""
        keys = ckpt.keys()
        return cls(
            prefix=ckpt.prefix,
            shapes={k: tuple(ckpt.entry(k).shape) for k in keys},
            names={k: ckpt.full_name(k) or k for k in keys},
            slots={k for k in keys if ckpt.is_slot(k)},
            object_based=ckpt.is_object_based,
        )


def describe_ignored(counts: dict[str, int]) -> str:
    """``{rule: count}`` as ``"3 optimizer slot, 1 step counter"`` (``"none"`` when empty)."""
    return ", ".join(f"{n} {rule}" for rule, n in sorted(counts.items())) or "none"


def load_checkpoint(
    checkpoint: str | Path,
    plan: Callable[[CheckpointLayout], tuple[Mapping, torch.nn.Module, Extra]],
    verify: bool = True,
    progress: bool = False,
) -> tuple[torch.nn.Module, Mapping, Extra]:
    """Open ``checkpoint``, let ``plan`` classify its variables and build the model they fill
    (``plan(layout) -> (mapping, model, extra)``, reading no tensor data), then copy the tensors in.

    Returns ``(model in eval mode, mapping, extra)``; raises :class:`ConversionError` (or the
    reader's ``CheckpointError``) when the checkpoint does not fit.
    """
    with TFCheckpoint(checkpoint, verify=verify) as ckpt:
        layout = CheckpointLayout.of(ckpt)
        mapping, model, extra = plan(layout)
        mapping.load_into(ckpt.get_tensor, layout.shapes, model, progress=progress)
    return model.eval(), mapping, extra
