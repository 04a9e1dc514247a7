"""Model registry: shapes, parameter counts, BatchNorm behaviour, naming conventions."""

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jackpot_jax import models
from jackpot_jax.models.cifar_resnet import option_a_shortcut
from jackpot_jax.models.common import adaptive_avg_pool
from jackpot_jax.models.vgg import VGG

# torchvision's own counts (sum of p.numel() for the default 1000-class models).
TORCHVISION_COUNTS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "wide_resnet50_2": 68_883_240,
    "vgg11_bn": 132_868_840,
    "vgg13_bn": 133_053_736,
    "vgg16_bn": 138_365_992,
    "vgg19_bn": 143_678_248,
}


def _abstract(name, batch=2, hw=None, **kw):
    module = models.get_model(name, **kw)
    h, w, c = models.input_shape(name)
    if hw is not None:
        h = w = hw
    shape = (batch, h, w, c)
    variables = jax.eval_shape(lambda: models.init_variables(module, jax.random.key(0), shape))
    return module, variables, shape


def _count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _cifar_resnet_count(n, w, classes):
    """Hand count: 3x3 convs without bias, BN (scale+bias) after each, Dense classifier."""
    c = 16 * w
    total = 3 * 3 * 3 * c + 2 * c
    cin = c
    for planes in (c, 2 * c, 4 * c):
        for _ in range(n):
            total += 9 * cin * planes + 9 * planes * planes + 4 * planes
            cin = planes
    return total + 4 * c * classes + classes


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="resnet50.*lenet5|lenet5.*resnet50"):
        models.get_model("resnet51")


def test_unknown_option_is_refused():
    with pytest.raises(ValueError, match="width"):
        models.get_model("resnet50", width=2)


# ViTs (class token, position embedding, no BatchNorm, fixed image size): tests/test_vit.py.
@pytest.mark.parametrize("name", [n for n in models.MODEL_NAMES if not n.startswith("vit")])
def test_output_shape_and_naming(name):
    # CIFAR-sized inputs for the torchvision models too: adaptive pooling (VGG) and global
    # pooling (ResNet) make the logits shape independent of the input size.
    module, variables, shape = _abstract(
        name, hw=32 if models.input_shape(name)[0] == 224 else None, num_classes=7
    )
    out = jax.eval_shape(
        lambda v, x: module.apply(v, x, train=False),
        variables,
        jax.ShapeDtypeStruct(shape, jnp.float32),
    )
    assert out.shape == (shape[0], 7) and out.dtype == jnp.float32
    flat = flax.traverse_util.flatten_dict(variables["params"], sep="/")
    assert flat["classifier/kernel"].shape[-1] == 7 and "classifier/bias" in flat
    weights = [p for p, x in flat.items() if len(x.shape) >= 2]
    assert weights and all(p.endswith("/kernel") for p in weights)
    has_bn = any(p.endswith("/scale") for p in flat)
    assert ("batch_stats" in variables) == has_bn == (not name.startswith("lenet"))


@pytest.mark.parametrize("name,count", sorted(TORCHVISION_COUNTS.items()))
def test_torchvision_param_counts(name, count):
    _, variables, _ = _abstract(name, batch=1)
    assert _count(variables["params"]) == count


@pytest.mark.parametrize(
    "name,n,w,classes,expected",
    [
        ("resnet20", 3, 1, 10, 269_722),
        ("resnet56", 9, 1, 10, 853_018),
        ("resnet32", 5, 2, 10, 1_849_898),
        ("resnet32", 5, 2, 100, 1_861_508),
    ],
)
def test_cifar_resnet_param_counts(name, n, w, classes, expected):
    assert _cifar_resnet_count(n, w, classes) == expected
    _, variables, _ = _abstract(name, batch=1, num_classes=classes)
    assert _count(variables["params"]) == expected


def test_resnet32_is_double_width_by_default():
    _, variables, _ = _abstract("resnet32", batch=1)
    assert variables["params"]["conv1"]["kernel"].shape == (3, 3, 3, 32)
    assert variables["params"]["classifier"]["kernel"].shape == (128, 10)
    _, variables, _ = _abstract("resnet32", batch=1, width=1)
    assert variables["params"]["classifier"]["kernel"].shape == (64, 10)


@pytest.mark.parametrize(
    "name,count", [("lenet5", 431_080), ("lenet300_100", 266_610), ("vgg19_cifar", 20_035_018)]
)
def test_small_model_param_counts(name, count):
    _, variables, _ = _abstract(name, batch=1)
    assert _count(variables["params"]) == count


