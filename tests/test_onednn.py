"""jackpot_jax.kernels.native.onednn: oneDNN's convolutions as XLA custom calls, against float64 numpy."""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from pipeline_helpers import python_script

from jackpot_jax import kernels
from jackpot_jax.kernels import native
from jackpot_jax.kernels.native import onednn

# The handlers are registered for the CPU platform (a GPU machine runs XLA's convolutions).
needs_onednn = pytest.mark.skipif(
    jax.default_backend() != "cpu" or not onednn.available(),
    reason=f"oneDNN convolutions: {onednn.unavailable_reason() or 'not the CPU backend'}",
)


@pytest.mark.skipif(native.compiler() is None, reason="no C++ compiler")
@pytest.mark.skipif(onednn.find_onednn() is None, reason=onednn.not_found_reason())
def test_available_when_installed():
    # With oneDNN's library, its headers and a compiler present, a failed build must fail
    # here, not skip.
    assert onednn.available(), onednn.unavailable_reason()
    # Built against the headers installed with the library (not another copy, e.g. torch's),
    # and running with a library at least as new.
    headers = onednn.header_version(onednn.find_onednn()[1])
    assert onednn.versions()["headers"] == ".".join(map(str, headers))
    assert (
        onednn.version_problem(tuple(map(int, onednn.versions()["library"].split("."))), headers)
        == ""
    )


# What oneDNN names its implementations: "<family>:<isa or variant>", e.g. "brg:avx512_core",
# "jit:avx2", "gemm:jit", "ref:any".
IMPLEMENTATION = re.compile(r"^(brg|brgconv|jit|gemm|ref|acl|ncsp|nspc|wino)[\w]*:\w+")


def _taps(kh, kw, ho, wo, strides):
    """Index windows of the zero-padded input that each kernel tap (i, j) sees."""
    for i in range(kh):
        for j in range(kw):
            yield (
                i,
                j,
                (
                    slice(None),
                    slice(i, i + (ho - 1) * strides[0] + 1, strides[0]),
                    slice(j, j + (wo - 1) * strides[1] + 1, strides[1]),
                ),
            )


def _padded(x, pads):
    return np.pad(np.asarray(x, np.float64), ((0, 0), pads[0], pads[1], (0, 0)))


def _reference(x, g, kh, kw, strides, pads):
    """dL/dw of the NHWC/HWIO cross-correlation, in float64, one kernel tap at a time."""
    x, g = _padded(x, pads), np.asarray(g, np.float64)
    dw = np.zeros((kh, kw, x.shape[3], g.shape[3]))
    for i, j, window in _taps(kh, kw, *g.shape[1:3], strides):
        dw[i, j] = np.einsum("nhwc,nhwo->co", x[window], g, optimize=True)
    return dw


def _reference_forward(x, w, ho, wo, strides, pads):
    """The NHWC/HWIO cross-correlation itself, in float64, one kernel tap at a time."""
    x, w = _padded(x, pads), np.asarray(w, np.float64)
    y = np.zeros((x.shape[0], ho, wo, w.shape[3]))
    for i, j, window in _taps(*w.shape[:2], ho, wo, strides):
        y += np.einsum("nhwc,co->nhwo", x[window], w[i, j], optimize=True)
    return y


def _reference_input_grad(g, w, x_shape, strides, pads):
    """dL/dx: each tap's share of g scattered back into the padded input, then cropped."""
    g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
    n, h, wd, c = x_shape
    dx = np.zeros((n, h + sum(pads[0]), wd + sum(pads[1]), c))
    for i, j, window in _taps(*w.shape[:2], *g.shape[1:3], strides):
        dx[window] += np.einsum("nhwo,co->nhwc", g, w[i, j], optimize=True)
    return dx[:, pads[0][0] : pads[0][0] + h, pads[1][0] : pads[1][0] + wd]


