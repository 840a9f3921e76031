"""Reading the parquet count store that ``align-hf data count`` writes (:mod:`align_hf.data.counting`).

Layout of a store folder::

    meta.json                          totals, skipped records by reason, per-table rows and
                                       {count: keys} histograms; written last (a store without
                                       it is incomplete)
    texts/part-00000.parquet ...       normalised alt-text key -> images it was seen with
    images/part-*.parquet              image-bytes key -> alt-texts (with --count-images)
    unigrams/part-*.parquet            unigram key -> occurrences
    bigrams/part-*.parquet             bigram key -> occurrences
    filter_index/<id>/*.npy            lookup arrays of a filter configuration (a cache)

Every table has the same ``2**partition_bits`` partitions: partition ``p`` holds the keys whose
top ``partition_bits`` bits are ``p``, ascending, in columns ``key`` and ``count`` (both
``uint64``). Partitions therefore cover disjoint, ascending key ranges: reading them in order
reads a table sorted, one partition in memory at a time.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any, Iterator

import numpy as np

from align_hf.data.filter_index import (
    NGRAM_TABLES,
    FilterIndex,
    build_filter_index,
    combine,
)

STORE_FORMAT = "align_hf.count_store/1"
META_FILE = "meta.json"


def partition_of(keys: np.ndarray, bits: int) -> np.ndarray:
    """Partition of each ``uint64`` key, shape ``(n,)``: its top ``bits`` bits (0 when ``bits`` is 0)."""
    if bits == 0:
        return np.zeros(len(keys), dtype=np.uint64)
    return keys >> np.uint64(64 - bits)


def partition_path(root: str, table: str, partition: int) -> str:
    return os.path.join(root, table, f"part-{partition:05d}.parquet")


def read_partition(path: str) -> tuple[np.ndarray, np.ndarray]:
    """``(keys, counts)`` of one partition file, ``uint64`` arrays of shape ``(n,)``."""
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["key", "count"], memory_map=True)
    return (table.column("key").to_numpy().astype(np.uint64, copy=False),
            table.column("count").to_numpy().astype(np.uint64, copy=False))


def is_count_store(path: str | os.PathLike) -> bool:
    return os.path.isfile(os.path.join(os.fspath(path), META_FILE))


class CountStore:
    """A finished count store: totals from ``meta.json``, counts read partition by partition.

    Pass it to :class:`~align_hf.data.filtering.AlignFilter` as ``counts``; the filter's lookup
    arrays are built once per configuration and cached as memory-mapped ``.npy`` files under
    ``filter_index/`` (in memory where the store is read-only).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        meta_path = os.path.join(self.path, META_FILE)
        if not os.path.isfile(meta_path):
            raise FileNotFoundError(f"{self.path}: no {META_FILE}; not a count store, or its counting did not finish")
        with open(meta_path, encoding="utf-8") as handle:
            self.meta: dict[str, Any] = json.load(handle)
        if self.meta.get("format") != STORE_FORMAT:
            raise ValueError(f"{self.path} is not a count store written by align_hf.data.counting")

    @property
    def num_texts(self) -> int:
        return self.meta["num_texts"]

    @property
    def num_records(self) -> int:
        return self.meta["num_records"]

    @property
    def skipped(self) -> Counter:
        return Counter(self.meta["skipped"])

    @property
    def counted_images(self) -> bool:
        return self.meta["counted_images"]

    @property
    def max_ngram(self) -> int:
        return self.meta["max_ngram"]

    @property
    def num_partitions(self) -> int:
        return 1 << self.meta["partition_bits"]

    def rows(self, table: str) -> int:
        """Distinct keys in ``table``."""
        return self.meta["tables"][table]["rows"]

    def histogram(self, table: str) -> dict[int, int]:
        """``{count: number of keys with it}`` over ``table``."""
        return {int(c): int(n) for c, n in self.meta["tables"][table]["histogram"]}

    def iter_partitions(self, tables: str | tuple[str, ...]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(keys, counts)`` per partition, ascending; several tables are merged partition by partition."""
        tables = (tables,) if isinstance(tables, str) else tables
        for partition in range(self.num_partitions):
            parts = [read_partition(partition_path(self.path, table, partition)) for table in tables]
            if len(parts) == 1:
                yield parts[0]
            else:
                yield combine(np.concatenate([k for k, _ in parts]), np.concatenate([c for _, c in parts]))

    def to_dict(self, table: str) -> dict[int, int]:
        """The whole table as ``{key: count}`` (small stores: tests and inspection)."""
        return {int(k): int(c) for keys, counts in self.iter_partitions(table) for k, c in zip(keys, counts)}

    def lookup(self, table: str, keys: np.ndarray) -> np.ndarray:
        """Counts of ``(n,)`` ``uint64`` keys in ``table`` (0 where absent), reading only their partitions."""
        keys = np.asarray(keys, dtype=np.uint64)
        out = np.zeros(len(keys), dtype=np.uint64)
        parts = partition_of(keys, self.meta["partition_bits"])
        for partition in np.unique(parts):
            mask = parts == partition
            stored, counts = read_partition(partition_path(self.path, table, int(partition)))
            if len(stored):
                index = np.minimum(np.searchsorted(stored, keys[mask]), len(stored) - 1)
                out[mask] = np.where(stored[index] == keys[mask], counts[index], 0)
        return out

    def _cache_dir(self) -> str | None:
        directory = os.path.join(self.path, "filter_index", self.meta["id"])
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError:
            return None
        return directory if os.access(directory, os.W_OK) else None

    def filter_index(self, config) -> FilterIndex:
        """The lookup arrays of ``config`` (a ``FilterConfig``), built with bounded memory and cached."""
        max_ngram = min(config.rare_ngrams, self.max_ngram)
        grams = NGRAM_TABLES[:max_ngram]
        gram_hist: Counter = Counter()
        for table in grams:
            gram_hist.update(self.histogram(table))

        def table(name: str | tuple[str, ...], hist: dict[int, int]):
            return (lambda: self.iter_partitions(name)), hist

        return build_filter_index(
            config,
            texts=table("texts", self.histogram("texts")),
            images=table("images", self.histogram("images")) if self.counted_images else None,
            ngrams=table(grams, dict(gram_hist)),
            max_ngram=max_ngram,
            cache_dir=self._cache_dir(),
        )

    def summary(self) -> str:
        tables = self.meta["tables"]
        shared = sum(n for c, n in self.histogram("texts").items() if c > 1)
        line = (f"{self.num_records} records, {self.num_texts} texts counted ({tables['texts']['rows']} distinct, "
                f"{shared} shared by 2+ images), {tables['unigrams']['rows']} distinct unigrams, "
                f"{tables['bigrams']['rows']} distinct bigrams")
        if self.counted_images:
            line += f", {tables['images']['rows']} distinct images"
        if self.meta["skipped"]:
            line += "; not counted: " + ", ".join(f"{k}={v}" for k, v in sorted(self.meta["skipped"].items()))
        return line

    def __repr__(self) -> str:
        return f"CountStore({self.path!r}: {self.num_texts} texts, {self.num_partitions} partitions)"


def load_counts(path: str | os.PathLike):
    """Counts for :class:`~align_hf.data.filtering.AlignFilter`: a store folder, or a JSON file from ``FrequencyCounts.save``."""
    if os.path.isdir(os.fspath(path)):
        return CountStore(path)
    from align_hf.data.filtering import FrequencyCounts

    return FrequencyCounts.load(path)
