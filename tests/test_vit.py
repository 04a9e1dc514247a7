"""Vision Transformers: shapes, parameter counts, the prunable set, a numpy reference forward,
position-embedding resizing (against timm), and exact conversion to and from torchvision's
and timm's ViTs. Tests needing torch, torchvision or timm skip without them."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from jackpot_jax import models
from jackpot_jax import sparsity as sp
from jackpot_jax.models import vit as vit_lib


def _flat(tree):
    return flax.traverse_util.flatten_dict(dict(tree), sep="/")


def _count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _abstract(name, batch=1, **options):
    module = models.get_model(name, **options)
    shape = (batch, *models.input_shape(name, options))
    return module, jax.eval_shape(lambda: models.init_variables(module, jax.random.key(0), shape))


def _init(module, shape, seed=0):
    # jitted: an eager init dispatches every op of the model one by one
    return jax.jit(models.init_variables, static_argnums=(0, 2))(
        module, jax.random.key(seed), shape
    )


# ------------------------------------------------------------------------------ models


def _vit_count(width, depth, patch, image, classes, channels=3, mlp=None):
    """Hand count of a class-token ViT with biases everywhere and 2 LayerNorms a block."""
    mlp = mlp or 4 * width
    tokens = (image // patch) ** 2 + 1
    embed = patch * patch * channels * width + width + width + tokens * width
    block = 2 * 2 * width + 4 * (width * width + width) + 2 * width * mlp + mlp + width
    return embed + depth * block + 2 * width + width * classes + classes


@pytest.mark.parametrize(
    "name,options,count",
    [
        ("vit_base", {}, 86_567_656),  # ViT-B/16 at 224 with 1000 classes (the literature's)
        ("vit_b_16", {}, 86_567_656),
        ("vit_tiny", {}, _vit_count(192, 12, 16, 224, 1000)),
        ("vit_small", {"patch_size": 32}, _vit_count(384, 12, 32, 224, 1000)),
        ("vit_large", {"image_size": 384}, _vit_count(1024, 24, 16, 384, 1000)),
        ("vit_h_14", {}, 632_045_800),  # torchvision's vit_h_14
        ("timm:deit_tiny_patch16_224", {}, 5_717_416),  # timm's count
        ("vit_fmnist", {}, _vit_count(64, 6, 4, 28, 10, channels=1)),
    ],
)
def test_param_counts(name, options, count):
    _, variables = _abstract(name, **options)
    assert set(variables) == {"params"}
    assert _count(variables["params"]) == count


def test_shapes_and_names():
    module, variables = _abstract("vit_small", batch=2, patch_size=8, image_size=32, num_classes=7)
    flat = _flat(variables["params"])
    assert flat["patch_embed/kernel"].shape == (8, 8, 3, 384)
    assert flat["cls_token"].shape == (1, 1, 384)
    assert flat["pos_embedding"].shape == (1, 1 + 16, 384)
    for name in ("query", "key", "value", "out"):
        assert flat[f"blocks_11/attn/{name}/kernel"].shape == (384, 384)
    assert flat["blocks_0/mlp/fc1/kernel"].shape == (384, 1536)
    assert flat["blocks_0/mlp/fc2/kernel"].shape == (1536, 384)
    assert flat["classifier/kernel"].shape == (384, 7)
    assert "blocks_12/ln1/scale" not in flat and "norm/scale" in flat
    out = jax.eval_shape(
        lambda v, x: module.apply(v, x, train=False),
        variables,
        jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32),
    )
    assert out.shape == (2, 7)


def test_default_filter_prunes_exactly_the_projection_mlp_and_patch_kernels():
    _, variables = _abstract("vit_fmnist")
    chosen = set(sp.prunable_paths(variables["params"]))
    want = {"patch_embed/kernel"} | {
        f"blocks_{i}/{m}/kernel"
        for i in range(6)
        for m in ("attn/query", "attn/key", "attn/value", "attn/out", "mlp/fc1", "mlp/fc2")
    }
    assert chosen == want


def test_timm_names_and_unknown_names():
    module = models.get_model("timm:vit_base_patch32_384.augreg_in21k_ft_in1k")
    assert (module.width, module.depth, module.num_heads, module.patch_size) == (768, 12, 12, 32)
    assert models.input_shape("timm:vit_base_patch32_384") == (384, 384, 3)
    assert models.input_shape("vit_b_16", {"image_size": 64}) == (64, 64, 3)
    assert models.input_shape("resnet50", {"image_size": 64}) == (224, 224, 3)
    for bad in ("vit_b_17", "timm:vit_base_patch16_gap_224", "timm:deit_base_distilled"):
        with pytest.raises(ValueError, match=r"unknown model .*vit_fmnist.*timm:"):
            models.get_model(bad)
    with pytest.raises(ValueError, match="patch_size"):
        models.get_model("vit_b_16", patch_size=8)  # torchvision's names fix the patch


def test_other_image_size_is_refused_by_name():
    module, variables = _abstract("vit_fmnist")
    with pytest.raises(ValueError, match=r"28x28 .*got shape \(1, 32, 32, 1\)"):
        jax.eval_shape(lambda v: module.apply(v, jnp.zeros((1, 32, 32, 1)), train=False), variables)


def _layer_norm(x, p, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _numpy_vit(params, x, heads, patch):
    """A float64 numpy ViT written from the definition (patches by reshape, not by conv)."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    n, h, w, c = x.shape
    g = h // patch
    patches = x.reshape(n, g, patch, g, patch, c).transpose(0, 1, 3, 2, 4, 5)
    patches = patches.reshape(n, g * g, patch * patch * c)
    kernel = p["patch_embed"]["kernel"].reshape(patch * patch * c, -1)
    t = patches @ kernel + p["patch_embed"]["bias"]
    d = t.shape[-1]
    t = np.concatenate([np.broadcast_to(p["cls_token"], (n, 1, d)), t], 1) + p["pos_embedding"]
    hd = d // heads
    dense = lambda y, q: y @ q["kernel"] + q["bias"]
    i = 0
    while f"blocks_{i}" in p:
        b = p[f"blocks_{i}"]
        y = _layer_norm(t, b["ln1"])
        q, k, v = (
            dense(y, b["attn"][m]).reshape(n, -1, heads, hd) for m in ("query", "key", "value")
        )
        logits = np.einsum("nqhd,nkhd->nhqk", q, k) / np.sqrt(hd)
        a = np.exp(logits - logits.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        y = np.einsum("nhqk,nkhd->nqhd", a, v).reshape(n, -1, d)
        t = t + dense(y, b["attn"]["out"])
        y = dense(_layer_norm(t, b["ln2"]), b["mlp"]["fc1"])
        y = 0.5 * y * (1 + erf(y / np.sqrt(2)))  # exact GELU
        t = t + dense(y, b["mlp"]["fc2"])
        i += 1
    return dense(_layer_norm(t, p["norm"])[:, 0], p["classifier"])


def test_forward_matches_numpy_reference_and_is_deterministic():
    module = models.get_model("vit_fmnist", dropout_rate=0.1)
    variables = _init(module, (1, 28, 28, 1))
    # non-zero tokens and biases, so that every term of the reference is exercised
    rng = np.random.RandomState(1)
    params = jax.tree.map(
        lambda a: (np.asarray(a) + 0.05 * rng.randn(*a.shape)).astype(np.float32),
        variables["params"],
    )
    x = rng.randn(3, 28, 28, 1).astype(np.float32)
    apply = jax.jit(module.apply, static_argnames="train")
    out = apply({"params": params}, x, train=False)
    again = apply({"params": params}, x, train=False)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(again))
    ref = _numpy_vit(params, x.astype(np.float64), heads=4, patch=4)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    # dropout is active in train mode only
    train = apply({"params": params}, x, train=True, rngs={"dropout": jax.random.key(3)})
    assert not np.allclose(np.asarray(train), np.asarray(out))


