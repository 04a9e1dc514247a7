"""Contracts of `jackpot_jax.method` that the rest of its tests left open (issue 32): cases a
mutation sample showed no test would notice if they broke. Part of the method's fast subset
(with test_sparsity, test_nm, test_topk_select, test_search_options); every expectation here
is hand-computed or read from a docstring's promise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jackpot_jax import kernels
from jackpot_jax import method as jm
from jackpot_jax.kernels.native import topk_select

NATIVE_OFF = (
    ""
    if jax.default_backend() == "cpu" and topk_select.available()
    else f"native select: {topk_select.unavailable_reason() or 'CPU only'}"
)
# Every mask layout of `ComputeOptions` (all promise the same masks); native where it builds.
LAYOUTS = [
    "per_layer",
    "together",
    pytest.param("native", marks=pytest.mark.skipif(bool(NATIVE_OFF), reason=NATIVE_OFF)),
]


# --- init_scores_from_mask: two distinct levels -----------------------------------------------


@pytest.mark.parametrize(
    "kept,pruned",
    [
        (0.5, 0.5),  # equal: every score ties, the warm-up mask would be lost
        (0.9, 0.95),  # kept below pruned: the mask would be inverted
        (1.0, -0.25),  # negative pruned level
    ],
)
def test_two_level_init_refuses_levels_that_lose_the_mask(kept, pruned):
    masks = {"w": jnp.array([1.0, 0.0, 1.0])}
    with pytest.raises(ValueError) as err:
        jm.init_scores_from_mask(masks, kept=kept, pruned=pruned)
    # The message names both values, so the user sees which setting to change.
    assert f"kept={kept}" in str(err.value) and f"pruned={pruned}" in str(err.value)


def test_two_level_init_by_hand_and_its_mask_survives():
    masks = {"a": jnp.array([[1.0, 0.0], [0.0, 1.0]]), "b": None, "c": jnp.array([0.0, 1.0, 0.0])}
    scores = jm.init_scores_from_mask(
        masks, kept=0.75, pruned=0.0
    )  # pruned=0 is allowed; 0.75 is exact in float32
    np.testing.assert_array_equal(np.asarray(scores["a"]), [[0.75, 0.0], [0.0, 0.75]])
    np.testing.assert_array_equal(np.asarray(scores["c"]), [0.0, 0.75, 0.0])
    assert scores["b"] is None and scores["a"].dtype == jnp.float32
    # The point of two levels: the top-k of the scores under the mask's own counts is the mask.
    back = jm.masks_from_scores(scores, {"a": 2, "c": 1})
    np.testing.assert_array_equal(np.asarray(back["a"]), np.asarray(masks["a"]))
    np.testing.assert_array_equal(np.asarray(back["c"]), np.asarray(masks["c"]))


# --- budgets that keep every weight ------------------------------------------------------------


def test_global_budget_that_keeps_every_weight():
    params = {
        "d1": {"kernel": jnp.arange(12.0).reshape(3, 4) - 5},
        "d2": {"kernel": -jnp.ones((4, 2))},
    }
    total = 12 + 8
    budget = jm.keep_counts(params, 0.0, "global")
    assert budget == total  # sparsity 0 prunes floor(0 * n) = 0 weights
    scores = jm.magnitude_scores(params)
    for masks in (
        jm.masks_from_scores(scores, budget),
        jm.masks_from_scores(scores, budget, straight_through=True),
        jm.criterion_mask(scores, budget),
    ):
        for path in ("d1", "d2"):
            m = np.asarray(masks[path]["kernel"])
            np.testing.assert_array_equal(m, np.ones_like(m))
    kept = jm.masked_params(params, scores, budget)
    for path in ("d1", "d2"):
        np.testing.assert_array_equal(
            np.asarray(kept[path]["kernel"]), np.asarray(params[path]["kernel"])
        )
    # One weight more than there are is still refused, naming the count and the range.
    with pytest.raises(ValueError, match=r"global keep count 21 is outside \[0, 20\]"):
        jm.masks_from_scores(scores, total + 1)
    with pytest.raises(ValueError, match=r"global keep count -1 is outside \[0, 20\]"):
        jm.masks_from_scores(scores, -1)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_per_layer_budgets_of_zero_and_everything(layout):
    scores = {"a": jnp.array([[0.3, -0.1], [0.2, 0.9]]), "b": jnp.array([[1.0], [2.0], [0.5]])}
    with kernels.use(mask_layout=layout):
        masks = jm.masks_from_scores(scores, {"a": 4, "b": 0})
    np.testing.assert_array_equal(np.asarray(masks["a"]), np.ones((2, 2)))
    np.testing.assert_array_equal(np.asarray(masks["b"]), np.zeros((3, 1)))
    with pytest.raises(ValueError, match=r"keep count 5 for layer 'a' is outside \[0, 4\]"):
        jm.masks_from_scores(scores, {"a": 5, "b": 0})


# --- the swap rule at rate 0 -------------------------------------------------------------------


def _balanced_layer(n_pairs: int):
    """A layer where ``n_pairs`` pruned weights have risen above the cut and as many kept
    weights have fallen below it (a balanced set the swap rule would exchange at rate 1)."""
    keep = 2 * n_pairs
    mask = np.zeros(4 * n_pairs, np.float32)
    mask[: 2 * n_pairs] = 1  # kept: the first half
    scores = np.empty(4 * n_pairs, np.float32)
    scores[:n_pairs] = 10 + np.arange(n_pairs)  # kept and high: stay
    scores[n_pairs : 2 * n_pairs] = np.arange(n_pairs) * 0.01  # kept, fallen
    scores[2 * n_pairs : 3 * n_pairs] = 5 + np.arange(n_pairs)  # pruned, risen
    scores[3 * n_pairs :] = -1 - np.arange(n_pairs)  # pruned and low: stay
    return scores, mask, keep


@pytest.mark.parametrize("layout", LAYOUTS)
def test_swap_at_rate_zero_leaves_the_masks_unchanged(layout):
    """The docstring allows ``rate`` in [0, 1]; with a balanced count above 1, rate 0 asks for
    no pair (ceil(c * 0) = 0) on every layout, the native select included (whose k-th largest
    must not be asked for k = 0)."""
    layers = {"one": _balanced_layer(1), "three": _balanced_layer(3), "many": _balanced_layer(40)}
    scores = {p: jnp.asarray(s) for p, (s, _, _) in layers.items()}
    masks = {p: jnp.asarray(m) for p, (_, m, _) in layers.items()}
    budget = {p: k for p, (_, _, k) in layers.items()}
    with kernels.use(mask_layout=layout):
        same = jm.swap_masks(scores, masks, budget, 0.0)
        traced = jax.jit(lambda s, m, r: jm.swap_masks(s, m, budget, r))(scores, masks, 0.0)
        full = jm.swap_masks(scores, masks, budget, 1.0)
    for p, (_, m, k) in layers.items():
        # A single balanced pair always swaps (ceil is not applied to c == 1), as documented.
        expect = m if p != "one" else np.array([1, 0, 1, 0], np.float32)
        np.testing.assert_array_equal(np.asarray(same[p]), expect, err_msg=p)
        np.testing.assert_array_equal(np.asarray(traced[p]), expect, err_msg=p)
        # Not vacuous: at rate 1 every balanced pair swaps (risers in, fallers out).
        n_pairs = k // 2
        swapped = m.copy()
        swapped[n_pairs : 2 * n_pairs], swapped[2 * n_pairs : 3 * n_pairs] = 0, 1
        np.testing.assert_array_equal(np.asarray(full[p]), swapped, err_msg=p)


# --- gradients: params are constants, scores get the straight-through gradient -----------------


def _loss_inputs():
    params = {
        "l": {"kernel": jnp.array([[2.0, -3.0], [4.0, 0.5]]), "bias": jnp.array([1.0, -1.0])},
    }
    scores = {"l": {"kernel": jnp.array([[0.5, -1.0], [0.2, 0.1]]), "bias": None}}
    x = jnp.array([[1.0, 2.0], [3.0, -1.0]])  # d(sum(x * w))/dw = x
    return params, scores, x


def test_masked_params_gradient_is_zero_for_params_and_straight_through_for_scores():
    """`masked_params` promises: ``params`` are constants, the scores' gradient is
    ``dL/d(w*m) * w`` (times sign(s) with use_abs), for pruned weights too."""
    params, scores, x = _loss_inputs()
    budget = {"l": {"kernel": 2, "bias": None}}

    def loss(p, s, use_abs=True):
        out = jm.masked_params(p, s, budget, use_abs=use_abs)
        return jnp.sum(out["l"]["kernel"] * x) + jnp.sum(out["l"]["bias"])

    # |s| = [[.5, 1], [.2, .1]]: keep -1.0 and 0.5 -> mask [[1, 1], [0, 0]]; value by hand
    assert float(loss(params, scores)) == pytest.approx(2.0 * 1 - 3.0 * 2 + 0.0)
    g_params = jax.grad(loss)(params, scores)
    for leaf in jax.tree.leaves(g_params):
        np.testing.assert_array_equal(np.asarray(leaf), np.zeros(leaf.shape))
    w, s = np.asarray(params["l"]["kernel"]), np.asarray(scores["l"]["kernel"])
    g_scores = jax.grad(loss, argnums=1)(params, scores)["l"]["kernel"]
    np.testing.assert_allclose(np.asarray(g_scores), np.asarray(x) * w * np.sign(s))
    g_raw = jax.grad(lambda s_: loss(params, s_, False))(scores)["l"]["kernel"]
    np.testing.assert_allclose(np.asarray(g_raw), np.asarray(x) * w)


def test_persistent_masks_gradient_is_zero_for_params():
    """`masked_params_from_masks` promises the same: ``params`` are constants."""
    params, scores, x = _loss_inputs()
    masks = {"l": {"kernel": jnp.array([[0.0, 1.0], [1.0, 0.0]]), "bias": None}}

    def loss(p):
        out = jm.masked_params_from_masks(p, scores, masks)
        return jnp.sum(out["l"]["kernel"] * x) + jnp.sum(out["l"]["bias"])

    assert float(loss(params)) == pytest.approx(-3.0 * 2 + 4.0 * 3)
    for leaf in jax.tree.leaves(jax.grad(loss)(params)):
        np.testing.assert_array_equal(np.asarray(leaf), np.zeros(leaf.shape))


# --- NaN: every NaN bit pattern ranks below every number ---------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_nan_bit_pattern_ranks_below_every_number(layout):
    """The NaNs nearest infinity (0x7F800001, 0xFF800001) and the quiet NaN rank below -inf;
    +inf (0x7F800000) is a number and ranks first."""
    bits = np.array(
        [0x7F800001, 0x3F800000, 0xFF800001, 0xFF800000, 0x7FC00000, 0x7F800000, 0x7FFFFFFF],
        np.uint32,
    )  # NaN, 1.0, NaN, -inf, NaN, +inf, NaN
    scores = jnp.asarray(bits.view(np.float32))
    with kernels.use(mask_layout=layout):
        got = [np.asarray(jm.topk_mask(scores, k)) for k in (1, 3, 4)]
        nm = np.asarray(jm.nm_mask(scores[:6].reshape(6, 1), 1, 2))
    np.testing.assert_array_equal(got[0], [0, 0, 0, 0, 0, 1, 0])  # +inf
    np.testing.assert_array_equal(got[1], [0, 1, 0, 1, 0, 1, 0])  # +inf, 1.0, -inf
    np.testing.assert_array_equal(got[2], [1, 1, 0, 1, 0, 1, 0])  # then the first NaN
    # Pairs (NaN, 1.0), (NaN, -inf), (NaN, +inf): the number wins each one.
    np.testing.assert_array_equal(nm.ravel(), [0, 1, 0, 1, 0, 1])


# --- swap-rate defaults ------------------------------------------------------------------------


def test_swap_rate_poly_defaults_by_hand():
    """``swap_rate(epoch, epochs, 'poly')`` defaults to ``rate=1.0, power=4.0`` (the signature
    promises them): ``(1 - epoch / epochs) ** 4``."""
    got = [float(jm.swap_rate(e, 10, "poly")) for e in (0, 5, 9)]
    np.testing.assert_allclose(got, [1.0, 0.5**4, 0.1**4], rtol=1e-6)
    # power=0: a constant fraction ``rate`` in every epoch.
    assert [float(jm.swap_rate(e, 4, "poly", rate=0.25, power=0.0)) for e in range(4)] == [0.25] * 4


# --- registries --------------------------------------------------------------------------------


def test_data_criteria_without_their_data_name_what_is_missing():
    """SNIP and GraSP read batches through `CriterionInputs`: without them the registry's
    entry raises a `ConfigError` naming the criterion and the missing field, not a TypeError
    deep in the gradient code; magnitude and random need nothing."""
    from jackpot_jax.errors import ConfigError

    params = {"fc": {"kernel": jnp.arange(12.0).reshape(3, 4)}}
    inputs = jm.CriterionInputs(seed=0)
    for name, field in (("snip", "batches"), ("grasp", "balanced")):
        with pytest.raises(
            ConfigError, match=f"criterion '{name}' reads data: it needs CriterionInputs.{field}"
        ):
            jm.CRITERIA[name](params, inputs)
    np.testing.assert_array_equal(
        jm.CRITERIA["magnitude"](params, inputs)["fc"]["kernel"], np.arange(12.0).reshape(3, 4)
    )
    assert jm.CRITERIA.tags("snip") == {"needs_data": True}
    assert set(jm.WARMUPS) == {*jm.CRITERIA, "kaiming"}
    with pytest.raises(ConfigError, match="criterion='nope' is not known; expected one of"):
        jm.CRITERIA["nope"]


# --- found by the mutation sample at 40ec643 ---------------------------------------------------


def test_default_filter_reads_the_last_path_component_at_any_depth():
    """The default prunable filter chooses leaves *named* ``kernel`` (the last '/'-joined
    component) with at least 2 dims, however deep the module nesting."""
    params = {
        "layer1_0": {"conv1": {"kernel": np.ones((3, 3, 4, 4))}, "bn1": {"scale": np.ones(4)}},
        "kernel": {"bias": np.ones(4)},  # a module named 'kernel': its bias is no kernel
        "fc": {"kernel": np.ones((4, 2)), "bias": np.ones(2)},
        "classifier": {"kernel": np.ones((2, 3))},
    }
    assert jm.prunable_paths(params, jm.make_filter()) == ["fc/kernel", "layer1_0/conv1/kernel"]


def test_satisfies_pattern_groups_along_the_input_axis_of_a_conv_kernel():
    """For an HWIO kernel the groups of ``m`` run along axis -2 (input channels) within each
    (h, w, out) position: a mask that is 2:4 that way passes, and one that is 2:4 only along
    another axis fails."""
    pattern = jm.NMPattern(2, 4)
    good = np.zeros((2, 3, 8, 5), np.float32)
    good[:, :, 0::4, :] = 1  # inputs 0 and 1 of each group of 4, at every position
    good[:, :, 1::4, :] = 1
    assert jm.satisfies_pattern(good, pattern)
    wrong = np.zeros((2, 4, 8, 5), np.float32)
    wrong[:, 0:2, :, :] = 1  # 2 of every 4 along axis 1, all inputs kept there
    assert not jm.satisfies_pattern(wrong, pattern)
    bad = good.copy()
    bad[1, 2, 0, 4] = 0  # one group with a single kept weight
    assert not jm.satisfies_pattern(bad, pattern)
