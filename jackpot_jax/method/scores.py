"""Criterion scores (importance: larger = keep), score initialisation, and their registries.

`CRITERIA` maps a criterion's name to ``fn(params, inputs: CriterionInputs) -> importance``;
`WARMUPS` maps a warm-up's name to ``fn(params, budget, inputs, kept, pruned) -> scores``
(every criterion is also a warm-up: its mask under the budget as two score levels; plus
edge-popup's ``kaiming``). A new criterion is one `criterion`-decorated function here.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jackpot_jax import kernels
from jackpot_jax.errors import ConfigError
from jackpot_jax.method.masks import criterion_mask
from jackpot_jax.method.paths import FilterFn, PyTree, is_none, map_prunable, prunable_paths
from jackpot_jax.method.registry import Registry

# ---------------------------------------------------------------------------------------------
# Criteria (importance: larger = keep) and score initialisation
# ---------------------------------------------------------------------------------------------


def magnitude_scores(params: PyTree, filter_fn: FilterFn | None = None) -> PyTree:
    """|w| on prunable leaves (magnitude pruning, Han et al. 2015)."""
    return map_prunable(lambda _, w: jnp.abs(w), params, filter_fn)


def random_scores(rng: jax.Array, params: PyTree, filter_fn: FilterFn | None = None) -> PyTree:
    """Uniform [0, 1) importance, independent per leaf: a random mask under any budget."""
    paths = prunable_paths(params, filter_fn)
    keys = dict(zip(paths, jax.random.split(rng, len(paths))))
    return map_prunable(
        lambda p, w: jax.random.uniform(keys[p], np.shape(w), jnp.float32), params, filter_fn
    )


def _sum_grads(loss_fn, params, batches):
    grad_fn = jax.jit(jax.grad(loss_fn))
    total = None
    for batch in batches:
        g = grad_fn(params, batch)
        total = g if total is None else jax.tree.map(jnp.add, total, g)
    if total is None:
        raise ValueError("batches is empty: SNIP/GraSP need at least one batch")
    return total


def snip_scores(
    loss_fn: Callable[[PyTree, Any], jax.Array],
    params: PyTree,
    batches: Iterable[Any],
    filter_fn: FilterFn | None = None,
) -> PyTree:
    """SNIP connection sensitivity ``|w * dL/dw|`` (Lee et al. 2019).

    ``loss_fn(params, batch) -> scalar``; gradients are summed over ``batches`` first (as
    multi-batch SNIP implementations do), then multiplied by the weights.
    """
    like = map_prunable(lambda _, w: True, params, filter_fn)
    g = _sum_grads(loss_fn, params, batches)
    return jax.tree.map(
        lambda m, w, gw: None if m is None else jnp.abs(w * gw), like, params, g, is_leaf=is_none
    )


def grasp_scores(
    loss_fn: Callable[[PyTree, Any], jax.Array],
    params: PyTree,
    batches: Sequence[Any],
    filter_fn: FilterFn | None = None,
) -> PyTree:
    """GraSP importance (Wang et al. 2020): ``w * (H g)``, i.e. minus the GraSP score.

    GraSP scores weights by ``-w * (H g)`` and removes the highest scores; we return the
    negation so that, like every criterion here, larger means keep. ``g`` is the loss
    gradient summed over ``batches`` and ``H g`` the Hessian-gradient product, both over the
    prunable leaves. ``loss_fn`` should use logits divided by the temperature (200 in the
    GraSP code) and ``batches`` balanced samples per class; see `temperature_loss`.
    """
    like = map_prunable(lambda _, w: True, params, filter_fn)
    g = _sum_grads(loss_fn, params, batches)
    # Tangent: the gradient on prunable leaves, zero elsewhere (the Hessian block over them).
    tangent = jax.tree.map(
        lambda m, gw: jnp.zeros_like(gw) if m is None else gw, like, g, is_leaf=is_none
    )
    grad_fn = jax.grad(loss_fn)

    @jax.jit
    def hvp(p, batch):
        return jax.jvp(lambda q: grad_fn(q, batch), (p,), (tangent,))[1]

    hg = None
    for batch in batches:
        h = hvp(params, batch)
        hg = h if hg is None else jax.tree.map(jnp.add, hg, h)
    return jax.tree.map(
        lambda m, w, h: None if m is None else w * h, like, params, hg, is_leaf=is_none
    )


def temperature_loss(logits_fn: Callable[[PyTree, Any], jax.Array], temperature: float = 200.0):
    """``loss(params, (x, y))``: mean cross-entropy of ``logits_fn(params, x) / temperature``."""

    def loss(params, batch):
        x, y = batch
        logits = logits_fn(params, x) / temperature
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None].astype(jnp.int32), axis=1))

    return loss


def init_scores_from_mask(masks: PyTree, kept: float = 1.0, pruned: float = 0.95) -> PyTree:
    """Two-level score init (official code): ``kept`` where the mask keeps, ``pruned`` elsewhere.

    The gap ``kept - pruned`` sets how many SGD steps a pruned weight needs to pop up.
    """
    if not kept > pruned >= 0:
        raise ValueError(
            f"need kept > pruned >= 0 for a two-level init, got kept={kept}, pruned={pruned}"
        )
    return _two_level(masks, float(kept), float(pruned))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _two_level(masks, kept, pruned):
    return jax.tree.map(lambda m: jnp.where(m > 0, kept, pruned).astype(jnp.float32), masks)


def kaiming_uniform_scores(
    rng: jax.Array, params: PyTree, filter_fn: FilterFn | None = None
) -> PyTree:
    """Random scores as in edge-popup: kaiming-uniform with a=sqrt(5), bound 1/sqrt(fan_in).

    Kernels are HWIO (conv) or (in, out) (dense): fan_in is the product of all but the last dim.
    """
    paths = prunable_paths(params, filter_fn)
    keys = dict(zip(paths, jax.random.split(rng, len(paths))))

    def init(path, w):
        fan_in = int(np.prod(np.shape(w)[:-1]))
        bound = 1.0 / math.sqrt(fan_in)
        return jax.random.uniform(keys[path], np.shape(w), jnp.float32, -bound, bound)

    return map_prunable(init, params, filter_fn)


# ---------------------------------------------------------------------------------------------
# Registries
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CriterionInputs:
    """What a criterion or warm-up may read besides the weights.

    ``seed``: random criteria draw from it (``random``: key ``seed + 7919``; ``kaiming``: key
    ``seed``). ``logits_fn(params, x) -> logits``: the model's forward pass in train mode
    (data criteria). ``batches(count)``: that many training batches ``(x, y)`` (SNIP);
    ``balanced(per_class)``: a class-balanced sample as a list of ``(x, y)`` batches (GraSP).
    """

    filter_fn: FilterFn | None = None
    seed: int = 0
    logits_fn: Callable[[PyTree, Any], jax.Array] | None = None
    batches: Callable[[int], list] | None = None
    balanced: Callable[[int], list] | None = None
    snip_batches: int = 1
    grasp_per_class: int = 10
    grasp_temperature: float = 200.0

    def need(self, field: str, criterion: str):
        value = getattr(self, field)
        if value is None:
            raise ConfigError(
                f"criterion {criterion!r} reads data: it needs CriterionInputs.{field} "
                "(and logits_fn); magnitude, random and kaiming need none"
            )
        return value


CRITERIA = Registry(
    "criterion", "fn(params, inputs: CriterionInputs) -> importance tree (larger = keep)"
)
WARMUPS = Registry(
    "init", "fn(params, budget, inputs: CriterionInputs, kept, pruned) -> initial scores"
)


def criterion(name: str, **tags):
    """Registers a criterion under ``name`` and the warm-up of the same name (its mask under
    the search's budget as two score levels, `init_scores_from_mask`)."""

    def add(fn):
        CRITERIA.register(name, **tags)(fn)

        def warmup(params, budget, inputs, kept, pruned):
            mask = criterion_mask(fn(params, inputs), budget)
            return init_scores_from_mask(mask, kept, pruned)

        WARMUPS.register(name, **tags)(warmup)
        return fn

    return add


@criterion("magnitude", needs_data=False)
def _magnitude(params, inputs: CriterionInputs):
    return magnitude_scores(params, inputs.filter_fn)


@criterion("snip", needs_data=True)
def _snip(params, inputs: CriterionInputs):
    batches = inputs.need("batches", "snip")(inputs.snip_batches)
    loss = temperature_loss(inputs.need("logits_fn", "snip"), 1.0)
    return snip_scores(loss, params, batches, inputs.filter_fn)


@criterion("grasp", needs_data=True)
def _grasp(params, inputs: CriterionInputs):
    batches = inputs.need("balanced", "grasp")(inputs.grasp_per_class)
    loss = temperature_loss(inputs.need("logits_fn", "grasp"), inputs.grasp_temperature)
    # The Hessian-vector product is forward-over-reverse: XLA's own convolution (the explicit
    # one defines only a reverse-mode rule).
    with kernels.use(conv_impl="xla"):
        return grasp_scores(loss, params, batches, inputs.filter_fn)


@criterion("random", needs_data=False)
def _random(params, inputs: CriterionInputs):
    return random_scores(jax.random.key(inputs.seed + 7919), params, inputs.filter_fn)


@WARMUPS.register("kaiming", needs_data=False)
def _kaiming(params, budget, inputs: CriterionInputs, kept, pruned):
    """Edge-popup's random scores: no warm-up mask (``budget``, ``kept``, ``pruned`` unused)."""
    return kaiming_uniform_scores(jax.random.key(inputs.seed), params, inputs.filter_fn)
