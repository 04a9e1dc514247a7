"""Measures of masks: overlap, flips, sparsity summaries."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jackpot_jax.method.paths import PyTree, flatten_paths

# ---------------------------------------------------------------------------------------------
# Measures
# ---------------------------------------------------------------------------------------------


def _paired_leaves(a: PyTree, b: PyTree) -> list[tuple[str, Any, Any]]:
    fa, fb = flatten_paths(a), flatten_paths(b)
    if set(fa) != set(fb):
        raise ValueError(
            f"mask trees differ: only in the first {sorted(set(fa) - set(fb))}, "
            f"only in the second {sorted(set(fb) - set(fa))}"
        )
    for p in fa:
        if np.shape(fa[p]) != np.shape(fb[p]):
            raise ValueError(f"mask {p!r} has shapes {np.shape(fa[p])} and {np.shape(fb[p])}")
    return [(p, fa[p], fb[p]) for p in fa]


def overlap(mask_tree_a: PyTree, mask_tree_b: PyTree) -> jax.Array:
    """Eq. 7 of the paper: ``1 - ||m - m'||_1 / k`` over all prunable weights (k of them)."""
    pairs = _paired_leaves(mask_tree_a, mask_tree_b)
    k = sum(int(np.size(x)) for _, x, _ in pairs)
    return 1.0 - _l1_distance([x for _, x, _ in pairs], [y for _, _, y in pairs]) / k


@jax.jit
def _l1_distance(xs, ys):
    return sum(
        jnp.sum(jnp.abs(jnp.asarray(x, jnp.float32) - jnp.asarray(y, jnp.float32)))
        for x, y in zip(xs, ys)
    )


def mask_flips(mask_tree_a: PyTree, mask_tree_b: PyTree) -> jax.Array:
    """How many prunable weights differ between two masks (pruned <-> kept)."""
    pairs = _paired_leaves(mask_tree_a, mask_tree_b)
    return _count_different([x for _, x, _ in pairs], [y for _, _, y in pairs])


@jax.jit
def _count_different(xs, ys):
    return sum(jnp.sum(jnp.asarray(x) != jnp.asarray(y), dtype=jnp.int32) for x, y in zip(xs, ys))


def sparsity_summary(masks: PyTree) -> dict[str, float]:
    """Fraction of zeros per prunable layer (by path) and ``'_total_sparsity'`` over all of them."""
    flat = flatten_paths(masks)
    out: dict[str, float] = {}
    zeros = total = 0
    for path, m in flat.items():
        m = np.asarray(m)
        z = int(m.size - np.count_nonzero(m))
        out[path] = z / m.size
        zeros += z
        total += m.size
    if not total:
        raise ValueError("mask tree has no leaf that is not None")
    out["_total_sparsity"] = zeros / total
    return out
