"""One-shot pruning baselines for one Linear layer: magnitude, Wanda and SparseGPT.

Each takes a ``kernel`` in Flax's ``(in, out)`` layout (torch's Linear weight is its transpose,
``(out, in)``) and returns a float 0/1 ``mask`` of the kernel's shape and dtype, 1 = kept. The
budget is exactly one of ``sparsity`` (a fraction in [0, 1), unstructured) or ``pattern`` (an
`NMPattern` or a string like ``"2:4"``: ``n`` kept in every ``m`` consecutive inputs of each
output, the layout of sparse tensor cores).

Calibration inputs are the layer's inputs, ``(tokens, in)`` (leading axes are flattened). So
that a caller need not keep them, every method also has a ``*_from_stats`` form over
`InputStats`, sums that add up chunk by chunk (`input_stats`, `add_stats`, `update_stats`).
Wanda needs only the per-input sums of squares, ``(in,)``; SparseGPT the Gram matrix
``X^T X``, ``(in, in)``.

Tie rule of `magnitude` and `wanda` (Wanda's ``torch.sort(..., stable=True)`` ascending, the
first ones pruned): among equal importances, the lower input index is pruned first. SparseGPT
uses the same rule on its own measure (unstructured: the lower flat index of the block in
torch's ``(out, in)`` order).

The sequential (block-by-block) calibration of a whole model lives with the pipeline; these
are the per-layer functions it calls.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jackpot_jax.errors import ConfigError, InputError
from jackpot_jax.method.nm import NMPattern, parse_pattern

_HIGHEST = jax.lax.Precision.HIGHEST  # float32 matmuls on every backend (no TF32/bf16 passes)

# ---------------------------------------------------------------------------------------------
# Calibration statistics
# ---------------------------------------------------------------------------------------------


class InputStats(NamedTuple):
    """Sums over a layer's calibration tokens, which add up chunk by chunk.

    ``sq_sum``: (in,) float32, ``sum_t x_tj^2`` (``||X_j||_2^2``, Wanda's statistic);
    ``gram``: (in, in) float32, ``X^T X`` (SparseGPT's Hessian is ``(2 / count) * gram``), or
    ``None`` when gathered with ``gram=False`` (Wanda's memory stays ``(in,)``);
    ``count``: int32 scalar, the number of tokens.
    """

    sq_sum: jax.Array
    gram: jax.Array | None
    count: jax.Array


def _as_tokens(inputs, what: str = "inputs") -> jax.Array:
    """``inputs`` as float32 (tokens, in): leading axes flattened."""
    x = jnp.asarray(inputs)
    if x.ndim < 2:
        raise InputError(
            f"{what} of shape {tuple(x.shape)}: expected (tokens, in) (or (..., in)), the "
            "layer's calibration inputs with the input features last"
        )
    return x.reshape(-1, x.shape[-1]).astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("gram",))
def _stats(x: jax.Array, gram: bool) -> InputStats:
    g = jnp.matmul(x.T, x, precision=_HIGHEST) if gram else None
    return InputStats(jnp.sum(x * x, axis=0), g, jnp.asarray(x.shape[0], jnp.int32))


def input_stats(inputs, *, gram: bool = True) -> InputStats:
    """`InputStats` of one chunk of calibration inputs ``(tokens, in)`` (or ``(..., in)``).

    With ``gram=False`` only the ``(in,)`` sums of squares are kept (enough for Wanda).
    """
    return _stats(_as_tokens(inputs), bool(gram))


def add_stats(a: InputStats, b: InputStats) -> InputStats:
    """The statistics of two chunks together: every sum added. Both must have the same input
    size and both or neither a Gram matrix."""
    if a.sq_sum.shape != b.sq_sum.shape:
        raise InputError(
            f"input statistics of {a.sq_sum.shape[0]} and {b.sq_sum.shape[0]} inputs cannot be "
            "added: gather both from the same layer"
        )
    if (a.gram is None) != (b.gram is None):
        raise InputError(
            "input statistics with and without a Gram matrix cannot be added: gather every "
            "chunk with the same gram= option"
        )
    gram = None if a.gram is None else a.gram + b.gram
    return InputStats(a.sq_sum + b.sq_sum, gram, a.count + b.count)


def update_stats(stats: InputStats | None, inputs, *, gram: bool = True) -> InputStats:
    """``stats`` plus the statistics of one more chunk of ``inputs``; ``stats=None`` starts
    the sums (the loop a calibration hook runs: ``s = update_stats(s, x)``)."""
    new = input_stats(inputs, gram=gram)
    return new if stats is None else add_stats(stats, new)


# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------


def _check_kernel(kernel) -> jax.Array:
    w = jnp.asarray(kernel)
    if w.ndim != 2:
        raise InputError(
            f"kernel of shape {tuple(w.shape)}: expected a Linear kernel in Flax's (in, out) "
            "layout (2 dims)"
        )
    return w


def _budget(
    shape: tuple[int, int], sparsity, pattern, *, blocksize: int | None = None
) -> tuple[float | None, NMPattern | None]:
    """Checked ``(sparsity, pattern)``: exactly one is set; the pattern fits the input axis."""
    if isinstance(pattern, str):
        try:
            pattern = parse_pattern(pattern)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if pattern is not None and not isinstance(pattern, NMPattern):
        raise ConfigError(f"pattern={pattern!r}; expected an NMPattern or a string like '2:4'")
    if (sparsity is None) == (pattern is None):
        raise ConfigError(
            f"sparsity={sparsity!r}, pattern={_show(pattern)}: give exactly one, a fraction "
            "sparsity in [0, 1) (unstructured, per output) or an N:M pattern such as '2:4'"
        )
    if pattern is not None:
        n_in = shape[0]
        if n_in % pattern.m:
            fits = [m for m in range(2, min(n_in, 16) + 1) if n_in % m == 0]
            fitting = f"patterns with m in {fits} fit it" if fits else "no m <= 16 divides it"
            raise ConfigError(
                f"the {pattern} pattern needs the input size (axis 0 of the (in, out) kernel) "
                f"to be a multiple of {pattern.m}; the kernel of shape {tuple(shape)} has "
                f"{n_in} inputs: {fitting}; or give an unstructured sparsity instead"
            )
        if blocksize is not None and blocksize % pattern.m:
            raise ConfigError(
                f"blocksize={blocksize} with the {pattern} pattern: the blocksize must be a "
                f"multiple of {pattern.m}, so that no group of {pattern.m} inputs straddles "
                "two blocks"
            )
        return None, pattern
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float, np.number)):
        raise ConfigError(f"sparsity={sparsity!r}; expected a fraction in [0, 1)")
    if not 0.0 <= float(sparsity) < 1.0:
        raise ConfigError(
            f"sparsity={sparsity!r}; expected a fraction in [0, 1) (0.5 prunes half of each "
            "output's inputs)"
        )
    return float(sparsity), None


def _show(pattern) -> str:
    return repr(str(pattern)) if isinstance(pattern, NMPattern) else repr(pattern)


def _check_stats(stats: InputStats, n_in: int) -> None:
    if not isinstance(stats, InputStats):
        raise InputError(f"stats of type {type(stats).__name__}; expected an InputStats")
    if stats.sq_sum.shape != (n_in,):
        raise InputError(
            f"calibration inputs with {stats.sq_sum.shape[-1] if stats.sq_sum.ndim else '?'} "
            f"features (last axis) for a kernel with {n_in} inputs: the inputs' last axis must "
            "equal the kernel's axis 0 (Flax's (in, out) layout)"
        )
    try:
        count = int(stats.count)
    except jax.errors.ConcretizationTypeError:
        return  # under jit: the count cannot be checked
    if count <= 0:
        raise InputError("no calibration tokens: the inputs have 0 rows; give (tokens, in)")


def _check_inputs(inputs, n_in: int) -> jax.Array:
    x = _as_tokens(inputs)
    if x.shape[-1] != n_in:
        raise InputError(
            f"inputs of shape {tuple(jnp.shape(inputs))} for a kernel with {n_in} inputs: the "
            f"inputs' last axis must equal the kernel's axis 0 ({n_in}, Flax's (in, out) layout)"
        )
    return x


def _mask_dtype(kernel: jax.Array):
    return kernel.dtype if jnp.issubdtype(kernel.dtype, jnp.floating) else jnp.float32


# ---------------------------------------------------------------------------------------------
# Magnitude and Wanda: one importance per weight, compared within each output
# ---------------------------------------------------------------------------------------------


def _ranks(x: jax.Array, axis: int) -> jax.Array:
    """Each entry's position in the stable ascending order along ``axis`` (0 = pruned first)."""
    order = jnp.argsort(x, axis=axis, stable=True)
    return jnp.argsort(order, axis=axis, stable=True)


def _lowest(x: jax.Array, k: jax.Array, axis: int) -> jax.Array:
    """bool: the ``k`` lowest entries along ``axis`` (ties: the lower index first, as a stable
    ascending sort's first ``k``), through the k-th smallest value: one sort of values, no
    argsort."""
    t = jnp.take(jnp.sort(x, axis=axis), jnp.maximum(k - 1, 0), axis=axis)
    t = jnp.expand_dims(t, axis)
    below, tied = x < t, x == t
    need = k - jnp.sum(below, axis=axis, keepdims=True, dtype=jnp.int32)
    chosen = below | (tied & (jnp.cumsum(tied, axis=axis, dtype=jnp.int32) <= need))
    return chosen & (k > 0)


@functools.partial(jax.jit, static_argnames=("n", "m"))
def _per_output_mask(metric: jax.Array, prune: jax.Array, n, m) -> jax.Array:
    """bool kept-mask of an (in, out) importance: per output column, the lowest ``prune``
    pruned, or in each group of ``m`` inputs the ``m - n`` lowest."""
    n_in, n_out = metric.shape
    if m is None:
        return ~_lowest(metric, prune, axis=0)
    groups = metric.reshape(n_in // m, m, n_out)
    return (_ranks(groups, axis=1) >= m - n).reshape(n_in, n_out)


def _mask_from_metric(kernel: jax.Array, metric: jax.Array, sparsity, pattern) -> jax.Array:
    n, m = (None, None) if pattern is None else (pattern.n, pattern.m)
    prune = 0 if sparsity is None else int(metric.shape[0] * sparsity)  # Wanda's count
    kept = _per_output_mask(metric.astype(jnp.float32), jnp.int32(prune), n, m)
    return kept.astype(_mask_dtype(kernel))


def magnitude(kernel, *, sparsity=None, pattern=None) -> jax.Array:
    """Magnitude mask, compared within each output as Wanda compares (the column of the
    ``(in, out)`` kernel, the row of torch's weight): importance ``|W_ij|``.

    Unstructured: each output keeps exactly ``in - int(in * sparsity)`` inputs, the lowest
    pruned (ties: the lower input index is pruned first, Wanda's stable sort). N:M: in each
    group of ``m`` consecutive inputs of each output, ``n`` kept, same tie rule. (Wanda's own
    magnitude baseline compares over the whole layer; this one uses Wanda's per-output group
    so that the three baselines differ only in their importance.)
    """
    w = _check_kernel(kernel)
    sparsity, pattern = _budget(w.shape, sparsity, pattern)
    return _mask_from_metric(w, jnp.abs(w.astype(jnp.float32)), sparsity, pattern)


def wanda_from_stats(kernel, stats: InputStats, *, sparsity=None, pattern=None) -> jax.Array:
    """`wanda` from calibration statistics: only ``stats.sq_sum`` is used (``gram`` may be
    ``None``)."""
    w = _check_kernel(kernel)
    sparsity, pattern = _budget(w.shape, sparsity, pattern)
    _check_stats(stats, w.shape[0])
    norms = jnp.sqrt(stats.sq_sum.astype(jnp.float32))  # ||X_j||_2 over the calibration tokens
    return _mask_from_metric(w, jnp.abs(w.astype(jnp.float32)) * norms[:, None], sparsity, pattern)


def wanda(kernel, inputs, *, sparsity=None, pattern=None) -> jax.Array:
    """Wanda mask (Sun et al. 2023, locuslab/wanda ``prune_wanda``): importance
    ``S_ij = |W_ij| * ||X_j||_2``, ``X_j`` input ``j`` over the calibration tokens (Wanda's
    ``sqrt(scaler_row)`` is the same up to a constant factor, which no comparison sees).

    Compared within each output (Wanda's comparison group: a row of torch's weight, a column
    of the ``(in, out)`` kernel). Unstructured: each output prunes its lowest
    ``int(in * sparsity)``; ties: the lower input index is pruned first (Wanda's
    ``torch.sort(stable=True)`` ascending). N:M: in each group of ``m`` consecutive inputs of
    each output, the ``m - n`` lowest pruned (2:4 keeps 2), same tie rule.
    ``inputs``: (tokens, in) or (..., in).
    """
    w = _check_kernel(kernel)
    _budget(w.shape, sparsity, pattern)  # budget errors before input errors
    x = _check_inputs(inputs, w.shape[0])
    return wanda_from_stats(w, input_stats(x, gram=False), sparsity=sparsity, pattern=pattern)


# ---------------------------------------------------------------------------------------------
# SparseGPT
# ---------------------------------------------------------------------------------------------


def _prune_block(w1, u1, valid, prune, n, m):
    """One block of SparseGPT's column loop, torch layout: ``w1`` (out, size), ``u1`` the
    block's (size, size) slice of the upper Cholesky factor of H^-1, ``valid`` (size,) false on
    padding columns. Unstructured (``m`` None): the ``prune`` lowest of the block are pruned.
    Returns the block's final values, its pruned mask and its errors ``(w - q) / d``."""
    size = w1.shape[1]
    d = jnp.diagonal(u1)
    if m is None:  # the block's mask, chosen once over all outputs; padding is never chosen
        measure = jnp.where(valid[None, :], w1**2 / d[None, :] ** 2, jnp.inf)
        pruned = _lowest(measure.ravel(), prune, axis=0).reshape(w1.shape)
    else:
        pruned = jnp.zeros(w1.shape, bool)
    err = jnp.zeros_like(w1)

    def column(i, carry):
        w1, pruned, err = carry
        w = w1[:, i]
        q = jnp.where(pruned[:, i], 0.0, w)
        e = (w - q) / u1[i, i]
        # OBS update: u1 is upper triangular, so only columns >= i move.
        w1 = w1 - e[:, None] * u1[i][None, :]
        return w1.at[:, i].set(q), pruned, err.at[:, i].set(e)

    if m is None:
        return jax.lax.fori_loop(0, size, column, (w1, pruned, err))

    def group(g, carry):
        w1, pruned, err = carry
        i = g * m
        cols = jax.lax.dynamic_slice_in_dim(w1, i, m, axis=1)
        dg = jax.lax.dynamic_slice_in_dim(d, i, m)
        # Chosen on the current (already updated) weights, as the authors do at i % m == 0.
        new = _ranks(cols**2 / dg[None, :] ** 2, axis=1) < m - n
        pruned = jax.lax.dynamic_update_slice_in_dim(pruned, new, i, axis=1)
        for j in range(m):
            w1, pruned, err = column(i + j, (w1, pruned, err))
        return w1, pruned, err

    return jax.lax.fori_loop(0, size // m, group, (w1, pruned, err))


@jax.jit
def _inverse_factor(h: jax.Array, percdamp: jax.Array):
    """``(U, dead, ok)``: the upper Cholesky factor of the dampened ``H^-1`` after the dead
    inputs' ``H_jj = 1``, the dead inputs, and whether the factorisations were finite."""
    n_in = h.shape[0]
    dead = jnp.diagonal(h) == 0
    h = h + jnp.diag(dead.astype(h.dtype))  # H_jj = 1 where input j never fires
    h = h + percdamp * jnp.mean(jnp.diagonal(h)) * jnp.eye(n_in, dtype=h.dtype)
    # torch.linalg.cholesky -> cholesky_inverse -> cholesky(upper=True), as fasterprune.
    lower = jnp.linalg.cholesky(h)
    hinv = jax.scipy.linalg.cho_solve((lower, True), jnp.eye(n_in, dtype=h.dtype))
    u = jnp.triu(jnp.linalg.cholesky(hinv).T)
    return u, dead, jnp.all(jnp.isfinite(u))


def _block_counts(n_out: int, n_in: int, blocksize: int, sparsity: float | None) -> jax.Array:
    """Entries each block prunes, unstructured: ``int(out * size * sparsity)`` of its size."""
    sizes = [min(blocksize, n_in - i1) for i1 in range(0, n_in, blocksize)]
    return jnp.asarray([int(n_out * s * (sparsity or 0.0)) for s in sizes], jnp.int32)


@functools.partial(jax.jit, static_argnames=("n", "m", "blocksize"))
def _sparsegpt_blocks(w, u, dead, counts, *, n, m, blocksize):
    """SparseGPT's block loop in torch's layout: ``w`` (out, in) float32, ``u`` from
    `_inverse_factor`, ``counts`` each block's unstructured prune count (from `_block_counts`;
    unused for N:M). Returns (updated w, pruned mask).

    The input axis is padded to whole blocks (zero weights, identity rows of ``u``: nothing
    flows to or from the padding) so that one traced block body serves every block."""
    n_out, n_in = w.shape
    blocks = -(-n_in // blocksize)
    n_pad = blocks * blocksize
    w = jnp.pad(jnp.where(dead[None, :], 0.0, w), ((0, 0), (0, n_pad - n_in)))
    u = jnp.pad(u, (0, n_pad - n_in)) + jnp.diag(jnp.arange(n_pad) >= n_in).astype(u.dtype)
    col = jnp.arange(n_pad)

    def block(b, carry):
        w, pruned = carry
        i1 = b * blocksize
        w1 = jax.lax.dynamic_slice(w, (0, i1), (n_out, blocksize))
        u1 = jax.lax.dynamic_slice(u, (i1, i1), (blocksize, blocksize))
        valid = jax.lax.dynamic_slice(col, (i1,), (blocksize,)) < n_in
        w1, p1, err = _prune_block(w1, u1, valid, counts[b], n, m)
        w = jax.lax.dynamic_update_slice(w, w1, (0, i1))
        pruned = jax.lax.dynamic_update_slice(pruned, p1, (0, i1))
        # The block's errors, through H^-1's rows, onto every later column (W[:, i2:] -= ...).
        rows = jax.lax.dynamic_slice(u, (i1, 0), (blocksize, n_pad))
        delta = jnp.matmul(err, rows, precision=_HIGHEST)
        return jnp.where(col[None, :] >= i1 + blocksize, w - delta, w), pruned

    w, pruned = jax.lax.fori_loop(0, blocks, block, (w, jnp.zeros(w.shape, bool)))
    return w[:, :n_in], pruned[:, :n_in]


def sparsegpt_from_stats(
    kernel,
    stats: InputStats,
    *,
    sparsity=None,
    pattern=None,
    blocksize: int = 128,
    percdamp: float = 0.01,
    update: bool = True,
) -> tuple[jax.Array, jax.Array]:
    """`sparsegpt` from calibration statistics (``stats.gram`` is required:
    ``input_stats(x, gram=True)``); ``H = (2 / stats.count) * stats.gram``."""
    w = _check_kernel(kernel)
    sparsity, pattern = _budget(w.shape, sparsity, pattern, blocksize=_blocksize(blocksize))
    if (
        isinstance(percdamp, bool)
        or not isinstance(percdamp, (int, float, np.floating))
        or not (np.isfinite(percdamp) and percdamp >= 0)
    ):
        raise ConfigError(f"percdamp={percdamp!r}; expected a finite fraction >= 0 (e.g. 0.01)")
    _check_stats(stats, w.shape[0])
    if stats.gram is None:
        raise InputError(
            "SparseGPT needs the inputs' Gram matrix: gather the statistics with "
            "input_stats(inputs, gram=True)"
        )
    h = (2.0 / stats.count.astype(jnp.float32)) * stats.gram.astype(jnp.float32)
    n, m = (None, None) if pattern is None else (pattern.n, pattern.m)
    u, dead, ok = _inverse_factor(h, jnp.float32(percdamp))
    try:
        finite = bool(ok)
    except jax.errors.ConcretizationTypeError:
        finite = True  # under jit: cannot be checked here
    if not finite:
        raise InputError(
            f"SparseGPT: the dampened Hessian of the kernel of shape {tuple(w.shape)} is not "
            f"positive definite (percdamp={percdamp!r}); raise percdamp (the authors use 0.01) "
            "or give more calibration tokens"
        )
    # One block of all inputs when the blocksize exceeds them, as the authors' min(i1 + b, in).
    blocksize = min(blocksize, w.shape[0])
    new_t, pruned_t = _sparsegpt_blocks(
        w.astype(jnp.float32).T,
        u,
        dead,
        _block_counts(w.shape[1], w.shape[0], blocksize, sparsity),
        n=n,
        m=m,
        blocksize=blocksize,
    )
    mask = (~pruned_t).T.astype(_mask_dtype(w))
    return mask, (new_t.T.astype(w.dtype) if update else w)


def _blocksize(blocksize) -> int:
    if isinstance(blocksize, bool) or not isinstance(blocksize, (int, np.integer)) or blocksize < 1:
        raise ConfigError(f"blocksize={blocksize!r}; expected a positive integer (default 128)")
    return int(blocksize)


def sparsegpt(
    kernel,
    inputs,
    *,
    sparsity=None,
    pattern=None,
    blocksize: int = 128,
    percdamp: float = 0.01,
    update: bool = True,
) -> tuple[jax.Array, jax.Array]:
    """SparseGPT (Frantar & Alistarh 2023, IST-DASLab/sparsegpt ``fasterprune``): the OBS
    solver on the calibration Hessian. Returns ``(mask, updated_kernel)``.

    In torch's layout ``W = kernel.T`` (out, in), whose columns are the inputs:

    * ``H = (2/n) X^T X`` over the ``n`` calibration tokens; a dead input (``H_jj = 0``) gets
      ``H_jj = 1`` and its weights zeroed; ``H += percdamp * mean(diag H) * I``;
    * ``U`` = the upper Cholesky factor of ``H^-1`` (cholesky, its inverse, cholesky upper);
    * columns in blocks of ``blocksize``. Unstructured: each block's mask is its lowest
      ``int(out * size * sparsity)`` entries of ``w^2 / U_jj^2`` over the whole block (all
      outputs; ties: the lower flat index in (out, size) order first). The authors'
      ``tmp <= sort(tmp)[k]`` prunes ``k + 1`` (one more per block, one even at sparsity 0);
      this prunes exactly ``k``. N:M: at every ``m``-th column, in each output the ``m - n``
      lowest of the next ``m`` by the same measure, on the weights updated so far;
    * column by column, the pruned weights' error ``e = (w - q) / U_jj`` is propagated to the
      block's later columns (``W[:, i:] -= e U[i, i:]``), then the block's errors to every
      later column (``W[:, i2:] -= E U[i1:i2, i2:]``).

    ``updated_kernel`` is zero where ``mask`` is 0. With ``update=False`` the mask is the same
    and ``kernel`` comes back unchanged (the mask-only variant: a jackpot keeps the
    pre-trained values). Computed in float32 (matmuls at full precision on every backend);
    ``blocksize`` must be a multiple of ``m`` for N:M. ``inputs``: (tokens, in) or (..., in).
    """
    w = _check_kernel(kernel)
    _budget(w.shape, sparsity, pattern, blocksize=_blocksize(blocksize))
    x = _check_inputs(inputs, w.shape[0])
    return sparsegpt_from_stats(
        w,
        input_stats(x, gram=True),
        sparsity=sparsity,
        pattern=pattern,
        blocksize=blocksize,
        percdamp=percdamp,
        update=update,
    )
