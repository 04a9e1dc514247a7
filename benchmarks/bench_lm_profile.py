"""Where an LM search step's time goes (``bench_lm_step.py --profile``).

Ours: the step's parts, each jitted and timed ALONE on the step's shapes (median of
``repeats`` calls; XLA fuses differently inside the step, so the parts need not add up to it):

* ``mask``: the 2:4 masks of every block Linear from the scores (`jm.masks_from_scores`);
* ``forward+backward``: the loss and its gradient with respect to the masked block kernels
  (what the scores' gradient needs), the masked weights given (no mask computed);
  split into ``linears`` (the 7 matmuls of every block with their input and weight
  gradients), ``attention`` (causal GQA `jax.nn.dot_product_attention`, forward and
  backward, every block), ``head+loss`` (the tied 49,152-token head, log-softmax and its
  gradient to the hidden states) and the rest (norms, RoPE, SwiGLU, residuals, embedding);
* ``optimizer``: AdamW's update of the scores;
* ``rest of the step``: the step minus mask, forward+backward and optimizer (the
  straight-through multiply and its backward, the finite check, buffer copies).

PyTorch eager: `torch.profiler` over ``repeats`` steps, self CPU (or CUDA) time by operator,
bucketed the same way (matmuls, attention, the mask's topk/scatter/abs, AdamW, loss, rest).
"""

from __future__ import annotations

import common
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jackpot_jax import core, kernels, utils
from jackpot_jax import method as jm
from jackpot_jax.pipeline.lm import next_token_loss

BLOCK_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _time(fn, *args, repeats: int) -> float:
    jitted = jax.jit(fn)
    return common.median_ms(lambda: jitted(*args), repeats, 2, block=jax.block_until_ready)


def ours_parts(setup, dtype: str, repeats: int) -> dict:
    """{part: median ms} of our step's parts (see the module docstring)."""
    low = jnp.dtype(dtype)
    o = setup.options
    b, t = setup.inputs.shape
    params = setup.variables["params"]
    budget, scores = setup.search.budget, setup.search.state.params
    masked = jm.apply_masks(params, setup.search.masks)
    flat = jm.flatten_paths(masked)
    prunable = set(jm.flatten_paths(budget))
    kernels_ = {p: v for p, v in flat.items() if p in prunable}
    rest = {p: v for p, v in flat.items() if p not in prunable}
    x, y = jnp.asarray(setup.inputs), jnp.asarray(setup.labels)

    def loss(k, rest, x, y):
        p = core.cast_floats(utils.nest_dict({**k, **rest}), low)
        with kernels.use(kernels.ComputeOptions(compute_dtype=dtype)):
            return next_token_loss(setup.module.apply({"params": p}, x), y)

    parts = {}
    parts["mask"] = _time(lambda s: jm.masks_from_scores(s, budget), scores, repeats=repeats)
    parts["forward"] = _time(loss, kernels_, rest, x, y, repeats=repeats)
    parts["forward+backward"] = _time(
        jax.value_and_grad(loss), kernels_, rest, x, y, repeats=repeats
    )
    tx = core.make_optimizer(setup.opt_cfg, 1, 1000)[0]
    opt_state = tx.init(scores)
    grads = jax.tree.map(lambda s: None if s is None else jnp.full_like(s, 1e-3), scores)

    def adamw(g, st, s):
        u, st = tx.update(g, st, s)
        return optax.apply_updates(s, u), st

    parts["optimizer"] = _time(adamw, grads, opt_state, scores, repeats=repeats)

    # forward+backward's pieces on the same shapes, every block
    rng = np.random.default_rng(0)
    n_layers, d, h, kv = (
        o["num_hidden_layers"],
        o["hidden_size"],
        o["num_attention_heads"],
        o["num_key_value_heads"],
    )
    hd = d // h
    shapes = [np.shape(v) for p, v in kernels_.items()]

    def rand(*shape):
        return jnp.asarray(rng.standard_normal(shape, np.float32) * 0.02, low)

    xs = [rand(b * t, s[0]) for s in shapes]
    ws = [v.astype(low) for v in kernels_.values()]

    def linears(xs, ws):
        return sum(jnp.sum((xi @ wi).astype(jnp.float32)) for xi, wi in zip(xs, ws))

    parts["  linears (matmuls)"] = _time(jax.grad(linears, argnums=(0, 1)), xs, ws, repeats=repeats)
    qs = [rand(b, t, h, hd) for _ in range(n_layers)]
    ks = [rand(b, t, kv, hd) for _ in range(n_layers)]
    vs = [rand(b, t, kv, hd) for _ in range(n_layers)]

    def attention(qs, ks, vs):
        out = 0.0
        for q, k, v in zip(qs, ks, vs):
            a = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla")
            out = out + jnp.sum(a.astype(jnp.float32))
        return out

    parts["  attention"] = _time(
        jax.grad(attention, argnums=(0, 1, 2)), qs, ks, vs, repeats=repeats
    )
    emb = params["embed_tokens"]["embedding"].astype(low)
    hidden = rand(b, t, d)

    def head(hid, e, y):
        return next_token_loss((hid @ e.T).astype(jnp.float32), y)

    parts["  head+loss"] = _time(jax.grad(head), hidden, emb, y, repeats=repeats)
    fb = parts["forward+backward"]
    parts["  rest of forward+backward"] = fb - sum(
        parts[k] for k in ("  linears (matmuls)", "  attention", "  head+loss")
    )
    return parts


