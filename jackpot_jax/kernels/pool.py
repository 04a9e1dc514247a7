"""Max-pooling with an elementwise gradient for non-overlapping windows."""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jackpot_jax.kernels import options

# ---------------------------------------------------------------------------------------------
# Max-pooling
# ---------------------------------------------------------------------------------------------


def max_pool(x, window_shape: Sequence[int], strides: Sequence[int] | None = None, padding="VALID"):
    """`flax.linen.max_pool` on NHWC input; with ``ComputeOptions.conv_impl`` 'explicit',
    non-overlapping unpadded windows get the elementwise first-maximum gradient."""
    import flax.linen as nn  # the fallback only

    window, strides = tuple(window_shape), tuple(strides or window_shape)
    if (
        options.conv_impl() == "xla"
        or x.ndim != 4
        or window != strides
        or not (padding == "VALID" or np.all(np.asarray(padding) == 0))
    ):
        return nn.max_pool(x, window, strides, padding)
    h, w = x.shape[1] // window[0] * window[0], x.shape[2] // window[1] * window[1]
    return _pool(x[:, :h, :w, :], window)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _pool(x, window):
    return _pool_fwd(x, window)[0]


def _windows(x, window):
    n, h, w, c = x.shape
    return x.reshape(n, h // window[0], window[0], w // window[1], window[1], c)


def _pool_fwd(x, window):
    y = jnp.max(_windows(x, window), axis=(2, 4))
    return y, (x, y)


def _pool_bwd(window, res, g):
    x, y = res
    xw = _windows(x, window)
    taken = jnp.zeros(y.shape, bool)
    rows = []
    for i in range(window[0]):  # row-major window order: the first maximum takes it all
        cols = []
        for j in range(window[1]):
            hit = (xw[:, :, i, :, j, :] == y) & ~taken
            taken = taken | hit
            cols.append(jnp.where(hit, g, jnp.zeros((), g.dtype)))
        rows.append(jnp.stack(cols, axis=3))
    dx = jnp.stack(rows, axis=2)  # (n, ho, wh, wo, ww, c)
    return (dx.reshape(x.shape),)


_pool.defvjp(_pool_fwd, _pool_bwd)
