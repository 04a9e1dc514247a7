"""Benchmark: one training step of jackpot_jax beside the same step in PyTorch at its best.

Run from the repository root::

    python benchmarks/bench_step.py --models lenet5,resnet32x2 --batch 128 [--json FILE]

For each model, batch size and mode (``search``, ``dense``) one process builds ONE network and
ONE batch and times steps of

* **jackpot_jax** ("ours"): the search step of the library's core on the CLI's settings (SGD
  of the config, per-layer keep counts ``global_magnitude`` at 90% sparsity, two-level scores
  from the magnitude mask): ``search`` = frozen params, straight-through exact top-k masks, SGD
  on the scores; ``dense`` = plain SGD on all params (the pretraining step);
* **PyTorch**: the authors' step (`reference.py`) on the SAME weights (ours, exported by
  `jackpot_jax.interop.torch_convert.export_to_torch_state_dict`; our scores travel as the
  official ``<layer>.mask`` tensors), the same batch and the same per-layer keep counts
  (`torch.topk`; ``--torch-mask sort`` for the official full sort). The step-0 losses must
  agree to 1e-3 relative, else the row is FAILED (the run goes on; its exit status is 1). The
  check is made in float32: a side computing in bfloat16 (``--dtype bfloat16``, an
  ``autocast`` variant) is checked on one float32 forward pass of its network.

PyTorch runs in variants (``--torch-variants``, each a ``+``-joined set of ``eager``,
``channels_last``, ``compile``, ``autocast``); one that fails is reported with the first line
of its exception, never dropped. The first step of each side (jit, compilation) is timed apart.
All sides take turns (`common.time_sides`): ``--rounds`` rounds of ``--steps`` steps each, the
order rotating every round; the table gives median [interquartile range] ms and ``torch /
ours`` (above 1: jackpot_jax faster) for the eager code and the fastest variant in ours'
precision. No thread or OpenMP policy is set here: both sides share the user's environment,
which the header prints with torch.compile's cache state and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import typing

import common  # puts the repository on sys.path
import jax
import jax.numpy as jnp
import numpy as np
import step_report

from jackpot_jax import core, kernels, models, utils
from jackpot_jax import method as jm
from jackpot_jax.pipeline import config as config_lib

# benchmark name -> (registry name, options, classes)
MODELS = {
    "lenet5": ("lenet5", {}, 10),
    "resnet20": ("resnet20", {}, 10),
    "resnet32x2": ("resnet32", {"width": 2}, 10),
    "vgg19_cifar": ("vgg19_cifar", {}, 10),
    "resnet50": ("resnet50", {}, 1000),
    # ViT-S/16 at 224 px; the PyTorch side is timm's model (fused q/k/v, masked block by block)
    "vit_small": ("vit_small", {"image_size": 224, "patch_size": 16}, 1000),
}
CPU_DEFAULT = "lenet5,resnet20,resnet32x2,vgg19_cifar"
GPU_DEFAULT = CPU_DEFAULT + ",resnet50"
SPARSITY = 0.9
VARIANT_PARTS = ("eager", "channels_last", "compile", "autocast")
CPU_VARIANTS = "eager,channels_last,compile,compile+channels_last"
GPU_VARIANTS = CPU_VARIANTS + ",autocast"
MIN_TIMED_STEPS = 20  # per side and cell, unless --rounds says otherwise


class Setup(typing.NamedTuple):
    """One network and one batch: what both sides of a cell compute on."""

    config: typing.Any
    module: typing.Any
    variables: dict
    search: core.InitialSearch  # the search's budget, scores (``state.params``) and state
    images: np.ndarray  # NHWC float32
    labels: np.ndarray


# ---------------------------------------------------------------------------------------------
# jackpot_jax's side
# ---------------------------------------------------------------------------------------------


def optimizer(config, mode: str):
    """The CLI's optimiser of ``mode`` (the config's SGD settings; 100 steps per epoch)."""
    opt_cfg = config.search if mode == "search" else config.pretrain
    return core.make_optimizer(opt_cfg, opt_cfg.epochs, 100)[0]


def jax_setup(name: str, batch: int, dtype: str, image_size: int = 0, seed: int = 0) -> Setup:
    """Module, variables (random weights stand in for pre-trained ones) and the search's start
    (`core.init_search`: per-layer keep counts at 90% sparsity, two-level scores from the
    magnitude mask) of ``name``, and one synthetic NHWC batch (``image_size``: its height and
    width instead of the model's)."""
    registry, options, classes = MODELS[name]
    module = models.get_model(registry, num_classes=classes, **options)
    h, w, c = models.input_shape(registry, options)
    shape = (image_size, image_size, c) if image_size else (h, w, c)
    variables = jax.jit(models.init_variables, static_argnums=(0, 2))(
        module, jax.random.key(seed), (1, *shape)
    )
    config = config_lib.base_config()
    config.model, config.batch_size, config.sparsity = registry, batch, SPARSITY
    # The learning rate does not change a step's cost; 0.01 keeps the dense steps' losses on
    # random data finite (lr 0.1 diverges to NaN within a few LeNet-5 steps).
    config.pretrain.lr = 0.01
    config.compute_dtype = dtype
    search = core.init_search(
        variables["params"],
        apply_fn=module.apply,
        tx=optimizer(config, "search"),
        batch_stats=utils.batch_stats_of(variables),
        sparsity=config.sparsity,
        distribution=config.search.distribution,
        include=config.prune.include,
        exclude=config.prune.exclude,
        init="magnitude",
        score_kept=config.search.score_kept,
        score_pruned=config.search.score_pruned,
        use_abs=config.search.use_abs,
        seed=0,
    )
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, *shape), dtype=np.float32)
    labels = rng.integers(0, classes, batch).astype(np.int32)
    return Setup(config, module, variables, search, images, labels)


