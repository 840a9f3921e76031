"""The synthetic noisy alt-text corpus: determinism, splits, noise, filterability, vocabulary."""

import json
import re
from collections import Counter

import numpy as np
import pytest

from align_hf.data import (
    ZERO_SHOT_TEMPLATES,
    AlignFilter,
    FilterConfig,
    ImageTextPairs,
    SyntheticConfig,
    SyntheticCorpus,
    build_vocab,
    count_frequencies,
    load_manifest,
    load_pairs,
    make_tokenizer,
    read_split,
    unigrams,
    write_synthetic_corpus,
)
from align_hf.data.render import COLOUR_RGB
from align_hf.data.synthetic import BOILERPLATE, PLURALS, unseen_combinations

CORPUS = SyntheticCorpus(SyntheticConfig(num_train=600, zeroshot_per_class=2, num_retrieval=60))
TRAIN = [CORPUS.sample("train", i) for i in range(600)]


def test_samples_are_deterministic_and_sized():
    a, b = CORPUS.sample("train", 17), SyntheticCorpus(CORPUS.config).sample("train", 17)
    assert a.caption == b.caption and a.meta == b.meta
    np.testing.assert_array_equal(np.asarray(a.image), np.asarray(b.image))
    assert a.image.size == (64, 64) and a.image.mode == "RGB"
    other_seed = SyntheticCorpus(SyntheticConfig(seed=1)).sample("train", 17)
    assert not np.array_equal(np.asarray(other_seed.image), np.asarray(a.image))
    assert SyntheticCorpus(SyntheticConfig(image_size=96)).sample("zeroshot", 0).image.size == (96, 96)
    with pytest.raises(IndexError):
        CORPUS.sample("retrieval", 60)


def test_rendered_objects_match_their_description():
    # The centre pixel of every object has the object's colour (rendered without JPEG).
    corpus = SyntheticCorpus(SyntheticConfig(supersample=1))
    for index in range(40):
        scene = corpus.sample_scene("train", index)
        image = np.asarray(corpus.sample("train", index).image).astype(int)
        for obj in scene["objects"]:
            x, y = int(obj["x"] * 64), int(obj["y"] * 64)
            assert np.abs(image[y, x] - np.array(obj["rgb"])).max() <= 2, (index, obj)
            nearest = min(COLOUR_RGB, key=lambda c: np.abs(np.array(COLOUR_RGB[c]) - image[y, x]).sum())
            assert nearest == obj["colour"]


def test_class_lists_and_unseen_combinations():
    assert len(CORPUS.class_names) == 48 and CORPUS.class_names[0] == "red circle"
    assert len(CORPUS.unseen_class_names) == 8
    assert set(CORPUS.unseen_class_names) | set(CORPUS.seen_class_names) == set(CORPUS.class_names)
    # Every colour and every shape still occurs in training with other partners.
    unseen = unseen_combinations(CORPUS.config.colours, CORPUS.config.shapes)
    assert {c for c, _ in unseen} == set(CORPUS.config.colours)
    assert {s for _, s in unseen} == set(CORPUS.config.shapes)


def test_unseen_combinations_never_occur_in_training_images_or_captions():
    patterns = [re.compile(rf"\b{c} ({s}|{PLURALS[s]})\b") for c, s in CORPUS.unseen]
    for sample in TRAIN:
        for obj in sample.meta["objects"]:
            assert (obj["colour"], obj["shape"]) not in CORPUS.unseen
        assert not any(p.search(sample.caption) for p in patterns), sample.caption


def test_zeroshot_split_is_balanced_labelled_and_includes_unseen():
    samples = list(CORPUS.iter_split("zeroshot"))
    assert len(samples) == 96
    assert Counter(s.meta["label"] for s in samples) == Counter({name: 2 for name in CORPUS.class_names})
    for s in samples:
        (obj,) = s.meta["objects"]
        assert s.meta["label"] == f"{obj['colour']} {obj['shape']}"
        assert s.meta["unseen"] == (s.meta["label"] in CORPUS.unseen_class_names)
        assert CORPUS.class_names[s.meta["label_index"]] == s.meta["label"]


