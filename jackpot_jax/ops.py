"""Convolution and max-pooling for the models, with gradients XLA:CPU runs fast.

JAX differentiates a convolution into two more convolutions: the input gradient of a strided
convolution uses ``lhs_dilation`` and the weight gradient is a convolution whose window is the
whole feature map. XLA:CPU runs both through a slow generic path (benchmarks/README.md). The
``explicit`` implementation here keeps the forward pass but writes the backward pass by hand
(`jax.custom_vjp`):

* where oneDNN is installed (`jackpot_jax.onednn`; float32 on the CPU with one device;
  `set_onednn`), the forward pass and both gradients are oneDNN's direct convolutions on the
  NHWC activations in place, which measured faster than XLA:CPU's at every layer shape of
  the models here (benchmarks/bench_conv.py). Otherwise:
* input gradient: the output gradient padded explicitly (interior padding ``stride - 1``
  instead of ``lhs_dilation``), then a VALID stride-1 convolution with the flipped kernel;
* weight gradient: for narrow patches (kernel taps x input channels <= `IM2COL_MAX_PATCH`:
  the first layers) one matrix product of the strided input slices side by side (im2col)
  with the output gradient; wider ones use XLA's weight-gradient convolution, which measured
  faster on 2 CPU cores than per-tap or im2col products (benchmarks/README.md), on batch
  chunks where its patch matrix would pass `WGRAD_SPLIT_BYTES`;
* 1x1 convolutions: matrix products forward and for the input gradient;
* max-pooling with non-overlapping windows: the gradient goes to the first maximum of each
  window (as XLA's ``select_and_scatter`` does), computed elementwise;
* BatchNorm (`channel_moments`, `normalize`, used by `models.common.BatchNorm`): every sum
  over the batch and spatial axes (the batch statistics forward, the scale, bias and mean
  gradients backward) is one product with a vector of ones, the rows folded into ~4k
  columns. XLA:CPU rewrites such large reductions into reduce-windows that took a third of
  a ResNet-32x2 step on 2 cores; the products are 2-5x faster there.
* residual block outputs (`fusion_barrier`, called by the ResNets): XLA fuses the
  elementwise chain ``relu(bn(conv) + previous block output)`` of a whole stage into every
  consumer that can take it (the weight gradients' layout transposes) and recomputes it
  there; a conditional XLA cannot resolve at compile time makes it compute each block
  output, and its gradient, once.

Which implementation runs is a switch read when a function is traced: `set_impl` /
`use_impl` (``'auto'``, ``'xla'``, ``'explicit'``); ``'auto'`` picks per backend what
benchmarks/bench_step.py measured fastest (`AUTO`). The models call `conv_general_dilated`,
`max_pool`, `fusion_barrier` and `models.common.batch_norm` and know nothing else of it
(with ``'xla'`` the barrier returns its input and the BatchNorm is Flax's own
`nn.BatchNorm`). ``explicit`` supports reverse-mode
differentiation only (`jax.custom_vjp`): code that needs forward mode (GraSP's
Hessian-vector product) runs under ``use_impl('xla')``.
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

IMPLS = ("auto", "xla", "explicit")
ONEDNN_MODES = ("auto", "off")
# What 'auto' means on each backend (benchmarks/README.md has the measurements).
AUTO = {"cpu": "explicit", "gpu": "xla", "tpu": "xla"}

_impl = "auto"
_onednn = "auto"


def set_impl(name: str) -> None:
    """Chooses the convolution/max-pool implementation for functions traced from now on."""
    global _impl
    if name not in IMPLS:
        raise ValueError(f"conv implementation {name!r}; expected one of {IMPLS}")
    _impl = name


def get_impl() -> str:
    """The switch as set (possibly ``'auto'``)."""
    return _impl


def resolved_impl() -> str:
    """The implementation traced functions use now: ``'xla'`` or ``'explicit'``."""
    if _impl != "auto":
        return _impl
    return AUTO.get(jax.default_backend(), "xla")


@contextlib.contextmanager
def use_impl(name: str):
    """``with use_impl('xla'): ...`` traces the block with that implementation."""
    previous = _impl
    set_impl(name)
    try:
        yield
    finally:
        set_impl(previous)


def set_onednn(mode: str) -> None:
    """``'auto'`` (the default): the explicit path's convolutions (forward, input and weight
    gradients) use oneDNN where `onednn_used` says so; ``'off'``: XLA's always. Read when a
    function is traced."""
    global _onednn
    if mode not in ONEDNN_MODES:
        raise ValueError(f"oneDNN mode {mode!r}; expected one of {ONEDNN_MODES}")
    _onednn = mode


@contextlib.contextmanager
def use_onednn(mode: str):
    """``with use_onednn('off'): ...`` traces the block with that oneDNN mode."""
    previous = _onednn
    set_onednn(mode)
    try:
        yield
    finally:
        set_onednn(previous)


def _onednn_off_reason(dtype) -> str:
    """Why a convolution traced now (explicit path, ``dtype``) would not call oneDNN; ""
    when it would."""
    if _onednn == "off":
        return "switched off (ops.set_onednn)"
    if jax.default_backend() != "cpu" or jnp.dtype(dtype) != jnp.float32:
        return "used on the CPU in float32 only"
    from jackpot_jax import native, onednn
    return native.placement_reason() or onednn.unavailable_reason()


def onednn_used(dtype=jnp.float32) -> bool:
    """Whether a convolution traced now (explicit path, ``dtype``) would call oneDNN:
    `set_onednn` is ``'auto'``, float32, the CPU backend, one device and
    `jackpot_jax.onednn.available()`.

    Only with a single device: the custom calls have no sharding rule, and under data
    parallelism XLA would run them on each device's shard of the batch without adding the
    shards' weight gradients."""
    return not _onednn_off_reason(dtype)