def test_block_outputs_are_sown():
    module = models.get_model("vit_fmnist")
    variables = _init(module, (2, 28, 28, 1))
    blocks = jax.jit(lambda v, x: models.block_outputs(module, v, x))(
        variables, jnp.ones((2, 28, 28, 1))
    )
    assert set(blocks) == {"embed"} | {f"block{i}" for i in range(6)}
    assert blocks["block5"].shape == (2, 50, 64)


# -------------------------------------------------------------- position embeddings


@pytest.mark.parametrize("old,new", [(14, 4), (4, 14), (7, 7), (8, 5), (3, 8)])
def test_resize_pos_embedding_is_timms(old, new):
    torch = pytest.importorskip("torch")
    timm_pos = pytest.importorskip("timm.layers")
    rng = np.random.RandomState(old * 100 + new)
    pos = rng.randn(1, 1 + old * old, 6).astype(np.float32)
    ours = vit_lib.resize_pos_embedding(pos, new)
    theirs = timm_pos.resample_abs_pos_embed(
        torch.from_numpy(pos), new_size=[new, new], num_prefix_tokens=1
    ).numpy()
    assert ours.shape == (1, 1 + new * new, 6)
    np.testing.assert_array_equal(ours[:, 0], pos[:, 0])  # the class token's row is kept
    np.testing.assert_allclose(ours, theirs, atol=2e-6, rtol=0)


def test_resize_pos_embedding_refuses_a_non_square_grid():
    with pytest.raises(ValueError, match="10 grid tokens"):
        vit_lib.resize_pos_embedding(np.zeros((1, 11, 4)), 3)
