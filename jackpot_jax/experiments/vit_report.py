"""report.md and module_sparsity.png of the ViT study (`vit_study`), from its results; the
answers the command prints, decided on intervals by `verdicts`; every table through
`generated_tables` (between `tables.block` markers)."""

from __future__ import annotations

import os

import numpy as np

from jackpot_jax.experiments import provenance, tables, verdicts
from jackpot_jax.experiments.common import parse_optimizer
from jackpot_jax.experiments.stats import STD_NOTE, pct
from jackpot_jax.experiments.vit_pieces import MODULE_TYPES

WITHIN = 0.5  # points: the equivalence / non-inferiority margin of the verdicts
NAMES = {
    "dense": "dense",
    "dense+more_epochs": "dense + more epochs",
    "magnitude": "magnitude",
    "random": "random",
    "magnitude+weight_tuning": "magnitude + weight tuning",
    "jackpot": "the jackpot",
    "jackpot_random_init": "the jackpot in a randomly initialised ViT",
}


def _recipe_text(kind: str, r: dict) -> str:
    opt, lr = parse_optimizer(r["optimizer"])
    text = f"{'SGD' if opt == 'sgd' else 'AdamW'} lr {lr:g}"
    if "weight_decay" in r:
        text += f", weight decay {r['weight_decay']:g}"
    if "batch_size" in r:
        text += f", batch {r['batch_size']}"
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


def _levels(res: dict) -> list[str]:
    return list(dict.fromkeys(r["level"] for r in res["rows"]))


def answers(res: dict) -> list[str]:
    """The study's three questions, answered from the 95% intervals of the paired differences
    with `verdicts` (an equivalence or non-inferiority claim only where the interval's bound
    clears the margin; everything else as the difference with its interval)."""
    dense_more = res["settings"].get("dense_more", {}).get("epochs")
    lines = [
        f"Margin {WITHIN:g} points; each sentence is decided on the 95% interval of the paired "
        "differences over the final seeds, never on the mean.",
        "",
        "**Do pre-trained ViTs hold jackpots?** (the jackpot against the dense model, the dense "
        f"model trained {dense_more} more epochs, and the magnitude mask with its weights tuned)",
        "",
    ]
    held = []
    for level in _levels(res):
        d = _difference(res, level, "dense")
        if d is not None and verdicts.within_margin(d.get("ci95"), WITHIN):
            held.append(level)
        lines.append(f"- `{level}`:")
        lines.append("  - " + verdicts.equivalence_sentence("the jackpot", "dense", d, WITHIN))
        for other in ("dense+more_epochs", "magnitude+weight_tuning"):
            w = _difference(res, level, other)
            if w is not None:
                lines.append(
                    "  - "
                    + verdicts.non_inferiority_sentence("the jackpot", NAMES[other], w, WITHIN)
                )
        m = _difference(res, level, "magnitude")
        if m is not None:
            lines.append("  - " + verdicts.difference_sentence("the jackpot", "magnitude", m))
    lines += [
        "",
        "**Does pre-training matter?** (the same search over a randomly initialised ViT)",
        "",
    ]
    rand = [(lv, _difference(res, lv, "jackpot_random_init")) for lv in _levels(res)]
    rand = [(lv, d) for lv, d in rand if d is not None]
    if not rand:
        lines.append("- no random-init control in these results.")
    for level, d in rand:
        lines.append(
            f"- `{level}`: "
            + verdicts.difference_sentence(
                "the jackpot in the pre-trained ViT", "the jackpot in a random ViT", d
            )
        )
    lines += [
        "",
        "**At which sparsity?** Levels where the jackpot is shown within "
        f"{WITHIN:g} points of dense (both bounds of the interval inside the margin): "
        + (", ".join(f"`{x}`" for x in held) if held else "none")
        + ".",
    ]
    return lines


def selection_table(res: dict) -> str:
    """Every selection run: method, recipe, validation accuracy, whether it was selected."""
    return tables.render_table(
        res["sweep"],
        [
            ("method", lambda r: r["method"]),
            ("recipe", lambda r: _recipe_text(r["method"], r["recipe"])),
            (
                "val accuracy (%)",
                lambda r: (
                    "not run yet" if r["val_accuracy"] is None else f"{100 * r['val_accuracy']:.2f}"
                ),
                "r",
            ),
            ("selected", lambda r: "**yes**" if r["selected"] else ""),
        ],
    )


