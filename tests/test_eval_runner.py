"""The one evaluation run: row readers, rank splitting, and the CLI functions running the trainer's code."""

from __future__ import annotations

import logging

import pytest
import torch

from align_hf.evaluation import classification_metrics, encode_images, evaluate_retrieval, evaluate_sets, evaluate_zero_shot
from align_hf.evaluation.eval_sets import RetrievalEvalSet, ZeroShotEvalSet
from align_hf.evaluation.fields import read_captions, read_label
from align_hf.evaluation.sharding import count_of_rank, in_row_order, rows_of_rank

# The tiny model and the one-thread setting of the evaluation tests.
from test_evaluation import one_thread, tiny  # noqa: E402,F401,F811  (pytest fixtures)


def test_read_captions():
    assert read_captions(" a cat ") == ["a cat"]
    assert read_captions(b"a dog\n") == ["a dog"]
    assert read_captions(["one", " ", None, 3, "two "]) == ["one", "two"]
    assert read_captions(None) == [] and read_captions("   ") == []


@pytest.mark.parametrize(
    "value, expected",
    [(1, 1), ("2", 2), (b" 0\n", 0), ("dog", 1), (3, None), (-1, None), (True, None), ("bird", None), (None, None),
     (1.0, None)],
)
def test_read_label(value, expected):
    assert read_label(value, {"cat": 0, "dog": 1, "fox": 2}, 3) == expected


def test_rows_of_rank_cover_every_row_once_and_come_back_in_order():
    rows = [f"r{i}" for i in range(7)]
    parts = [list(rows_of_rank(iter(rows), rank, 3)) for rank in range(3)]
    assert sorted(i for part in parts for i, _ in part) == list(range(7))
    assert [len(p) for p in parts] == [count_of_rank(7, rank, 3) for rank in range(3)] == [3, 2, 2]
    assert count_of_rank(None, 0, 2) is None
    embeddings = [(list(idx for idx, _ in part), torch.tensor([[float(i)] for i, _ in part])) for part in parts]
    order, matrix = in_row_order(embeddings, dim=1)
    assert order == list(range(7)) and matrix[:, 0].tolist() == [float(i) for i in range(7)]
    assert in_row_order([([], torch.zeros(0, 4))], dim=4)[1].shape == (0, 4)


@pytest.fixture(scope="module")
def corpus():
    from align_hf.data.synthetic import SyntheticConfig, SyntheticCorpus

    return SyntheticCorpus(SyntheticConfig(zeroshot_per_class=1, num_retrieval=8))


def _zero_shot_rows(corpus, n=10):
    return [{"image": corpus.sample("zeroshot", i).image, "label": corpus.sample("zeroshot", i).meta["label"]}
            for i in range(n)]


def _retrieval_rows(corpus, n=8):
    return [{"image": s.image, "caption": s.meta["captions"]} for s in (corpus.sample("retrieval", i) for i in range(n))]


def test_cli_functions_give_the_trainer_metrics(tiny, corpus):
    model, processor = tiny
    names, templates = corpus.class_names[:10], ["a photo of a {}."]
    zs_rows, rt_rows = _zero_shot_rows(corpus), _retrieval_rows(corpus)
    sets = [RetrievalEvalSet(rt_rows, caption_column="caption", ks=(1, 5)),
            ZeroShotEvalSet(zs_rows, names, templates=templates)]
    trainer_metrics = evaluate_sets(model, processor, sets, batch_size=3)
    zero_shot = evaluate_zero_shot(model, processor, zs_rows, names, templates, batch_size=4, progress=False)
    retrieval = evaluate_retrieval(model, processor, rt_rows, ks=(1, 5), batch_size=4, progress=False)
    for key, value in zero_shot.items():
        assert trainer_metrics[f"zero_shot_{key}"] == pytest.approx(value, abs=1e-6), key
    for key, value in retrieval.items():
        assert trainer_metrics[f"retrieval_{key}"] == pytest.approx(value, abs=1e-6), key
    assert zero_shot["chance"] == pytest.approx(1 / 10)


