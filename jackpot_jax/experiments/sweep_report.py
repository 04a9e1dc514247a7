"""The sweep's verdicts (`assess`) and report (`write_report`: DIR/report.md and
DIR/accuracy_vs_epochs.png)."""

from __future__ import annotations

import os

from jackpot_jax.experiments import provenance
from jackpot_jax.experiments import verdicts as vd
from jackpot_jax.experiments.stats import STD_NOTE, difference_record, difference_text, pct
from jackpot_jax.experiments.tables import block, render_table

METHODS = ("jackpot_official", "jackpot_selected", "weight_tuning_selected")
NAMES = {
    "jackpot_official": "official jackpot",
    "jackpot_selected": "selected jackpot",
    "weight_tuning_selected": "selected weight tuning",
    "dense": "dense",
}


def _recipe_text(kind: str, r: dict) -> str:
    if kind == "jackpot":
        return (
            f"batch {r['batch_size']}, lr {r['lr']:g}, pruned scores {r['score_pruned']:g}, "
            f"{r['schedule']}, {r['mask_update']}"
        )
    return f"batch {r['batch_size']}, lr {r['lr']:g}"


def assess(res: dict) -> list[dict]:
    """Per network and budget: each method's mean test accuracy, the winner, its margin and
    the paired difference winner - runner-up; and the target at the largest budget (jackpot
    within 0.3 points of dense and at least as accurate as the selected weight tuning), with
    the paired differences jackpot - dense and jackpot - weight tuning. Every paired
    difference is appended to res['differences'] (with the rows it compares)."""
    out = []
    diffs = res.setdefault("differences", [])
    for net in res["settings"]["networks"]:
        rows = [r for r in res["rows"] if r["network"] == net]
        if not rows:
            continue
        dense_row = next(r for r in rows if r["method"] == "dense")
        dense = dense_row["test_acc_mean"]

        def paired(a, b, e):
            """a - b seed by seed (points) at budget e (dense: its one row)."""
            ra = next((r for r in rows if r["method"] == a and r["epochs"] == e), None)
            rb = dense_row if b == "dense" else None
            rb = rb or next((r for r in rows if r["method"] == b and r["epochs"] == e), None)
            if not ra or not rb or "per_seed" not in ra or "per_seed" not in rb:
                return None
            refs = [
                {"table": "rows", "match": {k: r[k] for k in ("network", "method", "epochs")}}
                for r in (ra, rb)
            ]
            name = f"{net}: {a} - {b} at {e} epochs"
            rec = difference_record(
                name, *refs, ra["per_seed"]["test_acc"], rb["per_seed"]["test_acc"]
            )
            if rec is not None:
                diffs.append(rec)
            return rec

        budgets = sorted({r["epochs"] for r in rows if r["method"] != "dense"})
        per_budget = []
        for e in budgets:
            accs = {
                r["method"]: r["test_acc_mean"]
                for r in rows
                if r["epochs"] == e and r["method"] != "dense" and r["test_acc_mean"] is not None
            }
            order = sorted(accs, key=accs.get, reverse=True)
            two = len(order) > 1
            per_budget.append(
                {
                    "epochs": e,
                    "accuracy": accs,
                    "winner": order[0],
                    "margin": 100 * (accs[order[0]] - accs[order[1]]) if two else None,
                    "runner_up": order[1] if two else None,
                    "margin_paired": paired(order[0], order[1], e) if two else None,
                }
            )
        last = per_budget[-1]
        js, wt = (
            last["accuracy"].get("jackpot_selected"),
            last["accuracy"].get("weight_tuning_selected"),
        )
        gap = 100 * (dense - js) if js is not None else None
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
                "target_epochs": e,
                "gap_to_dense": gap,
                "jackpot_minus_weight_tuning": 100 * (js - wt) if None not in (js, wt) else None,
                "within_0.3_of_dense": gap is not None and gap <= 0.3,
                "at_least_weight_tuning": None not in (js, wt) and js >= wt,
            }
        )
    return out


