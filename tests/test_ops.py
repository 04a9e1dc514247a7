"""The explicit-gradient convolution and max-pool (`jackpot_jax.kernels`) against XLA's own, the
search step with and without them, and the bfloat16 training step."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

import jackpot_jax
from jackpot_jax import core, kernels, models
from jackpot_jax import method as jm

DN = ("NHWC", "HWIO", "NHWC")


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30)


def _value_and_grads(fn, x, w, ct):
    y, vjp = jax.vjp(fn, x, w)
    return (y,) + vjp(ct)


# (kernel, stride, padding, batch, input channels): each 1x1 and 5x5 kernel/stride/padding
# with one batch size (both covered) and 1, 4 or 40 input channels (the im2col weight gradient
# for every kernel but 5x5x4 and 40 channels, which take XLA's weight-gradient convolution);
# then the ResNets' main shape, 3x3 with padding 1 at stride 1 and 2, on 3 input channels
# (a first layer: im2col) and 16 (XLA's weight gradient).
P1 = ((1, 1), (1, 1))
CASES = [
    (kernel, stride, padding, (1, 3)[i % 2], (1, 4, 40)[i % 3])
    for i, (kernel, stride, padding) in enumerate(
        (kernel, stride, padding)
        for kernel in (1, 5)
        for stride in (1, 2)
        for padding in ("SAME", "VALID", ((2, 1), (0, 2)))
    )
] + [(3, 1, P1, 3, 3), (3, 2, P1, 2, 16), (3, 1, P1, 1, 16), (3, 2, P1, 3, 3)]

# The explicit path with oneDNN's convolutions ('auto', where it is installed) and without.
ONEDNN_MODES = [
    "off",
    pytest.param(
        "auto",
        marks=pytest.mark.skipif(not kernels.onednn_used(), reason=kernels.describe_convolutions()),
    ),
]


@pytest.mark.parametrize("onednn_mode", ONEDNN_MODES)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_explicit_conv_equals_lax_in_value_and_both_gradients(case, onednn_mode):
    kernel, stride, padding, batch, cin = CASES[case]
    rng = np.random.default_rng(case)
    cout = int(rng.integers(1, 7))
    h, w = int(rng.integers(kernel + 1, 12)), int(rng.integers(kernel + 1, 12))
    x = jnp.asarray(rng.standard_normal((batch, h, w, cin)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((kernel, kernel, cin, cout)), jnp.float32)

    def ref(x, k):
        return lax.conv_general_dilated(x, k, (stride, stride), padding, dimension_numbers=DN)

    def ours(x, k):
        with kernels.use(conv_impl="explicit"), kernels.use(onednn=onednn_mode):
            return kernels.conv_general_dilated(
                x, k, (stride, stride), padding, dimension_numbers=DN
            )

    ct = jnp.asarray(rng.standard_normal(ref(x, k).shape), jnp.float32)
    expected = _value_and_grads(ref, x, k, ct)
    got = _value_and_grads(jax.jit(ours), x, k, ct)
    for name, a, b in zip(("value", "input gradient", "weight gradient"), got, expected):
        assert a.shape == b.shape, name
        assert _rel(a, b) < 1e-5, (name, _rel(a, b))


@pytest.mark.parametrize("stride", [1, 2])
def test_weight_gradient_on_batch_chunks_equals_lax(monkeypatch, stride):
    # Thresholds lowered so this small layer (3x3x40 patches, batch 6) is split: 6 chunks
    # of one example at this chunk size.
    monkeypatch.setattr(kernels.conv, "WGRAD_SPLIT_BYTES", 0)
    monkeypatch.setattr(kernels.conv, "WGRAD_CHUNK_BYTES", 3 * 3 * 40 * 7 * 7 * 4)
    rng = np.random.default_rng(stride)
    x = jnp.asarray(rng.standard_normal((6, 13, 13, 40)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 3, 40, 5)), jnp.float32)
    pad = ((1, 1), (1, 1))

    def ref(x, k):
        return lax.conv_general_dilated(x, k, (stride, stride), pad, dimension_numbers=DN)

    def ours(x, k):  # XLA's weight gradient (the path without oneDNN) is the one chunked
        with kernels.use(conv_impl="explicit"), kernels.use(onednn="off"):
            return kernels.conv_general_dilated(x, k, (stride, stride), pad, dimension_numbers=DN)

    ct = jnp.asarray(rng.standard_normal(ref(x, k).shape), jnp.float32)
    hlo = jax.jit(lambda x, k, ct: jax.vjp(ours, x, k)[1](ct)).lower(x, k, ct).compile().as_text()
    # Only the cotangents are returned, so the forward convolution is dead code: what is left
    # is the input gradient's convolution and one weight-gradient convolution per chunk.
    assert hlo.count(" convolution(") == 7
    for a, b in zip(_value_and_grads(jax.jit(ours), x, k, ct), _value_and_grads(ref, x, k, ct)):
        assert _rel(a, b) < 1e-5


def test_flax_conv_layer_takes_the_explicit_path_and_keeps_its_params():
    layer = models.common.conv(4, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 7, 7, 3)), jnp.float32)
    params = layer.init(jax.random.key(0), x)
    assert jax.tree.map(np.shape, params) == {"params": {"kernel": (3, 3, 3, 4), "bias": (4,)}}
    # The explicit path defines no forward-mode rule: jvp fails there and works with 'xla',
    # which shows which implementation each switch value traces.
    with kernels.use(conv_impl="explicit"):
        with pytest.raises(TypeError, match="custom_vjp"):
            jax.jvp(lambda v: layer.apply(params, v), (x,), (x,))
    with kernels.use(conv_impl="xla"):
        jax.jvp(lambda v: layer.apply(params, v), (x,), (x,))


def test_max_pool_first_maximum_takes_the_gradient():
    x = jnp.asarray(
        [
            [1.0, 3.0, 2.0, 2.0, 9.0],
            [3.0, 0.0, 2.0, 2.0, 9.0],
            [5.0, 5.0, 0.0, -1.0, 9.0],
            [5.0, 5.0, -1.0, 0.0, 9.0],
        ]
    ).reshape(1, 4, 5, 1)
    # Row-major window order: the first of tied maxima gets the whole gradient (as XLA's
    # select_and_scatter); the fifth column is dropped by the 2x2 VALID windows.
    expected = np.array(
        [[0, 1, 1, 0, 0], [0, 0, 0, 0, 0], [1, 0, 1, 0, 0], [0, 0, 0, 0, 0]], np.float32
    ).reshape(1, 4, 5, 1)
    for impl in ("explicit", "xla"):
        with kernels.use(conv_impl=impl):
            y, vjp = jax.vjp(lambda v: kernels.max_pool(v, (2, 2), (2, 2)), x)
        np.testing.assert_array_equal(np.asarray(y).ravel(), [3, 2, 5, 0])
        np.testing.assert_array_equal(vjp(jnp.ones_like(y))[0], expected, err_msg=impl)


def test_max_pool_matches_flax_on_random_input():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.integers(-3, 3, (3, 9, 8, 4)), jnp.float32)  # many ties
    ref, ref_vjp = jax.vjp(lambda v: nn.max_pool(v, (2, 2), (2, 2)), x)
    with kernels.use(conv_impl="explicit"):
        got, vjp = jax.vjp(lambda v: kernels.max_pool(v, (2, 2), (2, 2)), x)
    ct = jnp.asarray(rng.standard_normal(ref.shape), jnp.float32)
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(vjp(ct)[0], ref_vjp(ct)[0])


def test_options_are_scoped_values():
    assert kernels.options.current() == kernels.ComputeOptions()
    assert kernels.options.conv_impl() == kernels.AUTO[jax.default_backend()]
    with kernels.use(conv_impl="xla") as opts:
        assert opts == kernels.ComputeOptions(conv_impl="xla")
        assert kernels.options.conv_impl() == "xla"
        with kernels.use(onednn="off"):  # nested: the other fields are kept
            assert kernels.options.current() == kernels.ComputeOptions(
                conv_impl="xla", onednn="off"
            )
    assert kernels.options.current() == kernels.ComputeOptions()
    assert hash(kernels.ComputeOptions()) == hash(kernels.ComputeOptions())
    with pytest.raises(ValueError, match="'cudnn'; expected one of"):
        kernels.ComputeOptions(conv_impl="cudnn")


@pytest.mark.parametrize("rows,channels", [(75, 4), (128, 16), (4096, 32), (6000, 48), (12, 5000)])
def test_channel_sums_equal_numpy(rows, channels):
    # Folded rows (4096 x 32 becomes one row of 128 x 32 partial sums), rows with few
    # factors of two (75, 6000), and more channels than SUM_WIDTH.
    x = np.random.default_rng(rows).standard_normal((rows, channels)).astype(np.float32)
    got = jax.jit(kernels.norm._channel_sums)(jnp.asarray(x))
    assert got.dtype == jnp.float32 and got.shape == (channels,)
    np.testing.assert_allclose(got, x.astype(np.float64).sum(axis=0), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    "shape,dtype",
    [((3, 5, 5, 4), "float32"), ((2, 8, 8, 16), "float32"), ((4, 3, 3, 8), "bfloat16")],
)
def test_explicit_batch_norm_equals_flax_in_value_gradients_and_running_stats(shape, dtype):
    """`models.common.BatchNorm` (channel sums as products) against Flax's `nn.BatchNorm`:
    output, the gradients for the input, scale and bias, and the updated running averages, in
    training mode (batch statistics) and evaluation mode (running averages)."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal(shape) * 3 + 1, dtype)
    c = shape[-1]
    variables = {
        "params": {
            "scale": jnp.asarray(rng.uniform(0.5, 2, c), jnp.float32),
            "bias": jnp.asarray(rng.standard_normal(c), jnp.float32),
        },
        "batch_stats": {
            "mean": jnp.asarray(rng.standard_normal(c), jnp.float32),
            "var": jnp.asarray(rng.uniform(0.5, 2, c), jnp.float32),
        },
    }
    ct = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    tol = 1e-5 if dtype == "float32" else 1e-2
    for train in (True, False):
        ours = models.common.BatchNorm(use_running_average=not train)
        flax_bn = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)

        def run(module):
            def f(x, params):
                return module.apply({**variables, "params": params}, x, mutable=["batch_stats"])

            y, pull, upd = jax.vjp(f, x, variables["params"], has_aux=True)
            return y, upd["batch_stats"], pull(ct.astype(y.dtype))

        (y, stats, (gx, gp)), (y0, stats0, (gx0, gp0)) = run(ours), run(flax_bn)
        assert y.dtype == y0.dtype and gx.dtype == gx0.dtype == x.dtype
        assert _rel(y, y0) < tol, _rel(y, y0)
        assert _rel(gx, gx0) < tol, _rel(gx, gx0)
        for k in ("scale", "bias"):
            assert _rel(gp[k], gp0[k]) < tol, (k, _rel(gp[k], gp0[k]))
        for k in ("mean", "var"):
            assert _rel(stats[k], stats0[k]) < tol, (k, _rel(stats[k], stats0[k]))
        if train:  # the running averages moved, by Flax's rule
            assert _rel(stats["mean"], variables["batch_stats"]["mean"]) > 1e-3


