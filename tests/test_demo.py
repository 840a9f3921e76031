"""The Gradio demo: every endpoint through gradio_client against the app on 127.0.0.1, bad inputs,
concurrency, the CLI, the default synthetic-gallery index and the Space files.

Reference results are computed here independently: each image/text embedded alone with the model,
normalised in float64, scored by brute force over all indexed items.
"""

from __future__ import annotations

import configparser
import json
import re
import runpy
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from align_hf.demo.backend import DemoBackend, DemoInputError
from align_hf.demo.batching import MicroBatcher
from align_hf.demo.limits import MAX_RESULTS

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------
# Independent references
# ------------------------------------------------------------------------------------------------


@torch.no_grad()
def ref_image(model, processor, image) -> np.ndarray:
    pil = image if isinstance(image, Image.Image) else Image.open(image).convert("RGB")
    pixels = processor(images=[pil], return_tensors="pt")["pixel_values"]
    e = model.encode_image(pixels, normalize=False)[0].double()
    return (e / e.norm()).numpy()


@torch.no_grad()
def ref_text(model, processor, text: str) -> np.ndarray:
    enc = processor(text=[text], return_tensors="pt")
    e = model.encode_text(
        enc["input_ids"],
        attention_mask=enc["attention_mask"],
        token_type_ids=enc.get("token_type_ids"),
        normalize=False,
    )[0].double()
    return (e / e.norm()).numpy()


def ref_probs(model, processor, image, labels, templates) -> dict[str, float]:
    img = ref_image(model, processor, image)
    rows = []
    for label in labels:
        prompts = np.stack([ref_text(model, processor, t.replace("{}", label)) for t in templates])
        mean = prompts.mean(0)
        rows.append(mean / np.linalg.norm(mean))
    scale = 1.0 / float(model.contrastive_head.temperature.detach())
    logits = scale * np.stack(rows) @ img
    p = np.exp(logits - logits.max())
    return dict(zip(labels, p / p.sum()))


def gallery_entries(result) -> list[tuple[float, str, str]]:
    """(score, label, returned file) from a Gallery output as gradio_client hands it back."""
    out = []
    for item in result:
        caption = item["caption"]
        score, label = caption.split(" · ", 1)
        image = item["image"]
        out.append((float(score), label, image["path"] if isinstance(image, dict) else image))
    return out


def confidences(label_output) -> dict[str, float]:
    return {c["label"]: c["confidence"] for c in label_output["confidences"]}


@pytest.fixture(scope="module")
def query_image(demo_server, tmp_path_factory) -> Path:
    """An image that is not in the index: a red/blue scene drawn here."""
    path = tmp_path_factory.mktemp("query") / "query.png"
    image = Image.new("RGB", (80, 60), (240, 240, 240))
    image.paste((220, 30, 30), (10, 10, 40, 40))
    image.paste((30, 30, 220), (45, 20, 75, 55))
    image.save(path)
    return path


# ------------------------------------------------------------------------------------------------
# Endpoints against references
# ------------------------------------------------------------------------------------------------


def test_api_lists_every_endpoint(demo_server):
    names = set(demo_server.client.view_api(return_format="dict", print_info=False)["named_endpoints"])
    assert {"/classify", "/text_to_image", "/image_to_text", "/composed", "/about"} <= names


def test_classify_matches_reference(demo_server, query_image):
    from gradio_client import handle_file

    s = demo_server
    out = s.client.predict(
        handle_file(str(query_image)),
        "red square, blue square, green circle",
        "(type labels)",
        "single: 'a photo of a {}.'",
        api_name="/classify",
    )
    got = confidences(out)
    want = ref_probs(
        s.model, s.processor, query_image, ["red square", "blue square", "green circle"], ["a photo of a {}."]
    )
    assert set(got) == set(want)
    for label in want:
        assert got[label] == pytest.approx(want[label], abs=1e-4)
    assert out["label"] == max(want, key=want.get)