def describe(dtype=jnp.float32) -> str:
    """One line saying which convolutions a step traced now (in ``dtype``) runs, and why
    oneDNN's are not used where they are not (the CLI prints it at the start of a run)."""
    where = f"{jax.default_backend()}, {jnp.dtype(dtype).name}"
    if resolved_impl() == "xla":
        return f"convolutions: XLA's ({where})"
    why = _onednn_off_reason(dtype)
    if not why:
        return f"convolutions: oneDNN's ({where})"
    return f"convolutions: XLA's ({where}; oneDNN: {why})"


# ---------------------------------------------------------------------------------------------
# Convolution
# ---------------------------------------------------------------------------------------------

_NHWC = ("NHWC", "HWIO", "NHWC")


def _is_nhwc(dimension_numbers) -> bool:
    if dimension_numbers is None:
        return False
    if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
        return tuple(dimension_numbers) == ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
    return tuple(dimension_numbers) == _NHWC


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None):
    """`jax.lax.conv_general_dilated`, with the explicit-gradient version where it applies.

    The explicit version covers 2-D NHWC/HWIO convolutions without dilation or groups (every
    convolution of the models here); anything else, and the ``'xla'`` switch, calls lax.
    """
    ones = (1,) * (lhs.ndim - 2)
    simple = (lhs.ndim == 4 and _is_nhwc(dimension_numbers)
              and tuple(lhs_dilation or ones) == ones and tuple(rhs_dilation or ones) == ones
              and feature_group_count == 1 and batch_group_count == 1
              and preferred_element_type is None)
    if not simple or resolved_impl() == "xla":
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                        rhs_dilation, dimension_numbers, feature_group_count,
                                        batch_group_count, precision, preferred_element_type)
    strides = tuple(int(s) for s in window_strides)
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    return conv2d(lhs, rhs, strides, pads, precision)


def conv2d(x, w, strides: Sequence[int] = (1, 1),
           padding: Sequence[tuple[int, int]] = ((0, 0), (0, 0)), precision=None):
    """NHWC x HWIO convolution (cross-correlation) with explicit padding and the hand-written
    backward pass described in the module docstring. Same values as lax; gradients equal up
    to float rounding."""
    # Whether oneDNN runs it is decided here, when the forward pass is traced (the backward
    # pass is traced later, outside any `use_onednn` block). oneDNN takes no negative
    # padding (cropping) and no empty arrays: such layers keep XLA's kernels.
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    dnnl = (x.dtype == w.dtype and min(min(p) for p in pads) >= 0 and x.size > 0
            and onednn_used(x.dtype))
    if dnnl:
        from jackpot_jax import onednn
        dnnl = min(onednn.output_shape(x.shape, w.shape, strides, pads)) >= 1
    return _conv(x, w, tuple(strides), pads, precision, dnnl)


