"""What a GPU runs by default (`kernels.AUTO['gpu']`: XLA's convolutions and Flax's BatchNorm;
mask_layout 'together': one unrolled radix search over all layers) computes the same search
step as the CPU's defaults (the explicit convolutions; the per-layer or native top-k).

On the CPU (CI) the GPU's code paths are forced with `kernels.ComputeOptions` inside a real
search step of `core.make_search_step`; where a GPU is present the step with the resolved
defaults is compared too. The suite pins JAX to the CPU (tests/conftest.py); on a GPU machine:

    JACKPOT_TEST_PLATFORMS=cuda python -m pytest -q tests/test_gpu_defaults.py
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_ops import _equations

from jackpot_jax import core, kernels, models
from jackpot_jax import method as jm

GPU_DEFAULTS = kernels.ComputeOptions(conv_impl=kernels.AUTO["gpu"], mask_layout="together")
ON_GPU = jax.default_backend() == "gpu"


def _native_select_missing():
    from jackpot_jax.kernels.native import topk_select

    if jax.default_backend() != "cpu":
        return "the native select runs on the CPU only"
    return topk_select.unavailable_reason()


CPU_DEFAULTS = [
    kernels.ComputeOptions(conv_impl="explicit", mask_layout="per_layer"),
    pytest.param(
        kernels.ComputeOptions(conv_impl="explicit", mask_layout="native"),
        marks=pytest.mark.skipif(bool(_native_select_missing()), reason="no native select"),
    ),
]


def _problem():
    """ResNet-8 on 8x8x3 inputs (3x3 convolutions, strided shortcuts, BatchNorm), 80% of its
    weights kept, scores 1.0 / 0.95 from the magnitude mask plus noise in steps of 0.01 up to
    0.08 (kept and pruned scores overlap: tied scores straddle every layer's cut), a batch
    of 4."""
    module = models.cifar_resnet.CifarResNet(num_blocks=1)
    variables = models.init_variables(module, jax.random.key(0), (1, 8, 8, 3))
    params = variables["params"]
    budget = jm.keep_counts(params, 0.8)
    scores = jm.init_scores_from_mask(jm.criterion_mask(jm.magnitude_scores(params), budget))
    rng = np.random.default_rng(0)
    scores = jax.tree.map(
        lambda s: s + jnp.asarray(np.round(rng.uniform(0, 8, s.shape)) * 0.01, s.dtype), scores
    )
    images = jnp.asarray(rng.standard_normal((4, 8, 8, 3)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 10, 4), jnp.int32)
    return module, variables, budget, scores, images, labels


@functools.lru_cache(maxsize=8)
def _search_step(options):
    """(loss, scores after one SGD step (lr 1), the jaxpr's primitive names) of a search step
    traced with ``options``."""
    module, variables, budget, scores, images, labels = _problem()
    tx = optax.sgd(1.0)
    step = core.make_search_step(module.apply, tx, budget, options=options)
    state = core.SearchState.create(
        apply_fn=module.apply,
        params=scores,
        tx=tx,
        frozen=variables["params"],
        batch_stats=variables["batch_stats"],
    )
    # float32 products on every backend (a GPU would otherwise use TF32 for both)
    with jax.default_matmul_precision("highest"):
        jaxpr = jax.make_jaxpr(step)(state, images, labels).jaxpr
        new, metrics = step(state, images, labels)
    names = [e.primitive.name for e in _equations(jaxpr)]
    return float(metrics["loss"]), jax.device_get(new.params), names


def _masks(options, scores, budget):
    with kernels.use(options):
        return jax.device_get(jm.masks_from_scores(scores, budget))


def _assert_same_step(options, reference):
    loss, scores, _ = _search_step(options)
    ref_loss, ref_scores, _ = _search_step(reference)
    tol = 1e-4 if ON_GPU else 1e-5
    assert abs(loss - ref_loss) <= tol * abs(ref_loss), (loss, ref_loss)
    _, _, budget, old, _, _ = _problem()
    for path, s in jm.flatten_paths(scores).items():
        ref_s = jm.flatten_paths(ref_scores)[path]
        old_s = np.asarray(jm.flatten_paths(old)[path])
        g, ref_g = old_s - s, old_s - ref_s  # the score gradients
        assert np.max(np.abs(ref_g)) > 0, path
        rel = np.max(np.abs(g - ref_g)) / np.max(np.abs(ref_g))
        assert rel < tol, (path, rel)
    # The masks of the same scores: of the tied scores the step started from, and of the
    # scores it ended with.
    for tree in (old, ref_scores):
        got, want = _masks(options, tree, budget), _masks(reference, tree, budget)
        for path, m in jm.flatten_paths(want).items():
            np.testing.assert_array_equal(jm.flatten_paths(got)[path], m, err_msg=path)
            assert m.sum() == jm.flatten_paths(budget)[path]


@pytest.mark.parametrize("cpu_defaults", CPU_DEFAULTS, ids=lambda o: o.mask_layout)
def test_gpu_code_paths_forced_give_the_cpu_defaults_step(cpu_defaults):
    _assert_same_step(GPU_DEFAULTS, cpu_defaults)
    # Each step ran the paths it was given: XLA's convolutions (no custom gradient) and an
    # unrolled mask search (no loop) against the explicit convolutions (custom_vjp) and the
    # per-layer counting loops (scan) or native selects.
    _, _, gpu = _search_step(GPU_DEFAULTS)
    _, _, cpu = _search_step(cpu_defaults)
    assert "custom_vjp_call" not in gpu and "conv_general_dilated" in gpu
    assert "scan" not in gpu and "while" not in gpu and "ffi_call" not in gpu
    assert "custom_vjp_call" in cpu
    if cpu_defaults.mask_layout == "per_layer":
        assert "scan" in cpu or "while" in cpu
    else:
        assert cpu.count("ffi_call") > gpu.count("ffi_call")


def test_auto_resolves_to_the_gpu_defaults_on_a_gpu_backend(monkeypatch):
    """What 'auto' means where JAX's backend is a GPU (the backend faked for the resolution
    only): the paths the test above forces."""
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    resolved = kernels.resolve(kernels.ComputeOptions())
    monkeypatch.undo()
    assert resolved == GPU_DEFAULTS.replace(onednn="off")
    assert (resolved.conv_impl, resolved.mask_layout) == ("xla", "together")


@pytest.mark.skipif(not ON_GPU, reason=f"needs a GPU (backend: {jax.default_backend()})")
def test_resolved_defaults_on_the_gpu_give_the_cpu_defaults_step():
    resolved = kernels.resolve(kernels.ComputeOptions())
    assert resolved.conv_impl == kernels.AUTO["gpu"] == "xla"
    assert resolved.mask_layout == "together"
    _assert_same_step(kernels.ComputeOptions(), CPU_DEFAULTS[0])