def test_classify_preset_with_prompt_ensembling(demo_server, query_image):
    from gradio_client import handle_file

    from align_hf.evaluation.zero_shot import load_templates

    s = demo_server
    preset = "animals"
    labels = s.backend.label_presets[preset]
    out = s.client.predict(
        handle_file(str(query_image)), "", preset, "short ensemble (8 prompts)", api_name="/classify"
    )
    got = confidences(out)
    # gr.Label sends the top 5 classes; they must be the reference's top 5 with its probabilities.
    want = ref_probs(s.model, s.processor, query_image, labels, load_templates("short"))
    top = sorted(want, key=want.get, reverse=True)[: len(got)]
    assert len(got) == min(5, len(labels)) and list(got) == top
    for label in got:
        assert got[label] == pytest.approx(want[label], abs=1e-4)
    single = ref_probs(s.model, s.processor, query_image, labels, ["a photo of a {}."])
    # Ensembling must actually change the scores (else the template choice would be ignored).
    assert max(abs(single[k] - want[k]) for k in labels) > 1e-3


def test_text_to_image_matches_brute_force(demo_server):
    s = demo_server
    query = "a large red circle on a white background"
    k = 4
    out = gallery_entries(s.client.predict(query, k, api_name="/text_to_image"))
    q = ref_text(s.model, s.processor, query)
    scores = np.array([ref_image(s.model, s.processor, p) @ q for p in s.image_paths])
    order = np.argsort(-scores)[:k]
    assert [label for _, label, _ in out] == [Path(s.image_paths[i]).name for i in order]
    np.testing.assert_allclose([score for score, _, _ in out], scores[order], atol=2e-3)  # captions round to 3 decimals
    # The returned picture is the indexed image (a lossless copy served from Gradio's cache).
    best = Image.open(out[0][2]).convert("RGB")
    indexed = Image.open(s.image_paths[order[0]]).convert("RGB")
    assert best.size == indexed.size
    assert np.array_equal(np.asarray(best), np.asarray(indexed))


def test_image_to_text_matches_brute_force(demo_server, query_image):
    from gradio_client import handle_file

    s = demo_server
    k = 5
    out = s.client.predict(handle_file(str(query_image)), k, api_name="/image_to_text")
    rows = out["data"]
    img = ref_image(s.model, s.processor, query_image)
    scores = np.array([ref_text(s.model, s.processor, t) @ img for t in s.texts])
    order = np.argsort(-scores)[:k]
    assert [row[0] for row in rows] == list(range(1, k + 1))
    assert [row[2] for row in rows] == [s.texts[i] for i in order]
    np.testing.assert_allclose([row[1] for row in rows], scores[order], atol=2e-4)


def test_composed_query_matches_brute_force(demo_server, query_image):
    from gradio_client import handle_file

    s = demo_server
    k, weight = 6, 1.5
    out = gallery_entries(
        s.client.predict(handle_file(str(query_image)), "blue", "red", weight, k, api_name="/composed")
    )
    q = ref_image(s.model, s.processor, query_image) + weight * (
        ref_text(s.model, s.processor, "blue") - ref_text(s.model, s.processor, "red")
    )
    q /= np.linalg.norm(q)
    scores = np.array([ref_image(s.model, s.processor, p) @ q for p in s.image_paths])
    order = np.argsort(-scores)[:k]
    assert [label for _, label, _ in out] == [Path(s.image_paths[i]).name for i in order]
    np.testing.assert_allclose([score for score, _, _ in out], scores[order], atol=2e-3)
    # Text alone (no image) is a valid composed query too and equals text -> image search.
    text_only = gallery_entries(s.client.predict(None, "green", "", 2.0, k, api_name="/composed"))
    plain = gallery_entries(s.client.predict("green", k, api_name="/text_to_image"))
    assert [x[:2] for x in text_only] == [x[:2] for x in plain]


def test_about_names_model_and_index(demo_server):
    s = demo_server
    text = s.client.predict(api_name="/about")
    assert "tiny-test-model" in text and str(s.index_dir) in text
    assert "embedding dim 128" in text
    assert f"image collection: {len(s.image_paths)} vectors" in text
    assert f"text collection: {len(s.texts)} vectors" in text
    n_params = sum(p.numel() for p in s.model.parameters())
    assert f"{n_params:,} parameters" in text


