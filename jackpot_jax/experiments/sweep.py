"""Search efficiency: `python -m jackpot_jax.sweep --config configs/sweep_search_fashion_mnist.py --workdir DIR`.

Stage 1 selects, per network, a jackpot recipe (batch size, lr, pruned-score level, lr
schedule, mask update) and a weight-tuning recipe (magnitude mask + fine-tuning: batch size,
lr) by coordinate descent on one seed's final-epoch VALIDATION accuracy at one epoch budget.
Stage 2 runs the official jackpot recipe, the selected one and the selected weight tuning on
fresh seeds at several budgets and reports final-epoch TEST accuracy.

Every run is a piece of `jackpot_jax.experiments.study.Study` (one folder under DIR/<network>/seed<k>/,
read back when its summary exists; the same pre-trained checkpoint per seed), so rerunning
the command resumes, and `--config.workers=N` shares the pieces among N processes with the
study's claim machinery. Writes DIR/report.md, DIR/results.json and DIR/accuracy_vs_epochs.png.
"""

from __future__ import annotations

import os
import platform
import sys
import time

import jax
import ml_collections
import numpy as np

from jackpot_jax import utils
from jackpot_jax.experiments.study import (
    Study,
    _git_commit,
    _mean_std,
    _record_invocation,
    apply_quick,
    run_workers,
)

METHODS = ("jackpot_official", "jackpot_selected", "weight_tuning_selected")


# ---------------------------------------------------------------------------------------------
# Recipes as pieces
# ---------------------------------------------------------------------------------------------


def recipe_name(kind: str, recipe: dict, epochs: int) -> str:
    """The piece folder of a recipe: every setting in the name, so equal recipes share runs."""
    if kind == "jackpot":
        return (
            f"jackpot_b{recipe['batch_size']}_lr{recipe['lr']:g}_s{recipe['score_pruned']:g}"
            f"_{recipe['schedule']}_{recipe['mask_update']}_e{epochs}"
        )
    return f"wt_b{recipe['batch_size']}_lr{recipe['lr']:g}_e{epochs}"


def recipe_overrides(kind: str, recipe: dict, epochs: int) -> tuple[str, dict]:
    """(mode, dotted config overrides) of a jackpot search or a weight-tuning run."""
    if kind == "jackpot":
        over = {
            "batch_size": recipe["batch_size"],
            "search.epochs": epochs,
            "search.lr": recipe["lr"],
            "search.score_pruned": recipe["score_pruned"],
            "search.schedule": recipe["schedule"],
            "search.mask_update": recipe["mask_update"],
        }
        if recipe["mask_update"] == "swap":
            over["search.use_abs"] = False  # the 2023 code ranks raw scores
        return "search", over
    if kind == "weight_tuning":
        return "finetune", {
            "batch_size": recipe["batch_size"],
            "finetune.epochs": epochs,
            "finetune.lr": recipe["lr"],
            "finetune.mask": "magnitude",
        }
    raise ValueError(f"kind={kind!r}; expected 'jackpot' or 'weight_tuning'")


def run_recipe(
    st: Study, kind: str, network: str, seed: int, recipe: dict, epochs: int, sparsity: float
) -> dict | None:
    """The summary of one recipe's run (run now, or read back), or None while it is only
    planned (a `Study` with `plan=True`: no result yet)."""
    dense = st.pretrained(network, seed)
    mode, over = recipe_overrides(kind, recipe, epochs)
    r = st.piece(
        network,
        seed,
        recipe_name(kind, recipe, epochs),
        mode,
        needs=[dense["dir"]],
        sparsity=sparsity,
        pretrained=os.path.join(dense["dir"], "model"),
        **over,
    )
    return r if os.path.exists(os.path.join(r["dir"], "summary.json")) else None


# ---------------------------------------------------------------------------------------------
# Selection
# ---------------------------------------------------------------------------------------------


