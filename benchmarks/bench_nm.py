"""Benchmark: an exported 2:4 jackpot's large layers, dense against 2:4-sparse (issue 12).

Run from the repository root::

    python benchmarks/bench_nm.py                    # CUDA if present, else the CPU checks
    python benchmarks/bench_nm.py --repeats 100      # more timed calls per cell (median)
    python benchmarks/bench_nm.py --lenet-jackpot runs/study_nm/lenet300_100/seed0/search_pretrained_magnitude_nm2of4_e10

What it builds, on any machine: ResNet-50 (random weights: the speed of a 2:4 matmul does not
depend on the values; the classifier included in the pattern) and LeNet-300-100 (random, or the
2:4 jackpot of a search run given with ``--lenet-jackpot``), 2:4 masks from
`jackpot_jax.method` (magnitude, `nm_budget`), exported to PyTorch with
`jackpot_jax.interop.torch_convert.export_to_torch_state_dict` (ResNet-50 loaded into torchvision's
`resnet50` with ``strict=True``). It checks, per exported weight that the benchmark uses:

* the pattern: at most 2 non-zeros in every 4 consecutive weights along the input axis, zeros
  exactly where the mask is 0 (pre-trained weights that are themselves 0 aside);
* the export: torch's own CPU implementation of the CUTLASS 2:4 compression (the layout
  `to_sparse_semi_structured` uses) round-trips the fp16 weight exactly.

On a CUDA GPU with sparse tensor cores (A100, H100, H200) it then times, in fp16, every
distinct ResNet-50 1x1 convolution as a matmul at batch 256 (rows = 256 x output pixels) and
the classifier, and a LeNet-300-100 forward at batch 256, dense (`F.linear`) against 2:4
(`torch.sparse.to_sparse_semi_structured`, cuSPARSELt and CUTLASS backends), with CUDA events
(median of ``--repeats`` after warm-up), compares the sparse outputs with the dense ones and
prints the speed-ups. On the CPU it stops after the checks: the sparse kernels need CUDA.

It also reports whether the installed JAX offers a 2:4 sparse dot on NVIDIA GPUs.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import importlib.util
import inspect
import os
import platform

# JAX only builds the masks here; on a GPU machine it must not take the GPU's memory.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import common  # puts the repository on sys.path
import jax
import numpy as np

from jackpot_jax import method as jm
from jackpot_jax import models
from jackpot_jax.interop import torch_convert

PATTERN = jm.NMPattern(2, 4)


def jax_nm_support() -> str:
    """What the installed JAX offers for 2:4 sparse matmuls on NVIDIA GPUs, in one line."""
    found = []
    if importlib.util.find_spec("jax.experimental.sparse.nm") is not None:
        found.append("jax.experimental.sparse.nm (N:M sparse matmul) is present")
    if "sparsity" in inspect.signature(jax.lax.dot_general).parameters:
        found.append("lax.dot_general takes a sparsity argument")
    if found:
        return f"JAX {jax.__version__}: " + "; ".join(found) + " (not benchmarked here)"
    mosaic = importlib.util.find_spec("jax.experimental.mosaic.gpu.tcgen05") is not None
    return (
        f"JAX {jax.__version__}: no 2:4 sparse dot (no jax.experimental.sparse.nm, no "
        "sparsity argument to lax.dot_general)"
        + (
            "; only Mosaic GPU's low-level tcgen05 MMA has a sparse mode, and tcgen05 is "
            "Blackwell (sm_100), not the H100/H200's Hopper"
            if mosaic
            else ""
        )
    )


def nm_jackpot(arch: str, variables=None):
    """(variables, flat masks) of a magnitude 2:4 mask over every kernel the pattern fits,
    the classifier included."""
    module = models.get_model(arch)
    if variables is None:
        variables = jax.jit(models.init_variables, static_argnums=(0, 2))(
            module, jax.random.key(0), (1, *models.input_shape(arch))
        )
    params = variables["params"]
    every_kernel = jm.make_filter(exclude=())
    budget = jm.nm_budget(params, PATTERN, every_kernel)
    masks = jm.criterion_mask(jm.magnitude_scores(params, every_kernel), budget)
    return variables, {p: np.asarray(m) for p, m in jm.flatten_paths(masks).items()}, budget


def check_weight(torch, name, w, mask_torch_layout) -> dict:
    """Pattern and CUTLASS round-trip checks of one exported (out, in[, h, w]) weight."""
    from torch.sparse import _semi_structured_conversions as conv

    w2d = np.moveaxis(w.numpy(), 1, -1).reshape(-1, w.shape[1])  # rows, input axis last
    nonzero = (w2d != 0).reshape(w2d.shape[0], -1, PATTERN.m).sum(-1)
    m2d = np.moveaxis(mask_torch_layout, 1, -1).reshape(w2d.shape)
    pattern_ok = bool(nonzero.max() <= PATTERN.n and np.all(w2d[m2d == 0] == 0))
    roundtrip = None
    if w.dim() == 2 or w.shape[2:] == (1, 1):
        # Zero padding to the CUTLASS layout's multiples (rows 32, columns 64 in fp16) keeps
        # the pattern: the benchmark pads the same way.
        half = torch.from_numpy(np.ascontiguousarray(w2d)).half()
        padded = _pad_to(half, _ceil(half.shape[0], 32), _ceil(half.shape[1], 64))
        packed, meta = conv.sparse_semi_structured_from_dense_cutlass(padded)
        roundtrip = bool(
            torch.equal(conv.sparse_semi_structured_to_dense_cutlass(packed, meta), padded)
        )
    return {
        "name": name,
        "shape": tuple(w.shape),
        "pattern_ok": pattern_ok,
        "cutlass_roundtrip": roundtrip,
    }


def resnet50_layers(torch, torchvision, state_dict, batch: int):
    """torchvision ResNet-50 with the exported weights (strict load); its 1x1 convolutions
    and classifier as matmuls: {(rows at ``batch``, in, out): [torch keys]}."""
    net = torchvision.models.resnet50()
    net.load_state_dict(state_dict, strict=True)
    net.eval()
    shapes = collections.OrderedDict()

    def hook(name):
        def record(mod, _, out):
            rows = batch * out.shape[2] * out.shape[3] if out.dim() == 4 else batch
            key = (
                rows,
                mod.in_channels if out.dim() == 4 else mod.in_features,
                mod.out_channels if out.dim() == 4 else mod.out_features,
            )
            shapes.setdefault(key, []).append(name + ".weight")

        return record

    for name, mod in net.named_modules():
        if isinstance(mod, torch.nn.Conv2d) and mod.kernel_size == (1, 1):
            mod.register_forward_hook(hook(name))
        elif isinstance(mod, torch.nn.Linear):
            mod.register_forward_hook(hook(name))
    with torch.no_grad():
        net(torch.zeros(1, 3, 224, 224))
    return shapes


def _pad_to(t, rows, cols):
    out = t.new_zeros(rows, cols)
    out[: t.shape[0], : t.shape[1]] = t
    return out


def _ceil(x, k):
    return -(-x // k) * k


def time_ms(torch, fn, repeats: int, device: str) -> float:
    """Median milliseconds of ``fn()`` over ``repeats`` calls after 5 warm-up calls: timed by
    CUDA events on ``cuda``, by the host's clock on ``cpu`` (the dry run)."""
    if device == "cpu":
        return common.median_ms(fn, repeats, 5)
    return common.median_ms(fn, repeats, 5, clock=common.cuda_event_clock(torch))