def test_batch_norm_follows_the_switch():
    with kernels.use(conv_impl="explicit"):
        assert isinstance(models.common.batch_norm(True, "bn"), models.common.BatchNorm)
    with kernels.use(conv_impl="xla"):
        assert type(models.common.batch_norm(True, "bn")) is nn.BatchNorm


NETS = {  # small networks: LeNet-5 (5x5 VALID convs, max-pool), ResNet-8 (strided 3x3, BN)
    "lenet5": (lambda: models.get_model("lenet5"), (28, 28, 1)),
    "resnet8": (lambda: models.cifar_resnet.CifarResNet(num_blocks=1), (8, 8, 3)),
}
_STEPS = {}


def _search_update(name, impl, compute_dtype="float32", onednn_mode="auto"):
    """Scores after one search step of `core.make_search_step` (SGD lr 1, no momentum):
    old - new is the score gradient. Cached: each (network, switches, dtype) compiles once."""
    key = (name, impl, compute_dtype, onednn_mode)
    if key not in _STEPS:
        with kernels.use(onednn=onednn_mode):
            _STEPS[key] = _run_search_step(name, impl, compute_dtype)
    return _STEPS[key]


def _search_step(name, impl, compute_dtype):
    """A jitted search step of `core.make_search_step` on network ``name`` and its inputs:
    (step, state, params, images, labels, scores)."""
    make, shape = NETS[name]
    module = make()
    variables = models.init_variables(module, jax.random.key(0), (1, *shape))
    params = variables["params"]
    budget = jm.keep_counts(params, 0.8)
    scores = jm.init_scores_from_mask(jm.criterion_mask(jm.magnitude_scores(params), budget))
    rng = np.random.default_rng(0)
    # Scores spread a little, so the gradient's sign(s) and the mask are not all ties.
    scores = jax.tree.map(lambda s: s + jnp.asarray(rng.uniform(0, 0.01, s.shape), s.dtype), scores)
    images = jnp.asarray(rng.standard_normal((4, *shape)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 10, 4), jnp.int32)
    tx = optax.sgd(1.0)
    with kernels.use(conv_impl=impl):
        step = core.make_search_step(
            module.apply,
            tx,
            budget,
            options=kernels.options.current().replace(compute_dtype=compute_dtype),
        )
    # The step donates its state: give it copies, the caller keeps ``scores``.
    state = core.SearchState.create(
        apply_fn=module.apply,
        params=jax.tree.map(jnp.copy, scores),
        tx=tx,
        frozen=params,
        batch_stats=variables.get("batch_stats"),
    )
    return step, state, params, images, labels, scores


