"""Two CPU processes (gloo, launched with torchrun) train exactly like one process with the doubled
batch: the contrastive loss is over the global batch, and DDP's gradient averaging is accounted for.
Sharded evaluation over two ranks gives the single-process metrics.

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


if __name__ == "__main__":
    worker(sys.argv[1], sys.argv[2])
