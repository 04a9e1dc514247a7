"""End-to-end tests of the pipeline: CLI on real Fashion-MNIST, two devices against one, every
shipped config on tiny synthetic data, and the options (warm-up criteria, kaiming scores,
layer budgets, eval of a dense checkpoint) checked against independent computations."""

import functools
import glob
import json
import os
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pipeline_helpers import (
    ROOT,
    cli,
    load_config,
    needs_fmnist,
    pretrained_dir,
    python_script,
    tiny_config,
)

from jackpot_jax import method as jm
from jackpot_jax import models
from jackpot_jax.data import input_pipeline, reading
from jackpot_jax.pipeline import checkpoint as ckpt_lib
from jackpot_jax.pipeline import export, modes, train

# Pipeline configs of image models; study and sweep configs (configs/study_*.py,
# configs/sweep_*.py) are exercised by tests/test_study.py and tests/test_sweep.py, the
# language-model configs (configs/lm_*.py) by tests/test_lm_pipeline.py. configs/cifar.py
# builds four configs by name.
CONFIGS = sorted(
    c
    for c in glob.glob(os.path.join(ROOT, "configs", "*.py"))
    if not os.path.basename(c).startswith(("study_", "sweep_", "lm_"))
    and os.path.basename(c) != "cifar.py"
) + [
    os.path.join(ROOT, "configs", f"cifar.py:{n}")
    for n in ("cifar100_resnet32", "cifar10_vgg19", "cifar100_vgg19")
]


