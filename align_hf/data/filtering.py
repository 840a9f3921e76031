"""ALIGN's frequency-based filtering of noisy alt-text (paper section 3), as a reusable step.

Per-sample rules (image size, aspect ratio, caption length) need nothing but the sample. The
frequency rules (alt-text shared by too many images, rare tokens, image with too many
alt-texts) need corpus-wide counts: :func:`count_frequencies` makes one streaming pass and
:class:`FrequencyCounts` persists the result as JSON so later runs (and every rank) reuse it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from tqdm.auto import tqdm

from align_hf.data.decoding import clean_caption, image_bytes

# Rule names, in the order they are checked; a dropped sample is counted under the first rule
# it fails, so kept + dropped adds up to the number of samples checked.
RULE_CAPTION_WORDS = "caption_word_count"
RULE_SHARED_TEXT = "text_shared_by_many_images"
RULE_RARE_TOKEN = "rare_token"
RULE_IMAGE_SIDE = "image_too_small"
RULE_ASPECT_RATIO = "image_aspect_ratio"
RULE_IMAGE_TEXTS = "image_with_many_texts"
RULES = (RULE_CAPTION_WORDS, RULE_SHARED_TEXT, RULE_RARE_TOKEN, RULE_IMAGE_SIDE, RULE_ASPECT_RATIO, RULE_IMAGE_TEXTS)

_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)
_SPACE = re.compile(r"\s+")


def unigrams(text: str) -> list[str]:
    """Lower-cased word tokens (runs of letters/digits); the unit of ALIGN's text rules."""
    return _TOKEN.findall(text.lower())


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
        vocab_size: a token is rare if it is outside the ``vocab_size`` most frequent unigrams
            (paper: 100M unigrams and bigrams, i.e. effectively only the count threshold below
            matters for corpora smaller than that).
        min_token_count: a token is also rare if it occurs fewer times than this in the corpus.
            Small corpora need a value above 1 for the rare-token rule to do anything.
    """

    min_image_side: int | None = 200
    max_aspect_ratio: float | None = 3.0
    max_images_per_text: int | None = 10
    max_texts_per_image: int | None = 1000
    min_words: int | None = 3
    max_words: int | None = 20
    vocab_size: int | None = 100_000_000
    min_token_count: int | None = 1

    @classmethod
    def paper(cls) -> "FilterConfig":
        """The thresholds of the ALIGN paper."""
        return cls()

    @classmethod
    def small_corpus(cls, image_size: int = 64, min_token_count: int = 5) -> "FilterConfig":
        """Thresholds for corpora of thousands of small images, such as the synthetic one."""
        return cls(min_image_side=image_size // 2 - 1, min_token_count=min_token_count)

    @property
    def needs_counts(self) -> bool:
        """Whether any enabled rule depends on corpus-wide counts."""
        frequency = (self.max_images_per_text, self.max_texts_per_image, self.vocab_size)
        return any(v is not None for v in frequency) or (self.min_token_count or 0) > 1


@dataclass
class FrequencyCounts:
    """Corpus-wide counts for the frequency rules; mergeable across shards/ranks and saved as JSON."""

    num_texts: int = 0
    text_counts: Counter = field(default_factory=Counter)  # stable_hash(normalised text) -> images
    token_counts: Counter = field(default_factory=Counter)  # unigram -> occurrences
    image_counts: Counter = field(default_factory=Counter)  # stable_hash(image bytes) -> texts
    counted_images: bool = False

    def add(self, text: str, image: bytes | None = None) -> None:
        self.num_texts += 1
        self.text_counts[stable_hash(normalise_text(text))] += 1
        self.token_counts.update(unigrams(text))
        if image is not None:
            self.image_counts[stable_hash(image)] += 1

    def merge(self, other: "FrequencyCounts") -> "FrequencyCounts":
        self.num_texts += other.num_texts
        self.text_counts.update(other.text_counts)
        self.token_counts.update(other.token_counts)
        self.image_counts.update(other.image_counts)
        self.counted_images = self.counted_images or other.counted_images
        return self

    def save(self, path: str | os.PathLike) -> None:
        """Write JSON. Hashes seen once are left out (absent means 1) to keep the file small."""
        payload = {
            "format": "align_hf.frequency_counts/1",
            "num_texts": self.num_texts,
            "counted_images": self.counted_images,
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
        with open(path, encoding="utf-8") as handle:
            payload = json.load(handle)
        if payload.get("format") != "align_hf.frequency_counts/1":
            raise ValueError(f"{path} is not a frequency-counts file written by FrequencyCounts.save")
        return cls(
            num_texts=payload["num_texts"],
            text_counts=Counter(payload["text_counts"]),
            token_counts=Counter(payload["token_counts"]),
            image_counts=Counter(payload["image_counts"]),
            counted_images=payload["counted_images"],
        )


def count_frequencies(
    pairs: Iterable[dict],
    count_images: bool = False,
    limit: int | None = None,
    progress: bool = True,
) -> FrequencyCounts:
    """One streaming pass over ``load_pairs`` records collecting the counts the filter needs.

    Records without a usable caption are ignored. ``count_images`` also hashes the raw image
    bytes (no decoding) for the ``max_texts_per_image`` rule.
    """
    from align_hf.data.sources import iter_records

    counts = FrequencyCounts(counted_images=count_images)
    for index, record in enumerate(tqdm(iter_records(pairs), desc="counting", unit=" pairs", disable=not progress)):
        if limit is not None and index >= limit:
            break
        text, _ = clean_caption(record.get("text"))
        if text is None:
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

    Without ``counts`` the frequency rules are skipped (they cannot be decided per sample).
    Use :meth:`check` for a whole sample, or :meth:`check_text` / :meth:`check_image` to run the
    cheap text rules before paying for image decoding.
    """

    def __init__(self, config: FilterConfig = FilterConfig(), counts: FrequencyCounts | None = None):
        self.config = config
        self.counts = counts
        self.report = FilterReport()
        self._vocab: set[str] | None = None
        if counts is not None and config.vocab_size is not None and len(counts.token_counts) > config.vocab_size:
            self._vocab = {token for token, _ in counts.token_counts.most_common(config.vocab_size)}

    def _token_is_rare(self, token: str) -> bool:
        counts = self.counts
        if counts is None:
            return False
        if self.config.min_token_count is not None and counts.token_counts.get(token, 0) < self.config.min_token_count:
            return True
        return self._vocab is not None and token not in self._vocab

    def check_text(self, text: str) -> str | None:
        """First failed text rule, or ``None`` if the caption passes."""
        cfg = self.config
        words = unigrams(text)
        if (cfg.min_words is not None and len(words) < cfg.min_words) or (
            cfg.max_words is not None and len(words) > cfg.max_words
        ):
            return RULE_CAPTION_WORDS
        if self.counts is not None:
            if cfg.max_images_per_text is not None:
                shared = self.counts.text_counts.get(stable_hash(normalise_text(text)), 1)
                if shared > cfg.max_images_per_text:
                    return RULE_SHARED_TEXT
            if (cfg.min_token_count or 0) > 1 or self._vocab is not None:
                if any(self._token_is_rare(token) for token in words):
                    return RULE_RARE_TOKEN
        return None

    def check_image(self, width: int, height: int, data: bytes | None = None) -> str | None:
        """First failed image rule, from the header size (and raw bytes for the image-count rule)."""
        cfg = self.config
        if cfg.min_image_side is not None and min(width, height) <= cfg.min_image_side:
            return RULE_IMAGE_SIDE
        if cfg.max_aspect_ratio is not None and max(width, height) / max(1, min(width, height)) >= cfg.max_aspect_ratio:
            return RULE_ASPECT_RATIO
        if (
            cfg.max_texts_per_image is not None
            and data is not None
            and self.counts is not None
            and self.counts.counted_images
            and self.counts.image_counts.get(stable_hash(data), 1) > cfg.max_texts_per_image
        ):
            return RULE_IMAGE_TEXTS
        return None

    def check(self, text: str, width: int, height: int, data: bytes | None = None, record: bool = True) -> str | None:
        """First failed rule for a whole sample (text rules first); counted in ``report`` if ``record``."""
        rule = self.check_text(text) or self.check_image(width, height, data)
        if record:
            self.report.add(rule)
        return rule

    def describe(self) -> dict[str, Any]:
        return {"config": asdict(self.config), "has_counts": self.counts is not None}
