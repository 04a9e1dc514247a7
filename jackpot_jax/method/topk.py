"""Exact-count top-k masks and their straight-through form; how several layers' masks are computed."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jackpot_jax.kernels import options
from jackpot_jax.method.paths import PyTree

# ---------------------------------------------------------------------------------------------
# Exact-count top-k masks
# ---------------------------------------------------------------------------------------------


def ordered_keys(x: jax.Array) -> jax.Array:
    """uint32 keys whose unsigned order equals the float order of ``x`` (float32).

    NaN gets key 1, below every number (-inf is 0x007FFFFF) and above the padding key 0: a
    NaN score is never kept in place of a number (its raw bits would rank it above +inf).
    Integer operations only: XLA:CPU flushes subnormal floats to zero in float comparisons,
    which would tie every subnormal score with 0.
    """
    u = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    magnitude = u & jnp.uint32(0x7FFFFFFF)
    u = jnp.where(magnitude == 0, jnp.uint32(0), u)  # -0.0 and +0.0 are equal scores: one key
    sign = jnp.uint32(0x80000000)
    keys = jnp.where(u & sign, ~u, u | sign)
    return jnp.where(magnitude > jnp.uint32(0x7F800000), jnp.uint32(1), keys)


_BLOCK = 1024  # scores are counted in rows of this many; each row belongs to one array


def _blocked_topk(
    arrays: Sequence[jax.Array], keeps: Sequence[int], *, unroll: bool = True, radix_bits: int = 1
) -> list[jax.Array]:
    """Exact top-k 0/1 masks (bool) of several arrays at once, ``keeps[i]`` ones in
    ``arrays[i]``, ties broken by lower flat index within each array.

    The arrays' order-preserving uint32 keys are laid out in rows of ``_BLOCK`` (each array
    padded to whole rows with key 0, which no candidate threshold reaches), and one radix
    search finds every array's k-th largest key together: the threshold's bits are fixed from
    the top, ``radix_bits`` per pass (32 / radix_bits passes). Each pass counts, for all
    ``2**radix_bits - 1`` candidate values of the next digit at once, the keys at or above
    the candidate (one fused compare-and-count over all scores plus a tiny per-array sum of
    row counts) and keeps the largest digit whose count still reaches the keep count. With
    ``radix_bits=1`` this is a 32-step bitwise bisection; every radix finds the same (unique)
    threshold, so the masks are identical. The passes are unrolled, so on a GPU the whole
    mask is a few kernels and no `while` loop (one `fori_loop` per layer cost 14 ms for
    ResNet-32x2 on an H200, the unrolled bisection 1.1 ms); with ``unroll=False`` they run
    in a `fori_loop`, which XLA:CPU runs faster one layer at a time (see ``ComputeOptions.mask_layout``). A
    prefix sum runs only when tied scores straddle some array's cut.
    """
    if radix_bits not in (1, 2, 4, 8):
        raise ValueError(f"radix_bits={radix_bits}; expected 1, 2, 4 or 8 (a divisor of 32)")
    out: list[jax.Array | None] = [None] * len(arrays)
    live = []
    for i, (a, k) in enumerate(zip(arrays, keeps)):
        if k == 0:
            out[i] = jnp.zeros(a.shape, bool)
        elif k == a.size:
            out[i] = jnp.ones(a.shape, bool)
        else:
            live.append(i)
    if not live:
        return out
    rows = [-(-arrays[i].size // _BLOCK) for i in live]
    row_of = np.repeat(np.arange(len(live)), rows)  # static: which array a row is
    keys = [
        jnp.pad(
            ordered_keys(jax.lax.stop_gradient(arrays[i]).ravel()),
            (0, r * _BLOCK - arrays[i].size),
        )
        for i, r in zip(live, rows)
    ]
    keys = jnp.concatenate(keys).reshape(-1, _BLOCK)
    keep = jnp.asarray([keeps[i] for i in live], jnp.int32)

    def per_array(row_counts):  # (rows, ...) int32 -> (arrays, ...) counts
        if len(live) == 1:
            return jnp.sum(row_counts, axis=0, dtype=jnp.int32)[None]
        return jax.ops.segment_sum(
            row_counts, row_of, num_segments=len(live), indices_are_sorted=True
        )

    digits = jnp.arange(1, 2**radix_bits, dtype=jnp.uint32)

    def step(i, t):  # largest t with count(keys >= t) >= keep, per array, radix_bits at a time
        shift = (32 - radix_bits * (i + 1)).astype(jnp.uint32)
        cands = t[:, None] | (digits[None, :] << shift)  # (arrays, digits)
        # Candidates on the major axis: every count is a reduction along a row of keys.
        hits = keys[None] >= cands[row_of].T[:, :, None]  # (digits, rows, _BLOCK)
        counts = per_array(jnp.sum(hits, axis=2, dtype=jnp.int32).T)  # (arrays, digits)
        # Counts fall as the digit grows: the number of digits that still reach the keep
        # count is the largest such digit.
        best = jnp.sum(counts >= keep[:, None], axis=1, dtype=jnp.int32).astype(jnp.uint32)
        return t | (best << shift)

    t = jnp.zeros(len(live), jnp.uint32)
    passes = 32 // radix_bits
    if unroll:
        for i in range(passes):
            t = step(jnp.int32(i), t)
    else:
        t = jax.lax.fori_loop(0, passes, step, t)
    t_rows = t[row_of][:, None]
    above, tied = keys > t_rows, keys == t_rows
    n_tied = per_array(jnp.sum(tied, axis=1, dtype=jnp.int32))
    need = keep - per_array(jnp.sum(above, axis=1, dtype=jnp.int32))

    def first_tied():  # only when some tied scores must be dropped: lower flat index wins
        rank = jnp.cumsum(tied.ravel(), dtype=jnp.int32).reshape(keys.shape)
        before = (jnp.cumsum(n_tied) - n_tied)[row_of][:, None]  # ties in earlier arrays
        return above | (tied & (rank - before <= need[row_of][:, None]))

    mask = jax.lax.cond(jnp.all(need == n_tied), lambda: above | tied, first_tied).ravel()
    start = np.concatenate([[0], np.cumsum(rows)]) * _BLOCK
    for j, i in enumerate(live):
        out[i] = mask[start[j] : start[j] + arrays[i].size].reshape(arrays[i].shape)
    return out


def layout_key() -> tuple[str, int]:
    """The mask layout (resolved for this backend) and radix bits of the `ComputeOptions` being
    traced now: a static argument of every jitted mask function, so that its cache never
    serves a step traced with other options."""
    opts = options.current()
    return (options.mask_layout(opts), opts.radix_bits)


def topk_masks(arrays: Sequence[jax.Array], keeps: Sequence[int], layout) -> list:
    layout, radix_bits = layout
    if layout == "native":
        from jackpot_jax.kernels.native import topk_select

        return [topk_select.topk_mask(jax.lax.stop_gradient(a), k) for a, k in zip(arrays, keeps)]
    if layout == "per_layer":
        return [_blocked_topk([a], [k], unroll=False)[0] for a, k in zip(arrays, keeps)]
    return _blocked_topk(arrays, keeps, unroll=True, radix_bits=radix_bits)


def topk_mask(scores: jax.Array, keep: int) -> jax.Array:
    """0/1 array of ``scores``' shape with exactly ``keep`` ones on the largest scores.

    Ties are broken by flat (row-major) index: the lower index is kept. NaN ranks below every
    number, -inf included (NaNs are kept only when ``keep`` exceeds the numbers). ``keep`` is a
    static Python int in ``[0, scores.size]``. Cost: 32 counting passes (a bitwise bisection
    for the k-th largest value), or 8 radix passes (``ComputeOptions.mask_layout`` "together"), plus a prefix
    sum only when ties straddle the cut; on the CPU a C++ radix select with the same result
    (`jackpot_jax.kernels.native.topk_select`, four passes). O(n) memory, no sort. Works under `jit`; returns
    the dtype of ``scores`` if floating.
    """
    n = int(np.size(scores))
    keep = int(keep)
    if not 0 <= keep <= n:
        raise ValueError(f"keep={keep} is outside [0, {n}] for scores of shape {np.shape(scores)}")
    return _topk_mask(jnp.asarray(scores), keep, layout_key())


def float_dtype(x):
    return x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32


@functools.partial(jax.jit, static_argnums=(1, 2))
def _topk_mask(scores: jax.Array, keep: int, layout: tuple) -> jax.Array:
    # Jitted also when called eagerly: one compilation per (shape, keep), not per primitive.
    return topk_masks([scores], [keep], layout)[0].astype(float_dtype(scores))


def maybe_abs(scores, use_abs: bool):
    return jnp.abs(scores) if use_abs else scores


def ste_mask(scores: jax.Array, keep: int, *, use_abs: bool = True) -> jax.Array:
    """Straight-through top-k: the value is ``topk_mask``, the gradient is the identity.

    With ``use_abs`` (the official default) the mask ranks ``|scores|`` and the gradient
    w.r.t. ``scores`` carries ``sign(scores)``. The value equals ``topk_mask`` bit for bit:
    ``s - stop_gradient(s)`` is exactly zero for finite scores.
    """
    s = maybe_abs(scores, use_abs)
    return straight_through_of(topk_mask(s, keep), s)


def straight_through_of(hard: jax.Array, s: jax.Array) -> jax.Array:
    """``hard`` in value, the identity w.r.t. ``s`` in gradient."""
    return jax.lax.stop_gradient(hard) + (s - jax.lax.stop_gradient(s))


def global_masks(scores: PyTree, keep: int, mask_fn) -> PyTree:
    flat, treedef = jax.tree.flatten(scores)
    if not flat:
        raise ValueError("scores tree has no leaf that is not None")
    joined = jnp.concatenate([jnp.ravel(s) for s in flat])
    m = mask_fn(joined, keep)
    offsets = np.cumsum([0] + [int(np.size(s)) for s in flat])
    parts = [m[a:b].reshape(np.shape(s)) for a, b, s in zip(offsets[:-1], offsets[1:], flat)]
    return jax.tree.unflatten(treedef, parts)
