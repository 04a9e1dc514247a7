"""LeNet-5 (Caffe, Han et al. 2015) on Fashion-MNIST: the offline default, ~10 min on 2 CPU cores.

Run (pretrains first, then searches a 90% jackpot):
  python -m jackpot_jax.main --config configs/fashion_mnist_lenet5.py --workdir runs/fmnist_lenet5
"""

from jackpot_jax.config_base import base_config


def get_config():
    c = base_config()
    c.model = "lenet5"
    c.dataset = "fashion_mnist"
    c.batch_size = 256
    c.pretrain.epochs = 5         # ~60 s per LeNet-5 epoch on 2 CPU cores
    c.pretrain.lr = 0.05
    c.search.epochs = 4
    c.sparsity = 0.9
    return c
