"""torchvision-layout ResNets (V1.5: stride on the 3x3 conv of bottlenecks).

Names mirror torchvision with `.` -> `_` for list indices: `conv1`, `bn1`,
`layer{1..4}_{i}/conv{1,2,3}`, `.../bn{1,2,3}`, `.../downsample_0` (conv),
`.../downsample_1` (BN), and `classifier` for torchvision's `fc`.
"""

from collections.abc import Sequence

import flax.linen as nn

from jackpot_jax.models.common import (
    PAD0,
    PAD1,
    PAD3,
    batch_norm,
    conv,
    conv_init,
    max_pool,
    residual_output,
)


def _conv(features, kernel, stride, padding, name):
    return conv(
        features,
        (kernel, kernel),
        (stride, stride),
        padding=padding,
        use_bias=False,
        kernel_init=conv_init,
        name=name,
    )


def _downsample(x, features, stride, train):
    y = _conv(features, 1, stride, PAD0, "downsample_0")(x)
    return batch_norm(train, "downsample_1")(y)


class BasicBlock(nn.Module):
    planes: int
    stride: int = 1
    base_width: int = 64
    expansion = 1

    @nn.compact
    def __call__(self, x, train: bool = False):
        y = _conv(self.planes, 3, self.stride, PAD1, "conv1")(x)
        y = nn.relu(batch_norm(train, "bn1")(y))
        conv2 = _conv(self.planes, 3, 1, PAD1, "conv2")
        y = batch_norm(train, "bn2")(conv2(y))
        if self.stride != 1 or x.shape[-1] != self.planes:
            x = _downsample(x, self.planes, self.stride, train)
        return residual_output(y, x, conv2)


class Bottleneck(nn.Module):
    planes: int
    stride: int = 1
    base_width: int = 64
    expansion = 4

    @nn.compact
    def __call__(self, x, train: bool = False):
        width = self.planes * self.base_width // 64
        out = self.planes * self.expansion
        y = _conv(width, 1, 1, PAD0, "conv1")(x)
        y = nn.relu(batch_norm(train, "bn1")(y))
        y = _conv(width, 3, self.stride, PAD1, "conv2")(y)
        y = nn.relu(batch_norm(train, "bn2")(y))
        conv3 = _conv(out, 1, 1, PAD0, "conv3")
        y = batch_norm(train, "bn3")(conv3(y))
        if self.stride != 1 or x.shape[-1] != out:
            x = _downsample(x, out, self.stride, train)
        return residual_output(y, x, conv3)


class ResNet(nn.Module):
    """ImageNet ResNet: 7x7/2 stem, 3x3/2 max-pool, four stages, global pool, fc."""

    block: type
    layers: Sequence[int]
    num_classes: int = 1000
    base_width: int = 64

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = _conv(64, 7, 2, PAD3, "conv1")(x)
        x = nn.relu(batch_norm(train, "bn1")(x))
        x = max_pool(x, (3, 3), (2, 2), padding=PAD1)
        self.sow("intermediates", "stem", x)
        for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), self.layers)):
            for i in range(blocks):
                stride = 2 if stage > 0 and i == 0 else 1
                x = self.block(planes, stride, self.base_width, name=f"layer{stage + 1}_{i}")(
                    x, train
                )
            self.sow("intermediates", f"layer{stage + 1}", x)
        x = x.mean(axis=(1, 2))
        return nn.Dense(self.num_classes, name="classifier")(x)
