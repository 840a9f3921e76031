"""Corpus counting at scale: the parquet store (Ray Data and single-process engines) against naive
Python Counters, and the filter built on it against the old in-memory unigram filter."""

from __future__ import annotations

import hashlib
import json
import pickle
import re
from collections import Counter

import numpy as np
import pytest

from align_hf.data import (
    AlignFilter,
    FilterConfig,
    FrequencyCounts,
    SyntheticConfig,
    SyntheticCorpus,
    count_frequencies,
    load_pairs,
)
from align_hf.data.count_store import CountStore, load_counts
from align_hf.data.counting import count_corpus
from align_hf.data.filtering import RULE_RARE_TOKEN, RULE_SHARED_TEXT, RULES
from align_hf.data.webdataset import ShardWriter

SHARDS, PER_SHARD = 6, 150


def blake64(data: bytes | str) -> int:
    """The key, computed here independently of the package."""
    return int.from_bytes(hashlib.blake2b(data.encode() if isinstance(data, str) else data, digest_size=8).digest(), "big")


def corpus_samples() -> list[dict]:
    """Synthetic captions (boilerplate repeats, file names, clean ones) with images from a small pool."""
    captions = [s.caption for s in SyntheticCorpus(SyntheticConfig()).iter_split("train", 0, SHARDS * PER_SHARD - 3, render=False)]
    samples = [{"__key__": f"{i:05d}", "jpg": b"image-%d" % (i % 53), "txt": caption} for i, caption in enumerate(captions)]
    samples.insert(100, {"__key__": "empty", "jpg": b"image-0", "txt": "  \t "})
    samples.insert(400, {"__key__": "nocaption", "jpg": b"image-1"})
    samples.insert(700, {"__key__": "bytes", "jpg": b"image-2", "txt": "Caf\u00e9 na\u00efve  caption TEXT"})
    return samples


def naive_counts(samples: list[dict]) -> dict[str, Counter]:
    """String-keyed Counters over every usable caption: the definition, written out plainly."""
    counts = {"texts": Counter(), "images": Counter(), "unigrams": Counter(), "bigrams": Counter()}
    for sample in samples:
        text = " ".join(sample.get("txt", "").split())
        if not text:
            continue
        counts["texts"][text.lower()] += 1
        counts["images"][sample["jpg"]] += 1
        words = re.findall(r"[^\W_]+", text.lower())
        counts["unigrams"].update(words)
        counts["bigrams"].update(f"{a} {b}" for a, b in zip(words, words[1:]))
    return counts


def hashed(counter: Counter) -> dict[int, int]:
    keys = {blake64(k): v for k, v in counter.items()}
    assert len(keys) == len(counter), "64-bit hash collision in the test corpus"
    return keys


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("count-corpus")
    samples = corpus_samples()
    with ShardWriter(str(root / "wds"), prefix="shard", max_count=PER_SHARD) as writer:
        for sample in samples:
            writer.write(sample)
    (root / "wds" / "shard-99999.tar").write_bytes(b"this is not a tar archive" * 40)  # a corrupt shard
    return root, samples


@pytest.fixture(scope="module")
def local_store(corpus):
    root, _ = corpus
    return count_corpus(str(root / "wds"), root / "store-local", engine="local", count_images=True, partitions=8,
                        shards_per_task=2, spill_rows=500, progress=False)


def test_local_store_equals_naive_counters(corpus, local_store):
    _, samples = corpus
    expected = naive_counts(samples)
    for table, counter in expected.items():
        assert local_store.to_dict(table) == hashed(counter), table
    assert local_store.num_records == len(samples) + 1  # + the corrupt shard's error record
    assert local_store.num_texts == len(samples) - 2
    assert local_store.skipped == Counter({"corrupt_shard": 1, "empty_caption": 1, "missing_caption": 1})
    # Small spills forced several runs per task, so the reduce really merged partial counts.
    assert local_store.meta["map_tasks"] == 4 and local_store.num_partitions == 8
    for table in expected:
        assert sum(n for n in local_store.histogram(table).values()) == local_store.rows(table) == len(expected[table])
    # Lookups read only the partitions of the keys asked for; absent keys count 0.
    keys = np.array([blake64("a large purple heart"), blake64(b"image-5"), 12345], dtype=np.uint64)
    images = local_store.lookup("images", keys)
    assert images[1] == expected["images"][b"image-5"] and images[2] == 0


