"""Tiny, seeded models and processors for tests, examples and CPU demos (no network needed)."""

from __future__ import annotations

import torch
from transformers import BertTokenizer

from .configuration_align import AlignConfig
from .modeling_align import AlignModel
from .processing_align import AlignImageProcessor, AlignProcessor

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
DEFAULT_WORDS = (
    "a an the photo picture image of on in with and small large big tiny red green blue yellow "
    "black white purple orange gray pink brown circle square triangle star cross ring cat dog car "
    "left right top bottom center one two three background striped dotted plain"
).split()


def tiny_tokenizer(words: list[str] | None = None, max_length: int = 64) -> BertTokenizer:
    """An uncased WordPiece tokenizer over ``words`` plus single characters, built in memory."""
    words = list(DEFAULT_WORDS if words is None else words)
    chars = [c for c in "abcdefghijklmnopqrstuvwxyz0123456789.,"]
    vocab = list(dict.fromkeys(SPECIAL_TOKENS + [w.lower() for w in words] + chars + ["##" + c for c in chars]))
    return BertTokenizer(vocab={token: i for i, token in enumerate(vocab)}, model_max_length=max_length)


def tiny_processor(words: list[str] | None = None, image_size: int = 64, max_length: int = 16) -> AlignProcessor:
    """A processor for the ``tiny`` preset: ALIGN's resize ratio (346/289), centre crop ``image_size``."""
    image_processor = AlignImageProcessor.for_image_size(image_size)
    return AlignProcessor(image_processor=image_processor, tokenizer=tiny_tokenizer(words, max_length))


def tiny_model(seed: int = 0, vocab_size: int | None = None, **overrides) -> AlignModel:
    """The ``tiny`` preset with seeded random weights, in eval mode."""
    torch.manual_seed(seed)
    if vocab_size is not None:
        overrides.setdefault("text_config", {})["vocab_size"] = vocab_size
    return AlignModel(AlignConfig.from_preset("tiny", **overrides)).eval()


def peak_cpu_allocation(fn) -> int:
    """Peak bytes of CPU tensors allocated inside ``fn`` and still alive, from the profiler's
    allocation events (each carries the running total of memory allocated while profiling)."""
    import json
    import os
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "trace.json")
        prof.export_chrome_trace(path)
        with open(path, encoding="utf-8") as handle:
            events = json.load(handle)["traceEvents"]
    totals = [e["args"]["Total Allocated"] for e in events
              if e.get("name") == "[memory]" and e["args"].get("Device Type") == 0]
    if not totals:
        raise RuntimeError("the profiler recorded no CPU allocations")
    return max(totals)