@pytest.mark.parametrize("name", ["lenet5", "lenet300_100"])
def test_forward_runs(name):
    module = models.get_model(name)
    shape = (3,) + models.input_shape(name)
    variables = models.init_variables(module, jax.random.key(0), shape)
    x = jax.random.normal(jax.random.key(1), shape)
    out = module.apply(variables, x, train=False)
    chex.assert_shape(out, (3, 10))
    chex.assert_tree_all_finite(out)


def test_batch_stats_change_only_in_train_mode():
    module = models.get_model("resnet20")
    variables = models.init_variables(module, jax.random.key(0), (4, 32, 32, 3))
    x = 3.0 + jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    _, state = module.apply(variables, x, train=False, mutable=["batch_stats"])
    chex.assert_trees_all_equal(state["batch_stats"], variables["batch_stats"])
    out, state = module.apply(variables, x, train=True, mutable=["batch_stats"])
    old = variables["batch_stats"]["bn1"]["mean"]
    new = state["batch_stats"]["bn1"]["mean"]
    # momentum 0.9: new = 0.9 * old + 0.1 * batch mean
    conv = jax.lax.conv_general_dilated(
        x,
        variables["params"]["conv1"]["kernel"],
        (1, 1),
        ((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    np.testing.assert_allclose(
        new, 0.9 * old + 0.1 * conv.mean(axis=(0, 1, 2)), rtol=1e-5, atol=1e-5
    )
    chex.assert_shape(out, (4, 10))


def test_option_a_shortcut_puts_identity_in_middle_channels():
    x = jnp.arange(2 * 4 * 4 * 2, dtype=jnp.float32).reshape(2, 4, 4, 2) + 1
    y = option_a_shortcut(x, planes=6, stride=2)
    chex.assert_shape(y, (2, 2, 2, 6))
    np.testing.assert_array_equal(y[..., 2:4], x[:, ::2, ::2, :])
    np.testing.assert_array_equal(y[..., :2], 0)
    np.testing.assert_array_equal(y[..., 4:], 0)
    # odd difference: (planes - inplanes) // 2 before, the rest after
    z = option_a_shortcut(x, planes=5, stride=1)
    np.testing.assert_array_equal(z[..., 1:3], x)
    assert float(jnp.abs(z[..., 0]).sum()) == float(jnp.abs(z[..., 3:]).sum()) == 0.0


def test_adaptive_avg_pool_matches_torch_bins():
    x = jnp.arange(5.0).reshape(1, 5, 1, 1) * jnp.ones((1, 5, 3, 1))
    y = adaptive_avg_pool(x, (3, 1))
    # torch bins for 5 -> 3: [0,2), [1,4), [3,5)
    np.testing.assert_allclose(y[0, :, 0, 0], [0.5, 2.0, 3.5])
    one = jnp.full((1, 1, 1, 2), 4.0)
    np.testing.assert_array_equal(adaptive_avg_pool(one, (7, 7)), jnp.full((1, 7, 7, 2), 4.0))


def test_vgg_dropout_only_in_train_mode():
    # A one-conv VGG keeps this fast; the classifier head is the torchvision one.
    module = VGG(cfg=(8, "M"), num_classes=3)
    variables = models.init_variables(module, jax.random.key(0), (2, 32, 32, 3))
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    a = module.apply(variables, x, train=False)
    np.testing.assert_array_equal(a, module.apply(variables, x, train=False))
    with pytest.raises(Exception, match="dropout"):
        module.apply(variables, x, train=True, mutable=["batch_stats"])
    b, _ = module.apply(
        variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(2)}
    )
    chex.assert_shape(b, (2, 3))


def test_block_outputs_names_and_shapes():
    module = models.get_model("resnet20")
    variables = models.init_variables(module, jax.random.key(0), (2, 32, 32, 3))
    outs = models.block_outputs(module, variables, jnp.ones((2, 32, 32, 3)))
    assert list(outs) == ["stem", "layer1", "layer2", "layer3"]
    chex.assert_shape(outs["layer3"], (2, 8, 8, 64))
    _, abstract, _ = _abstract("vgg19_cifar")
    vgg = models.get_model("vgg19_cifar")
    outs = jax.eval_shape(
        lambda v: models.block_outputs(vgg, v, jnp.ones((2, 32, 32, 3))), abstract
    )
    assert [o.shape for o in outs.values()] == [
        (2, 16, 16, 64),
        (2, 8, 8, 128),
        (2, 4, 4, 256),
        (2, 2, 2, 512),
        (2, 1, 1, 512),
    ]