# ------------------------------------------------------------------------------------------------
# Bad input and safe serving
# ------------------------------------------------------------------------------------------------


def _app_error(client, *args, api_name):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as info:
        client.predict(*args, api_name=api_name)
    return str(info.value)


def test_non_image_upload_gets_a_clear_message(demo_server, tmp_path):
    from gradio_client import handle_file

    fake = tmp_path / "holiday.png"
    fake.write_text("this is a text file, not a picture")
    for args, api in [
        ((handle_file(str(fake)), "cat, dog", "(type labels)", "none (label only)"), "/classify"),
        ((handle_file(str(fake)), 3), "/image_to_text"),
        ((handle_file(str(fake)), "red", "", 2.0, 3), "/composed"),
    ]:
        message = _app_error(demo_server.client, *args, api_name=api)
        assert "'holiday.png' is not an image" in message and "PNG, JPEG" in message


def test_empty_labels_and_empty_queries(demo_server, query_image):
    from gradio_client import handle_file

    c = demo_server.client
    assert "at least one label" in _app_error(
        c, handle_file(str(query_image)), " , ,", "(type labels)", "none (label only)", api_name="/classify"
    )
    assert "Upload an image first" in _app_error(
        c, None, "cat", "(type labels)", "none (label only)", api_name="/classify"
    )
    assert "Type a text query" in _app_error(c, "   ", 4, api_name="/text_to_image")
    assert "Upload an image first" in _app_error(c, None, 4, api_name="/image_to_text")
    assert "Give an image, a text or both" in _app_error(c, None, "", "", 2.0, 4, api_name="/composed")
    assert "between 1 and" in _app_error(c, "red", MAX_RESULTS + 1, api_name="/text_to_image")


def test_image_with_too_many_pixels_is_refused(demo_server, tmp_path):
    from gradio_client import handle_file

    from conftest import DEMO_MAX_PIXELS

    big = tmp_path / "big.png"
    Image.new("RGB", (600, 600), (10, 200, 10)).save(big)  # 360k pixels, a tiny file
    assert 600 * 600 > DEMO_MAX_PIXELS and big.stat().st_size < 50_000
    message = _app_error(
        demo_server.client, handle_file(str(big)), "cat", "(type labels)", "none (label only)", api_name="/classify"
    )
    assert "too large: 600 x 600 pixels" in message and "limit is 0.2 MP" in message


def test_oversized_upload_is_rejected(demo_server, tmp_path):
    from gradio_client import handle_file

    huge = tmp_path / "huge.png"
    huge.write_bytes(np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match="exceeds the maximum file size"):
        demo_server.client.predict(
            handle_file(str(huge)), "cat", "(type labels)", "none (label only)", api_name="/classify"
        )
    # The server enforces it too, whatever the client does.
    response = httpx.post(
        demo_server.url + "gradio_api/upload", files={"files": ("huge.png", huge.read_bytes(), "image/png")}
    )
    assert response.status_code == 413


def test_only_uploads_and_results_are_served(demo_server):
    url = demo_server.url
    assert url.startswith("http://127.0.0.1:")
    for path in ("/etc/passwd", demo_server.image_paths[0], str(Path(__file__).resolve())):
        response = httpx.get(f"{url}gradio_api/file={path}")
        assert response.status_code in (403, 404), path


def test_launch_settings_are_safe(demo_server):
    demo = demo_server.demo
    assert demo.analytics_enabled is False and demo.share is False
    assert demo.server_name == "127.0.0.1"
    assert demo.max_file_size == 200 * 1024  # what the fixture asked for
    assert demo.run_history is False and not demo.allowed_paths


def test_index_mismatch_is_refused(demo_server):
    from align_hf.search import ModelMismatchError
    from align_hf.testing import tiny_model

    with pytest.raises(ModelMismatchError):
        DemoBackend(tiny_model(seed=1), demo_server.processor, index=demo_server.index)


def test_backend_without_index_explains_how_to_get_one(demo_server, query_image):
    backend = DemoBackend(demo_server.model, demo_server.processor, index=None)
    try:
        with pytest.raises(DemoInputError, match="--index"):
            backend.search_text_to_image("red", 3)
        assert backend.classify(str(query_image), "cat, dog", None, "none (label only)")  # classification still works
    finally:
        backend.close()