@needs_onednn
@pytest.mark.parametrize(
    "n,h,w,c,o,k,strides,pads",
    [
        (1, 9, 9, 40, 8, (3, 3), (1, 1), ((1, 1), (1, 1))),  # SAME
        (3, 10, 7, 33, 16, (3, 3), (2, 2), ((0, 1), (1, 1))),  # SAME at stride 2 (asymmetric)
        (3, 12, 12, 8, 12, (5, 5), (1, 1), ((0, 0), (0, 0))),  # VALID, 5x5
        (1, 11, 9, 36, 5, (5, 5), (2, 1), ((2, 1), (0, 3))),  # explicit, uneven strides
        (3, 8, 8, 64, 32, (1, 1), (2, 2), ((0, 0), (0, 0))),  # 1x1, stride 2
        (2, 10, 10, 3, 6, (3, 3), (1, 1), ((1, 1), (1, 1))),  # 3 input channels (first layers)
        (3, 9, 8, 1, 4, (5, 5), (1, 1), ((0, 0), (0, 0))),  # 1 input channel, 5x5 VALID
    ],
)
def test_convolutions_match_float64(n, h, w, c, o, k, strides, pads):
    rng = np.random.default_rng(n * 100 + c)
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    kernel = rng.standard_normal((*k, c, o)).astype(np.float32)
    ho = (h + sum(pads[0]) - k[0]) // strides[0] + 1
    wo = (w + sum(pads[1]) - k[1]) // strides[1] + 1
    assert onednn.output_shape(x.shape, kernel.shape, strides, pads) == (n, ho, wo, o)
    g = rng.standard_normal((n, ho, wo, o)).astype(np.float32)
    got = jax.jit(
        lambda x, kernel, g: (
            onednn.forward(x, kernel, strides, pads),
            onednn.input_grad(g, kernel, x.shape, strides, pads),
            onednn.weight_grad(x, g, kernel.shape, strides, pads),
        )
    )(x, kernel, g)
    wants = (
        _reference_forward(x, kernel, ho, wo, strides, pads),
        _reference_input_grad(g, kernel, x.shape, strides, pads),
        _reference(x, g, *k, strides, pads),
    )
    for name, value, want in zip(("forward", "input gradient", "weight gradient"), got, wants):
        assert value.shape == want.shape, name
        np.testing.assert_allclose(
            np.asarray(value), want, rtol=1e-5, atol=1e-5 * np.abs(want).max(), err_msg=name
        )


# The layers a CIFAR ResNet runs at batch 128 (oneDNN picks other kernels for them than for
# the small shapes above): 3x3 at 32x32 with 16 channels, the stride-2 stage entry at 16x16,
# the last stage at 8x8, a 1x1 stride-2 shortcut.
@needs_onednn
@pytest.mark.parametrize(
    "h,c,o,k,strides,pads",
    [
        (32, 16, 16, 3, (1, 1), ((1, 1), (1, 1))),
        (16, 32, 64, 3, (2, 2), ((0, 1), (0, 1))),
        (8, 64, 128, 3, (1, 1), ((1, 1), (1, 1))),
        (16, 32, 64, 1, (2, 2), ((0, 0), (0, 0))),
    ],
)
def test_training_shapes_match_float64(h, c, o, k, strides, pads):
    n = 128
    rng = np.random.default_rng(h + c)
    x = rng.standard_normal((n, h, h, c)).astype(np.float32)
    kernel = (rng.standard_normal((k, k, c, o)) / np.sqrt(k * k * c)).astype(np.float32)
    _, ho, wo, _ = onednn.output_shape(x.shape, kernel.shape, strides, pads)
    g = rng.standard_normal((n, ho, wo, o)).astype(np.float32)
    calls = {
        "forward": (lambda x, w, g: onednn.forward(x, w, strides, pads)),
        "input gradient": (lambda x, w, g: onednn.input_grad(g, w, x.shape, strides, pads)),
        "weight gradient": (lambda x, w, g: onednn.weight_grad(x, g, w.shape, strides, pads)),
    }
    wants = {
        "forward": _reference_forward(x, kernel, ho, wo, strides, pads),
        "input gradient": _reference_input_grad(g, kernel, x.shape, strides, pads),
        "weight gradient": _reference(x, g, k, k, strides, pads),
    }
    for name, call in calls.items():
        # One call at a time, so that last_implementation names this primitive's kernel.
        got = np.asarray(jax.jit(call)(x, kernel, g))
        impl = onednn.last_implementation()
        assert IMPLEMENTATION.match(impl), (name, impl)
        want = wants[name]
        assert got.shape == want.shape, name
        np.testing.assert_allclose(
            got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max(), err_msg=f"{name} ({impl})"
        )


