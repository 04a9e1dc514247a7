"""The LM study's report (`lm_study`): its generated tables, verdicts decided on the 95%
intervals, the validation curves against tokens seen, and report.md.

`generated_tables(res, folder)` gives every block of the report as {name: content}; the
report writes them between `<!-- generated: NAME -->` markers, and `tools/check_results.py`
regenerates them from docs/results/<folder>/results.json. Every figure comes from the
results: per-seed values, paired differences (`stats`), sentences (`verdicts`).
"""

from __future__ import annotations

import os

import numpy as np

from jackpot_jax.experiments import provenance
from jackpot_jax.experiments.stats import STD_NOTE
from jackpot_jax.experiments.tables import block, render_table
from jackpot_jax.experiments.verdicts import difference_sentence

FOLDER = "shakespeare"
UNIT = "perplexity"
LABELS = {
    "dense": "dense",
    "magnitude": "magnitude (one-shot)",
    "wanda": "Wanda (one-shot)",
    "sparsegpt": "SparseGPT, mask only",
    "sparsegpt_update": "SparseGPT with its weight update (changes weights)",
    "jackpot_wanda": "jackpot from the Wanda prior",
    "jackpot_sparsegpt": "jackpot from the SparseGPT mask",
    "jackpot_magnitude": "jackpot from the magnitude mask",
    "tune": "weight tuning of the Wanda mask's kept weights (changes weights)",
}


def label(method: str) -> str:
    return LABELS.get(method, method)


def _ppl(m, s=None) -> str:
    if m is None:
        return "n/a"
    return f"{m:.2f}" + (f" ± {s:.2f}" if s is not None else "")


def _row(res, level, method):
    hits = [r for r in res["rows"] if r["level"] == level and r["method"] == method]
    return hits[0] if hits else None


def _diff(res, level, a, b):
    name = f"{level}: {a} - {b}"
    return next((d for d in res["differences"] if d["name"] == name), None)


def _levels(res) -> list[str]:
    return list(dict.fromkeys(r["level"] for r in res["rows"]))


def rows_table(res: dict) -> str:
    """Test perplexity on the held-out plays per level and method (mean ± sample std over
    the final seeds, then each seed's value)."""
    return render_table(
        res["rows"],
        [
            ("level", lambda r: r["level"]),
            ("method", lambda r: label(r["method"])),
            ("tokens", lambda r: f"{r['tokens']:,}" if r["tokens"] else "—", "r"),
            ("lr", lambda r: f"{r['lr']:g}" if r.get("lr") else "—", "r"),
            ("test perplexity", lambda r: _ppl(r["test_ppl_mean"], r["test_ppl_std"]), "r"),
            (
                "per seed",
                lambda r: ", ".join(f"{v:.2f}" for v in r["per_seed"]["test_ppl"].values()),
            ),
            ("val perplexity", lambda r: _ppl(r["val_ppl_mean"]), "r"),
        ],
    )


def differences_table(res: dict) -> str:
    """Every paired difference of test perplexity (a - b, negative: a is better) with its
    95% t-interval over the final seeds."""

    def ci(d):
        return "—" if d["ci95"] is None else f"{d['ci95'][0]:+.2f} to {d['ci95'][1]:+.2f}"

    def side(d):
        if d["ci95"] is None:
            return "no interval"
        if d["ci95"][1] < 0:
            return "a lower (better)"
        if d["ci95"][0] > 0:
            return "a higher (worse)"
        return "interval includes 0"

    return render_table(
        res["differences"],
        [
            ("level", lambda d: d["level"]),
            ("a", lambda d: label(d["a"]["match"]["method"])),
            ("b", lambda d: label(d["b"]["match"]["method"])),
            ("a - b", lambda d: f"{d['mean']:+.2f}", "r"),
            ("95% interval", ci, "r"),
            ("seeds", lambda d: d["seeds"], "r"),
            ("verdict", side),
        ],
    )


def selection_table(res: dict) -> str:
    """Every selection run (validation perplexity only, the selection seed) in order."""
    return render_table(
        res["selection"],
        [
            ("method", lambda r: "jackpot" if r["method"] == "jackpot" else "weight tuning"),
            ("prior", lambda r: r["prior"]),
            ("lr", lambda r: f"{r['lr']:g}", "r"),
            ("val perplexity", lambda r: "diverged" if r["diverged"] else f"{r['val_ppl']:.2f}"),
            ("selected", lambda r: "**yes**" if r["selected"] else ""),
        ],
    )


