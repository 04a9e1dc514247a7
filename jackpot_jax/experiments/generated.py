"""Every generated block's content, by name: what `tools/check_results.py` regenerates.

Block names and where their content comes from:

- `<folder>/<table>` for a results folder `docs/results/fashion_mnist/<folder>/`: its
  results.json through its report module's `generated_tables(res, folder)` (study folders
  `full`, `quick`, `nm`: `study_report`; `efficiency`: `sweep_report`; `vit`: `vit_report`,
  when it defines `generated_tables`); `shakespeare/<table>` from
  `docs/results/shakespeare/` (the LM study: `lm_report`).
- `readme/lenet`, `readme/vit`: the README's result tables, from `full/` and `vit/`.
- `readme/speed`: the README's speed table, from every bench_step JSON in
  benchmarks/results/ with PyTorch variants (`speed_runs`): per configuration the median over
  the runs with its range; "ours faster" only where every run agrees.
- `bench/step/<stem>`: benchmarks/README.md's table of one such run, from
  benchmarks/results/<stem>.json.
"""

from __future__ import annotations

import glob
import importlib
import json
import os
import statistics

from jackpot_jax.errors import InputError
from jackpot_jax.experiments.stats import pct
from jackpot_jax.experiments.tables import render_table

RESULTS = os.path.join("docs", "results", "fashion_mnist")
REPORTS = {
    "full": "study_report",
    "quick": "study_report",
    "nm": "study_report",
    "efficiency": "sweep_report",
    "vit": "vit_report",
    "shakespeare": "lm_report",
}
# Results folders outside docs/results/fashion_mnist/ (another dataset's).
FOLDERS = {"shakespeare": os.path.join("docs", "results", "shakespeare")}
BENCH = os.path.join("benchmarks", "results")
SPEED_MODELS = (("lenet5", "LeNet-5"), ("resnet32x2", "ResNet-32x2"))


def load_results(root: str, folder: str) -> dict:
    path = os.path.join(root, FOLDERS.get(folder, os.path.join(RESULTS, folder)), "results.json")
    with open(path) as f:
        return json.load(f)


def folder_tables(root: str, folder: str) -> dict[str, str]:
    """The generated blocks of one results folder (empty when its report module has none)."""
    if folder not in REPORTS:
        raise InputError(f"results folder {folder!r}: known folders are {sorted(REPORTS)}")
    mod = importlib.import_module(f"jackpot_jax.experiments.{REPORTS[folder]}")
    fn = getattr(mod, "generated_tables", None)
    return {} if fn is None else fn(load_results(root, folder), folder)


def _row(rows, **kw):
    hits = [r for r in rows if all(r.get(k) == v for k, v in kw.items())]
    if len(hits) != 1:
        raise InputError(f"{len(hits)} rows match {kw}; the README's table wants exactly one")
    return hits[0]


def readme_lenet(root: str) -> str:
    """The README's LeNet table: every 90% row of `full/`'s Table 1 at 0 or 10 epochs of
    weight training plus the 30-epoch jackpot (means over its 3 seeds, no per-seed values)."""
    res = load_results(root, "full")
    t1 = res["table1"]
    s, ln = res["settings"]["short_epochs"], res["settings"]["long_epochs"]
    cols = [
        ("dense", dict(method="dense")),
        ("magnitude mask alone", dict(method="magnitude")),
        (f"magnitude + {s} epochs of fine-tuning", dict(method="magnitude+finetune")),
        (f"jackpot, {s} search epochs", dict(method="jackpot", epochs=s)),
        (f"jackpot, {ln} search epochs", dict(method="jackpot", epochs=ln)),
    ]
    names = {"lenet5": "LeNet-5", "lenet300_100": "LeNet-300-100"}

    def cell(kw):
        return lambda net: pct(_row(t1, network=net, sparsity=0.9, **kw)["test_acc_mean"])

    return render_table(
        res["settings"]["networks"],
        [("network", lambda n: names.get(n, n))] + [(h, cell(kw)) for h, kw in cols],
    )


def readme_vit(root: str) -> str:
    """The README's ViT table: per level the magnitude mask alone, magnitude + weight tuning
    and the jackpot (means over seeds), from `vit/`."""
    rows = load_results(root, "vit")["rows"]
    levels = [lv for lv in dict.fromkeys(r["level"] for r in rows) if " " not in lv]

    def cell(method):
        def f(lv):
            hit = [r for r in rows if r["level"] == lv and r["method"] == method]
            return pct(hit[0]["test_acc_mean"], hit[0].get("test_acc_std")) if hit else "n/a"

        return f

    def label(lv):
        return lv if ":" in lv else f"{float(lv):.0%}"

    return render_table(
        levels,
        [
            ("sparsity", label),
            ("dense", cell("dense")),
            ("magnitude mask alone", cell("magnitude")),
            ("magnitude + weight tuning", cell("magnitude+weight_tuning")),
            ("jackpot (AdamW on the scores)", cell("jackpot")),
        ],
    )


def speed_runs(root: str) -> dict[str, list[dict]]:
    """{JSON stem: rows} of every committed bench_step JSON whose rows carry PyTorch
    variants (the current bench_step), in file-name order."""
    out = {}
    for path in sorted(glob.glob(os.path.join(root, BENCH, "bench_step_*.json"))):
        with open(path) as f:
            rows = json.load(f)
        if isinstance(rows, list) and rows and all("torch_variant" in r for r in rows):
            out[os.path.basename(path)[: -len(".json")]] = rows
    return out


