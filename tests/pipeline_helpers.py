"""What the pipeline tests share: the repository root, the CLI, tiny configs on synthetic
data and a pre-trained checkpoint to search in."""

import importlib.util
import os
import subprocess
import sys

import pytest

from jackpot_jax.data import datasets as data_lib
from jackpot_jax.pipeline import checkpoint as ckpt_lib
from jackpot_jax.pipeline import modes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# On a subprocess's PYTHONPATH with JACKPOT_JAX_KILL_AT='event:n': it SIGKILLs itself at
# the n-th crash point (tests/crashpoints/crash_hooks.py).
CRASHPOINTS = os.path.join(ROOT, "tests", "crashpoints")


def _fashion_mnist_available():
    try:
        data_lib.load_dataset("fashion_mnist", download=False, val_examples=10)
        return True
    except FileNotFoundError:
        return False


# Tests on the real Fashion-MNIST files: skipped without them, except in CI (which installs them).
needs_fmnist = pytest.mark.skipif(
    not _fashion_mnist_available() and not os.environ.get("CI"),
    reason="Fashion-MNIST IDX files not found (apt-get install dataset-fashion-mnist)",
)


def cli(workdir, config, *overrides, check=True, env=None, **kw):
    """Runs `python -m jackpot_jax.main` (this tree's copy) and returns the CompletedProcess."""
    cmd = [
        sys.executable,
        "-m",
        "jackpot_jax.main",
        "--config",
        config,
        "--workdir",
        str(workdir),
        *overrides,
    ]
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=check, env=env, **kw)


def python_script(source: str, env_update=None, **kw):
    """Runs ``python -c source`` on this tree (XLA_FLAGS unset, so the script sets its own,
    e.g. a forced device count; ``env_update`` sets more variables) and returns the
    CompletedProcess."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(env_update or {})
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-c", source], cwd=ROOT, capture_output=True, text=True, env=env, **kw
    )


def load_config(path):
    """`get_config()` of a config file; `configs/cifar.py:cifar10_vgg19` passes the name after
    the colon (ml_collections' convention)."""
    path, _, arg = path.partition(":")
    spec = importlib.util.spec_from_file_location("cfg", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg) if arg else mod.get_config()


TINY = {
    "train_subset": 256,
    "test_subset": 32,
    "val_examples": 16,
    "batch_size": 32,
    "eval_batch_size": 16,
    "pretrain.epochs": 1,
    # a config's own per-mode batches (the LeNet-300-100 search's 64) give way to 32
    "pretrain.batch_size": 0,
    "search.batch_size": 0,
    "finetune.batch_size": 0,
}


def tiny_config(base="fashion_mnist_lenet300.py", **over):
    """A config of `configs/<base>` on its synthetic dataset, 8 steps an epoch."""
    c = load_config(os.path.join(ROOT, "configs", base))
    c.dataset = "synthetic:" + c.dataset
    c.update_from_flattened_dict({**TINY, **over})
    return c


def cli_overrides(config, keys):
    """`--config.<key>=<value>` for the dotted ``keys`` of ``config``."""
    out = []
    for k in keys:
        node = config
        for part in k.split("."):
            node = node[part]
        out.append(f"--config.{k}={node}")
    return out


def pretrained_dir(tmp_path, config, name="init_dense"):
    """A dense checkpoint of `config.model` (random init, seed 123) to search in."""
    ds = modes.load_data(config)
    module, variables, opts = modes.init_model(config, ds, seed=123)
    return ckpt_lib.save_variables(
        os.path.join(tmp_path, name), variables, arch=config.model, model_options=opts
    )