def budget_table(res: dict) -> str:
    """What each method was given in the selection: factors, levels, runs, edges."""
    rows = list((res.get("selection_budget") or {}).items())
    return tables.render_table(
        rows,
        [
            ("method", lambda kv: kv[0]),
            (
                "factors: levels (in the order visited)",
                lambda kv: "; ".join(
                    f"{f}: " + ", ".join(str(x) for x in kv[1]["levels"][f])
                    for f in kv[1]["factors"]
                ),
            ),
            ("grid shape", lambda kv: " x ".join(map(str, kv[1]["grid_shape"])), "r"),
            ("selection runs", lambda kv: kv[1]["runs"], "r"),
            (
                "selected level at a grid edge",
                lambda kv: "; ".join(kv[1]["edges"]) if kv[1]["edges"] else "none",
            ),
        ],
    )


def test_table(res: dict) -> str:
    """The final runs' test accuracy per level and method, with the jackpot's sparsity over
    every prunable weight."""

    def method(r):
        extra = ""
        if r.get("pattern_satisfied") is not None:
            extra = " (pattern satisfied)" if r["pattern_satisfied"] else " (PATTERN BROKEN)"
        return NAMES.get(r["method"], r["method"]).replace("the jackpot", "jackpot") + extra

    def sparsity_all(r):
        m = r.get("sparsity_all_mean")
        return None if m is None else f"{100 * m:.2f}"

    return tables.render_table(
        res["rows"],
        [
            ("level", lambda r: r["level"]),
            ("budget", lambda r: f"`{r['budget']}`"),
            ("method", method),
            ("epochs", lambda r: r["epochs"], "r"),
            ("test accuracy (%)", lambda r: pct(r["test_acc_mean"], r["test_acc_std"]), "r"),
            ("per seed", _seeds_text),
            ("sparsity, all prunable (%)", sparsity_all, "r"),
        ],
    )


def differences_table(res: dict) -> str:
    """Every paired difference with its 95% interval."""
    return tables.render_table(
        res["differences"],
        [
            ("difference", lambda d: d["name"]),
            ("mean and 95% interval", lambda d: verdicts.interval_text(d)),
        ],
    )


def overlap_table(res: dict) -> str:
    def ov(r):
        std = r["overlap_std"]
        return f"{r['overlap_mean']:.4f}" + (f" ± {std:.4f}" if std is not None else "")

    return tables.render_table(
        res["overlap"],
        [
            ("level", lambda r: r["level"]),
            ("criterion", lambda r: r["criterion"]),
            ("overlap", ov, "r"),
            (
                "per seed",
                lambda r: ", ".join(f"{v:.4f}" for v in r["per_seed"]["overlap"].values()),
            ),
        ],
    )