@needs_fmnist
def test_cli_pretrain_search_eval_on_real_fashion_mnist(tmp_path):
    cfg = os.path.join(ROOT, "configs", "fashion_mnist_lenet5.py")
    small = [
        "--config.train_subset=4096",
        "--config.val_examples=1000",
        "--config.test_subset=2000",
        "--config.pretrain.epochs=2",
    ]
    cli(tmp_path / "dense", cfg, "--config.mode=pretrain", *small)
    dense_dir = tmp_path / "dense" / "model"
    out = cli(
        tmp_path / "search",
        cfg,
        "--config.mode=search",
        f"--config.pretrained={dense_dir}",
        "--config.search.epochs=2",
        "--config.search.distribution=uniform",
        *small,
    )
    assert "test_accuracy" in out.stdout  # the closing table
    # Its first three lines say which XLA flags the launcher added (the recommended ones, as
    # jaxlib allows), and which convolutions and top-k masks the steps run.
    first = out.stdout.splitlines()[:3]
    assert first[0].startswith("XLA flags: "), first
    assert first[1].startswith("convolutions: ") and first[2].startswith("masks: "), first
    summary = json.load(open(tmp_path / "search" / "summary.json"))
    for key in [
        "mode",
        "model",
        "dataset",
        "sparsity_target",
        "sparsity_achieved",
        "pretrained_checkpoint",
        "per_layer_sparsity",
        "dense_test_accuracy",
        "init_mask_test_accuracy",
        "test_accuracy",
        "overlap_with_init",
        "epochs",
        "seed",
        "wall_seconds",
    ]:
        assert summary[key] is not None, key
    assert summary["mode"] == "search" and summary["sparsity_target"] == 0.9
    # Uniform budget: every layer prunes floor(0.9 n) of its n weights.
    dense = ckpt_lib.load_variables(dense_dir)
    flat_dense = jm.flatten_paths(dense["params"])
    with np.load(tmp_path / "search" / "jackpot.npz") as z:
        masks = {k[len("masks/") :]: z[k] for k in z.files if k.startswith("masks/")}
        exported = {k[len("params/") :]: z[k] for k in z.files if k.startswith("params/")}
    assert sorted(masks) == ["conv1/kernel", "conv2/kernel", "fc1/kernel"]
    assert sorted(exported) == sorted(flat_dense)
    for path, m in masks.items():
        n = m.size
        assert n - m.sum() == int(np.floor(0.9 * n + 1e-9)), path
        assert summary["per_layer_sparsity"][path] == pytest.approx(0.9, abs=1.0 / n)
        # The jackpot's weights are the pre-trained ones, bit for bit, on kept entries.
        np.testing.assert_array_equal(exported[path][m == 1], flat_dense[path][m == 1])
        assert np.all(exported[path][m == 0] == 0)
    for path in set(exported) - set(masks):  # biases and the classifier: untouched
        np.testing.assert_array_equal(exported[path], flat_dense[path])
    total = sum(m.size for m in masks.values())
    assert summary["sparsity_achieved"] == pytest.approx(0.9, abs=len(masks) / total)
    assert summary["pretrained_checkpoint"] == str(dense_dir)
    assert summary["test_accuracy"] > 0.5  # chance is 0.1
    lines = [json.loads(x) for x in open(tmp_path / "search" / "metrics.jsonl")]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert all(0 < r["overlap_with_init"] <= 1 and r["mask_flips"] >= 0 for r in lines)
    # eval of the exported jackpot reproduces the search's test accuracy.
    cli(
        tmp_path / "eval",
        cfg,
        "--config.mode=eval",
        f"--config.checkpoint={tmp_path / 'search'}",
        *small,
    )
    ev = json.load(open(tmp_path / "eval" / "summary.json"))
    assert ev["test_accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-6)
    assert ev["sparsity_achieved"] == pytest.approx(summary["sparsity_achieved"])


TWO_DEVICES = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    import json, jax, jax.numpy as jnp, numpy as np
    from jackpot_jax import core
    from jackpot_jax import models
    from jackpot_jax import method as jm
    from jackpot_jax.pipeline.config import base_config
    assert jax.device_count() == 2, jax.devices()
    # The CIFAR ResNet with one block a stage (BatchNorm included): a third of ResNet-20's compile.
    module = models.CifarResNet(num_blocks=1, num_classes=10, width=1)
    v = models.init_variables(module, jax.random.key(0), (1, 8, 8, 3))
    params, bs = v["params"], v["batch_stats"]
    budget = jm.keep_counts(params, 0.9)
    scores = jm.init_scores_from_mask(jm.criterion_mask(jm.magnitude_scores(params), budget))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 8, 8, 3)).astype(np.float32)
    y = rng.integers(0, 10, 8).astype(np.int32)
    cfg = base_config().search
    out = {}
    for n in (1, 2):
        mesh = core.make_mesh(n)
        tx, _ = core.make_optimizer(cfg, 2, 1)
        state = core.SearchState.create(apply_fn=module.apply, params=scores, tx=tx,
                                        frozen=params, batch_stats=bs)
        state = jax.tree.map(np.array, state)   # the step donates its state: pass copies
        step = core.make_search_step(module.apply, tx, budget)
        state = core.replicate(mesh, state)
        new, m = step(state, *core.shard_batch(mesh, (x, y)))
        out[n] = (float(m["loss"]), jax.device_get(new.params), jax.device_get(new.batch_stats))
    assert abs(out[1][0] - out[2][0]) < 1e-5, (out[1][0], out[2][0])
    for a, b in zip(jax.tree.leaves(out[1][1:]), jax.tree.leaves(out[2][1:])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(jax.tree.leaves(out[2][1])[0] - jax.tree.leaves(scores)[0]).max()) > 0
    try:
        core.check_batch(7, core.make_mesh(2))
    except ValueError as e:
        assert "batch_size=7" in str(e) and "2 devices" in str(e), e
    else:
        raise AssertionError("an odd batch on 2 devices was accepted")
    print("TWO_DEVICES_OK", out[1][0], out[2][0])
