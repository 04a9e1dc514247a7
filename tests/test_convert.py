"""PyTorch <-> Flax conversion (parity with torchvision and the official CIFAR layouts) and
checkpoints. Tests needing torch skip when it is not installed (it is an optional extra)."""

import json
import os
import subprocess
import sys

import flax
import jax
import numpy as np
import pytest

from jackpot_jax import errors, models
from jackpot_jax.interop import cli, torch_convert
from jackpot_jax.pipeline import checkpoint, export

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ATOL = 1e-4


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch", reason="torch is optional; conversion tests need it")


@pytest.fixture(scope="module")
def torchvision():
    return pytest.importorskip("torchvision", reason="torchvision is optional; parity needs it")


def _flat(tree):
    return flax.traverse_util.flatten_dict(dict(tree), sep="/")


def _nchw_to_nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


def _randomise_bn(torch, net, x):
    """Random BN affine params; running stats from one train-mode pass on `x`, then jittered."""
    g = torch.Generator().manual_seed(1)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average: stats of the one calibration batch
            m.weight.uniform_(0.5, 1.5, generator=g)
            m.bias.uniform_(-0.2, 0.2, generator=g)
        net.train()
        net(x)
        for m in bns:
            m.momentum = 0.1
            m.running_mean.add_(0.1 * torch.randn(m.running_mean.shape, generator=g))
            m.running_var.mul_(torch.empty(m.running_var.shape).uniform_(0.8, 1.2, generator=g))
    net.eval()


def _hook_outputs(net, names):
    outs = {}
    modules = dict(net.named_modules())
    for key, name in names.items():
        modules[name].register_forward_hook(
            lambda _m, _i, out, key=key: outs.__setitem__(key, _nchw_to_nhwc(out))
        )
    return outs


def _compare(torch, net, arch, ckpt_dir, x, hooks):
    """Runs torch (eval) and the converted Flax model on `x`; logits and hooked blocks agree."""
    outs = _hook_outputs(net, hooks)
    with torch.no_grad():
        ref = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    module, variables = checkpoint.load_model(ckpt_dir)
    logits = np.asarray(module.apply(variables, x, train=False))
    # Float32 rounding grows with depth and magnitude (ResNet-50's logits reach ~8 here, and
    # the CPU convolutions may be oneDNN's or XLA's): the tolerance scales as for the blocks.
    scale = max(1.0, float(np.abs(ref).max()))
    np.testing.assert_allclose(logits, ref, atol=ATOL * scale, rtol=0)
    blocks = models.block_outputs(module, variables, x)
    assert set(hooks) <= set(blocks)
    for key in hooks:
        scale = max(1.0, float(np.abs(outs[key]).max()))
        np.testing.assert_allclose(
            np.asarray(blocks[key]), outs[key], atol=ATOL * scale, rtol=0, err_msg=key
        )
    return logits


# ----------------------------------------------------------------- torchvision parity


@pytest.mark.parametrize("arch,hw", [("resnet18", 64), ("resnet50", 64), ("vgg11_bn", 32)])
def test_torchvision_parity(torch, torchvision, tmp_path, arch, hw):
    torch.manual_seed(0)
    net = getattr(torchvision.models, arch)(weights=None, num_classes=10)
    rng = np.random.RandomState(0)
    _randomise_bn(torch, net, torch.from_numpy(rng.randn(4, 3, hw, hw).astype(np.float32)))
    torch.save(net.state_dict(), tmp_path / "w.pth")
    out = torch_convert.convert_checkpoint(arch, tmp_path / "w.pth", tmp_path / "ckpt")
    assert checkpoint.load_model_info(out) == {"arch": arch, "options": {"num_classes": 10}}
    assert checkpoint.load_scores(out) is None
    if arch.startswith("vgg"):
        pools = [i for i, m in enumerate(net.features) if isinstance(m, torch.nn.MaxPool2d)]
        hooks = {f"pool{k + 1}": f"features.{i}" for k, i in enumerate(pools)}
    else:
        hooks = {f"layer{k}": f"layer{k}" for k in range(1, 5)}
    x = rng.randn(2, hw, hw, 3).astype(np.float32)
    _compare(torch, net, arch, out, x, hooks)