def _run_search_step(name, impl, compute_dtype):
    """(scores before, state after, metrics) of one search step."""
    step, state, params, images, labels, scores = _search_step(name, impl, compute_dtype)
    new, metrics = step(state, images, labels)
    return scores, new, metrics


@pytest.mark.parametrize("onednn_mode", ONEDNN_MODES)
@pytest.mark.parametrize("name", list(NETS))
def test_search_step_score_gradients_agree_with_and_without_the_fast_path(name, onednn_mode):
    old, fast, _ = _search_update(name, "explicit", onednn_mode=onednn_mode)
    _, plain, _ = _search_update(name, "xla")
    g_fast = jax.tree.map(jnp.subtract, old, fast.params)
    g_plain = jax.tree.map(jnp.subtract, old, plain.params)
    for path, a in jm.flatten_paths(g_fast).items():
        b = jm.flatten_paths(g_plain)[path]
        assert np.max(np.abs(b)) > 0, path
        assert _rel(a, b) < 1e-5, (path, _rel(a, b))


def _equations(jaxpr):
    """Every equation of ``jaxpr`` and of the jaxprs nested in it (jit, custom_vjp, cond,
    loops)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if hasattr(sub, "eqns"):
                    yield from _equations(sub)
                elif hasattr(getattr(sub, "jaxpr", None), "eqns"):
                    yield from _equations(sub.jaxpr)


def _operand_dtypes(name, impl, compute_dtype):
    """{primitive: [operand dtypes of each equation]} for the convolutions and matrix
    products of the traced search step (forward and backward pass)."""
    with kernels.use(onednn="off"):  # oneDNN's float32 convolutions are custom calls
        step, state, params, images, labels, _ = _search_step(name, impl, compute_dtype)
        jaxpr = jax.make_jaxpr(step)(state, images, labels).jaxpr
    out = {"conv_general_dilated": [], "dot_general": []}
    for eqn in _equations(jaxpr):
        if eqn.primitive.name in out:
            out[eqn.primitive.name].append({str(v.aval.dtype) for v in eqn.invars})
    return out


@pytest.mark.parametrize("impl", ["explicit", "xla"])
def test_bfloat16_step_convolves_in_bfloat16(impl):
    """Every convolution of the traced bfloat16 step, forward and backward, and the
    classifier's matrix product take bfloat16 operands; the float32 step's take float32 (so
    the check tells the two apart). ResNet-8: 3x3 convolutions, strided shortcuts, BatchNorm
    (Flax's on 'xla', the explicit one otherwise)."""
    for dtype in ("bfloat16", "float32"):
        ops = _operand_dtypes("resnet8", impl, dtype)
        convs, dots = ops["conv_general_dilated"], ops["dot_general"]
        # 7 3x3 layers: forward and weight gradient each, the input gradient of all but the
        # first (20 convolutions)
        assert len(convs) >= 20, (dtype, len(convs))
        assert all(d == {dtype} for d in convs), (dtype, convs)
        # the classifier at least (the explicit BatchNorm sums in float32)
        assert {dtype} in dots, (dtype, dots)


@pytest.mark.parametrize("impl", ["explicit", "xla"])
def test_bfloat16_search_step_rounds_like_bfloat16_and_keeps_float32_state(impl):
    old, new, metrics = _search_update("resnet8", impl, "bfloat16")
    _, ref, ref_metrics = _search_update("resnet8", impl, "float32")
    for tree in (new.params, new.opt_state, new.batch_stats):
        for leaf in jax.tree.leaves(tree):
            if jnp.issubdtype(leaf.dtype, jnp.floating):
                assert leaf.dtype == jnp.float32
    assert metrics["loss"].dtype == jnp.float32 and np.isfinite(float(metrics["loss"]))
    # bfloat16 keeps 8 significant bits (relative rounding 2**-9): the loss moves off the
    # float32 loss, by no more than a few such roundings through the network.
    loss, ref_loss = float(metrics["loss"]), float(ref_metrics["loss"])
    assert 0 < abs(loss - ref_loss) < 8 * 2.0**-9 * abs(ref_loss), (loss, ref_loss)
    # Scores moved, and in the same direction as in float32 (bfloat16 rounding aside).
    g = np.concatenate(
        [np.ravel(a - b) for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(new.params))]
    )
    g_ref = np.concatenate(
        [np.ravel(a - b) for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(ref.params))]
    )
    assert np.max(np.abs(g - g_ref)) > 0
    assert np.corrcoef(g, g_ref)[0, 1] > 0.95


