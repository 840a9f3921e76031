"""ALIGN filter rules on hand-built cases, and the streaming counting pass."""

import pytest

from align_hf.data import AlignFilter, FilterConfig, FrequencyCounts, count_frequencies, load_pairs
from align_hf.data.filtering import (
    RULE_ASPECT_RATIO,
    RULE_CAPTION_WORDS,
    RULE_IMAGE_SIDE,
    RULE_IMAGE_TEXTS,
    RULE_RARE_TOKEN,
    RULE_SHARED_TEXT,
    RULES,
    unigrams,
)
from data_samples import good_samples, write_samples

PAPER = FilterConfig.paper()


def words(n: int) -> str:
    return " ".join(f"w{i}" for i in range(n))


def test_unigrams():
    assert unigrams("IMG_2041.jpg, A  red-circle!") == ["img", "2041", "jpg", "a", "red", "circle"]


@pytest.mark.parametrize("n,expected", [(2, RULE_CAPTION_WORDS), (3, None), (20, None), (21, RULE_CAPTION_WORDS)])
def test_caption_word_bounds_are_inclusive(n, expected):
    assert AlignFilter(PAPER).check_text(words(n)) == expected


@pytest.mark.parametrize(
    "size,expected",
    [((200, 400), RULE_IMAGE_SIDE), ((201, 201), None), ((300, 900), RULE_ASPECT_RATIO), ((300, 899), None), ((899, 300), None), ((900, 300), RULE_ASPECT_RATIO)],
)
def test_image_side_and_aspect_ratio(size, expected):
    # Paper: keep shorter side > 200 and aspect ratio < 3.
    assert AlignFilter(PAPER).check_image(*size) == expected


def build_counts(texts, images=None) -> FrequencyCounts:
    counts = FrequencyCounts(counted_images=images is not None)
    for i, text in enumerate(texts):
        counts.add(text, None if images is None else images[i])
    return counts


def test_text_shared_by_more_than_ten_images_is_dropped():
    texts = ["click here to enlarge"] * 11 + ["Shared By  Ten images"] * 5 + ["shared by ten IMAGES"] * 5 + ["unique caption text"]
    flt = AlignFilter(PAPER, build_counts(texts))
    assert flt.check_text("click here to enlarge") == RULE_SHARED_TEXT
    # Case and spacing do not make a text unique: 10 copies is still allowed.
    assert flt.check_text("shared by ten images") is None
    assert flt.check_text("unique caption text") is None


def test_rare_tokens_by_count_and_by_vocab_size():
    texts = ["red circle on grey"] * 5 + ["red square on grey"] * 3 + ["IMG_2041.jpg photo here"]
    counts = build_counts(texts)
    by_count = AlignFilter(FilterConfig(min_token_count=4), counts)
    assert by_count.check_text("red circle on grey") is None
    assert by_count.check_text("red square on grey") == RULE_RARE_TOKEN  # "square" seen 3 times
    assert by_count.check_text("IMG_2041.jpg photo here") == RULE_RARE_TOKEN
    # vocab of the 4 most frequent unigrams: red, on, grey (8 each), circle (5).
    by_vocab = AlignFilter(FilterConfig(vocab_size=4, min_token_count=None, rare_ngrams=1), counts)
    assert by_vocab.check_text("red circle on grey") is None
    assert by_vocab.check_text("red square on grey") == RULE_RARE_TOKEN
    # Paper defaults on a small corpus: nothing is rare.
    assert AlignFilter(PAPER, counts).check_text("IMG_2041.jpg photo here") is None


def test_image_with_too_many_texts():
    image_a, image_b = b"image-a-bytes", b"image-b-bytes"
    texts = [f"caption number {i} x" for i in range(6)]
    counts = build_counts(texts, [image_a] * 4 + [image_b] * 2)
    flt = AlignFilter(FilterConfig(min_image_side=None, max_texts_per_image=3), counts)
    assert flt.check_image(10, 10, image_a) == RULE_IMAGE_TEXTS
    assert flt.check_image(10, 10, image_b) is None


def test_report_counts_first_failed_rule_and_adds_up():
    counts = build_counts(["boiler plate text"] * 12 + ["fine caption here"])
    flt = AlignFilter(PAPER, counts)
    cases = [
        ("fine caption here", 300, 300, None),
        ("boiler plate text", 300, 300, RULE_SHARED_TEXT),
        ("boiler plate text", 100, 100, RULE_SHARED_TEXT),  # text rules are checked first
        ("two words", 300, 300, RULE_CAPTION_WORDS),
        ("fine caption here", 100, 300, RULE_IMAGE_SIDE),
        ("fine caption here", 250, 1000, RULE_ASPECT_RATIO),
    ]
    for text, w, h, expected in cases:
        assert flt.check(text, w, h) == expected
    report = flt.report.as_dict()
    assert report["checked"] == 6 and report["kept"] == 1
    assert report["dropped"] == {rule: {RULE_SHARED_TEXT: 2, RULE_CAPTION_WORDS: 1, RULE_IMAGE_SIDE: 1, RULE_ASPECT_RATIO: 1}.get(rule, 0) for rule in RULES}
    assert report["kept"] + sum(report["dropped"].values()) == report["checked"]


def test_disabled_rules():
    flt = AlignFilter(FilterConfig(min_image_side=None, max_aspect_ratio=None, min_words=None, max_words=None))
    assert flt.check_text("x") is None
    assert flt.check_image(1, 50) is None


def test_streaming_count_pass_persists_and_merges(tmp_path):
    samples = good_samples(8)
    for s in samples[:5]:
        s["text"] = "the same boilerplate"
    write_samples(str(tmp_path / "wds"), samples, per_shard=3)
    counts = count_frequencies(load_pairs(str(tmp_path / "wds")), count_images=True, progress=False)
    expected = build_counts([s["text"] for s in samples], [s["data"] for s in samples])
    assert counts.num_texts == 8
    assert counts.text_counts == expected.text_counts
    assert counts.token_counts == expected.token_counts
    assert counts.image_counts == expected.image_counts

    path = tmp_path / "counts.json"
    counts.save(path)
    loaded = FrequencyCounts.load(path)
    assert loaded.num_texts == 8 and loaded.counted_images
    assert loaded.token_counts == counts.token_counts
    # Singletons are not stored; the filter treats absence as 1, so decisions are identical.
    config = FilterConfig(max_images_per_text=4, min_image_side=None)
    for s in samples:
        assert AlignFilter(config, loaded).check(s["text"], 9, 9, s["data"]) == AlignFilter(config, counts).check(s["text"], 9, 9, s["data"])
    assert AlignFilter(config, loaded).check_text("the same boilerplate") == RULE_SHARED_TEXT

    # Counting shards separately and merging equals counting everything at once.
    first = count_frequencies(load_pairs(str(tmp_path / "wds" / "shard-00000.tar")), progress=False)
    rest = count_frequencies(load_pairs(str(tmp_path / "wds" / "shard-0000[12].tar")), progress=False)
    merged = first.merge(rest)
    assert merged.text_counts == counts.text_counts and merged.num_texts == 8
    with pytest.raises(ValueError, match="not a frequency-counts file"):
        (tmp_path / "bad.json").write_text("{}")
        FrequencyCounts.load(tmp_path / "bad.json")