# ------------------------------------------------- official CIFAR layouts (test modules)


def _cifar_modules(torch):
    nn, F = torch.nn, torch.nn.functional

    class MaskedConv2d(nn.Conv2d):
        """The official pruned conv: its scores live in a `mask` parameter."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, bias=False, **kwargs)
            self.mask = nn.Parameter(torch.randn(self.weight.shape))

    class Block(nn.Module):
        def __init__(self, inplanes, planes, stride):
            super().__init__()
            self.conv1 = MaskedConv2d(inplanes, planes, 3, stride, 1)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = MaskedConv2d(planes, planes, 3, 1, 1)
            self.bn2 = nn.BatchNorm2d(planes)
            self.pad = (planes - inplanes) // 2, planes - inplanes - (planes - inplanes) // 2
            self.stride = stride

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            short = x
            if self.stride != 1 or sum(self.pad):
                short = F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0) + self.pad)
            return F.relu(out + short)

    class CifarResNet(nn.Module):
        def __init__(self, n, width, num_classes):
            super().__init__()
            c = 16 * width
            self.conv1 = MaskedConv2d(3, c, 3, 1, 1)
            self.bn1 = nn.BatchNorm2d(c)
            inplanes = c
            for k, planes in enumerate((c, 2 * c, 4 * c)):
                blocks = []
                for i in range(n):
                    blocks.append(Block(inplanes, planes, 2 if k and not i else 1))
                    inplanes = planes
                setattr(self, f"layer{k + 1}", nn.Sequential(*blocks))
            self.fc = nn.Conv2d(4 * c, num_classes, 1, bias=True)

        def forward(self, x):
            x = F.relu(self.bn1(self.conv1(x)))
            x = self.layer3(self.layer2(self.layer1(x)))
            x = F.avg_pool2d(x, x.size(3))
            return self.fc(x).flatten(1)

    class VGGCifar(nn.Module):
        def __init__(self, num_classes):
            super().__init__()
            layers, cin = [], 3
            for v in (
                64,
                64,
                "M",
                128,
                128,
                "M",
                256,
                256,
                256,
                256,
                "M",
                512,
                512,
                512,
                512,
                "M",
                512,
                512,
                512,
                512,
                "M",
            ):
                if v == "M":
                    layers.append(nn.MaxPool2d(2, 2))
                else:
                    layers += [
                        MaskedConv2d(cin, v, 3, 1, 1),
                        nn.BatchNorm2d(v),
                        nn.ReLU(inplace=True),
                    ]
                    cin = v
            self.features = nn.Sequential(*layers)
            self.classifier = nn.Conv2d(512, num_classes, 1, bias=True)

        def forward(self, x):
            return self.classifier(self.features(x)).flatten(1)

    return CifarResNet, VGGCifar


def _check_scores(net, scores):
    """Every `.mask` tensor became the scores of its kernel, transposed like the weight."""
    masks = {k[: -len(".mask")]: v for k, v in net.state_dict().items() if k.endswith(".mask")}
    assert len(scores) == len(masks) > 0
    for name, m in masks.items():
        flax_path = _torch_to_flax_module(name) + "/kernel"
        np.testing.assert_array_equal(scores[flax_path], m.detach().numpy().transpose(2, 3, 1, 0))


def _torch_to_flax_module(name):
    """torch `layer1.0.conv1` is Flax `layer1_0/conv1`; `features.3` is `features_3`."""
    out = []
    for p in name.split("."):
        if p.isdigit():
            out[-1] += f"_{p}"
        else:
            out.append(p)
    return "/".join(out)


@pytest.mark.parametrize("arch,num_classes", [("resnet32", 100), ("vgg19_cifar", 10)])
def test_official_cifar_layout_parity(torch, tmp_path, arch, num_classes):
    CifarResNet, VGGCifar = _cifar_modules(torch)
    torch.manual_seed(0)
    net = CifarResNet(5, 2, num_classes) if arch == "resnet32" else VGGCifar(num_classes)
    rng = np.random.RandomState(0)
    _randomise_bn(torch, net, torch.from_numpy(rng.randn(4, 3, 32, 32).astype(np.float32)))
    # The official checkpoints wrap the state_dict and come from DataParallel.
    wrapped = {"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}, "epoch": 3}
    torch.save(wrapped, tmp_path / "official.pth")
    out = torch_convert.convert_checkpoint(arch, tmp_path / "official.pth", tmp_path / "ckpt")
    options = checkpoint.load_model_info(out)["options"]
    assert options["num_classes"] == num_classes
    if arch == "resnet32":
        assert options["width"] == 2
        hooks = {f"layer{k}": f"layer{k}" for k in (1, 2, 3)}
    else:
        pools = [i for i, m in enumerate(net.features) if isinstance(m, torch.nn.MaxPool2d)]
        assert pools == [6, 13, 26, 39, 52]
        hooks = {f"pool{k + 1}": f"features.{i}" for k, i in enumerate(pools)}
    _check_scores(net, checkpoint.load_scores(out))
    x = rng.randn(2, 32, 32, 3).astype(np.float32)
    _compare(torch, net, arch, out, x, hooks)


def _lenet5_module(torch):
    nn = torch.nn

    class LeNet5(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(1, 20, 5), nn.Conv2d(20, 50, 5)
            self.fc1, self.classifier = nn.Linear(800, 500), nn.Linear(500, 10)

        def forward(self, x):
            x = nn.functional.max_pool2d(self.conv1(x), 2)
            x = nn.functional.max_pool2d(self.conv2(x), 2)
            return self.classifier(torch.relu(self.fc1(x.flatten(1))))

    return LeNet5


def test_lenet5_parity(torch, tmp_path):
    torch.manual_seed(0)
    net = _lenet5_module(torch)().eval()
    torch.save(net.state_dict(), tmp_path / "lenet.pth")
    out = torch_convert.convert_checkpoint("lenet5", tmp_path / "lenet.pth", tmp_path / "ckpt")
    _compare(
        torch,
        net,
        "lenet5",
        out,
        np.random.RandomState(0).randn(3, 28, 28, 1).astype(np.float32),
        {},
    )


# ------------------------------------------------------------------------ round trips


def _random_variables(module, shape, seed=0):
    """Random values in the model's variable shapes (no forward pass: fast); var > 0."""
    abstract = jax.eval_shape(lambda: models.init_variables(module, jax.random.key(0), shape))
    rng = np.random.RandomState(seed)

    def fill(path, leaf):
        if path[-1].key == "var":
            return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
        return (0.1 * rng.randn(*leaf.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, abstract)


def test_round_trip_flax_torch_flax_is_exact(torch):
    CifarResNet, _ = _cifar_modules(torch)
    module = models.get_model("resnet32", num_classes=10)
    variables = _random_variables(module, (1, 32, 32, 3))
    kernels = {
        p: v
        for p, v in _flat(variables["params"]).items()
        if p.endswith("kernel") and not p.startswith("classifier")
    }
    scores = {
        p: np.asarray(jax.random.normal(jax.random.key(i), v.shape))
        for i, (p, v) in enumerate(kernels.items())
    }
    state_dict = torch_convert.export_to_torch_state_dict("resnet32", variables, scores=scores)
    CifarResNet(5, 2, 10).load_state_dict(state_dict, strict=True)  # official names, exactly
    back, back_scores, options = torch_convert.convert_state_dict("resnet32", state_dict)
    assert options == {"num_classes": 10, "width": 2}
    for name in ("params", "batch_stats"):
        a, b = _flat(variables[name]), _flat(back[name])
        assert a.keys() == b.keys()
        for p in a:
            np.testing.assert_array_equal(np.asarray(a[p]), b[p], err_msg=p)
    assert back_scores.keys() == scores.keys()
    for p in scores:
        np.testing.assert_array_equal(scores[p], back_scores[p])


def test_jackpot_export_runs_in_torchvision(torch, torchvision, tmp_path):
    module = models.get_model("resnet18", num_classes=10)
    variables = models.init_variables(module, jax.random.key(0), (1, 64, 64, 3))
    rng = np.random.RandomState(0)
    masks = {
        p: (rng.rand(*v.shape) < 0.3).astype(np.float32)
        for p, v in _flat(variables["params"]).items()
        if p.endswith("kernel") and not p.startswith("classifier")
    }
    params = {p: np.asarray(v) for p, v in _flat(variables["params"]).items()}
    np.savez(
        tmp_path / "jackpot.npz",
        **{f"masks/{p}": m for p, m in masks.items()},
        **{f"params/{p}": v for p, v in params.items()},
    )
    ckpt = checkpoint.save_variables(
        tmp_path / "ckpt", variables, arch="resnet18", model_options={"num_classes": 10}
    )
    cli.main(
        [
            "--to-torch",
            "--input",
            ckpt,
            "--output",
            str(tmp_path / "j.pth"),
            "--jackpot",
            str(tmp_path / "jackpot.npz"),
        ]
    )
    net = torchvision.models.resnet18(weights=None, num_classes=10)
    net.load_state_dict(torch.load(tmp_path / "j.pth", weights_only=True), strict=True)
    net.eval()
    assert float((net.conv1.weight == 0).float().mean()) > 0.6
    x = rng.randn(2, 64, 64, 3).astype(np.float32)
    with torch.no_grad():
        ref = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    masked = flax.traverse_util.unflatten_dict(
        {p: v * masks[p] if p in masks else v for p, v in params.items()}, sep="/"
    )
    out = module.apply({"params": masked, "batch_stats": variables["batch_stats"]}, x, train=False)
    np.testing.assert_allclose(np.asarray(out), ref, atol=ATOL, rtol=0)


def _search(tmp_path, arch, image_shape):
    """A 4-step search of `arch` on synthetic data (BatchNorm statistics move in it): returns
    (pre-trained checkpoint dir, search workdir)."""
    from pipeline_helpers import tiny_config

    from jackpot_jax import core
    from jackpot_jax.data import datasets as data
    from jackpot_jax.pipeline import modes

    config = tiny_config(
        **{
            "model": arch,
            "search.epochs": 1,
            "batch_size": 16,
            "search.score_pruned": 0.999,
            "val_examples": 0,
        }
    )
    if arch == "resnet20":
        config.model_options = {"width": 1}
    ds = data.synthetic_dataset(10, image_shape, n_train=64, n_val=0, n_test=16, seed=3)
    module = models.get_model(arch, num_classes=10, **config.model_options)
    variables = _random_variables(module, (1, *image_shape), seed=5)  # BN stats not 0/1
    pre = checkpoint.save_variables(
        tmp_path / "dense",
        variables,
        arch=arch,
        model_options={"num_classes": 10, **config.model_options},
    )
    config.pretrained = pre
    modes.run_search(config, str(tmp_path / "search"), ds=ds, mesh=core.make_mesh(1))
    return pre, tmp_path / "search", ds


@pytest.mark.parametrize("arch", ["resnet20", "lenet5"])
def test_exported_jackpot_is_the_evaluated_network(torch, tmp_path, arch):
    """The torch export of a searched jackpot gives the logits the project evaluated: the
    jackpot's masked weights and its own BatchNorm statistics (which the search updated), both
    from the README's command (checkpoint + --jackpot) and from the run's workdir alone."""
    from jackpot_jax.data import reading
    from jackpot_jax.pipeline import export

    shape = (8, 8, 3) if arch == "resnet20" else (28, 28, 1)
    pre, work, ds = _search(tmp_path, arch, shape)
    module, variables, masks, kind = export.load_for_eval(str(work), shape)
    assert kind == "jackpot"
    x = reading.normalize(ds, ds.test.images[:8]).astype(np.float32)
    ours = np.asarray(module.apply(variables, x, train=False))  # what the search evaluated
    if arch == "resnet20":
        moved = [
            np.abs(a - b).max()
            for a, b in zip(
                jax.tree.leaves(variables["batch_stats"]),
                jax.tree.leaves(checkpoint.load_variables(pre)["batch_stats"]),
            )
        ]
        assert max(moved) > 1e-2  # the search moved them
        net = _cifar_modules(torch)[0](3, 1, 10)
    else:
        net = _lenet5_module(torch)()
    for i, args in enumerate(
        [["--input", pre, "--jackpot", str(work / "jackpot.npz")], ["--input", str(work)]]
    ):
        out = str(tmp_path / f"jackpot{i}.pth")
        cli.main(["--to-torch", *args, "--output", out])
        res = net.load_state_dict(torch.load(out, weights_only=True), strict=False)
        # Only the test module's score tensors (`.mask`, written with --include-scores) are absent.
        assert not res.unexpected_keys and all(k.endswith(".mask") for k in res.missing_keys), res
        net.eval()
        with torch.no_grad():
            theirs = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
        np.testing.assert_allclose(theirs, ours, atol=ATOL, rtol=0, err_msg=str(args))


def test_cli_script_both_directions(torch, tmp_path):
    CifarResNet, _ = _cifar_modules(torch)
    torch.manual_seed(0)
    net = CifarResNet(3, 1, 10)
    torch.save(net.state_dict(), tmp_path / "r20.pth")
    script = os.path.join(REPO, "tools", "convert_torch_weights.py")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["JAX_PLATFORMS"] = "cpu"
    subprocess.run(
        [sys.executable, script, "--arch", "resnet20", "--input", "r20.pth", "--output", "ckpt"],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            sys.executable,
            script,
            "--to-torch",
            "--include-scores",
            "--input",
            "ckpt",
            "--output",
            "back.pth",
        ],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
    )
    back = torch.load(tmp_path / "back.pth", weights_only=True)
    orig = net.state_dict()
    assert back.keys() == orig.keys()
    for k in orig:
        assert torch.equal(back[k], orig[k]) or k.endswith("num_batches_tracked"), k