def _paired_text(v: dict) -> str:
    parts = [
        f"{what} {difference_text(v.get(key))}"
        for key, what in (
            ("paired_jackpot_minus_dense", "jackpot - dense"),
            ("paired_jackpot_minus_weight_tuning", "jackpot - weight tuning"),
        )
        if v.get(key)
    ]
    if not parts:
        return ""
    return (
        " Paired over seeds (each seed's runs share its dense checkpoint): "
        + "; ".join(parts)
        + "."
    )


def _selection_test_text(st: dict) -> str:
    if st.get("selection_evaluates_test") is False:
        return (
            "The selection runs (and the selection seed's dense checkpoint) were made with "
            "`evaluate_test=False`: they never evaluated the test split."
        )
    return (
        "The selection runs of this sweep were made before `evaluate_test` existed: each "
        "also evaluated the test split at its end and printed it in its log and summary "
        "(`test_accuracy`, `dense_test_accuracy`, `init_mask_test_accuracy`); the selection "
        "read none of these."
    )


# The sweep's target, decided on the 95% intervals of the paired differences (issue 29):
# the 10-epoch jackpot within this many points of dense (an equivalence test), and not below
# the selected weight tuning by more than the same margin (a non-inferiority test).
TARGET_MARGIN = 0.3


def _target_lines(res: dict, verdicts: list[dict]) -> str:
    """The target's verdict sentences, one bullet per network, worded by `verdicts`."""
    out = []
    for v in verdicts:
        if v["gap_to_dense"] is None:
            continue
        e = v["target_epochs"]
        eq = vd.equivalence_sentence(
            f"the selected {e}-epoch jackpot",
            f"dense ({pct(v['dense'])}%)",
            v.get("paired_jackpot_minus_dense"),
            TARGET_MARGIN,
        )
        ni = vd.non_inferiority_sentence(
            "the selected jackpot",
            "the selected weight tuning",
            v.get("paired_jackpot_minus_weight_tuning"),
            TARGET_MARGIN,
        )
        met = vd.within_margin(
            (v.get("paired_jackpot_minus_dense") or {}).get("ci95"), TARGET_MARGIN
        ) and vd.non_inferior(
            (v.get("paired_jackpot_minus_weight_tuning") or {}).get("ci95"), TARGET_MARGIN
        )
        out.append(
            f"- **{v['network']}**: target {'met' if met else 'not shown'} (both tests on the "
            f"95% interval, margin {TARGET_MARGIN} points). {eq} {ni}"
        )
    return "\n".join(out)


def _budget_table(res: dict, net: str, verdicts: list[dict]) -> tuple[str, str] | None:
    """(heading, table) of one network's test accuracies per budget and method."""
    st = res["settings"]
    rows = [r for r in res["rows"] if r["network"] == net]
    if not rows:
        return None
    budgets = sorted({r["epochs"] for r in rows if r["method"] != "dense"})
    dense = next(r for r in rows if r["method"] == "dense")
    head = (
        f"### {net} at {st['sparsity']:.0%} sparsity (dense: "
        f"{pct(dense['test_acc_mean'], dense['test_acc_std'])}, "
        f"{dense['epochs']} pretraining epochs; seeds "
        f"{', '.join(dense.get('per_seed', {}).get('test_acc', {}))})"
    )
    v = next(x for x in verdicts if x["network"] == net)
    by_epochs = dict(zip(budgets, v["budgets"]))

    def cell(m):
        def f(e):
            r = next((r for r in rows if r["method"] == m and r["epochs"] == e), None)
            return pct(r["test_acc_mean"], r["test_acc_std"]) if r else "n/a"

        return f

    def winner(e):
        b = by_epochs[e]
        p = b.get("margin_paired")
        if b["margin"] is None or p is None:
            return NAMES[b["winner"]]
        return (
            f"{NAMES[b['winner']]} (+{b['margin']:.2f} over {NAMES[b['runner_up']]}; "
            f"paired {vd.interval_text(p)})"
        )

    cols = [("epochs", str)] + [(NAMES[m], cell(m)) for m in METHODS]
    cols.append(("higher mean (difference to the runner-up)", winner))
    return head, render_table(budgets, cols)