def test_in_memory_counts_hash_to_the_same_tables(corpus):
    root, samples = corpus
    counts = count_frequencies(load_pairs(str(root / "wds")), count_images=True, progress=False)
    expected = naive_counts(samples)
    for table, (keys, values) in counts.hashed_tables().items():
        assert dict(zip(keys.tolist(), values.tolist())) == hashed(expected[table]), table
    assert counts.skipped == Counter({"corrupt_shard": 1, "empty_caption": 1, "missing_caption": 1})


def test_ray_engine_equals_local_engine(corpus, local_store):
    pytest.importorskip("ray")
    import ray

    root, _ = corpus
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    try:
        store = count_corpus(str(root / "wds"), root / "store-ray", engine="ray", count_images=True, partitions=8,
                             shards_per_task=1, spill_rows=300, progress=False)
    finally:
        ray.shutdown()
    assert store.meta["engine"] == "ray" and store.meta["map_tasks"] == SHARDS + 1
    for table in ("texts", "images", "unigrams", "bigrams"):
        assert store.to_dict(table) == local_store.to_dict(table), table
        assert store.histogram(table) == local_store.histogram(table)
    for field in ("num_records", "num_texts", "skipped"):
        assert store.meta[field] == local_store.meta[field]
    assert not (root / "store-ray" / "_runs").exists()


def old_unigram_filter(captions: list[str], min_token_count: int, vocab_size: int | None, max_images_per_text: int):
    """The filter before the count store, restated: unigram Counter, most_common vocabulary."""
    tokens = Counter(w for c in captions for w in re.findall(r"[^\W_]+", c.lower()))
    texts = Counter(" ".join(c.lower().split()) for c in captions)
    vocab = {t for t, _ in tokens.most_common(vocab_size)} if vocab_size is not None and len(tokens) > vocab_size else None

    def check(caption: str) -> str | None:
        words = re.findall(r"[^\W_]+", caption.lower())
        if not 3 <= len(words) <= 20:
            return "caption_word_count"
        if texts[" ".join(caption.lower().split())] > max_images_per_text:
            return RULE_SHARED_TEXT
        if any(tokens[w] < min_token_count or (vocab is not None and w not in vocab) for w in words):
            return RULE_RARE_TOKEN
        return None

    return check, tokens


