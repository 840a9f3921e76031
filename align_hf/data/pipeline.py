"""The training/eval input pipeline: shard -> shuffle -> decode -> filter -> transform -> batch.

:class:`ImageTextPairs` turns a :func:`~align_hf.data.sources.load_pairs` stream into decoded,
filtered, transformed samples, skipping and counting everything bad. :class:`ImageTextLoader`
batches it with a (stateful) torch ``DataLoader`` and gathers the counts from every worker.
:func:`build_train_stream` is the one way training code (the trainer, ``align-hf train``, the
quickstart, :func:`build_loader`) builds the training stream.

Sharding: ranks get disjoint parts of the stream via ``datasets.distributed.split_dataset_by_node``
(whole shards when ``n_shards`` divides by the world size, else every world_size-th example), and
``datasets`` hands each DataLoader worker its own shards, so every sample is read once per epoch.

Resumption: :class:`ImageTextLoader` uses torchdata's ``StatefulDataLoader`` (when installed), which
collects :meth:`ImageTextPairs.state_dict` from every worker with every batch: shard position and
offset, the shuffle buffer (:mod:`align_hf.data.resumable`), the caption / augmentation generators.
``load_state_dict`` continues the stream sample-exactly, without decoding anything again.
"""

from __future__ import annotations

import logging
import random
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import datasets
import torch
from datasets.distributed import split_dataset_by_node
from PIL import Image

from align_hf.data.decoding import DecodeLimits, clean_caption, decode_image, image_bytes
from align_hf.data.filtering import AlignFilter
from align_hf.data.resumable import ResumableShuffle, shuffle_shards
from align_hf.data.transforms import STATS_KEY, ImageTextCollator, ImageTransform, swap_words

logger = logging.getLogger(__name__)

TOTAL = "total"
KEPT = "kept"
SKIP_PREFIX = "skipped/"
FILTER_PREFIX = "filtered/"
INCOMPLETE_BATCH = "incomplete_batch"
TRANSFORM_ERROR = "transform_error"


@dataclass
class DataStats:
    """Counts of one pass: records read, samples kept, skipped by reason, filtered by rule."""

    total: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    filtered: Counter = field(default_factory=Counter)

    def update(self, delta: dict[str, int]) -> None:
        """Add a flat delta as carried between processes (``total``, ``kept``, ``skipped/<reason>``...)."""
        for name, value in delta.items():
            if name == TOTAL:
                self.total += value
            elif name == KEPT:
                self.kept += value
            elif name.startswith(SKIP_PREFIX):
                self.skipped[name[len(SKIP_PREFIX) :]] += value
            elif name.startswith(FILTER_PREFIX):
                self.filtered[name[len(FILTER_PREFIX) :]] += value

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> "DataStats":
        """The inverse of :meth:`as_dict` (counts restored from a checkpoint)."""
        return cls(saved["total"], saved["kept"], Counter(saved["skipped"]), Counter(saved["filtered"]))

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "kept": self.kept,
            "skipped": dict(sorted(self.skipped.items())),
            "filtered": dict(sorted(self.filtered.items())),
        }

    def summary(self) -> str:
        parts = [f"{self.kept}/{self.total} kept"]
        if self.skipped:
            parts.append("skipped " + ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items())))
        if self.filtered:
            parts.append("filtered " + ", ".join(f"{k}={v}" for k, v in sorted(self.filtered.items())))
        return "; ".join(parts)


