"""LeNet-5 (Caffe, Han et al. 2015) on Fashion-MNIST: the offline default, a few minutes on 2
CPU cores.

Run (pretrains first, then searches a 90% jackpot):
  python -m jackpot_jax.main --config configs/fashion_mnist_lenet5.py --workdir runs/fmnist_lenet5

Pretraining: 4 epochs, batch 128, SGD lr 0.05 (a short dense model that fits the time budget).
Search: the recipe selected on validation in docs/results/fashion_mnist/efficiency/ (batch 64,
SGD lr 0.2 with the cosine stepped every step, momentum 0.9, weight decay 5e-4 on the scores,
scores 1.0 / 0.95 from the magnitude mask, top-k masks), 10 epochs. It was selected on
LeNet-300-100's validation split and carried over to LeNet-5 unchanged; at 90% sparsity and 10
search epochs it was 0.65 points above the official recipe (batch 256, lr 0.1, cosine per
epoch) on 3 fresh seeds. README.md quotes the default run's measured figures.
"""

from jackpot_jax.pipeline.config import base_config


def get_config():
    c = base_config()
    c.model = "lenet5"
    c.dataset = "fashion_mnist"
    c.batch_size = 128
    c.pretrain.epochs = 4
    c.pretrain.lr = 0.05
    c.search.epochs = 10
    c.search.batch_size = 64
    c.search.lr = 0.2
    c.search.schedule = "cosine_step"
    c.sparsity = 0.9
    return c