# ------------------------------------------------------------------------------------------------
# Concurrency: requests of several users share one forward pass
# ------------------------------------------------------------------------------------------------


def test_micro_batcher_merges_waiting_requests():
    release = threading.Event()
    calls: list[list[int]] = []

    def slow_square(items):
        calls.append(list(items))
        if len(calls) == 1:
            release.wait(10)  # hold the worker so the next requests pile up
        return [i * i for i in items]

    batcher = MicroBatcher(slow_square, max_batch_size=4, max_wait_s=0.0)
    try:
        with ThreadPoolExecutor(8) as pool:
            first = pool.submit(batcher, 0)
            while not calls:
                time.sleep(0.005)
            rest = [pool.submit(batcher, i) for i in range(1, 7)]
            while batcher.pending() < 6:
                time.sleep(0.005)
            release.set()
            assert first.result(10) == 0 and [f.result(10) for f in rest] == [i * i for i in range(1, 7)]
        assert calls[0] == [0] and sorted(calls[1] + calls[2]) == list(range(1, 7))
        assert [len(c) for c in calls[1:]] == [4, 2]  # capped at max_batch_size, in arrival order
    finally:
        batcher.close()


def test_micro_batcher_failure_reaches_every_caller():
    def broken(items):
        raise RuntimeError("boom")

    batcher = MicroBatcher(broken)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            batcher(1)
        with pytest.raises(RuntimeError, match="boom"):  # the worker survives a failed batch
            batcher(2)
    finally:
        batcher.close()


def test_concurrent_users_are_batched_and_get_their_own_results(demo_server):
    s = demo_server
    queries = ["red circle", "blue square", "green star", "a small yellow triangle"]
    alone = [gallery_entries(s.client.predict(q, 3, api_name="/text_to_image")) for q in queries]

    batcher = s.backend.text_batcher
    original, release, seen = batcher.fn, threading.Event(), []

    def gated(items):
        seen.append(len(items))
        if len(seen) == 1:
            release.wait(20)  # the first request holds the model; the others queue behind it
        return original(items)

    batcher.fn = gated
    try:
        jobs = [s.client.submit(q, 3, api_name="/text_to_image") for q in queries]
        # Wait until every request is either in the held batch or queued behind it.
        deadline = time.monotonic() + 30
        while (not seen or seen[0] + batcher.pending() < len(queries)) and time.monotonic() < deadline:
            time.sleep(0.01)
        release.set()
        together = [gallery_entries(job.result(timeout=60)) for job in jobs]
    finally:
        release.set()
        batcher.fn = original
    # Gradio ran the handlers in parallel (concurrency 4): all four texts reached the model while the
    # first pass was held, and those that queued went together in one pass.
    assert sum(seen) == len(queries) and len(seen) <= 2 and max(seen) >= 2
    for a, b in zip(alone, together):
        assert [x[1] for x in a] == [x[1] for x in b]
        np.testing.assert_allclose([x[0] for x in a], [x[0] for x in b], atol=1e-3)


def test_queue_allows_parallel_handlers(demo_server):
    fns = [
        fn
        for fn in demo_server.demo.fns.values()
        if fn.api_name in {"classify", "text_to_image", "image_to_text", "composed"}
    ]
    assert len(fns) == 4
    assert all(
        fn.concurrency_limit is None or fn.concurrency_limit == "default" or fn.concurrency_limit >= 2 for fn in fns
    )
    assert demo_server.demo._queue.default_concurrency_limit == 4


# ------------------------------------------------------------------------------------------------
# CLI and the default (quickstart + synthetic gallery) setup
# ------------------------------------------------------------------------------------------------


def test_cli_registers_demo_with_safe_defaults(capsys):
    from align_hf.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["demo"])
    assert args.host == "127.0.0.1" and args.share is False and args.max_file_size == "10mb"
    assert args.model is None and args.index is None and args.concurrency >= 2
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["demo", "--help"])
    assert info.value.code == 0
    help_text = capsys.readouterr().out
    for flag in ("--model", "--index", "--host", "--share", "--max-file-size"):
        assert flag in help_text