def jax_runner(setup: Setup, mode: str, conv: str | None):
    """A function running one step of ours for ``mode`` (the core's search step, or its dense
    training step from the same weights): returns (ms, loss). ``conv``:
    `ComputeOptions.conv_impl` (None: the config's)."""
    config, tx = setup.config, optimizer(setup.config, mode)
    options = kernels.ComputeOptions.from_config(config)
    if conv:
        options = options.replace(conv_impl=conv)
    common_args = dict(label_smoothing=config.label_smoothing, options=options)
    if mode == "search":
        budget, state = setup.search.budget, setup.search.state
        use_abs = config.search.use_abs
        step_fn = core.make_search_step(
            setup.module.apply, tx, budget, use_abs=use_abs, **common_args
        )
    else:
        step_fn = core.make_train_step(setup.module.apply, tx, **common_args)
        state = core.SearchState.create(
            apply_fn=setup.module.apply,
            params=setup.variables["params"],
            tx=tx,
            batch_stats=utils.batch_stats_of(setup.variables),
        )
    mesh = core.make_mesh(config.num_devices)
    box = {"state": core.replicate(mesh, utils.as_numpy(state))}  # the step donates it
    x, y = core.shard_batch(mesh, (setup.images, setup.labels))

    def run():
        t0 = time.perf_counter()
        box["state"], metrics = step_fn(box["state"], x, y)
        jax.block_until_ready((box["state"], metrics))
        return (time.perf_counter() - t0) * 1e3, float(metrics["loss"])

    return run


def jax_loss_float32(setup: Setup, mode: str) -> float:
    """Our network's step-0 loss in float32 (one forward pass, BatchNorm on the batch's
    statistics, the search's masks applied): the reference a bfloat16 run is checked on."""
    params, batch_stats = setup.variables["params"], utils.batch_stats_of(setup.variables)
    if mode == "search":
        params = jm.apply_masks(params, setup.search.masks)

    @jax.jit
    def loss(params, x, y):
        with kernels.use(kernels.ComputeOptions(compute_dtype="float32")):
            logits, _ = setup.module.apply(
                utils.variables_of(params, batch_stats), x, train=True, mutable=["batch_stats"]
            )
        return core.cross_entropy(logits.astype(jnp.float32), y, setup.config.label_smoothing)

    return float(loss(params, setup.images, setup.labels))


def time_mask(setup: Setup, repeats: int) -> float:
    """Median ms of the jitted exact top-k masks of every pruned layer (the search's budget)."""
    budget, scores = setup.search.budget, setup.search.state.params
    fn = jax.jit(lambda s: jm.masks_from_scores(s, budget))
    return common.median_ms(lambda: fn(scores), repeats, 2, block=jax.block_until_ready)


# ---------------------------------------------------------------------------------------------
# PyTorch's side (the authors' step: reference.py)
# ---------------------------------------------------------------------------------------------


def parse_variant(variant: str) -> set:
    """The parts of a ``+``-joined variant (``compile+channels_last``); a bad one stops."""
    parts = set(variant.split("+"))
    bad = parts - set(VARIANT_PARTS)
    if bad or not variant:
        raise SystemExit(
            f"--torch-variants: {variant!r} has {sorted(bad) or 'nothing'}; a variant joins "
            f"some of {', '.join(VARIANT_PARTS)} with '+' (e.g. compile+channels_last)"
        )
    return parts


