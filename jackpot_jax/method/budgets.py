"""Layer budgets: how many weights each layer keeps."""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np

from jackpot_jax.method.paths import (
    FilterFn,
    PyTree,
    flatten_paths,
    prunable_paths,
    tree_from_paths,
)
from jackpot_jax.method.registry import Registry
from jackpot_jax.method.topk import topk_mask

DISTRIBUTIONS = Registry(
    "distribution",
    "fn(sizes: dict[path, int], flat: dict[path, array], sparsity: float, erk_power: float)"
    " -> dict[path, keep count] (per layer) or int (one global top-k)",
)

# ---------------------------------------------------------------------------------------------
# Layer budgets
# ---------------------------------------------------------------------------------------------


def _check_sparsity(sparsity: float) -> float:
    if not (isinstance(sparsity, (int, float, np.floating)) and 0.0 <= float(sparsity) < 1.0):
        raise ValueError(f"sparsity={sparsity!r} must be a float in [0, 1)")
    return float(sparsity)


def _keep_of(n: int, sparsity: float) -> int:
    # The official rule prunes int(p * n); the 1e-9 stops float error turning 29 into 28.
    return n - int(math.floor(sparsity * n + 1e-9))


def _erk_densities(shapes: Mapping[str, tuple], sparsity: float, power: float) -> dict[str, float]:
    """Erdos-Renyi-Kernel densities (RigL): density_l proportional to sum(dims)/prod(dims)."""
    sizes = {p: int(np.prod(s)) for p, s in shapes.items()}
    raw = {p: (sum(s) / np.prod(s)) ** power for p, s in shapes.items()}
    total_keep = (1.0 - sparsity) * sum(sizes.values())
    dense: set[str] = set()
    eps = 0.0
    # Each pass makes at least one more layer dense, so this ends; once every layer is dense
    # (low sparsity) nothing is left to share out and there is no eps to compute.
    while len(dense) < len(shapes):
        free_keep = total_keep - sum(sizes[p] for p in dense)
        denom = sum(raw[p] * sizes[p] for p in shapes if p not in dense)
        eps = free_keep / denom
        over = [p for p in shapes if p not in dense and eps * raw[p] > 1.0]
        if not over:
            break
        dense.update(over)
    return {p: 1.0 if p in dense else eps * raw[p] for p in shapes}


def keep_counts(
    params: PyTree,
    sparsity: float,
    distribution: str = "global_magnitude",
    *,
    filter_fn: FilterFn | None = None,
    erk_power: float = 1.0,
) -> PyTree | int:
    """How many weights each prunable layer keeps for a target ``sparsity`` over prunable weights.

    * ``global_magnitude``: one global |w| threshold (exact global top-k, ties by tree order)
      fixes each layer's count; the search then keeps exactly that count per layer.
    * ``uniform``: every layer prunes ``floor(sparsity * n)`` of its ``n`` weights (official rule).
    * ``erk``: Erdos-Renyi-Kernel densities as in RigL, layers over density 1 made dense.
    * ``global``: returns one int, the total kept; masks are then one top-k over all scores.

    Per-layer results are a tree of Python ints mirroring ``params`` (``None`` elsewhere).
    The achieved global sparsity is within one weight per layer of the target.
    """
    sparsity = _check_sparsity(sparsity)
    fn = DISTRIBUTIONS[distribution]
    chosen = prunable_paths(params, filter_fn)
    flat = flatten_paths(params)
    sizes = {p: int(np.size(flat[p])) for p in chosen}
    counts = fn(sizes, flat, sparsity, erk_power)
    if isinstance(counts, int):
        return counts
    return tree_from_paths(params, counts)


@DISTRIBUTIONS.register("global_magnitude")
def _global_magnitude(sizes, flat, sparsity, erk_power):
    """One global |w| threshold (exact global top-k, ties by tree order) fixes each layer's
    count; the search then keeps exactly that count per layer (the official rule)."""
    chosen = list(sizes)
    mags = np.concatenate([np.abs(np.asarray(flat[p], np.float32)).ravel() for p in chosen])
    m = np.asarray(topk_mask(jnp.asarray(mags), _keep_of(sum(sizes.values()), sparsity)))
    offsets = np.cumsum([0] + [sizes[p] for p in chosen])
    return {p: int(m[a:b].sum()) for p, a, b in zip(chosen, offsets[:-1], offsets[1:])}


@DISTRIBUTIONS.register("uniform")
def _uniform(sizes, flat, sparsity, erk_power):
    """Every layer prunes ``floor(sparsity * n)`` of its ``n`` weights."""
    return {p: _keep_of(n, sparsity) for p, n in sizes.items()}


@DISTRIBUTIONS.register("erk")
def _erk(sizes, flat, sparsity, erk_power):
    """Erdos-Renyi-Kernel densities (RigL), layers over density 1 made dense."""
    shapes = {p: tuple(np.shape(flat[p])) for p in sizes}
    dens = _erk_densities(shapes, sparsity, erk_power)
    return {p: min(n, int(round(dens[p] * n))) for p, n in sizes.items()}


@DISTRIBUTIONS.register("global")
def _global(sizes, flat, sparsity, erk_power):
    """One int, the total kept: masks are then one top-k over all scores."""
    return _keep_of(sum(sizes.values()), sparsity)
