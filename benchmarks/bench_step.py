"""Benchmark: one training step of jackpot_jax against the same step in PyTorch, same device.

Run from the repository root::

    python benchmarks/bench_step.py --models lenet5,resnet32x2 --batch 128 [--json FILE]

For each model, batch size and mode (``search``, ``dense``) one process times, on synthetic
data and after warm-up, steps of

* **jackpot_jax**: the step the CLI runs, built by the same code (`engine.make_train_step`,
  `engine.make_optimizer` with the config's SGD settings, budgets from `pruning.budget_for`,
  scores from the magnitude mask, `engine.TrainState`, the batch sharded over a `Mesh`):
  ``search`` = frozen params, straight-through exact top-k masks, SGD on the scores;
  ``dense`` = plain SGD on all params (the pretraining step);
* **PyTorch**: the authors' search step, written below after their released code: frozen
  conv/linear weights, one score tensor per pruned layer, a binary mask of ``|scores|``
  (the lowest ``int(p * n)`` zeroed) passed straight through by a custom autograd function,
  ``torch.optim.SGD`` (momentum 0.9, weight decay) on the scores only, BatchNorm in train
  mode; ``dense`` = the same network trained with SGD on all its weights. The official code
  finds the mask with a full sort; ``--torch-mask topk`` (the default) uses `torch.topk`,
  which keeps the same count and is ~3x faster on the CPU: the stronger baseline.

The two sides take turns: ``--rounds`` rounds of ``--steps`` steps each, so that both see the
same machine load over time (never at once: their thread pools do not compete); the table
reports medians over all timed steps, the JSON also the minima (``jax_ms_min``,
``torch_ms_min``: the least disturbed step, the fairer figure on a shared machine).
``mask_ms`` is the jitted mask computation alone (every pruned layer's exact top-k, the
budget of the search step), its share the fraction of the search step it would take.
Columns: img/s of each side, ``jax/torch`` = torch_ms / jax_ms (above 1: jackpot_jax faster),
also on the minima. Both sides get the same number of CPU threads (``--threads``, default:
every core; XLA:CPU uses every core it sees); OpenMP waits passively (see below).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
# OpenMP threads that spin while waiting (the default) stall PyTorch badly when the cores are
# shared: 692 ms against 88 ms for the LeNet-5 search step on 2 busy cores. Passive waiting
# is the fair baseline there; a value the user sets wins. XLA:CPU does not use OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, ROOT)

import jax
import jax.numpy as jnp
import numpy as np

from jackpot_jax import kernels, models, utils
from jackpot_jax import sparsity as sp
from jackpot_jax.pipeline import config as config_lib
from jackpot_jax.pipeline import engine, pruning

# benchmark name -> (registry name, options, classes)
MODELS = {
    "lenet5": ("lenet5", {}, 10),
    "resnet20": ("resnet20", {}, 10),
    "resnet32x2": ("resnet32", {"width": 2}, 10),
    "vgg19_cifar": ("vgg19_cifar", {}, 10),
    "resnet50": ("resnet50", {}, 1000),
}
CPU_DEFAULT = "lenet5,resnet20,resnet32x2,vgg19_cifar"
GPU_DEFAULT = CPU_DEFAULT + ",resnet50"
SPARSITY = 0.9
TORCH_MASK = "topk"  # --torch-mask


# ---------------------------------------------------------------------------------------------
# jackpot_jax side: the CLI's own step
# ---------------------------------------------------------------------------------------------


IMAGE_SIZE = 0  # --image-size
CONV_IMPL = None  # --conv (None: the library's default, 'auto')


def input_shape(name: str) -> tuple:
    h, w, c = models.input_shape(MODELS[name][0])
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
    """Module, variables, budget and scores of ``name`` (random weights stand in for
    pre-trained ones) and one synthetic batch."""
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
    mask = sp.criterion_mask(sp.magnitude_scores(params, filter_fn), budget)
    scores = sp.init_scores_from_mask(mask, config.search.score_kept, config.search.score_pruned)
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, *shape), dtype=np.float32)
    labels = rng.integers(0, classes, batch).astype(np.int32)
    return config, module, variables, budget, scores, (images, labels)


def jax_runner(name: str, batch: int, mode: str, dtype: str):
    """A function running one step of the CLI's step for ``mode``: returns (ms, loss)."""
    config, module, variables, budget, scores, (images, labels) = jax_setup(name, batch, dtype)
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