def sparse_backends(torch):
    """{name: (convert dense -> 2:4 tensor, fp16 multiple its dims must be padded to)}."""
    from torch.sparse import (
        SparseSemiStructuredTensor,
        SparseSemiStructuredTensorCUSPARSELT,
        SparseSemiStructuredTensorCUTLASS,
        to_sparse_semi_structured,
    )

    def make(force_cutlass, cls):
        def convert(w):
            SparseSemiStructuredTensor._FORCE_CUTLASS = force_cutlass
            return to_sparse_semi_structured(w)

        c = cls._DTYPE_SHAPE_CONSTRAINTS[torch.half]
        return convert, max(c.sparse_min_rows, c.sparse_min_cols)

    return {
        "cuSPARSELt": make(False, SparseSemiStructuredTensorCUSPARSELT),
        "CUTLASS": make(True, SparseSemiStructuredTensorCUTLASS),
    }


def _failure(e: Exception) -> tuple:
    # An unsupported shape or backend is reported in its cell, not fatal.
    return None, f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"


def bench_matmuls(torch, shapes, state_dict, repeats: int, device: str):
    """Per distinct (rows, in, out): dense ``F.linear`` time and, per backend, the 2:4 time
    and the largest output difference (weights zero-padded to the backend's multiples; the
    padding adds zero rows/columns, the real outputs are compared)."""
    import torch.nn.functional as F

    rows_out = []
    for (m, k, n), names in shapes.items():
        w = state_dict[names[0]].reshape(n, k).half().to(device)
        x = torch.randn(m, k, dtype=torch.half, device=device)
        dense = F.linear(x, w)
        row = {
            "shape": (m, k, n),
            "count": len(names),
            "dense_ms": time_ms(torch, lambda: F.linear(x, w), repeats, device),  # noqa: F821
        }
        for backend, (convert, step) in sparse_backends(torch).items():
            try:
                kp = _ceil(k, step)
                ws = convert(_pad_to(w, _ceil(n, step), kp))
                xp = x if kp == k else _pad_to(x, m, kp)
                out = F.linear(xp, ws)[:, :n]
                err = float((out - dense).abs().max() / dense.abs().max())
                row[backend] = (time_ms(torch, lambda: F.linear(xp, ws), repeats, device), err)  # noqa: F821
                del ws, xp, out
            except Exception as e:  # noqa: BLE001
                row[backend] = _failure(e)
        rows_out.append(row)
        del x, dense
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows_out