def _default_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class _Pass:
    """The state of one pass of :class:`ImageTextPairs` in one process: the shuffled records, the
    caption generator, the transform's generator and counts not yet attached to a sample."""

    def __init__(self, dataset: "ImageTextPairs", worker_id: int, stream: int, resume: dict | None):
        self.dataset = dataset
        self.epoch = dataset.epoch
        self.worker_id = worker_id
        self.caption_rng = random.Random(dataset.seed * 1_000_003 + stream)
        self.records = ResumableShuffle(dataset.pairs, dataset.shuffle_buffer, (dataset.seed, dataset.epoch, dataset.rank, worker_id),
                                        None if resume is None else resume["records"])
        self.pending: Counter = Counter()
        self.done = False
        if resume is not None:
            self.caption_rng.setstate(_as_rng_state(resume["caption_rng"]))
            self.pending.update(resume["pending"])
            self.done = bool(resume["done"])
            if resume["transform_rng"] is not None:
                dataset.transform.rng.setstate(_as_rng_state(resume["transform_rng"]))
            if self.done:
                self.records = ()  # type: ignore[assignment] # the pass had ended

    def state_dict(self) -> dict[str, Any]:
        transform_rng = getattr(self.dataset.transform, "rng", None)
        return {
            "epoch": self.epoch,
            "worker": self.worker_id,
            "records": self.records.state_dict() if not self.done else None,
            "caption_rng": self.caption_rng.getstate(),
            "transform_rng": transform_rng.getstate() if isinstance(transform_rng, random.Random) else None,
            "pending": dict(self.pending),
            "done": self.done,
        }


def _as_rng_state(state: Any) -> tuple:
    """``random.Random.getstate()`` as saved (lists after a round trip through some serialisers) -> tuple."""
    version, internal, gauss = state
    return int(version), tuple(int(x) for x in internal), gauss


