"""Embedding a corpus on Ray Data: CPU tasks read and preprocess shards, an actor pool embeds.

::

    shards --(read tasks: read, decode, processor; 1 CPU each)--> numpy batches
           --(actor pool: Embedder, one model per actor; num_gpus=1 on GPU)--> embeddings
           --(driver: EmbeddingWriter)--> EMB/img_emb, text_emb, metadata, align_manifest.json

The actor pool is sized by :func:`plan_resources`: one actor per GPU, or on CPUs only actors of
1-4 threads for about 80% of the cores (two single-thread ones on a 2-core machine), the rest
left to decoding. By default Ray starts on this machine (``ray.init()`` with its CPUs; nothing
to start by hand); ``ray_address`` connects to a running cluster instead (``"auto"``, or ``"ray://head:10001"``).
Input paths must then be readable on every node (shared storage, ``s3://``/``gs://`` URLs);
the output is written by the driver only.

The dataset keeps input order (``preserve_order``), so the driver receives each shard's rows
in order and writes one part per shard as soon as its end-of-shard row arrives: ids are those of
the single-process build (:func:`~align_hf.search.embeddings.embed_to_folder`), and shards
already written are left out of the dataset when a build is rerun.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from typing import Any, Iterator

import numpy as np

from align_hf.search.embed_steps import Embedder, InputPlan, read_shard
from align_hf.search.embeddings import PartCallback, start_build

logger = logging.getLogger(__name__)

READ_TASK_MEMORY = 2**30  # bytes reserved per read task (a worker with torch imported is ~600 MiB)


def connect(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Connect to Ray: the cluster at ``address``, else a local one with ``num_cpus`` CPUs. True if we started it.

    As :func:`align_hf.data.counting.init_ray`, with the workers' own logs kept out of the
    driver's output (a line per batch from every actor would bury the progress bar).
    """
    from align_hf.data.counting import init_ray

    return init_ray(address, num_cpus, log_to_driver=False)


