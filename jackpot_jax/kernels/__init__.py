"""The kernels the models call: convolution, max-pooling, BatchNorm sums, a fusion barrier.

JAX differentiates a convolution into two more convolutions: the input gradient of a strided
convolution uses ``lhs_dilation`` and the weight gradient is a convolution whose window is the
whole feature map. XLA:CPU runs both through a slow generic path. The ``explicit``
implementation here keeps the forward pass but writes the backward pass by hand
(`jax.custom_vjp`; `conv`, `pool`, `norm`, `fusion`):

* where oneDNN is installed (`kernels.native.onednn`; float32 on the CPU with one device;
  ``ComputeOptions.onednn``), the forward pass and both gradients are oneDNN's direct
  convolutions on the NHWC activations in place. Otherwise:
* input gradient: the output gradient padded explicitly (interior padding ``stride - 1``
  instead of ``lhs_dilation``), then a VALID stride-1 convolution with the flipped kernel;
* weight gradient: for narrow patches (kernel taps x input channels <= `IM2COL_MAX_PATCH`:
  the first layers) one matrix product of the strided input slices side by side (im2col)
  with the output gradient; wider ones use XLA's weight-gradient convolution, on batch
  chunks where its patch matrix would pass `WGRAD_SPLIT_BYTES`;
* 1x1 convolutions: matrix products forward and for the input gradient;
* max-pooling with non-overlapping windows: the gradient goes to the first maximum of each
  window (as XLA's ``select_and_scatter`` does), computed elementwise;
* BatchNorm (`channel_moments`, `normalize`, used by `models.common.BatchNorm`): every sum
  over the batch and spatial axes is one product with a vector of ones, the rows folded into
  ~4k columns, instead of the reduce-windows XLA:CPU rewrites large reductions into;
* residual block outputs (`fusion_barrier`, called by the ResNets): XLA fuses the
  elementwise chain ``relu(bn(conv) + previous block output)`` of a whole stage into every
  consumer that can take it and recomputes it there; a conditional XLA cannot resolve at
  compile time makes it compute each block output, and its gradient, once.

benchmarks/README.md has the measurements behind each choice.

Which implementation runs is a field of the `ComputeOptions` of the step being traced
(`kernels.options`): ``conv_impl`` ``'auto'``, ``'xla'`` or ``'explicit'``; ``'auto'`` picks
per backend what benchmarks/bench_step.py measured fastest (`AUTO`). The models call
`conv_general_dilated`, `max_pool`, `fusion_barrier` and `models.common.batch_norm` and know
nothing else of it (with ``'xla'`` the barrier returns its input and the BatchNorm is Flax's
own `nn.BatchNorm`). ``explicit`` supports reverse-mode differentiation only: code that needs
forward mode (GraSP's Hessian-vector product) runs under ``kernels.use(conv_impl='xla')``.
"""

from jackpot_jax.kernels import options
from jackpot_jax.kernels.conv import conv2d, conv_general_dilated
from jackpot_jax.kernels.fusion import fusion_barrier
from jackpot_jax.kernels.norm import channel_moments, normalize
from jackpot_jax.kernels.options import (
    AUTO,
    ComputeOptions,
    describe_convolutions,
    describe_masks,
    onednn_used,
    resolve,
    use,
)
from jackpot_jax.kernels.pool import max_pool

__all__ = [
    "AUTO",
    "ComputeOptions",
    "channel_moments",
    "conv2d",
    "conv_general_dilated",
    "describe_convolutions",
    "describe_masks",
    "fusion_barrier",
    "max_pool",
    "normalize",
    "onednn_used",
    "options",
    "resolve",
    "use",
]