def run_ratios(rows: list[dict], model: str, mode: str) -> dict | None:
    """One run's figures for a configuration: our median ms, eager / ours and best torch /
    ours (the fastest float32 variant that ran), None when the run lacks it."""
    rs = [r for r in rows if r["model"] == model and r["mode"] == mode and r.get("torch_ms")]
    if not rs:
        return None
    ours = rs[0]["jax_ms"]
    eager = [r["torch_ms"] for r in rs if r["torch_variant"] == "eager"]
    good = [r for r in rs if r.get("torch_dtype", "float32") == r["dtype"]]
    best = min(good, key=lambda r: r["torch_ms"])
    return {
        "ours": ours,
        "eager": eager[0] / ours if eager else None,
        "best": best["torch_ms"] / ours,
        "best_variant": best["torch_variant"],
    }


def _span(values, fmt) -> str:
    med = statistics.median(values)
    return f"{fmt(med)} [{fmt(min(values))}-{fmt(max(values))}]"


def readme_speed(root: str) -> str:
    """Per configuration (model, mode; batch 128, float32, 2 CPU cores): the median over all
    committed runs of our step time and of the two ratios, with their ranges, and whether
    every run agrees that ours is faster."""
    runs = speed_runs(root)
    lines = []
    for model, name in SPEED_MODELS:
        for mode in ("search", "dense"):
            per = [x for x in (run_ratios(r, model, mode) for r in runs.values()) if x]
            if not per:
                continue
            eager = [x["eager"] for x in per if x["eager"] is not None]
            best = [x["best"] for x in per]
            variants = sorted({x["best_variant"] for x in per})

            def verdict(v):
                if all(x > 1 for x in v):
                    return "ours faster in every run"
                if all(x < 1 for x in v):
                    return "PyTorch faster in every run"
                return f"runs disagree ({sum(x > 1 for x in v)} of {len(v)} ours faster)"

            lines.append(
                {
                    "step": f"{name} {mode}",
                    "runs": len(per),
                    "ours": _span([x["ours"] for x in per], lambda v: f"{v:,.1f}"),
                    "eager": _span(eager, lambda v: f"{v:.2f}x") + "; " + verdict(eager),
                    "best": _span(best, lambda v: f"{v:.2f}x")
                    + f" ({', '.join(variants)}); "
                    + verdict(best),
                }
            )
    return render_table(
        lines,
        [
            ("step", lambda r: r["step"]),
            ("runs", lambda r: r["runs"], "r"),
            ("ours (ms), median [range]", lambda r: r["ours"], "r"),
            ("authors' code as written (eager) / ours", lambda r: r["eager"]),
            ("PyTorch at its best / ours", lambda r: r["best"]),
        ],
    )


def bench_step_table(root: str, stem: str) -> str:
    """benchmarks/README.md's table of one bench_step run with PyTorch variants: median
    [interquartile range] ms per side, eager / ours and best torch / ours."""
    path = os.path.join(root, BENCH, stem + ".json")
    if not os.path.exists(path):
        raise InputError(f"bench/step/{stem}: no {path}")
    with open(path) as f:
        rows = json.load(f)
    variants = list(dict.fromkeys(r["torch_variant"] for r in rows))
    configs = list(dict.fromkeys((r["model"], r["mode"]) for r in rows))

    def ms(med, q1, q3):
        return f"{med:.1f} [{q1:.1f}-{q3:.1f}]"  # as bench_step prints it (common.fmt_ms)

    def pick(cfg, v):
        return next(r for r in rows if (r["model"], r["mode"]) == cfg and r["torch_variant"] == v)

    def ours(cfg):
        r = pick(cfg, variants[0])
        return ms(r["jax_ms"], r["jax_ms_q1"], r["jax_ms_q3"])

    def side(v):
        def f(cfg):
            r = pick(cfg, v)
            if r.get("torch_error") or r.get("torch_ms") is None:
                return "failed"
            return ms(r["torch_ms"], r["torch_ms_q1"], r["torch_ms_q3"])

        return f

    def ratio(kind):
        def f(cfg):
            x = run_ratios(rows, *cfg)
            if kind == "eager":
                return None if x["eager"] is None else f"{x['eager']:.2f}x"
            return f"{x['best']:.2f}x ({x['best_variant']})"

        return f

    cols = [("model", lambda c: c[0]), ("mode", lambda c: c[1]), ("ours", ours, "r")]
    cols += [(v, side(v), "r") for v in variants]
    cols += [("eager / ours", ratio("eager"), "r"), ("best torch / ours", ratio("best"), "r")]
    return render_table(configs, cols)


def generate(root: str, name: str, cache: dict | None = None) -> str:
    """The content of generated block `name` (see the module docstring); InputError for a
    name no generator knows."""
    cache = {} if cache is None else cache
    head, _, rest = name.partition("/")
    if head == "readme":
        fns = {"lenet": readme_lenet, "vit": readme_vit, "speed": readme_speed}
        if rest not in fns:
            raise InputError(f"block {name!r}: README blocks are {sorted(fns)}")
        return fns[rest](root)
    if head == "bench" and rest.startswith("step/"):
        return bench_step_table(root, rest[len("step/") :])
    if head in REPORTS:
        if head not in cache:
            cache[head] = folder_tables(root, head)
        if name not in cache[head]:
            raise InputError(f"block {name!r}: the {head} report generates {sorted(cache[head])}")
        return cache[head][name]
    raise InputError(
        f"block {name!r}: no generator; names start with readme/, bench/step/ or a results "
        f"folder {sorted(REPORTS)}"
    )
