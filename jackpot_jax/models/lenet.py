"""LeNet-300-100 and Caffe's LeNet-5 as used by Han et al. (2015); no BatchNorm."""

import flax.linen as nn

from jackpot_jax.models.common import conv, flatten_nchw, max_pool


class LeNet300100(nn.Module):
    """MLP 784-300-100-classes with ReLU on flattened 28x28x1 inputs."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(300, name="fc1")(x))
        x = nn.relu(nn.Dense(100, name="fc2")(x))
        return nn.Dense(self.num_classes, name="classifier")(x)


class LeNet5(nn.Module):
    """conv 20@5x5 -> pool 2 -> conv 50@5x5 -> pool 2 -> fc 500 -> ReLU -> classifier.

    As in Caffe's LeNet there is no non-linearity after the convolutions.
    """

    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = conv(20, (5, 5), padding="VALID", name="conv1")(x)
        x = max_pool(x, (2, 2), (2, 2))
        x = conv(50, (5, 5), padding="VALID", name="conv2")(x)
        x = max_pool(x, (2, 2), (2, 2))
        self.sow("intermediates", "features", x)
        x = flatten_nchw(x)
        x = nn.relu(nn.Dense(500, name="fc1")(x))
        return nn.Dense(self.num_classes, name="classifier")(x)
