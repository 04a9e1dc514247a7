"""Benchmark: one training step of jackpot_jax beside the same step in PyTorch at its best.

Run from the repository root::

    python benchmarks/bench_step.py --models lenet5,resnet32x2 --batch 128 [--json FILE]

For each model, batch size and mode (``search``, ``dense``) one process builds ONE network
and ONE batch and times steps of

* **jackpot_jax** ("ours"): the step the CLI runs, built by the same code
  (`engine.make_train_step`, `engine.make_optimizer` with the config's SGD settings, per-layer
  keep counts from `pruning.budget_for` (``global_magnitude`` at 90% sparsity), two-level
  scores from the magnitude mask, `engine.TrainState`, the batch sharded over a `Mesh`):
  ``search`` = frozen params, straight-through exact top-k masks, SGD on the scores;
  ``dense`` = plain SGD on all params (the pretraining step);
* **PyTorch**: the authors' search step, written below after their released code, on the
  SAME weights (ours, exported by `jackpot_jax.interop.torch_convert
  .export_to_torch_state_dict`, the converter behind ``tools/convert_torch_weights.py
  --to-torch``; our scores travel as the official ``<layer>.mask`` tensors), the same batch
  and the same per-layer keep counts: frozen conv/linear weights, a binary mask of
  ``|scores|`` keeping exactly our count (`torch.topk`; ``--torch-mask sort`` for the
  official full sort) passed straight through by a custom autograd function,
  ``torch.optim.SGD`` on the scores only, BatchNorm in train mode; ``dense`` = SGD on every
  weight. Both sides therefore compute the same network and the same loss: the losses of
  step 0 are printed and must agree to 1e-3 relative, else the row is marked FAILED (the run
  goes on; its exit status is 1). The check is made in float32: a side that computes in
  bfloat16 (``--dtype bfloat16``, an ``autocast`` variant) is checked on one float32 forward
  pass of its network, its bfloat16 loss printed beside it (a bfloat16 loss can move by
  percents where BatchNorm sees few values, e.g. ResNet-50 on 2 images of 32x32).

PyTorch runs in several variants (``--torch-variants``, each a ``+``-joined set of
``eager``, ``channels_last``, ``compile``, ``autocast``): ``eager`` (NCHW, the authors' code
as written), ``channels_last`` (model and input in NHWC memory), ``compile``
(``torch.compile(model)``, inductor) and ``compile+channels_last``; on a GPU also
``autocast`` (bfloat16 under `torch.autocast`). With ``--dtype bfloat16`` every variant runs
under autocast. A variant that fails (to build, to compile, to run) is reported as failed
with the first line of its exception, never dropped. The first step of each side (JAX's jit,
torch.compile's compilation) is timed apart and reported.

All sides take turns: ``--rounds`` rounds of ``--steps`` steps each (the order of the sides
rotates every round), so all see the same machine load over time and their thread pools never
compete; a cell gets ``rounds * steps`` timed steps (``--rounds`` defaults to enough for
20), and the table reports their median and interquartile range, and the ratio to ours
(``torch / ours``, above 1: jackpot_jax faster) of the authors' code as written (eager) and
of the fastest variant in ours' precision. No thread or OpenMP policy is set by this
script: both sides run in one process, so whatever the user's environment sets
(``OMP_WAIT_POLICY``, ``OMP_NUM_THREADS``; jackpot_jax's oneDNN handler and PyTorch both use
OpenMP) applies to both; the header prints it, torch.compile's cache state (warm or cold) and
the machine's load average at the start and the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

import jax
import jax.numpy as jnp

from jackpot_jax import kernels, models, utils
from jackpot_jax import method as jm
from jackpot_jax.pipeline import config as config_lib
from jackpot_jax.pipeline import engine, pruning

# benchmark name -> (registry name, options, classes)
MODELS = {
    "lenet5": ("lenet5", {}, 10),
    "resnet20": ("resnet20", {}, 10),
    "resnet32x2": ("resnet32", {"width": 2}, 10),
    "vgg19_cifar": ("vgg19_cifar", {}, 10),
    "resnet50": ("resnet50", {}, 1000),
    # ViT-S/16 at 224 px; the PyTorch side is timm's VisionTransformer (fused q/k/v, masked
    # block by block)
    "vit_small": ("vit_small", {"image_size": 224, "patch_size": 16}, 1000),
}
CPU_DEFAULT = "lenet5,resnet20,resnet32x2,vgg19_cifar"
GPU_DEFAULT = CPU_DEFAULT + ",resnet50"
SPARSITY = 0.9
TORCH_MASK = "topk"  # --torch-mask
VARIANT_PARTS = ("eager", "channels_last", "compile", "autocast")
CPU_VARIANTS = "eager,channels_last,compile,compile+channels_last"
GPU_VARIANTS = CPU_VARIANTS + ",autocast"
# Relative agreement demanded of the two sides' step-0 losses, both computed in float32.
LOSS_RTOL = 1e-3
MIN_TIMED_STEPS = 20  # per side and cell, unless --rounds says otherwise


# ---------------------------------------------------------------------------------------------
# One network, one batch: the jackpot_jax side builds them, PyTorch gets the same
# ---------------------------------------------------------------------------------------------


IMAGE_SIZE = 0  # --image-size
CONV_IMPL = None  # --conv (None: the library's default, 'auto')


def input_shape(name: str) -> tuple:
    h, w, c = models.input_shape(MODELS[name][0], MODELS[name][1])
    return (IMAGE_SIZE, IMAGE_SIZE, c) if IMAGE_SIZE else (h, w, c)


def _config(name: str, batch: int, dtype: str):
    c = config_lib.base_config()
    c.model, c.batch_size, c.sparsity = MODELS[name][0], batch, SPARSITY
    # The learning rate does not change a step's cost; 0.01 keeps the dense steps' losses on
    # random data finite (lr 0.1 diverges to NaN within a few LeNet-5 steps).
    c.pretrain.lr = 0.01
    if dtype != "float32":
        if "compute_dtype" not in c:
            raise SystemExit(f"--dtype {dtype}: this jackpot_jax has no config.compute_dtype")
        c.compute_dtype = dtype
    return c


def _make_step(config, module, kind, tx, budget):
    options = kernels.ComputeOptions.from_config(config)
    if CONV_IMPL:
        options = options.replace(conv_impl=CONV_IMPL)
    return engine.make_train_step(
        module,
        kind,
        tx,
        budget=budget,
        use_abs=config.search.use_abs,
        label_smoothing=config.label_smoothing,
        options=options,
    )


def jax_setup(name: str, batch: int, dtype: str, seed: int = 0):
    """Module, variables, budget (per-layer keep counts) and scores of ``name`` (random
    weights stand in for pre-trained ones) and one synthetic NHWC batch."""
    registry, options, classes = MODELS[name]
    module = models.get_model(registry, num_classes=classes, **options)
    shape = input_shape(name)
    variables = jax.jit(models.init_variables, static_argnums=(0, 2))(
        module, jax.random.key(seed), (1, *shape)
    )
    config = _config(name, batch, dtype)
    params = variables["params"]
    filter_fn = pruning.prune_filter(config)
    budget = pruning.budget_for(config, params, filter_fn)
    mask = jm.criterion_mask(jm.magnitude_scores(params, filter_fn), budget)
    scores = jm.init_scores_from_mask(mask, config.search.score_kept, config.search.score_pruned)
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, *shape), dtype=np.float32)
    labels = rng.integers(0, classes, batch).astype(np.int32)
    return config, module, variables, budget, scores, (images, labels)


def jax_runner(setup, mode: str):
    """A function running one step of the CLI's step for ``mode``: returns (ms, loss)."""
    config, module, variables, budget, scores, (images, labels) = setup
    mesh = engine.make_mesh(config.num_devices)
    params, batch_stats = variables["params"], utils.batch_stats_of(variables)
    if mode == "search":
        opt_cfg, trainable, frozen, kind = config.search, scores, params, "search"
    else:
        opt_cfg, trainable, frozen, kind = config.pretrain, params, None, "dense"
    tx, _ = engine.make_optimizer(opt_cfg, opt_cfg.epochs, 100)
    step_fn = _make_step(config, module, kind, tx, budget if kind == "search" else None)
    state = engine.TrainState(
        step=jnp.zeros((), jnp.int32),
        trainable=trainable,
        opt_state=tx.init(trainable),
        batch_stats=batch_stats,
        rng=jax.random.key_data(jax.random.key(0)),
    )
    box = {"state": engine.replicate(mesh, utils.as_numpy(state))}
    frozen = engine.replicate(mesh, frozen)
    x, y = engine.shard_batch(mesh, (images, labels))

    def run():
        t0 = time.perf_counter()
        box["state"], metrics = step_fn(box["state"], frozen, x, y)
        jax.block_until_ready((box["state"], metrics))
        return (time.perf_counter() - t0) * 1e3, float(metrics["loss"])

    return run


