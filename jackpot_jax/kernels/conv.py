"""2-D convolutions with hand-written gradients XLA:CPU runs fast (oneDNN where present)."""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from jackpot_jax.kernels import options

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


def conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    batch_group_count=1,
    precision=None,
    preferred_element_type=None,
):
    """`jax.lax.conv_general_dilated`, with the explicit-gradient version where it applies.

    The explicit version covers 2-D NHWC/HWIO convolutions without dilation or groups (every
    convolution of the models here); anything else, and ``ComputeOptions.conv_impl`` 'xla',
    calls lax.
    """
    ones = (1,) * (lhs.ndim - 2)
    simple = (
        lhs.ndim == 4
        and _is_nhwc(dimension_numbers)
        and tuple(lhs_dilation or ones) == ones
        and tuple(rhs_dilation or ones) == ones
        and feature_group_count == 1
        and batch_group_count == 1
        and preferred_element_type is None
    )
    if not simple or options.conv_impl() == "xla":
        return lax.conv_general_dilated(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation,
            rhs_dilation,
            dimension_numbers,
            feature_group_count,
            batch_group_count,
            precision,
            preferred_element_type,
        )
    strides = tuple(int(s) for s in window_strides)
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    return conv2d(lhs, rhs, strides, pads, precision)


def conv2d(
    x,
    w,
    strides: Sequence[int] = (1, 1),
    padding: Sequence[tuple[int, int]] = ((0, 0), (0, 0)),
    precision=None,
):
    """NHWC x HWIO convolution (cross-correlation) with explicit padding and the hand-written
    backward pass described in the module docstring. Same values as lax; gradients equal up
    to float rounding."""
    # Whether oneDNN runs it is decided here, when the forward pass is traced (the backward
    # pass is traced later, outside any `options.use` block). oneDNN takes no negative
    # padding (cropping) and no empty arrays: such layers keep XLA's kernels.
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    dnnl = (
        x.dtype == w.dtype
        and min(min(p) for p in pads) >= 0
        and x.size > 0
        and options.onednn_used(x.dtype)
    )
    if dnnl:
        from jackpot_jax.kernels.native import onednn

        dnnl = min(onednn.output_shape(x.shape, w.shape, strides, pads)) >= 1
    return _conv(x, w, tuple(strides), pads, precision, dnnl)


def _forward(x, w, strides, pads, precision, dnnl=False):
    if dnnl:
        from jackpot_jax.kernels.native import onednn

        return onednn.forward(x, w, strides, pads)
    kh, kw = w.shape[:2]
    if (kh, kw) == (1, 1):  # a strided slice and a matrix product
        x = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)))
        x = x[:, :: strides[0], :: strides[1], :]
        return lax.dot_general(x, w[0, 0], (((3,), (0,)), ((), ())), precision=precision)
    return lax.conv_general_dilated(
        x, w, strides, pads, dimension_numbers=_NHWC, precision=precision
    )


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
    return lax.conv_general_dilated(
        g, w_t, (1, 1), "VALID", dimension_numbers=_NHWC, precision=precision
    )


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
    cols = [
        lax.slice(
            x,
            (0, i, j, 0),
            (n, i + (ho - 1) * strides[0] + 1, j + (wo - 1) * strides[1] + 1, cin),
            (1, strides[0], strides[1], 1),
        )
        for i in range(kh)
        for j in range(kw)
    ]
    patches = jnp.concatenate(cols, axis=3)  # (n, ho, wo, kh * kw * cin)
    dw = lax.dot_general(patches, g, (((0, 1, 2), (0, 1, 2)), ((), ())), precision=precision)
    return dw.reshape(w_shape)


def _conv_bwd(strides, pads, precision, dnnl, res, g):
    x, w = res
    if dnnl:
        from jackpot_jax.kernels.native import onednn

        return (
            onednn.input_grad(g, w, x.shape, strides, pads),
            onednn.weight_grad(x, g, w.shape, strides, pads),
        )
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
    chunks = 1  # else the fewest that divide the batch and fit (at most one example each)
    if patch_bytes > WGRAD_SPLIT_BYTES:
        chunks = next(
            k
            for k in range(1, n + 1)
            if n % k == 0 and (patch_bytes // k <= WGRAD_CHUNK_BYTES or k == n)
        )
    size = n // chunks
    parts = [
        jax.vjp(lambda v: _forward(x[i : i + size], v, strides, pads, precision), w)[1](
            g[i : i + size]
        )[0]
        for i in range(0, n, size)
    ]
    return sum(parts[1:], parts[0])


_conv.defvjp(_conv_fwd, _conv_bwd)
