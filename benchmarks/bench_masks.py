"""Benchmark: exact top-k mask computation vs. a `jax.lax.top_k` mask, and vs. a search step.

Run from the repository root::

    python benchmarks/bench_masks.py [--repeats N] [--step-repeats M] [--skip-step]

For the prunable kernels of ResNet-20, ResNet-32x2 and ResNet-50 (param trees built with
`jax.eval_shape(model.init, ...)`, so no real weights are needed), it times one FULL jitted
mask computation over the whole tree -- every prunable layer, per-layer keep counts from the
`global_magnitude` distribution at 90% sparsity -- for

  (a) ours:     `jackpot_jax.method.masks_from_scores` (exact count, no sort) in its
                layouts: "per_layer" (one 32-pass bisection `fori_loop` per layer, the CPU
                default), "together" with 1 bit per pass (one unrolled 32-pass bisection over
                all layers), "together" with ``ComputeOptions.radix_bits`` bits per pass (the radix
                search, the GPU/TPU default) and, on the CPU, "native" (the C++ radix select
                of `jackpot_jax.kernels.native.topk_select`, the CPU default where it builds);
  (b) lax.top_k: per layer `jax.lax.top_k` (values + indices), then scatter ones at the indices;

on two kinds of scores: two-level (1.0 / 0.95, the official init: almost everything tied) and
continuous (uniform random, no ties in practice). Each time is the median over ``--repeats``
calls after warm-up, with `block_until_ready`. It checks that (b) equals (a) on continuous
scores and prints the number of mismatching mask entries (also on two-level scores, where both
happen to break ties by the lower index).

Then, unless ``--skip-step``, it times one full jitted ResNet-32x2 search step (batch 128,
32x32x3, frozen weights, straight-through masked params via `masked_params`, cross-entropy,
gradient w.r.t. the scores, optax SGD with momentum) and prints mask_ms / step_ms against the
target (< 2%).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time

import common  # puts the repository on sys.path
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jackpot_jax import kernels
from jackpot_jax import method as jm
from jackpot_jax.models import get_model, input_shape

SPARSITY = 0.9
MODELS = (
    ("ResNet-20", "resnet20", {}),
    ("ResNet-32x2", "resnet32", {}),
    ("ResNet-50", "resnet50", {}),
)
STEP_MODEL = "resnet32"
STEP_BATCH = 128
TARGET_RATIO = 0.02
# "together:1" is the unrolled bitwise bisection (32 passes), "together" the radix search
# (``ComputeOptions.radix_bits`` bits per pass), the default on GPUs and TPUs.
LAYOUTS = ("per_layer", "together:1", "together:2", "together")
RADIX_DEFAULT = kernels.ComputeOptions().radix_bits


def AUTO_LAYOUT():
    """The layout ``ComputeOptions.mask_layout="auto"`` picks on this backend."""
    return kernels.options.mask_layout(kernels.ComputeOptions())


def layouts():
    """The layouts timed here: the counting searches everywhere, the native select where
    "auto" picks it (the CPU, when it builds)."""
    return LAYOUTS + (("native",) if AUTO_LAYOUT() == "native" else ())


def is_none(x):
    return x is None


def param_shapes(name: str, options: dict):
    """The params tree of `name` as ShapeDtypeStructs (no real initialisation)."""
    model = get_model(name, **options)
    h, w, c = input_shape(name)
    x = jax.ShapeDtypeStruct((1, h, w, c), jnp.float32)
    variables = jax.eval_shape(lambda r, x: model.init(r, x, train=False), jax.random.key(0), x)
    return model, variables["params"]


def random_params(shapes, seed: int):
    """Random normal weights of the given shapes (stand-ins for pre-trained weights)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: jnp.asarray(
            rng.standard_normal(s.shape, dtype=np.float32)
            / np.sqrt(max(1, int(np.prod(s.shape[:-1]))))
        ),
        shapes,
    )


def two_level_scores(params, budget):
    """The official init: 1.0 where the magnitude mask keeps, 0.95 elsewhere."""
    mask = jm.criterion_mask(jm.magnitude_scores(params), budget)
    return jm.init_scores_from_mask(mask)