def plan_resources(cluster: dict[str, float], actors: int | None = None, num_gpus: float | None = None,
                   cpus_per_actor: float | None = None, threads: int | None = None) -> dict[str, Any]:
    """How many embedding actors, with which resources, for a cluster's ``ray.cluster_resources()``.

    GPUs present: one actor per ``num_gpus`` (default 1) GPUs, 1 CPU each; the other CPUs read.
    CPUs only: embedding is about 80% of the CPU work (B0 at 128 px, measured: decoding and the
    processor are the rest), so actors of ``threads`` torch threads (1 up to 8 CPUs, 2 up to 16, then
    4) are started for about 80% of the CPUs (rounded to the nearest actor); each reserves at most ``threads`` CPUs
    and together they leave one CPU or more to the read tasks. On 2 CPUs: 2 single-thread actors
    reserving half a CPU each, and one read task at a time.
    """
    cpus = int(cluster.get("CPU", 1))
    gpus = float(cluster.get("GPU", 0))
    gpus_per_actor = float(num_gpus if num_gpus is not None else (1 if gpus else 0))
    if gpus_per_actor > gpus:
        raise ValueError(f"num_gpus={gpus_per_actor} per actor but the Ray cluster has {gpus:g} GPUs")
    if gpus_per_actor:
        actors = actors or max(1, int(gpus // gpus_per_actor))
        cpus_per_actor = cpus_per_actor or 1
    else:
        threads = threads or (1 if cpus <= 8 else 2 if cpus <= 16 else 4)
        actors = actors or max(1, math.ceil(0.8 * cpus / threads - 0.5))
        cpus_per_actor = cpus_per_actor or min(float(threads), max(cpus - 1, 0.5) / actors)
    free = cpus - actors * cpus_per_actor
    if free <= 0:
        raise ValueError(f"{actors} actors x {cpus_per_actor} CPUs leave no CPU of the cluster's {cpus} "
                         "to read and decode images; use fewer actors or CPUs per actor")
    return {"actors": int(actors), "num_cpus": cpus_per_actor, "num_gpus": gpus_per_actor,
            "threads": None if gpus_per_actor else int(threads or max(1, round(cpus_per_actor))),
            "read_cpus": min(1.0, free)}


def _read_parts(batch: dict[str, np.ndarray], plan: InputPlan, processor: Any, batch_size: int,
                text: bool) -> Iterator[dict[str, np.ndarray]]:
    """Ray ``map_batches`` generator: every batch of the shards named in ``batch["part"]``."""
    for part in batch["part"]:
        yield from read_shard(plan, processor, int(part), batch_size=batch_size, text=text)


def _portable_model(model: Any) -> Any:
    """What actors load: a local folder as an absolute path, a Hub id as is, a model object on CPU."""
    if isinstance(model, (str, os.PathLike)):
        return os.path.abspath(model) if os.path.exists(model) else os.fspath(model)
    device = next(model.parameters()).device
    return copy.deepcopy(model).cpu() if device.type != "cpu" else model


def embed_with_ray(
    model: Any,
    processor: Any,
    inputs: Any,
    output: str | os.PathLike,
    *,
    batch_size: int = 64,
    fp16: bool = False,
    text: bool = True,
    image_column: str | None = None,
    caption_column: str | None = None,
    split: str = "train",
    ray_address: str | None = None,
    num_cpus: int | None = None,
    actors: int | None = None,
    num_gpus: float | None = None,
    cpus_per_actor: float | None = None,
    threads: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    on_part: PartCallback | None = None,
) -> dict:
    """Embed ``inputs`` into the embedding folder ``output`` with Ray Data; returns the manifest.

    Same arguments and output as :func:`~align_hf.search.embeddings.embed_to_folder`, plus:

    Args:
        model: an ``AlignModel`` (sent to each actor) or a folder / Hub id (each actor loads it:
            the better choice on a cluster).
        ray_address: a running cluster; default: start Ray on this machine with ``num_cpus``.
        actors / num_gpus / cpus_per_actor / threads: the embedding actor pool (see :func:`plan_resources`).

    Rerunning after an interruption embeds only the shards whose part is missing.
    """
    try:
        import ray
        import ray.data
    except ImportError as error:
        raise ImportError("embed_with_ray needs Ray Data: pip install 'align_hf[scale]' "
                          "(or embed in one process with align_hf.search.embeddings.embed_to_folder)") from error

    driver_model, processor, plan, writer = start_build(
        model, processor, inputs, output, text=text, fp16=fp16, image_column=image_column,
        caption_column=caption_column, split=split, overwrite=overwrite, on_part=on_part, progress=progress)
    data_logger = logging.getLogger("ray.data")
    level = data_logger.level
    started = False
    try:
        if writer.todo:
            started = connect(ray_address, num_cpus)
            pool = plan_resources(ray.cluster_resources(), actors, num_gpus, cpus_per_actor, threads)
            logger.info("embedding %d shards with %d actors (%s)", len(writer.todo), pool["actors"], pool)
            data_logger.setLevel(logging.WARNING)  # our bar reports progress; Ray's would print per operator
            parts = ray.data.from_items([{"part": p} for p in writer.todo], override_num_blocks=len(writer.todo))
            batches = parts.map_batches(
                _read_parts, batch_size=1, batch_format="numpy",
                fn_kwargs={"plan": plan, "processor": processor, "batch_size": batch_size, "text": text},
                # The memory a read task may hold (decoded photos and a batch of pixels) caps how many
                # run at once on a node. Resources that differ from the actors' also keep Ray Data from
                # fusing this stage into the actors: decoding keeps its own processes, beside the embedding.
                num_cpus=pool["read_cpus"], memory=READ_TASK_MEMORY,
            ).map_batches(
                Embedder, batch_size=batch_size, batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=pool["actors"]),
                num_cpus=pool["num_cpus"], num_gpus=pool["num_gpus"] or None,
                fn_constructor_kwargs={"model": _portable_model(model if isinstance(model, (str, os.PathLike)) else driver_model),
                                       "dim": writer.dim, "threads": pool["threads"], "in_place": True,
                                       "keep_freed_memory": True},
            )
            batches.context.execution_options.preserve_order = True  # parts and rows arrive in input order
            batches.context.enable_progress_bars = False
            for batch in batches.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
                writer.add(batch)
        return writer.finish()
    except BaseException:
        writer.close()
        raise
    finally:
        data_logger.setLevel(level)
        if started:
            ray.shutdown()


__all__ = ["connect", "embed_with_ray", "plan_resources"]
