"""`ComputeOptions` is part of every step cache key: steps built with other options in one
process call other kernels (read off their HLO), in either order; importing jackpot_jax leaves
the process's XLA flags alone."""

import pkgutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from pipeline_helpers import python_script

import jackpot_jax
from jackpot_jax import core, kernels, models
from jackpot_jax import method as jm
from jackpot_jax.kernels.native import onednn, topk_select

ONEDNN_CALL = next(iter(onednn.TARGETS))  # the forward convolution
TOPK_CALL = topk_select.TARGET

# Explicit options, so that JACKPOT_JAX_ONEDNN=0 / JACKPOT_JAX_TOPK_SELECT=0 skip nothing here.
needs_onednn = pytest.mark.skipif(
    not kernels.onednn_used(jnp.float32, kernels.ComputeOptions(onednn="on")),
    reason=kernels.describe_convolutions(kernels.ComputeOptions(onednn="on")),
)
needs_select = pytest.mark.skipif(
    kernels.options.native_topk_off_reason() != "",
    reason=kernels.describe_masks(),
)

ON = kernels.ComputeOptions(conv_impl="explicit", onednn="on", mask_layout="native")
OFF = kernels.ComputeOptions(conv_impl="explicit", onednn="off", mask_layout="per_layer")
XLA = kernels.ComputeOptions(conv_impl="xla", mask_layout="together")


def _lenet():
    module = models.get_model("lenet5")
    variables = models.init_variables(module, jax.random.key(0), (1, 28, 28, 1))
    return module, variables


def _batch(n=4):
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.standard_normal((n, 28, 28, 1)), jnp.float32)
    return images, jnp.asarray(rng.integers(0, 10, n), jnp.int32)


def _eval_hlo(options):
    module, variables = _lenet()
    images, labels = _batch()
    step = core.make_eval_step(module, options)
    return step.lower(variables, images, labels, jnp.ones(4)).as_text()


def _search_hlo(options):
    module, variables = _lenet()
    params = variables["params"]
    budget = jm.keep_counts(params, 0.9)
    scores = jm.init_scores_from_mask(jm.criterion_mask(jm.magnitude_scores(params), budget))
    tx = optax.sgd(0.1)
    state = core.SearchState.create(apply_fn=module.apply, params=scores, tx=tx, frozen=params)
    step = core.make_search_step(module.apply, tx, budget, options=options)
    return step.lower(state, *_batch()).as_text()


@needs_onednn
@pytest.mark.parametrize("order", [(ON, OFF), (OFF, ON)], ids=["on_first", "off_first"])
def test_cached_eval_steps_follow_their_options(order):
    core.steps._eval_step.cache_clear()
    texts = {o: _eval_hlo(o) for o in order}
    assert ONEDNN_CALL in texts[ON]
    assert ONEDNN_CALL not in texts[OFF]
    assert core.steps._eval_step.cache_info().currsize == 2  # two entries, not one reused


@needs_onednn
@needs_select
@pytest.mark.parametrize("order", [(ON, OFF), (OFF, ON)], ids=["on_first", "off_first"])
def test_search_steps_follow_their_options(order):
    texts = {o: _search_hlo(o) for o in order}
    assert ONEDNN_CALL in texts[ON] and TOPK_CALL in texts[ON]
    assert ONEDNN_CALL not in texts[OFF] and TOPK_CALL not in texts[OFF]


@pytest.mark.parametrize("order", [(OFF, XLA), (XLA, OFF)], ids=["explicit_first", "xla_first"])
def test_search_steps_follow_their_options_without_native_code(order):
    # The explicit convolutions' weight gradient for LeNet-5's first layer (5x5x1 patches) is
    # an im2col matrix product; XLA's own is a convolution: the two HLOs differ in their
    # convolution count. The layouts differ in their loops: per_layer has a while loop per layer.
    texts = {o: _search_hlo(o) for o in order}
    assert texts[OFF].count("stablehlo.while") >= len(jm.prunable_paths(_lenet()[1]["params"]))
    assert "stablehlo.while" not in texts[XLA]
    assert texts[XLA].count("stablehlo.convolution") > texts[OFF].count("stablehlo.convolution")