def continuous_scores(params, seed: int):
    return jm.random_scores(jax.random.key(seed), params)


def lax_topk_masks(scores, budget, use_abs: bool = True):
    """Per-layer mask from `jax.lax.top_k`: indices of the k largest, then scatter ones."""

    def one(s, k):
        if s is None:
            return None
        k = int(k)
        flat = (jnp.abs(s) if use_abs else s).ravel()
        if k == 0:
            return jnp.zeros(s.shape, s.dtype)
        _, idx = jax.lax.top_k(flat, k)
        return jnp.zeros(flat.shape, s.dtype).at[idx].set(1).reshape(s.shape)

    return jax.tree.map(one, scores, budget, is_leaf=is_none)


def mismatches(a, b) -> int:
    fa, fb = jm.flatten_paths(a), jm.flatten_paths(b)
    assert set(fa) == set(fb)
    return int(sum(int(np.sum(np.asarray(fa[p]) != np.asarray(fb[p]))) for p in fa))


def bench_masks(repeats: int):
    rows, ours_two_level = [], {}
    for label, name, options in MODELS:
        _, shapes = param_shapes(name, options)
        params = random_params(shapes, seed=0)
        budget = jm.keep_counts(params, SPARSITY, "global_magnitude")
        n_prunable = sum(
            int(np.size(x)) for x in jm.flatten_paths(jm.magnitude_scores(params)).values()
        )
        n_layers = len(jm.prunable_paths(params))
        n_keep = sum(jm.flatten_paths(budget).values())

        def ours_fn(layout, b=budget):
            layout, radix = (layout.split(":") + [RADIX_DEFAULT])[:2]

            def fn(s):
                with kernels.use(mask_layout=layout, radix_bits=int(radix)):  # traced here
                    return jm.masks_from_scores(s, b)

            return jax.jit(fn)

        ours = {layout: ours_fn(layout) for layout in layouts()}
        ref = jax.jit(lambda s, b=budget: lax_topk_masks(s, b))
        kinds = (
            ("two-level 1.0/0.95", two_level_scores(params, budget)),
            ("continuous U[0,1)", continuous_scores(params, seed=1)),
        )
        for kind, scores in kinds:
            jax.block_until_ready(scores)
            block = jax.block_until_ready
            ms = {
                layout: common.median_ms(lambda fn=fn: fn(scores), repeats, block=block)
                for layout, fn in ours.items()
            }
            ms_ref = common.median_ms(lambda: ref(scores), repeats, block=block)
            a, b = ours["per_layer"](scores), ref(scores)
            assert mismatches(a, ours["together"](scores)) == 0, (label, kind)
            assert mismatches(a, ours["together:1"](scores)) == 0, (label, kind)
            assert mismatches(a, ours["together:2"](scores)) == 0, (label, kind)
            if "native" in ours:
                assert mismatches(a, ours["native"](scores)) == 0, (label, kind)
            n_ones = int(sum(int(np.sum(np.asarray(m))) for m in jm.flatten_paths(a).values()))
            assert n_ones == n_keep, (label, kind, n_ones, n_keep)
            mm = mismatches(a, b)
            rows.append((label, n_prunable, n_layers, kind, ms, ms_ref, mm))
            print(
                f"  measured {label:12s} {kind:20s} per_layer {ms['per_layer']:9.2f} ms  "
                f"together/bisection {ms['together:1']:9.2f} ms  together/radix-2 "
                f"{ms['together:2']:9.2f} ms  together/radix-{RADIX_DEFAULT} "
                f"{ms['together']:9.2f} ms  native {_cell(ms, 'native', '9.2f')} ms  "
                f"lax.top_k {ms_ref:9.2f} ms  mismatches {mm}",
                flush=True,
            )
            if kind.startswith("two-level"):
                ours_two_level[name] = ms[AUTO_LAYOUT()]
            del a, b
    return rows, ours_two_level


def _cell(ms: dict, layout: str, fmt: str = ".2f") -> str:
    return format(ms[layout], fmt) if layout in ms else "n/a"


