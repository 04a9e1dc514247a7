"""End-to-end tests of the pipeline: CLI on real Fashion-MNIST, resume after a kill, two
devices against one, and every shipped config on tiny synthetic data."""

import glob
import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from jackpot_jax import checkpoint as ckpt_lib
from jackpot_jax import data as data_lib
from jackpot_jax import export, modes, train
from jackpot_jax import sparsity as sp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Pipeline configs; study configs (configs/study_*.py) are exercised by tests/test_study.py.
CONFIGS = sorted(c for c in glob.glob(os.path.join(ROOT, "configs", "*.py"))
                 if not os.path.basename(c).startswith("study_"))


def _cli(workdir, config, *overrides, check=True, **kw):
    cmd = [sys.executable, "-m", "jackpot_jax.main", "--config", config, "--workdir",
           str(workdir), *overrides]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=check, **kw)


def _load_config(path):
    spec = importlib.util.spec_from_file_location("cfg", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


def _fashion_mnist_available():
    try:
        data_lib.load_dataset("fashion_mnist", download=False, val_examples=10)
        return True
    except FileNotFoundError:
        return False


needs_fmnist = pytest.mark.skipif(
    not _fashion_mnist_available() and not os.environ.get("CI"),
    reason="Fashion-MNIST IDX files not found (apt-get install dataset-fashion-mnist)")


@needs_fmnist
def test_cli_pretrain_search_eval_on_real_fashion_mnist(tmp_path):
    cfg = os.path.join(ROOT, "configs", "fashion_mnist_lenet5.py")
    small = ["--config.train_subset=4096", "--config.val_examples=1000",
             "--config.test_subset=2000", "--config.pretrain.epochs=2"]
    _cli(tmp_path / "dense", cfg, "--config.mode=pretrain", *small)
    dense_dir = tmp_path / "dense" / "model"
    out = _cli(tmp_path / "search", cfg, "--config.mode=search", f"--config.pretrained={dense_dir}",
               "--config.search.epochs=2", "--config.search.distribution=uniform", *small)
    assert "test_accuracy" in out.stdout   # the closing table
    summary = json.load(open(tmp_path / "search" / "summary.json"))
    for key in ["mode", "model", "dataset", "sparsity_target", "sparsity_achieved",
                "pretrained_checkpoint", "per_layer_sparsity", "dense_test_accuracy",
                "init_mask_test_accuracy", "test_accuracy", "overlap_with_init", "epochs", "seed",
                "wall_seconds"]:
        assert summary[key] is not None, key
    assert summary["mode"] == "search" and summary["sparsity_target"] == 0.9
    # Uniform budget: every layer prunes floor(0.9 n) of its n weights.
    dense = ckpt_lib.load_variables(dense_dir)
    flat_dense = sp.flatten_paths(dense["params"])
    with np.load(tmp_path / "search" / "jackpot.npz") as z:
        masks = {k[len("masks/"):]: z[k] for k in z.files if k.startswith("masks/")}
        exported = {k[len("params/"):]: z[k] for k in z.files if k.startswith("params/")}
    assert sorted(masks) == ["conv1/kernel", "conv2/kernel", "fc1/kernel"]
    assert sorted(exported) == sorted(flat_dense)
    for path, m in masks.items():
        n = m.size
        assert n - m.sum() == int(np.floor(0.9 * n + 1e-9)), path
        assert summary["per_layer_sparsity"][path] == pytest.approx(0.9, abs=1.0 / n)
        # The jackpot's weights are the pre-trained ones, bit for bit, on kept entries.
        np.testing.assert_array_equal(exported[path][m == 1], flat_dense[path][m == 1])
        assert np.all(exported[path][m == 0] == 0)
    for path in set(exported) - set(masks):   # biases and the classifier: untouched
        np.testing.assert_array_equal(exported[path], flat_dense[path])
    total = sum(m.size for m in masks.values())
    assert summary["sparsity_achieved"] == pytest.approx(0.9, abs=len(masks) / total)
    assert summary["pretrained_checkpoint"] == str(dense_dir)
    assert summary["test_accuracy"] > 0.5    # chance is 0.1
    lines = [json.loads(x) for x in open(tmp_path / "search" / "metrics.jsonl")]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert all(0 < r["overlap_with_init"] <= 1 and r["mask_flips"] >= 0 for r in lines)
    # eval of the exported jackpot reproduces the search's test accuracy.
    _cli(tmp_path / "eval", cfg, "--config.mode=eval",
         f"--config.checkpoint={tmp_path / 'search'}", *small)
    ev = json.load(open(tmp_path / "eval" / "summary.json"))
    assert ev["test_accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-6)
    assert ev["sparsity_achieved"] == pytest.approx(summary["sparsity_achieved"])


def _tiny_config(base="fashion_mnist_lenet300.py", **over):
    c = _load_config(os.path.join(ROOT, "configs", base))
    c.dataset = "synthetic:" + c.dataset
    c.train_subset, c.test_subset, c.val_examples = 256, 32, 16
    c.batch_size, c.eval_batch_size = 32, 16
    c.pretrain.epochs = 1
    c.update_from_flattened_dict(over)
    return c


def _pretrained_dir(tmp_path, config):
    ds = modes.load_data(config)
    module, variables, opts = modes.init_model(config, ds, seed=123)
    return ckpt_lib.save_variables(tmp_path / "init_dense", variables, arch=config.model,
                                   model_options=opts)


def test_kill_and_resume_gives_identical_masks(tmp_path):
    config = _tiny_config(**{"search.epochs": 8, "sparsity": 0.8})
    config.pretrained = _pretrained_dir(tmp_path, config)
    ref = train.run(config, str(tmp_path / "ref"))
    cfg_file = os.path.join(ROOT, "configs", "fashion_mnist_lenet300.py")
    args = [f"--config.{k}={v}" for k, v in [
        ("dataset", config.dataset), ("train_subset", 256), ("test_subset", 32),
        ("val_examples", 16), ("batch_size", 32), ("eval_batch_size", 16),
        ("search.epochs", 8), ("sparsity", 0.8), ("pretrained", config.pretrained)]]
    work = tmp_path / "killed"
    cmd = [sys.executable, "-m", "jackpot_jax.main", "--config", cfg_file, "--workdir",
           str(work), *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not os.path.isdir(work / "checkpoints" / "2") and time.time() < deadline:
        assert proc.poll() is None, "the run ended before it could be interrupted"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(work / "summary.json")
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
    assert "resuming" in out.stdout
    with np.load(tmp_path / "ref" / "jackpot.npz") as a, np.load(work / "jackpot.npz") as b:
        keys = [k for k in a.files if k.startswith(("masks/", "params/"))]
        assert keys and sorted(keys) == sorted(k for k in b.files if k.startswith(("masks/", "params/")))
        for k in keys:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    ra = ckpt_lib.load_scores(tmp_path / "ref" / "model")
    rb = ckpt_lib.load_scores(work / "model")
    for k in ra:
        np.testing.assert_array_equal(ra[k], rb[k], err_msg=k)
    lines = [json.loads(x) for x in open(work / "metrics.jsonl")]
    assert [r["epoch"] for r in lines] == list(range(1, 9))
    assert json.load(open(work / "summary.json"))["test_accuracy"] == ref["test_accuracy"]


TWO_DEVICES = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    import json, jax, jax.numpy as jnp, numpy as np
    from jackpot_jax import engine, models, sparsity as sp
    from jackpot_jax.config_base import base_config
    assert jax.device_count() == 2, jax.devices()
    module = models.get_model("resnet20", num_classes=10, width=1)
    v = models.init_variables(module, jax.random.key(0), (1, 8, 8, 3))
    params, bs = v["params"], v["batch_stats"]
    budget = sp.keep_counts(params, 0.9)
    scores = sp.init_scores_from_mask(sp.criterion_mask(sp.magnitude_scores(params), budget))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 8, 8, 3)).astype(np.float32)
    y = rng.integers(0, 10, 8).astype(np.int32)
    cfg = base_config().search
    out = {}
    for n in (1, 2):
        mesh = engine.make_mesh(n)
        tx, _ = engine.make_optimizer(cfg, 2, 1)
        state = engine.TrainState(jnp.zeros((), jnp.int32), scores, tx.init(scores), bs,
                                 jax.random.key_data(jax.random.key(0)))
        state = jax.tree.map(np.array, state)   # the step donates its state: pass copies
        step = engine.make_train_step(module, "search", tx, budget=budget)
        state = engine.replicate(mesh, state)
        new, m = step(state, engine.replicate(mesh, params), *engine.shard_batch(mesh, (x, y)))
        out[n] = (float(m["loss"]), jax.device_get(new.trainable), jax.device_get(new.batch_stats))
    assert abs(out[1][0] - out[2][0]) < 1e-5, (out[1][0], out[2][0])
    for a, b in zip(jax.tree.leaves(out[1][1:]), jax.tree.leaves(out[2][1:])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(jax.tree.leaves(out[2][1])[0] - jax.tree.leaves(scores)[0]).max()) > 0
    try:
        engine.check_batch(7, engine.make_mesh(2))
    except ValueError as e:
        assert "batch_size=7" in str(e) and "2 devices" in str(e), e
    else:
        raise AssertionError("an odd batch on 2 devices was accepted")
    print("TWO_DEVICES_OK", out[1][0], out[2][0])
""")


def test_two_devices_match_one_device():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-c", TWO_DEVICES], cwd=ROOT, capture_output=True,
                         text=True, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "TWO_DEVICES_OK" in out.stdout


@pytest.mark.parametrize("config_path", CONFIGS, ids=[os.path.basename(c) for c in CONFIGS])
def test_every_config_runs_one_step_on_synthetic_data(tmp_path, config_path):
    c = _load_config(config_path)
    assert os.path.basename(config_path)[:-3] in _load_doc(config_path)  # run command in docstring
    c.dataset = "synthetic:" + c.dataset
    c.train_subset, c.test_subset, c.val_examples = 2, 2, 2
    c.batch_size = c.eval_batch_size = 2
    c.search.epochs = 1
    if c.dataset.startswith("synthetic:imagenet"):
        c.image_size = 64   # same graph as 224 (global pooling), a fraction of the CPU time
    c.pretrained = _pretrained_dir(tmp_path, c)
    summary = train.run(c, str(tmp_path / "run"))
    assert summary["epochs"] == 1 and summary["model"] == c.model
    assert summary["sparsity_achieved"] == pytest.approx(c.sparsity, abs=1e-3)
    assert np.isfinite(json.loads(open(tmp_path / "run" / "metrics.jsonl").readline())["loss"])


def _load_doc(path):
    import ast
    return ast.get_docstring(ast.parse(open(path).read()))


def test_finetune_keeps_the_mask_and_changes_weights(tmp_path):
    config = _tiny_config(**{"search.epochs": 1, "finetune.epochs": 1, "mode": "finetune"})
    config.pretrained = _pretrained_dir(tmp_path, config)
    summary = train.run(config, str(tmp_path / "ft"))
    assert summary["mode"] == "finetune"
    meta, masks, params, _ = export.load_jackpot(str(tmp_path / "ft"))
    _, search_masks, _, _ = export.load_jackpot(str(tmp_path / "ft" / "search"))
    assert float(sp.overlap(masks, search_masks)) == 1.0
    for path, m in sp.flatten_paths(masks).items():
        w = sp.flatten_paths(params)[path]
        assert np.all(w[np.asarray(m) == 0] == 0)
    dense = ckpt_lib.load_variables(config.pretrained)["params"]
    assert not np.array_equal(sp.flatten_paths(params)["fc1/kernel"],
                              sp.flatten_paths(dense)["fc1/kernel"] * sp.flatten_paths(masks)["fc1/kernel"])


@pytest.mark.parametrize("criterion", ["snip", "grasp", "random"])
def test_search_warm_starts_from_each_criterion(tmp_path, criterion):
    config = _tiny_config(**{"search.epochs": 1, "search.init": criterion, "sparsity": 0.7})
    config.pretrained = _pretrained_dir(tmp_path, config)
    config.criteria.grasp_per_class = 2
    summary = train.run(config, str(tmp_path / criterion))
    assert summary["init"] == criterion
    assert summary["sparsity_achieved"] == pytest.approx(0.7, abs=1e-3)


def test_bad_input_errors(tmp_path):
    config = _tiny_config(sparsity=1.0)
    with pytest.raises(ValueError, match="sparsity=1.0"):
        train.run(config, str(tmp_path / "a"))
    config = _tiny_config(mode="train")
    with pytest.raises(ValueError, match="mode='train'"):
        train.run(config, str(tmp_path / "b"))
    config = _tiny_config(pretrained=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        train.run(config, str(tmp_path / "c"))
    config = _tiny_config(**{"search.init": "oracle"})
    with pytest.raises(ValueError, match="search.init='oracle'"):
        train.run(config, str(tmp_path / "d"))
    config = _tiny_config(dataset="cifar10", data_dir=str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="empty"):
        train.run(config, str(tmp_path / "e"))