# ---------------------------------------------------------------------------- refusals


def test_missing_unexpected_and_mismatched_keys_in_one_error(torch, tmp_path):
    CifarResNet, _ = _cifar_modules(torch)
    state_dict = CifarResNet(3, 1, 10).state_dict()
    del state_dict["layer2.0.bn1.running_var"]
    state_dict["layer9.extra.weight"] = torch.zeros(3)
    state_dict["layer1.1.conv2.weight"] = torch.zeros(16, 16, 5, 5)
    torch.save(state_dict, tmp_path / "bad.pth")
    with pytest.raises(ValueError) as err:
        torch_convert.convert_checkpoint("resnet20", tmp_path / "bad.pth", tmp_path / "ckpt")
    msg = str(err.value)
    for needle in (
        "missing keys (1): layer2.0.bn1.running_var",
        "unexpected keys (1): layer9.extra.weight",
        "layer1.1.conv2.weight: expected (16, 16, 3, 3), got (16, 16, 5, 5)",
        "bad.pth",
    ):
        assert needle in msg
    assert not (tmp_path / "ckpt").exists()


_UNPICKLED = []


def _record_unpickling():
    _UNPICKLED.append(True)
    return "payload"


class _CodeOnUnpickle:
    """Stands for any custom object: unpickling it would run `_record_unpickling`."""

    def __reduce__(self):
        return (_record_unpickling, ())


