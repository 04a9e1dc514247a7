"""ResNet-32 on CIFAR-10 with the paper's hyperparameters: `configs/cifar.py:cifar10_resnet32`
as a file of its own (the design names it). The settings, data and commands are in
configs/cifar.py.

Run:
  python -m jackpot_jax.main --config configs/cifar10_resnet32.py --workdir runs/cifar10_resnet32 \
      --config.data_dir=/path/to/cifar10 --config.sparsity=0.9
"""

import os
import runpy


def get_config():
    cifar = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "cifar.py"))
    return cifar["get_config"]("cifar10_resnet32")
