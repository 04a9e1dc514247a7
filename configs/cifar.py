"""The paper's CIFAR settings, one config per dataset and network: ``configs/cifar.py:<name>``
with <name> one of cifar10_resnet32, cifar100_resnet32, cifar10_vgg19, cifar100_vgg19
(ml_collections passes the part after the colon to `get_config`; without one, cifar10_resnet32,
which `configs/cifar10_resnet32.py` also gives). GPU recommended.

Networks: ResNet-32 (double width, option-A shortcuts) and VGG-19 as in the official code.
Data: the python-version archive (cifar-10-python.tar.gz / cifar-100-python.tar.gz) or its
extracted directory under --config.data_dir; if none is found, the official archive is
downloaded into ~/.cache/jackpot_jax/ (MD5-checked). Pre-trained weights: --config.pretrained=DIR
(e.g. converted with tools/convert_torch_weights.py), otherwise 200 epochs of dense
pretraining run first (SGD 0.1, momentum 0.9, wd 5e-4, cosine).

Run:
  python -m jackpot_jax.main --config configs/cifar.py:cifar100_vgg19 --workdir runs/cifar100_vgg19 \
      --config.data_dir=/path/to/cifar100 --config.sparsity=0.9
Fine-tune the jackpot afterwards (Eq. 9):
  python -m jackpot_jax.main --config configs/cifar.py:cifar100_vgg19 --workdir runs/cifar100_vgg19_ft \
      --config.mode=finetune --config.finetune.jackpot=runs/cifar100_vgg19

Search recipe: the official one (batch 256, SGD lr 0.1 with the cosine stepped per epoch,
scores 1.0 / 0.95, top-k masks). The Fashion-MNIST configs use a recipe selected for the LeNets
on Fashion-MNIST (docs/results/fashion_mnist/efficiency/); it is not carried over here.
"""

from jackpot_jax.errors import ConfigError
from jackpot_jax.pipeline.config import cifar_config

DATASETS = ("cifar10", "cifar100")
NETWORKS = {"resnet32": "resnet32", "vgg19": "vgg19_cifar"}  # name part -> registry model
NAMES = tuple(f"{d}_{n}" for n in NETWORKS for d in DATASETS)


def get_config(name: str = "cifar10_resnet32"):
    """The config `name` ('<dataset>_<network>', one of `NAMES`) of the paper's CIFAR setting."""
    if name not in NAMES:
        raise ConfigError(f"CIFAR config {name!r}; expected one of {', '.join(NAMES)}")
    dataset, network = name.split("_", 1)
    return cifar_config(NETWORKS[network], dataset)