def jax_loss_float32(setup, mode: str) -> float:
    """Our network's step-0 loss in float32 (one forward pass, BatchNorm on the batch's
    statistics, the search's masks applied): the reference a bfloat16 run is checked on."""
    config, module, variables, budget, scores, (images, labels) = setup
    params, batch_stats = variables["params"], utils.batch_stats_of(variables)
    if mode == "search":
        masks = jm.masks_from_scores(scores, budget, use_abs=config.search.use_abs)
        params = jm.apply_masks(params, masks)

    @jax.jit
    def loss(params, x, y):
        with kernels.use(kernels.ComputeOptions(compute_dtype="float32")):
            logits, _ = module.apply(
                utils.variables_of(params, batch_stats), x, train=True, mutable=["batch_stats"]
            )
        return engine.cross_entropy(logits.astype(jnp.float32), y, config.label_smoothing)

    return float(loss(params, images, labels))


def time_mask(setup, repeats: int) -> float:
    """Median ms of the jitted exact top-k masks of every pruned layer (the search's budget)."""
    _, _, _, budget, scores, _ = setup
    fn = jax.jit(lambda s: jm.masks_from_scores(s, budget))
    times = []
    for i in range(2 + repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(scores))
        if i >= 2:
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def torch_weights(name: str, setup, mode: str):
    """(state_dict, {torch module name: keep count}) of our network through our converter:
    in ``search`` mode our scores ride along as the official ``<layer>.mask`` tensors."""
    from jackpot_jax.interop import torch_convert

    arch = MODELS[name][0]
    _, _, variables, budget, scores, _ = setup
    search = mode == "search"
    state_dict = torch_convert.export_to_torch_state_dict(
        arch,
        utils.as_numpy(variables),
        scores=utils.as_numpy(jm.flatten_paths(scores)) if search else None,
    )
    counts = {}
    if search:
        targets = torch_convert.kernel_targets(arch, utils.as_numpy(variables))
        for path, keep in jm.flatten_paths(budget).items():
            if path not in targets:
                raise ValueError(f"budget path {path!r}: expected a '<module>/kernel' path")
            module, part = targets[path]
            if part is None:
                counts[module] = int(keep)
            else:  # a ViT's q, k, v: three counts for the three blocks of one fused weight
                counts.setdefault(module, [None, None, None])[part] = int(keep)
    return state_dict, counts


