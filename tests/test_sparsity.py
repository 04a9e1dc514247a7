"""Tests of the sparsity core against hand computations and independent references."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jackpot_jax import kernels
from jackpot_jax import method as jm


def reference_topk(x: np.ndarray, keep: int) -> np.ndarray:
    """Independent reference: stable sort by (-value, flat index)."""
    flat = np.asarray(x, np.float64).ravel()
    order = np.lexsort((np.arange(flat.size), -flat))
    m = np.zeros(flat.size, np.float32)
    m[order[:keep]] = 1
    return m.reshape(np.shape(x))


# --- topk_mask --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "keep,expected",
    [
        (0, [0, 0, 0, 0, 0, 0]),
        (1, [0, 0, 0, 0, 1, 0]),
        (2, [1, 0, 0, 0, 1, 0]),
        (3, [1, 0, 1, 0, 1, 0]),  # three 2.0 ties: the lowest index (2) wins
        (4, [1, 0, 1, 1, 1, 0]),
        (5, [1, 0, 1, 1, 1, 1]),
        (6, [1, 1, 1, 1, 1, 1]),
    ],
)
def test_topk_hand_computed(keep, expected):
    x = jnp.array([3.0, 1.0, 2.0, 2.0, 5.0, 2.0])
    chex.assert_trees_all_equal(jm.topk_mask(x, keep), jnp.array(expected, jnp.float32))


def test_topk_all_ties_keeps_lowest_indices():
    x = jnp.ones((4, 5))
    m = jm.topk_mask(x, 7)
    assert int(m.sum()) == 7
    np.testing.assert_array_equal(np.asarray(m).ravel(), [1] * 7 + [0] * 13)


def test_topk_two_level_init_ties():
    # The two-level init makes thousands of exact ties; counts must never be off by one.
    rng = np.random.default_rng(0)
    x = np.where(rng.random((64, 3, 3, 16)) < 0.1, 1.0, 0.95).astype(np.float32)
    for keep in [0, 1, 500, int((x == 1.0).sum()), int((x == 1.0).sum()) + 17, x.size - 1, x.size]:
        m = np.asarray(jm.topk_mask(jnp.asarray(x), keep))
        assert m.sum() == keep
        np.testing.assert_array_equal(m, reference_topk(x, keep))


@pytest.mark.parametrize("seed", range(5))
def test_topk_matches_reference_with_negatives_and_ties(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(-20, 20, size=(37, 11)).astype(np.float32) * 0.25
    x[0, :3] = [np.inf, -np.inf, -0.0]
    for keep in rng.integers(0, x.size + 1, size=6):
        np.testing.assert_array_equal(
            np.asarray(jm.topk_mask(jnp.asarray(x), int(keep))), reference_topk(x, int(keep))
        )


def _native_or_skip(layout):
    if layout == "native":
        from jackpot_jax.kernels.native import topk_select

        if jax.default_backend() != "cpu" or not topk_select.available():
            pytest.skip(f"native top-k select: {topk_select.unavailable_reason() or 'CPU only'}")


@pytest.mark.parametrize(
    "layout,radix_bits",
    [
        ("per_layer", 4),
        ("together", 1),
        ("together", 2),
        ("together", 4),
        ("together", 8),
        ("native", 4),
    ],
)
def test_per_layer_masks_match_the_reference_in_every_layout(
    layout, radix_bits, monkeypatch, compute
):
    """Per-layer budgets, each layer alone ("per_layer": counting search; "native": the C++
    radix select) or all layers in one blocked radix search ("together", 1 to 8 threshold
    bits per pass): per layer the mask must equal the reference, with layers whose ties
    straddle the cut next to layers without, sizes below, at and above the row length (1024),
    and empty / full keeps."""
    _native_or_skip(layout)
    compute(mask_layout=layout)
    compute(radix_bits=radix_bits)
    rng = np.random.default_rng(3)
    scores = {
        "a": np.where(rng.random((40, 50)) < 0.3, 1.0, 0.95).astype(np.float32),  # ties cut
        "b": rng.normal(size=(7,)).astype(np.float32),  # tiny
        "c": rng.normal(size=(32, 32)).astype(np.float32),  # one row
        "d": rng.integers(-3, 3, size=(5, 5, 3, 19)).astype(np.float32),  # ties cut
        "e": rng.normal(size=(9, 9)).astype(np.float32),  # keep 0
        "f": rng.normal(size=(13,)).astype(np.float32),  # keep all
    }
    budget = {"a": 700, "b": 3, "c": 1000, "d": 800, "e": 0, "f": 13}
    masks = jm.masks_from_scores(jax.tree.map(jnp.asarray, scores), budget, use_abs=False)
    for name, x in scores.items():
        np.testing.assert_array_equal(
            np.asarray(masks[name]), reference_topk(x, budget[name]), err_msg=name
        )
    # And with |scores| ranked (the default), against the reference on |x|.
    masks = jm.masks_from_scores(jax.tree.map(jnp.asarray, scores), budget)
    for name, x in scores.items():
        np.testing.assert_array_equal(
            np.asarray(masks[name]), reference_topk(np.abs(x), budget[name]), err_msg=name
        )
    # A single array and the global budget go through the same layout.
    np.testing.assert_array_equal(
        np.asarray(jm.topk_mask(jnp.asarray(scores["d"]), 123)), reference_topk(scores["d"], 123)
    )


def test_bad_radix_bits():
    with pytest.raises(ValueError, match=r"radix_bits=3; expected one of \(1, 2, 4, 8\)"):
        kernels.ComputeOptions(mask_layout="together", radix_bits=3)


def test_bad_mask_layout():
    with pytest.raises(
        ValueError,
        match="mask_layout='sorted'; expected one of "
        r"\('auto', 'per_layer', 'together', 'native'\)",
    ):
        kernels.ComputeOptions(mask_layout="sorted")


@pytest.mark.parametrize("layout", ["per_layer", "together", "native"])
def test_subnormal_scores_are_numbers_not_zeros(layout, monkeypatch, compute):
    # XLA:CPU flushes subnormals to zero in float comparisons; the keys are made with integer
    # operations, so tiny scores keep their order (as numpy's reference sees them).
    _native_or_skip(layout)
    compute(mask_layout=layout)
    x = (np.random.default_rng(0).normal(size=(300,)) * 1e-39).astype(np.float32)
    x[:4] = [0.0, -0.0, 1e-45, -1e-45]  # zeros tie; the smallest subnormals do not
    assert np.count_nonzero(x) == 298 and np.abs(x[4:]).max() < np.finfo(np.float32).tiny
    for keep in (1, 100, 150, 151, 299):
        np.testing.assert_array_equal(
            np.asarray(jm.topk_mask(jnp.asarray(x), keep)),
            reference_topk(x, keep),
            err_msg=str(keep),
        )


def test_topk_continuous_matches_lax_top_k():
    x = jax.random.normal(jax.random.key(1), (1000,))
    _, idx = jax.lax.top_k(x, 123)
    expected = np.zeros(1000, np.float32)
    expected[np.asarray(idx)] = 1
    np.testing.assert_array_equal(np.asarray(jm.topk_mask(x, 123)), expected)


def test_topk_single_weight_and_extreme_sparsity():
    np.testing.assert_array_equal(jm.topk_mask(jnp.array([[0.3]]), 1), [[1.0]])
    np.testing.assert_array_equal(jm.topk_mask(jnp.array([[0.3]]), 0), [[0.0]])
    params = {
        "a": {"kernel": jnp.arange(1.0, 2001.0).reshape(40, 50)},
        "b": {"kernel": jnp.full((1, 1), 7.0)},
    }
    counts = jm.keep_counts(params, 0.999, "uniform")
    # floor(0.999 * 2000) = 1998 pruned; floor(0.999 * 1) = 0 pruned: a one-weight layer lives.
    assert counts["a"]["kernel"] == 2 and counts["b"]["kernel"] == 1
    assert jm.keep_counts({"a": {"kernel": jnp.ones((10, 10))}}, 0.29, "uniform") == {
        "a": {"kernel": 71}
    }
    dense = jm.keep_counts(params, 0.0, "global_magnitude")
    assert dense["a"]["kernel"] == 2000 and dense["b"]["kernel"] == 1
    masks = jm.masks_from_scores(jm.magnitude_scores(params), counts)
    # The two kept weights of 'a' are its two largest: 1999 and 2000.
    np.testing.assert_array_equal(np.flatnonzero(np.asarray(masks["a"]["kernel"])), [1998, 1999])


def test_topk_under_jit_and_bad_keep():
    x = jax.random.uniform(jax.random.key(0), (10, 10))
    jitted = jax.jit(jm.topk_mask, static_argnums=1)
    chex.assert_trees_all_equal(jitted(x, 42), jm.topk_mask(x, 42))
    with pytest.raises(ValueError, match="keep=101"):
        jm.topk_mask(x, 101)
    with pytest.raises(ValueError, match="keep=-1"):
        jm.topk_mask(x, -1)


# --- straight-through estimator ------------------------------------------------------------------


def test_ste_value_equals_topk_and_gradient_is_identity_times_sign():
    s = jnp.array([-1.0, 0.5, 2.0, -0.25, 3.3, 0.95])
    m = jm.ste_mask(s, 3)
    chex.assert_trees_all_equal(m, jm.topk_mask(jnp.abs(s), 3))  # bit-for-bit
    c = jnp.arange(1.0, 7.0)
    g = jax.grad(lambda t: jnp.sum(c * jm.ste_mask(t, 3)))(s)
    np.testing.assert_allclose(g, c * np.sign(s))
    g_noabs = jax.grad(lambda t: jnp.sum(c * jm.ste_mask(t, 3, use_abs=False)))(s)
    np.testing.assert_allclose(g_noabs, c)


def test_masked_params_gradient_is_dl_dwm_times_w():
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
    s = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
    x = jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)
    params = {"dense": {"kernel": w, "bias": jnp.zeros(3)}}
    scores = {"dense": {"kernel": s, "bias": None}}
    budget = {"dense": {"kernel": 5, "bias": None}}

    def loss(sc):
        p = jm.masked_params(params, sc, budget)
        return jnp.sum(jnp.tanh(x @ p["dense"]["kernel"]))

    g = jax.grad(loss)(scores)["dense"]["kernel"]
    m = reference_topk(np.abs(np.asarray(s)), 5)
    # Analytic: dL/d(w*m) = x^T (1 - tanh^2(x (w*m))), then times w and sign(s).
    pre = np.asarray(x) @ (np.asarray(w) * m)
    dl_dwm = np.asarray(x).T @ (1 - np.tanh(pre) ** 2)
    np.testing.assert_allclose(
        g, dl_dwm * np.asarray(w) * np.sign(np.asarray(s)), rtol=1e-5, atol=1e-6
    )
    assert np.all(np.asarray(g)[m == 0] != 0)  # pruned weights' scores get gradients too


def test_global_budget_one_topk_over_all_layers():
    params = {
        "a": {"kernel": jnp.array([[1.0, 5.0], [3.0, 0.5]])},
        "b": {"kernel": jnp.array([[4.0], [2.0], [6.0]])},
    }
    masks = jm.masks_from_scores(jm.magnitude_scores(params), 3)
    np.testing.assert_array_equal(masks["a"]["kernel"], [[0, 1], [0, 0]])
    np.testing.assert_array_equal(masks["b"]["kernel"], [[1], [0], [1]])
    g = jax.grad(
        lambda s: sum(
            jnp.sum(v * 2.0)
            for v in jax.tree.leaves(jm.masks_from_scores(s, 3, straight_through=True))
        )
    )(jm.magnitude_scores(params))
    chex.assert_trees_all_close(
        g, jax.tree.map(lambda v: 2.0 * jnp.ones_like(v), jm.magnitude_scores(params))
    )


# --- budgets ------------------------------------------------------------------------------------


def _toy_params():
    rng = np.random.default_rng(3)
    return {
        "conv1": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 1, 8)), jnp.float32)},
        "bn": {"scale": jnp.ones(8), "bias": jnp.zeros(8)},
        "conv2": {
            "kernel": jnp.asarray(rng.normal(size=(3, 3, 8, 16)) * 0.1, jnp.float32),
            "bias": jnp.zeros(16),
        },
        "classifier": {
            "kernel": jnp.asarray(rng.normal(size=(16, 10)), jnp.float32),
            "bias": jnp.zeros(10),
        },
    }


def test_default_filter_prunes_kernels_but_not_classifier_bias_or_bn():
    assert jm.prunable_paths(_toy_params()) == ["conv1/kernel", "conv2/kernel"]
    f = jm.make_filter(exclude=())
    assert jm.prunable_paths(_toy_params(), f) == [
        "classifier/kernel",
        "conv1/kernel",
        "conv2/kernel",
    ]
    f = jm.make_filter(exclude=[r"^conv1/"])  # replaces the default exclude
    assert jm.prunable_paths(_toy_params(), f) == ["classifier/kernel", "conv2/kernel"]
    f = jm.make_filter(exclude=[*jm.DEFAULT_EXCLUDE, r"^conv1/"])
    assert jm.prunable_paths(_toy_params(), f) == ["conv2/kernel"]
    f = jm.make_filter(include=[r"conv2/kernel"])
    assert jm.prunable_paths(_toy_params(), f) == ["conv2/kernel"]
    scores = jm.magnitude_scores(_toy_params())
    assert scores["bn"]["scale"] is None and scores["classifier"]["kernel"] is None


@pytest.mark.parametrize("dist", ["global_magnitude", "uniform", "erk"])
@pytest.mark.parametrize("p", [0.0, 0.5, 0.9, 0.95, 0.999])
def test_budgets_hit_target_within_one_weight_per_layer(dist, p):
    params = _toy_params()
    counts = jm.keep_counts(params, p, dist)
    flat = jm.flatten_paths(counts)
    sizes = {k: np.size(v) for k, v in jm.flatten_paths(params).items() if k in flat}
    total = sum(sizes.values())
    kept = sum(flat.values())
    assert abs((total - kept) / total - p) * total <= len(flat)
    assert all(0 <= flat[k] <= sizes[k] for k in flat)


def test_global_magnitude_counts_by_hand():
    params = {
        "a": {"kernel": jnp.array([[0.1, -0.9], [0.3, 0.2]])},
        "b": {"kernel": jnp.array([[0.8], [-0.05], [0.7], [0.4]])},
    }
    # |w| sorted: .9(a) .8(b) .7(b) .4(b) .3(a) .2(a) .1(a) .05(b); keep 3 of 8 (p=0.625).
    counts = jm.keep_counts(params, 0.625, "global_magnitude")
    assert counts == {"a": {"kernel": 1}, "b": {"kernel": 2}}
    assert jm.keep_counts(params, 0.625, "global") == 3
    assert jm.keep_counts(params, 0.5, "uniform") == {"a": {"kernel": 2}, "b": {"kernel": 2}}


def test_erk_by_hand():
    # Two dense layers (in, out): raw density (in+out)/(in*out); 10x10 -> 0.2, 100x10 -> 0.11.
    params = {"l1": {"kernel": jnp.ones((10, 10))}, "l2": {"kernel": jnp.ones((100, 10))}}
    counts = jm.keep_counts(params, 0.9, "erk")
    eps = 0.1 * 1100 / (0.2 * 100 + 0.11 * 1000)
    assert counts["l1"]["kernel"] == round(eps * 0.2 * 100)
    assert counts["l2"]["kernel"] == round(eps * 0.11 * 1000)
    # A layer that would exceed density 1 becomes dense and the rest share the remainder.
    params = {"l1": {"kernel": jnp.ones((2, 2))}, "l2": {"kernel": jnp.ones((100, 100))}}
    counts = jm.keep_counts(params, 0.5, "erk")
    assert counts["l1"]["kernel"] == 4
    assert counts["l2"]["kernel"] == 10004 - 5002 - 4


# --- criteria -----------------------------------------------------------------------------------


def _linear_problem():
    rng = np.random.default_rng(0)
    params = {
        "fc": {
            "kernel": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=(2,)), jnp.float32),
        }
    }
    x = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
    y = jnp.array([0, 1, 1, 0])
    return params, x, y


def _logits(params, x):
    return jnp.tanh(x @ params["fc"]["kernel"] + params["fc"]["bias"]) * 3.0


def test_snip_equals_hand_gradient():
    params, x, y = _linear_problem()
    w, b = np.asarray(params["fc"]["kernel"]), np.asarray(params["fc"]["bias"])

    def loss(p, batch):
        xb, yb = batch
        return jnp.mean((xb @ p["fc"]["kernel"] + p["fc"]["bias"] - yb[:, None]) ** 2)

    batches = [(x[:2], y[:2]), (x[2:], y[2:])]
    scores = jm.snip_scores(loss, params, batches)
    xn, yn = np.asarray(x), np.asarray(y, np.float64)
    grad = sum(
        2 * xb.T @ (xb @ w + b - yb[:, None]) / (len(xb) * 2)
        for xb, yb in [(xn[:2], yn[:2]), (xn[2:], yn[2:])]
    )
    np.testing.assert_allclose(scores["fc"]["kernel"], np.abs(w * grad), rtol=1e-5)
    assert scores["fc"]["bias"] is None


def test_grasp_equals_finite_difference_hessian_gradient():
    params, x, y = _linear_problem()
    loss = jm.temperature_loss(_logits, temperature=2.0)
    batches = [(x, y)]
    scores = jm.grasp_scores(loss, params, batches)
    jax.config.update("jax_enable_x64", True)
    try:
        p64 = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), params)
        grad = jax.grad(loss)
        g = grad(p64, (x.astype(jnp.float64), y))["fc"]["kernel"]
        eps = 1e-5

        def shifted(sign):
            q = {"fc": {"kernel": p64["fc"]["kernel"] + sign * eps * g, "bias": p64["fc"]["bias"]}}
            return grad(q, (x.astype(jnp.float64), y))["fc"]["kernel"]

        hg = (shifted(+1) - shifted(-1)) / (2 * eps)
        expected = np.asarray(p64["fc"]["kernel"] * hg)
    finally:
        jax.config.update("jax_enable_x64", False)
    np.testing.assert_allclose(scores["fc"]["kernel"], expected, rtol=1e-3, atol=1e-7)


def test_random_and_magnitude_and_kaiming_scores():
    params = _toy_params()
    mag = jm.magnitude_scores(params)
    np.testing.assert_array_equal(mag["conv1"]["kernel"], np.abs(params["conv1"]["kernel"]))
    r1 = jm.random_scores(jax.random.key(0), params)
    r2 = jm.random_scores(jax.random.key(0), params)
    chex.assert_trees_all_equal(r1, r2)
    k = jm.kaiming_uniform_scores(jax.random.key(1), params)
    bound = 1 / np.sqrt(3 * 3 * 8)
    assert np.abs(k["conv2"]["kernel"]).max() <= bound
    assert np.abs(k["conv2"]["kernel"]).max() > 0.9 * bound


def test_two_level_init_reproduces_the_criterion_mask():
    params = _toy_params()
    counts = jm.keep_counts(params, 0.9)
    mask = jm.criterion_mask(jm.magnitude_scores(params), counts)
    scores = jm.init_scores_from_mask(mask, 1.0, 0.95)
    np.testing.assert_array_equal(np.unique(scores["conv2"]["kernel"]), np.float32([0.95, 1.0]))
    chex.assert_trees_all_equal(jm.masks_from_scores(scores, counts), mask)
    with pytest.raises(ValueError, match="kept=0.9"):
        jm.init_scores_from_mask(mask, 0.9, 0.95)


# --- measures -----------------------------------------------------------------------------------


def test_overlap_identical_complementary_and_by_hand():
    a = {"x": {"kernel": jnp.array([1.0, 0.0, 0.0, 1.0])}, "y": {"kernel": jnp.array([[1.0, 0.0]])}}
    comp = jax.tree.map(lambda m: 1.0 - m, a)
    assert float(jm.overlap(a, a)) == 1.0
    assert float(jm.overlap(a, comp)) == 0.0
    b = {"x": {"kernel": jnp.array([1.0, 1.0, 0.0, 0.0])}, "y": {"kernel": jnp.array([[1.0, 0.0]])}}
    assert float(jm.overlap(a, b)) == pytest.approx(1 - 2 / 6)
    assert int(jm.mask_flips(a, b)) == 2
    assert float(jax.jit(jm.overlap)(a, b)) == pytest.approx(1 - 2 / 6)


def test_sparsity_summary():
    masks = {
        "x": {"kernel": jnp.array([1.0, 0.0, 0.0, 0.0])},
        "b": None,
        "y": {"kernel": jnp.ones((2, 3))},
    }
    s = jm.sparsity_summary(masks)
    assert s == {"x/kernel": 0.75, "y/kernel": 0.0, "_total_sparsity": 0.3}


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [1.0, -0.1, 1.5, float("nan")])
def test_bad_sparsity(p):
    with pytest.raises(ValueError, match="sparsity="):
        jm.keep_counts(_toy_params(), p)


def test_bad_distribution_filter_and_trees():
    params = _toy_params()
    with pytest.raises(ValueError, match="distribution='erdos'"):
        jm.keep_counts(params, 0.5, "erdos")
    with pytest.raises(ValueError, match="selects no leaf"):
        jm.prunable_paths(params, jm.make_filter(include=["nothing_matches"]))
    scores = jm.magnitude_scores(params)
    jm.check_mirror(params, scores)
    bad = jax.tree.map(lambda v: v, scores)
    bad["conv2"]["kernel"] = jnp.ones((3, 3, 8, 15))
    with pytest.raises(ValueError, match="conv2/kernel"):
        jm.check_mirror(params, bad)
    missing = {k: v for k, v in scores.items() if k != "conv1"}
    with pytest.raises(ValueError, match="conv1/kernel"):
        jm.check_mirror(params, missing)
    counts = jm.keep_counts(params, 0.5)
    counts["conv1"]["kernel"] = 73
    with pytest.raises(ValueError, match="keep count 73 for layer 'conv1/kernel'"):
        jm.masks_from_scores(scores, counts)
    with pytest.raises(ValueError, match="not in the params tree"):
        jm.tree_from_paths(params, {"conv9/kernel": 1})


# --- a search step through a tiny model ---------------------------------------------------------


class TinyNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(4, (3, 3), padding=((1, 1), (1, 1)), use_bias=False)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)
        x = nn.relu(x).mean(axis=(1, 2))
        return nn.Dense(3, name="classifier")(x)


def test_search_step_leaves_pretrained_params_bit_for_bit_unchanged():
    model = TinyNet()
    x = jax.random.normal(jax.random.key(0), (8, 6, 6, 2))
    y = jnp.arange(8) % 3
    variables = model.init(jax.random.key(1), x)
    params = variables["params"]
    before = jax.tree.map(np.array, params)
    budget = jm.keep_counts(params, 0.5)
    scores = jm.init_scores_from_mask(jm.criterion_mask(jm.magnitude_scores(params), budget))
    opt = optax.sgd(optax.cosine_decay_schedule(0.1, 10), momentum=0.9)
    opt = optax.chain(optax.add_decayed_weights(5e-4), opt)
    opt_state = opt.init(scores)

    @jax.jit
    def step(scores, opt_state, batch_stats):
        def loss_fn(s):
            logits, upd = model.apply(
                {"params": jm.masked_params(params, s, budget), "batch_stats": batch_stats},
                x,
                train=True,
                mutable=["batch_stats"],
            )
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), upd

        (loss, upd), g = jax.value_and_grad(loss_fn, has_aux=True)(scores)
        updates, opt_state = opt.update(g, opt_state, scores)
        return optax.apply_updates(scores, updates), opt_state, upd["batch_stats"], g

    new_scores, _, _, g = step(scores, opt_state, variables["batch_stats"])
    chex.assert_trees_all_equal(jax.tree.map(np.array, params), before)
    assert new_scores["classifier"]["kernel"] is None
    assert float(jnp.abs(g["Conv_0"]["kernel"]).sum()) > 0
    assert not np.array_equal(new_scores["Conv_0"]["kernel"], scores["Conv_0"]["kernel"])
