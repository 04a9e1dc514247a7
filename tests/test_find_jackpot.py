"""`jackpot_jax.find_jackpot`: the search for any Flax model, on modules defined here (with and
without BatchNorm, with and without a ``train`` keyword), and equal to the CLI's masks for the
same model, data and seed."""

import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pipeline_helpers import (
    ROOT,
    TINY,
    cli,
    cli_overrides,
    needs_fmnist,
    pretrained_dir,
    tiny_config,
)

import jackpot_jax
from jackpot_jax import core
from jackpot_jax import method as jm
from jackpot_jax.data import input_pipeline
from jackpot_jax.errors import ConfigError
from jackpot_jax.pipeline import checkpoint as ckpt_lib
from jackpot_jax.pipeline import loop, modes


class TinyMLP(nn.Module):
    """No BatchNorm, no ``train`` keyword."""

    @nn.compact
    def __call__(self, x):
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(32, name="fc1")(x))
        return nn.Dense(4, name="classifier")(x)


class TinyConvBN(nn.Module):
    """A convolution with BatchNorm, and a ``train`` keyword."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(8, (3, 3), use_bias=False, name="conv")(x)
        x = nn.BatchNorm(use_running_average=not train, name="bn")(x)
        x = nn.relu(x).mean(axis=(1, 2))
        x = nn.relu(nn.Dense(16, name="fc")(x))
        return nn.Dense(4, name="classifier")(x)


def _data(n_batches=4, batch=16, shape=(8, 8, 3), seed=0):
    rng = np.random.default_rng(seed)
    return [
        (
            rng.standard_normal((batch, *shape)).astype(np.float32),
            rng.integers(0, 4, batch).astype(np.int32),
        )
        for _ in range(n_batches)
    ]


def _check_jackpot(jp, params, sparsity):
    budget = jm.keep_counts(params, sparsity)
    kept = {p: int(np.sum(m)) for p, m in jm.flatten_paths(jp.masks).items()}
    assert kept == jm.flatten_paths(budget)
    assert "classifier/kernel" not in kept  # the classifier stays dense by default
    flat_p, flat_m = jm.flatten_paths(params), jm.flatten_paths(jp.masks)
    for path, value in jm.flatten_paths(jp.params).items():
        w = np.asarray(flat_p[path])
        if path in flat_m:
            m = np.asarray(flat_m[path]).astype(bool)
            np.testing.assert_array_equal(value[m], w[m])  # kept: exactly the pre-trained
            assert np.all(value[~m] == 0)
        else:
            np.testing.assert_array_equal(value, w)


def test_a_module_without_batchnorm_or_train_keyword():
    module = TinyMLP()
    data = _data()
    variables = module.init(jax.random.key(0), data[0][0])
    jp = jackpot_jax.find_jackpot(module, variables, data, sparsity=0.75, epochs=2, lr=0.5)
    _check_jackpot(jp, variables["params"], 0.75)
    assert [h["epoch"] for h in jp.history] == [1, 2]
    assert jp.history[-1]["mask_flips"] >= 0 and 0 < jp.history[-1]["overlap_with_init"] <= 1
    # Scores moved (lr 0.5), and the masked variables are ready for apply.
    assert any(
        not np.allclose(s, i)
        for s, i in zip(
            jax.tree.leaves(jp.scores),
            jax.tree.leaves(jm.init_scores_from_mask(jp.masks)),
        )
    )
    logits = module.apply(jp.variables, data[0][0])
    assert logits.shape == (16, 4) and np.all(np.isfinite(logits))


def test_a_module_with_batchnorm_updates_its_statistics():
    module = TinyConvBN()
    data = _data()
    variables = module.init(jax.random.key(1), data[0][0])
    jp = jackpot_jax.find_jackpot(module, variables, lambda epoch: data, sparsity=0.5, epochs=2)
    _check_jackpot(jp, variables["params"], 0.5)
    before = variables["batch_stats"]["bn"]["mean"]
    after = jp.variables["batch_stats"]["bn"]["mean"]
    assert not np.allclose(before, after)  # the search ran the model in train mode
    logits = module.apply(jp.variables, data[0][0], train=False)
    assert logits.shape == (16, 4)


def test_a_custom_loss_and_an_n_m_pattern():
    module = TinyMLP()
    data = _data()
    variables = module.init(jax.random.key(2), data[0][0])

    def loss_fn(logits, labels):  # a regression-style loss: accuracy means nothing here
        return jnp.mean((logits - jax.nn.one_hot(labels, 4)) ** 2)

    jp = jackpot_jax.find_jackpot(module, variables, data, epochs=1, loss_fn=loss_fn, pattern="2:4")
    assert np.isnan(jp.history[0]["accuracy"]) and np.isfinite(jp.history[0]["loss"])
    mask = np.asarray(jp.masks["fc1"]["kernel"])  # (in, out): 2 of every 4 along the input axis
    assert np.all(mask.reshape(-1, 4, mask.shape[-1]).sum(axis=1) == 2)


def test_bad_settings_are_named():
    module = TinyMLP()
    data = _data(n_batches=1)
    variables = module.init(jax.random.key(0), data[0][0])
    with pytest.raises(TypeError, match="unexpected keyword argument 'learning_rate'"):
        jackpot_jax.find_jackpot(module, variables, data, learning_rate=0.1)
    with pytest.raises(ConfigError, match="criterion 'grasp' reads data"):
        jackpot_jax.find_jackpot(module, variables, data, init="grasp")
    with pytest.raises(ConfigError, match="init='nope' is not known; expected one of"):
        jackpot_jax.find_jackpot(module, variables, data, init="nope")
    with pytest.raises(ConfigError, match="no prunable parameter"):
        jackpot_jax.find_jackpot(module, variables, data, include=["nothing_matches"])


def test_equals_the_cli_for_the_same_model_data_and_seed(tmp_path):
    # Pruned scores close to the kept ones and a large lr: masks flip within 2 tiny epochs.
    search = {"search.epochs": 2, "search.lr": 2.0, "search.score_pruned": 0.999}
    config = tiny_config("fashion_mnist_lenet5.py", **search)
    dense = pretrained_dir(tmp_path, config)
    keys = [*TINY, *search, "dataset"]
    cli(
        tmp_path / "run",
        os.path.join("configs", "fashion_mnist_lenet5.py"),
        "--config.mode=search",
        f"--config.pretrained={dense}",
        *cli_overrides(config, keys),
    )
    with np.load(tmp_path / "run" / "jackpot.npz") as z:
        cli_masks = {k[len("masks/") :]: z[k] for k in z.files if k.startswith("masks/")}

    ds = modes.load_data(config)
    module, variables = ckpt_lib.load_model(dense, ds.image_shape)
    put = core.batch_to_mesh(core.make_mesh(), ds)  # the CLI's normalisation, on device
    batch = loop.mode_batch_size(config, config.search)

    def batches(epoch):
        for b in input_pipeline.train_batches(
            ds, batch, seed=config.seed, epochs=[epoch], normalize=False
        ):
            yield tuple(np.asarray(a) for a in put(b))

    s = config.search
    settings = {
        k: s[k]
        for k in (
            "lr",
            "momentum",
            "nesterov",
            "weight_decay",
            "schedule",
            "distribution",
            "init",
            "score_kept",
            "score_pruned",
            "use_abs",
            "mask_update",
        )
    }
    jp = jackpot_jax.find_jackpot(
        module,
        variables,
        batches,
        sparsity=config.sparsity,
        epochs=s.epochs,
        label_smoothing=config.label_smoothing,
        options=core.compute_options(config),
        seed=config.seed,
        **settings,
    )
    ours = {p: np.asarray(m) for p, m in jm.flatten_paths(jp.masks).items()}
    assert sorted(ours) == sorted(cli_masks)
    for path in ours:
        np.testing.assert_array_equal(ours[path], cli_masks[path], err_msg=path)
    assert sum(h["mask_flips"] for h in jp.history) > 0  # the masks moved: a real search


@needs_fmnist
def test_the_example_on_your_own_model_runs():
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "own_model.py"), "--subset", "512"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("dense: ") and lines[-1].startswith("jackpot (90%")
    assert [line.split(":")[0] for line in lines[1:-1]] == [f"search epoch {e}" for e in (1, 2, 3)]


def test_defaults_are_the_command_lines():
    """Every search setting of `find_jackpot` that the CLI's config also has defaults to the
    CLI's value (`pipeline.config.base_config().search`)."""
    import inspect

    from jackpot_jax.pipeline import config as config_lib

    search = config_lib.base_config().search
    params = inspect.signature(jackpot_jax.find_jackpot).parameters
    shared = [k for k in search if k in params and k != "pattern"]
    assert len(shared) >= 17, shared
    for key in shared:
        assert params[key].default == search[key], key
    # pattern '' in the config means unstructured: None here
    assert params["pattern"].default is None and search["pattern"] == ""


def test_snip_warm_up_on_the_first_batches():
    """``init='snip'`` with 0 epochs returns the SNIP mask of the first ``snip_batches``
    batches under the budget, computed here from the method's functions."""
    module = TinyMLP()
    data = _data(n_batches=3)
    variables = module.init(jax.random.key(0), data[0][0])
    jp = jackpot_jax.find_jackpot(
        module, variables, data, init="snip", snip_batches=2, epochs=0, sparsity=0.5
    )
    params = variables["params"]

    def logits_fn(p, x):
        return module.apply({"params": p}, x)

    importance = jm.snip_scores(jm.temperature_loss(logits_fn, 1.0), params, data[:2])
    want = jm.criterion_mask(importance, jm.keep_counts(params, 0.5))
    for path, m in jm.flatten_paths(want).items():
        np.testing.assert_array_equal(jm.flatten_paths(jp.masks)[path], m, err_msg=path)
    assert jp.history == []