def generated_tables(res: dict) -> dict[str, str]:
    """{block name: content} of every table report.md shows (`tables.block` markers):
    `tools/check_results.py` regenerates them from results.json."""
    out = {"vit/selection": selection_table(res), "vit/selection_budget": budget_table(res)}
    if res.get("complete", True):
        out.update(
            {
                "vit/test_accuracy": test_table(res),
                "vit/differences": differences_table(res),
                "vit/answers": "\n".join(answers(res)),
                "vit/overlap": overlap_table(res),
                "vit/module_sparsity": "\n".join(_module_table(res)),
            }
        )
    return out


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
    """DIR/report.md (and module_sparsity.png) of the study's results; every table and the
    answers sit between `tables.block` markers (`generated_tables`)."""
    st = res["settings"]
    sel = res["selected"]
    gen = generated_tables(res)
    lines = ["# Jackpots in a vision transformer: Fashion-MNIST, `" + st["network"] + "`", ""]
    if not res.get("complete", True):
        lines += ["**Incomplete**: the selection has not finished; rerun the command.", ""]
    pre, se, tu = st["pretrain"], st["search"], st["tune"]
    more = st.get("dense_more", {}).get("epochs")
    shared = st.get("dense_of") or {}
    options = ", ".join(f"{k} {v}" for k, v in sorted(st.get("model_options", {}).items()))
    dense_text = "one checkpoint per seed; every run of a seed starts from it"
    if shared:
        dense_text = "every run of a seed starts from its seed's checkpoint, except: " + ", ".join(
            f"seed {k} uses seed {v}'s" for k, v in shared.items()
        )
    rand_levels = st.get("random_init_levels") or []
    lines += [
        "## Setting",
        "",
        f"- model: `{st['network']}`" + (f" ({options})" if options else ""),
        f"- data: {st['train_examples']:,} training images of Fashion-MNIST, "
        f"{st['val_examples']:,} validation images held out of the training set, the "
        f"{st['test_examples']:,}-image test set (no augmentation: the pipeline has none for "
        "Fashion-MNIST)",
        f"- dense: {pre['epochs']} epochs, {pre['optimizer']} lr {pre['lr']:g}, weight decay "
        f"{pre['weight_decay']:g}, {pre['schedule']}, batch {pre['batch_size']} ({dense_text})",
        f"- dense + more epochs (control): the dense model trained {more} more epochs with the "
        "same recipe (the cosine restarted), as many as the search gets",
        f"- search: {se['epochs']} epochs, batch {se['batch_size']}, {se['schedule']}, weight "
        f"decay {se['weight_decay']:g}, kept score {se['score_kept']:g}; what is pruned: the "
        "patch embedding, q, k, v, the attention output and both MLP layers (LayerNorms, "
        "biases, class token, position embedding and head stay dense)",
        "- random-init control: the selected search, same budget and epochs, over a randomly "
        "initialised ViT of the same architecture"
        + (f" (levels {', '.join(rand_levels)})" if rand_levels else " (not run)"),
        f"- weight tuning (baseline): the magnitude mask fixed, weights trained "
        f"{tu['epochs']} epochs, {tu['schedule']}; optimiser, lr, weight decay and batch "
        "selected",
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
        "What each method was given (the weight-tuning baseline's magnitude mask takes the "
        "selected jackpot's budget):",
        "",
        tables.block("vit/selection_budget", gen["vit/selection_budget"]),
        "",
        tables.block("vit/selection", gen["vit/selection"]),
    ]
    if not res.get("complete", True):
        lines += [""] + provenance.report_lines(res.get("invocations") or [res["run"]])
        return _write(lines, workdir)
    lines += [
        "",
        f"Selected: jackpot {_recipe_text('jackpot', sel['jackpot'])}; weight tuning "
        f"{_recipe_text('weight_tuning', sel['weight_tuning'])}.",
        "",
        "## Test accuracy (final epoch, final seeds)",
        "",
        "`magnitude` and `random`: the mask alone, no tuning (at 2:4, the N:M masks of each "
        "criterion). Per-seed values in the order of the final seeds. The jackpot's sparsity "
        "is over every prunable weight: at 2:4 the patch embedding (whose input axis the "
        "pattern does not fit) stays dense and counts as kept.",
        "",
        tables.block("vit/test_accuracy", gen["vit/test_accuracy"]),
        "",
        "## Paired differences (jackpot minus each, 95% t-interval over the final seeds)",
        "",
        tables.block("vit/differences", gen["vit/differences"]),
        "",
        "## Answers",
        "",
        tables.block("vit/answers", gen["vit/answers"]),
        "",
        "## Overlap of the jackpot with each criterion's mask",
        "",
        "The fraction of prunable weights on which the two masks agree (kept or pruned).",
        "",
        tables.block("vit/overlap", gen["vit/overlap"]),
    ]
    png = os.path.join(workdir, "module_sparsity.png")
    lines += [
        "",
        "## Where the jackpot prunes",
        "",
        "Pruned fraction (%) per module type, averaged over depth and seeds (per layer and "
        "seed in results.json, `layers`); at 2:4 every patterned kernel is 50% by "
        "construction.",
        "",
        tables.block("vit/module_sparsity", gen["vit/module_sparsity"]),
    ]
    if plot_module_sparsity(res, png):
        lines += ["", "![pruned fraction per module type and depth](module_sparsity.png)"]
    lines += [""] + provenance.report_lines(res.get("invocations") or [res["run"]])
    return _write(lines, workdir)


def _write(lines: list[str], workdir: str) -> str:
    path = os.path.join(workdir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path