def bench_lenet(torch, sd, repeats: int, device: str, batch: int):
    """LeNet-300-100 forward at ``batch``, dense against fc1/fc2 2:4-sparse (zero-padded to
    the backend's shape constraints; the padding keeps the outputs exact)."""
    import torch.nn.functional as F

    w = {k: v.half().to(device) for k, v in sd.items()}
    x = torch.randn(batch, 784, dtype=torch.half, device=device)

    def dense():
        h = F.relu(F.linear(x, w["fc1.weight"], w["fc1.bias"]))
        h = F.relu(F.linear(h, w["fc2.weight"], w["fc2.bias"]))
        return F.linear(h, w["classifier.weight"], w["classifier.bias"])

    ref = dense()
    out = {"dense_ms": time_ms(torch, dense, repeats, device)}
    for backend, (convert, step) in sparse_backends(torch).items():
        try:
            d_in, h1, h2 = _ceil(784, step), _ceil(300, step), _ceil(100, step)
            w1 = convert(_pad_to(w["fc1.weight"], h1, d_in))
            w2 = convert(_pad_to(w["fc2.weight"], h2, h1))
            b1 = _pad_to(w["fc1.bias"][None], 1, h1)[0]
            b2 = _pad_to(w["fc2.bias"][None], 1, h2)[0]
            w3 = _pad_to(w["classifier.weight"], w["classifier.weight"].shape[0], h2)
            xp = _pad_to(x, batch, d_in)

            def sparse():
                h = F.relu(F.linear(xp, w1, b1))
                h = F.relu(F.linear(h, w2, b2))
                return F.linear(h, w3, w["classifier.bias"])

            err = float((sparse() - ref).abs().max() / ref.abs().max())
            out[backend] = (time_ms(torch, sparse, repeats, device), err)
        except Exception as e:  # noqa: BLE001
            out[backend] = _failure(e)
    return out


