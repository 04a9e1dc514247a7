"""Accuracy and loss of a classifier over a whole split, batched on the mesh."""

from __future__ import annotations

import jax
from jax.sharding import Mesh

from jackpot_jax import kernels
from jackpot_jax.core import batch_to_mesh, check_batch, make_eval_step, replicate
from jackpot_jax.data import input_pipeline
from jackpot_jax.errors import InputError


def evaluate(
    module,
    variables,
    ds,
    split: str,
    batch_size: int,
    mesh: Mesh,
    workers: int = input_pipeline.AUTO_WORKERS,
    options: kernels.ComputeOptions | None = None,
) -> dict:
    """Top-1 (and top-5 where classes > 5) accuracy and mean loss over a whole split.
    ``workers``: loader processes, as ``config.data_workers`` (default: decoded files use
    every core, in-memory arrays the main process)."""
    check_batch(batch_size, mesh, "eval_batch_size")
    step = make_eval_step(module, options)
    variables = replicate(mesh, variables)
    totals = None
    # Every batch is padded to batch_size (weight 0): one compilation; each process reads its rows.
    workers = input_pipeline.resolve_workers(workers, ds.split(split))
    batches = input_pipeline.eval_batches(
        ds,
        split,
        batch_size,
        workers=workers,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        normalize=False,
    )
    put = batch_to_mesh(mesh, ds, ("image", "label", "weight"))
    for b in batches:
        out = step(variables, *put(b))
        out = jax.device_get(out)
        totals = out if totals is None else {k: totals[k] + out[k] for k in out}
    if totals is None:
        raise InputError(f"the {split} split is empty")
    count = float(totals["count"])
    res = {
        "accuracy": float(totals["top1"]) / count,
        "loss": float(totals["loss"]) / count,
        "examples": int(count),
    }
    if ds.num_classes > 5:
        res["top5"] = float(totals["top5"]) / count
    return res
