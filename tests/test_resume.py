"""Exact resumption of the training stream from saved shard + offset + shuffle-buffer state, no replay.

A multi-shard webdataset stream read by 2 DataLoader workers is stopped at batch/step k and resumed
from the saved state: the resumed run sees exactly the samples the straight run sees next (compared
by sample key, across a data-epoch boundary), trains to the same weights, keeps the data counts
and the time budget running instead of restarting them, and decodes no image the straight run had
already trained on (a decode-counting hook; at most one shuffle buffer more than the straight run
needs after step k). The 2-rank variant (torchrun, gloo) checks per-rank state files.

Run as a script, this file is the torchrun worker of the 2-rank test.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import zlib

import pytest
import torch
from transformers import TrainerCallback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from align_hf.data import ImageTextCollator, ImageTextLoader, ShardWriter  # noqa: E402
from align_hf.data.pipeline import build_train_stream  # noqa: E402
from align_hf.training.stream import StreamingTrainLoader  # noqa: E402

BATCH = 4
BUFFER = 16
WORKERS = 2


class KeyedCollator(ImageTextCollator):
    """The collator, plus each batch's sample keys under ``"keys"`` (what the comparisons read)."""

    def __call__(self, samples):
        batch = super().__call__(samples)
        if "pixel_values" in batch:
            batch["keys"] = [s["key"] for s in samples if s.get("pixel_values") is not None]
        return batch


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """8 shards of 12 synthetic 32 px pairs plus a shard of 3 bad records (skip counts). Returns the
    corpus folder (``train/`` holds the shards, ``vocab.txt`` the vocabulary)."""
    from align_hf.data import SyntheticConfig, write_synthetic_corpus

    root = tmp_path_factory.mktemp("resume_corpus")
    config = SyntheticConfig(image_size=32, num_train=96, zeroshot_per_class=1, num_retrieval=4, shard_size=12,
                             colours=("red", "green", "blue"), shapes=("circle", "square", "star"), seed=1)
    write_synthetic_corpus(root, config, num_workers=1, progress=False, splits=("train",))
    with ShardWriter(str(root / "train"), prefix="zz-bad") as writer:
        writer.write({"__key__": "bad-bytes", "jpg": b"not an image", "txt": "a red circle"})
        writer.write({"__key__": "bad-empty", "jpg": b"", "txt": "a blue star"})
        writer.write({"__key__": "bad-caption", "jpg": b"\xff\xd8 truncated", "txt": ""})
    return root


@pytest.fixture
def decode_log(tmp_path, monkeypatch):
    """Logs image decodes in every process: forked DataLoader workers inherit the patched
    ``decode_image``, which appends the CRC of the image bytes to a file. Returns a function giving
    the CRCs logged so far (``image_crc`` maps them to sample keys)."""
    import align_hf.data.pipeline as pipeline

    path = tmp_path / "decodes.log"
    path.write_text("")
    original = pipeline.decode_image

    def counting(data, *args, **kwargs):
        with open(path, "a") as handle:  # O_APPEND: lines from several processes never interleave
            handle.write(f"{zlib.crc32(data or b'')}\n")
        return original(data, *args, **kwargs)

    monkeypatch.setattr(pipeline, "decode_image", counting)
    return lambda: [int(line) for line in path.read_text().splitlines()]


def image_crc(corpus) -> dict[int, str]:
    """CRC of each record's image bytes -> its key (every synthetic image differs)."""
    from align_hf.data import load_pairs

    return {zlib.crc32((r["image"] or {}).get("bytes") or b""): r["key"] for r in load_pairs(str(corpus / "train"))}


def make_stream(corpus, processor, seed: int = 3) -> StreamingTrainLoader:
    stream = build_train_stream(str(corpus / "train"), processor.image_processor, seed=seed, shuffle_buffer=BUFFER)
    loader = ImageTextLoader(stream, KeyedCollator(processor.tokenizer, max_length=16), batch_size=BATCH,
                             num_workers=WORKERS)
    return StreamingTrainLoader(loader)