TORCH_BUCKETS = (
    ("mask (topk, scatter, abs, zeros)", ("topk", "scatter", "abs", "zeros")),
    ("matmuls", ("mm", "addmm", "bmm", "matmul", "linear")),
    ("loss", ("log_softmax", "nll_loss", "cross_entropy")),
    ("attention", ("attention", "sdpa", "softmax", "flash", "_efficient")),
    ("optimizer (AdamW)", ("adam", "_foreach", "lerp")),
)


def torch_eager_ops(run, repeats: int, gpu: bool) -> dict:
    """{bucket: ms per step} of PyTorch eager's self time by operator (`TORCH_BUCKETS`; the
    first matching bucket; 'rest' for the others), and the top operators."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
    with profile(activities=acts) as prof:
        for _ in range(repeats):
            run()
    del torch
    out: dict = {name: 0.0 for name, _ in TORCH_BUCKETS}
    out["rest"] = 0.0
    ops = []
    for e in prof.key_averages():
        us = e.self_device_time_total if gpu else e.self_cpu_time_total
        if us <= 0:
            continue
        ms = us / 1e3 / repeats
        ops.append((ms, e.key))
        name = e.key.lower().removeprefix("aten::")
        bucket = next((b for b, keys in TORCH_BUCKETS if any(k in name for k in keys)), "rest")
        out[bucket] += ms
    out["top operators"] = [f"{k}: {ms:.1f} ms" for ms, k in sorted(ops, reverse=True)[:12]]
    return out


def profile(setup, args, rows) -> dict:
    """Prints and returns ours' parts and PyTorch eager's operator buckets, beside the
    medians of the timed run (``rows``)."""
    import bench_lm_step

    repeats = 5
    parts = ours_parts(setup, args.dtype, repeats)
    step = rows[0]["jax_ms"]
    parts["rest of the step"] = step - sum(
        parts[k] for k in ("mask", "forward+backward", "optimizer")
    )
    print(f"\nprofile of ours (each part jitted alone, median of {repeats}; step {step:.0f} ms):")
    for k, v in parts.items():
        print(f"  {k}: {v:.1f} ms ({v / step:.1%})")
    out = {"ours_ms": parts, "ours_step_ms": step}
    if "eager" in (args.variants or []):
        gpu = jax.default_backend() == "gpu"
        weights = bench_lm_step.torch_weights(setup)
        run = bench_lm_step.torch_runner(
            setup, weights, "eager", args.dtype, "cuda" if gpu else "cpu"
        )
        run()
        ops = torch_eager_ops(run, 3, gpu)
        eager = next(r for r in rows if r["torch_variant"] == "eager").get("torch_ms") or 0
        print(f"profile of PyTorch eager (torch.profiler self time, 3 steps; step {eager:.0f} ms):")
        for k, v in ops.items():
            if k != "top operators":
                print(f"  {k}: {v:.1f} ms ({v / eager:.1%})" if eager else f"  {k}: {v:.1f} ms")
        print("  top operators: " + "; ".join(ops["top operators"]))
        out["torch_eager_ms"] = ops
        out["torch_eager_step_ms"] = eager
    return out