class ImageTextPairs(torch.utils.data.IterableDataset):
    """Decoded, filtered, transformed image-text samples from a ``load_pairs`` stream.

    Yields ``{"pixel_values": transform(image), "text": str, "key": str | None}``. With
    ``transform=None``, ``"image"`` (an RGB PIL image) is yielded instead of ``pixel_values``.

    Args:
        pairs: output of :func:`~align_hf.data.sources.load_pairs`.
        transform: e.g. :class:`~align_hf.data.transforms.ImageTransform`.
        filter: optional :class:`~align_hf.data.filtering.AlignFilter`.
        limits: decode-time sanity limits.
        shuffle_buffer: raw records held in the shuffle buffer (0: no shuffling). Shard order is
            shuffled too; call :meth:`set_epoch` each epoch for a new order. The buffer is
            :class:`~align_hf.data.resumable.ResumableShuffle`'s, so :meth:`state_dict` (taken in each
            DataLoader worker by torchdata's ``StatefulDataLoader``) resumes the stream sample-exactly.
        seed: shuffling / caption-choice seed.
        rank, world_size: this process's place among distributed ranks (default: from
            ``torch.distributed`` when initialised).
        emit_stats: attach per-sample statistic deltas (and a final statistics-only record) so
            counts made in DataLoader workers reach the main process; used by ImageTextLoader.
        flip_swap: words to swap in the caption when the transform flipped the image, e.g.
            :data:`~align_hf.data.transforms.LEFT_RIGHT_SWAP` for captions that name sides (the
            synthetic corpus). ``None`` flips images only, as the paper does.
    """

    def __init__(
        self,
        pairs: datasets.IterableDataset,
        transform: Callable[[Image.Image], torch.Tensor] | None = None,
        filter: AlignFilter | None = None,  # noqa: A002 - the natural name
        limits: DecodeLimits = DecodeLimits(),
        shuffle_buffer: int = 0,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        emit_stats: bool = False,
        flip_swap: dict[str, str] | None = None,
    ):
        if rank is None or world_size is None:
            rank, world_size = _default_rank_world()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if world_size > 1:
            if pairs.n_shards % world_size:
                logger.warning(
                    "%d shards do not split evenly over %d ranks: every rank reads all shards and keeps "
                    "every %d-th example (slower); write a multiple of %d shards",
                    pairs.n_shards, world_size, world_size, world_size,
                )
            pairs = split_dataset_by_node(pairs, rank=rank, world_size=world_size)
        if shuffle_buffer > 0:
            pairs = shuffle_shards(pairs, seed)
        self.pairs = pairs
        self.shuffle_buffer = shuffle_buffer
        self.rank = rank
        self.transform = transform
        self.filter = filter
        self.limits = limits
        self.seed = seed
        self.epoch = 0
        self.emit_stats = emit_stats
        self.flip_swap = flip_swap
        self.stats = DataStats()
        self._pass: _Pass | None = None  # the pass being iterated in this process
        self._resume: dict | None = None  # a state_dict to start the next pass from
        if filter is not None and filter.counts is None and filter.config.needs_counts:
            logger.warning("filter has no FrequencyCounts: the frequency rules (shared texts, rare tokens) are off")

    @property
    def n_shards(self) -> int:
        return self.pairs.n_shards

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for a new epoch (same result on every rank for the same epoch)."""
        self.epoch = epoch
        self.pairs.set_epoch(epoch)

    def _draft_size(self) -> tuple[int, int] | None:
        size = getattr(self.transform, "size", None)
        return (size[1], size[0]) if size is not None else None

    def state_dict(self) -> dict[str, Any]:
        """Position of this process's pass (call it in the DataLoader worker, as ``StatefulDataLoader``
        does): epoch, the shuffle buffer's state, the caption / augmentation generators and counts not
        yet attached to a sample."""
        if self._pass is not None:
            return self._pass.state_dict()
        return self._resume if self._resume is not None else {"epoch": self.epoch, "worker": None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Start the next pass (of the same epoch, see :meth:`set_epoch`) where ``state`` left off."""
        self._resume = state

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = torch.utils.data.get_worker_info()
        worker_id = worker.id if worker is not None else 0
        # Distinct augmentation / caption-choice streams per epoch, rank and worker.
        stream = (self.epoch * 4096 + self.rank) * 256 + worker_id
        if hasattr(self.transform, "reseed"):
            self.transform.reseed(stream)
        resume, self._resume = self._resume, None
        if resume is not None and resume.get("worker") is None:
            resume = None  # saved before the pass started: a fresh start
        if resume is not None and (resume["epoch"], resume["worker"]) != (self.epoch, worker_id):
            raise ValueError(f"data state of epoch {resume['epoch']}, worker {resume['worker']} given to epoch "
                             f"{self.epoch}, worker {worker_id}: resume with the same number of workers")
        self._pass = _Pass(self, worker_id, stream, resume)
        return self._samples(self._pass, worker)

    def _samples(self, state: "_Pass", worker: Any) -> Iterator[dict[str, Any]]:
        caption_rng = state.caption_rng
        draft = self._draft_size()
        pending = state.pending

        def skip(name: str) -> None:
            pending[name] += 1
            self.stats.update({name: 1})

        for record in state.records:
            pending[TOTAL] += 1
            self.stats.total += 1
            if record.get("error"):
                skip(SKIP_PREFIX + record["error"].split(":", 1)[0])
                continue
            text, reason = clean_caption(record.get("text"), caption_rng)
            if reason is not None:
                skip(SKIP_PREFIX + reason)
                continue
            if self.filter is not None:
                rule = self.filter.check_text(text)
                if rule is not None:
                    self.filter.report.add(rule)
                    skip(FILTER_PREFIX + rule)
                    continue
            data = image_bytes(record.get("image"))
            decoded = decode_image(data, self.limits, draft_size=draft)
            if decoded.image is None:
                skip(SKIP_PREFIX + decoded.reason)
                continue
            if self.filter is not None:
                rule = self.filter.check_image(*decoded.original_size, data=data)
                self.filter.report.add(rule)
                if rule is not None:
                    skip(FILTER_PREFIX + rule)
                    continue
            sample: dict[str, Any] = {"text": text, "key": record.get("key")}
            if self.transform is not None:
                try:
                    sample["pixel_values"] = self.transform(decoded.image)
                except Exception as error:  # noqa: BLE001 - a user transform failing on one image
                    logger.debug("transform failed on %s: %r", record.get("key"), error)
                    skip(SKIP_PREFIX + TRANSFORM_ERROR)
                    continue
                if self.flip_swap and getattr(self.transform, "last_flipped", False):
                    sample["text"] = swap_words(text, self.flip_swap)
            else:
                sample["image"] = decoded.image
            pending[KEPT] += 1
            self.stats.kept += 1
            if self.emit_stats:
                sample[STATS_KEY] = dict(pending)
                pending.clear()
            yield sample
        state.done = True
        if self.emit_stats and pending:
            last = dict(pending)
            pending.clear()
            yield {STATS_KEY: last}  # counts after the last kept sample
        if worker is None and self.stats.total:
            logger.info("data pass: %s", self.stats.summary())


