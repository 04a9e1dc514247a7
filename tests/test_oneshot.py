"""One-shot baselines (issue 30, item 4): magnitude, Wanda and SparseGPT on one layer, against
numpy references written from the papers' formulas (loops, float64), hand-computed cases, the
calibration statistics, and every bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jackpot_jax import method as jm
from jackpot_jax.errors import ConfigError, InputError
from jackpot_jax.method import oneshot

# ---------------------------------------------------------------------------------------------
# References (numpy, loops, float64), written from the formulas
# ---------------------------------------------------------------------------------------------


def ref_per_output(metric, sparsity=None, nm=None):
    """Kept-mask of an (in, out) importance, per output column: the lowest int(in * sparsity)
    pruned, or the m - n lowest of every group of m; ties: lower index pruned first."""
    metric = np.asarray(metric, np.float64)
    n_in, n_out = metric.shape
    mask = np.ones(metric.shape, np.float32)
    for o in range(n_out):
        if nm is None:
            order = np.argsort(metric[:, o], kind="stable")
            mask[order[: int(n_in * sparsity)], o] = 0
        else:
            n, m = nm
            for g in range(0, n_in, m):
                order = np.argsort(metric[g : g + m, o], kind="stable")
                mask[g + order[: m - n], o] = 0
    return mask


def ref_wanda(kernel, x, sparsity=None, nm=None):
    x = np.asarray(x, np.float64)
    norms = np.array([np.sqrt(np.sum(x[:, j] ** 2)) for j in range(x.shape[1])])
    return ref_per_output(np.abs(np.asarray(kernel, np.float64)) * norms[:, None], sparsity, nm)


def ref_inverse_factor(x, percdamp):
    """Dead inputs, and the upper Cholesky factor U (U^T U = H^-1) of the dampened Hessian."""
    x = np.asarray(x, np.float64)
    h = 2.0 / x.shape[0] * x.T @ x
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    h += percdamp * np.mean(np.diag(h)) * np.eye(h.shape[0])
    return dead, np.linalg.cholesky(np.linalg.inv(h)).T


def ref_sparsegpt(kernel, x, sparsity=None, nm=None, blocksize=128, percdamp=0.01):
    """SparseGPT in torch's (out, in) layout with every update applied at once to all later
    columns (the unbatched OBS form; the authors' lazy block updates give the same result).
    The block only decides when an unstructured mask is chosen."""
    dead, u = ref_inverse_factor(x, percdamp)
    w = np.asarray(kernel, np.float64).T.copy()
    w[:, dead] = 0.0
    rows, cols = w.shape
    pruned = np.zeros(w.shape, bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        if nm is None:
            measure = (w[:, i1:i2] ** 2 / np.diag(u)[None, i1:i2] ** 2).ravel()
            chosen = np.argsort(measure, kind="stable")[: int(measure.size * sparsity)]
            block = np.zeros(measure.size, bool)
            block[chosen] = True
            pruned[:, i1:i2] = block.reshape(rows, i2 - i1)
        for i in range(i1, i2):
            if nm is not None and (i - i1) % nm[1] == 0:
                n, m = nm
                for r in range(rows):
                    measure = w[r, i : i + m] ** 2 / np.diag(u)[i : i + m] ** 2
                    pruned[r, i + np.argsort(measure, kind="stable")[: m - n]] = True
            q = np.where(pruned[:, i], 0.0, w[:, i])
            err = (w[:, i] - q) / u[i, i]
            w[:, i:] -= np.outer(err, u[i, i:])
            w[:, i] = q
    return (~pruned).T.astype(np.float32), w.T


def recon_error(x, kernel, new_kernel):
    """||X W - X W_hat||_F^2 in float64."""
    x = np.asarray(x, np.float64)
    return float(np.sum((x @ np.asarray(kernel, np.float64) - x @ np.asarray(new_kernel)) ** 2))


def layer(n_in, n_out, tokens, dead=(), seed=0):
    """A random layer and correlated calibration inputs (a shared component, as real
    activations have), some inputs dead (zero over every token)."""
    rng = np.random.default_rng(seed)
    kernel = rng.normal(size=(n_in, n_out)).astype(np.float32)
    mix = rng.normal(size=(n_in, n_in)) * 0.3 + np.eye(n_in)
    x = (rng.normal(size=(tokens, n_in)) @ mix * rng.uniform(0.2, 3.0, n_in)).astype(np.float32)
    x[:, list(dead)] = 0.0
    return kernel, x


# ---------------------------------------------------------------------------------------------
# Magnitude and Wanda
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,dead", [((40, 24), (3, 17)), ((24, 8), ())])
def test_wanda_and_magnitude_match_reference(shape, dead):
    kernel, x = layer(*shape, tokens=96, dead=dead, seed=shape[0])
    for budget in (dict(sparsity=0.5), dict(sparsity=0.3)):
        got = np.asarray(oneshot.wanda(kernel, x, **budget))
        np.testing.assert_array_equal(got, ref_wanda(kernel, x, budget["sparsity"]))
        keep = shape[0] - int(shape[0] * budget["sparsity"])
        assert np.all(got.sum(axis=0) == keep)  # exactly in - int(in * s) in every output
        got = np.asarray(oneshot.magnitude(kernel, **budget))
        np.testing.assert_array_equal(got, ref_per_output(np.abs(kernel), budget["sparsity"]))
    for pattern, nm in [("2:4", (2, 4)), (jm.NMPattern(1, 4), (1, 4)), ("4:8", (4, 8))]:
        got = np.asarray(oneshot.wanda(kernel, x, pattern=pattern))
        np.testing.assert_array_equal(got, ref_wanda(kernel, x, nm=nm))
        assert jm.satisfies_pattern(got, jm.NMPattern(*nm))
        got = np.asarray(oneshot.magnitude(kernel, pattern=pattern))
        np.testing.assert_array_equal(got, ref_per_output(np.abs(kernel), nm=nm))
        assert jm.satisfies_pattern(got, jm.NMPattern(*nm))
    # Dead inputs have importance 0 and go first.
    got = np.asarray(oneshot.wanda(kernel, x, sparsity=0.5))
    assert np.all(got[list(dead)] == 0)


def test_wanda_hand_computed_input_norms_overturn_magnitude():
    # Input 0 has the larger weight but a tiny activation: |1.0| * 0.1 < |0.5| * 1.0.
    kernel = np.array([[1.0, 0.2], [0.5, 0.3]], np.float32)
    x = np.array([[0.1, 1.0]], np.float32)
    np.testing.assert_array_equal(oneshot.wanda(kernel, x, sparsity=0.5), [[0, 0], [1, 1]])
    np.testing.assert_array_equal(oneshot.magnitude(kernel, sparsity=0.5), [[1, 0], [0, 1]])
    # ||X_j||_2 over tokens, not a mean of |x|: norms (3, 4) make 0.9*3 = 2.7 > 0.6*4 = 2.4.
    kernel = np.array([[0.9], [0.6]], np.float32)
    x = np.array([[3.0, 0.0], [0.0, 4.0]], np.float32)
    np.testing.assert_array_equal(oneshot.wanda(kernel, x, sparsity=0.5), [[1], [0]])


def test_tie_rule_lower_index_pruned_first():
    # Wanda's stable ascending sort: among equal importances the lower input index goes first.
    kernel = np.ones((8, 2), np.float32)
    x = np.ones((3, 8), np.float32)
    want = np.repeat([[0], [0], [0], [1], [1], [1], [1], [1]], 2, axis=1)
    np.testing.assert_array_equal(oneshot.magnitude(kernel, sparsity=0.375), want)
    np.testing.assert_array_equal(oneshot.wanda(kernel, x, sparsity=0.375), want)
    want = np.repeat([[0], [0], [1], [1], [0], [0], [1], [1]], 2, axis=1)
    np.testing.assert_array_equal(oneshot.wanda(kernel, x, pattern="2:4"), want)
    np.testing.assert_array_equal(oneshot.magnitude(kernel, pattern="2:4"), want)
    np.testing.assert_array_equal(oneshot.wanda(kernel, x, sparsity=0.0), np.ones((8, 2)))


def test_masks_keep_the_kernel_dtype_and_wanda_runs_under_jit():
    kernel, x = layer(16, 4, tokens=32, seed=1)
    mask = oneshot.magnitude(jnp.asarray(kernel, jnp.bfloat16), sparsity=0.5)
    assert mask.dtype == jnp.bfloat16 and mask.shape == (16, 4)
    jitted = jax.jit(lambda k, x: oneshot.wanda(k, x, pattern="2:4"))(kernel, x)
    np.testing.assert_array_equal(jitted, oneshot.wanda(kernel, x, pattern="2:4"))


# ---------------------------------------------------------------------------------------------
# SparseGPT
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape,dead,blocksize,budget,nm",
    [
        ((40, 24), (3, 17), 16, dict(sparsity=0.5), None),  # blocks 16, 16, 8
        ((24, 8), (), 128, dict(sparsity=0.6), None),  # one block of all 24 inputs
        ((40, 24), (5,), 16, dict(pattern="2:4"), (2, 4)),
    ],
)
def test_sparsegpt_matches_reference(shape, dead, blocksize, budget, nm):
    kernel, x = layer(*shape, tokens=4 * shape[0], dead=dead, seed=shape[1])
    mask, new = oneshot.sparsegpt(kernel, x, blocksize=blocksize, **budget)
    mask, new = np.asarray(mask), np.asarray(new)
    ref_mask, ref_new = ref_sparsegpt(kernel, x, budget.get("sparsity"), nm, blocksize)
    # float32 here, float64 in the reference: on this well-separated data no decision flips.
    np.testing.assert_array_equal(mask, ref_mask)
    np.testing.assert_allclose(new, ref_new, rtol=1e-3, atol=1e-4)
    assert np.all(new[mask == 0] == 0) and np.all(new[list(dead)] == 0)
    ours, theirs = recon_error(x, kernel, new), recon_error(x, kernel, ref_new)
    assert abs(ours - theirs) <= 1e-4 * theirs
    # The update earns its keep: below the same mask without it, and below magnitude and
    # Wanda at the same sparsity.
    assert ours < recon_error(x, kernel, kernel * mask)
    magnitude = oneshot.magnitude(kernel, **budget)
    assert ours < recon_error(x, kernel, kernel * np.asarray(magnitude))
    assert ours < recon_error(x, kernel, kernel * np.asarray(oneshot.wanda(kernel, x, **budget)))
    if nm is None:  # exactly int(out * size * s) pruned in every block
        sizes = [min(blocksize, shape[0] - i) for i in range(0, shape[0], blocksize)]
        assert (mask == 0).sum() == sum(int(shape[1] * s * budget["sparsity"]) for s in sizes)
    else:
        assert jm.satisfies_pattern(mask, jm.NMPattern(*nm))
    # Mask-only: the same mask, the kernel unchanged.
    mask_only, same = oneshot.sparsegpt(kernel, x, blocksize=blocksize, update=False, **budget)
    np.testing.assert_array_equal(mask_only, mask)
    np.testing.assert_array_equal(same, kernel)


def test_sparsegpt_update_is_the_closed_form_obs_solution_for_its_mask():
    """For a fixed mask, sequential OBS leaves W_hat = W - E U with E zero off the pruned set and
    W_hat zero on it, so per output E_P = W_P U_PP^-1: one linear solve, no loop, no blocks."""
    kernel, x = layer(40, 24, tokens=160, dead=(3, 17), seed=24)
    mask, new = oneshot.sparsegpt(kernel, x, sparsity=0.5, blocksize=16)
    dead, u = ref_inverse_factor(x, 0.01)
    w = kernel.T.astype(np.float64)
    w[:, dead] = 0.0
    want = np.empty_like(w)
    for r in range(w.shape[0]):
        p = np.flatnonzero(np.asarray(mask)[:, r] == 0)
        e = np.linalg.solve(u[np.ix_(p, p)].T, w[r, p])  # e U_PP = w_P
        want[r] = w[r] - e @ u[p]
    np.testing.assert_allclose(np.asarray(new), want.T, rtol=1e-3, atol=1e-4)


def test_sparsegpt_hand_computed_two_inputs():
    """X = [[1, 1], [1, 0], [0, 1]]: X^T X = [[2, 1], [1, 2]], H = (2/3) X^T X,
    H^-1 = [[1, -1/2], [-1/2, 1]], U = [[1, -1/2], [0, sqrt(3)/2]]. Measures w_j^2 / U_jj^2:
    1^2 / 1 = 1 for input 0, 0.9^2 / 0.75 = 1.08 for input 1, so input 0 goes although magnitude
    would prune input 1; its error 1 / U_00 = 1 moves w_1 by -1 * U_01 = +1/2: 0.9 -> 1.4, the
    least-squares best 0.9 + 1 * (x_0 . x_1) / (x_1 . x_1)."""
    x = np.array([[1, 1], [1, 0], [0, 1]], np.float32)
    kernel = np.array([[1.0], [0.9]], np.float32)
    mask, new = oneshot.sparsegpt(kernel, x, sparsity=0.5, blocksize=2, percdamp=0.0)
    np.testing.assert_array_equal(mask, [[0], [1]])
    np.testing.assert_allclose(new, [[0.0], [1.4]], rtol=1e-6)
    np.testing.assert_array_equal(oneshot.magnitude(kernel, sparsity=0.5), [[1], [0]])
    # Sparsity 0 prunes nothing (the authors' `tmp <= sort(tmp)[0]` would prune one per block).
    mask, new = oneshot.sparsegpt(kernel, x, sparsity=0.0, blocksize=2, percdamp=0.0)
    np.testing.assert_array_equal(mask, [[1], [1]])
    np.testing.assert_array_equal(new, kernel)


def test_sparsegpt_identity_hessian_is_blockwise_magnitude_without_update():
    """X = I: H is a multiple of I, U is diagonal, so no error moves and the mask is the lowest
    w^2 over each whole block (all outputs): blocks of inputs {0, 1} and {2, 3} of the torch
    weight [[1, 4, -2, 0.1], [-5, 0.5, 3, 6]] each lose their two smallest entries."""
    kernel = np.array([[1.0, -5.0], [4.0, 0.5], [-2.0, 3.0], [0.1, 6.0]], np.float32)
    x = np.eye(4, dtype=np.float32)
    mask, new = oneshot.sparsegpt(kernel, x, sparsity=0.5, blocksize=2)
    want = np.array([[0, 1], [1, 0], [0, 1], [0, 1]], np.float32)
    np.testing.assert_array_equal(mask, want)
    np.testing.assert_array_equal(new, kernel * want)  # exactly: nothing propagated
    # Equal measures: the lower flat index of the block in torch's (out, in) order goes first,
    # so the first output loses both inputs of each block.
    mask, _ = oneshot.sparsegpt(np.ones((4, 2), np.float32), x, sparsity=0.5, blocksize=2)
    np.testing.assert_array_equal(mask, [[0, 1], [0, 1], [0, 1], [0, 1]])


# ---------------------------------------------------------------------------------------------
# Calibration statistics
# ---------------------------------------------------------------------------------------------


def test_stats_accumulate_over_chunks_and_from_stats_match():
    kernel, x = layer(40, 24, tokens=160, dead=(3, 17), seed=24)
    whole = oneshot.input_stats(x)
    stats = None
    for chunk in np.split(x, [7, 50, 51]):  # uneven chunks, one of a single token
        stats = oneshot.update_stats(stats, chunk)
    assert int(stats.count) == int(whole.count) == 160
    np.testing.assert_allclose(stats.sq_sum, whole.sq_sum, rtol=1e-5)
    np.testing.assert_allclose(stats.gram, whole.gram, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(whole.sq_sum, np.sum(x.astype(np.float64) ** 2, 0), rtol=1e-5)
    np.testing.assert_allclose(whole.gram, x.T.astype(np.float64) @ x, rtol=1e-4, atol=1e-3)
    # (batch, seq, in) inputs are flattened to tokens.
    np.testing.assert_array_equal(oneshot.input_stats(x.reshape(4, 40, 40)).gram, whole.gram)
    # Wanda's statistics stay (in,): no Gram matrix.
    light = oneshot.input_stats(x, gram=False)
    assert light.gram is None and light.sq_sum.shape == (40,)
    np.testing.assert_array_equal(
        oneshot.wanda_from_stats(kernel, light, sparsity=0.5),
        oneshot.wanda(kernel, x, sparsity=0.5),
    )
    np.testing.assert_array_equal(
        oneshot.wanda_from_stats(kernel, stats, pattern="2:4"),
        oneshot.wanda(kernel, x, pattern="2:4"),
    )
    mask, new = oneshot.sparsegpt_from_stats(kernel, stats, sparsity=0.5, blocksize=16)
    want_mask, want_new = oneshot.sparsegpt(kernel, x, sparsity=0.5, blocksize=16)
    np.testing.assert_array_equal(mask, want_mask)
    np.testing.assert_allclose(new, want_new, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------


def test_budget_errors():
    kernel = np.ones((8, 3), np.float32)
    with pytest.raises(ConfigError, match=r"sparsity=0\.5, pattern=.*2:4.*give exactly one"):
        oneshot.magnitude(kernel, sparsity=0.5, pattern="2:4")
    with pytest.raises(ConfigError, match=r"sparsity=None, pattern=None"):
        oneshot.magnitude(kernel)
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match=rf"sparsity={bad}; expected a fraction in \[0, 1\)"):
            oneshot.wanda(kernel, np.ones((2, 8)), sparsity=bad)
    with pytest.raises(ConfigError, match=r"sparsity=True"):
        oneshot.magnitude(kernel, sparsity=True)
    with pytest.raises(ConfigError, match=r"pattern='2-4'"):
        oneshot.magnitude(kernel, pattern="2-4")
    with pytest.raises(ConfigError, match=r"blocksize=6 with the 2:4 pattern"):
        oneshot.sparsegpt(kernel, np.ones((4, 8)), pattern="2:4", blocksize=6)
    with pytest.raises(ConfigError, match=r"blocksize=0"):
        oneshot.sparsegpt(kernel, np.ones((4, 8)), sparsity=0.5, blocksize=0)
    with pytest.raises(ConfigError, match=r"percdamp=-0\.1"):
        oneshot.sparsegpt(kernel, np.ones((4, 8)), sparsity=0.5, percdamp=-0.1)


def test_pattern_that_does_not_fit_names_shape_pattern_and_what_fits():
    kernel = np.ones((10, 3), np.float32)
    x = np.ones((4, 10), np.float32)
    for call in (
        lambda: oneshot.magnitude(kernel, pattern="2:4"),
        lambda: oneshot.wanda(kernel, x, pattern="2:4"),
        lambda: oneshot.sparsegpt(kernel, x, pattern=jm.NMPattern(2, 4)),
    ):
        with pytest.raises(ConfigError, match=r"2:4.*shape \(10, 3\).*10 inputs.*\[2, 5, 10\]"):
            call()


def test_input_errors():
    kernel = np.ones((8, 3), np.float32)
    with pytest.raises(InputError, match=r"inputs of shape \(5, 7\).*8 inputs"):
        oneshot.wanda(kernel, np.ones((5, 7)), sparsity=0.5)
    with pytest.raises(InputError, match=r"inputs of shape \(2, 5, 7\).*8 inputs"):
        oneshot.sparsegpt(kernel, np.ones((2, 5, 7)), sparsity=0.5)
    with pytest.raises(InputError, match=r"inputs of shape \(8,\)"):
        oneshot.wanda(kernel, np.ones(8), sparsity=0.5)
    with pytest.raises(InputError, match=r"kernel of shape \(8,\)"):
        oneshot.magnitude(np.ones(8), sparsity=0.5)
    with pytest.raises(InputError, match=r"7 features .* 8 inputs"):
        oneshot.wanda_from_stats(kernel, oneshot.input_stats(np.ones((3, 7))), sparsity=0.5)
    with pytest.raises(InputError, match=r"0 rows"):
        oneshot.wanda(kernel, np.ones((0, 8)), sparsity=0.5)
    with pytest.raises(InputError, match=r"gram=True"):
        oneshot.sparsegpt_from_stats(
            kernel, oneshot.input_stats(np.ones((3, 8)), gram=False), sparsity=0.5
        )
    with pytest.raises(InputError, match=r"with and without a Gram"):
        oneshot.add_stats(
            oneshot.input_stats(np.ones((3, 8))), oneshot.input_stats(np.ones((3, 8)), gram=False)
        )
    with pytest.raises(InputError, match=r"8 and 7 inputs"):
        oneshot.add_stats(
            oneshot.input_stats(np.ones((3, 8))), oneshot.input_stats(np.ones((3, 7)))
        )
    # An indefinite "Hessian" (eigenvalues 3 and -1; damping 0.02 cannot lift it).
    bad = oneshot.InputStats(
        jnp.array([1.0, 1.0]), jnp.array([[1.0, 2.0], [2.0, 1.0]]), jnp.array(2, jnp.int32)
    )
    with pytest.raises(
        InputError, match=r"shape \(2, 1\) is not positive definite.*percdamp=0\.01"
    ):
        oneshot.sparsegpt_from_stats(np.ones((2, 1), np.float32), bad, sparsity=0.5)
