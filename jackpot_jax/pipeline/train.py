"""The pipeline's entry point: `run(config, workdir)` runs ``config.mode``.

`jackpot_jax.main` is a thin absl wrapper around it. The pieces live in modules named by
role: `loop` (the epoch loop over the core's steps), `resume` (the workdir's config, orbax
checkpoints, metrics log), `pruning` (the config's filter, budget and criterion masks),
`modes` (pretrain, search, finetune, eval) and `export` (jackpot.npz and loaders); the
state and steps are `jackpot_jax.core`'s.

What a run leaves in its workdir:
  config.json     the config; a rerun with another config is refused (resume=False: moved aside)
  metrics.jsonl   one line per epoch
  summary.json    the run's result (written last)
  jackpot.npz     (search, finetune) masks/<path>, params/<path>, batch_stats/<path>, meta
  model/          a checkpoint directory `checkpoint.load_model` reads (dense or masked weights)
  checkpoints/    orbax steps, one per epoch, for resume
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import ml_collections

from jackpot_jax import kernels, models, utils
from jackpot_jax import method as jm
from jackpot_jax.errors import ConfigError
from jackpot_jax.pipeline import lm, modes, resume

MODES = ("pretrain", "search", "finetune", "eval", "lm")
RUNNERS = {
    "pretrain": modes.run_pretrain,
    "search": modes.run_search,
    "finetune": modes.run_finetune,
    "eval": modes.run_eval,
    "lm": lm.run_lm,
}


def check_config(config: ml_collections.ConfigDict) -> None:
    """`ConfigError` for a value that cannot work, before anything runs."""
    choices = {
        "mode": MODES,
        "search.init": tuple(jm.WARMUPS),
        "search.distribution": tuple(jm.DISTRIBUTIONS),
        "search.weights": ("pretrained", "random"),
        "finetune.weights": ("pretrained", "random"),
        "finetune.mask": ("jackpot", *jm.CRITERIA),
        "search.mask_update": tuple(jm.MASK_UPDATES),
    }
    if config.mode == "lm":
        lm.check_lm_config(config)
    for key, allowed in choices.items():
        node, leaf = config, key
        if "." in key:
            section, leaf = key.split(".")
            node = config[section]
        if node[leaf] not in allowed:
            raise ConfigError(f"{key}={node[leaf]!r}; expected one of {tuple(allowed)}")
    try:  # the model's name and options (building a Flax module allocates nothing)
        models.get_model(config.model, **dict(config.model_options))
    except ValueError as e:
        raise ConfigError(f"model: {e}") from None
    if not 0.0 <= config.sparsity < 1.0:
        raise ConfigError(f"sparsity={config.sparsity!r} must be in [0, 1)")
    if config.search.mask_update == "swap":
        if config.search.distribution == "global":
            raise ConfigError(
                "search.mask_update='swap' swaps within each layer: it needs "
                "per-layer counts, so search.distribution must be "
                "global_magnitude, uniform or erk, not 'global'"
            )
        try:
            jm.check_swap_schedule(
                config.search.swap_schedule, config.search.swap_rate, config.search.swap_power
            )
        except ValueError as e:
            raise ConfigError(f"search.swap_*: {e}") from e
        if config.search.get("pattern", ""):
            raise ConfigError(
                f"search.mask_update='swap' keeps per-layer counts, not an N:M "
                f"pattern: use mask_update='topk' with search.pattern="
                f"{config.search.pattern!r}"
            )
    try:
        jm.parse_pattern(config.search.get("pattern", ""))
    except ValueError as e:
        raise ConfigError(f"search.{e}") from None
    for key in ("batch_size", "eval_batch_size"):
        if config[key] <= 0:
            raise ConfigError(f"{key}={config[key]!r} must be positive")
    for section in ("pretrain", "search", "finetune"):
        if config[section].epochs < 0:
            raise ConfigError(f"{section}.epochs={config[section].epochs!r} must be >= 0")
    try:  # conv_impl, compute_dtype (and onednn, mask_layout, radix_bits where set)
        kernels.ComputeOptions.from_config(config)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if config.num_processes is not None and not (
        config.process_id is None or 0 <= config.process_id < config.num_processes
    ):
        raise ConfigError(
            f"process_id={config.process_id!r} must be in [0, num_processes={config.num_processes})"
        )


def init_distributed(config) -> None:
    """`jax.distributed.initialize` when the config asks for several processes (it must come
    before any other JAX call); unset fields are left to JAX's detection."""
    if not (
        config.distributed
        or config.coordinator_address
        or config.num_processes
        or config.process_id is not None
    ):
        return
    jax.distributed.initialize(
        coordinator_address=config.coordinator_address or None,
        num_processes=config.num_processes,
        process_id=config.process_id,
    )


def run(config: ml_collections.ConfigDict, workdir: str, notes: Sequence[str] = ()) -> dict:
    """Runs ``config.mode`` in ``workdir``; rerunning the same command resumes it. ``notes``:
    lines the launcher wants in the run's header (logged once JAX is up, by process 0).

    A workdir belongs to one config: a rerun with another one raises `WorkdirError` naming
    the keys, unless ``config.resume`` is False (the old run is moved aside, never deleted).
    """
    check_config(config)
    init_distributed(config)
    workdir = os.path.abspath(workdir)
    resume.prepare_workdir(config, workdir)
    for line in notes:
        utils.log(line)
    compute = kernels.ComputeOptions.from_config(config)
    utils.log(kernels.describe_convolutions(compute))
    utils.log(kernels.describe_masks(compute))
    return RUNNERS[config.mode](config, workdir)