def test_cli_without_quickstart_model_says_how_to_make_it(tmp_path, monkeypatch, capsys):
    from align_hf.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--check"]) == 2
    err = capsys.readouterr().err
    assert "make quickstart" in err and "outputs/quickstart/model" in err and "--model" in err


def test_default_demo_indexes_the_synthetic_gallery_and_reuses_it(tmp_path, monkeypatch, capsys):
    from align_hf.cli import main
    from align_hf.data import SyntheticConfig, SyntheticCorpus, write_synthetic_corpus
    from align_hf.search import CrossModalIndex
    from align_hf.testing import tiny_model, tiny_processor

    monkeypatch.chdir(tmp_path)
    model_dir = tmp_path / "outputs" / "quickstart" / "model"
    tiny_model(seed=3).save_pretrained(model_dir)
    tiny_processor().save_pretrained(model_dir)
    # The quickstart writes its corpus to outputs/quickstart/corpus; its manifest sets the gallery rendering.
    config = SyntheticConfig(image_size=48, num_train=0, zeroshot_per_class=1, num_retrieval=12, seed=5)
    write_synthetic_corpus(tmp_path / "outputs" / "quickstart" / "corpus", config, progress=False, splits=["retrieval"])

    assert main(["demo", "--check", "--gallery-size", "6", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "outputs/quickstart/model" in out and "image collection: 6 vectors" in out
    index_dir = tmp_path / "outputs" / "demo" / "index"
    index = CrossModalIndex.load(index_dir)
    corpus = SyntheticCorpus(config)
    samples = [corpus.sample("retrieval", i) for i in range(6)]
    assert [m["caption"] for m in index["image"].metadata] == [x.caption for x in samples]
    first = Image.open(index["image"].metadata[0]["path"])
    assert first.size == (48, 48)
    assert np.array_equal(np.asarray(first.convert("RGB")), np.asarray(samples[0].image.convert("RGB")))
    assert {t for x in samples for t in x.meta["captions"]} == {m["text"] for m in index["text"].metadata}

    stamp = (index_dir / "image.faiss").stat().st_mtime_ns
    assert main(["demo", "--check", "--gallery-size", "6", "--no-progress"]) == 0
    assert (index_dir / "image.faiss").stat().st_mtime_ns == stamp  # same model: reused

    tiny_model(seed=4).save_pretrained(model_dir)  # a retrained model embeds differently: rebuilt
    assert main(["demo", "--check", "--gallery-size", "6", "--no-progress"]) == 0
    assert (index_dir / "image.faiss").stat().st_mtime_ns != stamp
    from align_hf import AlignModel
    from align_hf.search import check_model, model_signature

    check_model(
        CrossModalIndex.load(index_dir).signature,
        model_signature(AlignModel.from_pretrained(model_dir), tiny_processor()),
    )


def test_cli_launch_uses_safe_defaults(demo_server, tmp_path, monkeypatch):
    import gradio as gr

    import align_hf.demo.ui as demo_app
    from align_hf.cli import main

    seen = {}
    monkeypatch.setattr(demo_app, "launch_demo", lambda demo, **kwargs: seen.update(kwargs, demo=demo))
    model_dir = tmp_path / "model"
    demo_server.model.save_pretrained(model_dir)
    demo_server.processor.save_pretrained(model_dir)
    assert main(["demo", "--model", str(model_dir), "--index", str(demo_server.index_dir)]) == 0
    assert isinstance(seen["demo"], gr.Blocks)
    assert seen["host"] == "127.0.0.1" and seen["share"] is False and seen["max_file_size"] == "10mb"
    assert seen["concurrency"] >= 2 and seen["open_browser"] is False


def test_cli_with_explicit_model_and_index(demo_server, tmp_path, capsys):
    from align_hf.cli import main

    model_dir = tmp_path / "model"
    demo_server.model.save_pretrained(model_dir)
    demo_server.processor.save_pretrained(model_dir)
    assert main(["demo", "--check", "--model", str(model_dir), "--index", str(demo_server.index_dir)]) == 0
    out = capsys.readouterr().out
    assert str(model_dir) in out and f"image collection: {len(demo_server.image_paths)} vectors" in out
    assert main(["demo", "--check", "--model", str(model_dir), "--index", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_defaults_are_the_demo_limits():
    from align_hf.cli import build_parser
    from align_hf.demo.limits import (
        DEFAULT_CONCURRENCY,
        DEFAULT_MAX_BATCH_SIZE,
        DEFAULT_MAX_FILE_SIZE,
        DEFAULT_MAX_PIXELS,
    )

    args = build_parser().parse_args(["demo"])
    assert args.max_file_size == DEFAULT_MAX_FILE_SIZE and args.concurrency == DEFAULT_CONCURRENCY
    assert args.max_batch_size == DEFAULT_MAX_BATCH_SIZE and int(args.max_megapixels * 1e6) == DEFAULT_MAX_PIXELS


def test_demo_loads_models_through_the_one_loader(demo_server, tmp_path):
    from align_hf.demo.setup import DemoSetupError, load_model
    from align_hf.evaluation.encoding import encode_pil_images

    with pytest.raises(DemoSetupError, match=r"cannot load model '.*nope'"):
        load_model(tmp_path / "nope", device="cpu")
    model_dir = tmp_path / "model"
    demo_server.model.save_pretrained(model_dir)
    demo_server.processor.save_pretrained(model_dir)
    model, processor, name = load_model(model_dir, device="cpu")
    assert name == str(model_dir) and not model.training
    image = Image.new("RGB", (40, 30), (200, 40, 40))
    with torch.no_grad():  # BatchNorm folded for serving: same embeddings as the trained model
        want = encode_pil_images(demo_server.model.eval(), processor, [image])
        got = encode_pil_images(model, processor, [image])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------------------
# Hugging Face Space files
# ------------------------------------------------------------------------------------------------


def _front_matter(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    match = re.match(r"^---\n(.*?)\n---\n", text, re.S)
    assert match, f"{path} has no YAML front matter"
    return yaml.safe_load(match.group(1))


def test_space_files_are_complete():
    import gradio

    demo_dir = REPO / "demo"
    meta = _front_matter(demo_dir / "README.md")
    assert meta["sdk"] == "gradio" and (demo_dir / meta["app_file"]).is_file()
    assert str(meta["sdk_version"]).split(".")[0] == gradio.__version__.split(".")[0]
    assert meta["title"] and meta["license"]
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")

    def names(lines):
        return {
            re.split(r"[<>=!~\[; ]", line.strip(), maxsplit=1)[0].lower().replace("_", "-")
            for line in lines
            if line.strip() and not line.strip().startswith("#")
        }

    needed = names(cfg["options"]["install_requires"].splitlines())
    listed = names((demo_dir / "requirements.txt").read_text(encoding="utf-8").splitlines())
    assert needed <= listed, f"requirements.txt misses {needed - listed}"
    readme = (demo_dir / "README.md").read_text(encoding="utf-8")
    for needle in ("ALIGN_MODEL", "ALIGN_INDEX", "--repo-type space", "align_hf/"):
        assert needle in readme


def test_space_entry_point_builds_the_app_from_env(demo_server, tmp_path, monkeypatch):
    import gradio as gr

    model_dir = tmp_path / "model"
    demo_server.model.save_pretrained(model_dir)
    demo_server.processor.save_pretrained(model_dir)
    monkeypatch.setenv("ALIGN_MODEL", str(model_dir))
    monkeypatch.setenv("ALIGN_INDEX", str(demo_server.index_dir))
    space = runpy.run_path(str(REPO / "demo" / "app.py"), run_name="space_app")  # not __main__: no launch
    assert isinstance(space["demo"], gr.Blocks)
    api = {fn.api_name for fn in space["demo"].fns.values()}
    assert {"classify", "text_to_image", "image_to_text", "composed", "about"} <= api
    config = json.dumps(space["demo"].get_config_file())
    assert str(demo_server.index_dir) in config and str(model_dir) in config  # the about panel