def variant_dtype(variant: str, dtype: str) -> str:
    """The precision a variant computes in: bfloat16 under autocast."""
    return "bfloat16" if dtype == "bfloat16" or "autocast" in parse_variant(variant) else "float32"


def torch_runner(setup: Setup, name: str, mode: str, weights, variant: str, args):
    """A function running one step of the authors' code (`reference.py`) in ``variant`` for
    ``mode`` on our weights, scores and keep counts: returns (ms, loss)."""
    import reference

    if isinstance(weights, Exception):  # the export failed: every variant reports it
        raise weights
    opt_cfg = setup.config.search if mode == "search" else setup.config.pretrain
    parts = parse_variant(variant)
    return reference.runner(
        name,
        MODELS[name][2],
        weights,
        setup.images,
        setup.labels,
        channels_last="channels_last" in parts,
        compile="compile" in parts,
        bfloat16=variant_dtype(variant, args.dtype) == "bfloat16",
        search=mode == "search",
        sgd={k: opt_cfg[k] for k in ("lr", "momentum", "weight_decay", "nesterov")},
        label_smoothing=float(setup.config.label_smoothing),
        device="cuda" if jax.default_backend() == "gpu" else "cpu",
        sort=args.torch_mask == "sort",
    )


# ---------------------------------------------------------------------------------------------
# Driver (the checks and the table: step_report.py)
# ---------------------------------------------------------------------------------------------


def bench_cell(args, name: str, batch: int, mode: str, device: str) -> tuple[list, list]:
    """(rows, failures) of one model, batch and mode: a row per PyTorch variant (one without
    torch), each with ours and, in ``search``, the masks' time; the failed loss checks."""
    print(f"  {name} batch {batch} {mode}:", flush=True)
    setup = jax_setup(name, batch, args.dtype, args.image_size)
    builders = {"ours": lambda: jax_runner(setup, mode, args.conv)}
    weights = None
    if args.variants:
        import reference

        search = mode == "search"
        try:
            weights = reference.weights_from_ours(
                MODELS[name][0],
                setup.variables,
                setup.search.state.params if search else None,
                setup.search.budget if search else None,
            )
        except Exception as e:  # pylint: disable=broad-except  # every variant reports it
            weights = e
    for v in args.variants:
        builders[v] = lambda v=v: torch_runner(setup, name, mode, weights, v, args)
    res = common.time_sides(builders, args.steps, args.warmup, args.rounds)
    mask_ms = time_mask(setup, args.steps * args.rounds) if mode == "search" else None
    ours = res["ours"]
    if "error" in ours:
        raise SystemExit(f"{name} {mode}: jackpot_jax's step failed: {ours['error']}")
    if args.dtype != "float32" and args.variants:
        ours["loss0_float32"] = jax_loss_float32(setup, mode)
    base = {"model": name, "batch": batch, "device": device, "mode": mode, "dtype": args.dtype}
    base.update({f"jax_{k}": ours[v] for k, v in step_report.RESULT_KEYS.items()}, mask_ms=mask_ms)
    base["jax_loss0_float32"] = ours.get("loss0_float32")
    print(f"    ours: median {common.fmt_ms(ours)} ms, min {ours['min']:.1f} ms", flush=True)
    rows, failures = [], []
    for v in args.variants or [None]:
        row = dict(base, torch_variant=v, torch_ms=None, torch_ms_min=None)
        torch_dtype = variant_dtype(v, args.dtype) if v else None
        failure = step_report.check_variant(row, res[v], ours, torch_dtype) if v in res else None
        if failure:
            failures.append(f"{name} batch {batch} {mode} {v}: {failure}")
        rows.append(row)
    return rows, failures


