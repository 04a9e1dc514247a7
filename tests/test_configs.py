"""Config files load as the command line loads them (ml_collections' `config_flags`, with the
``path:arg`` convention), and the CIFAR builder gives the paper's settings for every name."""

import glob
import os
import runpy

import pytest
from absl import flags
from ml_collections import config_flags

from jackpot_jax.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")


def _load(spec: str):
    """The config `--config=spec` gives, as `python -m jackpot_jax.main` parses it."""
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True)
    values(["prog", f"--config={spec}"])
    return values.config


@pytest.mark.parametrize(
    "path", sorted(glob.glob(os.path.join(CONFIGS, "*.py"))), ids=os.path.basename
)
def test_every_config_file_loads(path):
    c = _load(path)
    assert ("study" in c and "base" in c) or ("model" in c and "dataset" in c)


# The paper's CIFAR setting (Sec. 4 and the official code), written out by hand.
CIFAR = {
    "cifar10_resnet32": ("resnet32", "cifar10"),
    "cifar100_resnet32": ("resnet32", "cifar100"),
    "cifar10_vgg19": ("vgg19_cifar", "cifar10"),
    "cifar100_vgg19": ("vgg19_cifar", "cifar100"),
}


@pytest.mark.parametrize("name", sorted(CIFAR))
def test_the_cifar_builder_gives_the_papers_setting(name):
    c = _load(os.path.join(CONFIGS, f"cifar.py:{name}"))
    assert (c.model, c.dataset) == CIFAR[name]
    assert c.batch_size == 256 and c.sparsity == 0.9
    assert c.pretrain.epochs == 200 and c.search.epochs == 30
    assert c.search.weight_decay == 5e-4
    # Only model and dataset tell two CIFAR configs apart.
    other = _load(os.path.join(CONFIGS, "cifar.py:cifar10_resnet32")).to_dict()
    mine = c.to_dict()
    assert {k for k in mine if mine[k] != other[k]} <= {"model", "dataset"}


def test_cifar10_resnet32_is_a_file_of_its_own():
    by_file = _load(os.path.join(CONFIGS, "cifar10_resnet32.py"))
    by_name = _load(os.path.join(CONFIGS, "cifar.py:cifar10_resnet32"))
    assert by_file.to_dict() == by_name.to_dict()
    assert _load(os.path.join(CONFIGS, "cifar.py")).to_dict() == by_name.to_dict()


def test_an_unknown_cifar_name_is_one_config_error():
    builder = runpy.run_path(os.path.join(CONFIGS, "cifar.py"))["get_config"]
    with pytest.raises(ConfigError, match="'cifar10_resnet34'.*cifar100_vgg19"):
        builder("cifar10_resnet34")
    # On the command line absl reports it as a bad --config value, with the same words.
    with pytest.raises(flags.IllegalFlagValueError, match="'cifar10_resnet34'.*cifar100_vgg19"):
        _load(os.path.join(CONFIGS, "cifar.py:cifar10_resnet34"))