def test_bfloat16_through_the_cli(tmp_path):
    """``--config.compute_dtype=bfloat16`` reaches the training step of a run: the same tiny
    LeNet-5 pretraining (2 steps) run by the CLI in float32 gives a loss that bfloat16's
    rounding moves a little, never not at all. (Both through the CLI: the launcher's XLA
    flags change float32's rounding too.)"""
    import json

    from pipeline_helpers import cli, cli_overrides, tiny_config

    # 2 steps, at a learning rate that keeps the loss near log(10) on random data
    over = {"mode": "pretrain", "train_subset": 64, "test_subset": 16, "pretrain.lr": 0.01}
    config = tiny_config("fashion_mnist_lenet5.py", **over)
    keys = ["dataset", "train_subset", "test_subset", "val_examples", "batch_size", "mode"]
    keys += ["eval_batch_size", "pretrain.epochs", "pretrain.batch_size", "pretrain.lr"]
    losses = {}
    for dtype in ("float32", "bfloat16"):
        out = cli(
            tmp_path / dtype,
            "configs/fashion_mnist_lenet5.py",
            *cli_overrides(config, keys),
            f"--config.compute_dtype={dtype}",
        )
        # the run's header: "convolutions: ... (<backend>, <dtype>...)"
        (header,) = [ln for ln in out.stdout.splitlines() if ln.startswith("convolutions: ")]
        assert f"({jax.default_backend()}, {dtype}" in header, out.stdout[:500]
        assert json.load(open(tmp_path / dtype / "config.json"))["compute_dtype"] == dtype
        (line,) = open(tmp_path / dtype / "metrics.jsonl")
        losses[dtype] = json.loads(line)["loss"]
    low, ref = losses["bfloat16"], losses["float32"]
    assert 0 < abs(low - ref) < 8 * 2.0**-9 * abs(ref), (low, ref)