""")


def test_two_devices_match_one_device():
    out = python_script(TWO_DEVICES)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "TWO_DEVICES_OK" in out.stdout


# Each config runs its own network family at a tiny size (same layer types, options and
# names; one block a stage, few channels): this test checks that a config's settings wire
# through the pipeline for one search step; tests/test_models.py and tests/test_convert.py
# check the full-size networks. Compiling full ResNet-50 and VGG-19 steps (and their 53 and 16
# per-layer masks) took most of the suite's time.
TINY_NETWORKS = {
    "resnet50": functools.partial(models.ResNet, block=models.Bottleneck, layers=(1, 1, 1, 1)),
    "resnet32": functools.partial(models.CifarResNet, num_blocks=1),
    "vgg19_cifar": functools.partial(
        models.VGGCifar, cfg=(8, "M", 8, "M", 16, "M", 16, "M", 16, "M")
    ),
}


@pytest.mark.parametrize("config_path", CONFIGS, ids=[os.path.basename(c) for c in CONFIGS])
def test_every_config_runs_one_step_on_synthetic_data(tmp_path, config_path, monkeypatch):
    c = load_config(config_path)
    file, _, name = config_path.partition(":")
    assert (name or os.path.basename(file)[:-3]) in _load_doc(file)  # run command in docstring
    if c.model in TINY_NETWORKS:
        _, defaults, shape = models._REGISTRY[c.model]
        monkeypatch.setitem(models._REGISTRY, c.model, (TINY_NETWORKS[c.model], defaults, shape))
    if c.model == "resnet32":
        c.model_options.width = 1
    c.dataset = "synthetic:" + c.dataset
    c.train_subset, c.test_subset, c.val_examples = 2, 2, 2
    c.batch_size = c.eval_batch_size = 2
    for mode in ("pretrain", "search", "finetune"):
        c[mode].batch_size = 0  # a config's own per-mode batch: the tiny one here
    c.search.epochs = 1
    if c.dataset.startswith("synthetic:imagenet"):
        c.image_size = 32  # the same graph as 224 (global pooling)
    c.pretrained = pretrained_dir(tmp_path, c)
    summary = train.run(c, str(tmp_path / "run"))
    assert summary["epochs"] == 1 and summary["model"] == c.model
    assert summary["sparsity_achieved"] == pytest.approx(c.sparsity, abs=1e-3)
    assert np.isfinite(json.loads(open(tmp_path / "run" / "metrics.jsonl").readline())["loss"])


def _load_doc(path):
    import ast

    return ast.get_docstring(ast.parse(open(path).read()))


def test_finetune_keeps_the_mask_and_changes_weights(tmp_path):
    config = tiny_config(**{"search.epochs": 1, "finetune.epochs": 1, "mode": "finetune"})
    config.pretrained = pretrained_dir(tmp_path, config)
    summary = train.run(config, str(tmp_path / "ft"))
    assert summary["mode"] == "finetune"
    meta, masks, params, _ = export.load_jackpot(str(tmp_path / "ft"))
    _, search_masks, _, _ = export.load_jackpot(str(tmp_path / "ft" / "search"))
    assert float(jm.overlap(masks, search_masks)) == 1.0
    for path, m in jm.flatten_paths(masks).items():
        w = jm.flatten_paths(params)[path]
        assert np.all(w[np.asarray(m) == 0] == 0)
    dense = ckpt_lib.load_variables(config.pretrained)["params"]
    assert not np.array_equal(
        jm.flatten_paths(params)["fc1/kernel"],
        jm.flatten_paths(dense)["fc1/kernel"] * jm.flatten_paths(masks)["fc1/kernel"],
    )


def _run_zero_epochs(tmp_path, name, **over):
    """A search of 0 epochs: its jackpot masks are its initial (warm-up) masks."""
    config = tiny_config(**{"search.epochs": 0, "sparsity": 0.8, **over})
    config.pretrained = pretrained_dir(tmp_path, config)
    summary = train.run(config, str(tmp_path / name))
    _, masks, params, _ = export.load_jackpot(str(tmp_path / name))
    return config, summary, jm.flatten_paths(masks)


def _topk_numpy(importance: dict, counts: dict) -> dict:
    """Per-layer top-k by a stable numpy sort (ties: lower flat index), the reference."""
    out = {}
    for path, x in importance.items():
        order = np.argsort(-np.asarray(x, np.float64).ravel(), kind="stable")
        m = np.zeros(x.size, np.float32)
        m[order[: counts[path]]] = 1
        out[path] = m.reshape(x.shape)
    return out


def _magnitude_counts(dense: dict, sparsity: float) -> dict:
    """The official budget by hand: one global |w| threshold over the prunable kernels."""
    paths = sorted(p for p in dense if p.endswith("kernel") and not p.startswith("classifier"))
    mags = np.concatenate([np.abs(dense[p]).ravel() for p in paths])
    keep = mags.size - int(np.floor(sparsity * mags.size + 1e-9))
    kept = np.zeros(mags.size, bool)
    kept[np.argsort(-mags, kind="stable")[:keep]] = True
    sizes = np.cumsum([0] + [dense[p].size for p in paths])
    return {p: int(kept[a:b].sum()) for p, a, b in zip(paths, sizes[:-1], sizes[1:])}


def test_warm_up_masks_are_the_criteria_masks(tmp_path):
    """Each init criterion gives its own mask (0-epoch searches): magnitude and SNIP equal
    numpy references on the same weights and batch; GraSP and random differ from both."""
    config, _, magnitude = _run_zero_epochs(tmp_path / "m", "run")
    dense = {
        p: np.asarray(v)
        for p, v in jm.flatten_paths(ckpt_lib.load_variables(config.pretrained)["params"]).items()
    }
    counts = _magnitude_counts(dense, 0.8)
    ref = _topk_numpy({p: np.abs(dense[p]) for p in counts}, counts)
    assert magnitude.keys() == ref.keys()
    for p in ref:
        np.testing.assert_array_equal(magnitude[p], ref[p], err_msg=p)
    # SNIP: |w * dL/dw| of the mean cross-entropy on the first training batch it draws.
    _, _, snip = _run_zero_epochs(tmp_path / "s", "run", **{"search.init": "snip"})
    ds = modes.load_data(config)
    x, y = next(
        input_pipeline.iterate_batches(
            ds, "train", config.batch_size, train=True, seed=config.seed, epoch=10_000
        )
    )
    module = models.get_model(config.model, num_classes=10)
    params = ckpt_lib.load_variables(config.pretrained)["params"]

    def loss(p):
        logp = jax.nn.log_softmax(module.apply({"params": p}, x, train=True))
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    g = jm.flatten_paths(jax.grad(loss)(params))
    ref_snip = _topk_numpy({p: np.abs(dense[p] * np.asarray(g[p])) for p in counts}, counts)
    for p in ref_snip:
        agree = float(np.mean(snip[p] == ref_snip[p]))
        assert agree > 0.999, (p, agree)  # float summation order may swap a tied pair
    _, _, grasp = _run_zero_epochs(
        tmp_path / "g", "run", **{"search.init": "grasp", "criteria.grasp_per_class": 2}
    )
    _, _, rnd = _run_zero_epochs(tmp_path / "r", "run", **{"search.init": "random"})
    for name, m in (("snip", snip), ("grasp", grasp), ("random", rnd)):
        for p in counts:  # every criterion keeps the same counts ...
            assert int(m[p].sum()) == counts[p], (name, p)
        # ... but its own weights: far from the magnitude mask (identical would be 1.0).
        assert float(jm.overlap(m, magnitude)) < 0.9, name
    # A random mask meets the magnitude mask as often as chance: two independent masks that
    # keep a fraction q of n weights differ on 2 q (1 - q) n of them in expectation.
    n = sum(m.size for m in magnitude.values())
    chance = 1 - sum(2 * c * (1 - c / magnitude[p].size) for p, c in counts.items()) / n
    assert abs(float(jm.overlap(rnd, magnitude)) - chance) < 0.01
    assert float(jm.overlap(grasp, snip)) < 0.9


def test_kaiming_scores_start_the_search_without_a_warm_up_mask(tmp_path):
    config, summary, masks = _run_zero_epochs(tmp_path, "run", **{"search.init": "kaiming"})
    assert summary["init"] == "kaiming"
    scores = ckpt_lib.load_scores(tmp_path / "run" / "model")
    for path, fan_in in (("fc1/kernel", 784), ("fc2/kernel", 300)):
        s = scores[path]
        bound = 1.0 / np.sqrt(fan_in)  # edge-popup: kaiming uniform, a=sqrt(5)
        assert np.abs(s).max() <= bound and np.abs(s).max() > 0.99 * bound
        assert (
            abs(float(np.mean(s))) < 0.02 * bound
            and abs(np.std(s) - bound / np.sqrt(3)) < 0.02 * bound
        )  # uniform on [-b, b]: std b / sqrt(3)
        # The mask keeps the largest |scores| (not the weights' magnitudes).
        counts = int(masks[path].sum())
        np.testing.assert_array_equal(
            masks[path], _topk_numpy({path: np.abs(s)}, {path: counts})[path]
        )


@pytest.mark.parametrize("distribution", ["global", "erk"])
def test_global_and_erk_budgets_in_the_pipeline(tmp_path, distribution):
    config = tiny_config(
        **{"search.epochs": 1, "search.distribution": distribution, "search.score_pruned": 0.999}
    )
    config.pretrained = pretrained_dir(tmp_path, config)
    summary = train.run(config, str(tmp_path / "run"))
    _, masks, _, _ = export.load_jackpot(str(tmp_path / "run"))
    kept = {p: int(np.sum(m)) for p, m in jm.flatten_paths(masks).items()}
    sizes = {"fc1/kernel": 784 * 300, "fc2/kernel": 300 * 100}
    assert kept.keys() == sizes.keys()
    total = sum(sizes.values())
    target = total - int(np.floor(0.9 * total))
    if distribution == "erk":
        assert abs(sum(kept.values()) - target) <= len(sizes)  # rounded per layer
        # RigL's Erdos-Renyi: density ~ (fan_in + fan_out) / (fan_in * fan_out), by hand.
        raw = {
            p: sum(d) / np.prod(d)
            for p, d in (("fc1/kernel", (784, 300)), ("fc2/kernel", (300, 100)))
        }
        eps = 0.1 * total / sum(raw[p] * sizes[p] for p in sizes)
        for p in sizes:
            assert kept[p] == round(eps * raw[p] * sizes[p]), p
    else:  # one top-k over both layers: the per-layer split is free to move
        assert sum(kept.values()) == target and summary["distribution"] == "global"
        assert summary["sparsity_achieved"] == pytest.approx(0.9, abs=1 / total)


def test_eval_of_a_dense_checkpoint_directory(tmp_path):
    config = tiny_config()
    pre = pretrained_dir(tmp_path, config)
    summary = train.run(tiny_config(mode="eval", checkpoint=pre), str(tmp_path / "eval"))
    assert summary["checkpoint_kind"] == "dense" and "sparsity_achieved" not in summary
    module, variables = ckpt_lib.load_model(pre)
    ds = modes.load_data(config)
    x = reading.normalize(ds, ds.test.images).astype(np.float32)
    pred = np.argmax(np.asarray(module.apply(variables, x, train=False)), -1)
    assert summary["test_accuracy"] == pytest.approx(np.mean(pred == ds.test.labels), abs=1e-7)


def test_bad_input_errors(tmp_path):
    config = tiny_config(sparsity=1.0)
    with pytest.raises(ValueError, match="sparsity=1.0"):
        train.run(config, str(tmp_path / "a"))
    config = tiny_config(mode="train")
    with pytest.raises(ValueError, match="mode='train'"):
        train.run(config, str(tmp_path / "b"))
    config = tiny_config(pretrained=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        train.run(config, str(tmp_path / "c"))
    config = tiny_config(**{"search.init": "oracle"})
    with pytest.raises(ValueError, match="search.init='oracle'"):
        train.run(config, str(tmp_path / "d"))
    config = tiny_config(dataset="cifar10", data_dir=str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="empty"):
        train.run(config, str(tmp_path / "e"))