class ImageTextLoader:
    """Batches from :class:`ImageTextPairs` through a torch ``DataLoader``, with counts.

    Iterating yields dicts with ``pixel_values``, ``input_ids``, ``attention_mask`` (see
    :class:`~align_hf.data.transforms.ImageTextCollator`). ``stats`` accumulates, across all
    workers and epochs, what was read, kept, skipped and filtered. With ``drop_last`` every
    batch has exactly ``batch_size`` samples (needed for the distributed loss).

    Ranks can end up with different numbers of batches (shards differ in how many samples
    survive decoding and filtering); a distributed job should set ``max_batches`` to a count
    every rank reaches, e.g. ``0.95 * samples_per_rank // batch_size``, so no rank waits forever.
    """

    def __init__(
        self,
        dataset: ImageTextPairs,
        collator: ImageTextCollator,
        batch_size: int,
        num_workers: int = 0,
        drop_last: bool = True,
        pin_memory: bool = False,
        prefetch_factor: int | None = None,
        max_batches: int | None = None,
    ):
        if dataset.transform is None:
            raise ValueError("ImageTextLoader needs a dataset with a transform (it batches pixel_values)")
        if num_workers > dataset.n_shards:
            logger.warning(
                "%d workers but only %d shards: %d workers will idle",
                num_workers, dataset.n_shards, num_workers - dataset.n_shards,
            )
        dataset.emit_stats = True
        collator.keep_stats = True
        self.dataset = dataset
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.max_batches = max_batches
        self.stats = DataStats()
        kwargs: dict[str, Any] = {}
        # No persistent workers: they keep their own copy of the dataset, so set_epoch (the
        # new shuffle order) would never reach them.
        if num_workers > 0 and prefetch_factor is not None:
            kwargs["prefetch_factor"] = prefetch_factor
        loader_class, self.stateful = _loader_class()
        if self.stateful:
            # A worker snapshot with every batch: the state after any batch is exact, nothing is replayed.
            kwargs["snapshot_every_n_steps"] = 1
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*set_vital.*")  # torchdata 0.11 calls a deprecated torch API
            self.loader = loader_class(
                dataset,
                batch_size=batch_size,
                num_workers=num_workers,
                collate_fn=collator,
                pin_memory=pin_memory,
                drop_last=False,  # incomplete batches are dropped here, after their counts are taken
                **kwargs,
            )

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        """After the last batch yielded: the ``StatefulDataLoader``'s state (every worker's
        :meth:`ImageTextPairs.state_dict`) and the counts so far. Needs torchdata."""
        if not self.stateful:
            raise RuntimeError("resumable loading needs torchdata (pip install torchdata)")
        return {"loader": self.loader.state_dict(), "stats": self.stats.as_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The next iteration (of the same epoch) continues after the batch ``state`` was taken at,
        and the counts continue from the saved ones."""
        self.loader.load_state_dict(state["loader"])
        self.stats = DataStats.from_dict(state["stats"])

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        yielded = 0
        for batch in self.loader:
            if self.max_batches is not None and yielded >= self.max_batches:
                break  # leaving the loop shuts the workers down
            self.stats.update(batch.pop(STATS_KEY, {}))
            if "pixel_values" not in batch:
                continue
            if self.drop_last and batch["pixel_values"].shape[0] < self.batch_size:
                # Counted so that kept == samples actually trained on + this.
                self.stats.skipped[INCOMPLETE_BATCH] += batch["pixel_values"].shape[0]
                continue
            yielded += 1
            yield batch
        logger.info("data: %s", self.stats.summary())


def _loader_class() -> tuple[type, bool]:
    """torchdata's ``StatefulDataLoader`` (resumable across workers) when installed, else torch's."""
    try:
        from torchdata.stateful_dataloader import StatefulDataLoader
    except ImportError:
        return torch.utils.data.DataLoader, False
    return StatefulDataLoader, True


def build_train_stream(
    source: Any,
    image_processor: Any = None,
    seed: int = 0,
    *,
    filter: AlignFilter | None = None,  # noqa: A002
    flip_swap: dict[str, str] | None = None,
    shuffle_buffer: int = 10_000,
    image_column: str | None = None,
    text_column: str | None = None,
    transform: Callable[[Image.Image], torch.Tensor] | None = None,
    limits: DecodeLimits = DecodeLimits(),
    rank: int | None = None,
    world_size: int | None = None,
) -> ImageTextPairs:
    """THE training stream: ``source`` -> shuffled, decoded, filtered, augmented samples.

    ``source`` is anything :func:`~align_hf.data.sources.load_pairs` takes, or its result. Images get
    ``transform``, by default the processor's sizes with a random crop + flip
    (``ImageTransform.from_image_processor(image_processor, train=True, seed=seed)``), so samples are
    ``{"pixel_values": (3, crop_h, crop_w), "text": str, "key": str | None}``. ``flip_swap`` swaps
    caption words when an image was flipped. With an evaluation ``transform`` and
    ``shuffle_buffer=0`` the same builds an evaluation stream.
    """
    from align_hf.data.sources import load_pairs

    if transform is None:
        if image_processor is None:
            raise ValueError("build_train_stream needs image_processor= or transform=")
        transform = ImageTransform.from_image_processor(image_processor, train=True, seed=seed)
    pairs = load_pairs(source, image_column, text_column)
    return ImageTextPairs(pairs, transform, filter=filter, limits=limits, shuffle_buffer=shuffle_buffer, seed=seed,
                          rank=rank, world_size=world_size, flip_swap=flip_swap)


def build_loader(
    source: Any,
    batch_size: int,
    *,
    processor: Any = None,
    tokenizer: Any = None,
    size: Any = None,
    crop_size: Any = None,
    train: bool = True,
    filter: AlignFilter | None = None,  # noqa: A002
    limits: DecodeLimits = DecodeLimits(),
    shuffle_buffer: int | None = None,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool | None = None,
    max_length: int = 64,
    padding: str = "longest",
    image_column: str | None = None,
    text_column: str | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    flip_swap: dict[str, str] | None = None,
) -> ImageTextLoader:
    """Source to batches in one call: :func:`build_train_stream` batched by an :class:`ImageTextLoader`.

    Sizes and tokenizer come from ``processor`` (``processor.image_processor.size`` /
    ``crop_size``, ``processor.tokenizer``) or are given directly. ``train`` selects the random
    crop + flip, shuffling (``shuffle_buffer`` default 10000 when training, 0 otherwise) and
    ``drop_last`` (default: same as ``train``). ``source`` is anything :func:`load_pairs` takes,
    or its result. Batches hold ``pixel_values (B, 3, H, W)``, ``input_ids (B, L)``,
    ``attention_mask (B, L)``.
    """
    if processor is not None:
        transform = ImageTransform.from_image_processor(processor.image_processor, train=train, seed=seed)
        tokenizer = tokenizer or processor.tokenizer
    else:
        if size is None or tokenizer is None:
            raise ValueError("pass processor=, or both size= (and optionally crop_size=) and tokenizer=")
        transform = ImageTransform(size, crop_size, train=train, seed=seed)
    if shuffle_buffer is None:
        shuffle_buffer = 10_000 if train else 0
    dataset = build_train_stream(source, seed=seed, filter=filter, flip_swap=flip_swap, shuffle_buffer=shuffle_buffer,
                                 image_column=image_column, text_column=text_column, transform=transform, limits=limits,
                                 rank=rank, world_size=world_size)
    collator = ImageTextCollator(tokenizer, max_length=max_length, padding=padding)
    return ImageTextLoader(dataset, collator, batch_size, num_workers=num_workers, drop_last=train if drop_last is None else drop_last)
