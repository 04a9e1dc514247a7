"""`find_jackpot`: the jackpot search for any Flax Linen model, from Python.

The command line's search (`modes.run_search`) reads a dataset by name and a model from the
zoo; this function takes your module, its pre-trained variables and your batches, and runs the
same search with the same pieces: the prune filter and budget (`pruning`), the warm-up mask,
the score initialisation, the optimiser (`engine.make_optimizer`) and the jitted,
data-parallel search step (`engine.make_train_step`, under the `ComputeOptions` you give).
Every setting defaults to the CLI's (`pipeline.config.base_config().search`).
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
from collections.abc import Callable, Iterable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jackpot_jax import kernels, utils
from jackpot_jax import method as jm
from jackpot_jax.errors import ConfigError, InputError, NonFiniteError
from jackpot_jax.pipeline import config as config_lib
from jackpot_jax.pipeline import engine, pruning

WARMUPS = ("magnitude", "random", "kaiming")  # the warm-ups that need no data


@dataclasses.dataclass
class Jackpot:
    """What `find_jackpot` returns.

    ``masks``: 0/1 arrays mirroring ``params`` (None on leaves that are not pruned);
    ``params``: the pre-trained values where kept, 0 elsewhere; ``variables``: ready for
    ``module.apply`` (the masked params and, where the model has them, the BatchNorm statistics
    the search updated); ``scores``: the learned scores; ``budget``: per-layer keep counts (or
    N:M patterns); ``history``: one dict per epoch (loss, accuracy, overlap with the initial
    mask, mask flips); ``options``: the resolved `ComputeOptions` the step ran with.
    """

    masks: Any
    params: Any
    variables: dict
    scores: Any
    budget: Any
    history: list[dict]
    options: kernels.ComputeOptions


@dataclasses.dataclass(frozen=True)
class _Applier:
    """The user's module as the search step calls it (``train`` keyword or not)."""

    module: nn.Module
    takes_train: bool

    def apply(self, variables, x, train=False, **kw):
        if self.takes_train:
            return self.module.apply(variables, x, train=train, **kw)
        return self.module.apply(variables, x, **kw)


def _takes_train(module: nn.Module) -> bool:
    return "train" in inspect.signature(type(module).__call__).parameters


def _search_config(sparsity, epochs, overrides: dict) -> Any:
    config = config_lib.base_config()
    config.sparsity = sparsity
    if epochs is not None:
        config.search.epochs = epochs
    for key, value in overrides.items():
        if key in ("include", "exclude"):
            config.prune[key] = tuple(value or ())
        elif key in config.search:
            config.search[key] = value
        else:
            known = sorted([*config.search.keys(), "include", "exclude"])
            raise ConfigError(f"find_jackpot: unknown setting {key!r}; known: {known}")
    if config.search.init not in WARMUPS:
        raise ConfigError(
            f"init={config.search.init!r}; find_jackpot supports {WARMUPS} (snip and grasp "
            "read a dataset: use the command line)"
        )
    if config.search.weights != "pretrained":
        raise ConfigError(
            "find_jackpot searches in the variables it is given (weights='pretrained')"
        )
    return config


def _epoch_batches(batches, epoch: int) -> Iterable:
    return batches(epoch) if callable(batches) else batches


def _count(batches) -> int:
    if not callable(batches) and hasattr(batches, "__len__"):
        return len(batches)
    return sum(1 for _ in _epoch_batches(batches, 0))


