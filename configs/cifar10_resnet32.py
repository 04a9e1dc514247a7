"""resnet32 on CIFAR10 with the paper's hyperparameters (GPU recommended).

Data: the python-version archive (cifar-10-python.tar.gz / cifar-100-python.tar.gz) or its
extracted directory under --config.data_dir; if none is found, the official archive is
downloaded into ~/.cache/jackpot_jax/ (MD5-checked). Pre-trained weights: --config.pretrained=DIR
(e.g. converted with tools/convert_torch_weights.py), otherwise 200 epochs of dense
pretraining run first (SGD 0.1, momentum 0.9, wd 5e-4, cosine).

Run:
  python -m jackpot_jax.main --config configs/cifar10_resnet32.py --workdir runs/cifar10_resnet32 \
      --config.data_dir=/path/to/cifar10 --config.sparsity=0.9
Fine-tune the jackpot afterwards (Eq. 9):
  python -m jackpot_jax.main --config configs/cifar10_resnet32.py --workdir runs/cifar10_resnet32_ft \
      --config.mode=finetune --config.finetune.jackpot=runs/cifar10_resnet32

Search recipe: the official one (batch 256, SGD lr 0.1 with the cosine stepped per epoch,
scores 1.0 / 0.95, top-k masks). The Fashion-MNIST configs use a recipe selected for the LeNets
on Fashion-MNIST (docs/results/fashion_mnist/efficiency/); it is not carried over here.
"""

from jackpot_jax.pipeline.config import cifar_config


def get_config():
    return cifar_config("resnet32", "cifar10")
