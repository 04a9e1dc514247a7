"""LeNet-5 (Caffe, Han et al. 2015) on Fashion-MNIST: the offline default, a few minutes on 2
CPU cores.

Run (pretrains first, then searches a 90% jackpot):
  python -m jackpot_jax.main --config configs/fashion_mnist_lenet5.py --workdir runs/fmnist_lenet5

Batch 128 for both phases: twice the score updates per epoch of the official batch 256, so
12 search epochs (the official recipe otherwise: SGD lr 0.1, momentum 0.9, cosine per epoch,
weight decay 5e-4 on the scores, scores 1.0 / 0.95 from the magnitude mask) bring the
jackpot within 0.5 points of the dense model; README.md quotes the measured figures.
"""

from jackpot_jax.config_base import base_config


def get_config():
    c = base_config()
    c.model = "lenet5"
    c.dataset = "fashion_mnist"
    c.batch_size = 128
    c.pretrain.epochs = 4
    c.pretrain.lr = 0.05
    c.search.epochs = 12
    c.sparsity = 0.9
    return c
