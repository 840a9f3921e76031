"""Shared pytest fixtures (each area adds its own; keep them independent)."""

from __future__ import annotations

import pytest

@pytest.fixture(scope="module")
def saved_model(tiny, tmp_path_factory):
    """The requesting module's ``tiny`` (model, processor) fixture saved to a folder, as a Hub repo would hold it."""
    model, processor = tiny
    path = tmp_path_factory.mktemp("tiny-model")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


# ------------------------------------------------------------------------------------------------
# Demo (issue 8): a tiny model + a small index served by the Gradio app on 127.0.0.1
# ------------------------------------------------------------------------------------------------

DEMO_MAX_PIXELS = 250_000  # small, so the "image too large" path is cheap to reach
DEMO_MAX_FILE_SIZE = "200kb"


@pytest.fixture(scope="session")
def demo_server(tmp_path_factory):
    """The demo app over a tiny random model and 10 synthetic-gallery images + their captions.

    Yields a namespace with ``url``, ``client`` (gradio_client), ``backend``, ``model``,
    ``processor``, ``index``, ``index_dir``, ``image_paths`` (the indexed files, file name =
    sample key) and ``captions`` (caption per image).
    """
    import os
    from types import SimpleNamespace

    import torch

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from gradio_client import Client

    from align_hf.data import SyntheticConfig, SyntheticCorpus
    from align_hf.demo.backend import DemoBackend
    from align_hf.demo.ui import build_demo, launch_demo
    from align_hf.search import CrossModalIndex
    from align_hf.testing import tiny_model, tiny_processor

    root = tmp_path_factory.mktemp("demo")
    model, processor = tiny_model(seed=0), tiny_processor()
    with torch.no_grad():  # the paper's converged temperature, so probabilities are far from uniform
        model.contrastive_head.temperature.fill_(1 / 64)
    corpus = SyntheticCorpus(SyntheticConfig(image_size=64, num_retrieval=10))
    image_dir = root / "index" / "images"
    image_dir.mkdir(parents=True)
    paths, captions, texts = [], [], []
    for sample in corpus.iter_split("retrieval"):
        path = image_dir / f"{sample.key}.png"
        sample.image.save(path)
        paths.append(str(path))
        captions.append(sample.caption)
        texts.extend(sample.meta["captions"])
    texts = list(dict.fromkeys(texts))
    index_dir = root / "index"
    index = CrossModalIndex.build(model, processor, index_dir, images=paths, texts=texts, index_type="flat", progress=False)
    backend = DemoBackend(
        model, processor, index=index, model_name="tiny-test-model", index_path=index_dir,
        max_pixels=DEMO_MAX_PIXELS, max_batch_size=8,
    )
    demo = build_demo(backend)
    _, url, _ = launch_demo(demo, prevent_thread_lock=True, quiet=True, max_file_size=DEMO_MAX_FILE_SIZE, concurrency=4)
    client = Client(url, verbose=False)
    try:
        yield SimpleNamespace(
            url=url, client=client, backend=backend, demo=demo, model=model, processor=processor, index=index,
            index_dir=index_dir, image_paths=paths, captions=captions, texts=texts, root=root,
        )
    finally:
        client.close() if hasattr(client, "close") else None
        demo.close()
        backend.close()


# ------------------------------------------------------------------------------------------------
# Training (issue 5): a tiny synthetic corpus written as webdataset shards
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def train_corpus(tmp_path_factory):
    """A 32 px synthetic corpus: 64 training pairs in 2 shards, 9 classes (3 colours x 3 shapes, 3
    unseen in training), 9 zero-shot images and 12 retrieval images. Returns the corpus folder."""
    from align_hf.data import SyntheticConfig, write_synthetic_corpus

    root = tmp_path_factory.mktemp("train_corpus")
    config = SyntheticConfig(
        image_size=32, num_train=64, zeroshot_per_class=1, num_retrieval=12, shard_size=32,
        colours=("red", "green", "blue"), shapes=("circle", "square", "star"), seed=0,
    )
    write_synthetic_corpus(root, config, num_workers=1, progress=False)
    return root