def test_zero_shot_templates_differ_from_training_captions():
    prompts = {t.format(name) for t in ZERO_SHOT_TEMPLATES for name in CORPUS.class_names}
    clean = [s.caption for s in TRAIN if s.meta["noise"] is None]
    assert not prompts & set(clean)
    # Not even the template's wording next to the class name occurs in a training caption.
    for template in ZERO_SHOT_TEMPLATES:
        prefix, suffix = (part.strip(" .") for part in template.split("{}"))
        for caption in clean:
            if prefix:
                assert not any(f"{prefix} {colour}" in caption for colour in CORPUS.config.colours), (template, caption)
            if suffix:
                assert not any(f"{shape} {suffix}" in caption for shape in CORPUS.config.shapes), (template, caption)


def test_retrieval_captions_describe_position_size_and_stay_within_20_words():
    for sample in CORPUS.iter_split("retrieval"):
        assert sample.caption == sample.meta["description"] == sample.meta["captions"][0]
        assert len(sample.meta["captions"]) == 2
        for caption in sample.meta["captions"]:
            assert len(unigrams(caption)) <= 20
            if sample.meta["kind"] != "group":
                for obj in sample.meta["objects"]:
                    assert obj["colour"] in caption and obj["shape"] in caption
                    words = {"center": ("center", "middle")}.get(obj["position"], obj["position"].split(" "))
                    assert any(w in caption for w in words), caption
    clean = [s for s in TRAIN if s.meta["noise"] is None]
    assert max(len(unigrams(s.caption)) for s in clean) <= 20
    assert min(len(unigrams(s.caption)) for s in clean) >= 3


def test_noise_share_and_kinds():
    kinds = Counter(s.meta["noise"] for s in TRAIN)
    noisy = len(TRAIN) - kinds[None]
    assert abs(noisy / len(TRAIN) - 0.2) < 0.06
    assert set(kinds) == {None, "unrelated", "filename", "partial", "wrong", "boilerplate"}
    assert all(s.caption in BOILERPLATE for s in TRAIN if s.meta["noise"] == "boilerplate")
    assert any(re.fullmatch(r"IMG_\d{4}\.jpg", s.caption) for s in TRAIN if s.meta["noise"] == "filename")
    for s in TRAIN:
        if s.meta["noise"] == "wrong":
            described = {(c, sh) for c in CORPUS.config.colours for sh in CORPUS.config.shapes if re.search(rf"\b{c} ({sh}|{PLURALS[sh]})\b", s.caption)}
            actual = {(o["colour"], o["shape"]) for o in s.meta["objects"]}
            assert described != actual
    framed = [s for s in TRAIN if s.meta["noise"] is None and re.match(r"(photo|picture|image|drawing) of ", s.caption)]
    assert 0.05 * len(TRAIN) < len(framed) < 0.35 * len(TRAIN)
    quiet = SyntheticCorpus(SyntheticConfig(noise=0.0))
    assert all(quiet.sample("train", i).meta["noise"] is None for i in range(100))


def test_vocab_covers_every_caption_and_prompt():
    vocab = CORPUS.vocab()
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] and len(set(vocab)) == len(vocab)
    tokenizer = make_tokenizer(vocab)
    texts = [s.caption for s in TRAIN] + [s.caption for s in CORPUS.iter_split("retrieval")]
    texts += [t.format(name) for t in ZERO_SHOT_TEMPLATES for name in CORPUS.class_names]
    unk = tokenizer.unk_token_id
    for text in texts:
        assert unk not in tokenizer(text)["input_ids"], text
    # Words of the corpus are single tokens; file names are spelled out, not [UNK].
    assert tokenizer.tokenize("a large purple heart") == ["a", "large", "purple", "heart"]
    assert tokenizer.tokenize("IMG_2041.jpg") == ["img", "_", "2", "##0", "##4", "##1", ".", "jpg"]
    assert build_vocab(["Hello, world"])[5:8] == [",", "hello", "world"]


def test_align_filter_removes_most_noise_and_little_else():
    # Captions only (no rendering), at the default corpus size so boilerplate counts are real.
    corpus = SyntheticCorpus(SyntheticConfig())
    train = list(corpus.iter_split("train", 0, 6000, render=False))
    flt = AlignFilter(FilterConfig.small_corpus(64), count_frequencies(({"text": s.caption} for s in train), progress=False))
    dropped = Counter()
    for s in train:
        dropped[s.meta["noise"]] += flt.check(s.caption, 64, 64) is not None
    total = Counter(s.meta["noise"] for s in train)
    assert dropped["boilerplate"] == total["boilerplate"] > 100  # each string shared by > 10 images
    assert dropped["filename"] >= 0.8 * total["filename"]  # rare numbers, too few words
    assert dropped[None] <= 0.01 * total[None]  # clean captions survive
    assert flt.report.dropped["rare_token"] > 0 and flt.report.dropped["caption_word_count"] > 0


