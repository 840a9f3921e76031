"""Sharded on-disk index built from an embedding folder: it must answer like one flat index."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from align_hf.search import CrossModalIndex, Searcher, compose_query
from align_hf.search.emb_folder import read_metadata, write_manifest, write_part
from align_hf.search.sharded import build_sharded, plan_index
from align_hf.search.sharded_search import exact_search, recall_at_k

DIM, PARTS, ROWS = 32, 3, 300


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, seed: int, centres: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return _unit(centres[rng.integers(0, len(centres), n)] + 0.5 * rng.standard_normal((n, centres.shape[1])))


@pytest.fixture(scope="module")
def emb(tmp_path_factory):
    """3 parts x 300 clustered image+text vectors (d=32), every third caption empty."""
    root = tmp_path_factory.mktemp("emb")
    centres = np.random.default_rng(0).standard_normal((20, DIM))
    parts, images, texts = [], [], []
    for p in range(PARTS):
        image, text = clustered(ROWS, 10 + p, centres), clustered(ROWS, 20 + p, centres)
        captions = ["" if (p * ROWS + r) % 3 == 0 else f"caption {p * ROWS + r}" for r in range(ROWS)]
        text[[c == "" for c in captions]] = 0  # the folder contract: no caption, all-zero text vector
        parts.append(write_part(root, p, p * ROWS, image=image, text=text, captions=captions, source=f"s{p}.tar"))
        images.append(image)
        texts.append(text)
    write_manifest(root, parts, DIM, "float32", model={"model_id": "m", "embedding_dim": DIM, "probe_embedding": []})
    return root, np.concatenate(images), np.concatenate(texts), centres


def flat_top(base: np.ndarray, queries: np.ndarray, k: int, keep: np.ndarray | None = None) -> np.ndarray:
    scores = queries.astype(np.float64) @ base.T.astype(np.float64)
    if keep is not None:
        scores[:, ~keep] = -np.inf
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def test_sharded_ivf_flat_with_exhaustive_probing_equals_flat_search(emb, tmp_path):
    root, images, texts, centres = emb
    out = tmp_path / "idx"
    built = build_sharded(root, out, index_type="ivf_flat", nlist=8, use_ray=False, workers=2, progress=False)
    assert built["build"]["image"]["shards_total"] == PARTS and not (out / "work").exists()
    index = CrossModalIndex.load(out)
    queries = clustered(50, 99, centres)
    for kind, base, keep in (("image", images, None), ("text", texts, np.arange(len(texts)) % 3 != 0)):
        coll = index[kind]
        coll.set_search_params(nprobe=8)  # = nlist: every list visited
        _, ids = coll.search_ids(queries, 10)
        truth = flat_top(base, queries, 10, keep)
        assert recall_at_k(ids, truth, 10) == 1.0, kind
        assert len(coll) == (len(base) if keep is None else int(keep.sum()))
    # fewer lists visited: still a good answer, not an exact one (so the check above can fail)
    index["image"].set_search_params(nprobe=1)
    _, ids = index["image"].search_ids(queries, 10)
    assert 0.3 < recall_at_k(ids, flat_top(images, queries, 10), 10) < 1.0


def test_sharded_pq_reranked_is_close_to_flat_and_exact_search_streams(emb, tmp_path):
    root, images, _, centres = emb
    out = tmp_path / "pq"
    build_sharded(root, out, index_type="ivf_pq", nlist=4, pq_bytes=8, use_ray=False, kinds=["image"], progress=False)
    coll = CrossModalIndex.load(out)["image"]
    queries = clustered(50, 98, centres)
    truth = flat_top(images, queries, 10)
    streamed_scores, streamed = exact_search(root, queries, k=10, chunk=128)
    np.testing.assert_array_equal(streamed, truth)
    coll.set_search_params(nprobe=4, rerank=0)
    raw = recall_at_k(coll.search_ids(queries, 10)[1], truth)
    coll.set_search_params(rerank=20)
    scores, ids = coll.search_ids(queries, 10)
    reranked = recall_at_k(ids, truth)
    assert reranked >= 0.9 and reranked > raw
    # re-ranked scores are exact inner products
    np.testing.assert_allclose(scores[:, 0], np.einsum("qd,qd->q", queries, images[ids[:, 0]]), atol=1e-5)


def test_exact_search_skips_captionless_text_rows(emb):
    root, _, texts, centres = emb
    keep = np.any(texts != 0, axis=1)
    queries = clustered(5, 7, centres)
    scores, ids = exact_search(root, queries, k=len(texts), kind="text", chunk=100)
    # Every query finds exactly the captioned rows; the k - 600 slots left over stay empty.
    assert ((ids >= 0).sum(axis=1) == keep.sum()).all() and np.isneginf(scores[ids < 0]).all()
    assert not np.isin(ids, np.flatnonzero(~keep)).any()
    for row, want in zip(ids[:, :10], flat_top(texts, queries, 10, keep)):
        assert set(row.tolist()) == set(want.tolist())


def test_small_collections_stay_flat_with_global_ids(emb, tmp_path):
    root, images, _, _ = emb
    assert plan_index(900, DIM)["index_type"] == "flat"
    assert plan_index(10_000_000, 640, memory_budget=8 << 30)["index_type"] == "ivf_pq"
    out = tmp_path / "flat"
    build_sharded(root, out, use_ray=False, kinds=["image"], progress=False)
    coll = CrossModalIndex.load(out)["image"]
    assert coll.info["index_type"] == "flat"
    scores, ids = coll.search_ids(images[[5, 450, 899]], 1)
    assert ids[:, 0].tolist() == [5, 450, 899]


def test_resume_skips_finished_shards(emb, tmp_path, monkeypatch):
    from align_hf.search import sharded

    root, images, _, centres = emb
    out = tmp_path / "resume"
    real = sharded.add_part
    calls, kill = [], [True]

    def flaky(trained, emb_dir, kind, entry, out_path, threads=1):
        if entry["part"] == 2 and kill and kill.pop():
            raise RuntimeError("killed")  # the build dies while adding the last part
        calls.append(entry["part"])
        return real(trained, emb_dir, kind, entry, out_path, threads)

    monkeypatch.setattr(sharded, "add_part", flaky)
    with pytest.raises(RuntimeError, match="killed"):
        build_sharded(root, out, index_type="ivf_flat", nlist=8, use_ray=False, workers=1, kinds=["image"],
                      progress=False)
    done_before = sorted(p.name for p in (out / "work").glob("image-shard-*.faiss"))
    assert done_before == ["image-shard-00000.faiss", "image-shard-00001.faiss"]
    assert calls == [0, 1]
    calls.clear()
    built = build_sharded(root, out, index_type="ivf_flat", nlist=8, use_ray=False, workers=1, kinds=["image"],
                          progress=False)
    assert calls == [2] and built["build"]["image"]["shards_added"] == 1
    coll = CrossModalIndex.load(out)["image"]
    coll.set_search_params(nprobe=8)
    queries = clustered(20, 97, centres)
    assert recall_at_k(coll.search_ids(queries, 10)[1], flat_top(images, queries, 10)) == 1.0
    # a finished index is not rebuilt
    again = build_sharded(root, out, index_type="ivf_flat", nlist=8, use_ray=False, kinds=["image"], progress=False)
    assert again["build"]["image"]["resumed"]


def test_ray_local_build_equals_thread_build(emb, tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    from align_hf.data import counting

    root, _, _, centres = emb
    started = []
    real_init = counting.init_ray
    monkeypatch.setattr(counting, "init_ray", lambda *a, **k: started.append(real_init(*a, **k)) or started[-1])
    built = {}
    for name, use_ray in (("threads", False), ("ray", True)):
        build_sharded(root, tmp_path / name, index_type="ivf_flat", nlist=8, use_ray=use_ray, workers=2,
                      kinds=["image"], progress=False)
        coll = CrossModalIndex.load(tmp_path / name)["image"]
        coll.set_search_params(nprobe=3)
        built[name] = coll.search_ids(clustered(30, 96, centres), 10)
    assert started == [True]  # the Ray build started a local Ray ...
    assert not ray.is_initialized()  # ... and shut it down when it was done
    np.testing.assert_array_equal(built["ray"][1], built["threads"][1])
    np.testing.assert_allclose(built["ray"][0], built["threads"][0], atol=1e-6)


def test_searcher_composed_query_and_lazy_metadata(emb, tmp_path, monkeypatch):
    from align_hf.search import sharded_search

    root, images, texts, _ = emb
    out = tmp_path / "idx"
    build_sharded(root, out, index_type="ivf_flat", nlist=8, use_ray=False, progress=False)
    moved = tmp_path / "moved"  # the .ivfdata is found beside the index wherever it lives
    shutil.copytree(out, moved)
    shutil.rmtree(out)
    index = CrossModalIndex.load(moved)
    assert json.loads((moved / "manifest.json").read_text())["layout"] == "sharded"

    searcher = Searcher.__new__(Searcher)  # no model: queries are given as embeddings
    searcher.index = index
    searcher.set_search_params(nprobe=8)
    image, text, minus = images[7], texts[11], texts[400]
    query = compose_query(image=image, texts=text[None], minus=minus[None])
    want = flat_top(images, query[None], 5)[0]

    opened = []
    real = sharded_search.EmbeddingFolder.read_metadata

    def counting(folder, ids):
        opened.append(sorted(int(i) for i in ids))
        return real(folder, ids)

    monkeypatch.setattr(sharded_search.EmbeddingFolder, "read_metadata", counting)
    hits = searcher.search_vector(query, target="image", k=5)
    assert [h.id for h in hits] == want.tolist()
    assert opened == [sorted(want.tolist())]  # metadata read for the hits only
    for hit in hits:
        assert hit.metadata["id"] == hit.id and hit.metadata["path"].endswith(f"{hit.id:09d}.jpg")
        assert hit.metadata["source"] == f"s{hit.id // ROWS}.tar"
    text_hits = searcher.search_vector(torch.from_numpy(image), target="text", k=3)
    assert all(h.id % 3 != 0 and h.metadata["text"] == f"caption {h.id}" for h in text_hits)
    assert read_metadata(root, [899, 0])[0]["key"] == f"{899:09d}"
    # The demo's gallery slices the collection's metadata as it slices the flat index's row list.
    first = searcher.index["image"].metadata[:3]
    assert [row["id"] for row in first] == [0, 1, 2] and searcher.index["image"].metadata[:0] == []


def test_cli_index_build_from_embeddings(emb, tmp_path, capsys):
    from align_hf.cli import main

    root, images, _, _ = emb
    out = tmp_path / "cli"
    rc = main(["index", "build", "--from-embeddings", str(root), "--output", str(out), "--index-type", "ivf_flat",
               "--nlist", "8", "--no-ray", "--no-progress", "--target-recall", "0.95"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "image: 900 indexed (ivf_flat" in printed and "text: 600 indexed" in printed
    # tuning picked the smallest power-of-two nprobe meeting the target and saved it
    manifest = json.loads((out / "manifest.json").read_text())
    nprobe = manifest["collections"]["image"]["search_params"]["nprobe"]
    coll = CrossModalIndex.load(out)["image"]
    assert coll.nprobe == nprobe and f"nprobe={nprobe}: recall@10=" in printed
    queries = images[::9]
    truth = flat_top(images, queries, 11)
    def recall(nprobe):
        coll.set_search_params(nprobe=nprobe)
        found = coll.search_ids(queries, 11)[1]
        return recall_at_k(found[:, 1:], truth[:, 1:], 10)
    assert recall(nprobe) >= 0.9
    coll.set_search_params(nprobe=8)
    assert coll.search_ids(images[:2], 1)[1][:, 0].tolist() == [0, 1]


@pytest.fixture(scope="module")
def tiny():
    from align_hf.testing import tiny_model, tiny_processor

    return tiny_model(), tiny_processor()


def test_cli_search_on_a_sharded_index_matches_brute_force(tiny, saved_model, tmp_path, capsys):
    from align_hf.cli import main
    from align_hf.evaluation.encoding import encode_texts
    from align_hf.search import model_signature

    model, processor = tiny
    signature = {**model_signature(model, processor), "model_id": str(saved_model)}
    dim = signature["embedding_dim"]
    words = ["red", "blue", "gray", "brown", "green", "white", "purple", "orange", "pink", "yellow", "black", "dotted"]
    things = ["cat", "dog", "car", "circle", "square", "star", "ring", "triangle", "cross", "picture"]
    captions = [f"{w} {t}" for w in words for t in things]  # 120 distinct short captions (tiny max length 16)
    texts = encode_texts(model, processor, captions, progress=False).numpy()
    images = _unit(np.random.default_rng(3).standard_normal((120, dim)))
    root = tmp_path / "emb"
    parts = [write_part(root, p, 40 * p, image=images[40 * p : 40 * p + 40], text=texts[40 * p : 40 * p + 40],
                        captions=captions[40 * p : 40 * p + 40]) for p in range(3)]
    write_manifest(root, parts, dim, "float32", model=signature)
    out = tmp_path / "idx"
    assert main(["index", "build", "--from-embeddings", str(root), "--output", str(out), "--index-type", "ivf_flat",
                 "--nlist", "4", "--no-ray", "--no-progress"]) == 0
    capsys.readouterr()
    query = captions[57]
    assert main(["search", "--index", str(out), "--text", query, "--target", "text", "--nprobe", "4", "--json",
                 "--k", "5"]) == 0
    hits = json.loads(capsys.readouterr().out)
    want = flat_top(texts, encode_texts(model, processor, [query], progress=False).numpy(), 5)[0]
    assert [h["id"] for h in hits] == want.tolist() and hits[0]["metadata"]["text"] == query
    assert main(["search", "--index", str(out), "--text", query, "--nprobe", "4", "--k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and lines[0].strip().startswith("1  +")


def test_missing_embedding_folder_or_unfinished_build_gives_clear_errors(emb, tmp_path):
    root, _, _, _ = emb
    copy = tmp_path / "emb"
    shutil.copytree(root, copy)
    out = tmp_path / "idx"
    build_sharded(copy, out, index_type="flat", use_ray=False, kinds=["image"], progress=False)
    shutil.rmtree(copy)
    with pytest.raises(FileNotFoundError, match="embedding folder"):
        CrossModalIndex.load(out)
    unfinished = tmp_path / "unfinished"
    shutil.copytree(root, unfinished)
    manifest = json.loads((unfinished / "align_manifest.json").read_text())
    (unfinished / "align_manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(ValueError, match="unfinished"):
        build_sharded(unfinished, tmp_path / "x", use_ray=False, progress=False)


def test_folder_from_index_embed_answers_like_index_build(tiny, tmp_path):
    """End to end with the real embedding writer: same hits as the one-process `index build`."""
    from align_hf.data.synthetic import SyntheticConfig, SyntheticCorpus
    from align_hf.search import embed_to_folder

    model, processor = tiny
    corpus = SyntheticCorpus(SyntheticConfig())
    images = tmp_path / "images"
    images.mkdir()
    for i in range(12):
        corpus.sample("retrieval", i).image.save(images / f"img{i:02d}.png")
    (images / "broken.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    emb_dir = tmp_path / "emb"
    embed_to_folder(model, processor, str(images), emb_dir, batch_size=4, progress=False)
    simple = CrossModalIndex.build(model, processor, tmp_path / "simple", images=images, batch_size=4, progress=False)
    build_sharded(emb_dir, tmp_path / "sharded", index_type="ivf_flat", nlist=2, use_ray=False, progress=False)
    sharded = Searcher(tmp_path / "sharded", model, processor)  # the folder's model signature is checked
    sharded.set_search_params(nprobe=2)
    reference = Searcher(simple, model, processor)
    for query in (dict(image=str(images / "img03.png")), dict(image=str(images / "img05.png"), text="a red circle")):
        got = sharded.search(**query, k=5)
        want = reference.search(**query, k=5)
        assert [h.metadata["path"].rsplit("/", 1)[-1] for h in got] == [h.metadata["path"].rsplit("/", 1)[-1] for h in want]
        assert [h.score for h in got] == pytest.approx([h.score for h in want], abs=1e-4)