# ---------------------------------------------------------------------------------------------
# PyTorch side: the authors' search step, written here after their released code
# ---------------------------------------------------------------------------------------------


def torch_modules():
    """The PyTorch networks (module names as our converter writes them) and the authors'
    masked layers (built lazily: torch is optional)."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    def sort_mask(scores, keep):
        """1 everywhere but on the ``n - keep`` lowest scores (sort order breaks ties), as the
        official code's mask function (which prunes the lowest ``int(p * n)``)."""
        flat = scores.flatten()
        _, idx = flat.sort()
        return torch.ones_like(flat).scatter(0, idx[: flat.numel() - keep], 0.0).view(scores.shape)

    def topk_mask(scores, keep):
        """The same count kept with `torch.topk` (equal to ``sort_mask`` up to ties; ~3x
        faster than a full sort on 2 CPU cores for the mask sizes here)."""
        flat = scores.flatten()
        idx = flat.topk(keep, sorted=False).indices
        return torch.zeros_like(flat).scatter(0, idx, 1.0).view(scores.shape)

    class GetMask(torch.autograd.Function):
        """The mask forward, the identity backward (straight-through)."""

        @staticmethod
        def forward(ctx, scores, keep):
            return (sort_mask if TORCH_MASK == "sort" else topk_mask)(scores, keep)

        @staticmethod
        def backward(ctx, g):
            return g, None

    class MaskedConv2d(nn.Conv2d):
        """A conv whose frozen weight is multiplied by the mask of its scores (``|scores|``
        ranked, as the official code does); the scores are called ``mask`` there."""

        def setup_scores(self, keep):
            self.keep = keep
            self.weight.requires_grad_(False)
            self.mask = nn.Parameter(torch.ones_like(self.weight))

        def forward(self, x):
            m = GetMask.apply(self.mask.abs(), self.keep)
            return F.conv2d(
                x, self.weight * m, self.bias, self.stride, self.padding, self.dilation, self.groups
            )

    class MaskedLinear(nn.Linear):
        setup_scores = MaskedConv2d.setup_scores

        def forward(self, x):
            m = GetMask.apply(self.mask.abs(), self.keep)
            return F.linear(x, self.weight * m, self.bias)

    class MaskedQKV(nn.Linear):
        """timm's fused q/k/v Linear with three masks in one: each (D, D) block of the fused
        (3D, D) weight keeps its own count, as our q, k, v layers do."""

        def setup_scores(self, keeps):
            MaskedConv2d.setup_scores(self, list(keeps))

        def forward(self, x):
            s = self.mask.abs().chunk(3, dim=0)
            m = torch.cat([GetMask.apply(si, k) for si, k in zip(s, self.keep)], dim=0)
            return F.linear(x, self.weight * m, self.bias)

    class LeNet5(nn.Module):
        def __init__(self, classes):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(1, 20, 5), nn.Conv2d(20, 50, 5)
            self.fc1 = nn.Linear(800, 500)
            self.classifier = nn.Linear(500, classes)

        def forward(self, x):
            x = F.max_pool2d(self.conv1(x), 2)
            x = F.max_pool2d(self.conv2(x), 2)
            return self.classifier(F.relu(self.fc1(x.flatten(1))))

    class Block(nn.Module):  # CIFAR BasicBlock with the option-A shortcut
        def __init__(self, cin, planes, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.stride, self.pad = stride, planes - cin

        def forward(self, x):
            y = F.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            s = x[:, :, :: self.stride, :: self.stride] if self.stride != 1 else x
            if self.pad:
                s = F.pad(s, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
            return F.relu(y + s)

    class CifarResNet(nn.Module):
        """The official layout: stages ``layer1..3``, classifier ``fc`` a 1x1 conv with bias."""

        def __init__(self, classes, n, width):
            super().__init__()
            w = 16 * width
            self.conv1, self.bn1 = nn.Conv2d(3, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w)
            cin = w
            for stage, planes in enumerate((w, 2 * w, 4 * w)):
                blocks = []
                for i in range(n):
                    blocks.append(Block(cin, planes, 2 if stage and not i else 1))
                    cin = planes
                setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
            self.fc = nn.Conv2d(cin, classes, 1)

        def forward(self, x):
            x = F.relu(self.bn1(self.conv1(x)))
            x = self.layer3(self.layer2(self.layer1(x)))
            return self.fc(x.mean((2, 3), keepdim=True)).flatten(1)

    class VGGCifar(nn.Module):
        def __init__(self, classes):
            super().__init__()
            layers, cin = [], 3
            for v in models.vgg.CFGS["vgg19"]:
                if v == "M":
                    layers.append(nn.MaxPool2d(2))
                else:
                    layers += [nn.Conv2d(cin, v, 3, 1, 1, bias=False), nn.BatchNorm2d(v)]
                    layers.append(nn.ReLU(inplace=True))
                    cin = v
            self.features = nn.Sequential(*layers)
            self.classifier = nn.Conv2d(512, classes, 1)  # the official 1x1-conv classifier

        def forward(self, x):
            return self.classifier(self.features(x)).flatten(1)

    def resnet50(classes):
        import torchvision

        return torchvision.models.resnet50(num_classes=classes)

    def masked(net, counts):
        """``net`` with the conv/linear modules named in ``counts`` replaced by masked ones
        keeping exactly that many weights."""
        named = dict(net.named_modules())
        unknown = sorted(set(counts) - set(named))
        if unknown:
            raise ValueError(f"keep counts for modules the torch network lacks: {unknown}")
        for name, keep in counts.items():
            old = named[name]
            if type(old) is nn.Conv2d:
                new = MaskedConv2d(
                    old.in_channels,
                    old.out_channels,
                    old.kernel_size,
                    old.stride,
                    old.padding,
                    old.dilation,
                    old.groups,
                    old.bias is not None,
                )
            elif type(old) is nn.Linear and isinstance(keep, list):
                new = MaskedQKV(old.in_features, old.out_features, old.bias is not None)
            elif type(old) is nn.Linear:
                new = MaskedLinear(old.in_features, old.out_features, old.bias is not None)
            else:
                raise ValueError(f"{name}: {type(old).__name__} cannot be masked")
            new.setup_scores(keep)
            parent, _, attr = name.rpartition(".")
            setattr(named[parent] if parent else net, attr, new)
        return net

    def vit_small(classes):
        """timm's ViT-S/16 (`vit_small_patch16_224`): the layout our converter writes."""
        from timm.models.vision_transformer import VisionTransformer

        return VisionTransformer(
            img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6, num_classes=classes
        )

    builders = {
        "lenet5": LeNet5,
        "resnet20": lambda c: CifarResNet(c, 3, 1),
        "resnet32x2": lambda c: CifarResNet(c, 5, 2),
        "vgg19_cifar": VGGCifar,
        "resnet50": resnet50,
        "vit_small": vit_small,
    }
    return torch, builders, masked


def parse_variant(variant: str) -> set:
    parts = set(variant.split("+"))
    bad = parts - set(VARIANT_PARTS)
    if bad or not variant:
        raise SystemExit(
            f"--torch-variants: {variant!r} has {sorted(bad) or 'nothing'}; a variant joins "
            f"some of {', '.join(VARIANT_PARTS)} with '+' (e.g. compile+channels_last)"
        )
    return parts


def variant_dtype(variant: str, dtype: str) -> str:
    """The precision a PyTorch variant computes in: bfloat16 under autocast."""
    return "bfloat16" if dtype == "bfloat16" or "autocast" in parse_variant(variant) else "float32"


def torch_runner(name, setup, weights, mode: str, dtype: str, device: str, variant: str):
    """A function running one PyTorch step of ``variant`` for ``mode``: returns (ms, loss)."""
    torch, builders, masked = torch_modules()
    parts = parse_variant(variant)
    config, _, _, _, _, (images, labels) = setup
    state_dict, counts = weights
    net = masked(builders[name](MODELS[name][2]), counts)
    net.load_state_dict(state_dict, strict=True)
    net = net.to(device).train()
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device)
    y = torch.from_numpy(labels.astype(np.int64)).to(device)
    if "channels_last" in parts:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if mode == "search":
        for n, p in net.named_parameters():  # weights, biases and BatchNorm affine frozen
            p.requires_grad_(n.endswith(".mask"))
        opt_cfg = config.search
    else:
        opt_cfg = config.pretrain
    trainable = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.SGD(
        trainable,
        lr=opt_cfg.lr,
        momentum=opt_cfg.momentum,
        weight_decay=opt_cfg.weight_decay,
        nesterov=opt_cfg.nesterov,
    )
    forward = torch.compile(net) if "compile" in parts else net
    autocast = torch.autocast(
        device.split(":")[0],
        dtype=torch.bfloat16,
        enabled=variant_dtype(variant, dtype) == "bfloat16",
    )
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    smoothing = float(config.label_smoothing)

    def run():
        sync()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast:
            logits = forward(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y, label_smoothing=smoothing)
        loss.backward()
        opt.step()
        sync()
        return (time.perf_counter() - t0) * 1e3, float(loss.detach())

    if variant_dtype(variant, dtype) != "float32":
        # A bfloat16 variant is checked on the network, not on rounding (a bfloat16 loss can
        # move by percents, e.g. ResNet-50 on 2 images of 32x32): the same torch network's
        # step-0 loss in float32 (eager, no update; BatchNorm uses the batch's statistics).
        with torch.no_grad():
            logits = net(x)
        run.check_loss0 = float(
            torch.nn.functional.cross_entropy(logits.float(), y, label_smoothing=smoothing)
        )
    return run


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def time_pair(runners: dict, steps: int, warmup: int, rounds: int) -> dict:
    """{side: (median ms, min ms, last loss)} for ``{side: run}`` (runs returning (ms, loss)):
    every side warmed up, then ``rounds`` rounds of ``steps`` timed steps per side in turn
    (benchmarks/bench_conv.py times its convolutions with it)."""
    for run in runners.values():
        for _ in range(warmup):
            run()
    times = {side: [] for side in runners}
    loss = {}
    for _ in range(rounds):
        for side, run in runners.items():
            for _ in range(steps):
                ms, loss[side] = run()
                times[side].append(ms)
    return {side: (statistics.median(t), min(t), loss[side]) for side, t in times.items()}


def time_sides(builders: dict, steps: int, warmup: int, rounds: int) -> dict:
    """{side: result} for ``{side: () -> run}``: each side built and warmed up (its first
    step, jit or compile included, timed apart; its loss is the step-0 loss), then ``rounds``
    rounds of ``steps`` timed steps per side, the sides' order rotating every round. A side
    that raises is kept as ``{"error": first line}``."""
    runs, out = {}, {}
    for side, build in builders.items():
        try:
            t0 = time.perf_counter()
            run = build()
            build_s = time.perf_counter() - t0
            first_ms, loss0 = run()
            for _ in range(max(warmup - 1, 0)):
                run()
        except Exception as e:  # pylint: disable=broad-except  # a failed variant is a result
            out[side] = {"error": _first_line(e)}
            print(f"    {side}: FAILED: {out[side]['error']}", flush=True)
            continue
        runs[side] = run
        out[side] = {"loss0": loss0, "first_s": first_ms / 1e3 + build_s, "times": []}
        check = getattr(run, "check_loss0", None)
        if check is not None:
            out[side]["check_loss0"] = check
        print(
            f"    {side}: step 0 loss {loss0:.6f}"
            + ("" if check is None else f" ({check:.6f} in float32)")
            + f", first step {first_ms / 1e3:.1f} s (+{build_s:.1f} s to build)",
            flush=True,
        )
    order = list(runs)
    for r in range(rounds):
        for side in order[r % len(order) :] + order[: r % len(order)] if order else []:
            if "error" in out[side]:
                continue
            try:
                for _ in range(steps):
                    ms, out[side]["loss"] = runs[side]()
                    out[side]["times"].append(ms)
            except Exception as e:  # pylint: disable=broad-except
                out[side] = {"error": _first_line(e)}
                print(f"    {side}: FAILED while timed: {out[side]['error']}", flush=True)
    for res in out.values():
        if "error" not in res:
            t = np.asarray(res.pop("times"))
            res.update(
                ms=float(np.median(t)),
                q1=float(np.percentile(t, 25)),
                q3=float(np.percentile(t, 75)),
                min=float(t.min()),
                n=int(t.size),
            )
    return out


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def device_name() -> str:
    d = jax.devices()[0]
    if d.platform == "cpu":
        return f"cpu ({os.cpu_count()} cores, {platform.machine()})"
    return f"{d.platform} ({d.device_kind})"


def _thread_env() -> str:
    names = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
    return ", ".join(f"{k}={os.environ.get(k, 'unset')}" for k in names)


def _inductor_cache() -> str:
    """Where torch.compile keeps its compiled code, and whether it held any already (then the
    compile variants' first steps are those of a warm cache)."""
    try:
        from torch._inductor.runtime.cache_dir_utils import cache_dir

        path = cache_dir()
    except Exception:  # pylint: disable=broad-except  # a private module of torch
        return "inductor cache: unknown"
    size = 0
    for folder, _, files in os.walk(path):
        for f in files:
            try:
                size += os.path.getsize(os.path.join(folder, f))
            except OSError:
                pass
    state = f"warm, {size / 2**20:.0f} MiB" if size else "cold, empty"
    return f"inductor cache {path}: {state}"


def _fmt_ms(r) -> str:
    if r is None:
        return ""
    if "error" in r:
        return "failed"
    return f"{r['ms']:.1f} [{r['q1']:.1f}-{r['q3']:.1f}]"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--models",
        default=None,
        help=f"comma-separated, of {','.join(MODELS)} (default {CPU_DEFAULT}, "
        f"plus resnet50 on a GPU)",
    )
    ap.add_argument("--batch", type=int, action="append", help="batch size (repeatable; 128)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--modes", default="search,dense", help="search,dense or one of them")
    ap.add_argument("--steps", type=int, default=2, help="timed steps per side per round")
    ap.add_argument(
        "--rounds",
        type=int,
        default=None,
        help=f"rounds of --steps steps per side, the sides in turn (median of all; default: "
        f"enough for {MIN_TIMED_STEPS} timed steps per side)",
    )
    ap.add_argument(
        "--warmup", type=int, default=2, help="untimed steps first, the first one included"
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's own choice; XLA:CPU uses every core it sees)",
    )
    ap.add_argument("--no-torch", action="store_true", help="time the JAX side only")
    ap.add_argument(
        "--torch-variants",
        default=None,
        help=f"comma-separated PyTorch variants, each a '+'-joined set of "
        f"{', '.join(VARIANT_PARTS)} (default {CPU_VARIANTS}; on a GPU in float32 also "
        "autocast; with --dtype bfloat16 every variant runs under autocast)",
    )
    ap.add_argument(
        "--torch-mask",
        default="topk",
        choices=("topk", "sort"),
        help="PyTorch mask: topk (default, faster) or the official code's sort",
    )
    ap.add_argument(
        "--conv",
        default=None,
        choices=kernels.options.CONV_IMPLS,
        help="jackpot_jax.kernels implementation (default: the library's, 'auto')",
    )
    ap.add_argument(
        "--image-size",
        type=int,
        default=0,
        help="override the input height/width (e.g. a small ResNet-50 smoke run)",
    )
    ap.add_argument("--json", default=None, help="write the rows to this JSON file")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    gpu = jax.default_backend() == "gpu"
    names = (args.models or (GPU_DEFAULT if gpu else CPU_DEFAULT)).split(",")
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise SystemExit(f"--models: unknown {unknown}; valid: {','.join(MODELS)}")
    run_modes = args.modes.split(",")
    if not set(run_modes) <= {"search", "dense"} or not run_modes:
        raise SystemExit(f"--modes={args.modes!r}; expected search, dense or search,dense")
    if args.rounds is None:
        args.rounds = -(-MIN_TIMED_STEPS // max(args.steps, 1))
    if args.steps < 1 or args.rounds < 1 or args.warmup < 1:
        raise SystemExit(
            f"--steps {args.steps}, --rounds {args.rounds}, --warmup {args.warmup}: each must "
            "be at least 1 (the first warm-up step gives the step-0 losses)"
        )
    variants = (
        []
        if args.no_torch
        else (
            args.torch_variants
            or (GPU_VARIANTS if gpu and args.dtype == "float32" else CPU_VARIANTS)
        ).split(",")
    )
    for v in variants:
        parse_variant(v)
    batches = args.batch or [128]
    global TORCH_MASK, IMAGE_SIZE, CONV_IMPL
    TORCH_MASK, IMAGE_SIZE, CONV_IMPL = args.torch_mask, args.image_size, args.conv
    if args.image_size and set(names) - {"resnet50"}:
        raise SystemExit(
            "--image-size applies to resnet50 only (the others have fixed-size "
            "classifiers or are meant for 32x32 / 28x28 inputs)"
        )
    opts = kernels.ComputeOptions(conv_impl=args.conv or "auto", compute_dtype=args.dtype)
    device = device_name()
    torch_device = "cuda" if gpu else "cpu"
    torch_info = ""
    if variants:
        try:
            import torch
        except ImportError as e:
            raise SystemExit(f"PyTorch is not importable ({e}); pass --no-torch") from None

        if args.threads:
            torch.set_num_threads(args.threads)
        torch_info = (
            f"torch {torch.__version__} ({torch.get_num_threads()} threads; {_inductor_cache()}), "
        )
    # Command, commit, device, date and load are in the provenance header printed at the start.
    print(
        f"versions: {device}; JAX {jax.__version__} ({jax.default_backend()}), {torch_info}"
        f"Python {platform.python_version()}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; "
        f"thread environment (set by nobody here, shared by both sides): {_thread_env()}"
    )
    print(
        f"{args.rounds} rounds x {args.steps} steps per side (sides in turn, order rotating) "
        f"after {args.warmup} warm-up steps: median [interquartile range] of "
        f"{args.rounds * args.steps} steps; one network (ours, exported to torch by "
        f"jackpot_jax.interop.torch_convert) and one synthetic batch per model, "
        f"dtype {args.dtype}, {SPARSITY:.0%} sparsity with the same per-layer keep counts "
        f"(global_magnitude) on both sides; jackpot_jax.kernels: {opts.conv_impl} "
        f"(-> {kernels.options.conv_impl(opts)}); {kernels.describe_convolutions(opts)}; "
        f"{kernels.describe_masks(opts)}; torch variants: {','.join(variants) or 'none'} "
        f"(mask: {TORCH_MASK})",
        flush=True,
    )

    rows, failures = [], []
    for name in names:
        for batch in batches:
            mask_ms = None
            for mode in run_modes:
                print(f"  {name} batch {batch} {mode}:", flush=True)
                setup = jax_setup(name, batch, args.dtype)
                builders = {"ours": lambda setup=setup, mode=mode: jax_runner(setup, mode)}
                weights = None
                if variants:
                    try:
                        weights = torch_weights(name, setup, mode)
                    except Exception as e:  # pylint: disable=broad-except
                        weights = e
                for v in variants:

                    def build(v=v, weights=weights, setup=setup, mode=mode):
                        if isinstance(weights, Exception):
                            raise weights
                        return torch_runner(name, setup, weights, mode, args.dtype, torch_device, v)

                    builders[v] = build
                res = time_sides(builders, args.steps, args.warmup, args.rounds)
                if mode == "search" and mask_ms is None:
                    mask_ms = time_mask(setup, args.steps * args.rounds)
                ours = res["ours"]
                if "error" in ours:
                    raise SystemExit(f"{name} {mode}: jackpot_jax's step failed: {ours['error']}")
                if args.dtype != "float32" and variants:
                    ours["loss0_float32"] = jax_loss_float32(setup, mode)
                base = {
                    "model": name,
                    "batch": batch,
                    "device": device,
                    "mode": mode,
                    "dtype": args.dtype,
                    "jax_ms": ours["ms"],
                    "mask_ms": mask_ms if mode == "search" else None,
                    "jax_ms_min": ours["min"],
                    "jax_ms_q1": ours["q1"],
                    "jax_ms_q3": ours["q3"],
                    "jax_steps": ours["n"],
                    "jax_first_step_s": ours["first_s"],
                    "jax_loss0": ours["loss0"],
                    "jax_loss0_float32": ours.get("loss0_float32"),
                }
                print(
                    f"    ours: median {_fmt_ms(ours)} ms, min {ours['min']:.1f} ms",
                    flush=True,
                )
                for v in variants or [None]:
                    r = res.get(v)
                    row = dict(base, torch_variant=v, torch_ms=None, torch_ms_min=None)
                    if r is not None:
                        failure = check_variant(row, r, ours, args.dtype)
                        if failure:
                            failures.append(f"{name} batch {batch} {mode} {v}: {failure}")
                    rows.append(row)
    print_table(rows, variants)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    if failures:
        print("FAILED rows (step-0 losses disagree):\n  " + "\n  ".join(failures))
        raise SystemExit(1)
    return rows


def check_variant(row: dict, r: dict, ours: dict, dtype: str) -> str | None:
    """Fills ``row`` with PyTorch variant ``row['torch_variant']``'s result ``r`` and checks
    its step-0 loss against ours, both in float32; returns what failed, or None."""
    v = row["torch_variant"]
    if "error" in r:
        row["torch_error"] = r["error"]
        return None
    vdtype = variant_dtype(v, dtype)
    loss = r.get("check_loss0", r["loss0"])
    ref = ours.get("loss0_float32", ours["loss0"])
    rel = abs(loss - ref) / max(abs(ref), 1e-12)
    tol = LOSS_RTOL
    ok = bool(rel <= tol)
    row.update(
        torch_ms=r["ms"],
        torch_ms_min=r["min"],
        torch_ms_q1=r["q1"],
        torch_ms_q3=r["q3"],
        torch_steps=r["n"],
        torch_first_step_s=r["first_s"],
        torch_loss0=r["loss0"],
        torch_dtype=vdtype,
        loss_rel_diff=rel,
        loss_check="ok" if ok else "FAILED",
    )
    where = "" if loss == r["loss0"] else f" (float32: {loss:.6f})"
    theirs = "" if ref == ours["loss0"] else f" (float32: {ref:.6f})"
    print(
        f"    {v}: median {_fmt_ms(r)} ms, min {r['min']:.1f} ms; step-0 loss "
        f"{r['loss0']:.6f}{where} vs ours {ours['loss0']:.6f}{theirs}: relative difference "
        f"{rel:.1e} "
        f"(tolerance {tol:.0e}) " + ("ok" if ok else "!!! LOSS MISMATCH: NOT THE SAME NETWORK !!!"),
        flush=True,
    )
    return None if ok else f"step-0 losses differ by {rel:.1e} relative (tolerance {tol:.0e})"


def print_table(rows, variants):
    """Per model, batch and mode: ours, each variant (median [IQR] ms), and torch / ours for
    the authors' eager code and for the fastest variant that ran, passed its loss check and
    computes in ours' precision (a bfloat16 autocast variant is not the best of a float32
    row; its own column shows it)."""
    print()
    head = ["model", "batch", "mode", "dtype", "ours ms"] + [f"torch {v} ms" for v in variants]
    if variants:
        head += ["eager / ours", "best torch / ours (variant)"]
    head += ["mask ms", "mask share"]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" if i < 4 and i != 1 else "---:" for i in range(len(head))) + "|")
    cells = {}
    for r in rows:
        cells.setdefault((r["model"], r["batch"], r["mode"], r["dtype"]), []).append(r)
    for (model, batch, mode, dtype), group in cells.items():
        r0 = group[0]
        ours = {"ms": r0["jax_ms"], "q1": r0["jax_ms_q1"], "q3": r0["jax_ms_q3"]}
        line = [model, str(batch), mode, dtype, _fmt_ms(ours)]
        by_variant = {r["torch_variant"]: r for r in group}
        good = {}
        for v in variants:
            r = by_variant.get(v, {})
            if r.get("torch_error"):
                line.append("failed")
            elif r.get("torch_ms") is None:
                line.append("")
            else:
                t = {"ms": r["torch_ms"], "q1": r["torch_ms_q1"], "q3": r["torch_ms_q3"]}
                flag = "" if r["loss_check"] == "ok" else " (LOSS MISMATCH)"
                line.append(_fmt_ms(t) + flag)
                if r["loss_check"] == "ok" and r["torch_dtype"] == dtype:
                    good[v] = r["torch_ms"]
        if variants:
            eager = good.get("eager")
            line.append("" if eager is None else f"{eager / r0['jax_ms']:.2f}x")
            if good:
                best = min(good, key=good.get)
                line.append(f"{good[best] / r0['jax_ms']:.2f}x ({best})")
            else:
                line.append("")
        mask = share = ""
        if r0["mask_ms"] is not None:
            mask, share = f"{r0['mask_ms']:.2f}", f"{r0['mask_ms'] / r0['jax_ms']:.1%}"
        line += [mask, share]
        print("| " + " | ".join(line) + " |")
    print()
    print("failed variants:" if any(r.get("torch_error") for r in rows) else "", end="")
    for r in rows:
        if r.get("torch_error"):
            print(f"\n  {r['model']} {r['mode']} {r['torch_variant']}: {r['torch_error']}", end="")
    print()


if __name__ == "__main__":
    from jackpot_jax import xla_flags

    print(xla_flags.apply_recommended(), flush=True)  # before JAX starts its backend
    import _provenance

    _provenance.begin("bench_step")
    main()