def parse_args(argv=None):
    """The command line, checked and completed (models, modes, variants and batches as lists,
    ``rounds`` resolved); bad values stop the run with a message."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--models",
        help=f"comma-separated, of {','.join(MODELS)} "
        f"(default {CPU_DEFAULT}, plus resnet50 on a GPU)",
    )
    ap.add_argument("--batch", type=int, action="append", help="batch size (repeatable; 128)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--modes", default="search,dense", help="search,dense or one of them")
    ap.add_argument("--steps", type=int, default=2, help="timed steps per side per round")
    ap.add_argument(
        "--rounds",
        type=int,
        help="rounds of --steps steps per side, the sides in "
        f"turn (default: enough for {MIN_TIMED_STEPS} timed steps per side)",
    )
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps, the first included")
    ap.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: torch's choice; XLA:CPU uses every core it sees)",
    )
    ap.add_argument("--no-torch", action="store_true", help="time the JAX side only")
    ap.add_argument(
        "--torch-variants",
        help="comma-separated PyTorch variants, each a "
        f"'+'-joined set of {', '.join(VARIANT_PARTS)} (default {CPU_VARIANTS}; on a "
        "GPU in float32 also autocast; with --dtype bfloat16 every variant runs "
        "under autocast)",
    )
    ap.add_argument(
        "--torch-mask",
        default="topk",
        choices=("topk", "sort"),
        help="PyTorch mask: topk (default, faster) or the official code's sort",
    )
    ap.add_argument(
        "--conv",
        choices=kernels.options.CONV_IMPLS,
        help="jackpot_jax.kernels implementation (default: the library's, 'auto')",
    )
    ap.add_argument(
        "--image-size",
        type=int,
        default=0,
        help="override the input height/width (e.g. a small ResNet-50 smoke run)",
    )
    ap.add_argument("--json", help="write the rows to this JSON file")
    args = ap.parse_args(argv)
    gpu = jax.default_backend() == "gpu"
    args.models = (args.models or (GPU_DEFAULT if gpu else CPU_DEFAULT)).split(",")
    unknown = [n for n in args.models if n not in MODELS]
    if unknown:
        raise SystemExit(f"--models: unknown {unknown}; valid: {','.join(MODELS)}")
    args.modes = args.modes.split(",")
    if not set(args.modes) <= {"search", "dense"}:
        raise SystemExit(f"--modes={','.join(args.modes)!r}; expected search, dense or both")
    if args.rounds is None:
        args.rounds = -(-MIN_TIMED_STEPS // max(args.steps, 1))
    if args.steps < 1 or args.rounds < 1 or args.warmup < 1:
        raise SystemExit(
            f"--steps {args.steps}, --rounds {args.rounds}, --warmup {args.warmup}: each must "
            "be at least 1 (the first warm-up step gives the step-0 losses)"
        )
    default = GPU_VARIANTS if gpu and args.dtype == "float32" else CPU_VARIANTS
    args.variants = [] if args.no_torch else (args.torch_variants or default).split(",")
    if args.variants:
        try:
            import reference  # noqa: F401  (torch, before any work)
        except ImportError as e:
            raise SystemExit(f"PyTorch is not importable ({e}); pass --no-torch") from None
        for v in args.variants:
            parse_variant(v)
    args.batch = args.batch or [128]
    if args.image_size and set(args.models) - {"resnet50"}:
        raise SystemExit(
            "--image-size applies to resnet50 only (the others have fixed-size "
            "classifiers or are meant for 32x32 / 28x28 inputs)"
        )
    return args


def main(argv=None):
    args = parse_args(argv)
    opts = kernels.ComputeOptions(conv_impl=args.conv or "auto", compute_dtype=args.dtype)
    device = common.device_name()
    torch_info = ""
    if args.variants:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        n = torch.get_num_threads()
        torch_info = f"torch {torch.__version__} ({n} threads; {common.inductor_cache()}), "
    # Command, commit, device, date and load are in the provenance header printed at the start.
    print(
        f"versions: {device}; JAX {jax.__version__} ({jax.default_backend()}), {torch_info}"
        f"Python {platform.python_version()}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; "
        f"thread environment (set by nobody here, shared by both sides): {common.thread_env()}"
    )
    print(
        f"{args.rounds} rounds x {args.steps} steps per side (sides in turn, order rotating) "
        f"after {args.warmup} warm-up steps: median [interquartile range] of "
        f"{args.rounds * args.steps} steps; one network (ours, exported to torch by "
        f"jackpot_jax.interop.torch_convert) and one synthetic batch per model, "
        f"dtype {args.dtype}, {SPARSITY:.0%} sparsity with the same per-layer keep counts "
        f"(global_magnitude) on both sides; jackpot_jax.kernels: {opts.conv_impl} "
        f"(-> {kernels.options.conv_impl(opts)}); {kernels.describe_convolutions(opts)}; "
        f"{kernels.describe_masks(opts)}; torch variants: {','.join(args.variants) or 'none'} "
        f"(mask: {args.torch_mask})",
        flush=True,
    )
    rows, failures = [], []
    for name in args.models:
        for batch in args.batch:
            for mode in args.modes:
                cell_rows, cell_failures = bench_cell(args, name, batch, mode, device)
                rows, failures = rows + cell_rows, failures + cell_failures
    step_report.print_table(rows, args.variants)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    if failures:
        print("FAILED rows (step-0 losses disagree):\n  " + "\n  ".join(failures))
        raise SystemExit(1)
    return rows


if __name__ == "__main__":
    common.start("bench_step")
    main()