def test_written_shards_load_through_load_pairs(tmp_path):
    config = SyntheticConfig(num_train=30, zeroshot_per_class=1, num_retrieval=7, shard_size=8)
    manifest = write_synthetic_corpus(tmp_path, config, progress=False)
    assert json.loads(json.dumps(manifest)) == load_manifest(tmp_path)
    assert manifest["splits"]["train"]["shards"] == [f"train/train-{i:05d}.tar" for i in range(4)]
    assert sum(manifest["train_caption_kinds"].values()) == 30
    corpus = SyntheticCorpus(SyntheticConfig.from_dict(manifest["config"]))
    assert corpus.class_names == manifest["class_names"] and corpus.config == config
    records = list(load_pairs(str(tmp_path / "train")))
    assert [r["key"] for r in records] == [f"train-{i:07d}" for i in range(30)]
    for record in records[:5]:
        sample = corpus.sample("train", int(record["key"].split("-")[1]))
        assert record["text"].decode() == sample.caption
        assert json.loads(record["meta"]) == sample.meta
    images = [s["image"] for s in ImageTextPairs(load_pairs(str(tmp_path / "zeroshot")))]
    assert len(images) == 48 and images[0].size == (64, 64)
    retrieval = read_split(tmp_path, "retrieval")
    assert [s.caption for s in retrieval] == [corpus.sample("retrieval", i).caption for i in range(7)]
    assert retrieval[3].meta == corpus.sample("retrieval", 3).meta
    # JPEG at quality 92: close to the rendered pixels.
    diff = np.abs(np.asarray(retrieval[3].image, dtype=int) - np.asarray(corpus.sample("retrieval", 3).image, dtype=int))
    assert diff.mean() < 4
    vocab = (tmp_path / "vocab.txt").read_text().split("\n")[:-1]
    assert vocab == corpus.vocab()


def test_parallel_writing_gives_identical_shards(tmp_path):
    config = SyntheticConfig(num_train=40, zeroshot_per_class=1, num_retrieval=10, shard_size=10)
    write_synthetic_corpus(tmp_path / "one", config, num_workers=1, progress=False, splits=["train"])
    write_synthetic_corpus(tmp_path / "two", config, num_workers=2, progress=False, splits=["train"])
    for i in range(4):
        name = f"train/train-{i:05d}.tar"
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_config_validation():
    with pytest.raises(ValueError, match="noise"):
        SyntheticConfig(noise=1.5)
    with pytest.raises(ValueError, match="unknown colours"):
        SyntheticConfig(colours=("red", "mauve"))
    small = SyntheticCorpus(SyntheticConfig(colours=("red", "blue", "green"), shapes=("circle", "square")))
    assert small.class_names == ["red circle", "red square", "blue circle", "blue square", "green circle", "green square"]
    assert len(small.unseen_class_names) == 3


def test_position_in_caption_controls_single_object_captions():
    positions = ("top", "bottom", "left", "right", "center", "middle", "corner")

    def single_clean_captions(corpus):
        out = []
        for i in range(400):
            sample = corpus.sample("train", i, render=False)
            if sample.meta["kind"] == "single" and sample.meta["noise"] is None:
                out.append(sample.caption)
        return out

    default = single_clean_captions(SyntheticCorpus(SyntheticConfig(noise=0.0)))
    none = single_clean_captions(SyntheticCorpus(SyntheticConfig(noise=0.0, position_in_caption=0.0)))
    assert len(default) == len(none) > 100
    has_position = lambda text: any(re.search(rf"\b{word}\b", text) for word in positions)  # noqa: E731
    # Style 3 ("... icon") never names the position; the other three always do by default.
    assert sum(map(has_position, default)) > 0.6 * len(default)
    assert not any(map(has_position, none))
    # Colour and shape stay in every caption.
    for text in none:
        assert re.search(r"\b(circle|square|triangle|star|cross|heart)\b", text)
