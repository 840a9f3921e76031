"""Image-text data: loading any common format, robust decoding, ALIGN filtering, transforms,
batching, and the synthetic noisy alt-text corpus.

Typical training input::

    from align_hf.data import load_pairs, ImageTextPairs, ImageTextLoader, ImageTransform, ImageTextCollator

    pairs = load_pairs("shards/{00000..00127}.tar")
    transform = ImageTransform.from_image_processor(processor.image_processor, train=True)
    dataset = ImageTextPairs(pairs, transform, shuffle_buffer=10_000, seed=0)
    loader = ImageTextLoader(dataset, ImageTextCollator(processor.tokenizer), batch_size=256, num_workers=4)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for batch in loader:  # pixel_values, input_ids, attention_mask
            ...
    print(loader.stats.as_dict())  # read / kept / skipped by reason / filtered by rule
"""

from __future__ import annotations

import importlib
from typing import Any

# Exported name -> the module defining it. Imported on first use, so reading a manifest or
# listing shards does not pay for torch (the loader and transforms need it, the rest does not).
_EXPORTS: dict[str, str] = {
    "check_pairs": "check",
    "format_report": "check",
    "DecodeLimits": "decoding",
    "DecodedImage": "decoding",
    "SKIP_REASONS": "decoding",
    "clean_caption": "decoding",
    "decode_image": "decoding",
    "image_bytes": "decoding",
    "AlignFilter": "filtering",
    "FilterConfig": "filtering",
    "FilterReport": "filtering",
    "FrequencyCounts": "filtering",
    "RULES": "filtering",
    "count_frequencies": "filtering",
    "unigrams": "filtering",
    "DataStats": "pipeline",
    "ImageTextLoader": "pipeline",
    "ImageTextPairs": "pipeline",
    "build_loader": "pipeline",
    "build_train_stream": "pipeline",
    "count_corpus": "counting",
    "CountStore": "count_store",
    "load_counts": "count_store",
    "load_pairs": "sources",
    "SyntheticConfig": "synthetic",
    "SyntheticCorpus": "synthetic",
    "SyntheticSample": "synthetic",
    "ZERO_SHOT_TEMPLATES": "synthetic",
    "class_names": "synthetic",
    "find_manifest": "synthetic_files",
    "load_manifest": "synthetic_files",
    "read_split": "synthetic_files",
    "unseen_combinations": "synthetic",
    "write_synthetic_corpus": "synthetic_files",
    "ImageTextCollator": "transforms",
    "ImageTransform": "transforms",
    "SPECIAL_TOKENS": "vocab",
    "build_vocab": "vocab",
    "make_tokenizer": "vocab",
    "save_vocab": "vocab",
    "ShardWriter": "webdataset",
    "iter_shard": "webdataset",
}

__all__ = [
    "AlignFilter",
    "DataStats",
    "DecodeLimits",
    "DecodedImage",
    "FilterConfig",
    "FilterReport",
    "FrequencyCounts",
    "ImageTextCollator",
    "ImageTextLoader",
    "ImageTextPairs",
    "ImageTransform",
    "RULES",
    "SKIP_REASONS",
    "SPECIAL_TOKENS",
    "ShardWriter",
    "SyntheticConfig",
    "SyntheticCorpus",
    "SyntheticSample",
    "ZERO_SHOT_TEMPLATES",
    "build_loader",
    "build_train_stream",
    "count_corpus",
    "CountStore",
    "load_counts",
    "build_vocab",
    "check_pairs",
    "class_names",
    "clean_caption",
    "count_frequencies",
    "decode_image",
    "format_report",
    "image_bytes",
    "iter_shard",
    "find_manifest",
    "load_manifest",
    "load_pairs",
    "read_split",
    "make_tokenizer",
    "save_vocab",
    "unigrams",
    "unseen_combinations",
    "write_synthetic_corpus",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
