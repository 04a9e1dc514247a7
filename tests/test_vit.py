"""Vision Transformers: shapes, parameter counts, the prunable set, a numpy reference forward,
position-embedding resizing (against timm), and exact conversion to and from torchvision's
and timm's ViTs, names a user types, budgets and N:M on a ViT, and a CLI jackpot search of
vit_fmnist on Fashion-MNIST. Tests needing torch, torchvision or timm skip without them."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pipeline_helpers import needs_fmnist
from scipy.special import erf

from jackpot_jax import method as jm
from jackpot_jax import models
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
        ("vit_fmnist", {}, _vit_count(64, 4, 4, 28, 10, channels=1)),
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
    chosen = set(jm.prunable_paths(variables["params"]))
    want = {"patch_embed/kernel"} | {
        f"blocks_{i}/{m}/kernel"
        for i in range(4)
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
    assert set(blocks) == {"embed"} | {f"block{i}" for i in range(4)}
    assert blocks["block3"].shape == (2, 50, 64)


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


# ------------------------------------------------------------ torch conversion (both ways)

ATOL = 1e-4  # relative to the largest logit / activation


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch", reason="torch is optional; conversion tests need it")


@pytest.fixture(scope="module")
def torchvision():
    return pytest.importorskip("torchvision", reason="torchvision is optional; parity needs it")


@pytest.fixture(scope="module")
def timm():
    return pytest.importorskip("timm", reason="timm is optional; timm parity needs it")


def _perturb(torch, net, seed=0):
    """Noise on every parameter: torch initialises biases, LayerNorms and (torchvision) the
    head and class token to constants, which would hide a wrongly mapped tensor."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return net.eval()


def _torch_forward(torch, net, x, blocks):
    """Logits and the outputs of the torch blocks `blocks` ({name: module}) on NHWC `x`."""
    outs = {}
    for key, m in blocks.items():
        m.register_forward_hook(lambda _m, _i, o, key=key: outs.__setitem__(key, o.numpy()))
    with torch.no_grad():
        logits = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    return logits, outs


def _close(ours, ref, what):
    scale = max(1.0, float(np.abs(ref).max()))
    np.testing.assert_allclose(np.asarray(ours), ref, atol=ATOL * scale, rtol=0, err_msg=what)


def _logits(module, variables, x):
    return np.asarray(jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, x))


