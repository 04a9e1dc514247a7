"""Masks from scores under a budget, and masked parameters."""

from __future__ import annotations

import functools

import chex
import jax
import numpy as np

from jackpot_jax.method.nm import NMPattern, nm_hard
from jackpot_jax.method.paths import PyTree, flatten_paths, is_none, path_str
from jackpot_jax.method.topk import (
    float_dtype,
    global_masks,
    layout_key,
    maybe_abs,
    ste_mask,
    straight_through_of,
    topk_mask,
    topk_masks,
)


def masks_from_scores(
    scores: PyTree,
    budget: PyTree | int | NMPattern,
    *,
    use_abs: bool = True,
    straight_through: bool = False,
) -> PyTree:
    """Hard masks (or STE masks) for a score tree under a budget.

    ``budget`` is a tree mirroring ``scores`` whose leaves are keep counts (per-layer top-k)
    or `NMPattern`s (``n`` of every ``m`` along axis -2, see `nm_mask`); a single `NMPattern`
    (the same pattern on every layer); or a single int (one global top-k over all scores,
    concatenated in tree order; ties by that order).
    """
    if isinstance(budget, (int, np.integer)):
        n = sum(int(np.size(s)) for s in jax.tree.leaves(scores))
        if not 0 <= int(budget) <= n:
            raise ValueError(f"global keep count {budget} is outside [0, {n}]")
        key: int | tuple = int(budget)
    else:
        s_paths = flatten_paths(scores)
        if isinstance(budget, NMPattern):
            b_paths = {p: budget for p in s_paths}
        else:
            b_paths = flatten_paths(budget)
        if set(s_paths) != set(b_paths):
            raise ValueError(
                f"budget paths {sorted(b_paths)} differ from score paths {sorted(s_paths)}"
            )
        for path, k in b_paths.items():
            shape = np.shape(s_paths[path])
            if isinstance(k, NMPattern):
                k.check(shape, f"scores of layer {path!r}")
                continue
            n = int(np.prod(shape))
            if not 0 <= int(k) <= n:
                raise ValueError(f"keep count {k} for layer {path!r} is outside [0, {n}]")
            b_paths[path] = int(k)
        key = tuple(sorted(b_paths.items()))
    return _masks_fn(key, bool(use_abs), bool(straight_through), layout_key())(scores)


@functools.lru_cache(maxsize=64)
def _masks_fn(budget_key, use_abs: bool, straight_through: bool, layout: tuple):
    """One jitted function per budget: eager callers compile the whole tree once, not one
    small program per layer (53 for ResNet-50); per-layer top-k budgets run every such
    layer's top-k in one blocked bisection or one after another (``ComputeOptions.mask_layout``); N:M layers
    rank within their groups."""
    if straight_through:
        mask_fn = lambda s, k: ste_mask(s, k, use_abs=use_abs)
    else:
        mask_fn = lambda s, k: topk_mask(maybe_abs(s, use_abs), k)

    @jax.jit
    def fn(scores):
        if isinstance(budget_key, int):
            return global_masks(scores, budget_key, mask_fn)
        budgets = dict(budget_key)
        with_paths, treedef = jax.tree_util.tree_flatten_with_path(scores)
        ranked = [maybe_abs(s, use_abs) for _, s in with_paths]
        leaf_budgets = [budgets[path_str(kp)] for kp, _ in with_paths]
        hard: list = [None] * len(ranked)
        topk = [i for i, b in enumerate(leaf_budgets) if not isinstance(b, NMPattern)]
        for i, h in zip(
            topk, topk_masks([ranked[i] for i in topk], [leaf_budgets[i] for i in topk], layout)
        ):
            hard[i] = h
        for i, b in enumerate(leaf_budgets):
            if isinstance(b, NMPattern):
                hard[i] = nm_hard(ranked[i], b.n, b.m)
        hard = [h.astype(float_dtype(r)) for h, r in zip(hard, ranked)]
        if straight_through:
            hard = [straight_through_of(h, r) for h, r in zip(hard, ranked)]
        return jax.tree.unflatten(treedef, hard)

    return fn


@jax.jit
def apply_masks(params: PyTree, masks: PyTree) -> PyTree:
    """``w * m`` on masked leaves, ``w`` elsewhere."""

    def apply(m, w):
        if m is None:
            return w
        chex.assert_equal_shape([m, w])
        return w * m.astype(w.dtype)

    return jax.tree.map(apply, masks, params, is_leaf=is_none)


def masked_params(
    params: PyTree, scores: PyTree, budget: PyTree | int | NMPattern, *, use_abs: bool = True
) -> PyTree:
    """Params with straight-through masks applied: ``w * ste_mask(s)`` on prunable leaves.

    The gradient w.r.t. ``scores`` is ``dL/d(w*m) * w`` (times ``sign(s)`` with ``use_abs``),
    also for pruned weights. ``params`` are treated as constants.
    """
    params = jax.lax.stop_gradient(params)
    masks = masks_from_scores(scores, budget, use_abs=use_abs, straight_through=True)
    return apply_masks(params, masks)


def criterion_mask(importance: PyTree, budget: PyTree | int | NMPattern) -> PyTree:
    """Hard mask keeping the most important weights under ``budget`` (any budget of
    `masks_from_scores`; no abs: importance is already oriented so that larger = keep)."""
    return masks_from_scores(importance, budget, use_abs=False)