def _cell(value, dense_ms):
    t, err = value
    if t is None:
        return f"n/a ({err})"
    return f"{t:.4f} ms, x{dense_ms / t:.2f}, err {err:.1e}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default=None,
        help="default: cuda if available, else only the checks; cpu: a dry run of "
        "the timing code (use a small --batch)",
    )
    p.add_argument(
        "--lenet-jackpot",
        default=None,
        help="a 2:4 search run's workdir (jackpot.npz + model/) for the LeNet forward",
    )
    args = p.parse_args(argv)
    import torch
    import torchvision

    cuda = torch.cuda.is_available()
    batch, device = args.batch, args.device or "cuda"
    print(f"# bench_nm {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(
        f"# python {platform.python_version()}, torch {torch.__version__}, JAX "
        f"{jax.__version__} (masks on {jax.default_backend()}), {os.cpu_count()} CPU cores, "
        f"device: {torch.cuda.get_device_name() if cuda else 'CPU only'}"
    )
    print(f"# {jax_nm_support()}")

    # ResNet-50 --------------------------------------------------------------------------
    variables, masks, budget = nm_jackpot("resnet50")
    print(
        f"# ResNet-50: {PATTERN} on {sum(isinstance(b, jm.NMPattern) for b in jax.tree.leaves(budget))}"
        f" kernels, kept dense: {jm.dense_kept(budget)}"
    )
    sd = torch_convert.export_to_torch_state_dict("resnet50", variables, masks)
    shapes = resnet50_layers(torch, torchvision, sd, batch)
    names = {
        torch_convert.torch_module_name("resnet50", p.split("/")[:-1]) + ".weight": p for p in masks
    }
    checks = []
    for keys in shapes.values():
        for key in keys:
            mask = torch_convert._to_torch(
                "conv" if sd[key].dim() == 4 else "linear", masks[names[key]]
            )
            checks.append(check_weight(torch, key, sd[key], mask))
    # LeNet-300-100 ----------------------------------------------------------------------
    if args.lenet_jackpot:
        from jackpot_jax.pipeline import export

        jackpot = export.read_jackpot(args.lenet_jackpot)
        if jackpot["meta"].get("pattern") != str(PATTERN):
            raise SystemExit(
                f"{args.lenet_jackpot}: pattern {jackpot['meta'].get('pattern')!r},"
                f" expected {PATTERN}"
            )
        out = os.path.join(os.path.abspath(args.lenet_jackpot), "bench_nm_export.pth")
        torch_convert.export_checkpoint(
            os.path.join(args.lenet_jackpot, "model"),
            out,
            os.path.join(args.lenet_jackpot, "jackpot.npz"),
        )
        lenet_sd = torch.load(out, weights_only=True)
        lenet_masks = jackpot["masks"]
        source = f"the 2:4 jackpot in {args.lenet_jackpot}"
    else:
        lv, lenet_masks, _ = nm_jackpot("lenet300_100")
        lenet_masks = {k: v for k, v in lenet_masks.items() if k != "classifier/kernel"}
        lenet_sd = torch_convert.export_to_torch_state_dict("lenet300_100", lv, lenet_masks)
        source = "random weights, magnitude 2:4 masks"
    for key in ("fc1", "fc2"):
        checks.append(
            check_weight(
                torch,
                f"lenet300_100 {key}.weight",
                lenet_sd[f"{key}.weight"],
                np.asarray(lenet_masks[f"{key}/kernel"]).T,
            )
        )
    print(
        f"\n## Checks on the CPU: pattern and export ({len(checks)} exported weights; "
        f"LeNet-300-100: {source})\n"
    )
    print("| weight | torch shape | 2:4 pattern | CUTLASS compress round trip |")
    print("|---|---|---|---|")
    for c in checks:
        rt = {None: "n/a (not 2-D)", True: "exact", False: "DIFFERS"}[c["cutlass_roundtrip"]]
        print(f"| {c['name']} | {c['shape']} | {'ok' if c['pattern_ok'] else 'VIOLATED'} | {rt} |")
    failed = [c["name"] for c in checks if not c["pattern_ok"] or c["cutlass_roundtrip"] is False]
    print(f"\nall {len(checks)} checks passed" if not failed else f"\nFAILED: {failed}")
    if failed:
        raise SystemExit(1)

    if device == "cuda" and not cuda:
        print("\nno CUDA device: the dense vs 2:4 timings need an NVIDIA GPU (not measured)")
        return
    if device == "cpu":
        print("\n# DRY RUN on the CPU (--device cpu): these times are not the benchmark")
    print(
        f"\n## ResNet-50 1x1 convolutions and classifier as matmuls, batch {batch}, fp16 "
        f"(median of {args.repeats}; 'x' = dense time / sparse time; err = max |sparse - "
        "dense| / max |dense|)\n"
    )
    print("| rows x in -> out | layers | dense (ms) | cuSPARSELt | CUTLASS |")
    print("|---|---:|---:|---|---|")
    rows = bench_matmuls(torch, shapes, sd, args.repeats, device)
    totals = collections.Counter()
    for r in rows:
        m, k, n = r["shape"]
        print(
            f"| {m} x {k} -> {n} | {r['count']} | {r['dense_ms']:.4f} | "
            f"{_cell(r['cuSPARSELt'], r['dense_ms'])} | {_cell(r['CUTLASS'], r['dense_ms'])} |"
        )
        totals["dense"] += r["count"] * r["dense_ms"]
        for b in ("cuSPARSELt", "CUTLASS"):
            if r[b][0] is not None:
                totals[b] += r["count"] * r[b][0]
            else:
                totals[b] += float("nan")
    print(
        f"\nsum over all {sum(r['count'] for r in rows)} layers: dense {totals['dense']:.3f} ms"
        + "".join(
            f", {b} {totals[b]:.3f} ms (x{totals['dense'] / totals[b]:.2f})"
            for b in ("cuSPARSELt", "CUTLASS")
        )
    )
    lenet = bench_lenet(torch, lenet_sd, args.repeats, device, batch)
    print(f"\n## LeNet-300-100 forward, batch {batch}, fp16 ({source})\n")
    print(
        f"dense {lenet['dense_ms']:.4f} ms; cuSPARSELt {_cell(lenet['cuSPARSELt'], lenet['dense_ms'])}; "
        f"CUTLASS {_cell(lenet['CUTLASS'], lenet['dense_ms'])}"
    )


if __name__ == "__main__":
    common.start("bench_nm")
    main()