def _check_both_ways(torch, tc, arch, net, make_net, hw, blocks):
    """torch -> Flax gives torch's logits and block outputs; Flax -> torch is exact, loads
    with strict=True, and a jackpot (masks applied) gives the project's logits in torch."""
    sd = net.state_dict()
    variables, scores, options = tc.convert_state_dict(arch, sd)
    assert scores is None and options["image_size"] == hw
    module = models.get_model(arch, **options)
    x = np.random.RandomState(0).randn(2, hw, hw, 3).astype(np.float32)
    ref, ref_blocks = _torch_forward(torch, net, x, blocks(net))
    _close(_logits(module, variables, x), ref, "logits")
    ours = jax.jit(lambda v, x: models.block_outputs(module, v, x))(variables, x)
    for key, value in ref_blocks.items():
        _close(ours[key], value, key)

    back = tc.export_to_torch_state_dict(arch, variables)
    assert back.keys() == sd.keys()
    for k in sd:
        assert torch.equal(back[k], sd[k]), k

    rng = np.random.RandomState(1)
    masks = {
        p: (rng.rand(*np.shape(v)) < 0.5).astype(np.float32)
        for p, v in _flat(variables["params"]).items()
        if jm.default_filter(p, v)
    }
    fresh = make_net()
    fresh.load_state_dict(tc.export_to_torch_state_dict(arch, variables, masks), strict=True)
    fresh.eval()
    with torch.no_grad():
        theirs = fresh(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    masked = flax.traverse_util.unflatten_dict(
        {p: v * masks[p] if p in masks else v for p, v in _flat(variables["params"]).items()},
        sep="/",
    )
    _close(theirs, _logits(module, {"params": masked}, x), "jackpot logits")


@pytest.mark.parametrize("arch,hw", [("vit_b_16", 224), ("vit_b_32", 64)])
def test_torchvision_vit_parity_both_ways(torch, torchvision, arch, hw):
    from jackpot_jax.interop import torch_convert as tc

    def make():
        return getattr(torchvision.models, arch)(weights=None, image_size=hw, num_classes=10)

    torch.manual_seed(0)
    net = _perturb(torch, make())
    layers = lambda n: {f"block{i}": n.encoder.layers[i] for i in (0, 5, 11)}
    _check_both_ways(torch, tc, arch, net, make, hw, layers)


@pytest.mark.parametrize("name,hw", [("vit_tiny_patch16_224", 64), ("deit_tiny_patch16_224", 48)])
def test_timm_vit_parity_both_ways(torch, timm, name, hw):
    from jackpot_jax.interop import torch_convert as tc

    def make():
        return timm.create_model(name, pretrained=False, img_size=hw, num_classes=10)

    torch.manual_seed(0)
    net = _perturb(torch, make())
    blocks = lambda n: {f"block{i}": n.blocks[i] for i in (0, 11)}
    _check_both_ways(torch, tc, f"timm:{name}", net, make, hw, blocks)


def _keys_and_shapes(tc, arch, options):
    _, variables = _abstract(arch, **options)
    return {e.torch_key: e.torch_shape for e in tc._entries(arch, variables)}


@pytest.mark.parametrize("arch", ["vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14"])
def test_every_torchvision_vit_maps_key_for_key(torch, torchvision, arch):
    from jackpot_jax.interop import torch_convert as tc

    with torch.device("meta"):  # names and shapes without allocating the weights
        sd = getattr(torchvision.models, arch)(weights=None).state_dict()
    assert _keys_and_shapes(tc, arch, {}) == {k: tuple(v.shape) for k, v in sd.items()}


@pytest.mark.parametrize(
    "name",
    [
        "vit_small_patch16_224",
        "vit_base_patch32_384",
        "vit_large_patch16_224",
        "vit_huge_patch14_224",
        "deit_base_patch16_224",
    ],
)
def test_timm_vits_map_key_for_key(torch, timm, name):
    from jackpot_jax.interop import torch_convert as tc

    with torch.device("meta"):
        net = timm.create_model(name, pretrained=False, num_classes=1000)
    sd = net.state_dict()
    assert _keys_and_shapes(tc, f"timm:{name}", {}) == {k: tuple(v.shape) for k, v in sd.items()}


def test_timm_checkpoint_converted_at_another_image_size(torch, timm):
    """A 224 checkpoint converted for 64x64 inputs computes what timm computes when it loads
    the same checkpoint into a 64x64 model (position embedding resized on load)."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    from jackpot_jax.interop import torch_convert as tc

    torch.manual_seed(0)
    big = _perturb(torch, timm.create_model("vit_tiny_patch16_224", num_classes=10))
    small = timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=10)
    small.load_state_dict(checkpoint_filter_fn(big.state_dict(), small), strict=True)
    small.eval()
    arch = "timm:vit_tiny_patch16_224"
    variables, _, options = tc.convert_state_dict(arch, big.state_dict(), image_size=64)
    assert options == {"num_classes": 10, "image_size": 64}
    x = np.random.RandomState(0).randn(2, 64, 64, 3).astype(np.float32)
    ref, _ = _torch_forward(torch, small, x, {})
    _close(_logits(models.get_model(arch, **options), variables, x), ref, "logits")
    with pytest.raises(ValueError, match="multiple of its patch size"):
        tc.convert_state_dict(arch, big.state_dict(), image_size=60)


def test_nonstandard_timm_vit_is_refused_by_key(torch, timm):
    """A timm ViT with layer scale (deit3-style `ls1.gamma`) is not silently half-converted."""
    from jackpot_jax.interop import torch_convert as tc

    net = timm.create_model("vit_tiny_patch16_224", img_size=32, init_values=1e-5)
    with pytest.raises(ValueError, match=r"unexpected keys \(24\): blocks\.0\.ls1\.gamma"):
        tc.convert_state_dict("timm:vit_tiny_patch16_224", net.state_dict())


def test_own_vit_exports_to_timm_and_cli_both_ways(torch, timm, tmp_path):
    """vit_fmnist (1 channel) goes out in timm's layout and back through the CLI, exactly."""
    from jackpot_jax.interop import cli
    from jackpot_jax.pipeline import checkpoint

    module = models.get_model("vit_fmnist")
    variables = _init(module, (1, 28, 28, 1), seed=3)
    ckpt = checkpoint.save_variables(
        tmp_path / "ckpt", variables, arch="vit_fmnist", model_options={"num_classes": 10}
    )
    pth = str(tmp_path / "vit.pth")
    cli.main(["--to-torch", "--input", ckpt, "--output", pth])
    net = timm.models.VisionTransformer(
        img_size=28, patch_size=4, in_chans=1, embed_dim=64, depth=4, num_heads=4, num_classes=10
    )
    net.load_state_dict(torch.load(pth, weights_only=True), strict=True)
    net.eval()
    x = np.random.RandomState(0).randn(2, 28, 28, 1).astype(np.float32)
    ref, _ = _torch_forward(torch, net, x, {})
    _close(_logits(module, variables, x), ref, "logits")
    back = cli.main(["--arch", "vit_fmnist", "--input", pth, "--output", str(tmp_path / "back")])
    assert checkpoint.load_model_info(back)["options"] == {
        "num_classes": 10,
        "patch_size": 4,
        "image_size": 28,
    }
    _, again = checkpoint.load_model(back)
    for p, v in _flat(variables["params"]).items():
        np.testing.assert_array_equal(np.asarray(v), _flat(again["params"])[p], err_msg=p)


# ------------------------------------------------------------- names a user types (CLI)


def test_unknown_model_is_one_error_line_from_the_cli(tmp_path):
    from pipeline_helpers import ROOT, cli

    out = cli(
        tmp_path / "run",
        f"{ROOT}/configs/fashion_mnist_lenet300.py",
        "--config.model=vit_bse",
        "--config.dataset=synthetic:fashion_mnist",
        check=False,
    )
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, out.stderr
    for needle in ("unknown model 'vit_bse'", "vit_base", "lenet5", "timm:"):
        assert needle in errors[0], errors[0]
    assert not (tmp_path / "run").exists()  # refused before anything was written

    out = cli(
        tmp_path / "run",
        f"{ROOT}/configs/fashion_mnist_lenet300.py",
        "--config.model=vit_fmnist",
        "--config.model_options={'width': 2}",
        check=False,
    )
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "does not take options ['width']" in out.stderr and "patch_size" in out.stderr


def test_unknown_arch_is_one_error_line_from_the_converter(tmp_path, capsys):
    from jackpot_jax.interop import cli

    for args in (
        ["--arch", "vit_b_15", "--input", "w.pth", "--output", str(tmp_path / "c")],
        ["--to-torch", "--arch", "resnet51", "--input", "c", "--output", "w.pth"],
    ):
        with pytest.raises(SystemExit) as e:
            cli.main(args)
        err = capsys.readouterr().err
        assert e.value.code == 1 and err.count("error: ") == 1, err
        assert err.startswith(f"error: --arch {args[args.index('--arch') + 1]}: unknown model")
        assert "vit_b_16" in err and "resnet50" in err and "timm:" in err


# ------------------------------------------------------------------ budgets on a ViT


@pytest.fixture(scope="module")
def fmnist_params():
    return _init(models.get_model("vit_fmnist"), (1, 28, 28, 1), seed=7)["params"]


def _prunable(params):
    return {p: np.asarray(v) for p, v in _flat(params).items() if jm.default_filter(p, v)}


@pytest.mark.parametrize("distribution", ["global_magnitude", "uniform", "erk", "global"])
def test_budgets_give_exact_counts_on_vit(fmnist_params, distribution):
    sparsity = 0.9
    layers = _prunable(fmnist_params)
    sizes = {p: v.size for p, v in layers.items()}
    total = sum(sizes.values())
    target = total - int(np.floor(sparsity * total))
    budget = jm.keep_counts(fmnist_params, sparsity, distribution)
    scores = jm.map_prunable(lambda _, w: w, fmnist_params)
    masks = {p: m for p, m in _flat(jm.masks_from_scores(scores, budget)).items() if m is not None}
    assert masks.keys() == layers.keys()
    if distribution == "global":
        assert budget == target
        kept = {p: int(np.asarray(m).sum()) for p, m in masks.items()}
        assert sum(kept.values()) == target
        return
    counts = {p: k for p, k in _flat(budget).items() if k is not None}
    assert counts.keys() == layers.keys()
    for p, m in masks.items():  # the masks keep exactly the budget, layer by layer
        assert int(np.asarray(m).sum()) == counts[p], p
    if distribution == "uniform":
        assert counts == {p: n - int(np.floor(sparsity * n)) for p, n in sizes.items()}
    elif distribution == "global_magnitude":
        mags = np.concatenate([np.abs(v).ravel() for v in layers.values()])
        threshold = np.sort(mags)[::-1][target - 1]
        assert counts == {p: int((np.abs(v) >= threshold).sum()) for p, v in layers.items()}
    else:  # ERK: density proportional to sum(dims) / prod(dims) for the layers not dense
        assert abs(sum(counts.values()) - target) <= len(counts)
        raw = {p: sum(v.shape) / v.size for p, v in layers.items()}
        free = [p for p in layers if counts[p] < sizes[p]]
        q, fc1 = "blocks_0/attn/query/kernel", "blocks_0/mlp/fc1/kernel"
        assert q in free and fc1 in free and raw[q] == 128 / 64**2
        ratio = (counts[q] / sizes[q]) / (counts[fc1] / sizes[fc1])
        assert ratio == pytest.approx(raw[q] / raw[fc1], rel=1e-2)


def test_two_four_along_each_linear_input_axis(fmnist_params):
    pattern = jm.NMPattern(2, 4)
    budget = {p: b for p, b in _flat(jm.nm_budget(fmnist_params, pattern)).items() if b is not None}
    layers = _prunable(fmnist_params)
    # the patch embedding has one input channel: no group of 4 along its input axis
    assert budget.pop("patch_embed/kernel") == layers["patch_embed/kernel"].size
    assert set(budget) == set(layers) - {"patch_embed/kernel"}
    assert all(b == pattern for b in budget.values())
    scores = jm.map_prunable(lambda _, w: w, fmnist_params)
    masks = _flat(jm.masks_from_scores(scores, jm.nm_budget(fmnist_params, pattern)))
    for p, w in layers.items():
        m = np.asarray(masks[p])
        if p == "patch_embed/kernel":
            assert m.all()
            continue
        fan_in, fan_out = w.shape  # Dense kernels are (in, out)
        groups = np.abs(w).reshape(fan_in // 4, 4, fan_out)
        kept = m.reshape(fan_in // 4, 4, fan_out)
        assert (kept.sum(1) == 2).all(), p
        # the two kept are the two largest |w| of each group of 4 inputs
        top2 = np.argsort(-groups, axis=1, kind="stable")[:, :2]
        want = np.zeros_like(kept)
        np.put_along_axis(want, top2, 1, axis=1)
        np.testing.assert_array_equal(kept, want, err_msg=p)


# ------------------------------------------- a ViT jackpot search on Fashion-MNIST (CLI)

_SMALL = [
    "--config.model=vit_fmnist",
    "--config.train_subset=256",
    "--config.val_examples=64",
    "--config.test_subset=128",
    "--config.batch_size=32",
    "--config.search.batch_size=32",
    "--config.eval_batch_size=128",
]


def _fmnist_cli(workdir, *over):
    from pipeline_helpers import ROOT, cli

    return cli(workdir, f"{ROOT}/configs/fashion_mnist_lenet5.py", *_SMALL, *over)


@pytest.fixture(scope="module")
def vit_fmnist_dense(tmp_path_factory):
    work = tmp_path_factory.mktemp("vit_dense")
    _fmnist_cli(work, "--config.mode=pretrain", "--config.pretrain.epochs=1")
    return work / "model"


@needs_fmnist
@pytest.mark.parametrize("distribution,pattern", [("erk", ""), ("global_magnitude", "2:4")])
def test_cli_search_of_vit_fmnist_keeps_exact_budgets(
    vit_fmnist_dense, tmp_path, distribution, pattern
):
    from jackpot_jax.pipeline import checkpoint, export

    out = _fmnist_cli(
        tmp_path / "search",
        "--config.mode=search",
        f"--config.pretrained={vit_fmnist_dense}",
        "--config.search.epochs=1",
        f"--config.search.distribution={distribution}",
        f"--config.search.pattern={pattern}",
        "--config.sparsity=0.8",
    )
    assert "test_accuracy" in out.stdout
    dense = checkpoint.load_variables(vit_fmnist_dense)["params"]
    jackpot = export.read_jackpot(tmp_path / "search")
    assert jackpot["meta"]["arch"] == "vit_fmnist"
    masks, params = jackpot["masks"], jackpot["params"]
    flat_dense = {p: np.asarray(v) for p, v in _flat(dense).items()}
    assert set(masks) == set(_prunable(dense)) and set(params) == set(flat_dense)
    if pattern:
        for p, m in masks.items():
            if p == "patch_embed/kernel":  # one input channel: kept dense
                assert m.all()
            else:
                assert (m.reshape(m.shape[0] // 4, 4, -1).sum(1) == 2).all(), p
    else:
        counts = {
            p: k for p, k in _flat(jm.keep_counts(dense, 0.8, "erk")).items() if k is not None
        }
        assert {p: int(m.sum()) for p, m in masks.items()} == counts
    for p, m in masks.items():  # kept weights are the pre-trained ones, bit for bit
        np.testing.assert_array_equal(params[p][m == 1], flat_dense[p][m == 1], err_msg=p)
        assert np.all(params[p][m == 0] == 0)
    for p in set(params) - set(masks):  # tokens, position embedding, LayerNorms, head
        np.testing.assert_array_equal(params[p], flat_dense[p], err_msg=p)
