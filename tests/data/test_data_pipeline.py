"""Decode/filter/transform pipeline: bad data skipped and counted, sharding, transforms, batches."""

from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from align_hf.data import (
    AlignFilter,
    FilterConfig,
    ImageTextCollator,
    ImageTextLoader,
    ImageTextPairs,
    ImageTransform,
    build_loader,
    count_frequencies,
    load_pairs,
)
from align_hf.data.transforms import LEFT_RIGHT_SWAP, swap_words
from align_hf.testing import tiny_model, tiny_processor, tiny_tokenizer
from data_samples import bad_samples, gradient_image, good_samples, write_samples


def expected_skips() -> Counter:
    return Counter(s["expect"] for s in bad_samples() if s["expect"] is not None)


def kept_keys() -> list[str]:
    return [s["key"] for s in bad_samples() if s["expect"] is None]


def test_bad_shard_skips_exactly_the_bad_samples(tmp_path):
    write_samples(str(tmp_path), bad_samples(), per_shard=100)
    dataset = ImageTextPairs(load_pairs(str(tmp_path)), ImageTransform(32, 28))
    samples = list(dataset)
    assert [s["key"] for s in samples] == kept_keys()
    assert all(s["pixel_values"].shape == (3, 28, 28) for s in samples)
    assert dataset.stats.skipped == expected_skips()
    assert dataset.stats.total == len(bad_samples()) and dataset.stats.kept == len(kept_keys())


def test_loader_gathers_counts_from_workers(tmp_path):
    # Bad samples spread over 4 shards read by 2 workers; counts must reach the main process.
    write_samples(str(tmp_path), bad_samples() + good_samples(5), per_shard=4)
    dataset = ImageTextPairs(load_pairs(str(tmp_path)), ImageTransform(32, 28))
    loader = ImageTextLoader(dataset, ImageTextCollator(tiny_tokenizer()), batch_size=2, num_workers=2, drop_last=False)
    batches = list(loader)
    kept = len(kept_keys()) + 5
    assert sum(b["pixel_values"].shape[0] for b in batches) == kept
    assert set(batches[0]) == {"pixel_values", "input_ids", "attention_mask"}
    assert loader.stats.skipped == expected_skips()
    assert loader.stats.total == len(bad_samples()) + 5 and loader.stats.kept == kept
    # A second epoch adds to the same counters.
    list(loader)
    assert loader.stats.total == 2 * (len(bad_samples()) + 5)


def test_drop_last_gives_full_batches_and_counts_the_rest(tmp_path):
    write_samples(str(tmp_path), good_samples(7), per_shard=7)
    loader = ImageTextLoader(ImageTextPairs(load_pairs(str(tmp_path)), ImageTransform(16)), ImageTextCollator(tiny_tokenizer()), batch_size=3)
    assert [b["pixel_values"].shape[0] for b in loader] == [3, 3]
    assert loader.stats.skipped["incomplete_batch"] == 1
    loader.max_batches = 1
    assert len(list(loader)) == 1


def test_failing_transform_is_skipped_and_counted(tmp_path):
    write_samples(str(tmp_path), good_samples(4), per_shard=4)

    def picky(image):
        if image.getpixel((0, 0))[0] % 2:
            raise RuntimeError("odd pixel")
        return torch.zeros(3, 2, 2)

    dataset = ImageTextPairs(load_pairs(str(tmp_path)), picky)
    kept = list(dataset)
    assert len(kept) + dataset.stats.skipped["transform_error"] == 4 and dataset.stats.skipped["transform_error"] > 0


def keys_read(pairs, rank: int, world_size: int, num_workers: int) -> list[str]:
    dataset = ImageTextPairs(pairs, rank=rank, world_size=world_size)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=num_workers, collate_fn=lambda s: s["key"])
    return list(loader)


