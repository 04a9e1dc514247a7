"""CIFAR ResNets (He et al. 2016, §4.2) with the option-A parameter-free shortcut.

Layout and names follow the official code: `conv1`, `bn1`,
`layer{1,2,3}_{i}/conv{1,2}`, `layer{1,2,3}_{i}/bn{1,2}`, `classifier`.
"""

import flax.linen as nn
import jax.numpy as jnp

from jackpot_jax.models.common import PAD1, batch_norm, conv, residual_output

# He-normal over fan_in, as the CIFAR ResNet reference code initialises its layers.
_kaiming = nn.initializers.kaiming_normal()


def option_a_shortcut(x: jnp.ndarray, planes: int, stride: int) -> jnp.ndarray:
    """Subsamples spatially and zero-pads channels so the identity sits in the middle."""
    if stride != 1:
        x = x[:, ::stride, ::stride, :]
    extra = planes - x.shape[-1]
    if extra:
        x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
    return x


class CifarBasicBlock(nn.Module):
    planes: int
    stride: int = 1

    @nn.compact
    def __call__(self, x, train: bool = False):
        y = conv(
            self.planes,
            (3, 3),
            (self.stride, self.stride),
            padding=PAD1,
            use_bias=False,
            kernel_init=_kaiming,
            name="conv1",
        )(x)
        y = nn.relu(batch_norm(train, "bn1")(y))
        conv2 = conv(
            self.planes, (3, 3), padding=PAD1, use_bias=False, kernel_init=_kaiming, name="conv2"
        )
        y = batch_norm(train, "bn2")(conv2(y))
        if self.stride != 1 or x.shape[-1] != self.planes:
            x = option_a_shortcut(x, self.planes, self.stride)
        return residual_output(y, x, conv2)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs: stem 16w, stages 16w/32w/64w of n blocks."""

    num_blocks: int = 3
    num_classes: int = 10
    width: int = 1

    @nn.compact
    def __call__(self, x, train: bool = False):
        w = 16 * self.width
        x = conv(w, (3, 3), padding=PAD1, use_bias=False, kernel_init=_kaiming, name="conv1")(x)
        x = nn.relu(batch_norm(train, "bn1")(x))
        self.sow("intermediates", "stem", x)
        for stage, planes in enumerate((w, 2 * w, 4 * w)):
            for i in range(self.num_blocks):
                stride = 2 if stage > 0 and i == 0 else 1
                x = CifarBasicBlock(planes, stride, name=f"layer{stage + 1}_{i}")(x, train)
            self.sow("intermediates", f"layer{stage + 1}", x)
        x = x.mean(axis=(1, 2))
        return nn.Dense(self.num_classes, name="classifier")(x)
