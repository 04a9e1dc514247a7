"""Benchmark: one 2:4 search step of a SmolLM2-135M-shaped Llama, jackpot_jax beside PyTorch.

Run from the repository root::

    python benchmarks/bench_lm_step.py [--batch 2 --seq-len 128] [--json FILE] [--profile]

One process builds ONE network and ONE batch of token windows and times search steps of

* **jackpot_jax** ("ours"): the LM mode's step (`jackpot_jax.pipeline.lm`): the core's
  `make_search_step` with the next-token loss (`pipeline.lm.next_token_loss`), a 2:4 budget
  (`jm.nm_budget`) on every block Linear (q, k, v, o, gate, up, down; the tied embedding and
  the norms frozen and dense), scores warmed up from the magnitude 2:4 mask (two levels),
  AdamW on the scores (the SmolLM2 config's: lr 2e-3, no weight decay);
* **PyTorch**: transformers' ``LlamaForCausalLM`` of the same config with OUR weights
  (`jackpot_jax.interop.hf_lm.lm_to_hf`), every block Linear a masked Linear with our scores
  (`reference.MaskedNMLinear`: ``weight * h(|scores|)``, ``h`` the top-2-of-4 mask along the
  input axis by `torch.topk`, straight-through to the scores), the same tokens and loss,
  fused `torch.optim.AdamW` on the scores; variants ``eager`` and ``compile``
  (`torch.compile` of the network).

The model has SmolLM2-135M's shape (30 blocks, width 576, 9 heads and 3 KV heads of 64,
SwiGLU 1536, RoPE base 1e5, tied 49,152-token vocabulary) and RANDOM weights (a step's cost
does not depend on them; nothing is downloaded or read). ``--layers`` and ``--tiny`` shrink it.
The step-0 losses must agree to 1e-3 relative in float32 (a bfloat16 side is checked on one
float32 forward pass), else the row FAILS and the exit status is 1. Sides take turns
(`common.time_sides`), medians of at least 20 steps.

Memory, per side: its resident state (weights, scores, optimiser state: bytes of its arrays)
plus what one step adds above the memory resident before it: on the CPU the rise of the
process's peak RSS (``VmHWM``, reset through ``/proc/self/clear_refs`` after a ``malloc_trim``)
over its RSS before the step; on a GPU the rise of JAX's ``peak_bytes_in_use`` over its
``bytes_in_use`` / of ``torch.cuda.max_memory_allocated`` over ``memory_allocated``. Measured
on the second warm-up step (the first compiles). ``--profile`` times ours' parts apart
(`bench_lm_profile.py`) and PyTorch eager's ops (`torch.profiler`).
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
import numpy as np
import step_report

from jackpot_jax import core, kernels, models, utils
from jackpot_jax import method as jm
from jackpot_jax.pipeline import config as config_lib
from jackpot_jax.pipeline.lm import next_token_loss

# SmolLM2-135M's config.json in LlamaLM's field names (HuggingFaceTB/SmolLM2-135M).
SMOLLM2 = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    rope_theta=100000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
    max_position_embeddings=8192,
)
# Two blocks of tiny widths (tests, the dry run): the same code paths.
TINY = dict(
    SMOLLM2,
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)
PATTERN = jm.NMPattern(2, 4)
VARIANTS = ("eager", "compile")
MIN_TIMED_STEPS = 20


class LMSetup(typing.NamedTuple):
    """One network and one batch: what every side computes on."""

    options: dict
    module: typing.Any
    variables: dict
    search: core.InitialSearch  # budget, scores (``state.params``), masks, state
    opt_cfg: typing.Any  # the search optimiser's settings (AdamW)
    inputs: np.ndarray  # (batch, seq_len) int32 token ids
    labels: np.ndarray  # (batch, seq_len): the next tokens


def search_optimizer_config():
    """The SmolLM2 config's search optimiser (configs/lm_smollm2_shakespeare.py): AdamW, lr
    2e-3, no weight decay, cosine per step."""
    cfg = config_lib.base_config().search
    cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.schedule = "adamw", 2e-3, 0.0, "cosine_step"
    return cfg


def lm_setup(options: dict, batch: int, seq_len: int, seed: int = 0) -> LMSetup:
    """Our Llama of ``options`` with random weights, its 2:4 search start (`core.init_search`:
    `jm.nm_budget` on every block kernel, magnitude scores as two levels) and one batch of
    random token windows (inputs and next-token labels)."""
    module = models.get_model("llama", **options)
    variables = jax.jit(models.init_variables, static_argnums=(0, 2))(
        module, jax.random.key(seed), (1, 8)
    )
    opt_cfg = search_optimizer_config()
    search = core.init_search(
        variables["params"],
        apply_fn=module.apply,
        tx=core.make_optimizer(opt_cfg, 1, 1000)[0],
        pattern=PATTERN,
        init="magnitude",
        seed=seed,
    )
    rng = np.random.default_rng(seed)
    windows = rng.integers(0, options["vocab_size"], (batch, seq_len + 1)).astype(np.int32)
    return LMSetup(options, module, variables, search, opt_cfg, windows[:, :-1], windows[:, 1:])


def tree_bytes(tree) -> int:
    return int(sum(np.asarray(x).nbytes for x in jax.tree.leaves(tree)))


# ---------------------------------------------------------------------------------------------
# jackpot_jax's side
# ---------------------------------------------------------------------------------------------


def jax_runner(setup: LMSetup, dtype: str):
    """One search step of ours per call: returns (ms, loss); ``state_bytes()`` its state."""
    tx = core.make_optimizer(setup.opt_cfg, 1, 1000)[0]
    options = kernels.ComputeOptions(compute_dtype=dtype)
    step_fn = core.make_search_step(
        setup.module.apply, tx, setup.search.budget, loss_fn=next_token_loss, options=options
    )
    mesh = core.make_mesh(1)
    box = {"state": core.replicate(mesh, utils.as_numpy(setup.search.state))}
    x, y = core.shard_batch(mesh, (setup.inputs, setup.labels))

    def run():
        t0 = time.perf_counter()
        box["state"], metrics = step_fn(box["state"], x, y)
        jax.block_until_ready((box["state"], metrics))
        return (time.perf_counter() - t0) * 1e3, float(metrics["loss"])

    run.state_bytes = lambda: tree_bytes(box["state"])  # frozen weights, scores, AdamW
    return run


def jax_loss_float32(setup: LMSetup) -> float:
    """Our step-0 loss in float32 (one forward pass with the search's masks)."""
    params = jm.apply_masks(setup.variables["params"], setup.search.masks)
    fn = jax.jit(lambda p, x, y: next_token_loss(setup.module.apply({"params": p}, x), y))
    return float(fn(params, setup.inputs, setup.labels))


def time_mask(setup: LMSetup, repeats: int) -> float:
    """Median ms of the jitted 2:4 masks of every block Linear (the step's mask, alone)."""
    budget, scores = setup.search.budget, setup.search.state.params
    fn = jax.jit(lambda s: jm.masks_from_scores(s, budget))
    return common.median_ms(lambda: fn(scores), repeats, 2, block=jax.block_until_ready)


# ---------------------------------------------------------------------------------------------
# PyTorch's side
# ---------------------------------------------------------------------------------------------


def torch_weights(setup: LMSetup):
    """(hf_config, state_dict, {module name: (out, in) scores}) of our network for
    `reference.lm_network`: weights through `interop.hf_lm.lm_to_hf`, scores transposed."""
    import reference

    from jackpot_jax.interop import hf_lm

    hf_config, state_dict = hf_lm.lm_to_hf("llama", setup.options, utils.as_numpy(setup.variables))
    scores = {
        reference.lm_module_name(p): np.asarray(s).T
        for p, s in jm.flatten_paths(setup.search.state.params).items()
    }
    return hf_config, state_dict, scores


def torch_runner(setup: LMSetup, weights, variant: str, dtype: str, device: str):
    """`reference.make_lm_step` of variant ``variant`` on our weights, scores and batch."""
    import reference
    import torch

    net = reference.lm_network(*weights, PATTERN.n, PATTERN.m, device=device)
    cfg = setup.opt_cfg
    adamw = dict(lr=cfg.lr, betas=(cfg.get("b1", 0.9), cfg.get("b2", 0.999)), eps=1e-8)
    x = torch.from_numpy(setup.inputs.astype(np.int64)).to(device)
    y = torch.from_numpy(setup.labels.astype(np.int64)).to(device)
    return reference.make_lm_step(
        net,
        x,
        y,
        adamw=dict(adamw, weight_decay=cfg.weight_decay),
        device=device,
        compile=variant == "compile",
        bfloat16=dtype == "bfloat16",
    )


# ---------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------


def step_extra_bytes(run, side: str, gpu: bool) -> tuple[int | None, str]:
    """(bytes one call of ``run`` adds above the memory resident before it, how measured)."""
    if not gpu:
        common.release_free_memory()
        if not common.reset_peak_rss():
            run()
            return None, "VmHWM reset refused"
        before = common.rss_bytes("VmRSS")
        run()
        return common.rss_bytes("VmHWM") - before, "peak RSS rise"
    if side == "ours":
        dev = jax.devices()[0]
        before = dev.memory_stats()["bytes_in_use"]
        run()
        return dev.memory_stats()["peak_bytes_in_use"] - before, "jax peak_bytes_in_use rise"
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    run()
    return torch.cuda.max_memory_allocated() - before, "torch max_memory_allocated rise"


def with_memory(build, side: str, gpu: bool, memory: dict):
    """``build`` whose run measures memory (`step_extra_bytes`) on its second call."""

    def wrapped_build():
        run = build()
        calls = {"n": 0}

        def measured():
            calls["n"] += 1
            if calls["n"] != 2:
                return run()
            out = {}
            extra, how = step_extra_bytes(lambda: out.setdefault("r", run()), side, gpu)
            state = run.state_bytes()
            memory[side] = {"state_mib": state / 2**20, "how": how}
            if extra is not None:
                memory[side].update(
                    step_extra_mib=extra / 2**20, peak_mib=(state + max(extra, 0)) / 2**20
                )
            return out["r"]

        for attr in ("check_loss0",):
            if hasattr(run, attr):
                setattr(measured, attr, getattr(run, attr))
        return measured

    return wrapped_build


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def bench(args) -> tuple[list, list, LMSetup]:
    """(rows, failures, setup): one row per PyTorch variant (one without torch)."""
    gpu = jax.default_backend() == "gpu"
    options = dict(TINY if args.tiny else SMOLLM2)
    if args.layers:
        options["num_hidden_layers"] = args.layers
    setup = lm_setup(options, args.batch, args.seq_len)
    memory: dict = {}
    builders = {"ours": with_memory(lambda: jax_runner(setup, args.dtype), "ours", gpu, memory)}
    if args.variants:
        try:
            weights = torch_weights(setup)
        except Exception as e:  # pylint: disable=broad-except  # every variant reports it
            weights = e
        device = "cuda" if gpu else "cpu"

        def torch_build(v):
            if isinstance(weights, Exception):
                raise weights
            return torch_runner(setup, weights, v, args.dtype, device)

        for v in args.variants:
            builders[v] = with_memory(lambda v=v: torch_build(v), v, gpu, memory)
    res = common.time_sides(builders, args.steps, args.warmup, args.rounds)
    ours = res["ours"]
    if "error" in ours:
        raise SystemExit(f"jackpot_jax's step failed: {ours['error']}")
    mask_ms = time_mask(setup, args.steps * args.rounds)
    if args.dtype != "float32" and args.variants:
        ours["loss0_float32"] = jax_loss_float32(setup)
    tokens = args.batch * args.seq_len
    name = f"smollm2_135m_shape{'' if not (args.tiny or args.layers) else '_small'}"
    base = {
        "model": name,
        "layers": options["num_hidden_layers"],
        "batch": args.batch,
        "seq_len": args.seq_len,
        "tokens": tokens,
        "device": common.device_name(),
        "mode": "search",
        "dtype": args.dtype,
        "pattern": str(PATTERN),
        "mask_ms": mask_ms,
        "jax_tokens_per_s": tokens / ours["ms"] * 1e3,
        "jax_memory": memory.get("ours"),
        "jax_loss0_float32": ours.get("loss0_float32"),
    }
    base.update({f"jax_{k}": ours[v] for k, v in step_report.RESULT_KEYS.items()})
    print(f"    ours: median {common.fmt_ms(ours)} ms, min {ours['min']:.1f} ms", flush=True)
    rows, failures = [], []
    for v in args.variants or [None]:
        row = dict(base, torch_variant=v, torch_ms=None, torch_ms_min=None)
        if v in res:
            failure = step_report.check_variant(row, res[v], ours, args.dtype)
            if failure:
                failures.append(f"{name} {v}: {failure}")
            if row.get("torch_ms"):
                row["torch_tokens_per_s"] = tokens / row["torch_ms"] * 1e3
            row["torch_memory"] = memory.get(v)
        rows.append(row)
    return rows, failures, setup


def print_table(rows) -> None:
    """Tokens/s, ms and memory per side, and torch / ours."""
    r0 = rows[0]
    print(
        f"\n{r0['model']} ({r0['layers']} blocks), batch {r0['batch']} x {r0['seq_len']} tokens, "
        f"{r0['dtype']}, {r0['pattern']} on every block Linear; mask {r0['mask_ms']:.1f} ms "
        f"({r0['mask_ms'] / r0['jax_ms']:.1%} of ours' step)"
    )
    print(
        "| side | ms per step, median [IQR] | tokens/s | peak MiB (state + step) | torch / ours |"
    )
    print("|---|---:|---:|---:|---:|")

    def mem(m):
        if not m or "peak_mib" not in m:
            return "-"
        return f"{m['peak_mib']:,.0f} ({m['state_mib']:,.0f} + {m['step_extra_mib']:,.0f})"

    ours = {"ms": r0["jax_ms"], "q1": r0["jax_ms_q1"], "q3": r0["jax_ms_q3"]}
    print(
        f"| ours | {common.fmt_ms(ours)} | {r0['jax_tokens_per_s']:,.0f} | "
        f"{mem(r0['jax_memory'])} | |"
    )
    for r in rows:
        if r["torch_variant"] is None:
            continue
        if r.get("torch_error") or not r.get("torch_ms"):
            print(f"| torch {r['torch_variant']} | failed: {r.get('torch_error', '')} | | | |")
            continue
        t = {"ms": r["torch_ms"], "q1": r["torch_ms_q1"], "q3": r["torch_ms_q3"]}
        flag = "" if r["loss_check"] == "ok" else " (LOSS MISMATCH)"
        print(
            f"| torch {r['torch_variant']} | {common.fmt_ms(t)}{flag} | "
            f"{r['torch_tokens_per_s']:,.0f} | {mem(r['torch_memory'])} | "
            f"{r['torch_ms'] / r['jax_ms']:.2f}x |"
        )


def profile_path(json_path: str) -> str:
    """Where ``--profile`` writes its JSON beside ``--json FILE``: ``FILE`` less ``.json``
    plus ``_profile.json``."""
    stem = json_path[: -len(".json")] if json_path.endswith(".json") else json_path
    return stem + "_profile.json"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=2, help="token windows per step (2)")
    ap.add_argument("--seq-len", type=int, default=128, help="tokens per window (128)")
    ap.add_argument("--layers", type=int, help="blocks (default SmolLM2's 30)")
    ap.add_argument("--tiny", action="store_true", help="2 blocks of tiny widths (a smoke run)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--steps", type=int, default=2, help="timed steps per side per round")
    ap.add_argument("--rounds", type=int, help=f"rounds (default: {MIN_TIMED_STEPS} steps)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps (>= 2: memory)")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default torch's)")
    ap.add_argument("--no-torch", action="store_true", help="time ours only")
    ap.add_argument(
        "--torch-variants", default=",".join(VARIANTS), help="comma-separated of eager,compile"
    )
    ap.add_argument("--profile", action="store_true", help="time ours' parts and torch's ops")
    ap.add_argument(
        "--json", help="write the rows to this JSON file (the profile beside it: *_profile.json)"
    )
    args = ap.parse_args(argv)
    if args.rounds is None:
        args.rounds = -(-MIN_TIMED_STEPS // max(args.steps, 1))
    if args.steps < 1 or args.rounds < 1 or args.warmup < 2:
        raise SystemExit(
            f"--steps {args.steps}, --rounds {args.rounds}, --warmup {args.warmup}: steps and "
            "rounds must be at least 1, warmup at least 2 (step 0's loss, then memory)"
        )
    args.variants = [] if args.no_torch else [v for v in args.torch_variants.split(",") if v]
    bad = sorted(set(args.variants) - set(VARIANTS))
    if bad:
        raise SystemExit(f"--torch-variants: {bad} unknown; valid: {','.join(VARIANTS)}")
    if args.variants:
        try:
            import reference  # noqa: F401  (torch and transformers, before any work)
            import transformers  # noqa: F401
        except ImportError as e:
            raise SystemExit(
                f"PyTorch or transformers is not importable ({e}); pass --no-torch"
            ) from None
    return args


def main(argv=None):
    args = parse_args(argv)
    device = common.device_name()
    torch_info = ""
    if args.variants:
        import torch
        import transformers

        if args.threads:
            torch.set_num_threads(args.threads)
        torch_info = (
            f"torch {torch.__version__} ({torch.get_num_threads()} threads; "
            f"{common.inductor_cache()}), transformers {transformers.__version__}, "
        )
    print(
        f"versions: {device}; JAX {jax.__version__} ({jax.default_backend()}), {torch_info}"
        f"Python {platform.python_version()}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; "
        f"thread environment (set by nobody here): {common.thread_env()}"
    )
    print(
        f"{args.rounds} rounds x {args.steps} steps per side (sides in turn, order rotating) "
        f"after {args.warmup} warm-up steps; one network (random weights), one batch of "
        f"{args.batch} x {args.seq_len} random tokens; {PATTERN} masks on every block Linear; "
        f"torch variants: {','.join(args.variants) or 'none'}",
        flush=True,
    )
    rows, failures, setup = bench(args)
    print_table(rows)
    out = {"rows": rows}
    if args.profile:
        import bench_lm_profile

        out["profile"] = bench_lm_profile.profile(setup, args, rows)
    if args.json:  # the rows as bench_step writes them (a list: bench/step/<stem> tables)
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1, default=utils.json_default)
        if args.profile:
            with open(profile_path(args.json), "w") as f:
                json.dump(out["profile"], f, indent=1, default=utils.json_default)
    if failures:
        print("FAILED rows (step-0 losses disagree):\n  " + "\n  ".join(failures))
        raise SystemExit(1)
    return out


if __name__ == "__main__":
    common.start("bench_lm_step")
    main()