def take(stream: StreamingTrainLoader, count: int, iterator=None) -> tuple[list[list[str]], object]:
    iterator = iterator or iter(stream)
    return [next(iterator)["keys"] for _ in range(count)], iterator


def test_stream_resumes_sample_exactly_without_decoding_again(shards, decode_log):
    from test_trainer import tiny_setup

    processor = tiny_setup(shards)[1]
    crc_key = image_crc(shards)
    # One whole data epoch, straight: every record that reaches decoding is decoded once.
    straight = make_stream(shards, processor).loader
    epoch = [batch["keys"] for batch in straight]
    straight_decodes, straight_stats = len(decode_log()), straight.stats.as_dict()
    assert straight_stats["skipped"] and len(epoch) >= 20 and len({k for b in epoch for k in b}) == BATCH * len(epoch)

    for k in (1, 9, len(epoch) - 1):
        stopped = make_stream(shards, processor).loader
        iterator = iter(stopped)
        assert [next(iterator)["keys"] for _ in range(k)] == epoch[:k]
        state = stopped.state_dict()
        del iterator  # the stop: workers and their prefetched batches are gone
        before = len(decode_log())

        resumed = make_stream(shards, processor).loader
        resumed.load_state_dict(state)
        rest = [batch["keys"] for batch in resumed]
        assert rest == epoch[k:], f"resumed at {k}"
        assert resumed.stats.as_dict() == straight_stats  # counts continue, nothing counted twice
        decoded = [crc_key[crc] for crc in decode_log()[before:]]
        trained = {key for keys in epoch[:k] for key in keys}
        assert not trained & set(decoded), "a sample trained on before the stop was decoded again"
        # At most one shuffle buffer more than the straight run decodes after step k.
        assert len(decoded) <= straight_decodes - BATCH * k + BUFFER, (k, len(decoded), straight_decodes)


def test_resume_crosses_the_data_epoch_boundary(shards):
    from test_trainer import tiny_setup

    processor = tiny_setup(shards)[1]
    straight_stream = make_stream(shards, processor, seed=5)
    straight, _ = take(straight_stream, 40)  # about 1.8 data epochs
    stopped = make_stream(shards, processor, seed=5)
    trained, iterator = take(stopped, 17)
    state = stopped.state_dict()
    del iterator
    resumed = make_stream(shards, processor, seed=5)
    resumed.load_state_dict(state)
    rest, _ = take(resumed, 40 - 17)
    assert trained + rest == straight and resumed.epoch == straight_stream.epoch == 1
    assert resumed.stats.as_dict() == straight_stream.stats.as_dict()


