"""What ALIGN's frequency rules look up per sample: sorted arrays of 64-bit hashed keys.

The corpus-wide counts (:class:`~align_hf.data.filtering.FrequencyCounts` in memory, or a
:class:`~align_hf.data.count_store.CountStore` on disk) are reduced, for one set of
thresholds, to three sorted ``uint64`` arrays: texts shared by too many images, images with
too many texts, and the vocabulary of common n-grams. A sample's check is then a binary search
(``np.searchsorted``) per key. Built from a store, the arrays are ``.npy`` files opened with
``mmap_mode="r"``, so every data-loader worker and rank on a node shares one copy in the page
cache; pickling a :class:`FilterIndex` sends the paths, not the arrays.

Both sources build the index with the same function, :func:`build_filter_index`, fed the
counts partition by partition (a store has many, memory has one), so the vocabulary rule has
one definition: rank n-grams by (count descending, key ascending) and keep the first
``vocab_size`` of those occurring at least ``min_token_count`` times.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from typing import Callable, Iterable, Iterator

import numpy as np

# Count tables (of FrequencyCounts.hashed_tables and a CountStore); the n-gram tables in order of n,
# so NGRAM_TABLES[:max_n] are the ones the rare-token rule checks.
TABLES = ("texts", "images", "unigrams", "bigrams")
NGRAM_TABLES = ("unigrams", "bigrams")

# A partition of one count table: (keys, counts), both uint64, keys ascending and unique.
Partition = tuple[np.ndarray, np.ndarray]
PartitionsFn = Callable[[], Iterator[Partition]]


def hash64(data: bytes | str) -> int:
    """The 64-bit key of a text, n-gram or image: blake2b-64, the digest :func:`stable_hash` prints in hex."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def hash64_array(items: Iterable[bytes | str], count: int | None = None) -> np.ndarray:
    """``uint64`` array of :func:`hash64` of each item, shape ``(n,)``."""
    return np.fromiter((hash64(item) for item in items), dtype=np.uint64, count=-1 if count is None else count)


def combine(keys: np.ndarray, counts: np.ndarray) -> Partition:
    """Sum counts of equal keys: ``(n,)`` keys/counts -> unique ascending keys ``(m,)`` and their totals."""
    if len(keys) == 0:
        return np.empty(0, np.uint64), np.empty(0, np.uint64)
    order = np.argsort(keys, kind="stable")
    keys, counts = keys[order], counts[order]
    starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    return keys[starts], np.add.reduceat(counts, starts).astype(np.uint64, copy=False)


def histogram(counts: np.ndarray) -> dict[int, int]:
    """``{count: number of keys with that count}``: what the vocabulary boundary is found from."""
    values, keys = np.unique(counts, return_counts=True)
    return {int(v): int(k) for v, k in zip(values, keys)}


def contains(sorted_keys: np.ndarray | None, keys: np.ndarray) -> np.ndarray:
    """Boolean ``(n,)``: which of ``keys`` are in the ascending array ``sorted_keys``."""
    if sorted_keys is None or len(sorted_keys) == 0 or len(keys) == 0:
        return np.zeros(len(keys), dtype=bool)
    index = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return np.asarray(sorted_keys[index]) == keys


class FilterIndex:
    """The sorted key arrays for one filter configuration (``None`` where a rule is off).

    Attributes:
        shared_texts: keys of normalised alt-texts shared by more than ``max_images_per_text`` images.
        crowded_images: keys of image bytes seen with more than ``max_texts_per_image`` texts.
        vocab: keys of the common n-grams; an n-gram not in it is rare. ``None``: the rule is off.
        max_ngram: n-grams checked against ``vocab``: 1 = unigrams, 2 = unigrams and bigrams.
    """

    ARRAYS = ("shared_texts", "crowded_images", "vocab")

    def __init__(self, shared_texts=None, crowded_images=None, vocab=None, max_ngram: int = 1, paths: dict[str, str] | None = None):
        self.shared_texts, self.crowded_images, self.vocab = shared_texts, crowded_images, vocab
        self.max_ngram = max_ngram
        self.paths = dict(paths or {})  # array name -> .npy file it was memory-mapped from

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        for name in self.paths:
            state[name] = None  # the worker re-opens the memory map instead of receiving a copy
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        for name, path in self.paths.items():
            setattr(self, name, np.load(path, mmap_mode="r"))

    def text_is_shared(self, text_key: int) -> bool:
        return bool(contains(self.shared_texts, np.array([text_key], dtype=np.uint64))[0])

    def image_is_crowded(self, image_key: int) -> bool:
        return bool(contains(self.crowded_images, np.array([image_key], dtype=np.uint64))[0])

    def any_rare(self, ngram_keys: np.ndarray) -> bool:
        """Whether any of the ``(n,)`` n-gram keys is outside the vocabulary (False if the rule is off)."""
        return self.vocab is not None and not bool(contains(self.vocab, ngram_keys).all())

    def sizes(self) -> dict[str, int | None]:
        return {name: None if getattr(self, name) is None else len(getattr(self, name)) for name in self.ARRAYS}


