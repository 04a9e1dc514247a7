"""BatchNorm sums as products with a ones vector."""

import math

import jax
import jax.numpy as jnp
from jax import lax

# ---------------------------------------------------------------------------------------------
# BatchNorm: sums over every axis but the channels as products with a ones vector
# ---------------------------------------------------------------------------------------------


# Width (folded rows x channels) of the product in `_channel_sums`: a product with a ones
# vector is 2-3x faster at 1-4k output columns than at 32-128 (benchmarks/README.md).
SUM_WIDTH = 4096


def _channel_sums(x2: jax.Array) -> jax.Array:
    """Column sums of a (rows, channels) array in float32, as one product with a ones vector.

    The rows are first folded into the columns, ``fold`` at a time (a free reshape), so the
    product has ~`SUM_WIDTH` columns; the ``fold`` partial sums of each channel are then
    added."""
    rows, c = x2.shape
    fold = math.gcd(rows, max(1, SUM_WIDTH // c))
    ones = jnp.ones((rows // fold,), x2.dtype)
    sums = lax.dot_general(
        ones,
        x2.reshape(rows // fold, fold * c),
        (((0,), (0,)), ((), ())),
        precision=lax.Precision.HIGHEST,
        preferred_element_type=jnp.float32,
    )
    return sums.reshape(fold, c).sum(axis=0)


def channel_moments(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mean, variance) over every axis but the last, in float32, as Flax's BatchNorm computes
    them (``use_fast_variance``: mean of squares minus squared mean, floored at 0)."""
    x2 = x.reshape(-1, x.shape[-1]).astype(jnp.promote_types(x.dtype, jnp.float32))
    n = x2.shape[0]
    mean = _channel_sums(x2) / n
    mean_sq = _channel_sums(x2 * x2) / n
    return mean, jnp.maximum(0.0, mean_sq - mean * mean)


@jax.custom_vjp
def _normalize2d(x2, mean, mul, bias):
    return (x2 - mean) * mul + bias


def _normalize_fwd(x2, mean, mul, bias):
    return _normalize2d(x2, mean, mul, bias), (x2, mean, mul, bias)


def _normalize_bwd(res, g):
    x2, mean, mul, bias = res
    g_sum = _channel_sums(g)
    gx_sum = _channel_sums(g * (x2 - mean))
    return (
        (g * mul).astype(x2.dtype),
        (-g_sum * mul).astype(mean.dtype),
        gx_sum.astype(mul.dtype),
        g_sum.astype(bias.dtype),
    )


_normalize2d.defvjp(_normalize_fwd, _normalize_bwd)


def normalize(x: jax.Array, mean: jax.Array, mul: jax.Array, bias: jax.Array) -> jax.Array:
    """``(x - mean) * mul + bias`` with per-channel (last axis) vectors, in the promoted dtype
    of its arguments; its gradient's channel sums are matrix-vector products."""
    shape = x.shape
    return _normalize2d(x.reshape(-1, shape[-1]), mean, mul, bias).reshape(shape)
