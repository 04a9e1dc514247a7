"""VGG networks: the CIFAR VGG-19 of the official code and torchvision's VGG-bn.

Conv/BN modules are named `features_{i}` with i the index the layer has in torch's
`nn.Sequential` (ReLU and max-pool entries occupy indices too), so names convert 1:1.
"""

from collections.abc import Sequence

import flax.linen as nn

from jackpot_jax.models.common import (
    PAD1,
    adaptive_avg_pool,
    batch_norm,
    conv,
    conv_init,
    flatten_nchw,
    max_pool,
)

CFGS = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        "M",
    ),
    "vgg19": (
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        512,
        "M",
    ),
}


def _features(x, cfg, train, conv_bias, module):
    """conv3x3 + BN + ReLU per number, 2x2 max-pool per 'M'; sows `pool{k}` outputs."""
    index, pools = 0, 0
    for v in cfg:
        if v == "M":
            x = max_pool(x, (2, 2), (2, 2))
            pools += 1
            module.sow("intermediates", f"pool{pools}", x)
            index += 1
        else:
            x = conv(
                v,
                (3, 3),
                padding=PAD1,
                use_bias=conv_bias,
                kernel_init=conv_init,
                name=f"features_{index}",
            )(x)
            x = nn.relu(batch_norm(train, f"features_{index + 1}")(x))
            index += 3
    return x


class VGGCifar(nn.Module):
    """VGG-19 for 32x32 inputs: five pools down to 1x1, one linear classifier, no dropout."""

    cfg: Sequence[int | str] = CFGS["vgg19"]
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = _features(x, self.cfg, train, conv_bias=False, module=self)
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(self.num_classes, name="classifier")(x)


class VGG(nn.Module):
    """torchvision VGG-bn: adaptive 7x7 average pool, fc1/fc2 (4096, ReLU, dropout)."""

    cfg: Sequence[int | str]
    num_classes: int = 1000
    dropout_rate: float = 0.5

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = _features(x, self.cfg, train, conv_bias=True, module=self)
        x = flatten_nchw(adaptive_avg_pool(x, (7, 7)))
        dense_init = nn.initializers.normal(0.01)
        for name in ("fc1", "fc2"):
            x = nn.relu(nn.Dense(4096, kernel_init=dense_init, name=name)(x))
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes, kernel_init=dense_init, name="classifier")(x)
