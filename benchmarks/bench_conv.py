"""Benchmark: the convolutions of a search step alone, jackpot_jax against PyTorch, same device.

Run from the repository root::

    python benchmarks/bench_conv.py [--batch 128] [--json FILE]

Where the ResNet-32x2 search step's time goes that no change to the model code can recover:
for each of its three stages' 3x3 convolutions (stride 1, padding 1, NHWC in jackpot_jax,
NCHW in PyTorch), one process times, on random data and after warm-up, the three parts of a
convolution's training work,

* ``fwd``: the forward convolution,
* ``dgrad``: the input gradient,
* ``wgrad``: the weight gradient,

each a jitted function of `jackpot_jax.kernels.conv2d` (its `jax.vjp` for the gradients, of which
XLA keeps only the one asked for) under ``--conv``: ``explicit`` (the CPU path with XLA's
kernels, oneDNN switched off), ``onednn`` (the same with oneDNN's convolutions,
`jackpot_jax.kernels.native.onednn`: the CPU default where it is installed) and/or ``xla`` (XLA's own
gradients); and PyTorch's `torch.nn.functional.conv2d` / `aten.convolution_backward` with
only that gradient requested. The sides take turns in rounds, the order rotating
(`common.time_sides`, as in bench_step.py); medians.
The table gives ms and GFLOP/s of each, the ratio (torch ms / jax ms; above 1: jackpot_jax
faster) and, weighted by how many such convolutions one ResNet-32x2 step runs (10, 9 and 9:
the stage's stride-1 3x3 layers; the stride-2 layers and the stem are left out), the
milliseconds per step of each side. On a GPU both sides run on it (PyTorch on ``cuda``,
synchronised around each call); it was written for, and run on, the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import common  # puts the repository on sys.path
import jax
import jax.numpy as jnp

from jackpot_jax import kernels

# (height = width, channels, layers per ResNet-32x2 step): stages 1-3 at 32x32 input.
STAGES = ((32, 32, 10), (16, 64, 9), (8, 128, 9))
PARTS = ("fwd", "dgrad", "wgrad")
PAD = ((1, 1), (1, 1))


def jax_runners(batch: int, h: int, c: int, impl: str) -> dict:
    """{part: function running it once, returning (ms, None)} for ``kernels.conv2d`` under impl
    (``explicit``, ``onednn`` or ``xla``)."""
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (batch, h, h, c), jnp.float32)
    w = jax.random.normal(keys[1], (3, 3, c, c), jnp.float32) * 0.05
    g = jax.random.normal(keys[2], (batch, h, h, c), jnp.float32)

    def conv(x, w):
        return kernels.conv2d(x, w, (1, 1), PAD)

    path, dnnl = ("explicit", "auto") if impl == "onednn" else (impl, "off")
    with kernels.use(conv_impl=path, onednn=dnnl):  # read when a function is traced
        fns = {
            "fwd": jax.jit(conv).lower(x, w).compile(),
            "dgrad": jax.jit(lambda x, w, g: jax.vjp(lambda v: conv(v, w), x)[1](g)[0])
            .lower(x, w, g)
            .compile(),
            "wgrad": jax.jit(lambda x, w, g: jax.vjp(lambda v: conv(x, v), w)[1](g)[0])
            .lower(x, w, g)
            .compile(),
        }
    args = {"fwd": (x, w), "dgrad": (x, w, g), "wgrad": (x, w, g)}

    def runner(part):
        def run():
            t0 = time.perf_counter()
            jax.block_until_ready(fns[part](*args[part]))
            return (time.perf_counter() - t0) * 1e3, None

        return run

    return {part: runner(part) for part in PARTS}


def torch_runners(batch: int, h: int, c: int, device: str) -> dict:
    import torch

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, c, h, h, generator=gen).to(device)
    w = (torch.randn(c, c, 3, 3, generator=gen) * 0.05).to(device)
    g = torch.randn(batch, c, h, h, generator=gen).to(device)
    masks = {"dgrad": (True, False, False), "wgrad": (False, True, False)}
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def runner(part):
        def run():
            sync()
            t0 = time.perf_counter()
            if part == "fwd":
                torch.nn.functional.conv2d(x, w, padding=1)
            else:
                torch.ops.aten.convolution_backward(
                    g, x, w, None, (1, 1), (1, 1), (1, 1), False, (0, 0), 1, masks[part]
                )
            sync()
            return (time.perf_counter() - t0) * 1e3, None

        return run

    return {part: runner(part) for part in PARTS}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument(
        "--conv",
        default=None,
        help="comma-separated, of explicit, onednn, xla (default: all three, "
        "onednn where it is available)",
    )
    ap.add_argument("--steps", type=int, default=5, help="timed calls per side per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    ap.add_argument("--json", default=None, help="write the rows to this JSON file")
    args = ap.parse_args(argv)
    from jackpot_jax.kernels.native import onednn

    impls = (args.conv or ("explicit,onednn,xla" if onednn.available() else "explicit,xla")).split(
        ","
    )
    if not impls or set(impls) - {"explicit", "onednn", "xla"}:
        raise SystemExit(f"--conv={args.conv!r}; expected some of explicit, onednn, xla")
    if "onednn" in impls and not onednn.available():
        raise SystemExit(f"--conv onednn: {onednn.unavailable_reason()}")
    import torch

    torch.set_num_threads(args.threads)
    torch_device = "cuda" if jax.default_backend() == "gpu" else "cpu"  # the same device
    print(
        f"versions: {common.device_name()}; JAX "
        f"{jax.__version__}, torch {torch.__version__} ({torch_device}, {args.threads} threads); "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; thread environment (set by the user, "
        f"not by this script): {common.thread_env()}"
    )
    print(
        f"batch {args.batch}, float32, 3x3 stride 1 padding 1; median of {args.rounds} "
        f"rounds x {args.steps} calls per side (sides in turn) after {args.warmup} warm-up "
        "calls",
        flush=True,
    )

    rows = []
    for h, c, layers in STAGES:
        sides = {impl: jax_runners(args.batch, h, c, impl) for impl in impls}
        sides["torch"] = torch_runners(args.batch, h, c, torch_device)
        gflop = 2 * args.batch * h * h * c * c * 9 / 1e9
        for part in PARTS:
            res = common.time_sides(
                {s: (lambda r=r: r[part]) for s, r in sides.items()},
                args.steps,
                args.warmup,
                args.rounds,
                log=None,
            )
            failed = {s: r["error"] for s, r in res.items() if "error" in r}
            if failed:
                raise SystemExit(f"{h}x{h}x{c} {part}: {failed}")
            row = {
                "height": h,
                "channels": c,
                "batch": args.batch,
                "part": part,
                "layers_per_step": layers,
                "gflop": gflop,
                "torch_ms": res["torch"]["ms"],
            }
            row.update({f"jax_{impl}_ms": res[impl]["ms"] for impl in impls})
            rows.append(row)
            print(
                f"  {h}x{h}x{c} {part}: " + ", ".join(f"{s} {res[s]['ms']:.2f} ms" for s in sides),
                flush=True,
            )
    print()
    head = (
        "| stage | part | torch ms | torch GFLOP/s | "
        + " | ".join(f"{i} ms | {i} GFLOP/s | torch/{i}" for i in impls)
        + " |"
    )
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    per_step = {s: 0.0 for s in ["torch"] + impls}
    for r in rows:
        cells = [
            f"{r['height']}x{r['height']}x{r['channels']}",
            r["part"],
            f"{r['torch_ms']:.2f}",
            f"{r['gflop'] / r['torch_ms'] * 1e3:.0f}",
        ]
        per_step["torch"] += r["torch_ms"] * r["layers_per_step"]
        for i in impls:
            ms = r[f"jax_{i}_ms"]
            per_step[i] += ms * r["layers_per_step"]
            cells += [f"{ms:.2f}", f"{r['gflop'] / ms * 1e3:.0f}", f"{r['torch_ms'] / ms:.2f}x"]
        print("| " + " | ".join(cells) + " |")
    print()
    print(
        "per ResNet-32x2 step (these layers x their count, forward + both gradients): "
        + ", ".join(f"{s} {v:.0f} ms" for s, v in per_step.items())
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    common.start("bench_conv")
    main()