def test_pickled_code_is_refused(torch, tmp_path):
    torch.save(
        {"state_dict": {"conv1.weight": torch.zeros(1)}, "extra": _CodeOnUnpickle()},
        tmp_path / "evil.pth",
    )
    with pytest.raises(
        errors.UnsafeCheckpointError,
        match="needs more than weights-only.*refuses to unpickle arbitrary code",
    ):
        torch_convert.convert_checkpoint("resnet20", tmp_path / "evil.pth", tmp_path / "ckpt")
    assert not _UNPICKLED


def test_export_rejects_masks_for_unknown_paths(torch):
    module = models.get_model("lenet300_100")
    variables = models.init_variables(module, jax.random.key(0), (1, 28, 28, 1))
    with pytest.raises(ValueError, match="fc9/kernel"):
        torch_convert.export_to_torch_state_dict(
            "lenet300_100", variables, masks={"fc9/kernel": np.ones((2, 2))}
        )


# ------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_relative_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    module = models.get_model("resnet20", num_classes=4)
    variables = _random_variables(module, (1, 32, 32, 3))
    scores = {
        "conv1/kernel": np.full((3, 3, 3, 16), 0.95, np.float32),
        "layer1_0/conv1/kernel": np.ones((3, 3, 16, 16), np.float32),
    }
    path = checkpoint.save_variables(
        "ck",
        variables,
        arch="resnet20",
        model_options={"num_classes": 4, "width": 1},
        scores=scores,
    )
    assert os.path.isabs(path)
    loaded_module, loaded = checkpoint.load_model("ck")
    assert loaded_module == module
    assert set(loaded) == {"params", "batch_stats"}
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, variables), loaded)
    got = checkpoint.load_scores("ck")
    assert got.keys() == scores.keys()
    jax.tree.map(np.testing.assert_array_equal, scores, got)
    # An existing checkpoint is never overwritten unless asked: refused, and left as it was.
    with pytest.raises(errors.OutputExistsError, match="ck exists.*--overwrite"):
        checkpoint.save_variables("ck", variables, arch="resnet18")
    assert checkpoint.load_model_info("ck")["arch"] == "resnet20"
    assert checkpoint.load_scores("ck").keys() == scores.keys()
    # Saving again with overwrite and without scores must not leave the old ones behind.
    checkpoint.save_variables("ck", variables, arch="resnet20", overwrite=True)
    assert checkpoint.load_scores("ck") is None


