"""report.md and module_sparsity.png of the ViT study (`vit_study`), from its results; the
answers the command prints."""

from __future__ import annotations

import os

import numpy as np

from jackpot_jax.experiments import provenance
from jackpot_jax.experiments.common import parse_optimizer
from jackpot_jax.experiments.stats import STD_NOTE, difference_text, pct
from jackpot_jax.experiments.vit_pieces import MODULE_TYPES

WITHIN = 0.5  # points: "within half a point of dense"


def _recipe_text(kind: str, r: dict) -> str:
    opt, lr = parse_optimizer(r["optimizer"])
    text = f"{'SGD' if opt == 'sgd' else 'AdamW'} lr {lr:g}"
    if kind == "jackpot":
        text += f", pruned score {r['score_pruned']:g}, budget `{r['distribution']}`"
    elif "distribution" in r:
        text += f" (magnitude mask under `{r['distribution']}`)"
    return text


def _seeds_text(row: dict, q: str = "test_acc") -> str:
    return ", ".join(f"{100 * v:.2f}" for v in row["per_seed"][q].values())


def _difference(res: dict, level: str, other: str) -> dict | None:
    name = f"{level}: jackpot - {other}"
    return next((d for d in res["differences"] if d["name"] == name), None)


def answers(res: dict) -> list[str]:
    """The two questions, answered from the paired differences."""
    levels = list(dict.fromkeys(r["level"] for r in res["rows"]))
    e = res["settings"]["search"]["epochs"]
    within, beats = [], []
    for level in levels:
        d = _difference(res, level, "dense")
        if d is not None and d["mean"] >= -WITHIN:
            within.append(level)
        w = _difference(res, level, "magnitude+weight_tuning")
        if w is not None and w["ci95"] is not None and w["ci95"][0] > 0:
            beats.append(level)
    lines = [
        f"- **Within {WITHIN} points of dense after {e} search epochs** (mean paired "
        f"difference over the final seeds): "
        + (", ".join(f"`{x}`" for x in within) if within else "at no level")
        + ".",
        "- **Beats magnitude + weight tuning at equal epochs** (95% interval above 0): "
        + (", ".join(f"`{x}`" for x in beats) if beats else "at no level")
        + ".",
    ]
    for level in levels:
        parts = [
            f"jackpot - {other}: {difference_text(_difference(res, level, other))}"
            for other in ("dense", "magnitude+weight_tuning", "magnitude")
        ]
        lines.append(f"  - `{level}`: " + "; ".join(parts))
    return lines


