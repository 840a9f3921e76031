"""Embedding a corpus into an embedding folder: one process against Ray Data (local, 2 CPUs), resume, bad samples.

The single-process build is checked against the model itself (images decoded and embedded
directly, captions through ``encode_texts``); the Ray build against the single-process one.
"""

from __future__ import annotations

import io
import json
import os
import sys
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from align_hf.data.webdataset import ShardWriter
from align_hf.evaluation.encoding import encode_texts
from align_hf.search.embeddings import (
    MANIFEST, EmbeddingFolder, embed_to_folder, iter_parts, part_path, read_manifest, read_metadata,
)
from align_hf.testing import tiny_model, tiny_processor

SHARDS, PER_SHARD = 4, 4
BAD_IMAGE_KEY = "s1-0002"  # bytes that are no image
EMPTY_CAPTION_KEY = "s2-0001"
TRUNCATED_SHARD = 3  # cut inside its third sample: the first two are read, then the shard error is counted


def _jpeg(rng: np.random.Generator, size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def tiny():
    return tiny_model(seed=0), tiny_processor()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """4 tars of 4 samples (one sample is not an image, one caption is blank, the last tar is cut short) and a folder."""
    root = tmp_path_factory.mktemp("embed_corpus")
    rng = np.random.default_rng(0)
    words = ["red circle", "blue square", "a green star", "the small dog", "a photo of a cat"]
    samples: dict[str, dict] = {}
    for shard in range(SHARDS):
        with ShardWriter(str(root / "tars"), prefix="shard", max_count=PER_SHARD, start_index=shard) as writer:
            for i in range(PER_SHARD):
                key = f"s{shard}-{i:04d}"
                image = b"this is not an image" if key == BAD_IMAGE_KEY else _jpeg(rng, (40 + 3 * i, 32 + 5 * shard))
                caption = "   " if key == EMPTY_CAPTION_KEY else f"{words[(i + shard) % len(words)]} {i}"
                writer.write({"__key__": key, "jpg": image, "txt": caption})
                samples[key] = {"jpg": image, "txt": caption, "shard": shard}
    last = root / "tars" / f"shard-{TRUNCATED_SHARD:05d}.tar"
    with tarfile.open(last) as archive:
        third = next(m for m in archive.getmembers() if m.name.startswith(f"s{TRUNCATED_SHARD}-0002.jpg"))
    data = last.read_bytes()
    last.write_bytes(data[: third.offset_data + third.size // 2])
    folder = root / "folder"
    folder.mkdir()
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (30 + i, 36, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"a red circle {i}")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    return {"root": root, "tars": str(root / "tars"), "folder": str(folder), "samples": samples}


def _expected_keys(samples: dict) -> list[str]:
    lost = {f"s{TRUNCATED_SHARD}-{i:04d}" for i in range(2, PER_SHARD)}
    return [k for k in samples if k != BAD_IMAGE_KEY and k not in lost]


def _load(path) -> tuple[dict, np.ndarray, np.ndarray, list[dict]]:
    folder = EmbeddingFolder(path)
    ids = np.concatenate([ids for _, ids, _ in folder.iter_parts("image")])
    image = np.concatenate([np.asarray(v, np.float32) for _, _, v in folder.iter_parts("image")])
    text = np.concatenate([np.asarray(v, np.float32) for _, _, v in folder.iter_parts("text")])
    return folder.manifest, ids, np.stack([image, text]), folder.read_metadata(ids)


@pytest.fixture(scope="module")
def reference(tiny, corpus, tmp_path_factory):
    """The single-process build of the tars, with the model as given (no BatchNorm folding)."""
    model, processor = tiny
    out = tmp_path_factory.mktemp("emb_one")
    embed_to_folder(model, processor, corpus["tars"], out, batch_size=3, prepare=False, progress=False)
    return out


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'align_hf[scale]')")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def ray_built(tiny, corpus, ray_local, tmp_path_factory):
    from align_hf.search.ray_embed import embed_with_ray

    model, processor = tiny
    out = tmp_path_factory.mktemp("emb_ray")
    # The default pool on 2 CPUs: two actors, so batches come back from either in any order.
    manifest = embed_with_ray(model, processor, corpus["tars"], out, batch_size=3, progress=False)
    assert manifest["complete"]
    return out


def test_single_process_matches_the_model(tiny, corpus, reference):
    model, processor = tiny
    manifest, ids, vectors, meta = _load(reference)
    keys = [m["key"] for m in meta]
    assert keys == _expected_keys(corpus["samples"])  # input order, every readable sample, nothing twice
    assert ids.tolist() == list(range(len(keys))) and [m["id"] for m in meta] == ids.tolist()
    assert manifest["rows"] == len(keys) and manifest["complete"]
    assert manifest["skip_reasons"] == {"not_an_image": 1, "corrupt_shard": 1}
    assert [p["rows"] for p in manifest["parts"]] == [4, 3, 4, 2] and manifest["dim"] == vectors.shape[2]
    assert {e["key"] for e in manifest["skipped_examples"]} >= {BAD_IMAGE_KEY}
    with torch.no_grad():
        images = [Image.open(io.BytesIO(corpus["samples"][k]["jpg"])).convert("RGB") for k in keys]
        direct = model.encode_image(processor(images=images, return_tensors="pt")["pixel_values"]).numpy()
    np.testing.assert_allclose(vectors[0], direct, atol=1e-5)
    captions = [corpus["samples"][k]["txt"].strip() for k in keys]
    with_text = [i for i, c in enumerate(captions) if c]
    assert len(with_text) == len(keys) - 1 and manifest["text_rows"] == len(with_text)
    texts = encode_texts(model, processor, [captions[i] for i in with_text], progress=False).numpy()
    np.testing.assert_allclose(vectors[1][with_text], texts, atol=1e-5)
    blank = keys.index(EMPTY_CAPTION_KEY)
    assert not vectors[1][blank].any() and meta[blank]["caption"] == ""  # no caption: a zero text vector
    assert meta[0]["source"].endswith("shard-00000.tar") and meta[0]["caption"] == captions[0]


@pytest.mark.slow
def test_ray_matches_one_process(reference, ray_built):
    want_manifest, want_ids, want, want_meta = _load(reference)
    manifest, ids, got, meta = _load(ray_built)
    assert ids.tolist() == want_ids.tolist() and meta == want_meta
    np.testing.assert_allclose(got, want, atol=1e-5)  # Ray actors embed with BatchNorm folded
    for key in ("rows", "skipped", "skip_reasons", "parts", "dim", "modalities", "model", "plan"):
        assert manifest[key] == want_manifest[key], key
    # clip-retrieval's layout, as autofaiss globs it
    assert sorted(os.listdir(ray_built / "img_emb")) == [f"img_emb_{i:05d}.npy" for i in range(SHARDS)]
    assert sorted(os.listdir(ray_built / "metadata")) == [f"metadata_{i:05d}.parquet" for i in range(SHARDS)]


@pytest.mark.slow
def test_ray_resumes_after_a_kill_without_embedding_finished_shards(tiny, corpus, ray_built, tmp_path):
    from align_hf.search.ray_embed import embed_with_ray

    model, processor = tiny

    class Killed(Exception):
        pass

    def kill_after_two(info: dict, resumed: bool) -> None:
        if info["part"] == 1:
            raise Killed

    out = tmp_path / "emb"
    with pytest.raises(Killed):
        embed_with_ray(model, processor, corpus["tars"], out, batch_size=3, actors=1, progress=False, on_part=kill_after_two)
    assert not read_manifest(out)["complete"]
    finished = {p: part_path(out, kind, p).stat().st_mtime_ns for p in (0, 1) for kind in ("image", "text", "metadata")}
    assert not part_path(out, "metadata", 2).exists()
    (part_path(out, "image", 2).parent / "img_emb_00002.npy.tmp").write_bytes(b"half a file")  # a kill mid-write

    seen: list[tuple[int, bool]] = []
    manifest = embed_with_ray(model, processor, corpus["tars"], out, batch_size=3, actors=1, progress=False,
                              on_part=lambda info, resumed: seen.append((info["part"], resumed)))
    assert seen == [(0, True), (1, True), (2, False), (3, False)]
    assert {p: part_path(out, kind, p).stat().st_mtime_ns for p in (0, 1) for kind in ("image", "text", "metadata")} == finished
    assert manifest["complete"]
    _, ids, got, meta = _load(out)
    _, want_ids, want, want_meta = _load(ray_built)
    assert ids.tolist() == want_ids.tolist() and meta == want_meta
    np.testing.assert_array_equal(got, want)


def test_resume_redoes_only_missing_or_damaged_parts(tiny, corpus, reference, tmp_path):
    model, processor = tiny
    out = tmp_path / "emb"
    embed_to_folder(model, processor, corpus["tars"], out, batch_size=3, prepare=False, progress=False)
    part_path(out, "metadata", 1).unlink()
    part_path(out, "metadata", 2).write_bytes(b"not parquet")
    seen: list[tuple[int, bool]] = []
    embed_to_folder(model, processor, corpus["tars"], out, batch_size=3, prepare=False, progress=False,
                    on_part=lambda info, resumed: seen.append((info["part"], resumed)))
    assert seen == [(0, True), (1, False), (2, False), (3, True)]
    _, ids, got, meta = _load(out)
    _, want_ids, want, want_meta = _load(reference)
    assert ids.tolist() == want_ids.tolist() and meta == want_meta
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_refuses_to_mix_models_or_inputs(tiny, corpus, reference):
    _, processor = tiny
    with pytest.raises(ValueError, match="do not match"):
        embed_to_folder(tiny_model(seed=1), processor, corpus["tars"], reference, progress=False)
    with pytest.raises(ValueError, match="inputs"):
        embed_to_folder(tiny[0], processor, corpus["folder"], reference, progress=False)


def test_folder_fp16_reading_and_no_ray(tiny, corpus, tmp_path, monkeypatch):
    """An image folder, float16 vectors, the readers, all with Ray unimportable."""
    model, processor = tiny
    monkeypatch.setitem(sys.modules, "ray", None)
    out = tmp_path / "emb"
    manifest = embed_to_folder(model, processor, corpus["folder"], out, batch_size=4, fp16=True, progress=False)
    assert manifest["rows"] == 5 and manifest["skip_reasons"] == {"not_an_image": 1} and manifest["dtype"] == "float16"
    parts = list(iter_parts(out))
    assert len(parts) == 1 and parts[0][2].dtype == np.float16 and parts[0][2].shape == (5, manifest["dim"])
    meta = read_metadata(out, [4, 0])
    assert [m["key"] for m in meta] == ["img4", "img0"] and meta[0]["image_path"] == os.path.join(corpus["folder"], "img4.png")
    with torch.no_grad():
        image = Image.open(meta[0]["image_path"]).convert("RGB")
        direct = model.encode_image(processor(images=[image], return_tensors="pt")["pixel_values"]).numpy()
    np.testing.assert_allclose(parts[0][2][4].astype(np.float32), direct[0], atol=2e-3)
    with pytest.raises(IndexError):
        read_metadata(out, [5])
    assert json.loads((out / MANIFEST).read_text())["modalities"] == ["image", "text"]


def test_cli_embed_no_ray(saved_model, corpus, tmp_path, capsys):
    import argparse

    from align_hf.cli.embed import register_embed

    parser = argparse.ArgumentParser()
    register_embed(parser.add_subparsers(dest="command"))
    out = tmp_path / "emb"
    args = parser.parse_args(["embed", "--model", str(saved_model), "--images", corpus["tars"], "--output", str(out),
                              "--no-ray", "--no-text", "--batch-size", "5", "--no-progress", "--device", "cpu"])
    assert args.func(args) == 0
    assert "embedded 13 images in 4 parts" in capsys.readouterr().out
    manifest = read_manifest(out)
    assert manifest["modalities"] == ["image"] and not (out / "text_emb").exists()


def test_parquet_and_dataset_inputs(tiny, corpus, tmp_path):
    """Parquet files (one part each) and a ``datasets.Dataset`` (one part per range) give the same rows."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    model, processor = tiny
    samples = corpus["samples"]
    keys = [k for k in samples if samples[k]["shard"] < 2]
    columns = {"key": keys, "jpg": [samples[k]["jpg"] for k in keys], "caption": [samples[k]["txt"] for k in keys]}
    (tmp_path / "pq").mkdir()
    for half in range(2):
        rows = slice(4 * half, 4 * half + 4)
        pq.write_table(pa.table({name: values[rows] for name, values in columns.items()}), tmp_path / "pq" / f"p{half}.parquet")
    from_parquet = embed_to_folder(model, processor, str(tmp_path / "pq"), tmp_path / "a", batch_size=3, progress=False)
    from_dataset = embed_to_folder(model, processor, datasets.Dataset.from_dict(columns), tmp_path / "b", batch_size=3, progress=False)
    assert [p["source"] for p in from_parquet["parts"]] == [str(tmp_path / "pq" / f"p{i}.parquet") for i in range(2)]
    assert len(from_dataset["parts"]) == len(keys)  # one range per row at this size
    for manifest in (from_parquet, from_dataset):
        assert manifest["rows"] == len(keys) - 1 and manifest["skip_reasons"] == {"not_an_image": 1}
    _, ids_a, got_a, meta_a = _load(tmp_path / "a")
    _, ids_b, got_b, meta_b = _load(tmp_path / "b")
    assert [m["key"] for m in meta_a] == [m["key"] for m in meta_b] == [k for k in keys if k != BAD_IMAGE_KEY]
    np.testing.assert_allclose(got_a, got_b, atol=1e-6)


def test_actor_pool_plan():
    from align_hf.search.ray_embed import plan_resources

    # CPUs only: single-thread actors for ~80% of the CPUs, reserving what leaves >= 1 CPU to reading
    assert plan_resources({"CPU": 2.0}) == {"actors": 2, "num_cpus": 0.5, "num_gpus": 0.0, "threads": 1, "read_cpus": 1.0}
    assert plan_resources({"CPU": 1.0}) == {"actors": 1, "num_cpus": 0.5, "num_gpus": 0.0, "threads": 1, "read_cpus": 0.5}
    assert plan_resources({"CPU": 16.0}) == {"actors": 6, "num_cpus": 2.0, "num_gpus": 0.0, "threads": 2, "read_cpus": 1.0}
    assert plan_resources({"CPU": 2.0}, actors=1, cpus_per_actor=1)["read_cpus"] == 1.0
    assert plan_resources({"CPU": 32.0, "GPU": 8.0}) == {"actors": 8, "num_cpus": 1, "num_gpus": 1.0, "threads": None,
                                                         "read_cpus": 1.0}
    assert plan_resources({"CPU": 8.0, "GPU": 2.0}, actors=4, num_gpus=0.5)["actors"] == 4
    with pytest.raises(ValueError, match="read and decode"):
        plan_resources({"CPU": 2.0}, actors=2, cpus_per_actor=1)
    with pytest.raises(ValueError, match="GPUs"):
        plan_resources({"CPU": 8.0}, num_gpus=1)


@pytest.mark.slow
def test_cli_embeds_on_a_running_cluster_by_address(saved_model, corpus, reference, tmp_path):
    """``--ray-address``: a Ray head started apart (``ray start --head``, as on a cluster's head node)
    serves the build of another process; the result equals the single-process build, and the
    cluster keeps running afterwards (the driver disconnects, it does not shut the cluster down)."""
    import shutil
    import signal
    import socket
    import subprocess
    import tempfile
    import time

    pytest.importorskip("ray", reason="Ray is not installed (pip install 'align_hf[scale]')")
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Recent Ray authenticates every connection with a shared token: the head and the driver get the
    # same one, as the nodes and drivers of a real cluster would.
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": os.urandom(16).hex()}
    # --block keeps the head in the foreground, so ending this process group stops exactly this
    # cluster (``ray stop`` would also stop the Ray this module's other tests started). Its own
    # --temp-dir keeps it from recording itself as "the" local cluster, which a later bare
    # ``ray.init()`` on this machine would try to join. (Short path: Ray puts sockets there.)
    temp_dir = tempfile.mkdtemp(prefix="rh", dir="/tmp")
    head = subprocess.Popen([ray_cli, "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
                             "--include-dashboard=false", "--node-ip-address=127.0.0.1", f"--temp-dir={temp_dir}"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        address = f"127.0.0.1:{port}"
        command = [sys.executable, "-m", "align_hf.cli", "index", "embed", "--model", str(saved_model),
                   "--images", corpus["tars"], "--output", str(tmp_path / "emb"), "--ray-address", address,
                   "--batch-size", "3", "--no-progress"]
        deadline = time.monotonic() + 90
        while head.poll() is None and time.monotonic() < deadline:  # the head takes a few seconds to listen
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        start = time.monotonic()
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        print(f"build on the cluster: {time.monotonic() - start:.1f} s")
        want_manifest, want_ids, want, want_meta = _load(reference)
        manifest, ids, got, meta = _load(tmp_path / "emb")
        assert ids.tolist() == want_ids.tolist() and meta == want_meta
        np.testing.assert_allclose(got, want, atol=1e-5)
        assert manifest["skip_reasons"] == want_manifest["skip_reasons"] and manifest["rows"] == want_manifest["rows"]
        assert head.poll() is None  # the cluster outlived the build
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.skipif(sys.platform != "linux" or __import__("platform").libc_ver()[0] != "glibc",
                    reason="keeping freed memory is a glibc mallopt setting")
def test_embedding_actors_keep_freed_memory(tiny, ray_local):
    """A Ray embedding actor's process keeps freed memory (as the align-hf program does): without
    it, every batch faults in fresh pages for its activations (1.5x slower embedding measured)."""
    model, _ = tiny

    @ray_local.remote(max_calls=1, num_cpus=1)  # a fresh worker per call: the setting lasts for the process
    def faults_per_allocation(keep: bool) -> int:
        import resource

        from align_hf.search.embed_steps import Embedder

        Embedder(model, dim=model.config.projection_dim, device="cpu", keep_freed_memory=keep)
        counts = []
        for _ in range(12):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            torch.ones(16 * 2**20).sum()  # 64 MiB written in full, as a large activation is
            counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        return sorted(counts[2:])[5]  # median after a warm-up

    kept, default = ray_local.get([faults_per_allocation.remote(True), faults_per_allocation.remote(False)])
    assert default > 8000  # 16,384 pages of 4 KiB re-mapped on every allocation
    assert kept < 0.2 * default
