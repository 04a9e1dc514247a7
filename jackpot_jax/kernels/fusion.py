"""A fusion barrier: a value XLA computes once and stores, forward and backward."""

import jax
import jax.numpy as jnp
from jax import lax

from jackpot_jax.kernels import options

# ---------------------------------------------------------------------------------------------
# Fusion barrier: a value XLA computes once and stores, in the forward and the backward pass
# ---------------------------------------------------------------------------------------------


def _runtime_one(key: jax.Array) -> jax.Array:
    """The int32 scalar 1, computed from ``key``'s first element at run time: its sign bit
    shifted out of a 32-bit word. XLA cannot fold it to a constant."""
    bits = lax.bitcast_convert_type(key.reshape(-1)[0].astype(jnp.float32), jnp.uint32)
    return (lax.shift_right_logical(bits, jnp.uint32(31)) >> 1).astype(jnp.int32) + 1


def _stored(x: jax.Array, key: jax.Array) -> jax.Array:
    """``x``, returned by a conditional whose predicate XLA cannot evaluate at compile time.
    A conditional is never fused, so its operand is computed once into a buffer. (An
    identity branch alone would be simplified away: the other one multiplies by the runtime
    one, which never happens and would change nothing.)"""
    one = _runtime_one(key)
    return lax.cond(one == 1, lambda v: v, lambda v: v * one.astype(v.dtype), x)


@jax.custom_vjp
def _barrier(x, key):
    return _stored(x, key)


def _barrier_fwd(x, key):
    return _stored(x, key), key


def _barrier_bwd(key, g):
    return _stored(g, key), None


_barrier.defvjp(_barrier_fwd, _barrier_bwd)


def fusion_barrier(x: jax.Array, key: jax.Array) -> jax.Array:
    """``x`` unchanged, in value and in gradient; with ``ComputeOptions.conv_impl`` 'explicit'
    also a point XLA does not fuse across, forward or backward.

    XLA fuses elementwise producers into each consumer and recomputes them there. In a
    residual stage, every block output is ``relu(bn(conv) + previous output)``, a chain of
    elementwise work that XLA:CPU copied into each weight-gradient transpose (and the
    gradient's chain into the other) and recomputed per layer: 0.8 s of a 1.5 s ResNet-32x2
    search step on 2 cores (benchmarks/README.md). Here ``x`` and its cotangent each pass
    through a `lax.cond` whose predicate depends on ``key`` at run time; XLA computes the
    operand once into a buffer. ``key`` is any small array that is replicated across
    devices (a layer's kernel, say); only its first element is read, so no collective is
    added under data parallelism. It gets no gradient from here. With conv_impl 'xla' (GPUs,
    whose fusions are cheap to recompute) this returns ``x``.
    """
    if options.conv_impl() == "xla":
        return x
    return _barrier(x, lax.stop_gradient(key))