def bench_step(step_repeats: int) -> float:
    """Median ms of one jitted ResNet-32x2 search step (batch 128)."""
    model = get_model(STEP_MODEL)
    h, w, c = input_shape(STEP_MODEL)
    variables = model.init(jax.random.key(0), jnp.zeros((1, h, w, c), jnp.float32), train=False)
    params, batch_stats = variables["params"], variables["batch_stats"]
    budget = jm.keep_counts(params, SPARSITY, "global_magnitude")
    scores = two_level_scores(params, budget)
    tx = optax.sgd(0.1, momentum=0.9)
    opt_state = tx.init(scores)
    x = jax.random.normal(jax.random.key(1), (STEP_BATCH, h, w, c), jnp.float32)
    y = jax.random.randint(jax.random.key(2), (STEP_BATCH,), 0, 10)

    def loss_fn(scores, batch_stats, x, y):
        p = jm.masked_params(params, scores, budget)
        logits, new_state = model.apply(
            {"params": p, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, new_state["batch_stats"]

    @jax.jit
    def step(state):
        scores, opt_state, batch_stats = state
        (loss, new_bs), g = jax.value_and_grad(loss_fn, has_aux=True)(scores, batch_stats, x, y)
        updates, opt_state = tx.update(g, opt_state, scores)
        return optax.apply_updates(scores, updates), opt_state, new_bs, loss

    state = (scores, opt_state, batch_stats)
    print("  compiling + warming up the search step ...", flush=True)
    out = jax.block_until_ready(step(state))
    state = out[:3]
    times = []
    for _ in range(step_repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(step(state))
        times.append((time.perf_counter() - t0) * 1e3)
        state = out[:3]
        print(f"  step {len(times)}: {times[-1]:.0f} ms (loss {float(out[3]):.4f})", flush=True)
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5, help="timed mask calls per cell (median)")
    ap.add_argument("--step-repeats", type=int, default=3, help="timed search steps (median)")
    ap.add_argument("--skip-step", action="store_true", help="skip the ResNet-32x2 search step")
    args = ap.parse_args(argv)

    print(f"date: {datetime.date.today().isoformat()}")
    print(
        f"JAX {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}, "
        f"CPU count {os.cpu_count()}, Python {platform.python_version()}, "
        f"{platform.machine()}"
    )
    print(
        f"masks at {SPARSITY:.0%} sparsity, per-layer keep counts from 'global_magnitude' "
        f"(random normal weights), median of {args.repeats} after warm-up"
    )

    rows, ours_two_level = bench_masks(args.repeats)

    print()
    print(
        f"| model | prunable weights | layers | scores | ours, per_layer (ms) "
        f"| ours, together, bisection (ms) | ours, together, radix 2 bits (ms) "
        f"| ours, together, radix {RADIX_DEFAULT} bits (ms) | ours, native select (ms) "
        f"| lax.top_k (ms) | top_k / ours ({AUTO_LAYOUT()}, the default here) "
        f"| mismatches vs ours |"
    )
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, n, layers, kind, ms, b, mm in rows:
        print(
            f"| {label} | {n / 1e6:.2f}M | {layers} | {kind} | {ms['per_layer']:.2f} "
            f"| {ms['together:1']:.2f} | {ms['together:2']:.2f} | {ms['together']:.2f} "
            f"| {_cell(ms, 'native')} | {b:.2f} "
            f"| {b / ms[AUTO_LAYOUT()]:.2f}x | {mm} |"
        )

    if not args.skip_step:
        print()
        step_ms = bench_step(args.step_repeats)
        mask_ms = ours_two_level[STEP_MODEL]
        ratio = mask_ms / step_ms
        print()
        print("| ResNet-32x2 search step (batch 128) | ms |")
        print("|---|---:|")
        print(f"| full jitted step (median of {args.step_repeats}) | {step_ms:.0f} |")
        print(f"| mask computation, two-level scores (ours, {AUTO_LAYOUT()}) | {mask_ms:.2f} |")
        print(
            f"| mask_ms / step_ms | {ratio:.3%} (target < {TARGET_RATIO:.0%}: "
            f"{'met' if ratio < TARGET_RATIO else 'NOT met'}) |"
        )


if __name__ == "__main__":
    common.start("bench_masks")
    main()
