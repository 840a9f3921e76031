"""A synthetic corpus on disk: webdataset shards per split, ``manifest.json`` and ``vocab.txt``.

:func:`write_synthetic_corpus` writes one (in parallel: every sample is a pure function of the
config); :func:`load_manifest`, :func:`find_manifest` and :func:`read_split` read it back. The
manifest is how the trainer, the evaluation CLI and the demo recognise a synthetic corpus.
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Sequence

from PIL import Image
from tqdm.auto import tqdm

from align_hf.data.synthetic import MANIFEST_FORMAT, SPLITS, SyntheticConfig, SyntheticCorpus, SyntheticSample
from align_hf.data.webdataset import ShardWriter

logger = logging.getLogger(__name__)
MANIFEST_PREFIX = MANIFEST_FORMAT.rsplit("/", 1)[0] + "/"  # any version of the format


def _encode_jpeg(image: Image.Image, quality: int = 92) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _write_shard(task: tuple[dict, str, int, str]) -> tuple[str, str, int, dict]:
    config_dict, split, shard_index, directory = task
    corpus = SyntheticCorpus(SyntheticConfig.from_dict(config_dict))
    size = corpus.config.shard_size
    noise = {}
    count = 0
    with ShardWriter(directory, prefix=split, max_count=size, start_index=shard_index) as writer:
        for sample in corpus.iter_split(split, shard_index * size, (shard_index + 1) * size):
            writer.write({"__key__": sample.key, "jpg": _encode_jpeg(sample.image), "txt": sample.caption, "json": json.dumps(sample.meta)})
            kind = sample.meta["noise"] or "clean"
            noise[kind] = noise.get(kind, 0) + 1
            count += 1
    return split, writer.paths[0], count, noise


def write_synthetic_corpus(
    output_dir: str | os.PathLike,
    config: SyntheticConfig | None = None,
    num_workers: int = 1,
    progress: bool = True,
    splits: Sequence[str] = SPLITS,
) -> dict[str, Any]:
    """Write the corpus as webdataset shards ``OUTPUT/<split>/<split>-NNNNN.tar`` (+ ``manifest.json``, ``vocab.txt``).

    Each sample has ``.jpg``, ``.txt`` (the caption) and ``.json`` (scene, noise kind, labels).
    Returns the manifest, which also lists the shard paths (relative to ``output_dir``) and the
    count of each noise kind in train.
    """
    corpus = SyntheticCorpus(config)
    cfg = corpus.config
    output_dir = os.fspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    tasks = []
    for split in splits:
        shards = -(-corpus.split_size(split) // cfg.shard_size)
        tasks += [(cfg.to_dict(), split, i, os.path.join(output_dir, split)) for i in range(shards)]
    manifest = corpus.manifest()
    for split in splits:
        manifest["splits"][split]["shards"] = []
    noise_counts: dict[str, int] = {}
    bar = tqdm(total=sum(corpus.split_size(s) for s in splits), desc="synthetic corpus", unit=" pairs", disable=not progress)
    if num_workers > 1:
        # fork is much cheaper than spawn (no re-import of torch per worker) and safe here: the
        # workers only use numpy and PIL. Elsewhere (macOS, Windows) spawn is the safe choice.
        pool = get_context("fork" if sys.platform.startswith("linux") else "spawn").Pool(num_workers)
        results = pool.imap_unordered(_write_shard, tasks)
    else:
        pool, results = None, map(_write_shard, tasks)
    try:
        for split, path, count, noise in results:
            manifest["splits"][split]["shards"].append(os.path.relpath(path, output_dir))
            if split == "train":
                for kind, n in noise.items():
                    noise_counts[kind] = noise_counts.get(kind, 0) + n
            bar.update(count)
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    for split in splits:
        manifest["splits"][split]["shards"].sort()
    manifest["splits"] = {s: manifest["splits"][s] for s in splits}
    manifest["train_caption_kinds"] = dict(sorted(noise_counts.items()))
    manifest["vocab_file"] = "vocab.txt"
    with open(os.path.join(output_dir, "vocab.txt"), "w", encoding="utf-8") as handle:
        handle.write("\n".join(corpus.vocab()) + "\n")
    with open(os.path.join(output_dir, "manifest.json"), "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=2)
    logger.info("wrote %s", ", ".join(f"{s}: {corpus.split_size(s)} pairs" for s in splits))
    return manifest


def load_manifest(corpus_dir: str | os.PathLike) -> dict[str, Any]:
    """Read ``manifest.json`` of a written corpus; ``SyntheticCorpus(SyntheticConfig.from_dict(m["config"]))`` rebuilds it."""
    with open(os.path.join(os.fspath(corpus_dir), "manifest.json"), encoding="utf-8") as handle:
        return json.load(handle)


def find_manifest(*folders: str | os.PathLike) -> tuple[dict[str, Any], Path] | None:
    """The first synthetic-corpus manifest among ``folders`` (in order), with the folder holding it.

    Folders without a ``manifest.json``, with an unreadable one, or with the manifest of something
    else (a search index, frequency counts) are passed over; ``None`` when none has one.
    """
    for folder in folders:
        path = Path(folder) / "manifest.json"
        if not path.is_file():
            continue
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(manifest, dict) and str(manifest.get("format", "")).startswith(MANIFEST_PREFIX):
            return manifest, Path(folder)
    return None


def read_split(corpus_dir: str | os.PathLike, split: str) -> list[SyntheticSample]:
    """Load one written split back as :class:`SyntheticSample` s (decoded images, captions, metadata).

    Evaluation convenience: the zero-shot labels are ``meta["label"]`` / ``meta["label_index"]``
    (``meta["unseen"]`` marks combinations absent from training); retrieval captions are
    ``caption`` (and ``meta["captions"]``).
    """
    from align_hf.data.decoding import clean_caption, decode_image, image_bytes
    from align_hf.data.sources import load_pairs

    samples = []
    for record in load_pairs(os.path.join(os.fspath(corpus_dir), split)):
        decoded = decode_image(image_bytes(record["image"]))
        caption, _ = clean_caption(record["text"])
        if decoded.image is None or caption is None:
            raise ValueError(f"{record['key']} in {corpus_dir}/{split} is unreadable: {decoded.reason}")
        samples.append(SyntheticSample(record["key"], decoded.image, caption, json.loads(record["meta"])))
    return samples
