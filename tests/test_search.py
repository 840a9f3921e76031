"""FAISS indexes, persistence, cross-modal queries and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from align_hf import search
from align_hf.search import index as search_index
from align_hf.search import (
    CrossModalIndex,
    ModelMismatchError,
    Searcher,
    VectorCollection,
    build_faiss_index,
    choose_index_type,
    compose_query,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # OpenMP threads spin-wait: on a busy 2-core runner two of them run tiny models ~20x slower than one.
    import faiss

    before = faiss.omp_get_max_threads(), torch.get_num_threads()
    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before[0])
    torch.set_num_threads(before[1])


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, dim: int = 64, clusters: int = 50, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around cluster centres (as real embeddings are), plus 100 queries from the same law."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))

    def draw(m: int) -> np.ndarray:
        return _unit(centres[rng.integers(0, clusters, m)] + 0.6 * rng.standard_normal((m, dim)))

    return draw(n), draw(100)


def exact_top_k(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(queries.astype(np.float64) @ base.T.astype(np.float64)), axis=1)[:, :k]


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


# ------------------------------------------------------------------------------------------
# FAISS indexes on hand-made vectors
# ------------------------------------------------------------------------------------------


def test_flat_index_is_exact():
    base, queries = clustered(2000)
    index, kind, params = build_faiss_index(base, "auto")
    assert kind == "flat" and params == {}
    scores, ids = index.search(queries, 10)
    np.testing.assert_array_equal(ids, exact_top_k(base, queries, 10))
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ base.T, ids, 1), atol=1e-5)


def test_hnsw_agrees_with_exact_search():
    base, queries = clustered(5000)
    index, kind, params = build_faiss_index(base, "hnsw")
    assert kind == "hnsw" and params["ef_search"] == search.HNSW_EF_SEARCH
    _, ids = index.search(queries, 10)
    # Stated recall: >= 0.95 of the exact top-10 at the default efSearch on this seeded set.
    assert recall_at_k(ids, exact_top_k(base, queries, 10)) >= 0.95


def test_ivf_with_refinement_agrees_with_exact_search():
    base, queries = clustered(4000, dim=32)
    index, kind, params = build_faiss_index(base, "ivf", nlist=16)
    assert kind == "ivf" and params["k_factor"] > 1
    search.set_search_params(index, nprobe=4)
    _, ids = index.search(queries, 10)
    assert recall_at_k(ids, exact_top_k(base, queries, 10)) >= 0.9
    with pytest.raises(ValueError, match="IVF needs at least"):
        build_faiss_index(base[:100], "ivf")


def test_set_search_params_applies_only_the_knobs_an_index_has():
    import faiss

    flat = faiss.IndexFlatIP(8)
    search.set_search_params(flat, ef_search=50, nprobe=4, k_factor=2.0)  # none apply: no error
    hnsw = faiss.IndexIDMap2(faiss.IndexHNSWFlat(8, 16, faiss.METRIC_INNER_PRODUCT))
    search.set_search_params(hnsw, ef_search=50, nprobe=4)
    assert faiss.downcast_index(hnsw.index).hnsw.efSearch == 50
    ivf = faiss.index_factory(8, "IVF16_HNSW32,Flat", faiss.METRIC_INNER_PRODUCT)
    search.set_search_params(ivf, nprobe=40, ef_search=7)
    quantizer = faiss.downcast_index(faiss.extract_index_ivf(ivf).quantizer)
    assert faiss.extract_index_ivf(ivf).nprobe == 40 and quantizer.hnsw.efSearch == 80  # 2 x nprobe
    search.set_search_params(ivf, quantizer_ef=300)
    assert quantizer.hnsw.efSearch == 300


def test_choose_index_type_by_size_and_memory():
    assert choose_index_type(10_000, 640) == "flat"
    n = 1_000_000
    assert choose_index_type(n, 640, memory_budget=8 << 30) == "hnsw"
    assert choose_index_type(n, 640, memory_budget=1 << 30) == "ivf"  # HNSW needs ~2.8 GB, IVF-PQ ~0.7 GB
    assert search.index_memory_bytes("ivf", n, 640) < (1 << 30) < search.index_memory_bytes("hnsw", n, 640)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_collection_save_and_memory_mapped_load_round_trip(tmp_path, kind):
    base, queries = clustered(3000)
    index, chosen, params = build_faiss_index(base, kind, nlist=16)
    meta = [{"path": f"img{i}.jpg"} for i in range(len(base))]
    coll = VectorCollection("image", index, meta, base, {"index_type": chosen, "search_params": params})
    coll.save(tmp_path)
    loaded = VectorCollection.load(tmp_path, "image", coll.info, mmap=True)
    assert isinstance(loaded.embeddings, np.memmap)
    np.testing.assert_array_equal(loaded.embeddings, base)
    before, after = coll.search(queries, 5), loaded.search(queries, 5)
    assert [[h.id for h in row] for row in before] == [[h.id for h in row] for row in after]
    hit = after[0][0]
    assert hit.metadata == {"path": f"img{hit.id}.jpg"} and hit.kind == "image" and hit.rank == 0
    assert hit.score == pytest.approx(float(queries[0] @ base[hit.id]), abs=0.02)  # ivf scores are SQ8-approximate


def test_collection_rejects_bad_queries_and_mismatched_metadata():
    base, _ = clustered(100)
    index, _, _ = build_faiss_index(base, "flat")
    with pytest.raises(ValueError, match="metadata records"):
        VectorCollection("image", index, [{}] * 99)
    coll = VectorCollection("image", index, [{}] * 100)
    with pytest.raises(ValueError, match="dimension 32 but the image index has 64"):
        coll.search(np.ones((1, 32), np.float32))
    assert len(coll.search(base[:1], k=500)[0]) == 100  # k larger than the collection
    with pytest.raises(ValueError, match="nothing to index"):
        build_faiss_index(np.zeros((0, 64), np.float32))
    with pytest.raises(ValueError, match="index_type"):
        build_faiss_index(base, "annoy")


def test_compose_query_weights_and_subtraction():
    e1, e2, e3 = np.eye(3, dtype=np.float32)
    q = compose_query(image=e1, texts=e2[None])  # paper default: text x2, image x1
    np.testing.assert_allclose(q, np.array([1, 2, 0]) / np.sqrt(5), atol=1e-6)
    q = compose_query(image=e1, texts=np.stack([e2, e3]), minus=e1[None], image_weight=3.0, text_weight=1.0)
    np.testing.assert_allclose(q, np.array([2, 1, 1]) / np.sqrt(6), atol=1e-6)
    np.testing.assert_allclose(compose_query(texts=torch.tensor(e3)[None]), e3)
    with pytest.raises(ValueError, match="empty query"):
        compose_query()
    with pytest.raises(ValueError, match="cancel out"):
        compose_query(texts=e2[None], minus=e2[None])


# ------------------------------------------------------------------------------------------
# End to end with a tiny model on synthetic-corpus images
# ------------------------------------------------------------------------------------------

TEXTS = ["a red circle", "a blue star", "a green square on a white background", "two yellow triangles", ""]


@pytest.fixture(scope="module")
def tiny():
    from align_hf.testing import tiny_model, tiny_processor

    return tiny_model(), tiny_processor()


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    from align_hf.data.synthetic import SyntheticConfig, SyntheticCorpus

    corpus = SyntheticCorpus(SyntheticConfig())
    root = tmp_path_factory.mktemp("images")
    (root / "sub").mkdir()
    for i in range(14):
        corpus.sample("retrieval", i).image.save(root / ("sub" if i % 2 else ".") / f"img{i:02d}.png")
    (root / "broken.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    (root / "notes.txt").write_text("not an image, ignored by extension")
    return root


@pytest.fixture(scope="module")
def built(tiny, image_folder, tmp_path_factory):
    model, processor = tiny
    out = tmp_path_factory.mktemp("index")
    index = CrossModalIndex.build(
        model, processor, out, images=image_folder, texts=TEXTS, batch_size=4, chunk_size=5, progress=False
    )
    return index, out


def _embed(model, processor, texts=(), images=()):
    from align_hf.image_io import open_image as load_image

    with torch.no_grad():
        t = [model.encode_text(**processor(text=[x], return_tensors="pt", padding=False))[0] for x in texts]
        i = [
            model.encode_image(processor(images=[load_image(x)], return_tensors="pt")["pixel_values"])[0]
            for x in images
        ]
    return [x.numpy() for x in t], [x.numpy() for x in i]


def test_build_writes_index_with_metadata_and_skips_unreadable_files(built, image_folder):
    index, out = built
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["embedding_dim"] == 128 and len(manifest["probe_embedding"]) == 128
    images = manifest["collections"]["image"]
    assert images["count"] == 14 and images["index_type"] == "flat"
    assert [s["item"]["path"] for s in images["skipped"]] == [str(image_folder / "broken.jpg")]
    assert manifest["collections"]["text"]["count"] == 4  # the empty text is dropped
    assert not (out / "partial").exists()
    paths = [m["path"] for m in index["image"].metadata]
    assert paths == sorted(str(p) for p in image_folder.rglob("*.png"))
    assert [m["text"] for m in index["text"].metadata] == TEXTS[:4]


def test_queries_match_brute_force_over_reference_embeddings(built, tiny):
    model, processor = tiny
    index, out = built
    searcher = Searcher(out, model, processor)  # loads memory-mapped
    paths = [m["path"] for m in index["image"].metadata]
    texts, images = _embed(model, processor, texts=TEXTS[:4] + ["snow"], images=paths)
    images = np.stack(images)
    query_image = paths[3]

    def expect(query, base, k):
        order = np.argsort(-(base @ query))[:k]
        return order.tolist(), (base @ query)[order]

    # text -> image
    hits = searcher.search(text="a blue star", k=5)
    ids, scores = expect(texts[1], images, 5)
    assert [h.id for h in hits] == ids and [h.kind for h in hits] == ["image"] * 5
    assert [h.score for h in hits] == pytest.approx(scores.tolist(), abs=1e-4)
    assert hits[0].metadata == {"path": paths[ids[0]]}
    # image -> image: the image itself comes first
    hits = searcher.image_to_image(query_image, k=3)
    assert hits[0].id == 3 and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert [h.id for h in hits] == expect(images[3], images, 3)[0]
    # image -> text
    hits = searcher.image_to_text(query_image, k=4)
    assert [h.metadata["text"] for h in hits] == [TEXTS[i] for i in expect(images[3], np.stack(texts[:4]), 4)[0]]
    # image + text, and image + text - text (paper weights: text x2, image x1)
    composed = compose_query(image=images[3], texts=np.stack([texts[4]]))
    np.testing.assert_allclose(composed, _unit((images[3] + 2 * texts[4])[None])[0], atol=1e-5)
    assert [h.id for h in searcher.search(image=query_image, text="snow", k=5)] == expect(composed, images, 5)[0]
    minus = compose_query(image=images[3], texts=np.stack([texts[4]]), minus=np.stack([texts[0]]))
    assert [h.id for h in searcher.search(image=query_image, text="snow", minus="a red circle", k=5)] == expect(
        minus, images, 5
    )[0]


def test_query_model_must_match_index_model(built, tiny):
    from align_hf.testing import tiny_model

    _, processor = tiny
    index, _ = built
    with pytest.raises(ModelMismatchError, match="embeds differently"):
        Searcher(index, tiny_model(seed=1), processor)
    narrow = tiny_model(projection_dim=64, vision_config={"image_projection_dim": 64})
    with pytest.raises(ModelMismatchError, match="128-d embeddings .* makes 64-d"):
        Searcher(index, narrow, processor)
    Searcher(index, tiny_model(seed=0).half().float(), processor)  # same weights, rounded: accepted


def test_bad_input_gives_clear_errors(built, tiny, tmp_path, image_folder):
    model, processor = tiny
    index, out = built
    searcher = Searcher(index, model, processor, check=False)
    with pytest.raises(ValueError, match="cannot read the query image"):
        searcher.search(image=tmp_path / "missing.jpg")
    with pytest.raises(ValueError, match="the text query is empty"):
        searcher.search(text="  ")
    with pytest.raises(ValueError, match="minus query 2 is empty"):
        searcher.search(text="a red circle", minus=["blue", ""])
    with pytest.raises(FileNotFoundError, match="manifest.json is missing"):
        CrossModalIndex.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="image folder"):
        CrossModalIndex.build(model, processor, tmp_path / "o", images=tmp_path / "nope", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        CrossModalIndex.build(model, processor, tmp_path / "o", images=tmp_path / "empty", progress=False)
    with pytest.raises(ValueError, match="all 1 images were unreadable"):
        CrossModalIndex.build(model, processor, tmp_path / "o", images=[image_folder / "broken.jpg"], progress=False)
    with pytest.raises(ValueError, match="no non-empty texts"):
        CrossModalIndex.build(model, processor, tmp_path / "o", texts=["", "  "], progress=False)
    texts_only = CrossModalIndex.build(model, processor, tmp_path / "t", texts=["a cat"], progress=False)
    with pytest.raises(KeyError, match="no image collection"):
        Searcher(texts_only, model, processor).search(text="cat", target="image")
    # a half-copied index directory
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text((out / "manifest.json").read_text())
    with pytest.raises(FileNotFoundError, match="image.faiss is missing"):
        CrossModalIndex.load(broken)


def test_interrupted_build_resumes_from_finished_chunks(tiny, image_folder, tmp_path, monkeypatch):
    model, processor = tiny
    real = search_index.encode_images
    calls: list[int] = []

    def flaky(model_, processor_, items, **kwargs):
        calls.append(len(items))
        if len(calls) == 3:
            raise KeyboardInterrupt  # the job dies while embedding the third chunk
        return real(model_, processor_, items, **kwargs)

    monkeypatch.setattr(search_index, "encode_images", flaky)
    with pytest.raises(KeyboardInterrupt):
        CrossModalIndex.build(model, processor, tmp_path, images=image_folder, chunk_size=4, progress=False)
    assert len(list((tmp_path / "partial").glob("image-*.npz"))) == 2
    calls.clear()
    resumed = CrossModalIndex.build(model, processor, tmp_path, images=image_folder, chunk_size=4, progress=False)
    assert calls == [4, 3]  # 15 files: chunks 3 and 4 only (4 + 3 items)
    monkeypatch.setattr(search_index, "encode_images", real)
    fresh = CrossModalIndex.build(model, processor, tmp_path / "fresh", images=image_folder, chunk_size=4, progress=False)
    np.testing.assert_allclose(resumed["image"].embeddings, fresh["image"].embeddings, atol=1e-6)
    assert resumed["image"].metadata == fresh["image"].metadata


def test_resume_discards_chunks_of_another_job(tiny, image_folder, tmp_path, monkeypatch):

    model, processor = tiny
    partial = tmp_path / "partial"
    emb, kept, _ = search.embed_resumable(
        3, lambda span: (np.ones((len(span), 2), np.float32), list(span), []), partial, "image", {"items": "a"}, 2,
        progress=False,
    )
    assert emb.shape == (3, 2) and kept == [0, 1, 2] and len(list(partial.glob("image-*.npz"))) == 2
    emb, _, _ = search.embed_resumable(
        3, lambda span: (np.zeros((len(span), 2), np.float32), list(span), []), partial, "image", {"items": "b"}, 2,
        progress=False,
    )
    assert not emb.any()  # nothing reused from the job with other items


# ------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------


def test_cli_index_build_and_search_round_trip(saved_model, tiny, image_folder, tmp_path, capsys):
    from align_hf.cli import main

    model, processor = tiny
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS))
    out = tmp_path / "idx"
    rc = main(["index", "build", "--model", str(saved_model), "--images", str(image_folder), "--texts", str(texts),
               "--output", str(out), "--no-progress", "--batch-size", "4"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "image: 14 indexed (flat), 1 skipped" in printed and "broken.jpg" in printed
    assert json.loads((out / "manifest.json").read_text())["model_id"] == str(saved_model)

    # the CLI finds the model through the manifest and answers like the library does
    searcher = Searcher(out, model, processor)
    query_image = str(image_folder / "img04.png")
    cases = [
        (["--text", "a blue star"], dict(text=["a blue star"])),
        (["--image", query_image, "--text", "snow", "--minus", "a red circle"],
         dict(image=query_image, text=["snow"], minus=["a red circle"])),
        (["--image", query_image, "--target", "text", "--k", "3"], dict(image=query_image, target="text", k=3)),
    ]
    for argv, kwargs in cases:
        assert main(["search", "--index", str(out), "--json", *argv]) == 0
        got = json.loads(capsys.readouterr().out)
        want = searcher.search(**{"k": 10, **kwargs})
        assert [h["id"] for h in got] == [h.id for h in want]
        assert [h["metadata"] for h in got] == [h.metadata for h in want]
        assert [h["score"] for h in got] == pytest.approx([h.score for h in want], abs=1e-5)

    assert main(["search", "--index", str(out), "--text", "a blue star", "--k", "2"]) == 0
    lines = capsys.readouterr().out.rstrip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("  1  +") and lines[0].endswith(".png")


def test_cli_search_refuses_another_model_and_empty_queries(saved_model, tiny, image_folder, tmp_path, capsys):
    from align_hf.cli import main
    from align_hf.testing import tiny_model

    _, processor = tiny
    out = tmp_path / "idx"
    CrossModalIndex.build(*tiny, out, texts=["a red circle", "a blue star"], progress=False)
    other = tmp_path / "other-model"
    tiny_model(seed=5).save_pretrained(other)
    processor.save_pretrained(other)
    assert main(["search", "--index", str(out), "--model", str(other), "--text", "a red circle"]) == 1
    assert "embeds differently" in capsys.readouterr().err
    assert main(["search", "--index", str(out), "--model", str(saved_model)]) == 2
    assert "give --text" in capsys.readouterr().err
    # an index whose model was built in memory names no loadable model
    assert main(["search", "--index", str(out), "--text", "a red circle"]) == 2
    assert "pass --model" in capsys.readouterr().err
    # a blank text, a missing or unreadable query image: one line on stderr, no traceback
    assert main(["search", "--index", str(out), "--model", str(saved_model), "--text", " "]) == 2
    assert "--text is empty" in capsys.readouterr().err
    assert main(["search", "--index", str(out), "--model", str(saved_model), "--image", str(tmp_path / "no.jpg")]) == 2
    assert "no image file" in capsys.readouterr().err
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    assert main(["search", "--index", str(out), "--model", str(saved_model), "--image", str(tmp_path / "bad.jpg"),
                 "--target", "text", "-k", "1"]) == 2
    assert "cannot read the query image" in capsys.readouterr().err


def test_loaded_index_can_be_saved_again_in_place(built, tmp_path):
    import shutil

    _, out = built
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    loaded = CrossModalIndex.load(copy)
    before = np.array(loaded["image"].embeddings)
    loaded.save(copy)  # its embeddings are a memory map of the very file being written
    again = CrossModalIndex.load(copy)
    np.testing.assert_array_equal(again["image"].embeddings, before)
    assert again["image"].metadata == loaded["image"].metadata
    hits = [h.id for h in again["image"].search(before[:3], k=3)[0]]
    assert hits == [h.id for h in loaded["image"].search(before[:3], k=3)[0]] and hits[0] == 0


def test_package_exports_every_public_name():
    for name in search.__all__:
        assert getattr(search, name) is not None, name


def test_cli_finds_image_columns_by_the_data_pipeline_names(tmp_path):
    import datasets

    from align_hf.cli.search import open_images
    from align_hf.data.sources import IMAGE_COLUMNS

    saved = tmp_path / "saved"
    datasets.Dataset.from_dict({"caption": ["a", "b"], "image_bytes": [b"x", b"y"]}).save_to_disk(str(saved))
    rows, column, _ = open_images(str(saved), None, "train", tmp_path / "work")
    assert column == "image_bytes" and column in IMAGE_COLUMNS and len(rows) == 2