@needs_onednn
def test_explicit_conv_uses_it_and_the_switch_turns_it_off():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((3, 9, 9, 40)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, 40, 8)) * 0.1, jnp.float32)

    def loss(w, x):
        return jnp.sum(jnp.sin(kernels.conv2d(x, w, (2, 2), ((1, 1), (1, 1)))))

    results, hlo = {}, {}
    for mode in ("on", "off"):
        with kernels.use(conv_impl="explicit"), kernels.use(onednn=mode):
            fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))  # switch read at trace
            hlo[mode] = fn.lower(w, x).compile().as_text()
            results[mode] = jax.tree.map(np.asarray, fn(w, x))
            assert kernels.onednn_used() == (mode == "on")
    for target in onednn.TARGETS:  # forward, input and weight gradients: all three
        assert target in hlo["on"] and target not in hlo["off"], target
    with kernels.use(conv_impl="xla"):
        want = jax.tree.map(np.asarray, jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(w, x))
    for mode in ("on", "off"):
        for got, ref in zip(jax.tree.leaves(results[mode]), jax.tree.leaves(want)):
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    assert IMPLEMENTATION.match(onednn.last_implementation()), onednn.last_implementation()
    assert kernels.describe_convolutions() == "convolutions: oneDNN's (cpu, float32)"


def test_negative_padding_keeps_xla_kernels_and_matches_lax():
    # Negative padding crops the input; oneDNN rejects it, so conv2d must not send it there.
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((2, 7, 7, 5)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, 5, 4)), jnp.float32)
    pads = ((-1, 0), (0, -1))

    def run(conv):
        y, vjp = jax.vjp(conv, x, w)
        return (y, *vjp(jnp.ones_like(y)))

    def ours(x, w):
        with kernels.use(conv_impl="explicit"):
            return kernels.conv2d(x, w, (1, 1), pads)

    hlo = jax.jit(lambda x, w: run(ours)).lower(x, w).as_text()
    assert not any(target in hlo for target in onednn.TARGETS)
    got = jax.jit(lambda x, w: run(ours))(x, w)
    want = run(
        lambda x, w: lax.conv_general_dilated(
            x,
            w,
            (1, 1),
            pads,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=lax.Precision.HIGHEST,
        )
    )
    for a, b in zip(got, want):
        np.testing.assert_allclose(
            np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5 * float(np.abs(b).max())
        )


def test_empty_batch_keeps_xla_kernels():
    x, w = jnp.zeros((0, 5, 5, 3), jnp.float32), jnp.ones((3, 3, 3, 4), jnp.float32)
    with kernels.use(conv_impl="explicit"):
        fn = jax.jit(lambda x, w: kernels.conv2d(x, w, (1, 1), ((1, 1), (1, 1))))
        assert fn(x, w).shape == (0, 5, 5, 4)
        assert not any(target in fn.lower(x, w).as_text() for target in onednn.TARGETS)


@needs_onednn
def test_bad_shapes_and_padding_are_named():
    x = jnp.zeros((2, 5, 5, 3), jnp.float32)
    w = jnp.zeros((3, 3, 3, 4), jnp.float32)
    with pytest.raises(ValueError, match=r"padding \(\(-1, 0\), \(0, 0\)\); expected"):
        onednn.forward(x, w, (1, 1), ((-1, 0), (0, 0)))
    with pytest.raises(ValueError, match=r"-> \(2, -1, -1, 4\)"):  # a 3x3 kernel on 1x1
        onednn.forward(x[:, :1, :1], w, (1, 1), ((0, 0), (0, 0)))