@pytest.mark.parametrize("buffer_size", [0, 5, 40])
def test_shuffle_buffer_resumes_exactly_from_every_position(shards, buffer_size):
    """Raw records (no decoding) in this process: stopping after any record, including while the
    buffer fills and while it drains at the end, and resuming gives the uninterrupted order."""
    from align_hf.data import load_pairs
    from align_hf.data.resumable import ResumableShuffle, shuffle_shards

    pairs = shuffle_shards(load_pairs(str(shards / "train")), seed=4)
    full = [r["key"] for r in ResumableShuffle(pairs, buffer_size, (4, 0))]
    assert sorted(full) == sorted(r["key"] for r in load_pairs(str(shards / "train")))
    shard_order = [r["key"] for r in ResumableShuffle(pairs, 0, (4, 0))]
    assert (full != shard_order) == (buffer_size > 1)
    for k in range(len(full) + 1):
        first = ResumableShuffle(pairs, buffer_size, (4, 0))
        iterator = iter(first)
        head = [next(iterator)["key"] for _ in range(k)]
        state = first.state_dict()
        resumed = ResumableShuffle(pairs, buffer_size, (4, 0), state)
        assert head + [r["key"] for r in resumed] == full, k
        # Re-read back to the oldest buffered record (and its anchor), never the whole stream.
        assert resumed.reread <= (first.reads - min(first.slots, default=first.reads)) + max(1, buffer_size // 8)


STEPS, SAVE_AT, ACCUMULATE = 6, 3, 2


def _recording_trainer(corpus, output_dir, callbacks=(), source=None, **overrides):
    """An AlignTrainer over the 2-worker stream that records each micro-batch's sample keys."""
    from test_trainer import tiny_setup, training_args

    from align_hf.training.trainer import AlignTrainer

    class Recording(AlignTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            self.seen.append(inputs.pop("keys"))
            return super().training_step(model, inputs, num_items_in_batch)

    model, processor = tiny_setup(corpus, seed=5, text_config={"hidden_dropout_prob": 0.1})
    settings = dict(max_steps=STEPS, save_strategy="steps", save_steps=SAVE_AT, warmup_steps=1, per_device_train_batch_size=BATCH,
                    gradient_accumulation_steps=ACCUMULATE, dataloader_num_workers=WORKERS, dataloader_prefetch_factor=1,
                    max_train_seconds=3600)
    args = training_args(output_dir, **{**settings, **overrides})  # first: it starts torch.distributed under torchrun
    stream = build_train_stream(source or str(corpus / "train"), processor.image_processor, seed=2, shuffle_buffer=BUFFER)
    trainer = Recording(model=model, args=args, train_dataset=stream, processing_class=processor,
                        data_collator=KeyedCollator(processor.tokenizer, max_length=32), callbacks=list(callbacks))
    trainer.seen = []
    return trainer


class KillAt(TrainerCallback):
    """Raises (as a kill would stop the process) when step ``step`` begins."""

    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt(f"killed at step {self.step}")


def _budget_clock(trainer):
    from align_hf.training.budget import TimeBudgetCallback

    return next(c.clock for c in trainer.callback_handler.callbacks if isinstance(c, TimeBudgetCallback))


def test_trainer_resumes_to_the_same_weights_counts_and_budget(shards, decode_log, tmp_path):
    import time

    from transformers.trainer_utils import get_last_checkpoint

    from align_hf.training.checkpointing import load_rank_state, rank_state_path

    crc_key = image_crc(shards)
    straight = _recording_trainer(shards, tmp_path / "straight")
    straight.train()
    straight_decodes = len(decode_log())

    killed = _recording_trainer(shards, tmp_path / "killed", callbacks=[KillAt(SAVE_AT + 1)])
    with pytest.raises(KeyboardInterrupt):
        killed.train()
    checkpoint = get_last_checkpoint(tmp_path / "killed")
    assert checkpoint.endswith(f"checkpoint-{SAVE_AT}")
    saved = load_rank_state(checkpoint, 0)
    assert os.path.exists(rank_state_path(checkpoint, 0)) and saved["stream"]["epoch"] == 0
    assert saved["budget_seconds"] > 0
    trained_before = {k for keys in killed.seen[: SAVE_AT * ACCUMULATE] for k in keys}

    resumed = _recording_trainer(shards, tmp_path / "killed")
    before = len(decode_log())
    start = time.perf_counter()
    clock_at_start = []
    resumed.add_callback(type("AtStart", (TrainerCallback,), {
        "on_train_begin": lambda self, *a, **k: clock_at_start.append(_budget_clock(resumed).elapsed())})())
    resumed.train(resume_from_checkpoint=True)
    wall = time.perf_counter() - start

    # The samples the straight run saw after step k, micro-batch for micro-batch.
    assert resumed.state.global_step == STEPS and resumed.seen == straight.seen[SAVE_AT * ACCUMULATE :]
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)
    moved = _recording_trainer(shards, tmp_path / "initial").model.state_dict()
    assert sum(not torch.equal(moved[n], v) for n, v in straight.model.state_dict().items()) > 50

    # Data counts continue from the checkpoint: equal to the straight run's, not doubled.
    assert resumed.data_stats().as_dict() == straight.data_stats().as_dict()
    # The budget continues: the clock starts at the seconds spent before the kill, not at zero.
    assert saved["budget_seconds"] <= clock_at_start[0] <= saved["budget_seconds"] + wall
    # No replay: nothing trained before the checkpoint is decoded again, and the resumed run decodes
    # at most one shuffle buffer more than the straight run needs after step k.
    decoded = [crc_key[crc] for crc in decode_log()[before:]]
    assert not trained_before & set(decoded)
    assert len(decoded) <= straight_decodes - BATCH * ACCUMULATE * SAVE_AT + BUFFER, (len(decoded), straight_decodes)


class StopAt(TrainerCallback):
    """Ends training after step ``step`` (its checkpoint is saved first), as a preempted job would."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True
        return control


def worker(corpus: str, output_dir: str) -> None:
    """One rank of the 2-rank run: straight, stopped at step k, resumed; keys and weights to files."""
    import glob
    from pathlib import Path

    torch.set_num_threads(1)
    corpus, out = Path(corpus), Path(output_dir)
    source = sorted(glob.glob(str(corpus / "train" / "train-*.tar")))  # 8 shards: 4 per rank, 2 per worker
    runs = {}
    for name, callbacks, resume in (("straight", [], None), ("stopped", [StopAt(SAVE_AT)], None), ("stopped", [], True)):
        trainer = _recording_trainer(corpus, out / name, callbacks, source=source, ddp_backend="gloo")
        assert trainer.args.world_size == 2
        trainer.train(resume_from_checkpoint=resume)
        runs["resumed" if resume else name] = trainer
    rank = runs["straight"].args.process_index
    with open(out / f"seen-rank{rank}.json", "w") as handle:
        json.dump({name: trainer.seen for name, trainer in runs.items()}, handle)
    if rank == 0:
        for name in ("straight", "resumed"):
            torch.save(runs[name].model.state_dict(), out / f"{name}_weights.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_ranks_save_and_resume_their_own_stream_state(shards, tmp_path):
    from align_hf.training.checkpointing import load_rank_state

    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", TOKENIZERS_PARALLELISM="false")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={_free_port()}", os.path.abspath(__file__), str(shards), str(tmp_path)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]

    checkpoint = tmp_path / "stopped" / f"checkpoint-{SAVE_AT}"
    states = [load_rank_state(str(checkpoint), rank) for rank in range(2)]
    assert all(state is not None for state in states)
    seen = []
    for rank in range(2):
        with open(tmp_path / f"seen-rank{rank}.json") as handle:
            runs = json.load(handle)
        k = SAVE_AT * ACCUMULATE
        assert runs["stopped"] == runs["straight"][:k] and runs["resumed"] == runs["straight"][k:], rank
        # Each rank's file holds the positions of both of that rank's workers.
        workers = states[rank]["stream"]["loader"]["_snapshot"]["_worker_snapshots"]
        seen.append({key for keys in runs["straight"] for key in keys})
        assert {w["dataset_state"]["worker"] for w in workers.values()} == {0, 1}
    assert not seen[0] & seen[1]  # the ranks read disjoint shards
    buffers = [[w["dataset_state"]["records"]["rng"] for w in state["stream"]["loader"]["_snapshot"]["_worker_snapshots"].values()]
               for state in states]
    assert buffers[0] != buffers[1]  # each rank's file holds its own shuffle buffers' generators
    straight, resumed = torch.load(tmp_path / "straight_weights.pt"), torch.load(tmp_path / "resumed_weights.pt")
    for name, value in straight.items():
        torch.testing.assert_close(resumed[name], value, atol=1e-6, rtol=1e-5, msg=name)


if __name__ == "__main__":
    worker(sys.argv[1], sys.argv[2])