def test_every_option_is_checked_when_built():
    for field, bad in [
        ("conv_impl", "cudnn"),
        ("onednn", "yes"),
        ("mask_layout", "sorted"),
        ("radix_bits", 3),
        ("compute_dtype", "float16"),
    ]:
        with pytest.raises(ValueError, match=f"{field}={bad!r}; expected one of"):
            kernels.ComputeOptions(**{field: bad})


def test_resolve_replaces_every_auto():
    resolved = kernels.resolve(kernels.ComputeOptions())
    assert "auto" not in (resolved.conv_impl, resolved.mask_layout)
    assert resolved.conv_impl == kernels.AUTO[jax.default_backend()]
    assert kernels.resolve(resolved) == resolved


def _kernel_hlo(options):
    """The HLO of a convolution and a layer's exact mask traced with ``options``."""
    x, w = jnp.ones((1, 6, 6, 2)), jnp.ones((3, 3, 2, 2))
    with kernels.use(options):
        conv = jax.jit(lambda x, w: kernels.conv2d(x, w, (1, 1), ((1, 1), (1, 1))))
        masks = jax.jit(lambda s: jm.masks_from_scores(s, {"a": 3}))
        return conv.lower(x, w).as_text() + masks.lower({"a": jnp.ones((4, 5))}).as_text()


@needs_onednn
@needs_select
def test_the_environment_chooses_auto_and_an_explicit_option_beats_it(monkeypatch):
    """JACKPOT_JAX_ONEDNN=0 and JACKPOT_JAX_TOPK_SELECT=0 choose what 'auto' means, read at each
    resolution (set and unset in one process); onednn='on' and mask_layout='native' ignore them."""
    auto = kernels.ComputeOptions(conv_impl="explicit")
    explicit = auto.replace(onednn="on", mask_layout="native")
    both_on = kernels.resolve(auto)  # nothing set: 'auto' takes both handlers on this CPU
    assert (both_on.onednn, both_on.mask_layout) == ("on", "native")
    monkeypatch.setenv("JACKPOT_JAX_ONEDNN", "0")
    monkeypatch.setenv("JACKPOT_JAX_TOPK_SELECT", "0")
    # The environment sets the default ...
    off = kernels.resolve(auto)
    assert (off.onednn, off.mask_layout) == ("off", "per_layer")
    assert "oneDNN: JACKPOT_JAX_ONEDNN=0 (ComputeOptions.onednn='on' overrides it)" in (
        kernels.describe_convolutions(auto)
    )
    assert "native: JACKPOT_JAX_TOPK_SELECT=0" in kernels.describe_masks(auto)
    hlo = _kernel_hlo(auto)
    assert ONEDNN_CALL not in hlo and TOPK_CALL not in hlo
    # ... and an explicit field beats it.
    assert kernels.resolve(explicit) == explicit
    hlo = _kernel_hlo(explicit)
    assert ONEDNN_CALL in hlo and TOPK_CALL in hlo
    assert kernels.resolve(auto.replace(onednn="off")).onednn == "off"  # explicit off stays off
    monkeypatch.setenv("JACKPOT_JAX_ONEDNN", "1")  # anything but "0": the handlers again
    monkeypatch.delenv("JACKPOT_JAX_TOPK_SELECT")
    assert kernels.resolve(auto) == both_on


def test_importing_any_module_leaves_xla_flags_alone():
    names = sorted(m.name for m in pkgutil.walk_packages(jackpot_jax.__path__, "jackpot_jax."))
    assert "jackpot_jax.core.steps" in names and "jackpot_jax.kernels.options" in names
    for start in ("--xla_cpu_enable_fast_math=false", None):
        setup = (
            f"os.environ['XLA_FLAGS'] = {start!r}\n"
            if start
            else "os.environ.pop('XLA_FLAGS', None)\n"
        )
        proc = python_script(
            "import importlib, os\n"
            + setup
            + "os.environ.pop('JACKPOT_JAX_XLA_FLAGS', None)\n"
            + f"for name in {names!r}:\n"
            + "    importlib.import_module(name)\n"
            + "print('XLA_FLAGS', repr(os.environ.get('XLA_FLAGS')))\n"
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip().splitlines()[-1] == f"XLA_FLAGS {start!r}"
