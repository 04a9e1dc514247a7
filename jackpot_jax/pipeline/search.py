"""`find_jackpot`: the jackpot search for any Flax Linen model, from Python.

The command line's search (`modes.run_search`) reads a dataset by name and a model from the
zoo; this function takes your module, its pre-trained variables and your batches, and runs the
same search core (`jackpot_jax.core`: `init_search`, `make_search_step`, `run_epoch`) under
the `ComputeOptions` you give. Every default is the command line's
(`pipeline.config.base_config().search`; a test holds them equal).
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from jackpot_jax import core, kernels, utils
from jackpot_jax import method as jm
from jackpot_jax.errors import InputError


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
    pattern: str | None = None,
    distribution: str = "global_magnitude",
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    init: str = "magnitude",
    score_kept: float = 1.0,
    score_pruned: float = 0.95,
    use_abs: bool = True,
    mask_update: str = "topk",
    swap_schedule: str = "official",
    swap_rate: float = 1.0,
    swap_power: float = 4.0,
    epochs: int = 30,
    steps_per_epoch: int | None = None,
    optimizer: str = "sgd",
    lr: float = 0.1,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 5e-4,
    b1: float = 0.9,
    b2: float = 0.999,
    schedule: str = "cosine_epoch",
    loss_fn: Callable | None = None,
    label_smoothing: float = 0.0,
    snip_batches: int = 1,
    options: kernels.ComputeOptions | None = None,
    num_devices: int | None = None,
    seed: int = 0,
) -> Jackpot:
    """Finds a lottery jackpot in ``module`` with pre-trained ``variables``: a mask over the
    prunable weights, learned through scores, that never changes a kept weight.

    Data: ``module`` is any Linen module returning logits (or any output ``loss_fn`` reads),
    with or without a ``train`` keyword and ``batch_stats``. ``batches``: ``(inputs, labels)``
    numpy pairs, as a re-iterable (a list) or a callable ``epoch -> iterable``; every batch
    has the same size, a multiple of the device count. ``loss_fn(logits, labels) -> scalar``
    replaces the cross-entropy (``label_smoothing`` then plays no part; history accuracy is
    NaN).

    What is pruned: ``include`` / ``exclude`` regexes over '/'-joined parameter paths
    (default: every kernel except a ``classifier``). How much: ``sparsity`` (the fraction of
    prunable weights removed) split over layers by ``distribution`` (`jm.DISTRIBUTIONS`:
    'global_magnitude', 'uniform', 'erk', 'global'), or an N:M ``pattern`` such as "2:4"
    along each kernel's input axis (``sparsity`` and ``distribution`` then play no part).

    The search: warm-up ``init`` (`jm.WARMUPS`: 'magnitude', 'random', 'kaiming', or 'snip'
    on the first ``snip_batches`` batches; 'grasp' needs a class-balanced sample: use the
    command line) as two score levels ``score_kept`` / ``score_pruned``; ``use_abs`` ranks
    |scores|; ``mask_update`` (`jm.MASK_UPDATES`): 'topk' (the paper) or 'swap' (the 2023
    code, with ``swap_schedule``, ``swap_rate``, ``swap_power``). ``epochs`` of
    ``steps_per_epoch`` steps (default: the batches' length, or one counting pass over epoch
    0). The optimiser of the scores: ``optimizer`` 'sgd' (``momentum``, ``nesterov``,
    ``weight_decay`` added to the gradient) or 'adamw' (``b1``, ``b2``, decoupled
    ``weight_decay``), learning rate ``lr`` on ``schedule`` 'cosine_epoch' or 'cosine_step'.

    How: ``options`` (`kernels.ComputeOptions`) says how the step is computed, never what it
    computes; ``num_devices`` (default all) the data-parallel mesh; ``seed`` the random
    warm-ups and dropout.
    """
    if "params" not in variables:
        raise InputError(f"variables have no 'params' collection (got {sorted(variables)})")
    params, batch_stats = variables["params"], utils.batch_stats_of(variables)
    applier = _Applier(module, _takes_train(module))
    spe = steps_per_epoch or _count(batches)
    if spe <= 0:
        raise InputError("batches is empty")
    opt_cfg = ml_collections.ConfigDict(
        dict(
            optimizer=optimizer,
            lr=lr,
            momentum=momentum,
            nesterov=nesterov,
            weight_decay=weight_decay,
            b1=b1,
            b2=b2,
            schedule=schedule,
        )
    )
    tx, lr_schedule = core.make_optimizer(opt_cfg, epochs, spe)
    filter_fn = core.search_filter(include, exclude)

    def logits_fn(p, x):
        out, _ = applier.apply(
            utils.variables_of(p, batch_stats),
            x,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": jax.random.key(0)},
        )
        return out

    def first_batches(count):
        return [
            (np.asarray(x), np.asarray(y))
            for x, y in itertools.islice(_epoch_batches(batches, 0), count)
        ]

    init_search = core.init_search(
        params,
        apply_fn=applier.apply,
        tx=tx,
        batch_stats=batch_stats,
        sparsity=sparsity,
        pattern=pattern,
        distribution=distribution,
        filter_fn=filter_fn,
        init=init,
        score_kept=score_kept,
        score_pruned=score_pruned,
        mask_update=mask_update,
        use_abs=use_abs,
        seed=seed,
        inputs=jm.CriterionInputs(
            filter_fn=filter_fn,
            seed=seed,
            logits_fn=logits_fn,
            batches=first_batches,
            snip_batches=snip_batches,
        ),
    )
    budget = init_search.budget
    rate = None
    if mask_update == "swap":
        rate = core.swap_rate_schedule(epochs, spe, swap_schedule, swap_rate, swap_power)
    options = kernels.resolve(options)
    mesh = core.make_mesh(num_devices)
    step = core.make_search_step(
        applier.apply,
        tx,
        budget,
        mask_update=mask_update,
        use_abs=use_abs,
        swap_rate=rate,
        loss_fn=loss_fn,
        label_smoothing=label_smoothing,
        options=options,
    )
    state = core.replicate(mesh, utils.as_numpy(init_search.state))

    def current_masks(state):
        masks = core.current_masks(state, budget, mask_update=mask_update, use_abs=use_abs)
        return utils.as_numpy(masks)

    initial = utils.as_numpy(init_search.masks)
    tracker = core.MaskTracker(current_masks, initial)

    def sharded(epoch):
        for inputs, labels in _epoch_batches(batches, epoch):
            core.check_batch(len(inputs), mesh)
            yield core.shard_batch(mesh, (np.asarray(inputs), np.asarray(labels)))

    history = []
    for epoch in range(epochs):
        state, record = core.run_epoch(
            step, state, sharded(epoch), steps=spe, epoch=epoch, tracker=tracker, lr=lr
        )
        history.append(
            {"epoch": epoch + 1, **record, "learning_rate": float(lr_schedule(epoch * spe))}
        )

    masks = current_masks(state)
    masked = utils.as_numpy(jm.apply_masks(params, masks))
    final_stats = utils.as_numpy(state.batch_stats)
    return Jackpot(
        masks=masks,
        params=masked,
        variables=utils.variables_of(masked, final_stats),
        scores=utils.as_numpy(state.params),
        budget=budget,
        history=history,
        options=options,
    )
