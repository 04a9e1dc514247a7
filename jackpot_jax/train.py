"""The pipeline's entry point: `run(config, workdir)` runs ``config.mode``.

`jackpot_jax.main` is a thin absl wrapper around it. The pieces live in modules named by
role: `engine` (mesh, train state, steps, epoch loop), `resume` (orbax checkpoints, metrics
log), `criteria` (budgets and criterion masks), `modes` (pretrain, search, finetune, eval)
and `export` (jackpot.npz and loaders).

What a run leaves in its workdir:
  metrics.jsonl   one line per epoch
  summary.json    the run's result
  jackpot.npz     (search, finetune) masks/<path>, params/<path>, batch_stats/<path>, meta
  model/          a checkpoint directory `checkpoint.load_model` reads (dense or masked weights)
  checkpoints/    orbax steps, one per epoch, for resume
"""

from __future__ import annotations

import os

import jax
import ml_collections

from jackpot_jax import engine
from jackpot_jax import modes
from jackpot_jax import ops
from jackpot_jax import utils
from jackpot_jax.criteria import WARMUPS

MODES = ("pretrain", "search", "finetune", "eval")
RUNNERS = {"pretrain": modes.run_pretrain, "search": modes.run_search,
           "finetune": modes.run_finetune, "eval": modes.run_eval}

def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs ``config.mode`` in ``workdir``; rerunning the same command resumes it."""
    if config.mode not in RUNNERS:
        raise ValueError(f"mode={config.mode!r}; expected one of {MODES}")
    if not 0.0 <= config.sparsity < 1.0:
        raise ValueError(f"sparsity={config.sparsity!r} must be in [0, 1)")
    if config.search.init not in WARMUPS:
        raise ValueError(f"search.init={config.search.init!r}; expected one of {WARMUPS}")
    if config.get("conv_impl", "auto") not in ops.IMPLS:
        raise ValueError(f"conv_impl={config.conv_impl!r}; expected one of {ops.IMPLS}")
    if config.get("compute_dtype", "float32") not in engine.COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype={config.compute_dtype!r}; expected one of "
                         f"{engine.COMPUTE_DTYPES}")
    if config.distributed:
        jax.distributed.initialize()
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    utils.write_json(os.path.join(workdir, "config.json"), config.to_dict())
    return RUNNERS[config.mode](config, workdir)

