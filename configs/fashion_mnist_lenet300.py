"""LeNet-300-100 (Han et al. 2015) on Fashion-MNIST, offline.

Search recipe: the one selected on validation in docs/results/fashion_mnist/efficiency/
(batch 64, SGD lr 0.2 with the cosine stepped every step, scores 1.0 / 0.95, top-k masks):
at 90% sparsity and 10 search epochs it was 0.76 points above the official recipe (batch 256,
lr 0.1, cosine per epoch) on 3 fresh seeds. Pretraining keeps batch 256.

Run:
  python -m jackpot_jax.main --config configs/fashion_mnist_lenet300.py --workdir runs/fmnist_lenet300
"""

from jackpot_jax.pipeline.config import base_config


def get_config():
    c = base_config()
    c.model = "lenet300_100"
    c.dataset = "fashion_mnist"
    c.batch_size = 256
    c.pretrain.epochs = 5
    c.pretrain.lr = 0.05
    c.search.epochs = 4
    c.search.batch_size = 64
    c.search.lr = 0.2
    c.search.schedule = "cosine_step"
    c.sparsity = 0.9
    return c
