"""LeNet-300-100 (Han et al. 2015) on Fashion-MNIST, offline.

Run:
  python -m jackpot_jax.main --config configs/fashion_mnist_lenet300.py --workdir runs/fmnist_lenet300
"""

from jackpot_jax.config_base import base_config


def get_config():
    c = base_config()
    c.model = "lenet300_100"
    c.dataset = "fashion_mnist"
    c.batch_size = 256
    c.pretrain.epochs = 5
    c.pretrain.lr = 0.05
    c.search.epochs = 4
    c.sparsity = 0.9
    return c