def test_checkpoint_errors_name_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}.*variables"):
        checkpoint.load_variables(tmp_path)
    checkpoint.save_variables(tmp_path / "ck", {"params": {"w": np.ones(2)}})
    with pytest.raises(FileNotFoundError, match="model.json"):
        checkpoint.load_model(tmp_path / "ck")
    assert checkpoint.load_scores(tmp_path / "ck") is None
    with pytest.raises(ValueError, match="params"):
        checkpoint.save_variables(tmp_path / "x", {"batch_stats": {}})


def test_importing_jackpot_jax_does_not_import_torch():
    code = (
        "import sys, jackpot_jax.models, jackpot_jax.pipeline.checkpoint, jackpot_jax.interop.torch_convert; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True)


def test_read_jackpot_reads_the_pipeline_export_format(tmp_path):
    # The pipeline's jackpot.npz also holds batch_stats/<path> and a JSON meta entry.
    mask = np.array([[1, 0], [0, 1]], np.uint8)
    np.savez(
        tmp_path / "jackpot.npz",
        **{
            "masks/conv1/kernel": mask,
            "params/conv1/kernel": mask * 2.0,
            "params/classifier/bias": np.ones(3),
            "batch_stats/bn1/mean": np.zeros(2),
            "meta": np.asarray(json.dumps({"arch": "lenet5"})),
        },
    )
    jackpot = export.read_jackpot(tmp_path / "jackpot.npz")  # the one reader of the format
    masks, params, batch_stats = jackpot["masks"], jackpot["params"], jackpot["batch_stats"]
    assert sorted(masks) == ["conv1/kernel"]
    assert sorted(params) == ["classifier/bias", "conv1/kernel"]
    np.testing.assert_array_equal(params["conv1/kernel"], mask * 2.0)
    assert sorted(batch_stats) == ["bn1/mean"]
    np.savez(tmp_path / "bad.npz", **{"weights/conv1": mask})
    with pytest.raises(ValueError, match="unexpected key 'weights/conv1'"):
        export.read_jackpot(tmp_path / "bad.npz")