def time_mask(name: str, batch: int, dtype: str, repeats: int) -> float:
    """Median ms of the jitted exact top-k masks of every pruned layer (the search's budget)."""
    _, _, _, budget, scores, _ = jax_setup(name, batch, dtype)
    fn = jax.jit(lambda s: sp.masks_from_scores(s, budget))
    times = []
    for i in range(2 + repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(scores))
        if i >= 2:
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


# ---------------------------------------------------------------------------------------------
# PyTorch side: the authors' search step, written here after their released code
# ---------------------------------------------------------------------------------------------


def torch_modules():
    """The PyTorch networks and the authors' masked layers (built lazily: torch is optional)."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    def sort_mask(scores, prune_rate):
        """1 everywhere but on the ``int(prune_rate * n)`` lowest scores (sort order breaks
        ties), as the official code's mask function."""
        out = torch.ones_like(scores)
        _, idx = scores.flatten().sort()
        out.view(-1)[idx[: int(prune_rate * scores.numel())]] = 0
        return out

    def topk_mask(scores, prune_rate):
        """The same count kept with `torch.topk` (equal to ``sort_mask`` up to ties; 3x
        faster than a full sort on 2 CPU cores for the mask sizes here)."""
        out = torch.zeros_like(scores)
        keep = scores.numel() - int(prune_rate * scores.numel())
        out.view(-1)[scores.flatten().topk(keep, sorted=False).indices] = 1
        return out

    class GetMask(torch.autograd.Function):
        """The mask forward, the identity backward (straight-through)."""

        @staticmethod
        def forward(ctx, scores, prune_rate):
            return (sort_mask if TORCH_MASK == "sort" else topk_mask)(scores, prune_rate)

        @staticmethod
        def backward(ctx, g):
            return g, None

    class MaskedConv2d(nn.Conv2d):
        """A conv whose frozen weight is multiplied by the mask of its scores (``|scores|``
        ranked, as the official code does)."""

        def setup_scores(self, prune_rate):
            self.prune_rate = prune_rate
            self.weight.requires_grad_(False)
            self.scores = nn.Parameter(torch.ones_like(self.weight))

        def forward(self, x):
            m = GetMask.apply(self.scores.abs(), self.prune_rate)
            return F.conv2d(
                x, self.weight * m, self.bias, self.stride, self.padding, self.dilation, self.groups
            )

    class MaskedLinear(nn.Linear):
        setup_scores = MaskedConv2d.setup_scores

        def forward(self, x):
            m = GetMask.apply(self.scores.abs(), self.prune_rate)
            return F.linear(x, self.weight * m, self.bias)

    def conv(masked, *a, **kw):
        return (MaskedConv2d if masked else nn.Conv2d)(*a, **kw)

    class LeNet5(nn.Module):
        def __init__(self, masked, classes):
            super().__init__()
            self.conv1, self.conv2 = conv(masked, 1, 20, 5), conv(masked, 20, 50, 5)
            self.fc1 = (MaskedLinear if masked else nn.Linear)(800, 500)
            self.classifier = nn.Linear(500, classes)

        def forward(self, x):
            x = F.max_pool2d(self.conv1(x), 2)
            x = F.max_pool2d(self.conv2(x), 2)
            return self.classifier(F.relu(self.fc1(x.flatten(1))))

    class Block(nn.Module):  # CIFAR BasicBlock with the option-A shortcut
        def __init__(self, masked, cin, planes, stride):
            super().__init__()
            self.conv1 = conv(masked, cin, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = conv(masked, planes, planes, 3, 1, 1, bias=False)
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
        def __init__(self, masked, classes, n, width):
            super().__init__()
            w = 16 * width
            self.conv1, self.bn1 = conv(masked, 3, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w)
            layers, cin = [], w
            for stage, planes in enumerate((w, 2 * w, 4 * w)):
                for i in range(n):
                    layers.append(Block(masked, cin, planes, 2 if stage and not i else 1))
                    cin = planes
            self.layers = nn.Sequential(*layers)
            self.fc = nn.Linear(cin, classes)

        def forward(self, x):
            x = self.layers(F.relu(self.bn1(self.conv1(x))))
            return self.fc(x.mean((2, 3)))

    class VGGCifar(nn.Module):
        def __init__(self, masked, classes):
            super().__init__()
            layers, cin = [], 3
            for v in models.vgg.CFGS["vgg19"]:
                if v == "M":
                    layers.append(nn.MaxPool2d(2))
                else:
                    layers += [
                        conv(masked, cin, v, 3, 1, 1, bias=False),
                        nn.BatchNorm2d(v),
                        nn.ReLU(inplace=True),
                    ]
                    cin = v
            self.features = nn.Sequential(*layers)
            self.classifier = nn.Linear(512, classes)

        def forward(self, x):
            return self.classifier(self.features(x).flatten(1))

    def resnet50(masked, classes):
        import torchvision

        net = torchvision.models.resnet50(num_classes=classes)
        if masked:  # every conv becomes a masked conv with the same weights
            for parent in list(net.modules()):
                for key, child in list(parent.named_children()):
                    if type(child) is nn.Conv2d:
                        new = MaskedConv2d(
                            child.in_channels,
                            child.out_channels,
                            child.kernel_size,
                            child.stride,
                            child.padding,
                            bias=False,
                        )
                        new.weight.data.copy_(child.weight.data)
                        setattr(parent, key, new)
        return net

    builders = {
        "lenet5": lambda m, c: LeNet5(m, c),
        "resnet20": lambda m, c: CifarResNet(m, c, 3, 1),
        "resnet32x2": lambda m, c: CifarResNet(m, c, 5, 2),
        "vgg19_cifar": lambda m, c: VGGCifar(m, c),
        "resnet50": resnet50,
    }
    return torch, builders, (MaskedConv2d, MaskedLinear), sort_mask


def torch_runner(name: str, batch: int, mode: str, dtype: str, device: str):
    """A function running one PyTorch step for ``mode``: returns (ms, loss)."""
    torch, builders, masked_types, sort_mask = torch_modules()
    _, _, classes = MODELS[name]
    torch.manual_seed(0)
    net = builders[name](mode == "search", classes).to(device).train()
    shape = input_shape(name)
    x = torch.randn(batch, shape[2], shape[0], shape[1], device=device)
    y = torch.randint(0, classes, (batch,), device=device)
    cfg = _config(name, batch, "float32")
    if mode == "search":
        for p in net.parameters():  # weights, biases and BatchNorm affine frozen
            p.requires_grad_(False)
        for mod in net.modules():
            if isinstance(mod, masked_types):
                mod.setup_scores(SPARSITY)
                with torch.no_grad():  # the two-level init from the magnitude mask
                    keep = sort_mask(mod.weight.abs(), SPARSITY)
                    mod.scores.copy_(torch.where(keep > 0, 1.0, 0.95))
        trainable = [p for n, p in net.named_parameters() if n.endswith("scores")]
        opt_cfg = cfg.search
    else:
        trainable = list(net.parameters())
        opt_cfg = cfg.pretrain
    opt = torch.optim.SGD(
        trainable, lr=opt_cfg.lr, momentum=opt_cfg.momentum, weight_decay=opt_cfg.weight_decay
    )
    autocast = torch.autocast(
        device.split(":")[0], dtype=torch.bfloat16, enabled=dtype == "bfloat16"
    )
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def run():
        sync()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = torch.nn.functional.cross_entropy(net(x).float(), y)
        loss.backward()
        opt.step()
        sync()
        return (time.perf_counter() - t0) * 1e3, float(loss.detach())

    return run


def time_pair(runners: dict, steps: int, warmup: int, rounds: int) -> dict:
    """{side: (median ms, min ms, last loss)}: every side warmed up, then ``rounds`` rounds of
    ``steps`` timed steps per side in turn, so that both sides see the same load over time."""
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


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover
        return "unknown"


def device_name() -> str:
    d = jax.devices()[0]
    if d.platform == "cpu":
        return f"cpu ({os.cpu_count()} cores, {platform.machine()})"
    return f"{d.platform} ({d.device_kind})"


def main(argv=None):
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
    ap.add_argument("--steps", type=int, default=3, help="timed steps per side per round")
    ap.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds of --steps steps per side, the sides in turn (median of all)",
    )
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (compile)")
    ap.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count(),
        help="torch CPU threads (XLA:CPU uses every core it sees)",
    )
    ap.add_argument("--no-torch", action="store_true", help="time the JAX side only")
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
    args = ap.parse_args(argv)

    gpu = jax.default_backend() == "gpu"
    names = (args.models or (GPU_DEFAULT if gpu else CPU_DEFAULT)).split(",")
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise SystemExit(f"--models: unknown {unknown}; valid: {','.join(MODELS)}")
    run_modes = args.modes.split(",")
    if not set(run_modes) <= {"search", "dense"} or not run_modes:
        raise SystemExit(f"--modes={args.modes!r}; expected search, dense or search,dense")
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
    if not args.no_torch:
        import torch

        torch.set_num_threads(args.threads)
    print(f"date: {datetime.datetime.now().isoformat(timespec='seconds')}, commit {_commit()}")
    print(
        f"device: {device}; JAX {jax.__version__} ({jax.default_backend()}), "
        + ("" if args.no_torch else f"torch {torch.__version__} ({args.threads} threads), ")
        + f"Python {platform.python_version()}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
    )
    print(f"command: {' '.join([os.path.basename(sys.argv[0])] + sys.argv[1:])}")
    print(
        f"median of {args.rounds} rounds x {args.steps} steps per side (sides in turn) after "
        f"{args.warmup} warm-up steps, synthetic data, "
        f"dtype {args.dtype}, {SPARSITY:.0%} sparsity; jackpot_jax.kernels: {opts.conv_impl} "
        f"(-> {kernels.options.conv_impl(opts)}); {kernels.describe_convolutions(opts)}; "
        f"{kernels.describe_masks(opts)}; "
        f"torch mask: {TORCH_MASK}; threads: XLA:CPU "
        f"{os.cpu_count()} (every core), torch {args.threads} (OMP_WAIT_POLICY="
        f"{os.environ.get('OMP_WAIT_POLICY')}); "
        f"load average {_load()}",
        flush=True,
    )

    rows = []
    for name in names:
        for batch in batches:
            mask_ms = None
            for mode in run_modes:
                runners = {"jax": jax_runner(name, batch, mode, args.dtype)}
                if not args.no_torch:
                    runners["torch"] = torch_runner(name, batch, mode, args.dtype, torch_device)
                res = time_pair(runners, args.steps, args.warmup, args.rounds)
                if mode == "search" and mask_ms is None:
                    mask_ms = time_mask(name, batch, args.dtype, args.steps * args.rounds)
                jax_ms, jax_min, jl = res["jax"]
                torch_ms, torch_min, tl = res.get("torch", (None, None, None))
                row = {
                    "model": name,
                    "batch": batch,
                    "device": device,
                    "mode": mode,
                    "dtype": args.dtype,
                    "jax_ms": jax_ms,
                    "torch_ms": torch_ms,
                    "mask_ms": mask_ms if mode == "search" else None,
                    "jax_ms_min": jax_min,
                    "torch_ms_min": torch_min,
                }
                rows.append(row)
                print(
                    f"  {name} batch {batch} {mode}: jax median {jax_ms:.1f} ms, min "
                    f"{jax_min:.1f} ms (loss {jl:.3f})"
                    + (
                        ""
                        if torch_ms is None
                        else f"; torch median {torch_ms:.1f} ms, min "
                        f"{torch_min:.1f} ms (loss {tl:.3f})"
                    ),
                    flush=True,
                )
    print(f"load average at the end: {_load()}")
    print()
    print(
        "| model | batch | mode | dtype | jax img/s | torch img/s | jax/torch "
        "| jax/torch (minima) | mask ms | mask share |"
    )
    print("|---|---:|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        jis = r["batch"] / r["jax_ms"] * 1e3
        tis = "" if r["torch_ms"] is None else f"{r['batch'] / r['torch_ms'] * 1e3:.0f}"
        ratio = "" if r["torch_ms"] is None else f"{r['torch_ms'] / r['jax_ms']:.2f}x"
        ratio_min = (
            "" if r["torch_ms_min"] is None else f"{r['torch_ms_min'] / r['jax_ms_min']:.2f}x"
        )
        mask = share = ""
        if r["mask_ms"] is not None:
            mask, share = f"{r['mask_ms']:.2f}", f"{r['mask_ms'] / r['jax_ms']:.1%}"
        print(
            f"| {r['model']} | {r['batch']} | {r['mode']} | {r['dtype']} | {jis:.0f} | {tis} "
            f"| {ratio} | {ratio_min} | {mask} | {share} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    from jackpot_jax import xla_flags

    print(xla_flags.apply_recommended(), flush=True)  # before JAX starts its backend
    main()