def _forward(x, w, strides, pads, precision, dnnl=False):
    if dnnl:
        from jackpot_jax import onednn
        return onednn.forward(x, w, strides, pads)
    kh, kw = w.shape[:2]
    if (kh, kw) == (1, 1):  # a strided slice and a matrix product
        x = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (*pads[0], 0), (*pads[1], 0),
                                                 (0, 0, 0)))
        x = x[:, ::strides[0], ::strides[1], :]
        return lax.dot_general(x, w[0, 0], (((3,), (0,)), ((), ())), precision=precision)
    return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_NHWC,
                                    precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv(x, w, strides, pads, precision, dnnl):
    return _forward(x, w, strides, pads, precision, dnnl)


def _conv_fwd(x, w, strides, pads, precision, dnnl):
    return _forward(x, w, strides, pads, precision, dnnl), (x, w)


def _input_grad(g, w, x_shape, strides, pads, precision):
    """dL/dx: ``g`` dilated by the stride and padded explicitly, then a VALID stride-1
    correlation with the spatially flipped, transposed kernel."""
    kh, kw = w.shape[:2]
    cfg = [(0, 0, 0)]
    for d, k in enumerate((kh, kw)):
        size = x_shape[1 + d] + pads[d][0] + pads[d][1]
        out = g.shape[1 + d]
        # Padded-input rows past the last window get no gradient: pad them as zeros.
        rest = size - ((out - 1) * strides[d] + k)
        cfg.append((k - 1 - pads[d][0], k - 1 - pads[d][1] + rest, strides[d] - 1))
    cfg.append((0, 0, 0))
    g = lax.pad(g, jnp.zeros((), g.dtype), cfg)
    if (kh, kw) == (1, 1):
        return lax.dot_general(g, w[0, 0], (((3,), (1,)), ((), ())), precision=precision)
    w_t = jnp.swapaxes(w[::-1, ::-1], 2, 3)
    return lax.conv_general_dilated(g, w_t, (1, 1), "VALID", dimension_numbers=_NHWC,
                                    precision=precision)


# Widest patch (kernel taps x input channels) whose weight gradient is one im2col matrix
# product; wider ones use XLA's own weight-gradient convolution, which measured faster here
# (a 9x copy of a 32-channel activation costs more than the convolution's transposes).
IM2COL_MAX_PATCH = 32


def _weight_grad_im2col(x, g, w_shape, strides, pads, precision):
    """dL/dw as one matrix product: the strided input slices every kernel tap sees, side by
    side (im2col without `conv_general_dilated_patches`), contracted with ``g`` over batch
    and space. For narrow patches only (first layers: 1 or 3 input channels)."""
    kh, kw, cin, cout = w_shape
    x = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)))
    n, ho, wo, _ = g.shape
    cols = [lax.slice(x, (0, i, j, 0),
                      (n, i + (ho - 1) * strides[0] + 1, j + (wo - 1) * strides[1] + 1, cin),
                      (1, strides[0], strides[1], 1))
            for i in range(kh) for j in range(kw)]
    patches = jnp.concatenate(cols, axis=3)               # (n, ho, wo, kh * kw * cin)
    dw = lax.dot_general(patches, g, (((0, 1, 2), (0, 1, 2)), ((), ())), precision=precision)
    return dw.reshape(w_shape)


def _conv_bwd(strides, pads, precision, dnnl, res, g):
    x, w = res
    if dnnl:
        from jackpot_jax import onednn
        return (onednn.input_grad(g, w, x.shape, strides, pads),
                onednn.weight_grad(x, g, w.shape, strides, pads))
    dx = _input_grad(g, w, x.shape, strides, pads, precision).astype(x.dtype)
    kh, kw, cin, _ = w.shape
    if kh * kw * cin <= IM2COL_MAX_PATCH:
        dw = _weight_grad_im2col(x, g, w.shape, strides, pads, precision)
    else:
        dw = _weight_grad_xla(x, g, w, strides, pads, precision)
    return dx, dw.astype(w.dtype)


# XLA:CPU's weight-gradient convolution packs its whole patch matrix (kernel taps x input
# channels by batch x output pixels) into one fresh allocation per call: 151 MB for a
# first-stage ResNet-32x2 layer at batch 128. Above `WGRAD_SPLIT_BYTES` the batch is split
# into chunks whose matrices fit in `WGRAD_CHUNK_BYTES` and the partial gradients are added
# (5-8% off the ResNet-32x2 search step in same-process A/Bs; benchmarks/README.md).
WGRAD_SPLIT_BYTES = 128 << 20
WGRAD_CHUNK_BYTES = 16 << 20