def test_limit_and_streamed_rows(tiny, corpus):
    model, processor = tiny
    rows = _retrieval_rows(corpus)
    first = evaluate_retrieval(model, processor, rows[:5], ks=(1, 3), progress=False)
    assert evaluate_retrieval(model, processor, rows, ks=(1, 3), limit=5, progress=False) == first
    assert evaluate_retrieval(model, processor, iter(rows), ks=(1, 3), limit=5, progress=False) == first
    names = corpus.class_names[:10]
    zs_rows = _zero_shot_rows(corpus)
    limited = evaluate_zero_shot(model, processor, (r for r in zs_rows), names, ["{}"], limit=4, progress=False)
    assert limited == evaluate_zero_shot(model, processor, zs_rows[:4], names, ["{}"], progress=False)
    assert limited["num_samples"] == 4


def test_zero_shot_cli_uses_the_class_embedding_cache(tiny, corpus, tmp_path, monkeypatch):
    import align_hf.evaluation.zero_shot as zs

    model, processor = tiny
    names, rows = corpus.class_names[:10], _zero_shot_rows(corpus)
    first = evaluate_zero_shot(model, processor, rows, names, "short", cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("zero_shot_*.pt"))) == 1

    def no_encoding(*args, **kwargs):
        raise AssertionError("class embeddings should come from the cache")

    monkeypatch.setattr(zs, "encode_texts", no_encoding)
    assert evaluate_zero_shot(model, processor, rows, names, "short", cache_dir=tmp_path, progress=False) == first


def test_zero_shot_set_takes_class_embeddings_from_a_provider(tiny, corpus):
    model, processor = tiny
    rows = _zero_shot_rows(corpus, 6)
    names = corpus.class_names[:6]
    weights = torch.nn.functional.normalize(torch.randn(6, model.config.projection_dim, generator=torch.Generator().manual_seed(0)), dim=1)
    spec = ZeroShotEvalSet(rows, names, templates=["{}"], class_embeddings=lambda: weights)
    got = evaluate_sets(model, processor, [spec])
    images = encode_images(model, processor, [r["image"] for r in rows], progress=False).embeddings
    expected = classification_metrics(images @ weights.T, torch.tensor([names.index(r["label"]) for r in rows]))
    assert got["zero_shot_top1"] == pytest.approx(expected["top1"])
    assert got["zero_shot_mean_per_class_recall"] == pytest.approx(expected["mean_per_class_recall"])
    wrong = ZeroShotEvalSet(rows, names, templates=["{}"], class_embeddings=lambda: weights[:3])
    with pytest.raises(ValueError, match="class embeddings have shape"):
        evaluate_sets(model, processor, [wrong])


def test_skipped_rows_are_counted_and_logged(tiny, corpus, caplog):
    model, processor = tiny
    names = corpus.class_names[:10]
    rows = _zero_shot_rows(corpus, 4) + [{"image": b"broken", "label": names[0]}, {"image": None, "label": "nope"}]
    with caplog.at_level(logging.WARNING):
        m = evaluate_zero_shot(model, processor, rows, names, ["{}"], progress=False)
    assert m["skipped"] == 2 and m["num_samples"] == 4
    assert "1 rows without a usable label in 'label'" in caplog.text
    rows = _retrieval_rows(corpus, 3) + [{"image": corpus.sample("retrieval", 0).image, "caption": []}]
    with caplog.at_level(logging.WARNING):
        m = evaluate_retrieval(model, processor, rows, progress=False)
    assert m["skipped"] == 1 and m["num_images"] == 3
    assert "1 rows without a caption in 'caption'" in caplog.text
    with pytest.raises(ValueError, match="nothing to evaluate: 1 unreadable images, 0 rows without a caption"):
        evaluate_retrieval(model, processor, [{"image": b"broken", "caption": "x"}], progress=False)