def test_bad_compute_dtype():
    with pytest.raises(ValueError, match="compute_dtype='float16'; expected one of"):
        core.make_train_step(
            models.get_model("lenet5").apply,
            optax.sgd(0.1),
            options=kernels.ComputeOptions(compute_dtype="float16"),
        )


def test_xla_flags_are_added_by_launchers_never_over_the_user(monkeypatch):
    from jackpot_jax import xla_flags

    monkeypatch.setattr(xla_flags, "_jaxlib_version", lambda: (0, 10))
    flag = "--xla_cpu_experimental_ynn_fusion_type="
    assert jackpot_jax.recommended_xla_flags() == [flag]
    env = {}
    assert xla_flags.apply_recommended(env).startswith(f"XLA flags: added {flag}")
    assert env == {"XLA_FLAGS": flag}
    env = {"XLA_FLAGS": "--xla_cpu_enable_fast_math=false"}
    xla_flags.apply_recommended(env)
    assert env["XLA_FLAGS"] == "--xla_cpu_enable_fast_math=false " + flag
    user = "--xla_cpu_experimental_ynn_fusion_type=individual_dot"
    env = {"XLA_FLAGS": user}
    assert "already sets them" in xla_flags.apply_recommended(env) and env["XLA_FLAGS"] == user
    env = {"JACKPOT_JAX_XLA_FLAGS": "0"}
    assert "JACKPOT_JAX_XLA_FLAGS=0" in xla_flags.apply_recommended(env)
    assert "XLA_FLAGS" not in env
    monkeypatch.setattr(xla_flags, "_jaxlib_version", lambda: (0, 99))  # flag unknown
    assert jackpot_jax.recommended_xla_flags() == []
    env = {}
    assert "none recommended" in xla_flags.apply_recommended(env) and env == {}