def layers_table(res: dict) -> str:
    """Overlap of each final jackpot with its prior (Eq. 7 per kernel, averaged over the
    kernels of a module type in a group of blocks, then over seeds)."""
    groups = list(dict.fromkeys(r["blocks"] for r in res["layers"]))
    keys = list(dict.fromkeys((r["level"], r["prior"], r["module"]) for r in res["layers"]))
    by = {(r["level"], r["prior"], r["module"], r["blocks"]): r for r in res["layers"]}

    def cell(g):
        return lambda k: f"{by[(*k, g)]['overlap_mean']:.4f}" if (*k, g) in by else "—"

    cols = [("level", lambda k: k[0]), ("prior", lambda k: k[1]), ("module", lambda k: k[2])]
    cols += [(f"blocks {g}" if g != "all" else "all blocks", cell(g), "r") for g in groups]
    return render_table(keys, cols)


def verdicts(res: dict) -> str:
    """The goal and the answers, each decided on its interval (`verdicts`)."""
    sel = res["selected"]["jackpot"]["prior"]
    jack = f"jackpot_{sel}"
    out = []
    for level in _levels(res):
        out.append(f"**{level}** (the jackpot from the selected prior, {sel}):")
        out.append("")
        for other in ("sparsegpt", "wanda", "dense", "sparsegpt_update", "tune"):
            d = _diff(res, level, jack, other)
            if d is not None:
                out.append("- " + difference_sentence(label(jack), label(other), d, UNIT))
        d = _diff(res, level, "tune", "wanda")
        if d is not None:
            out.append("- " + difference_sentence(label("tune"), label("wanda"), d, UNIT))
        a, b = _diff(res, level, jack, "sparsegpt"), _diff(res, level, jack, "wanda")
        met = all(x is not None and x["ci95"] is not None and x["ci95"][1] < 0 for x in (a, b))
        j, dn, pr = _row(res, level, jack), _row(res, level, "dense"), _row(res, level, sel)
        if j and dn and pr and pr["test_ppl_mean"] > dn["test_ppl_mean"]:
            closed = (pr["test_ppl_mean"] - j["test_ppl_mean"]) / (
                pr["test_ppl_mean"] - dn["test_ppl_mean"]
            )
            out.append(
                f"- Of the gap between its prior ({_ppl(pr['test_ppl_mean'])}) and dense "
                f"({_ppl(dn['test_ppl_mean'])}), the jackpot closed {closed:.0%} (means over "
                f"seeds; above 100%: below dense) with {j['tokens']:,} tokens."
            )
        out.append(
            f"- Goal (test perplexity below SparseGPT mask-only's and Wanda's, both intervals "
            f"below 0): **{'met' if met else 'not met'}**."
        )
        out.append("")
    return "\n".join(out).rstrip("\n")


def generated_tables(res: dict, folder: str = FOLDER) -> dict[str, str]:
    """{block name: content} of every generated block of the report."""
    out = {
        f"{folder}/test_perplexity": rows_table(res),
        f"{folder}/differences": differences_table(res),
        f"{folder}/selection": selection_table(res),
        f"{folder}/verdicts": verdicts(res),
    }
    if res.get("layers"):
        out[f"{folder}/overlap_with_prior"] = layers_table(res)
    return out


def answers(res: dict) -> list[str]:
    """What the command prints: the verdict lines."""
    return [x for x in verdicts(res).splitlines() if x]


def mean_curves(res: dict, level: str) -> dict[str, tuple[list, list]]:
    """{method: (tokens, mean validation perplexity over seeds)} of one level's runs."""
    out = {}
    for method in dict.fromkeys(c["method"] for c in res["curves"] if c["level"] == level):
        cs = [c for c in res["curves"] if c["level"] == level and c["method"] == method]
        out[method] = (cs[0]["tokens"], np.mean([c["val_ppl"] for c in cs], 0).tolist())
    return out