def coordinate_search(evaluate, start: dict, levels: dict, factors, max_rounds: int):
    """Coordinate descent: for each factor in turn, every level with the other factors at the
    best point so far; the highest value wins (a tie keeps the current level). Rounds repeat
    until one changes nothing or `max_rounds` are done.

    `evaluate(point) -> float | None` (None: not known yet). Returns (best point, {point key:
    value} of every evaluated point, finished): `finished` is False when a value was missing,
    and the search stopped there."""
    for f in factors:
        if f not in levels or start.get(f) not in levels[f]:
            raise ValueError(
                f"factor {f!r}: the starting level {start.get(f)!r} is not "
                f"among its levels {levels.get(f)}"
            )
    best, seen = dict(start), {}

    def value(point):
        key = tuple(sorted(point.items()))
        if key not in seen:
            seen[key] = evaluate(point)
        return seen[key]

    for _ in range(max_rounds):
        changed = False
        for f in factors:
            points = [dict(best, **{f: v}) for v in levels[f]]
            values = [value(p) for p in points]
            if any(v is None for v in values):
                return best, seen, False
            top = max(values)
            if value(best) < top:
                best = points[values.index(top)]
                changed = True
        if not changed:
            break
    return best, seen, True


def _plain(cfg) -> dict:
    return cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else dict(cfg)


def design_for(c, network: str) -> dict:
    """The selection design of one network: starting points, levels and rounds, with
    `c.per_network[network]` (if any) overriding the sweep-wide ones."""
    d = {
        "jackpot_start": _plain(c.jackpot_start or c.official),
        "jackpot_levels": _plain(c.jackpot_levels),
        "wt_start": _plain(c.wt_start),
        "wt_levels": _plain(c.wt_levels),
        "max_rounds": c.max_rounds,
        "note": "",
        "final_seeds": tuple(c.final_seeds),
    }
    over = _plain(c.per_network.get(network) or {})
    unknown = sorted(set(over) - set(d))
    if unknown:
        raise ValueError(
            f"per_network.{network}: unknown keys {unknown}; expected some of {sorted(d)}"
        )
    for k, v in over.items():
        d[k] = dict(d[k], **_plain(v)) if isinstance(d[k], dict) else v
    d["final_seeds"] = tuple(d["final_seeds"])
    if c.select_seed in d["final_seeds"]:
        raise ValueError(
            f"{network}: final_seeds {d['final_seeds']} include the selection seed "
            f"{c.select_seed}; the final runs need fresh seeds"
        )
    for k in ("jackpot_levels", "wt_levels"):
        d[k] = {f: tuple(v) for f, v in d[k].items()}
    return d