def find_jackpot(
    module: nn.Module,
    variables: dict,
    batches: Iterable | Callable[[int], Iterable],
    *,
    sparsity: float = 0.9,
    epochs: int | None = None,
    steps_per_epoch: int | None = None,
    loss_fn: Callable | None = None,
    label_smoothing: float = 0.0,
    options: kernels.ComputeOptions | None = None,
    num_devices: int | None = None,
    seed: int = 0,
    **search: Any,
) -> Jackpot:
    """Finds a lottery jackpot in ``module`` with pre-trained ``variables``: a mask over the
    prunable weights, learned through scores, that never changes a kept weight.

    ``module``: any Linen module returning logits, with or without a ``train`` keyword and
    ``batch_stats``. ``batches``: (images, labels) numpy pairs, as a re-iterable (a list) or a
    callable ``epoch -> iterable``; every batch has the same size, a multiple of the device
    count. ``sparsity``: the fraction of prunable weights removed (ignored with ``pattern``).
    ``epochs`` (default the CLI's, 30) and ``steps_per_epoch`` (default: the batches' length,
    or one counting pass over epoch 0). ``loss_fn(logits, labels) -> scalar`` replaces the
    cross-entropy. ``options``: how the step is computed (`kernels.ComputeOptions`).
    ``search``: any key of the CLI's ``config.search`` (``optimizer`` ('sgd' or 'adamw'),
    ``lr``, ``momentum``, ``weight_decay``, ``schedule``, ``distribution``, ``init`` (magnitude, random, kaiming),
    ``score_kept``, ``score_pruned``, ``use_abs``, ``mask_update`` ('topk' or 'swap'),
    ``swap_*``, ``pattern`` (e.g. "2:4")) and ``include`` / ``exclude`` (regexes over
    '/'-joined parameter paths choosing what is pruned; default: every kernel except a
    ``classifier``).
    """
    config = _search_config(sparsity, epochs, search)
    cfg = config.search
    if "params" not in variables:
        raise InputError(f"variables have no 'params' collection (got {sorted(variables)})")
    params, batch_stats = variables["params"], utils.batch_stats_of(variables)
    applier = _Applier(module, _takes_train(module))
    filter_fn = pruning.prune_filter(config)
    try:
        jm.prunable_paths(params, filter_fn)
    except ValueError as e:
        raise ConfigError(f"no prunable parameter: {e}") from None
    budget = pruning.budget_for(config, params, filter_fn)
    scores = pruning.initial_scores(config, applier, variables, None, seed, filter_fn, budget)
    hard_masks = jax.jit(lambda s: jm.masks_from_scores(s, budget, use_abs=cfg.use_abs))
    init_mask = utils.as_numpy(hard_masks(scores))
    swap = cfg.mask_update == "swap"

    spe = steps_per_epoch or _count(batches)
    if spe <= 0:
        raise InputError("batches is empty")
    tx, schedule = engine.make_optimizer(cfg, cfg.epochs, spe)
    swap_rate = engine.swap_rate_fn(cfg, cfg.epochs, spe) if swap else None
    options = kernels.resolve(options)
    mesh = engine.make_mesh(num_devices)
    step = engine.make_train_step(
        applier,
        "search",
        tx,
        budget=budget,
        use_abs=cfg.use_abs,
        label_smoothing=label_smoothing,
        swap_rate=swap_rate,
        options=options,
        loss_fn=loss_fn,
    )
    state = engine.TrainState(
        step=jnp.zeros((), jnp.int32),
        trainable=scores,
        opt_state=tx.init(scores),
        batch_stats=batch_stats,
        rng=jax.random.key_data(jax.random.key(seed)),
        masks=init_mask if swap else None,
    )
    state = engine.replicate(mesh, utils.as_numpy(state))
    frozen = engine.replicate(mesh, params)

    def current_masks(state):
        return utils.as_numpy(state.masks if swap else hard_masks(utils.as_numpy(state.trainable)))

    history, previous = [], init_mask
    for epoch in range(cfg.epochs):
        metrics = []
        for images, labels in itertools.islice(_epoch_batches(batches, epoch), spe):
            engine.check_batch(len(images), mesh)
            images, labels = engine.shard_batch(mesh, (np.asarray(images), np.asarray(labels)))
            state, m = step(state, frozen, images, labels)
            metrics.append(m)
        metrics = jax.device_get(metrics)
        if not metrics:
            raise InputError(f"batches gave no batch in epoch {epoch}")
        if not all(bool(m["finite"]) for m in metrics):
            raise NonFiniteError(
                f"the loss or the scores became NaN or infinite in epoch {epoch + 1}: lower the "
                f"learning rate (lr={cfg.lr}) or check the inputs"
            )
        masks = current_masks(state)
        history.append(
            {
                "epoch": epoch + 1,
                "loss": float(np.mean([m["loss"] for m in metrics])),
                "accuracy": float(np.mean([m["accuracy"] for m in metrics])),
                "learning_rate": float(schedule(epoch * spe)),
                "overlap_with_init": float(jm.overlap(masks, init_mask)),
                "mask_flips": int(jm.mask_flips(masks, previous)),
            }
        )
        previous = masks

    masks = current_masks(state)
    masked = utils.as_numpy(jm.apply_masks(params, masks))
    final_stats = utils.as_numpy(state.batch_stats)
    return Jackpot(
        masks=masks,
        params=masked,
        variables=utils.variables_of(masked, final_stats),
        scores=utils.as_numpy(state.trainable),
        budget=budget,
        history=history,
        options=options,
    )
