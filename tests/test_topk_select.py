"""jackpot_jax.kernels.native.topk_select: the C++ radix-select top-k mask, against numpy's stable sort."""

import os
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pipeline_helpers import python_script
from test_sparsity import reference_topk

from jackpot_jax import kernels
from jackpot_jax import method as jm
from jackpot_jax.kernels import native
from jackpot_jax.kernels.native import topk_select

needs_select = pytest.mark.skipif(
    jax.default_backend() != "cpu" or not topk_select.available(),
    reason=f"native top-k select: {topk_select.unavailable_reason() or 'CPU only'}",
)


@pytest.mark.skipif(native.compiler() is None, reason="no C++ compiler")
def test_available_with_a_compiler():
    # With a compiler present, a failed build must fail here, not skip.
    assert topk_select.available(), topk_select.unavailable_reason()


def _scores(kind, n, rng):
    if kind == "normal":
        return rng.normal(size=n).astype(np.float32)
    if kind == "two_level":  # the search's initial scores: thousands of exact ties
        return np.where(rng.random(n) < 0.1, 1.0, 0.95).astype(np.float32)
    if kind == "integers":  # ties everywhere, negatives
        return rng.integers(-3, 3, size=n).astype(np.float32)
    if kind == "special":  # NaN (below every number), infinities, signed zeros
        return rng.choice([1.0, 0.5, -0.0, 0.0, np.nan, np.inf, -np.inf], size=n).astype(np.float32)
    raise ValueError(kind)


