"""Persistent masks updated by balanced swaps (the authors' 2023 code)."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np

from jackpot_jax.method.masks import apply_masks
from jackpot_jax.method.paths import PyTree, flatten_paths, path_str
from jackpot_jax.method.topk import (
    float_dtype,
    layout_key,
    maybe_abs,
    ordered_keys,
    straight_through_of,
)

# ---------------------------------------------------------------------------------------------
# Persistent masks updated by balanced swaps (the authors' 2023 journal code)
# ---------------------------------------------------------------------------------------------

SWAP_SCHEDULES = ("official", "poly")


def check_swap_schedule(schedule: str, rate: float = 1.0, power: float = 4.0) -> None:
    """ValueError naming the bad setting of a swap-rate schedule (see `swap_rate`)."""
    if schedule not in SWAP_SCHEDULES:
        raise ValueError(f"swap schedule {schedule!r}; expected one of {SWAP_SCHEDULES}")
    if not 0.0 < float(rate) <= 1.0:
        raise ValueError(f"swap rate={rate!r} must be in (0, 1]")
    if not float(power) >= 0.0:
        raise ValueError(f"swap power={power!r} must be >= 0")


def swap_rate(
    epoch, epochs: int, schedule: str = "official", rate: float = 1.0, power: float = 4.0
):
    """Fraction of the eligible pairs a swap update makes in ``epoch`` (0-based) of ``epochs``.

    * ``official``: ``ceil((1 - epoch / epochs) ** 4)``, the authors' ``adjust_rate``; it is 1
      in every epoch of the run (the base is in (0, 1]), so every eligible pair is swapped.
    * ``poly``: ``rate * (1 - epoch / epochs) ** power``: swaps thin out towards the end
      (``power=0``: a constant fraction ``rate``).

    ``epoch`` may be a traced integer (the step's epoch inside a jitted step); returns float32.
    """
    check_swap_schedule(schedule, rate, power)
    if int(epochs) < 1:
        raise ValueError(f"epochs={epochs!r} must be >= 1")
    left = 1.0 - jnp.asarray(epoch, jnp.float32) / jnp.float32(epochs)
    if schedule == "official":
        return jnp.ceil(left**4).astype(jnp.float32)
    return (jnp.float32(rate) * left ** jnp.float32(power)).astype(jnp.float32)


def _kth_largest_key(keys: jax.Array, k: jax.Array, layout: str) -> jax.Array:
    """The k-th largest of a 1-D uint32 key array (``k`` traced, >= 1): the largest ``t``
    with ``count(keys >= t) >= k``, found one bit at a time (or by the native select where
    masks use it: ``layout`` 'native')."""
    if layout == "native":
        from jackpot_jax.kernels.native import topk_select

        return topk_select.kth_largest_key(keys, k)

    def step(i, t):
        cand = t | (jnp.uint32(1) << (31 - i).astype(jnp.uint32))
        return jnp.where(jnp.sum(keys >= cand, dtype=jnp.int32) >= k, cand, t)

    return jax.lax.fori_loop(0, 32, step, jnp.uint32(0))


def _top_keys(keys: jax.Array, k: jax.Array, layout: str) -> jax.Array:
    """Bool mask of the ``k`` largest entries of a 1-D uint32 key array, ties to the lower
    index; ``k`` is traced, ``0 <= k <= count(keys > 0)`` (key 0 marks a non-candidate)."""
    t = _kth_largest_key(keys, jnp.maximum(k, 1), layout)
    above, tied = keys > t, keys == t
    need = k - jnp.sum(above, dtype=jnp.int32)
    chosen = above | (tied & (jnp.cumsum(tied, dtype=jnp.int32) <= need))
    return chosen & (k > 0)


def _swap_layer(
    scores: jax.Array, mask: jax.Array, keep: int, rate: jax.Array, use_abs: bool, layout: str
) -> jax.Array:
    n = int(np.size(mask))
    if keep in (0, n):  # nothing pruned or nothing kept: no pair to swap
        return mask
    keys = ordered_keys(maybe_abs(scores, use_abs)).ravel()
    kept = mask.ravel() > 0
    # The cut is the (n - keep)-th smallest score, i.e. the (keep + 1)-th largest.
    cut = _kth_largest_key(keys, jnp.int32(keep + 1), layout)
    rise, fall = ~kept & (keys > cut), kept & (keys <= cut)
    n_rise, n_fall = jnp.sum(rise, dtype=jnp.int32), jnp.sum(fall, dtype=jnp.int32)
    count = jnp.where(n_rise == n_fall, n_rise, 0)  # only balanced sets swap
    n_swap = jnp.where(
        count > 1, jnp.ceil(count.astype(jnp.float32) * rate).astype(jnp.int32), count
    )
    n_swap = jnp.clip(n_swap, 0, count)

    def some():  # the n_swap highest risers and the n_swap lowest fallers
        up = _top_keys(jnp.where(rise, keys, jnp.uint32(0)), n_swap, layout)
        # Lowest first = largest complemented key; reversed, so that of equal scores the
        # higher index falls first (the lower index wins, as everywhere in this module).
        down = _top_keys(jnp.where(fall, ~keys, jnp.uint32(0))[::-1], n_swap, layout)[::-1]
        return up, down

    def every():
        return rise & (count > 0), fall & (count > 0)

    up, down = jax.lax.cond(n_swap == count, every, some)
    return ((kept | up) & ~down).reshape(mask.shape).astype(mask.dtype)


def swap_masks(
    scores: PyTree, masks: PyTree, budget: PyTree, rate, *, use_abs: bool = False
) -> PyTree:
    """One update of persistent masks by the authors' 2023 swap rule, per layer.

    With ``n`` weights of which ``keep`` are kept, the cut is the ``(n - keep)``-th smallest
    score (``|score|`` with ``use_abs``; raw by default, as the 2023 code). Pruned weights
    whose score is above the cut may rise, kept weights whose score is at or below it may
    fall. Only when both sets have the same size ``c > 0`` are pairs swapped: the
    ``ceil(c * rate)`` highest risers (all ``c`` when ``c == 1``) enter the mask and as many
    lowest fallers leave it; of equal scores the lower flat index wins (rises first, falls
    last). Every layer keeps exactly its count. ``budget`` is a keep-count tree mirroring
    ``masks`` (per-layer counts), ``rate`` a scalar in [0, 1] (may be traced, see
    `swap_rate`). Returns masks of the input dtypes; works under `jit`.
    """
    if isinstance(budget, (int, np.integer)):
        raise ValueError(
            "the swap rule is per layer: it needs a keep-count tree (any "
            "distribution but 'global'), got one global count"
        )
    s_paths, m_paths, b_paths = flatten_paths(scores), flatten_paths(masks), flatten_paths(budget)
    if not set(s_paths) == set(m_paths) == set(b_paths):
        raise ValueError(
            f"score, mask and budget trees differ: score paths {sorted(s_paths)}, "
            f"mask paths {sorted(m_paths)}, budget paths {sorted(b_paths)}"
        )
    for path, m in m_paths.items():
        chex.assert_equal_shape([s_paths[path], m])
        if not 0 <= int(b_paths[path]) <= int(np.size(m)):
            raise ValueError(
                f"keep count {b_paths[path]} for layer {path!r} is outside [0, {np.size(m)}]"
            )
    key = tuple(sorted((p, int(k)) for p, k in b_paths.items()))
    # the resolved mask layout (radix bits play no part in the swap rule): part of the cache key
    return _swap_fn(key, bool(use_abs), layout_key()[0])(
        scores, masks, jnp.asarray(rate, jnp.float32)
    )


@functools.lru_cache(maxsize=64)
def _swap_fn(budget_key, use_abs: bool, layout: str):
    counts = dict(budget_key)

    @jax.jit
    def fn(scores, masks, rate):
        with_paths, treedef = jax.tree_util.tree_flatten_with_path(masks)
        flat_scores = jax.tree.leaves(scores)
        new = [
            _swap_layer(s, m, counts[path_str(kp)], rate, use_abs, layout)
            for (kp, m), s in zip(with_paths, flat_scores)
        ]
        return jax.tree.unflatten(treedef, new)

    return fn


def masked_params_from_masks(
    params: PyTree, scores: PyTree, masks: PyTree, *, use_abs: bool = False
) -> PyTree:
    """``w * m`` with persistent masks ``m`` whose gradient flows to the scores straight
    through (identity; times ``sign(s)`` with ``use_abs``), as `masked_params` does for
    top-k masks. ``params`` are treated as constants."""
    params = jax.lax.stop_gradient(params)

    def ste(m, s):
        chex.assert_equal_shape([m, s])
        return straight_through_of(m.astype(float_dtype(s)), maybe_abs(s, use_abs))

    return apply_masks(params, jax.tree.map(ste, masks, scores))