def _experiments(st: Study, c) -> dict:
    res = {"sweep": [], "selected": {}, "rows": [], "complete": True, "designs": {}}
    for net in c.networks:
        design = design_for(c, net)
        res["designs"][net] = {
            k: (
                {f: list(v) for f, v in d.items()}
                if k.endswith("levels")
                else list(d)
                if k == "final_seeds"
                else d
            )
            for k, d in design.items()
        }
        seeds = design["final_seeds"]
        selected, finished = {}, True
        for kind, factors in (("jackpot", c.jackpot_factors), ("weight_tuning", c.wt_factors)):
            prefix = "jackpot" if kind == "jackpot" else "wt"

            def evaluate(point, kind=kind):
                r = run_recipe(st, kind, net, c.select_seed, point, c.select_epochs, c.sparsity)
                return None if r is None else r["final_val_accuracy"]

            best, seen, done = coordinate_search(
                evaluate,
                design[f"{prefix}_start"],
                design[f"{prefix}_levels"],
                tuple(factors),
                design["max_rounds"],
            )
            finished &= done
            selected[kind] = best
            for order, (key, val) in enumerate(seen.items()):
                res["sweep"].append(
                    {
                        "network": net,
                        "method": kind,
                        "order": order,
                        "recipe": dict(key),
                        "val_accuracy": val,
                        "selected": dict(key) == best and done,
                    }
                )
        dense_sel = st.pretrained(net, c.select_seed)
        res["selected"][net] = {
            "jackpot": selected["jackpot"],
            "weight_tuning": selected["weight_tuning"],
            "selection_finished": finished,
            "dense_val_accuracy": dense_sel.get("final_val_accuracy"),
        }
        if not finished:  # stage 2 waits for the selection (planning only)
            res["complete"] = False
            continue
        recipes = {
            "jackpot_official": ("jackpot", _plain(c.official)),
            "jackpot_selected": ("jackpot", selected["jackpot"]),
            "weight_tuning_selected": ("weight_tuning", selected["weight_tuning"]),
        }
        dense = [st.pretrained(net, s)["test_accuracy"] for s in seeds]
        m, sd, n = _mean_std(dense)
        res["rows"].append(
            {
                "network": net,
                "method": "dense",
                "epochs": c.pretrain_epochs,
                "test_acc_mean": m,
                "test_acc_std": sd,
                "seeds": n,
                "per_seed": dict(zip(map(str, seeds), dense)),
            }
        )
        rows = []
        for e in sorted(c.final_epochs, reverse=True):  # the target's budget first
            for method in METHODS:
                kind, recipe = recipes[method]
                runs = [run_recipe(st, kind, net, s, recipe, e, c.sparsity) for s in seeds]
                m, sd, n = _mean_std([r["test_accuracy"] for r in runs if r is not None])
                rows.append(
                    {
                        "network": net,
                        "method": method,
                        "epochs": e,
                        "test_acc_mean": m,
                        "test_acc_std": sd,
                        "seeds": n,
                        "recipe": recipe,
                        "per_seed": {
                            str(s): r["test_accuracy"] for s, r in zip(seeds, runs) if r is not None
                        },
                    }
                )
        res["rows"] += sorted(rows, key=lambda r: (METHODS.index(r["method"]), r["epochs"]))
    return res


