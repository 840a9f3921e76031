"""ALIGN's frequency-based filtering of noisy alt-text (paper section 3), as a reusable step.

Per-sample rules (image size, aspect ratio, caption length) need nothing but the sample. The
frequency rules (alt-text shared by too many images, rare unigrams or bigrams, image with too
many alt-texts) need corpus-wide counts. :func:`count_frequencies` makes one streaming pass into
:class:`FrequencyCounts` (in memory, saved as JSON): right for corpora of up to a few million
pairs, and the per-shard step of :mod:`align_hf.data.counting`, which merges shards on Ray Data
or in one process into a parquet :class:`~align_hf.data.count_store.CountStore` for billions.
:class:`AlignFilter` takes either; both reduce to one :class:`~align_hf.data.filter_index.FilterIndex`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import numpy as np
from tqdm.auto import tqdm

from align_hf.data.decoding import clean_caption, image_bytes
from align_hf.data.filter_index import (
    NGRAM_TABLES,
    FilterIndex,
    build_filter_index,
    combine,
    hash64,
    hash64_array,
    histogram,
)

# Rule names, in the order they are checked; a dropped sample is counted under the first rule
# it fails, so kept + dropped adds up to the number of samples checked.
RULE_CAPTION_WORDS = "caption_word_count"
RULE_SHARED_TEXT = "text_shared_by_many_images"
RULE_RARE_TOKEN = "rare_token"
RULE_IMAGE_SIDE = "image_too_small"
RULE_ASPECT_RATIO = "image_aspect_ratio"
RULE_IMAGE_TEXTS = "image_with_many_texts"
RULES = (RULE_CAPTION_WORDS, RULE_SHARED_TEXT, RULE_RARE_TOKEN, RULE_IMAGE_SIDE, RULE_ASPECT_RATIO, RULE_IMAGE_TEXTS)
logger = logging.getLogger(__name__)

_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)
_SPACE = re.compile(r"\s+")


def unigrams(text: str) -> list[str]:
    """Lower-cased word tokens (runs of letters/digits); the unit of ALIGN's text rules."""
    return _TOKEN.findall(text.lower())


def ngrams(words: list[str], max_n: int = 2) -> list[str]:
    """The unigrams and (``max_n >= 2``) bigrams of a token list; a bigram is ``"word1 word2"``.

    Unigrams never contain a space, so the two kinds cannot be confused by their strings.
    """
    if max_n not in (1, 2):
        raise ValueError(f"max_n must be 1 or 2, got {max_n}")
    return words + [f"{a} {b}" for a, b in zip(words, words[1:])] if max_n == 2 else list(words)


def normalise_text(text: str) -> str:
    """Key under which identical alt-texts are counted (case and spacing ignored)."""
    return _SPACE.sub(" ", text.lower()).strip()


