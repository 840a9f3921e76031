"""Two CPU processes (gloo, launched with torchrun) train exactly like one process with the doubled
batch: the contrastive loss is over the global batch, and DDP's gradient averaging is accounted for.
Sharded evaluation over two ranks gives the single-process metrics. The same holds with
feature-cached accumulation (2 ranks x 2 micro-batches x 2 pairs = one batch of 8) and, with
BatchNorm in train mode, with ``--sync_batch_norm``; without it the weights differ.

Run as a script, this file is the torchrun worker.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

STEPS = 3
PER_DEVICE = 4
WORLD = 2


def _setup(corpus, output_dir, per_device_batch, **kwargs):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from test_trainer import fixed_samples, tiny_setup, training_args

    from align_hf.data import load_manifest, load_pairs
    from align_hf.evaluation.eval_sets import RetrievalEvalSet, ZeroShotEvalSet
    from align_hf.training.trainer import AlignTrainer

    model, processor = tiny_setup(corpus, seed=7)
    samples = fixed_samples(corpus, processor, PER_DEVICE * WORLD * STEPS)
    manifest = load_manifest(corpus)
    sets = [
        RetrievalEvalSet(list(load_pairs(os.path.join(corpus, "retrieval"))), caption_column="meta.captions"),
        ZeroShotEvalSet(list(load_pairs(os.path.join(corpus, "zeroshot"))), manifest["class_names"],
                        templates=manifest["zeroshot_templates"], label_column="meta.label_index",
                        subsets={"unseen": manifest["unseen_class_names"]}),
    ]
    # BatchNorm in eval mode: per-rank batch statistics would differ from the doubled batch's. Plain SGD:
    # Adam-type updates turn float rounding in near-zero gradients into full-size steps of either sign,
    # which would test the optimiser's sensitivity rather than the gradients.
    args = training_args(output_dir, max_steps=STEPS, per_device_train_batch_size=per_device_batch, learning_rate=0.5,
                         warmup_steps=0, freeze_batch_norm=True, per_device_eval_batch_size=3, optimizer="hf", optim="sgd",
                         **kwargs)
    return AlignTrainer(model=model, args=args, train_dataset=samples, eval_dataset=sets, processing_class=processor)


# name -> (per-device batch, training arguments) of the runs the "scale" worker makes; every run's global
# batch is 8 pairs per step.
SCALE_RUNS = {
    "accum": (2, {"accum_freq": 2}),  # DDP's default find_unused_parameters=True for a PreTrainedModel
    "accum_static": (2, {"accum_freq": 2, "ddp_find_unused_parameters": False}),
    "sync_bn": (4, {"sync_batch_norm": True, "freeze_batch_norm": False}),
    "local_bn": (4, {"freeze_batch_norm": False}),
}


def _scale_setup(corpus, output_dir, per_device_batch, **kwargs):
    """A trainer without eval sets over the same 24 samples, BatchNorm frozen unless asked, plain SGD."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from test_trainer import fixed_samples, tiny_setup, training_args

    from align_hf.training.trainer import AlignTrainer

    model, processor = tiny_setup(corpus, seed=7)
    samples = fixed_samples(corpus, processor, PER_DEVICE * WORLD * STEPS)
    options = dict(max_steps=STEPS, per_device_train_batch_size=per_device_batch, learning_rate=0.5, warmup_steps=0,
                   freeze_batch_norm=True, optimizer="hf", optim="sgd")
    options.update(kwargs)
    return AlignTrainer(model=model, args=training_args(output_dir, **options), train_dataset=samples, processing_class=processor)


def scale_worker(corpus: str, output_dir: str) -> None:
    torch.set_num_threads(1)
    for name, (per_device, options) in SCALE_RUNS.items():
        trainer = _scale_setup(corpus, os.path.join(output_dir, name), per_device, ddp_backend="gloo", **options)
        assert trainer.args.world_size == WORLD
        trainer.train()
        if trainer.is_world_process_zero():
            torch.save(trainer.model.state_dict(), os.path.join(output_dir, f"{name}.pt"))
            losses = [e["loss"] for e in trainer.state.log_history if "loss" in e and "step" in e]
            with open(os.path.join(output_dir, f"{name}.json"), "w") as handle:
                json.dump(losses, handle)