def _weight_grad_xla(x, g, w, strides, pads, precision):
    """dL/dw by XLA's own weight-gradient convolution, on batch chunks for large layers."""
    kh, kw, cin, _ = w.shape
    n = x.shape[0]
    patch_bytes = kh * kw * cin * n * g.shape[1] * g.shape[2] * jnp.dtype(x.dtype).itemsize
    chunks = 1   # else the fewest that divide the batch and fit (at most one example each)
    if patch_bytes > WGRAD_SPLIT_BYTES:
        chunks = next(k for k in range(1, n + 1)
                      if n % k == 0 and (patch_bytes // k <= WGRAD_CHUNK_BYTES or k == n))
    size = n // chunks
    parts = [jax.vjp(lambda v: _forward(x[i:i + size], v, strides, pads, precision), w)[1](
        g[i:i + size])[0] for i in range(0, n, size)]
    return sum(parts[1:], parts[0])


_conv.defvjp(_conv_fwd, _conv_bwd)


# ---------------------------------------------------------------------------------------------
# Max-pooling
# ---------------------------------------------------------------------------------------------


def max_pool(x, window_shape: Sequence[int], strides: Sequence[int] | None = None,
             padding="VALID"):
    """`flax.linen.max_pool` on NHWC input; with the ``'explicit'`` switch, non-overlapping
    unpadded windows get the elementwise first-maximum gradient."""
    import flax.linen as nn  # the fallback only
    window, strides = tuple(window_shape), tuple(strides or window_shape)
    if (resolved_impl() == "xla" or x.ndim != 4 or window != strides
            or not (padding == "VALID" or np.all(np.asarray(padding) == 0))):
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
    dx = jnp.stack(rows, axis=2)          # (n, ho, wh, wo, ww, c)
    return (dx.reshape(x.shape),)


_pool.defvjp(_pool_fwd, _pool_bwd)


__all__ = ["AUTO", "IMPLS", "ONEDNN_MODES", "channel_moments", "conv2d",
           "conv_general_dilated", "describe", "fusion_barrier", "get_impl", "max_pool",
           "normalize", "onednn_used", "resolved_impl", "set_impl", "set_onednn", "use_impl",
           "use_onednn"]


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
    sums = lax.dot_general(ones, x2.reshape(rows // fold, fold * c), (((0,), (0,)), ((), ())),
                           precision=lax.Precision.HIGHEST,
                           preferred_element_type=jnp.float32)
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
    return ((g * mul).astype(x2.dtype), (-g_sum * mul).astype(mean.dtype),
            gx_sum.astype(mul.dtype), g_sum.astype(bias.dtype))


_normalize2d.defvjp(_normalize_fwd, _normalize_bwd)


def normalize(x: jax.Array, mean: jax.Array, mul: jax.Array, bias: jax.Array) -> jax.Array:
    """``(x - mean) * mul + bias`` with per-channel (last axis) vectors, in the promoted dtype
    of its arguments; its gradient's channel sums are matrix-vector products."""
    shape = x.shape
    return _normalize2d(x.reshape(-1, shape[-1]), mean, mul, bias).reshape(shape)


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
    """``x`` unchanged, in value and in gradient; with the ``'explicit'`` switch also a
    point XLA does not fuse across, forward or backward.

    XLA fuses elementwise producers into each consumer and recomputes them there. In a
    residual stage, every block output is ``relu(bn(conv) + previous output)``, a chain of
    elementwise work that XLA:CPU copied into each weight-gradient transpose (and the
    gradient's chain into the other) and recomputed per layer: 0.8 s of a 1.5 s ResNet-32x2
    search step on 2 cores (benchmarks/README.md). Here ``x`` and its cotangent each pass
    through a `lax.cond` whose predicate depends on ``key`` at run time; XLA computes the
    operand once into a buffer. ``key`` is any small array that is replicated across
    devices (a layer's kernel, say); only its first element is read, so no collective is
    added under data parallelism. It gets no gradient from here. With the ``'xla'`` switch
    (GPUs, whose fusions are cheap to recompute) this returns ``x``.
    """
    if resolved_impl() == "xla":
        return x
    return _barrier(x, lax.stop_gradient(key))