def plot_module_sparsity(res: dict, path: str) -> bool:
    """One panel per unstructured level: the jackpot's (solid) and the magnitude mask's
    (dashed) pruned fraction per module type against depth (0 = patch embedding), means over
    seeds, on one 0-100% scale."""
    rows = [r for r in res["layers"] if r["module"] != "other"]
    levels = [x for x in dict.fromkeys(r["level"] for r in rows) if ":" not in x]
    if not levels:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(levels), figsize=(4.2 * len(levels), 3.6), squeeze=False)
    colors = dict(zip(MODULE_TYPES, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for ax, level in zip(axes[0], levels):
        for mask, style in (("jackpot", "-o"), ("magnitude", "--x")):
            for kind in MODULE_TYPES:
                pts = sorted(
                    (r["depth"], 100 * r["pruned_mean"])
                    for r in rows
                    if r["level"] == level and r["mask"] == mask and r["module"] == kind
                )
                if not pts:
                    continue
                x, y = zip(*pts)
                label = kind if mask == "jackpot" else None
                ax.plot(x, y, style, color=colors[kind], label=label, ms=4, lw=1.2)
        ax.set_ylim(0, 101)  # one scale: a budget that fixes per-layer counts draws flat lines
        ax.set_title(f"sparsity {level}")
        ax.set_xlabel("depth (0 = patch embedding, i = block i)")
        ax.set_ylabel("pruned (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, title="jackpot (solid); magnitude (dashed)", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _module_table(res: dict) -> list[str]:
    levels = [x for x in dict.fromkeys(r["level"] for r in res["layers"]) if ":" not in x]
    out = [
        "| level | mask | " + " | ".join(MODULE_TYPES) + " |",
        "|---|---|" + "---:|" * len(MODULE_TYPES),
    ]
    for level in levels:
        for mask in ("jackpot", "magnitude"):
            cells = []
            for kind in MODULE_TYPES:
                v = [
                    r["pruned_mean"]
                    for r in res["layers"]
                    if r["level"] == level and r["mask"] == mask and r["module"] == kind
                ]
                cells.append(f"{100 * float(np.mean(v)):.1f}" if v else "-")
            out.append(f"| {level} | {mask} | " + " | ".join(cells) + " |")
    return out


def write_report(res: dict, workdir: str) -> str:
    st = res["settings"]
    sel = res["selected"]
    lines = ["# Jackpots in a vision transformer: Fashion-MNIST, `" + st["network"] + "`", ""]
    if not res.get("complete", True):
        lines += ["**Incomplete**: the selection has not finished; rerun the command.", ""]
    pre, se, tu = st["pretrain"], st["search"], st["tune"]
    options = ", ".join(f"{k} {v}" for k, v in sorted(st.get("model_options", {}).items()))
    lines += [
        "## Setting",
        "",
        f"- model: `{st['network']}`" + (f" ({options})" if options else ""),
        f"- data: {st['train_examples']:,} training images of Fashion-MNIST, "
        f"{st['val_examples']:,} validation images held out of the training set, the "
        f"{st['test_examples']:,}-image test set",
        f"- dense: {pre['epochs']} epochs, {pre['optimizer']} lr {pre['lr']:g}, weight decay "
        f"{pre['weight_decay']:g}, {pre['schedule']}, batch {pre['batch_size']} (one checkpoint "
        "per seed; every run of a seed starts from it)",
        f"- search: {se['epochs']} epochs, batch {se['batch_size']}, {se['schedule']}, weight "
        f"decay {se['weight_decay']:g}, kept score {se['score_kept']:g}; what is pruned: the "
        "patch embedding, q, k, v, the attention output and both MLP layers (LayerNorms, "
        "biases, class token, position embedding and head stay dense)",
        f"- weight tuning (baseline): the magnitude mask fixed, weights trained "
        f"{tu['epochs']} epochs, batch {tu['batch_size']}, {tu['schedule']}, weight decay "
        f"{tu['weight_decay']:g}",
        f"- final seeds {', '.join(map(str, st['final_seeds']))}; selection seed "
        f"{st['select_seed']} (not among them)",
        f"- {STD_NOTE}",
        "",
        "## Selection (validation only)",
        "",
        f"Seed {st['select_seed']}, sparsity {st['select_sparsity']:g}, "
        f"{st['max_rounds']} round(s) of coordinate descent: each factor in turn, every level "
        "with the others at the best point so far; the final-epoch validation accuracy decides "
        "(a tie keeps the current level). These runs and their dense checkpoint never "
        "evaluated the test split. Dense validation accuracy: "
        f"{pct(sel.get('dense_val_accuracy'))}%.",
        "",
        "| method | recipe | val accuracy (%) | selected |",
        "|---|---|---:|---|",
    ]
    for r in res["sweep"]:
        val = "not run yet" if r["val_accuracy"] is None else f"{100 * r['val_accuracy']:.2f}"
        mark = "**yes**" if r["selected"] else ""
        lines.append(
            f"| {r['method']} | {_recipe_text(r['method'], r['recipe'])} | {val} | {mark} |"
        )
    if not res.get("complete", True):
        lines += provenance.report_lines(res.get("invocations") or [res["run"]])
        return _write(lines, workdir)
    lines += [
        "",
        f"Selected: jackpot {_recipe_text('jackpot', sel['jackpot'])}; weight tuning "
        f"{_recipe_text('weight_tuning', sel['weight_tuning'])}.",
        "",
        "## Test accuracy (final epoch, final seeds)",
        "",
        "`magnitude` and `random`: the mask alone, no tuning (at 2:4, the N:M masks of each "
        "criterion). Per-seed values in the order of the final seeds.",
        "",
        "| level | budget | method | epochs | test accuracy (%) | per seed |",
        "|---|---|---|---:|---:|---|",
    ]
    for r in res["rows"]:
        extra = ""
        if r.get("pattern_satisfied") is not None:
            extra = " (pattern satisfied)" if r["pattern_satisfied"] else " (PATTERN BROKEN)"
        lines.append(
            f"| {r['level']} | `{r['budget']}` | {r['method']}{extra} | {r['epochs']} | "
            f"{pct(r['test_acc_mean'], r['test_acc_std'])} | {_seeds_text(r)} |"
        )
    lines += ["", "## Answers", ""] + answers(res)
    lines += [
        "",
        "## Overlap of the jackpot with each criterion's mask",
        "",
        "The fraction of prunable weights on which the two masks agree (kept or pruned).",
        "",
        "| level | criterion | overlap | per seed |",
        "|---|---|---:|---|",
    ]
    for r in res["overlap"]:
        std = r["overlap_std"]
        lines.append(
            f"| {r['level']} | {r['criterion']} | {r['overlap_mean']:.4f}"
            + (f" ± {std:.4f}" if std is not None else "")
            + " | "
            + ", ".join(f"{v:.4f}" for v in r["per_seed"]["overlap"].values())
            + " |"
        )
    png = os.path.join(workdir, "module_sparsity.png")
    lines += [
        "",
        "## Where the jackpot prunes",
        "",
        "Pruned fraction (%) per module type, averaged over depth and seeds (per layer and "
        "seed in results.json, `layers`); at 2:4 every patterned kernel is 50% by "
        "construction.",
        "",
    ] + _module_table(res)
    if plot_module_sparsity(res, png):
        lines += ["", "![pruned fraction per module type and depth](module_sparsity.png)"]
    lines += [""] + provenance.report_lines(res.get("invocations") or [res["run"]])
    return _write(lines, workdir)


def _write(lines: list[str], workdir: str) -> str:
    path = os.path.join(workdir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path