def _sweep_table(res: dict, net: str, kind: str, factors, sweep) -> tuple[str, str]:
    """(heading, table) of one network's selection runs of one kind, in the order run."""
    st = res["settings"]
    dval = res["selected"][net].get("dense_val_accuracy")
    head = (
        f"### {net}, {kind.replace('_', ' ')} (the dense network: "
        f"{pct(dval)} on the same validation split)"
    )

    def level(f):
        return lambda r: (
            f"{r['recipe'][f]:g}" if isinstance(r["recipe"][f], float) else str(r["recipe"][f])
        )

    def acc(r):
        mark = " **(selected)**" if r["selected"] else ""
        if kind == "jackpot" and r["recipe"] == st["official"]:
            mark += " (official)"
        return pct(r["val_accuracy"]) + mark

    cols = [("#", lambda r: r["order"] + 1)] + [(f, level(f)) for f in factors]
    return head, render_table(sweep, cols + [("val. acc.", acc)])


def generated_tables(res: dict, folder: str) -> dict[str, str]:
    """{block name: content} of every generated block of the sweep's report, names
    '<folder>/target', '<folder>/budgets/<net>', '<folder>/sweep/<net>/<kind>'."""
    st = res["settings"]
    verdicts = res.get("assessment") or assess(res)
    out = {f"{folder}/target": _target_lines(res, verdicts)}
    for net in st["networks"]:
        t = _budget_table(res, net, verdicts)
        if t:
            out[f"{folder}/budgets/{net}"] = t[1]
        for kind, factors in (
            ("jackpot", st["jackpot_factors"]),
            ("weight_tuning", st["wt_factors"]),
        ):
            sweep = [r for r in res["sweep"] if r["network"] == net and r["method"] == kind]
            if sweep:
                out[f"{folder}/sweep/{net}/{kind}"] = _sweep_table(res, net, kind, factors, sweep)[
                    1
                ]
    return out


def write_report(res: dict, workdir: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    st = res["settings"]
    verdicts = res.get("assessment") or assess(res)
    folder = os.path.basename(os.path.normpath(workdir))
    lines = ["# Search efficiency on Fashion-MNIST: a recipe selected on validation", ""]
    if not res["complete"]:
        lines += ["**Incomplete: some pieces have not run yet; rerun the command.**", ""]
    lines += ["## Target", ""]
    lines.append(block(f"{folder}/target", _target_lines(res, verdicts)))
    lines += [
        "",
        "## Which recipe wins at which budget (test accuracy, %, mean ± sample std over "
        "fresh seeds)",
        "",
        STD_NOTE + " The winner's margin is over the runner-up's mean; 'within noise': the "
        "95% t-interval of their paired per-seed difference contains 0. results.json keeps "
        "every row's per-seed values and every paired difference; `python "
        "tools/check_results.py DIR` recomputes them."
        + (f" Note: {res['statistics']['note']}." if res.get("statistics", {}).get("note") else ""),
        "",
    ]
    for net in st["networks"]:
        table = _budget_table(res, net, verdicts)
        if table:
            lines += [table[0], "", block(f"{folder}/budgets/{net}", table[1]), ""]
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
            head, table = _sweep_table(res, net, kind, factors, sweep)
            lines += [head, "", block(f"{folder}/sweep/{net}/{kind}", table)]
            best = res["selected"][net][kind]
            design = st["designs"][net]
            around = []
            for f in factors:
                cells = []
                for lvl in design["jackpot_levels" if kind == "jackpot" else "wt_levels"][f]:
                    p = dict(best, **{f: lvl})
                    hit = next((r for r in sweep if r["recipe"] == p), None)
                    cells.append(f"{lvl:g}" if isinstance(lvl, float) else str(lvl))
                    cells[-1] += f": {pct(hit['val_accuracy']) if hit else 'not run'}"
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
                    (r["epochs"], r["test_acc_mean"], r["test_acc_std"] or 0.0)
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
                        label=NAMES[m],
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
        f"epochs is read. {_selection_test_text(st)} The final table's test accuracies are "
        f"of fresh seeds (below), none of which took part in the selection. Each budget "
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
    lines += provenance.report_lines(res.get("invocations") or [res["run"]])
    path = os.path.join(workdir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path