def stable_hash(data: bytes | str) -> str:
    """Short, process-independent hash (Python's ``hash`` is salted per process)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.blake2b(data, digest_size=8).hexdigest()


@dataclass(frozen=True)
class FilterConfig:
    """Thresholds of the ALIGN filter. Defaults are the paper's; set any to ``None`` to disable it.

    Args:
        min_image_side: keep images whose shorter side is > this (paper: 200 px).
        max_aspect_ratio: keep images whose long/short side ratio is < this (paper: 3).
        max_images_per_text: drop alt-texts shared by more than this many images (paper: 10).
        max_texts_per_image: drop images that appear with more than this many alt-texts
            (paper: 1000); needs image counts (``count_frequencies(count_images=True)``).
        min_words / max_words: keep texts with this many unigrams, inclusive (paper: 3 to 20).
        vocab_size: a text is dropped if one of its unigrams or bigrams is outside the
            ``vocab_size`` most frequent unigrams and bigrams of the corpus, ranked together by
            count (ties: smaller 64-bit key first). Paper: 100M, so the rule acts only on
            corpora with more distinct n-grams than that.
        min_token_count: an n-gram is also rare if it occurs fewer times than this in the corpus.
            Small corpora need a value above 1 for the rare-token rule to do anything.
        rare_ngrams: 2 = the rare-token rule checks unigrams and bigrams (paper); 1 = unigrams
            only (``small_corpus``: bigram counts of a few thousand captions are too sparse).
    """

    min_image_side: int | None = 200
    max_aspect_ratio: float | None = 3.0
    max_images_per_text: int | None = 10
    max_texts_per_image: int | None = 1000
    min_words: int | None = 3
    max_words: int | None = 20
    vocab_size: int | None = 100_000_000
    min_token_count: int | None = 1
    rare_ngrams: int = 2

    @classmethod
    def paper(cls) -> "FilterConfig":
        """The thresholds of the ALIGN paper."""
        return cls()

    @classmethod
    def small_corpus(cls, image_size: int = 64, min_token_count: int = 5) -> "FilterConfig":
        """Thresholds for corpora of thousands of small images, such as the synthetic one."""
        return cls(min_image_side=image_size // 2 - 1, min_token_count=min_token_count, rare_ngrams=1)

    @property
    def needs_counts(self) -> bool:
        """Whether any enabled rule depends on corpus-wide counts."""
        frequency = (self.max_images_per_text, self.max_texts_per_image, self.vocab_size)
        return any(v is not None for v in frequency) or (self.min_token_count or 0) > 1


@dataclass
class FrequencyCounts:
    """Corpus-wide counts for the frequency rules, in memory; mergeable across shards/ranks, saved as JSON.

    ``token_counts`` holds unigrams and, with ``max_ngram=2``, bigrams (``"word1 word2"``),
    each mapped to its occurrences. ``num_records`` counts every record read, ``skipped`` why
    records were not counted (a corrupt shard or sample, an unusable caption).
    """

    num_texts: int = 0
    text_counts: Counter = field(default_factory=Counter)  # stable_hash(normalised text) -> images
    token_counts: Counter = field(default_factory=Counter)  # unigram / "bigram pair" -> occurrences
    image_counts: Counter = field(default_factory=Counter)  # stable_hash(image bytes) -> texts
    counted_images: bool = False
    max_ngram: int = 2
    num_records: int = 0
    skipped: Counter = field(default_factory=Counter)

    def add(self, text: str, image: bytes | None = None) -> None:
        self.num_texts += 1
        self.text_counts[stable_hash(normalise_text(text))] += 1
        self.token_counts.update(ngrams(unigrams(text), self.max_ngram))
        if image is not None:
            self.image_counts[stable_hash(image)] += 1

    def merge(self, other: "FrequencyCounts") -> "FrequencyCounts":
        if other.max_ngram != self.max_ngram:
            raise ValueError(f"cannot merge counts of {other.max_ngram}-grams into counts of {self.max_ngram}-grams")
        self.num_texts += other.num_texts
        self.num_records += other.num_records
        self.text_counts.update(other.text_counts)
        self.token_counts.update(other.token_counts)
        self.image_counts.update(other.image_counts)
        self.skipped.update(other.skipped)
        self.counted_images = self.counted_images or other.counted_images
        return self

    def save(self, path: str | os.PathLike) -> None:
        """Write JSON. Hashes seen once are left out (absent means 1) to keep the file small."""
        payload = {
            "format": "align_hf.frequency_counts/2",
            "num_texts": self.num_texts,
            "num_records": self.num_records,
            "skipped": dict(self.skipped),
            "counted_images": self.counted_images,
            "max_ngram": self.max_ngram,
            "text_counts": {k: v for k, v in self.text_counts.items() if v > 1},
            "image_counts": {k: v for k, v in self.image_counts.items() if v > 1},
            "token_counts": dict(self.token_counts.most_common()),
        }
        directory = os.path.dirname(os.fspath(path))
        if directory:
            os.makedirs(directory, exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(payload, handle)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FrequencyCounts":
        """Read :meth:`save`'s JSON; format 1 files (before bigrams) load with ``max_ngram=1``."""
        with open(path, encoding="utf-8") as handle:
            payload = json.load(handle)
        version = payload.get("format") if isinstance(payload, dict) else None
        if version not in ("align_hf.frequency_counts/1", "align_hf.frequency_counts/2"):
            raise ValueError(f"{path} is not a frequency-counts file written by FrequencyCounts.save")
        return cls(
            num_texts=payload["num_texts"],
            text_counts=Counter(payload["text_counts"]),
            token_counts=Counter(payload["token_counts"]),
            image_counts=Counter(payload["image_counts"]),
            counted_images=payload["counted_images"],
            max_ngram=payload.get("max_ngram", 1),
            num_records=payload.get("num_records", payload["num_texts"]),
            skipped=Counter(payload.get("skipped", {})),
        )

    def hashed_tables(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The counts keyed by 64-bit hashes, as a :class:`~align_hf.data.count_store.CountStore` holds them.

        Returns ``{table: (keys, counts)}``, ``uint64`` arrays of shape ``(n,)`` in no order, for
        tables ``texts``, ``images``, ``unigrams``, ``bigrams``. Text and image keys are the
        :func:`stable_hash` digests read as integers; n-gram keys are :func:`hash64` of the string.
        """

        def table(keys: np.ndarray, counter: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
            return keys, np.fromiter(counter, dtype=np.uint64, count=len(keys))

        uni = [t for t in self.token_counts if " " not in t]
        bi = [t for t in self.token_counts if " " in t]
        return {
            "texts": table(np.fromiter((int(k, 16) for k in self.text_counts), np.uint64, len(self.text_counts)), self.text_counts.values()),
            "images": table(np.fromiter((int(k, 16) for k in self.image_counts), np.uint64, len(self.image_counts)), self.image_counts.values()),
            "unigrams": table(hash64_array(uni, len(uni)), (self.token_counts[t] for t in uni)),
            "bigrams": table(hash64_array(bi, len(bi)), (self.token_counts[t] for t in bi)),
        }

    def filter_index(self, config: FilterConfig) -> FilterIndex:
        """The lookup arrays of ``config`` (in memory): one partition per table, see :func:`build_filter_index`."""
        tables = {name: combine(*arrays) for name, arrays in self.hashed_tables().items()}
        max_ngram = min(config.rare_ngrams, self.max_ngram)
        if config.rare_ngrams > self.max_ngram:
            logger.warning("the counts hold unigrams only: the rare-token rule checks unigrams, not bigrams")
        grams = combine(*(np.concatenate(arrays) for arrays in zip(*(tables[t] for t in NGRAM_TABLES[:max_ngram]))))

        def one(partition: tuple[np.ndarray, np.ndarray]):
            return (lambda: iter([partition])), histogram(partition[1])

        return build_filter_index(
            config,
            texts=one(tables["texts"]),
            images=one(tables["images"]) if self.counted_images else None,
            ngrams=one(grams),
            max_ngram=max_ngram,
        )


def count_frequencies(
    pairs: Iterable[dict],
    count_images: bool = False,
    limit: int | None = None,
    progress: bool = True,
    max_ngram: int = 2,
) -> FrequencyCounts:
    """One streaming pass over ``load_pairs`` records collecting the counts the filter needs.

    Records without a usable caption, and error records (a corrupt shard or stream), are
    counted in ``skipped`` by reason. ``count_images`` also hashes the raw image bytes (no
    decoding) for the ``max_texts_per_image`` rule. ``max_ngram=1`` counts unigrams only.
    """
    from align_hf.data.sources import iter_records

    counts = FrequencyCounts(counted_images=count_images, max_ngram=max_ngram)
    for index, record in enumerate(tqdm(iter_records(pairs), desc="counting", unit=" pairs", disable=not progress)):
        if limit is not None and index >= limit:
            break
        counts.num_records += 1
        if record.get("error"):
            counts.skipped[str(record["error"]).split(":", 1)[0]] += 1
            continue
        text, reason = clean_caption(record.get("text"))
        if text is None:
            counts.skipped[reason or "no_caption"] += 1
            continue
        counts.add(text, image_bytes(record.get("image")) if count_images else None)
    return counts


@dataclass
class FilterReport:
    """Kept and dropped counts; ``dropped[rule]`` counts samples whose first failed rule is ``rule``."""

    checked: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)

    def add(self, rule: str | None) -> None:
        self.checked += 1
        if rule is None:
            self.kept += 1
        else:
            self.dropped[rule] += 1

    def merge(self, other: "FilterReport") -> "FilterReport":
        self.checked += other.checked
        self.kept += other.kept
        self.dropped.update(other.dropped)
        return self

    def as_dict(self) -> dict[str, Any]:
        return {"checked": self.checked, "kept": self.kept, "dropped": {rule: self.dropped.get(rule, 0) for rule in RULES}}


class AlignFilter:
    """Applies :class:`FilterConfig` to captions and image sizes.

    ``counts`` is a :class:`FrequencyCounts` (in memory) or a
    :class:`~align_hf.data.count_store.CountStore` (parquet, from ``align-hf data count``);
    either is reduced once to a :class:`~align_hf.data.filter_index.FilterIndex` (``index``)
    that every check looks keys up in. Without ``counts`` the frequency rules are skipped
    (they cannot be decided per sample). Use :meth:`check` for a whole sample, or
    :meth:`check_text` / :meth:`check_image` to run the cheap text rules before decoding.

    The rare-token rule, as in the paper: a text is dropped if one of its unigrams or bigrams
    (unigrams only with ``rare_ngrams=1``) is outside the vocabulary, the ``vocab_size`` most
    frequent n-grams among those seen at least ``min_token_count`` times. The rule is on when
    ``min_token_count > 1`` or the corpus has more distinct n-grams than ``vocab_size``.
    """

    def __init__(self, config: FilterConfig = FilterConfig(), counts: Any = None):
        self.config = config
        self.counts = counts
        self.report = FilterReport()
        self.index: FilterIndex | None = None if counts is None else counts.filter_index(config)

    def check_text(self, text: str) -> str | None:
        """First failed text rule, or ``None`` if the caption passes."""
        cfg = self.config
        words = unigrams(text)
        if (cfg.min_words is not None and len(words) < cfg.min_words) or (
            cfg.max_words is not None and len(words) > cfg.max_words
        ):
            return RULE_CAPTION_WORDS
        index = self.index
        if index is not None:
            if index.shared_texts is not None and index.text_is_shared(hash64(normalise_text(text))):
                return RULE_SHARED_TEXT
            if index.vocab is not None:
                grams = ngrams(words, index.max_ngram)
                if index.any_rare(hash64_array(grams, len(grams))):
                    return RULE_RARE_TOKEN
        return None

    def check_image(self, width: int, height: int, data: bytes | None = None) -> str | None:
        """First failed image rule, from the header size (and raw bytes for the image-count rule)."""
        cfg = self.config
        if cfg.min_image_side is not None and min(width, height) <= cfg.min_image_side:
            return RULE_IMAGE_SIDE
        if cfg.max_aspect_ratio is not None and max(width, height) / max(1, min(width, height)) >= cfg.max_aspect_ratio:
            return RULE_ASPECT_RATIO
        index = self.index
        if data is not None and index is not None and index.crowded_images is not None and index.image_is_crowded(hash64(data)):
            return RULE_IMAGE_TEXTS
        return None

    def check(self, text: str, width: int, height: int, data: bytes | None = None, record: bool = True) -> str | None:
        """First failed rule for a whole sample (text rules first); counted in ``report`` if ``record``."""
        rule = self.check_text(text) or self.check_image(width, height, data)
        if record:
            self.report.add(rule)
        return rule

    def describe(self) -> dict[str, Any]:
        description: dict[str, Any] = {"config": asdict(self.config), "has_counts": self.counts is not None}
        if self.index is not None:
            description["index_sizes"] = self.index.sizes()
        return description