def run_sweep(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs (or resumes) the sweep and writes the report; returns results.json's content."""
    t0 = time.time()
    commit = _git_commit()  # the code that runs: read now, not when it ends
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t0))
    if config.quick:
        config = apply_quick(config)
    c = config
    ran_by_workers = 0
    if c.get("workers", 1) > 1:
        # Coordinate descent decides its next points from finished runs: plan, run, re-plan.
        while True:
            planner = Study(c, workdir, plan=True)
            _experiments(planner, c)
            tasks = list(planner.plan.values())
            if not tasks:
                break
            ran_by_workers += run_workers(c, workdir, tasks, c.workers)
    st = Study(c, workdir)
    res = _experiments(st, c)
    st.ran += ran_by_workers
    res["settings"] = {
        "networks": list(c.networks),
        "sparsity": c.sparsity,
        "select_seed": c.select_seed,
        "select_epochs": c.select_epochs,
        "final_seeds": list(c.final_seeds),
        "final_epochs": list(c.final_epochs),
        "pretrain_epochs": c.pretrain_epochs,
        "official": _plain(c.official),
        "jackpot_factors": list(c.jackpot_factors),
        "wt_factors": list(c.wt_factors),
        "designs": res.pop("designs"),
        "quick": c.quick,
        "dataset": c.base.dataset,
        "train_examples": len(st.ds.train),
        "val_examples": len(st.ds.val),
        "test_examples": len(st.ds.test),
        "search_weight_decay": c.base.search.weight_decay,
        "finetune_weight_decay": c.base.finetune.weight_decay,
    }
    command = (
        "python -m jackpot_jax.sweep " + " ".join(sys.argv[1:])
        if sys.argv and sys.argv[0].endswith("sweep.py")
        else None
    )
    res["run"] = {
        "command": command,
        "commit": commit,
        "started": started,
        "cpu_count": os.cpu_count(),
        "machine": platform.platform(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
        "workers": c.get("workers", 1),
        "wall_seconds_this_invocation": time.time() - t0,
        "pieces_run_this_invocation": st.ran,
    }
    res["invocations"] = _record_invocation(st.workdir, res["run"])
    res["assessment"] = assess(res)
    utils.write_json(os.path.join(st.workdir, "results.json"), res)
    write_report(res, st.workdir)
    return res


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def _pct(m, s=None):
    if m is None:
        return "n/a"
    return f"{100 * m:.2f}" + (f" ± {100 * s:.2f}" if s is not None else "")


def _recipe_text(kind: str, r: dict) -> str:
    if kind == "jackpot":
        return (
            f"batch {r['batch_size']}, lr {r['lr']:g}, pruned scores {r['score_pruned']:g}, "
            f"{r['schedule']}, {r['mask_update']}"
        )
    return f"batch {r['batch_size']}, lr {r['lr']:g}"


def assess(res: dict) -> list[dict]:
    """Per network and budget: each method's mean test accuracy, the winner and its margin;
    and the issue's target at the largest budget (jackpot within 0.3 points of dense and at
    least as accurate as the selected weight tuning)."""
    out = []
    for net in res["settings"]["networks"]:
        rows = [r for r in res["rows"] if r["network"] == net]
        if not rows:
            continue
        dense = next(r for r in rows if r["method"] == "dense")["test_acc_mean"]
        budgets = sorted({r["epochs"] for r in rows if r["method"] != "dense"})
        per_budget = []
        for e in budgets:
            accs = {
                r["method"]: r["test_acc_mean"]
                for r in rows
                if r["epochs"] == e and r["method"] != "dense" and r["test_acc_mean"] is not None
            }
            order = sorted(accs, key=accs.get, reverse=True)
            per_budget.append(
                {
                    "epochs": e,
                    "accuracy": accs,
                    "winner": order[0],
                    "margin": 100 * (accs[order[0]] - accs[order[1]]) if len(order) > 1 else None,
                    "runner_up": order[1] if len(order) > 1 else None,
                }
            )
        last = per_budget[-1]
        js, wt = (
            last["accuracy"].get("jackpot_selected"),
            last["accuracy"].get("weight_tuning_selected"),
        )
        gap = 100 * (dense - js) if js is not None else None

        def paired(a, b, e):
            """Per-seed differences a - b (points): every seed's runs share its checkpoint."""
            ra = next((r for r in rows if r["method"] == a and r["epochs"] == e), None)
            rb = next(
                (r for r in rows if r["method"] == b and (b == "dense" or r["epochs"] == e)), None
            )
            if not ra or not rb or "per_seed" not in ra or "per_seed" not in rb:
                return None
            d = [
                100 * (ra["per_seed"][k] - rb["per_seed"][k])
                for k in ra["per_seed"]
                if k in rb["per_seed"]
            ]
            return (
                {"mean": float(np.mean(d)), "std": float(np.std(d)), "seeds": len(d)} if d else None
            )

        e = last["epochs"]
        out.append(
            {
                "network": net,
                "dense": dense,
                "budgets": per_budget,
                "paired_jackpot_minus_weight_tuning": paired(
                    "jackpot_selected", "weight_tuning_selected", e
                ),
                "paired_jackpot_minus_dense": paired("jackpot_selected", "dense", e),
                "target_epochs": last["epochs"],
                "gap_to_dense": gap,
                "jackpot_minus_weight_tuning": 100 * (js - wt) if None not in (js, wt) else None,
                "within_0.3_of_dense": gap is not None and gap <= 0.3,
                "at_least_weight_tuning": None not in (js, wt) and js >= wt,
            }
        )
    return out


def _paired_text(v: dict) -> str:
    parts = []
    for key, what in (
        ("paired_jackpot_minus_dense", "jackpot - dense"),
        ("paired_jackpot_minus_weight_tuning", "jackpot - weight tuning"),
    ):
        p = v.get(key)
        if p:
            parts.append(f"{what} {p['mean']:+.2f} ± {p['std']:.2f}")
        if p and p["seeds"] > 1:
            parts[-1] += f" (std over {p['seeds']} seeds)"
    return (
        (
            " Per-seed paired differences (each seed's runs share its dense checkpoint): "
            + "; ".join(parts)
            + "."
        )
        if parts
        else ""
    )


def write_report(res: dict, workdir: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    st = res["settings"]
    verdicts = res.get("assessment") or assess(res)
    names = {
        "jackpot_official": "official jackpot",
        "jackpot_selected": "selected jackpot",
        "weight_tuning_selected": "selected weight tuning",
        "dense": "dense",
    }
    lines = ["# Search efficiency on Fashion-MNIST: a recipe selected on validation", ""]
    if not res["complete"]:
        lines += ["**Incomplete: some pieces have not run yet; rerun the command.**", ""]
    lines += ["## Target", ""]
    for v in verdicts:
        if v["gap_to_dense"] is None:
            continue
        met = v["within_0.3_of_dense"] and v["at_least_weight_tuning"]
        lines.append(
            f"- **{v['network']}**: target {'met' if met else 'not met'}. After "
            f"{v['target_epochs']} epochs the selected jackpot is {v['gap_to_dense']:.2f} points "
            f"below dense ({_pct(v['dense'])}%; target <= 0.30; negative: above dense) and "
            f"{v['jackpot_minus_weight_tuning']:+.2f} points against the selected weight tuning "
            f"(target >= 0)." + _paired_text(v)
        )
    lines += [
        "",
        "## Which recipe wins at which budget (test accuracy, %, mean ± std over fresh seeds)",
        "",
    ]
    for net in st["networks"]:
        rows = [r for r in res["rows"] if r["network"] == net]
        if not rows:
            continue
        budgets = sorted({r["epochs"] for r in rows if r["method"] != "dense"})
        dense = next(r for r in rows if r["method"] == "dense")
        lines += [
            f"### {net} at {st['sparsity']:.0%} sparsity (dense: "
            f"{_pct(dense['test_acc_mean'], dense['test_acc_std'])}, "
            f"{dense['epochs']} pretraining epochs; seeds "
            f"{', '.join(dense.get('per_seed', {}))})",
            "",
            "| epochs | " + " | ".join(names[m] for m in METHODS) + " | winner (margin) |",
            "|---|" + "---|" * len(METHODS) + "---|",
        ]
        v = next(x for x in verdicts if x["network"] == net)
        for e, b in zip(budgets, v["budgets"]):
            cells = []
            for m in METHODS:
                r = next((r for r in rows if r["method"] == m and r["epochs"] == e), None)
                cells.append(_pct(r["test_acc_mean"], r["test_acc_std"]) if r else "n/a")
            margin = (
                f" (+{b['margin']:.2f} over {names[b['runner_up']]})"
                if b["margin"] is not None
                else ""
            )
            lines.append(f"| {e} | " + " | ".join(cells) + f" | {names[b['winner']]}{margin} |")
        lines.append("")
    lines += [
        "## Selected recipes (final-epoch validation accuracy, seed "
        f"{st['select_seed']}, {st['select_epochs']} epochs)",
        "",
    ]
    for net, sel in res["selected"].items():
        state = "" if sel["selection_finished"] else " (selection not finished)"
        if st["designs"][net]["max_rounds"] == 0:
            state = f" ({st['designs'][net]['note'] or 'not selected on this network'})"
        lines.append(
            f"- {net}{state}: jackpot — {_recipe_text('jackpot', sel['jackpot'])}; "
            f"weight tuning — {_recipe_text('weight_tuning', sel['weight_tuning'])}."
        )
    lines += ["", f"Official recipe: {_recipe_text('jackpot', st['official'])}.", ""]
    lines += ["## The sweep (validation accuracy, %, in the order the search asked for them)", ""]
    for net in st["networks"]:
        for kind, factors in (
            ("jackpot", st["jackpot_factors"]),
            ("weight_tuning", st["wt_factors"]),
        ):
            sweep = [r for r in res["sweep"] if r["network"] == net and r["method"] == kind]
            if not sweep:
                continue
            dval = res["selected"][net].get("dense_val_accuracy")
            lines += [
                f"### {net}, {kind.replace('_', ' ')} (the dense network: "
                f"{_pct(dval)} on the same validation split)",
                "",
                "| # | " + " | ".join(factors) + " | val. acc. |",
                "|---|" + "---|" * len(factors) + "---|",
            ]
            for r in sweep:
                mark = " **(selected)**" if r["selected"] else ""
                if kind == "jackpot" and r["recipe"] == st["official"]:
                    mark += " (official)"
                lines.append(
                    f"| {r['order'] + 1} | "
                    + " | ".join(
                        f"{r['recipe'][f]:g}"
                        if isinstance(r["recipe"][f], float)
                        else str(r["recipe"][f])
                        for f in factors
                    )
                    + f" | {_pct(r['val_accuracy'])}"
                    f"{mark} |"
                )
            best = res["selected"][net][kind]
            design = st["designs"][net]
            around = []
            for f in factors:
                cells = []
                for lvl in design["jackpot_levels" if kind == "jackpot" else "wt_levels"][f]:
                    p = dict(best, **{f: lvl})
                    hit = next((r for r in sweep if r["recipe"] == p), None)
                    cells.append(f"{lvl:g}" if isinstance(lvl, float) else str(lvl))
                    cells[-1] += f": {_pct(hit['val_accuracy']) if hit else 'not run'}"
                around.append(f"- {f}: " + ", ".join(cells))
            lines += ["", "One factor at a time around the selected point (validation, %):", ""]
            lines += around + [""]

    nets = [n for n in st["networks"] if any(r["network"] == n for r in res["rows"])]
    if nets:
        fig, axes = plt.subplots(1, len(nets), figsize=(5.2 * len(nets), 3.8), squeeze=False)
        for ax, net in zip(axes[0], nets):
            rows = [r for r in res["rows"] if r["network"] == net]
            dense = next(r for r in rows if r["method"] == "dense")
            ax.axhline(100 * dense["test_acc_mean"], color="k", ls="--", lw=1, label="dense")
            for m, marker in zip(METHODS, "osd"):
                pts = sorted(
                    (r["epochs"], r["test_acc_mean"], r["test_acc_std"])
                    for r in rows
                    if r["method"] == m and r["test_acc_mean"] is not None
                )
                if pts:
                    x, y, e = zip(*pts)
                    ax.errorbar(
                        x,
                        [100 * v for v in y],
                        yerr=[100 * v for v in e],
                        marker=marker,
                        capsize=3,
                        label=names[m],
                    )
            ax.set(
                title=f"{net}, {st['sparsity']:.0%} sparse",
                xlabel="training epochs",
                ylabel="test accuracy (%)",
                xscale="log",
            )
            ax.set_xticks(st["final_epochs"], [str(e) for e in st["final_epochs"]])
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(workdir, "accuracy_vs_epochs.png"), dpi=110)
        plt.close(fig)
        lines += ["## Plot", "", "![accuracy_vs_epochs](accuracy_vs_epochs.png)", ""]

    quick = " (quick variant)" if st["quick"] else ""
    lines += [
        "## Setup",
        "",
        f"{st['dataset']}{quick}: {st['train_examples']} training, {st['val_examples']} "
        f"validation (held out of the training set), {st['test_examples']} test images; "
        f"{st['sparsity']:.0%} of the prunable weights (every kernel but the classifier's) "
        f"removed, per-layer counts fixed by one global magnitude threshold. Every run of a "
        f"seed starts from that seed's dense checkpoint ({st['pretrain_epochs']} epochs). "
        f"Jackpot: scores 1.0 on the magnitude mask and the pruned-score level elsewhere, "
        f"SGD momentum 0.9, weight decay {st['search_weight_decay']:g} on the scores, "
        f"cosine to 0 (stepped per epoch or per step); 'swap' is the authors' 2023 rule (persistent mask, balanced swaps "
        f"after every step, raw scores, every eligible pair). Weight tuning: the magnitude "
        f"mask fixed, weights and biases trained by SGD momentum 0.9, weight decay "
        f"{st['finetune_weight_decay']:g}, cosine per epoch.",
        "",
        f"Selection: coordinate descent, factors in the order {st['jackpot_factors']} "
        f"(jackpot) and {st['wt_factors']} (weight tuning): every level of one factor "
        f"with the others at the best point so far (a tie keeps the current level), "
        f"rounds until one changes nothing or the round limit; only the final-epoch "
        f"validation accuracy of seed {st['select_seed']} after {st['select_epochs']} "
        f"epochs is read. The test set is read only for the final table, on fresh seeds "
        f"(below), none of which took part in the selection. Each budget "
        f"is its own run (the cosine ends at 0 at that budget). Per network:",
        "",
    ]
    for net, d in st["designs"].items():
        if d["max_rounds"] == 0:
            lines.append(
                f"- {net}: {d['note'] or 'no sweep'}: jackpot "
                f"{_recipe_text('jackpot', d['jackpot_start'])}; weight tuning "
                f"{_recipe_text('weight_tuning', d['wt_start'])}; final seeds "
                f"{d['final_seeds']}."
            )
            continue
        lines.append(
            f"- {net}: jackpot from {_recipe_text('jackpot', d['jackpot_start'])}, levels "
            + "; ".join(
                f"{f} {', '.join(f'{v:g}' if isinstance(v, float) else str(v) for v in vs)}"
                for f in st["jackpot_factors"]
                for vs in [d["jackpot_levels"][f]]
            )
            + f"; weight tuning from {_recipe_text('weight_tuning', d['wt_start'])}, levels "
            + "; ".join(
                f"{f} {', '.join(f'{v:g}' for v in vs)}"
                for f in st["wt_factors"]
                for vs in [d["wt_levels"][f]]
            )
            + f"; at most {d['max_rounds']} round(s)"
            + (f" ({d['note']})" if d["note"] else "")
            + f"; final seeds {d['final_seeds']}."
        )
    lines.append("")
    lines += ["## Provenance", ""]
    history = res.get("invocations") or [res["run"]]
    invocations = [
        r for r in history[:-1] if r["pieces_run_this_invocation"] or r.get("note")
    ] + history[-1:]
    for i, r in enumerate(invocations, 1):
        lines += [
            f"Invocation {i}:",
            "",
            f"- command: `{r['command']}`",
            f"- commit: `{r['commit']}`"
            + (f", started {r['started']}" if r.get("started") else ""),
            f"- machine: {r['cpu_count']} CPU cores, {r['machine']}, JAX {r['jax']} "
            f"({r['backend']}: {r.get('device')}), {r.get('workers', 1)} worker "
            "process(es)",
            f"- wall time: {r['wall_seconds_this_invocation']:.0f} s "
            f"({r['pieces_run_this_invocation']} pieces run, the rest read back)",
        ]
        lines += ([f"- note: {r['note']}"] if r.get("note") else []) + [""]
    path = os.path.join(workdir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


def main(argv):
    from absl import flags, logging

    from jackpot_jax import xla_flags

    logging.set_verbosity(logging.WARNING)
    utils.log(xla_flags.apply_recommended())  # before JAX starts its backend
    if len(argv) > 1:
        raise SystemExit(f"unexpected arguments: {argv[1:]}")
    res = run_sweep(flags.FLAGS.config, flags.FLAGS.workdir)
    for net, sel in res["selected"].items():
        print(f"{net}: jackpot {sel['jackpot']}, weight tuning {sel['weight_tuning']}")
    print(f"report: {os.path.join(os.path.abspath(flags.FLAGS.workdir), 'report.md')}")


def cli() -> None:
    """The command line (flags, then `main`)."""
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Path to configs/sweep_*.py", lock_config=False)
    flags.DEFINE_string("workdir", None, "Where the pieces, report.md and results.json go.")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
