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

from align_hf.data.check import check_pairs, format_report
from align_hf.data.decoding import SKIP_REASONS, DecodedImage, DecodeLimits, clean_caption, decode_image, image_bytes
from align_hf.data.filtering import (
    RULES,
    AlignFilter,
    FilterConfig,
    FilterReport,
    FrequencyCounts,
    count_frequencies,
    unigrams,
)
from align_hf.data.pipeline import DataStats, ImageTextLoader, ImageTextPairs, build_loader
from align_hf.data.sources import load_pairs
from align_hf.data.synthetic import (
    ZERO_SHOT_TEMPLATES,
    SyntheticConfig,
    SyntheticCorpus,
    SyntheticSample,
    class_names,
    find_manifest,
    load_manifest,
    read_split,
    unseen_combinations,
    write_synthetic_corpus,
)
from align_hf.data.transforms import ImageTextCollator, ImageTransform
from align_hf.data.vocab import SPECIAL_TOKENS, build_vocab, make_tokenizer, save_vocab
from align_hf.data.webdataset import ShardWriter, iter_shard

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