# Sizes on both sides of the handler's small-array path (2**14 scores: a selection among all
# keys) and the histogram path (a 16-bit histogram, then a selection within one bucket).
@needs_select
@pytest.mark.parametrize("n", [1, 2, 5, 1000, 2**14, 2**14 + 1, 70_001, 300_000])
@pytest.mark.parametrize("kind", ["normal", "two_level", "integers", "special"])
def test_matches_the_stable_sort_reference(n, kind):
    rng = np.random.default_rng(n + len(kind))
    x = _scores(kind, n, rng)
    fn = jax.jit(topk_select.topk_mask, static_argnums=1)
    keeps = {0, 1, n // 2, n - 1, n, int(rng.integers(0, n + 1))}
    if kind == "two_level":  # ties straddling the cut, and exactly the ties' count
        keeps |= {int((x == 1.0).sum()), int((x == 1.0).sum()) + 17}
    for keep in sorted(k for k in keeps if 0 <= k <= n):
        m = fn(x, keep)
        assert m.dtype == jnp.bool_ and m.shape == x.shape
        np.testing.assert_array_equal(
            np.asarray(m), reference_topk(x, keep).astype(bool), err_msg=f"keep={keep}"
        )


@needs_select
@pytest.mark.parametrize("n", [1, 3, 1000, 2**14 + 1, 100_000])
def test_kth_largest_key_matches_a_sort(n):
    # The swap rule's threshold, with a traced k: the k-th largest key (repeats counted).
    rng = np.random.default_rng(n)
    for keys in (
        rng.integers(0, 2**32, size=n, dtype=np.uint32),
        rng.integers(0, 5, size=n).astype(np.uint32) << 30,  # many repeats
        np.where(rng.random(n) < 0.5, 0, rng.integers(1, 2**32, size=n, dtype=np.uint32)).astype(
            np.uint32
        ),
    ):
        fn = jax.jit(topk_select.kth_largest_key)
        expected = np.sort(keys)[::-1]
        for k in sorted({1, n, (n + 1) // 2, int(rng.integers(1, n + 1))}):
            got = fn(keys, jnp.int32(k))
            assert got.dtype == jnp.uint32 and got.shape == ()
            assert int(got) == int(expected[k - 1]), (n, k)
    with pytest.raises(ValueError, match=r"keys of dtype float32 and shape \(3,\); expected"):
        topk_select.kth_largest_key(jnp.ones(3), 1)
    # A traced k outside [1, size] cannot be checked in Python: the handler refuses it.
    for bad in (0, 4):
        with pytest.raises(Exception, match=r"k is outside \[1, size\]"):
            jax.block_until_ready(
                jax.jit(topk_select.kth_largest_key)(
                    jnp.arange(3, dtype=jnp.uint32), jnp.int32(bad)
                )
            )


@needs_select
def test_the_swap_rule_uses_it(monkeypatch, compute):
    hlo = (
        jax.jit(lambda s, m: jm.swap_masks(s, m, {"w": 3}, 0.5))
        .lower({"w": jnp.arange(8.0)}, {"w": jnp.ones(8)})
        .as_text()
    )
    assert topk_select.KTH_TARGET in hlo
    compute(mask_layout="per_layer")
    hlo = (
        jax.jit(lambda s, m: jm.swap_masks(s, m, {"w": 3}, 0.5))
        .lower({"w": jnp.arange(8.0)}, {"w": jnp.ones(8)})
        .as_text()
    )
    assert topk_select.KTH_TARGET not in hlo


@needs_select
def test_shapes_dtypes_and_bad_keep():
    x = jnp.arange(24.0).reshape(2, 3, 4)
    np.testing.assert_array_equal(topk_select.topk_mask(x, 5), np.arange(24).reshape(2, 3, 4) >= 19)
    # bfloat16 scores are ranked as float32, as sparsity.topk_mask does.
    xb = jnp.asarray([0.5, 3.0, -1.0, 3.0], jnp.bfloat16)
    np.testing.assert_array_equal(topk_select.topk_mask(xb, 2), [False, True, False, True])
    assert topk_select.topk_mask(jnp.zeros((0, 3)), 0).shape == (0, 3)
    with pytest.raises(
        ValueError,
        match=r"keep=25 is outside \[0, 24\] for scores of shape "
        r"\(2, 3, 4\)",
    ):
        topk_select.topk_mask(x, 25)


@needs_select
def test_under_vmap_each_row_alone():
    x = np.random.default_rng(1).integers(0, 4, size=(3, 50)).astype(np.float32)
    m = jax.vmap(lambda row: topk_select.topk_mask(row, 20))(jnp.asarray(x))
    np.testing.assert_array_equal(m, np.stack([reference_topk(r, 20) for r in x]).astype(bool))


@needs_select
def test_straight_through_gradient_is_the_identity():
    s = jnp.asarray(np.random.default_rng(2).normal(size=(40, 30)), jnp.float32)
    w = jnp.asarray(np.random.default_rng(3).normal(size=(40, 30)), jnp.float32)
    grad = jax.grad(lambda s: jnp.sum(jm.ste_mask(s, 300, use_abs=False) * w))(s)
    np.testing.assert_array_equal(grad, w)  # d(mask)/d(scores) = identity
    grad = jax.grad(lambda s: jnp.sum(jm.ste_mask(s, 300) * w))(s)
    np.testing.assert_array_equal(grad, w * jnp.sign(s))  # ranking |scores|
    assert kernels.options.mask_layout() == "native"


@needs_select
def test_search_step_is_the_same_with_either_mask(monkeypatch, compute):
    # One step of the CLI's search step (engine.make_train_step) on LeNet-5 (layers of 500,
    # 25k and 400k weights: both of the handler's paths) with the native select and with the
    # counting search: the same masks, so bit-identical scores and loss.
    from test_ops import _run_search_step

    out = {}
    for layout in ("per_layer", "native"):
        compute(mask_layout=layout)
        _, new, metrics = _run_search_step("lenet5", "explicit", "float32")
        out[layout] = (new.params, metrics["loss"])
    (a, loss_a), (b, loss_b) = out["per_layer"], out["native"]
    assert float(loss_a) == float(loss_b)
    for leaf_a, leaf_b in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(leaf_a, leaf_b)


@needs_select
def test_auto_picks_it_on_the_cpu_and_says_so(monkeypatch, compute):
    assert kernels.options.mask_layout() == "native"
    assert kernels.describe_masks() == "masks: native radix select per layer (cpu)"
    compute(mask_layout="per_layer")
    assert kernels.describe_masks() == "masks: 32-pass counting search per layer (cpu)"
    compute(mask_layout="together")
    assert kernels.describe_masks() == (
        f"masks: radix search, {kernels.ComputeOptions().radix_bits} bits a pass, all layers together (cpu)"
    )
    # A jitted masks function traced with "native" has the custom call in its HLO.
    compute(mask_layout="native")
    hlo = (
        jax.jit(lambda s: jm.masks_from_scores(s, {"a": 3}))
        .lower({"a": jnp.ones((4, 5))})
        .as_text()
    )
    assert topk_select.TARGET in hlo


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU's mask layouts")
def test_opt_out_falls_back_to_the_counting_search(tmp_path):
    # JACKPOT_JAX_TOPK_SELECT=0 chooses 'auto' = the counting search, and the handler is not
    # even built (an empty cache stays without it); mask_layout='native' still beats it
    # (tests/test_compute_options.py).
    proc = python_script(
        "import jax, jax.numpy as jnp\nfrom jackpot_jax import kernels, method as jm\n"
        "print(kernels.options.mask_layout(), '|', kernels.describe_masks())\n"
        "jax.jit(lambda s: jm.masks_from_scores(s, {'a': 3}))({'a': jnp.ones((4, 5))})\n",
        env_update={"JACKPOT_JAX_TOPK_SELECT": "0", "XDG_CACHE_HOME": str(tmp_path / "cache")},
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        "per_layer | masks: 32-pass counting search per layer "
        "(cpu; native: JACKPOT_JAX_TOPK_SELECT=0 (ComputeOptions.mask_layout='native' "
        "overrides it))"
    ) in proc.stdout
    built = [f for _, _, files in os.walk(tmp_path) for f in files if "topk_select" in f]
    assert built == [], built


@needs_select
def test_several_devices_fall_back_to_the_counting_search():
    # With two CPU devices the handler loads, but a custom call without a sharding rule would
    # see one device's shard: 'auto' must pick the counting search there, and say why.
    proc = python_script(
        "import os\n"
        "os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=2'\n"
        "import jax\n"
        "from jackpot_jax import kernels\n"
        "from jackpot_jax.kernels.native import topk_select\n"
        "print(jax.device_count(), topk_select.available(), kernels.options.mask_layout())\n"
        "print(kernels.describe_masks())\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].split() == ["2", "True", "per_layer"]
    assert proc.stdout.splitlines()[1] == (
        "masks: 32-pass counting search per layer (cpu; native: used with one device only (2 here))"
    )


@needs_select
def test_concurrent_calls_from_several_threads():
    # XLA calls the handler from any of its threads, several at once (the scratch buffers are
    # per thread): several layers' masks in one jitted function, called from 4 Python threads.
    rng = np.random.default_rng(4)
    xs = [
        _scores(kind, n, rng)
        for kind, n in [
            ("normal", 90_000),
            ("two_level", 40_000),
            ("integers", 20_000),
            ("normal", 500),
        ]
    ]
    keeps = [9_000, 4_321, 10_000, 50]
    fn = jax.jit(lambda xs: [topk_select.topk_mask(x, k) for x, k in zip(xs, keeps)])
    expected = [reference_topk(x, k).astype(bool) for x, k in zip(xs, keeps)]
    results, errors = [], []

    def work():
        try:
            for _ in range(3):
                results.append([np.asarray(m) for m in fn(xs)])
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 12
    for masks in results:
        for m, e in zip(masks, expected):
            np.testing.assert_array_equal(m, e)