@pytest.mark.parametrize("num_shards", [8, 3])
def test_rank_and_worker_sharding_reads_every_sample_once(tmp_path, num_shards):
    # 8 shards split by whole shards; 3 shards over 2 ranks fall back to every other example.
    samples = good_samples(24, size=(8, 8))
    write_samples(str(tmp_path), samples, per_shard=24 // num_shards)
    pairs = load_pairs(str(tmp_path))
    assert pairs.n_shards == num_shards
    seen = []
    for rank in range(2):
        keys = keys_read(pairs, rank, 2, num_workers=2 if num_shards == 8 else 0)
        assert keys, "every rank gets data"
        seen += keys
    assert sorted(seen) == sorted(s["key"] for s in samples)


def test_shuffle_buffer_and_epochs(tmp_path):
    samples = good_samples(30, size=(8, 8))
    write_samples(str(tmp_path), samples, per_shard=5)
    pairs = load_pairs(str(tmp_path))
    order = lambda ds: [s["key"] for s in ds]  # noqa: E731
    plain = order(ImageTextPairs(pairs))
    assert plain == [s["key"] for s in samples]
    a, b = ImageTextPairs(pairs, shuffle_buffer=8, seed=1), ImageTextPairs(pairs, shuffle_buffer=8, seed=1)
    epoch0 = order(a)
    assert epoch0 == order(b) and epoch0 != plain and sorted(epoch0) == sorted(plain)
    a.set_epoch(1)
    epoch1 = order(a)
    assert epoch1 != epoch0 and sorted(epoch1) == sorted(plain)


def test_filter_in_pipeline_counts_by_rule(tmp_path):
    samples = good_samples(14, size=(40, 40))
    for s in samples[:12]:
        s["text"] = "same text for many"
    samples[12]["text"] = "too short"
    write_samples(str(tmp_path), samples, per_shard=7)
    pairs = load_pairs(str(tmp_path))
    flt = AlignFilter(FilterConfig(min_image_side=16), count_frequencies(pairs, progress=False))
    dataset = ImageTextPairs(pairs, filter=flt)
    assert [s["key"] for s in dataset] == [samples[13]["key"]]
    assert dataset.stats.filtered == Counter({"text_shared_by_many_images": 12, "caption_word_count": 1})
    assert flt.report.kept == 1 and flt.report.checked == 14


def test_eval_transform_matches_the_processor_and_pil():
    image = gradient_image(90, 70, seed=5)
    processor = tiny_processor(image_size=64)  # resize 77x77, centre crop 64x64, x/127.5 - 1
    transform = ImageTransform.from_image_processor(processor.image_processor)
    expected = processor(images=[image], return_tensors="pt")["pixel_values"][0]
    assert transform.backend == "torchvision"
    torch.testing.assert_close(transform(image), expected, atol=1e-6, rtol=0)
    # The PIL backend: resize with PIL, floor-centred crop; equal to doing it by hand.
    pil = ImageTransform({"height": 77, "width": 77}, {"height": 64, "width": 64}, backend="pil")
    by_hand = np.asarray(image.resize((77, 77), Image.BICUBIC))[6:70, 6:70].astype(np.float32) / 127.5 - 1
    torch.testing.assert_close(pil(image), torch.from_numpy(by_hand).permute(2, 0, 1), atol=1e-6, rtol=0)
    # The two resizers agree up to rounding.
    assert (pil(image) - expected).abs().max() <= 3 / 127.5


def test_train_transform_crops_and_flips_the_resized_image():
    image = gradient_image(50, 40, seed=2)
    transform = ImageTransform(32, 24, train=True, seed=0, backend="pil")
    resized = np.asarray(image.resize((32, 32), Image.BICUBIC)).astype(np.float32) / 127.5 - 1
    flips = 0
    offsets = set()
    for _ in range(40):
        out = transform(image).permute(1, 2, 0).numpy()
        if transform.last_flipped:
            out = out[:, ::-1]
            flips += 1
        # Brute force: the output must be exactly one 24x24 window of the resized image.
        matches = [(t, l) for t in range(9) for l in range(9) if np.allclose(resized[t : t + 24, l : l + 24], out, atol=1e-6)]
        assert len(matches) == 1
        offsets.add(matches[0])
    assert 8 <= flips <= 32 and len(offsets) > 5


def test_flip_swaps_left_and_right_in_captions(tmp_path):
    samples = good_samples(12, size=(16, 16))
    for s in samples:
        s["text"] = "a red circle on the left, a star on the right"
    write_samples(str(tmp_path), samples, per_shard=12)
    transform = ImageTransform(16, train=True, seed=3)
    texts = Counter(s["text"] for s in ImageTextPairs(load_pairs(str(tmp_path)), transform, flip_swap=LEFT_RIGHT_SWAP))
    assert set(texts) == {"a red circle on the left, a star on the right", "a red circle on the right, a star on the left"}
    assert swap_words("Left leftover right", LEFT_RIGHT_SWAP) == "right leftover left"


def test_collator_tokenises_like_the_tokenizer():
    tokenizer = tiny_tokenizer(max_length=64)
    texts = ["a red circle", "a small blue square on the left " * 20]
    samples = [{"pixel_values": torch.full((3, 4, 4), float(i)), "text": t} for i, t in enumerate(texts)]
    batch = ImageTextCollator(tokenizer, max_length=64)(samples)
    expected = tokenizer(texts, padding="longest", truncation=True, max_length=64, return_tensors="pt")
    assert batch["input_ids"].shape == (2, 64)
    torch.testing.assert_close(batch["input_ids"], expected["input_ids"])
    torch.testing.assert_close(batch["attention_mask"], expected["attention_mask"])
    assert batch["pixel_values"][1].eq(1).all()
    fixed = ImageTextCollator(tokenizer, max_length=16, padding="max_length")(samples[:1])
    assert fixed["input_ids"].shape == (1, 16) and fixed["attention_mask"].sum() == 5


def test_build_loader_batches_feed_the_model(tmp_path):
    write_samples(str(tmp_path), good_samples(8), per_shard=4)
    processor = tiny_processor(image_size=32)
    loader = build_loader(str(tmp_path), batch_size=4, processor=processor, shuffle_buffer=4)
    batches = list(loader)
    assert len(batches) == 2 and batches[0]["pixel_values"].shape == (4, 3, 32, 32)
    model = tiny_model(vocab_size=processor.tokenizer.vocab_size, vision_config={"image_size": 32})
    loss = model(**batches[0], return_loss=True).loss
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="processor="):
        build_loader(str(tmp_path), batch_size=2)