def test_not_for_bfloat16_and_bad_mode():
    assert not kernels.onednn_used(jnp.bfloat16)
    assert kernels.describe_convolutions(kernels.ComputeOptions(compute_dtype="bfloat16")) == (
        "convolutions: XLA's (cpu, bfloat16; oneDNN: used on the CPU in float32 only)"
    )
    with kernels.use(onednn="off"):
        assert kernels.describe_convolutions() == (
            "convolutions: XLA's (cpu, float32; oneDNN: switched off (ComputeOptions.onednn='off'))"
        )
    with kernels.use(conv_impl="xla"):
        assert kernels.describe_convolutions() == "convolutions: XLA's (cpu, float32)"
    with pytest.raises(ValueError, match="onednn='yes'; expected one of"):
        kernels.ComputeOptions(onednn="yes")


@needs_onednn
def test_not_used_with_several_devices():
    # Sharded over two CPU devices, a custom call without a sharding rule would compute each
    # device's part of the batch only: the convolutions must stay XLA's there, although the
    # handler loads in that process.
    proc = python_script(
        "import os\n"
        "os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=2'\n"
        "import jax\n"
        "from jackpot_jax import kernels\n"
        "from jackpot_jax.kernels.native import onednn\n"
        "print(jax.device_count(), onednn.available(), kernels.onednn_used())\n"
        "print(kernels.describe_convolutions())\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].split() == ["2", "True", "False"]
    assert proc.stdout.splitlines()[1] == (
        "convolutions: XLA's (cpu, float32; oneDNN: used with one device only (2 here))"
    )


def test_opt_out_is_reported_and_builds_nothing(tmp_path):
    # JACKPOT_JAX_ONEDNN=0 chooses 'auto' = off: the handler is not even built (an empty
    # cache stays without it); tests/test_compute_options.py shows onednn='on' beating it.
    proc = python_script(
        "import jax, jax.numpy as jnp\n"
        "from jackpot_jax import kernels\n"
        "print(kernels.describe_convolutions())\n"
        "with kernels.use(conv_impl='explicit'):\n"
        "    x, w = jnp.ones((1, 5, 5, 2)), jnp.ones((3, 3, 2, 2))\n"
        "    jax.jit(lambda x, w: kernels.conv2d(x, w, (1, 1), ((1, 1), (1, 1))))(x, w)\n",
        env_update={"JACKPOT_JAX_ONEDNN": "0", "XDG_CACHE_HOME": str(tmp_path / "cache")},
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        "convolutions: XLA's (cpu, float32; oneDNN: JACKPOT_JAX_ONEDNN=0 "
        "(ComputeOptions.onednn='on' overrides it))"
    ) in proc.stdout
    built = [f for _, _, files in os.walk(tmp_path) for f in files if "onednn" in f]
    assert built == [], built


def test_lax_reference_agrees_with_the_helper():
    # The float64 helper above is itself checked against lax on one case (so a wrong
    # reference cannot pass the comparisons).
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 7, 6, 3)).astype(np.float32)
    w = np.zeros((3, 3, 3, 4), np.float32)
    g = rng.standard_normal((2, 4, 3, 4)).astype(np.float32)
    pads = ((1, 1), (0, 1))
    dw = jax.vjp(
        lambda v: lax.conv_general_dilated(
            x,
            v,
            (2, 2),
            pads,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=lax.Precision.HIGHEST,
        ),
        w,
    )[1](g)[0]
    np.testing.assert_allclose(_reference(x, g, 3, 3, (2, 2), pads), dw, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_concurrent_calls_from_several_threads():
    # XLA runs independent custom calls at once, from any of its threads; user code may call
    # a jitted function from several threads too. Every result must still be exact: oneDNN's
    # scratchpads are per calling thread here, never shared by two running primitives.
    import concurrent.futures

    rng = np.random.default_rng(5)
    shapes = [
        ((8, 16, 16, 32), (3, 3, 32, 32)),
        ((8, 8, 8, 64), (3, 3, 64, 48)),
        ((8, 16, 16, 32), (3, 3, 32, 32)),
        ((4, 12, 12, 20), (5, 5, 20, 50)),
    ]
    xs = [jnp.asarray(rng.standard_normal(xs_), jnp.float32) for xs_, _ in shapes]
    ws = [jnp.asarray(rng.standard_normal(ws_) * 0.1, jnp.float32) for _, ws_ in shapes]
    pads = ((1, 1), (1, 1))

    def many(xs, ws):  # independent forward, input and weight gradients of every layer
        out = []
        for x, w in zip(xs, ws):
            p = pads if w.shape[0] == 3 else ((0, 0), (0, 0))
            y = onednn.forward(x, w, (1, 1), p)
            out += [
                y,
                onednn.input_grad(y, w, x.shape, (1, 1), p),
                onednn.weight_grad(x, y, w.shape, (1, 1), p),
            ]
        return out

    def reference(xs, ws):
        out = []
        for x, w in zip(xs, ws):
            p = pads if w.shape[0] == 3 else ((0, 0), (0, 0))
            fn = lambda x, w: lax.conv_general_dilated(  # noqa: E731
                x,
                w,
                (1, 1),
                p,
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                precision=lax.Precision.HIGHEST,
            )
            y, vjp = jax.vjp(fn, x, w)
            out += [y, *vjp(y)]
        return out

    want = [np.asarray(v) for v in jax.jit(reference)(xs, ws)]
    fn = jax.jit(many)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: [np.asarray(v) for v in fn(xs, ws)], range(12)))
    for got in results:
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())