def vocab_boundary(hist: dict[int, int], vocab_size: int | None, min_count: int) -> tuple[int, int, int] | None:
    """Where the vocabulary ends, from a count histogram.

    Returns ``None`` if every n-gram with ``count >= min_count`` is in the vocabulary, else
    ``(size, boundary_count, needed)``: the vocabulary holds the ``size`` n-grams with a count
    above ``boundary_count`` plus the ``needed`` smallest keys among those with exactly it.
    """
    eligible = sum(n for c, n in hist.items() if c >= min_count)
    if vocab_size is None or eligible <= vocab_size:
        return None
    above = 0
    for count in sorted(hist, reverse=True):
        if above + hist[count] >= vocab_size:
            return vocab_size, count, vocab_size - above
        above += hist[count]
    raise AssertionError("unreachable: eligible > vocab_size")


def _boundary_key(partitions: PartitionsFn, count: int, needed: int) -> int:
    """The ``needed``-th smallest key with exactly ``count``; partitions ascend, so one is held at a time."""
    seen = 0
    for keys, counts in partitions():
        at = keys[counts == count]
        if seen + len(at) >= needed:
            return int(at[needed - seen - 1])  # keys within a partition ascend
        seen += len(at)
    raise AssertionError("histogram and partitions disagree")


def _collect(partitions: PartitionsFn, keep: Callable[[np.ndarray, np.ndarray], np.ndarray], size: int, path: str | None) -> np.ndarray:
    """Concatenate the kept keys of every partition (ascending overall) into a ``(size,)`` array.

    With ``path`` the array is written there as ``.npy`` (atomically: concurrent ranks building the
    same index each write a temporary file and rename) and returned memory-mapped.
    """
    if path is None or size == 0:
        out = np.empty(size, dtype=np.uint64)
    else:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        handle, temporary = tempfile.mkstemp(suffix=".npy", dir=os.path.dirname(path))
        os.close(handle)
        out = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.uint64, shape=(size,))
    position = 0
    for keys, counts in partitions():
        kept = keys[keep(keys, counts)]
        out[position : position + len(kept)] = kept
        position += len(kept)
    if position != size:
        raise AssertionError(f"expected {size} keys from the histogram, collected {position}")
    if path is None or size == 0:
        return out
    out.flush()
    del out
    os.replace(temporary, path)
    return np.load(path, mmap_mode="r")


def build_filter_index(
    config,
    *,
    texts: tuple[PartitionsFn, dict[int, int]] | None,
    images: tuple[PartitionsFn, dict[int, int]] | None,
    ngrams: tuple[PartitionsFn, dict[int, int]],
    max_ngram: int,
    cache_dir: str | None = None,
) -> FilterIndex:
    """The :class:`FilterIndex` of ``config`` (a ``FilterConfig``) over partitioned counts.

    Each of ``texts``, ``images``, ``ngrams`` is ``(partitions, histogram)``: a function
    yielding ``(keys, counts)`` partitions in ascending key order, and the ``{count: keys}``
    histogram of the whole table (``ngrams``: unigrams, plus bigrams when ``max_ngram`` is 2).
    ``images`` is ``None`` when image bytes were not counted. With ``cache_dir`` the arrays are
    ``.npy`` files there, reused when present.
    """

    def cached(name: str) -> str | None:
        return None if cache_dir is None else os.path.join(cache_dir, name + ".npy")

    def above(table: tuple[PartitionsFn, dict[int, int]], threshold: int, name: str) -> np.ndarray:
        partitions, hist = table
        path = cached(name)
        if path is not None and os.path.exists(path):
            return np.load(path, mmap_mode="r")
        size = sum(n for c, n in hist.items() if c > threshold)
        return _collect(partitions, lambda keys, counts: counts > threshold, size, path)

    index = FilterIndex(max_ngram=max_ngram)
    if texts is not None and config.max_images_per_text is not None:
        index.shared_texts = above(texts, config.max_images_per_text, f"texts-gt{config.max_images_per_text}")
    if images is not None and config.max_texts_per_image is not None:
        index.crowded_images = above(images, config.max_texts_per_image, f"images-gt{config.max_texts_per_image}")

    partitions, hist = ngrams
    min_count = max(config.min_token_count or 1, 1)
    distinct = sum(hist.values())
    if min_count > 1 or (config.vocab_size is not None and distinct > config.vocab_size):
        name = f"vocab-n{max_ngram}-v{config.vocab_size}-m{min_count}"
        path = cached(name)
        if path is not None and os.path.exists(path):
            index.vocab = np.load(path, mmap_mode="r")
        else:
            boundary = vocab_boundary(hist, config.vocab_size, min_count)
            if boundary is None:
                size = sum(n for c, n in hist.items() if c >= min_count)
                index.vocab = _collect(partitions, lambda keys, counts: counts >= min_count, size, path)
            else:
                size, count, needed = boundary
                key = np.uint64(_boundary_key(partitions, count, needed))

                def keep(keys: np.ndarray, counts: np.ndarray) -> np.ndarray:
                    return (counts > count) | ((counts == count) & (keys <= key))

                index.vocab = _collect(partitions, keep, size, path)
    index.paths = {name: getattr(index, name).filename for name in FilterIndex.ARRAYS if isinstance(getattr(index, name), np.memmap)}
    return index