def test_unigram_rule_decides_as_the_old_filter(corpus, local_store):
    _, samples = corpus
    captions = [s["txt"] for s in samples if s.get("txt", "").strip()]
    memory = count_frequencies(({"text": c} for c in captions), progress=False)
    check, tokens = old_unigram_filter(captions, 5, None, 2)
    # A vocabulary size where the old filter's tie order does not matter: no tie across the boundary.
    ranked = [n for _, n in tokens.most_common()]
    vocab_size = next(i for i in range(len(ranked) // 2, len(ranked)) if ranked[i - 1] > ranked[i])
    check_vocab, _ = old_unigram_filter(captions, 1, vocab_size, 2)
    # Texts shared by more than 2 images: 900 captions repeat boilerplate up to 10 times.
    configs = [(FilterConfig(min_token_count=5, max_images_per_text=2, rare_ngrams=1), check),
               (FilterConfig(vocab_size=vocab_size, max_images_per_text=2, rare_ngrams=1), check_vocab)]
    for config, reference in configs:
        expected = [reference(c) for c in captions]
        assert Counter(expected)[RULE_RARE_TOKEN] > 10 and Counter(expected)[RULE_SHARED_TEXT] >= 20
        for counts in (memory, local_store):
            flt = AlignFilter(config, counts)
            assert [flt.check_text(c) for c in captions] == expected


def bigram_corpus() -> list[str]:
    return ["red circle on grey"] * 6 + ["blue square on white"] * 6 + ["red square on white"]


@pytest.fixture(scope="module")
def bigram_sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("bigrams")
    with ShardWriter(str(root / "wds"), max_count=4) as writer:
        for i, text in enumerate(bigram_corpus()):
            writer.write({"__key__": f"{i:03d}", "jpg": b"x", "txt": text})
    store = count_corpus(str(root / "wds"), root / "store", engine="local", partitions=2, progress=False)
    return count_frequencies(({"text": t} for t in bigram_corpus()), progress=False), store


def test_bigram_rule_on_a_hand_built_case(bigram_sources):
    # Every unigram of "red square on white" is seen 7+ times, but the bigram "red square" once.
    for counts in bigram_sources:
        by_count = AlignFilter(FilterConfig(min_token_count=2), counts)
        assert by_count.check_text("red square on white") == RULE_RARE_TOKEN
        assert by_count.check_text("red circle on grey") is None and by_count.check_text("blue square on white") is None
        assert AlignFilter(FilterConfig(min_token_count=2, rare_ngrams=1), counts).check_text("red square on white") is None
        # 7 unigrams + 7 bigrams; a vocabulary of the 13 most frequent leaves out only "red square" (count 1).
        by_vocab = AlignFilter(FilterConfig(vocab_size=13), counts)
        assert by_vocab.check_text("red square on white") == RULE_RARE_TOKEN
        assert by_vocab.check_text("blue square on white") is None
        assert AlignFilter(FilterConfig(vocab_size=14), counts).index.vocab is None  # nothing beyond the vocabulary
        assert AlignFilter(FilterConfig(vocab_size=13, rare_ngrams=1), counts).check_text("red square on white") is None


def test_vocabulary_ties_are_broken_by_key(bigram_sources):
    # Ranked by (count desc, key asc); a vocabulary of 5 cuts through the n-grams seen 6 times.
    grams = Counter()
    for text in bigram_corpus():
        words = text.split()
        grams.update(words + [f"{a} {b}" for a, b in zip(words, words[1:])])
    ranked = sorted(grams, key=lambda g: (-grams[g], blake64(g)))
    assert grams[ranked[4]] == grams[ranked[5]]  # the boundary is a tie
    expected = sorted(blake64(g) for g in ranked[:5])
    for counts in bigram_sources:
        assert AlignFilter(FilterConfig(vocab_size=5), counts).index.vocab.tolist() == expected


def test_store_filter_is_memory_mapped_cached_and_pickles_small(corpus, local_store):
    _, samples = corpus
    config = FilterConfig(min_token_count=3, min_image_side=None, max_texts_per_image=5)
    flt = AlignFilter(config, local_store)
    assert isinstance(flt.index.vocab, np.memmap) and isinstance(flt.index.crowded_images, np.memmap)
    again = AlignFilter(config, CountStore(local_store.path))
    assert again.index.paths == flt.index.paths  # reused from the cache
    blob = pickle.dumps(flt)
    assert len(blob) < 4096 + len(pickle.dumps(local_store.meta))  # paths travel, not arrays
    clone = pickle.loads(blob)
    expected = [flt.check(s.get("txt", "x"), 9, 9, s["jpg"], record=False) for s in samples]
    assert [clone.check(s.get("txt", "x"), 9, 9, s["jpg"], record=False) for s in samples] == expected
    images = naive_counts(samples)["images"]
    crowded = {s["jpg"] for s in samples if images[s["jpg"]] > 5}
    assert crowded and all(clone.check_image(9, 9, image) == "image_with_many_texts" for image in crowded)
    assert set(expected) <= set(RULES) | {None}


def test_json_counts_of_format_1_keep_the_unigram_rule(tmp_path, bigram_sources):
    memory, store = bigram_sources
    assert isinstance(load_counts(store.path), CountStore)
    old = {"format": "align_hf.frequency_counts/1", "num_texts": 13, "counted_images": False, "text_counts": {},
           "image_counts": {}, "token_counts": {k: v for k, v in memory.token_counts.items() if " " not in k}}
    (tmp_path / "old.json").write_text(json.dumps(old))
    loaded = load_counts(tmp_path / "old.json")
    assert isinstance(loaded, FrequencyCounts) and loaded.max_ngram == 1
    # Bigrams were not counted: the rule checks what it has, unigrams, instead of dropping everything.
    assert AlignFilter(FilterConfig(min_token_count=2), loaded).check_text("red square on white") is None
    with pytest.raises(ValueError, match="power of two"):
        count_corpus(store.path, tmp_path / "x", partitions=3)