@needs_onednn
def test_vmap_of_a_model_is_a_loop_over_the_mapped_axis():
    # vmap over a leading axis of image batches (and of per-slice gradients, where the weight
    # gradient must not sum over the mapped axis) calls each custom call once per mapped
    # element; it must equal a Python loop over that axis, with oneDNN in both.
    import flax.linen as nn

    from jackpot_jax.models.common import PAD1, conv

    class Tiny(nn.Module):  # models' convolutions (models.common.conv), small and quick
        @nn.compact
        def __call__(self, x):
            x = nn.relu(conv(6, (3, 3), padding=PAD1, name="conv1")(x))
            x = nn.relu(conv(8, (3, 3), strides=(2, 2), padding=PAD1, name="conv2")(x))
            return nn.Dense(3, name="classifier")(x.mean(axis=(1, 2)))

    module = Tiny()
    rng = np.random.default_rng(7)
    xs = jnp.asarray(rng.standard_normal((3, 2, 10, 10, 3)), jnp.float32)
    shapes = jax.eval_shape(module.init, jax.random.key(0), xs[0])["params"]  # no compile
    params = jax.tree.map(
        lambda a: jnp.asarray(0.3 * rng.standard_normal(a.shape), jnp.float32), shapes
    )

    def loss(params, x):
        return jnp.sum(jnp.sin(module.apply({"params": params}, x)))

    def both(params, x):
        with kernels.use(conv_impl="explicit"):
            return module.apply({"params": params}, x), jax.grad(loss)(params, x)

    mapped = jax.jit(jax.vmap(both, in_axes=(None, 0)))
    assert all(target in mapped.lower(params, xs).as_text() for target in onednn.TARGETS)
    got = mapped(params, xs)
    one = jax.jit(both)
    for i, x in enumerate(xs):
        want = one(params, x)
        for a, b in zip(jax.tree.leaves(jax.tree.map(lambda v: v[i], got)), jax.tree.leaves(want)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(np.abs(b).max()))
