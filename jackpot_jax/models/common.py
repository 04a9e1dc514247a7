"""Small pieces shared by the model families (no pruning, no training)."""

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from jackpot_jax import kernels

# torch-equivalent explicit paddings: Flax 'SAME' pads stride-2 layers
# asymmetrically, torch pads symmetrically.
PAD0 = ((0, 0), (0, 0))
PAD1 = ((1, 1), (1, 1))
PAD3 = ((3, 3), (3, 3))

# He-normal over fan_out, as torchvision initialises conv kernels.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv(*args, **kwargs) -> nn.Conv:
    """`flax.linen.Conv` (same params, same names) computing with `jackpot_jax.kernels`:
    XLA's convolution or one with hand-written gradients (fast on XLA:CPU), as
    ``ComputeOptions.conv_impl`` of the step being traced says."""
    return nn.Conv(*args, conv_general_dilated=kernels.conv_general_dilated, **kwargs)


max_pool = kernels.max_pool


def residual_output(y: jnp.ndarray, shortcut: jnp.ndarray, conv_module: nn.Module):
    """``relu(y + shortcut)``, the output of a residual block, behind `kernels.fusion_barrier`
    (keyed on the kernel of the block's last convolution ``conv_module``, which is replicated
    across devices) so that XLA computes it once instead of inside every consumer."""
    return kernels.fusion_barrier(nn.relu(y + shortcut), conv_module.variables["params"]["kernel"])


class BatchNorm(nn.Module):
    """Flax's `nn.BatchNorm` (same variables, names, statistics and running-average update;
    default options) over the last axis, with the channel sums of `jackpot_jax.kernels` (fast
    on XLA:CPU)."""

    use_running_average: bool
    momentum: float = 0.9
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        if self.use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            mean, var = kernels.channel_moments(x)
            if not self.is_initializing():
                ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        mul = lax.rsqrt(var + self.epsilon) * scale
        return kernels.normalize(x, mean, mul, bias).astype(jnp.result_type(x, scale, bias))


def batch_norm(train: bool, name: str) -> nn.Module:
    """BatchNorm with torch's defaults (torch momentum 0.1 == Flax momentum 0.9): Flax's own,
    or, with ``ComputeOptions.conv_impl`` 'explicit', `BatchNorm` above (the options of the
    step being traced)."""
    if kernels.options.conv_impl() == "explicit":
        return BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


def flatten_nchw(x: jnp.ndarray) -> jnp.ndarray:
    """Flattens NHWC features in torch's (C, H, W) order, so Linear weights map 1:1."""
    return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


def adaptive_avg_pool(x: jnp.ndarray, output_size: tuple[int, int]) -> jnp.ndarray:
    """torch.nn.AdaptiveAvgPool2d on NHWC input (bins [floor(i*H/o), ceil((i+1)*H/o)))."""
    n, h, w, c = x.shape
    oh, ow = output_size
    if h % oh == 0 and w % ow == 0:
        return x.reshape(n, oh, h // oh, ow, w // ow, c).mean(axis=(2, 4))
    rows = []
    for i in range(oh):
        h0, h1 = (i * h) // oh, -((-(i + 1) * h) // oh)
        cols = []
        for j in range(ow):
            w0, w1 = (j * w) // ow, -((-(j + 1) * w) // ow)
            cols.append(x[:, h0:h1, w0:w1, :].mean(axis=(1, 2)))
        rows.append(jnp.stack(cols, axis=1))
    return jnp.stack(rows, axis=1)