# --- fusion barrier ---------------------------------------------------------------------------


def _chain(x, key, barrier):
    """An elementwise chain with the barrier between its halves and two consumers."""
    y = jnp.maximum(x * 1.5 - 0.25, 0.0)
    if barrier:
        y = kernels.fusion_barrier(y, key)
    return jnp.sin(y) + y[::-1]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fusion_barrier_is_the_identity_in_value_and_gradient(dtype):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((3, 4, 4, 5)), dtype)
    key = jnp.asarray(rng.standard_normal((3, 3, 5, 5)), jnp.float32)
    ct = jnp.asarray(rng.standard_normal((3, 4, 4, 5)), dtype)
    with kernels.use(conv_impl="explicit"):
        got = _value_and_grads(jax.jit(lambda x, k: _chain(x, k, True)), x, key, ct)
    expected = _value_and_grads(jax.jit(lambda x, k: _chain(x, k, False)), x, key, ct)
    np.testing.assert_array_equal(np.float32(got[0]), np.float32(expected[0]))
    np.testing.assert_array_equal(np.float32(got[1]), np.float32(expected[1]))
    assert got[1].dtype == x.dtype
    np.testing.assert_array_equal(got[2], np.zeros(key.shape, np.float32))  # key: no gradient
    # Whatever the key's first element (signs, zeros, infinities, NaN), the value is ``x``.
    for first in (-0.0, 0.0, -3.0, np.inf, -np.inf, np.nan):
        k = key.at[0, 0, 0, 0].set(first)
        with kernels.use(conv_impl="explicit"):
            np.testing.assert_array_equal(jax.jit(kernels.fusion_barrier)(x, k), x)


def test_fusion_barrier_survives_xla_and_follows_the_switch():
    x = jnp.ones((8, 4, 4, 6))
    key = jnp.ones((3, 3, 6, 6))

    def compiled(impl, barrier):
        with kernels.use(conv_impl=impl):
            return (
                jax.jit(jax.grad(lambda x, k: _chain(x, k, barrier).sum()))
                .lower(x, key)
                .compile()
                .as_text()
            )

    # Forward and backward each keep their conditional through XLA's optimisations; without
    # the barrier, or with the 'xla' switch, there is none. (The key is an argument, as the
    # kernels are in the training steps: a constant key would be folded, barrier and all.)
    assert compiled("explicit", True).count("conditional(") == 2
    assert "conditional(" not in compiled("explicit", False)
    assert "conditional(" not in compiled("xla", True)


TWO_DEVICE_BARRIER = """
import os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
import jax, jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
from jackpot_jax import core
from jackpot_jax import kernels
mesh = core.make_mesh(2)
x = jax.device_put(jnp.ones((8, 4, 4, 6)), NamedSharding(mesh, P("data")))
kernel = jax.device_put(jnp.ones((3, 3, 6, 6)), NamedSharding(mesh, P()))
COLLECTIVES = ("all-reduce", "all-gather", "collective-permute", "all-to-all", "reduce-scatter")
def hlo(key_of):
    f = lambda x, k: jnp.sin(kernels.fusion_barrier(jnp.maximum(x, 0.0), key_of(x, k)))
    with kernels.use(conv_impl="explicit"):
        return jax.jit(jax.grad(lambda x, k: f(x, k).sum())).lower(x, kernel).compile().as_text()
replicated_key = hlo(lambda x, k: k)
sharded_key = hlo(lambda x, k: x)
assert "conditional(" in replicated_key
print(sum(replicated_key.count(c) for c in COLLECTIVES), sum(sharded_key.count(c) for c in COLLECTIVES))
"""


def test_fusion_barrier_adds_no_collective_under_data_parallelism():
    from pipeline_helpers import python_script

    out = python_script(TWO_DEVICE_BARRIER, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    with_replicated_key, with_sharded_key = map(int, out.stdout.split()[-2:])
    # Keyed on a replicated array (a kernel), the batch-sharded step needs no communication;
    # keyed on the sharded activation itself it would (the check can tell them apart).
    assert with_replicated_key == 0
    assert with_sharded_key > 0
