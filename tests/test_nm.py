"""N:M masks (issue 12): `nm_mask` against a numpy reference, the straight-through gradient,
N:M budgets through every mask function, a 2:4 pipeline run end to end, its PyTorch export,
and the study's 2:4 rows."""

import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jackpot_jax import method as jm
from jackpot_jax.errors import ConfigError
from jackpot_jax.experiments import study
from jackpot_jax.pipeline import checkpoint as ckpt_lib
from jackpot_jax.pipeline import export, pruning, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def reference_nm(x: np.ndarray, n: int, m: int) -> np.ndarray:
    """Independent reference: per group of m along axis -2, a stable sort by (-value, index)
    (float64, so -0.0 and 0.0 tie; numpy sorts NaN last), the first n kept."""
    x = np.asarray(x, np.float64)
    out = np.zeros(x.shape, np.float32)
    lead = x.shape[:-2]
    for idx in np.ndindex(*lead, x.shape[-1]):
        *pre, col = idx
        column = x[tuple(pre)][:, col]
        for g in range(0, column.size, m):
            group = column[g : g + m]
            order = np.lexsort((np.arange(m), -group))
            out[tuple(pre) + (g + order[:n], col)] = 1
    return out


def _groups_of(mask: np.ndarray, m: int) -> np.ndarray:
    """Ones per group of m consecutive entries along axis -2 (numpy, no library code)."""
    moved = np.moveaxis(np.asarray(mask) != 0, -2, -1)
    return moved.reshape(*moved.shape[:-1], moved.shape[-1] // m, m).sum(-1)


def test_nm_hand_computed():
    # Dense kernel (in=4, out=2). Column 0: 3 and the first of two 2.0s; column 1: 5 and the
    # first of two 2.0s (index 1 beats index 3).
    x = jnp.array([[3.0, 1.0], [2.0, 2.0], [2.0, 5.0], [0.0, 2.0]])
    chex.assert_trees_all_equal(
        jm.nm_mask(x, 2, 4), jnp.array([[1, 0], [1, 1], [0, 1], [0, 0]], jnp.float32)
    )
    chex.assert_trees_all_equal(
        jm.nm_mask(x, 1, 2), jnp.array([[1, 0], [0, 1], [1, 1], [0, 0]], jnp.float32)
    )


@pytest.mark.parametrize("n,m", [(1, 2), (2, 4), (4, 8)])
@pytest.mark.parametrize(
    "shape",
    [(16, 3), (24, 10), (3, 3, 8, 5), (1, 1, 16, 4)],
    ids=["dense", "dense_wide", "conv3x3", "conv1x1"],
)
def test_nm_matches_reference_with_ties(n, m, shape):
    rng = np.random.default_rng(sum(shape) + 10 * m)
    # Integer quarters in [-1, 1): every group has ties; also -0.0, +0.0, infinities and NaN
    # (ranked below every number, as numpy's sort puts it last).
    x = (rng.integers(-4, 4, size=shape) * 0.25).astype(np.float32)
    flat = x.reshape(-1)
    flat[:5] = [-0.0, 0.0, np.inf, -np.inf, np.nan]
    got = np.asarray(jm.nm_mask(jnp.asarray(x), n, m))
    np.testing.assert_array_equal(got, reference_nm(x, n, m))
    assert np.all(_groups_of(got, m) == n)
    # Continuous scores (no ties) too, and the same masks under jit.
    y = rng.normal(size=shape).astype(np.float32)
    got = np.asarray(jax.jit(lambda s: jm.nm_mask(s, n, m))(jnp.asarray(y)))
    np.testing.assert_array_equal(got, reference_nm(y, n, m))


@pytest.mark.parametrize("use_abs", [False, True])
def test_nm_straight_through_gradient_is_the_identity(use_abs):
    rng = np.random.default_rng(0)
    s = jnp.asarray(rng.normal(size=(8, 6)).astype(np.float32))
    c = jnp.asarray(rng.normal(size=(8, 6)).astype(np.float32))
    value = jm.nm_ste_mask(s, 2, 4, use_abs=use_abs)
    ranked = jnp.abs(s) if use_abs else s
    chex.assert_trees_all_equal(value, jm.nm_mask(ranked, 2, 4))  # bit for bit
    g = jax.grad(lambda t: jnp.sum(c * jm.nm_ste_mask(t, 2, 4, use_abs=use_abs)))(s)
    np.testing.assert_array_equal(np.asarray(g), np.asarray(c * jnp.sign(s) if use_abs else c))


def _params():
    rng = np.random.default_rng(1)
    return {
        "conv1": {
            "kernel": rng.normal(size=(5, 5, 1, 6)).astype(np.float32),
            "bias": np.zeros(6, np.float32),
        },
        "conv2": {"kernel": rng.normal(size=(3, 3, 8, 4)).astype(np.float32)},
        "fc1": {"kernel": rng.normal(size=(20, 7)).astype(np.float32)},
        "classifier": {"kernel": rng.normal(size=(7, 3)).astype(np.float32)},
    }


def test_nm_budget_through_masks_criteria_and_masked_params():
    params = jax.tree.map(jnp.asarray, _params())
    pattern = jm.NMPattern(2, 4)
    budget = jm.nm_budget(params, pattern)
    # conv1 (1 input channel) stays dense; the classifier is not prunable (default filter).
    assert jm.flatten_paths(budget) == {
        "conv1/kernel": 150,
        "conv2/kernel": pattern,
        "fc1/kernel": pattern,
    }
    assert jm.dense_kept(budget) == ["conv1/kernel"]
    importance = jm.magnitude_scores(params)
    masks = jm.criterion_mask(importance, budget)
    flat = jm.flatten_paths(masks)
    np.testing.assert_array_equal(flat["conv1/kernel"], np.ones((5, 5, 1, 6)))
    for path in ("conv2/kernel", "fc1/kernel"):
        w = jm.flatten_paths(params)[path]
        np.testing.assert_array_equal(flat[path], reference_nm(np.abs(w), 2, 4), err_msg=path)
    # A mixed tree budget: top-k counts and patterns side by side.
    mixed = {**budget, "conv1": {"kernel": 7, "bias": None}}
    m2 = jm.flatten_paths(jm.masks_from_scores(importance, mixed, use_abs=False))
    assert int(m2["conv1/kernel"].sum()) == 7
    np.testing.assert_array_equal(m2["fc1/kernel"], flat["fc1/kernel"])
    # Summary: exactly 1 - n/m over the patterned kernels.
    summary = jm.pattern_summary(masks, pattern)
    assert summary["pattern_satisfied"] and summary["dense_kept"] == ["conv1/kernel"]
    assert summary["sparsity_patterned"] == 0.5
    n_pat = 3 * 3 * 8 * 4 + 20 * 7
    assert summary["sparsity_all_masked"] == pytest.approx(0.5 * n_pat / (n_pat + 150))
    # Random and a criterion on data go through the same budget.
    rand = jm.criterion_mask(jm.random_scores(jax.random.key(0), params), budget)
    assert all(
        jm.satisfies_pattern(jm.flatten_paths(rand)[p], pattern)
        for p in ("conv2/kernel", "fc1/kernel")
    )
    # STE through masked_params: dL/ds = dL/d(w*m) * w * sign(s), pruned weights included.
    scores = jax.tree.map(lambda x: x - 0.5, importance)
    loss = lambda s: jnp.sum(jm.masked_params(params, s, budget)["fc1"]["kernel"] ** 2)
    g = jax.grad(loss)(scores)["fc1"]["kernel"]
    w, s = params["fc1"]["kernel"], scores["fc1"]["kernel"]
    m = jm.nm_mask(jnp.abs(s), 2, 4)
    np.testing.assert_allclose(g, 2 * w * m * w * jnp.sign(s), rtol=1e-6)
    # A single pattern as the budget applies to every layer, and must fit each one.
    only = {"fc1": {"kernel": importance["fc1"]["kernel"]}}
    np.testing.assert_array_equal(
        jm.masks_from_scores(only, pattern)["fc1"]["kernel"], flat["fc1/kernel"]
    )
    with pytest.raises(ValueError, match=r"conv1/kernel.*divisible by 4"):
        jm.criterion_mask(importance, pattern)


def test_pattern_errors_name_the_bad_value():
    assert jm.parse_pattern("") is None and jm.parse_pattern(" 2:4 ") == jm.NMPattern(2, 4)
    for bad in ("2-4", "2:4:8", "a:b", "0:4", "5:4"):
        with pytest.raises(ValueError, match="n:m|0 < n <= m"):
            jm.parse_pattern(bad)
    with pytest.raises(ValueError, match=r"\(6, 3\).*divisible by 4"):
        jm.nm_mask(jnp.ones((6, 3)), 2, 4)


# --- the pipeline, its export and the study ------------------------------------------------


@pytest.fixture(scope="module")
def nm_search(tmp_path_factory):
    """A 2:4 search from the CLI on tiny synthetic data, LeNet-5 (its first conv has one
    input channel: kept dense), with a score gap small enough that masks change."""
    from pipeline_helpers import TINY, cli, pretrained_dir, tiny_config

    tmp = tmp_path_factory.mktemp("nm")
    config = tiny_config("fashion_mnist_lenet5.py")
    pretrained = pretrained_dir(tmp, config)
    overrides = {
        **TINY,
        "dataset": config.dataset,
        "search.epochs": 2,
        "search.score_pruned": 0.999,
        "search.lr": 0.5,
        "search.pattern": "2:4",
        "pretrained": pretrained,
    }
    cli(
        tmp / "search",
        os.path.join(ROOT, "configs", "fashion_mnist_lenet5.py"),
        *[f"--config.{k}={v}" for k, v in overrides.items()],
    )
    return tmp / "search", pretrained


def test_pipeline_2of4_masks_and_kept_weights(nm_search):
    workdir, pretrained = nm_search
    summary = json.load(open(workdir / "summary.json"))
    assert summary["pattern"] == "2:4" and summary["pattern_satisfied"] is True
    assert summary["sparsity_target"] == summary["sparsity_achieved"] == 0.5
    assert summary["dense_kept"] == ["conv1/kernel"]
    assert summary["patterned_layers"] == ["conv2/kernel", "fc1/kernel"]
    assert summary["overlap_with_init"] < 1.0  # the search moved the mask
    jackpot = export.read_jackpot(workdir)
    assert jackpot["meta"]["pattern"] == "2:4"
    dense = jm.flatten_paths(ckpt_lib.load_variables(pretrained)["params"])
    masks, params = jackpot["masks"], jackpot["params"]
    np.testing.assert_array_equal(masks["conv1/kernel"], 1)
    for path in ("conv2/kernel", "fc1/kernel"):
        assert np.all(_groups_of(masks[path], 4) == 2), path
    for path, m in masks.items():  # kept weights bit-equal to the pre-trained ones, others 0
        np.testing.assert_array_equal(params[path][m == 1], dense[path][m == 1])
        assert np.all(params[path][m == 0] == 0)


def test_torch_export_keeps_the_2of4_pattern(nm_search, tmp_path):
    torch = pytest.importorskip("torch")
    from jackpot_jax.interop import torch_convert

    workdir, _ = nm_search
    out = torch_convert.export_checkpoint(
        workdir / "model", tmp_path / "nm.pth", workdir / "jackpot.npz"
    )
    sd = torch.load(out, weights_only=True)
    for key in ("fc1.weight", "conv2.weight"):  # Linear (out, in); conv (O, I, H, W)
        w = sd[key].numpy()
        w2d = np.moveaxis(w, 1, -1).reshape(-1, w.shape[1])  # rows, input axis last
        nonzero = (w2d != 0).reshape(w2d.shape[0], -1, 4).sum(-1)
        assert nonzero.max() <= 2, key
    # torch's own 2:4 compressor (the CUTLASS layout `to_sparse_semi_structured` uses; it
    # runs on the CPU, the sparse matmul does not) must round-trip the Linear weight exactly.
    conv = pytest.importorskip("torch.sparse._semi_structured_conversions")
    w = sd["fc1.weight"].half()
    rows = -(-w.shape[0] // 32) * 32  # CUTLASS wants rows % 32 == 0
    padded = torch.zeros(rows, w.shape[1], dtype=w.dtype)
    padded[: w.shape[0]] = w
    packed, meta = conv.sparse_semi_structured_from_dense_cutlass(padded)
    assert packed.shape == (rows, w.shape[1] // 2)
    back = conv.sparse_semi_structured_to_dense_cutlass(packed, meta)
    assert torch.equal(back, padded)
    # The round trip can fail: a weight with 3 non-zeros in some group of 4 loses one.
    dense = padded.clone()
    dense[0, :4] = 1.0
    assert not torch.equal(
        conv.sparse_semi_structured_to_dense_cutlass(
            *conv.sparse_semi_structured_from_dense_cutlass(dense)
        ),
        dense,
    )


def test_study_2of4_rows(tmp_path):
    from test_study import _tiny_config

    c = _tiny_config()
    c.seeds, c.experiments = (0,), ("nm",)
    c.base.train_subset, c.base.val_examples = 64, 16
    res = study.run_study(c, str(tmp_path))
    rows = {(r["structure"], r["method"]): r for r in res["nm"]}
    assert set(rows) == {
        ("dense", "dense"),
        ("2:4", "magnitude"),
        ("2:4", "jackpot"),
        ("2:4", "magnitude+finetune"),
        ("unstructured", "magnitude"),
        ("unstructured", "jackpot"),
    }
    assert all(r["seeds"] == 1 and 0 <= r["test_acc_mean"] <= 1 for r in rows.values())
    assert rows[("2:4", "jackpot")]["pattern_satisfied"] is True
    assert rows[("2:4", "magnitude+finetune")]["pattern_satisfied"] is True
    assert rows[("2:4", "magnitude")]["pattern_satisfied"] is True  # its own (starting) masks
    assert rows[("2:4", "jackpot")]["dense_kept"] == []  # LeNet-300-100: 784 and 300 inputs
    piece = tmp_path / "lenet300_100" / "seed0"
    search = json.load(open(piece / "search_pretrained_magnitude_nm2of4_e1" / "summary.json"))
    assert rows[("2:4", "jackpot")]["test_acc_mean"] == search["test_accuracy"]
    assert rows[("2:4", "magnitude")]["test_acc_mean"] == search["init_mask_test_accuracy"]
    assert search["init_mask_pattern_satisfied"] is True
    ft = export.read_jackpot(piece / "finetune_pretrained_magnitude_nm2of4_e1")
    for path, m in ft["masks"].items():
        assert np.all(_groups_of(m, 4) == 2), path
    report = open(tmp_path / "report.md").read()
    assert "## N:M sub-networks: 2:4" in report and "Table 1" not in report
    assert not (tmp_path / "lenet300_100" / "seed0" / "criteria_p0.9.json").exists()
    with pytest.raises(ValueError, match="experiments=.*'claims'"):
        c.experiments = ("claims",)
        study.run_study(c, str(tmp_path))


def test_budget_for_reads_the_config():
    from jackpot_jax.pipeline.config import base_config

    c = base_config()
    c.search.distribution = "uniform"
    params = _params()
    assert (
        jm.flatten_paths(pruning.budget_for(c, params, pruning.prune_filter(c)))["fc1/kernel"] == 14
    )  # unstructured: 90% of 140 pruned
    c.search.pattern = "1:2"
    b = jm.flatten_paths(pruning.budget_for(c, params, pruning.prune_filter(c)))
    assert b["fc1/kernel"] == jm.NMPattern(1, 2) and b["conv2/kernel"] == jm.NMPattern(1, 2)
    c.search.pattern = "2of4"
    with pytest.raises(ValueError, match="pattern='2of4'"):
        pruning.budget_for(c, params, pruning.prune_filter(c))
    with pytest.raises(ConfigError, match=r"search\.pattern='2of4'"):
        train.check_config(c)  # the CLI stops before anything runs