def worker(corpus: str, output_dir: str) -> None:
    torch.set_num_threads(1)
    trainer = _setup(corpus, output_dir, PER_DEVICE, ddp_backend="gloo")
    assert trainer.args.world_size == WORLD
    metrics = trainer.evaluate()  # sharded over the two ranks
    trainer.train()
    if trainer.is_world_process_zero():
        torch.save(trainer.model.state_dict(), os.path.join(output_dir, "ddp_weights.pt"))
        losses = [e["loss"] for e in trainer.state.log_history if "loss" in e and "step" in e]
        with open(os.path.join(output_dir, "ddp.json"), "w") as handle:
            json.dump({"metrics": metrics, "losses": losses}, handle)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_equal_one_process_with_the_doubled_batch(train_corpus, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", TOKENIZERS_PARALLELISM="false")
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={WORLD}", "--master_addr=127.0.0.1",
               f"--master_port={_free_port()}", os.path.abspath(__file__), str(train_corpus), str(tmp_path)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]

    single = _setup(train_corpus, tmp_path / "single", PER_DEVICE * WORLD)
    single_metrics = single.evaluate()
    single.train()
    with open(tmp_path / "ddp.json") as handle:
        ddp = json.load(handle)
    for key, value in single_metrics.items():
        if not key.endswith("runtime"):
            assert ddp["metrics"][key] == pytest.approx(value, abs=1e-6), key
    single_losses = [e["loss"] for e in single.state.log_history if "loss" in e and "step" in e]
    assert ddp["losses"] == pytest.approx(single_losses, rel=1e-4)  # the global-batch loss on every step
    ddp_weights = torch.load(tmp_path / "ddp_weights.pt")
    moved = 0
    initial = _setup(train_corpus, tmp_path / "initial", PER_DEVICE).model.state_dict()
    for name, value in single.model.state_dict().items():
        torch.testing.assert_close(ddp_weights[name], value, atol=2e-5, rtol=1e-4, msg=name)
        moved += not torch.equal(initial[name], value)
    assert moved > 50  # the comparison is about trained weights, not untouched ones


def _launch(corpus, output_dir, *extra: str) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", TOKENIZERS_PARALLELISM="false")
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={WORLD}", "--master_addr=127.0.0.1",
               f"--master_port={_free_port()}", os.path.abspath(__file__), str(corpus), str(output_dir), *extra]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]


@pytest.mark.slow
def test_feature_cached_accumulation_and_sync_batch_norm_across_two_processes(train_corpus, tmp_path):
    _launch(train_corpus, tmp_path, "scale")
    references = {}
    for frozen in (True, False):  # one process holding the whole global batch of 8
        single = _scale_setup(train_corpus, tmp_path / f"single_{frozen}", PER_DEVICE * WORLD, freeze_batch_norm=frozen)
        single.train()
        losses = [e["loss"] for e in single.state.log_history if "loss" in e and "step" in e]
        references[frozen] = (single.model.state_dict(), losses)
    initial = _scale_setup(train_corpus, tmp_path / "initial", PER_DEVICE).model.state_dict()

    def compare(name: str, frozen: bool) -> float:
        """Largest weight difference of run ``name`` from the single process (losses must match)."""
        weights = torch.load(tmp_path / f"{name}.pt")
        with open(tmp_path / f"{name}.json") as handle:
            losses = json.load(handle)
        expected, expected_losses = references[frozen]
        assert set(weights) == set(expected), name  # SyncBatchNorm keeps BatchNorm's state-dict keys
        if name != "local_bn":
            assert losses == pytest.approx(expected_losses, rel=1e-4), name
        return max((weights[k].double() - v.double()).abs().max().item() for k, v in expected.items() if v.is_floating_point())

    for name in ("accum", "accum_static", "sync_bn"):
        frozen = name != "sync_bn"
        expected = references[frozen][0]
        weights = torch.load(tmp_path / f"{name}.pt")
        compare(name, frozen)
        for key, value in expected.items():
            torch.testing.assert_close(weights[key], value, atol=2e-5, rtol=1e-4, msg=f"{name}: {key}")
        assert sum(not torch.equal(initial[k], v) for k, v in expected.items()) > 50
    # BatchNorm statistics moved (train mode), identically with SyncBatchNorm.
    stats = "vision_model.backbone.bn1.running_mean"
    assert not torch.equal(references[False][0][stats], initial[stats])
    # Without SyncBatchNorm each rank normalises its 4 pairs with their own statistics: other weights.
    assert compare("local_bn", False) > 1e-2


if __name__ == "__main__":
    if sys.argv[3:] == ["scale"]:
        scale_worker(sys.argv[1], sys.argv[2])
    else:
        worker(sys.argv[1], sys.argv[2])