def plot_curves(res: dict, path: str) -> bool:
    """Validation perplexity against tokens seen (mean over seeds) of the searches and of
    weight tuning, with the one-shot and dense validation perplexities as horizontal lines;
    one panel per level. False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return False
    levels = _levels(res)
    fig, axes = plt.subplots(1, len(levels), figsize=(6 * len(levels), 4.2), squeeze=False)
    for ax, level in zip(axes[0], levels):
        for method, (tokens, ppl) in mean_curves(res, level).items():
            ax.plot(tokens, ppl, marker="o", label=label(method))
        for i, m in enumerate(("dense", "wanda", "sparsegpt", "sparsegpt_update", "magnitude")):
            r = _row(res, level, m)
            if r is not None:
                ax.axhline(r["val_ppl_mean"], ls="--", lw=1, color=f"C{i + 3}", label=label(m))
        ax.set_yscale("log")
        ax.set_xlabel("training tokens seen")
        ax.set_ylabel("validation perplexity (mean over seeds)")
        ax.set_title(level)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(res: dict, workdir: str, folder: str = FOLDER) -> str:
    """Writes DIR/report.md (and DIR/val_curves.png); returns the report's path."""
    st, sel = res["settings"], res["selected"]
    blocks = generated_tables(res, folder)
    runs = sel["runs"]
    lines = [
        f"# Jackpots in a pre-trained LM: `{st['source']}` on {st['dataset']}",
        "",
        "## Setting",
        "",
        f"- model: `{st['network']}` converted from `{st['source']}`; every Linear kernel of "
        "the blocks pruned (q, k, v, o, gate, up, down); embeddings, norms and the head dense",
        f"- text: {st['dataset']}, whole documents (plays) held out for validation and test, "
        f"windows of {st['seq_len']} tokens; perplexity on "
        + (
            f"the first {st['max_eval_tokens']:,} tokens"
            if st["max_eval_tokens"]
            else "every token"
        )
        + " of each held-out split",
        f"- one-shot: {st['calibration_samples']} calibration windows per seed (the seed draws "
        "them); magnitude and dense read no data (measured once, the same value for every seed)",
        f"- search and weight tuning: {st['steps']} steps of {st['batch_size']} x "
        f"{st['seq_len']} tokens ({st['tokens_per_run']:,} tokens), the seed's data order; "
        f"search {st['search']['optimizer']} on the scores ({st['search']['schedule']}, score "
        f"levels {st['search']['score_kept']:g} / {st['search']['score_pruned']:g}); weight "
        f"tuning {st['tune']['optimizer']} on the kept weights of the Wanda mask "
        f"({st['tune']['schedule']})",
        f"- final seeds {', '.join(map(str, st['final_seeds']))}; selection seed "
        f"{st['select_seed']} at {st['select_level']} (not among them; its runs evaluate no "
        "test perplexity)",
        f"- {STD_NOTE}",
        "",
        "## Selection (validation perplexity only)",
        "",
        f"Learning rates by a line search on a log grid (ratio {st['lr_ratio']:g}): the grid, "
        "then a point beyond the best when it sits at an edge, else the midpoint toward its "
        f"better neighbour. Runs: jackpot {runs['jackpot']} (learning rate from the Wanda "
        f"prior, then the other prior at the selected rate), weight tuning {runs['tune']}. The "
        f"{st['select_level']} recipe serves every level.",
        "",
        block(f"{folder}/selection", blocks[f"{folder}/selection"]),
        "",
    ]
    for kind in ("jackpot", "tune"):
        if sel[kind]["lr_at_grid_edge"]:
            lines += [
                f"Note: the selected {kind} learning rate is at the edge of the levels tried: "
                "the selection runs were too few to bracket it.",
                "",
            ]
    lines += [
        "## Test perplexity (held-out plays, final seeds)",
        "",
        block(f"{folder}/test_perplexity", blocks[f"{folder}/test_perplexity"]),
        "",
        "## Verdicts",
        "",
        block(f"{folder}/verdicts", blocks[f"{folder}/verdicts"]),
        "",
        "## Paired differences (a - b in test perplexity; negative: a is better)",
        "",
        block(f"{folder}/differences", blocks[f"{folder}/differences"]),
        "",
    ]
    if plot_curves(res, os.path.join(workdir, "val_curves.png")):
        lines += [
            "## Validation perplexity against tokens seen",
            "",
            "![validation perplexity against tokens](val_curves.png)",
            "",
        ]
    if f"{folder}/overlap_with_prior" in blocks:
        lines += [
            "## How far each jackpot moved from its prior",
            "",
            "Overlap with the prior's mask per module type and group of blocks (1 = unchanged). "
            "The table `layers` of results.json is computed from the runs' mask files: no raw "
            "log holds it.",
            "",
            block(f"{folder}/overlap_with_prior", blocks[f"{folder}/overlap_with_prior"]),
            "",
        ]
    lines += provenance.report_lines(res.get("invocations") or [res["run"]])
    path = os.path.join(workdir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path
