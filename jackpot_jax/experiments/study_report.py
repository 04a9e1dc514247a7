"""The study's report: DIR/report.md with its tables, the claims' verdicts and PNG plots."""

from __future__ import annotations

import os

from jackpot_jax.experiments import provenance
from jackpot_jax.experiments.claims import claim_lines
from jackpot_jax.experiments.stats import STD_NOTE, pct
from jackpot_jax.experiments.study_pieces import CRITERIA
from jackpot_jax.experiments.tables import block, render_table

_DIFF_NOTE = (
    "A verdict on a difference of accuracies gives the paired difference over seeds (each "
    "seed's runs share its dense checkpoint) with its 95% t-interval; 'within noise' when the "
    "interval contains 0. results.json keeps every row's per-seed values (`per_seed`) and "
    "every difference (`differences`); `python tools/check_results.py DIR` recomputes them."
)


def write_report(res: dict, workdir: str) -> str:
    """DIR/report.md: the paper's claims (when that part ran), the N:M rows (when they ran),
    and every invocation's provenance."""
    folder = os.path.basename(os.path.normpath(workdir))
    lines = (
        _paper_sections(res, workdir, folder)
        if res["table1"]
        else ["# N:M sub-networks on Fashion-MNIST", ""]
    )
    lines += _nm_sections(res, folder)
    note = res.get("statistics", {}).get("note")
    lines += ["## Statistics", "", STD_NOTE + " " + _DIFF_NOTE, ""]
    lines += [f"Note: {note}.", ""] if note else []
    lines += provenance.report_lines(res.get("invocations") or [res["run"]])
    path = os.path.join(workdir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


def _paper_sections(res: dict, workdir: str, folder: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    st = res["settings"]
    lines = ["# Lottery jackpots on Fashion-MNIST: the paper's claims, checked", ""]
    lines.append("## The paper's claims on this data")
    lines.append("")
    lines.append(block(f"{folder}/claims", claim_lines(res)))
    lines += ["", "## Setup", ""]
    quick = " (quick variant: one seed, fewer levels and epochs)" if st["quick"] else ""
    lines.append(
        f"{st['dataset']}{quick}: {st['train_examples']} training, {st['val_examples']} "
        f"validation (held out of the training set), {st['test_examples']} test images. "
        f"Networks: {', '.join(st['networks'])}; seeds {st['seeds']}; every row of a seed uses that "
        f"seed's one pre-trained checkpoint ({st['pretrain_epochs']} epochs). Search: SGD lr "
        f"{st['search_lr']}, momentum 0.9, cosine per epoch, scores {st['score_init'][0]} / "
        f"{st['score_init'][1]} from the criterion mask, per-layer counts fixed by one global "
        f"magnitude threshold ({st['distribution']}); every criterion mask uses the same "
        "per-layer counts. Accuracies are final-epoch test accuracies in %, mean ± sample std "
        "(ddof=1) over seeds; nothing is selected on the test set. Sparsity is over prunable weights (every "
        "kernel but the classifier's)."
    )
    t = generated_tables(res, folder)
    for title, name in (
        ("Table 1 analogue", "table1"),
        ("Table 4 analogue: search epochs", "table4"),
        ("Fig. 3 / Fig. 4 analogues: criteria without tuning", "criteria"),
        ("Fig. 2 analogue: pre-trained vs randomly initialised weights", "fig2"),
    ):
        lines += ["", f"## {title}", "", block(f"{folder}/{name}", t[f"{folder}/{name}"])]
    lines += [
        "",
        "## Why the mask moves little",
        "",
        "The search starts from scores 1.0 (kept) / 0.95 (pruned): a pruned weight pops up "
        "only after its score gains 0.05 on the weakest kept one in its layer. "
        f"With lr {st['search_lr']} the overlap with the initial magnitude mask stays high "
        "(Table 4), so the search changes few weights; its gain over the magnitude mask "
        "comes from those few flips. A larger gap or a smaller learning rate moves the "
        "mask even less; `--config.base.search.score_pruned` sets the gap.",
    ]
    lines += ["", "## Plots", ""]

    nets = st["networks"]
    figs = []

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(os.path.join(workdir, name), dpi=110)
        plt.close(fig)
        figs.append(name)

    def per_network(name, title, xlabel, ylabel, curves, marker="o"):
        """One panel per network; `curves(net)` yields (x, y, label) for each line."""
        fig, axes = plt.subplots(1, len(nets), figsize=(5 * len(nets), 3.6), squeeze=False)
        for ax, net in zip(axes[0], nets):
            for x, y, label in curves(net):
                ax.plot(x, y, marker=marker, label=label)
            ax.set(title=f"{net}: {title}", xlabel=xlabel, ylabel=ylabel)
            ax.legend(fontsize=8)
        save(fig, name)

    def over_sparsity(table, field, scale, key, values, label="{}"):
        """Curves against sparsity of `table`'s rows, one per value of `key`."""

        def curves(net):
            for v in values:
                rows = [r for r in res[table] if r["network"] == net and r[key] == v]
                yield (
                    [100 * r["sparsity"] for r in rows],
                    [scale * r[field] for r in rows],
                    label.format(v),
                )

        return curves

    per_network(
        "fig3_criteria_accuracy.png",
        "accuracy without weight tuning",
        "sparsity (%)",
        "test accuracy (%)",
        over_sparsity(
            "criteria_accuracy", "test_acc_mean", 100, "criterion", (*CRITERIA, "jackpot")
        ),
    )
    per_network(
        "fig4_overlap.png",
        "overlap with the jackpot (Eq. 7)",
        "sparsity (%)",
        "overlap",
        over_sparsity("overlap", "overlap_mean", 1, "criterion", CRITERIA),
    )
    per_network(
        "fig5_warmup.png",
        f"search from each warm-up ({res['fig5'][0]['sparsity']:.0%})",
        "search epoch",
        "validation accuracy (%)",
        lambda net: (
            (
                range(len(r["val_acc_mean"])),
                [100 * v for v in r["val_acc_mean"]],
                f"{r['init']} warm-up",
            )
            for r in res["fig5"]
            if r["network"] == net
        ),
        marker=".",
    )
    per_network(
        "fig2_pretrained_vs_random.png",
        "search in pre-trained vs random weights",
        "sparsity (%)",
        "test accuracy (%)",
        over_sparsity(
            "fig2", "test_acc_mean", 100, "weights", ("pretrained", "random"), label="{} weights"
        ),
    )

    for name in figs:
        lines.append(f"![{name}]({name})")
        lines.append("")
    return lines


def _nm_sections(res: dict, folder: str) -> list[str]:
    """The N:M table and what it shows, computed from the rows (nothing when they did not run)."""
    if not res.get("nm"):
        return []
    st = res["settings"]
    pattern = st["nm_pattern"]
    lines = [
        f"## N:M sub-networks: {pattern}",
        "",
        f"Every kernel's mask keeps exactly {pattern.split(':')[0]} of every "
        f"{pattern.split(':')[1]} consecutive weights along its input axis (the reduction "
        "axis of its matmul, the layout sparse tensor cores run); a kernel whose input axis "
        "does not divide into groups stays dense (listed below); the classifier stays dense "
        "as in every other row. Sparsity is over the patterned kernels (unstructured rows: "
        f"over all prunable kernels). Searches: {st['short_epochs']} epochs from the "
        "magnitude mask of the same structure, weights untouched; fine-tuning: the weights "
        f"trained for {st['short_epochs']} epochs under the fixed magnitude mask. Test "
        "accuracy in %, mean ± sample std (ddof=1) over seeds; the magnitude rows are each search's "
        "starting mask. 'Mask moved' is 1 - overlap (Eq. 7) with that starting mask.",
        "",
        block(f"{folder}/nm", _nm_table(res)),
    ]
    lines.append("")
    for net in st["networks"]:
        rows = {(r["structure"], r["method"]): r for r in res["nm"] if r["network"] == net}
        acc = {k: 100 * r["test_acc_mean"] for k, r in rows.items()}
        jp, mag, ft = (
            acc.get((pattern, k)) for k in ("jackpot", "magnitude", "magnitude+finetune")
        )
        dense, free = acc.get(("dense", "dense")), acc.get(("unstructured", "jackpot"))
        if None in (jp, mag, ft, dense):
            continue
        nm_row = rows[(pattern, "jackpot")]
        text = (
            f"- {net}: the {pattern} jackpot is {jp - dense:+.2f} points from dense and "
            f"{jp - mag:+.2f} from the magnitude {pattern} mask it starts from; magnitude "
            f"{pattern} + fine-tuning is {ft - jp:+.2f} points from the jackpot"
        )
        if free is not None:
            text += (
                f"; the unstructured jackpot at the same sparsity is {free - jp:+.2f} points "
                f"from the {pattern} one"
            )
        kept = ", ".join(f"`{k}`" for k in nm_row.get("dense_kept", [])) or "none"
        text += (
            f". Kept dense (input axis not divisible): {kept}. Every {pattern} mask "
            f"satisfies the pattern exactly: {'yes' if nm_row.get('pattern_satisfied') else 'NO'}."
        )
        lines.append(text)
    lines.append("")
    return lines


def _cost(r: dict) -> str:
    return f"{r['epochs']}({r['cost']})" if r["cost"] else "0"


def _acc(r: dict) -> str:
    return pct(r["test_acc_mean"], r.get("test_acc_std"))


def _nm_table(res: dict) -> str:
    def moved(r):
        m = r.get("overlap_with_init_mean")
        return None if m is None else f"{1 - m:.4f}"

    return render_table(
        res["nm"],
        [
            ("network", lambda r: r["network"]),
            ("structure", lambda r: r["structure"]),
            ("sparsity", lambda r: f"{r['sparsity']:.0%}"),
            ("method", lambda r: r["method"]),
            ("epochs", _cost),
            ("test acc. (%)", _acc),
            ("mask moved", moved),
            ("seeds", lambda r: r["seeds"]),
        ],
    )


def generated_tables(res: dict, folder: str) -> dict[str, str]:
    """{block name: content} of every generated block of a study report: '<folder>/claims',
    '<folder>/table1', '/table4', '/criteria', '/fig2' (when the paper's part ran) and
    '<folder>/nm' (when the N:M rows ran)."""
    out = {}
    if res.get("table1"):
        ovl = {
            (r["network"], r["sparsity"], r["criterion"]): r["overlap_mean"] for r in res["overlap"]
        }
        net, sp = (lambda r: r["network"]), (lambda r: f"{r['sparsity']:.0%}")
        out[f"{folder}/claims"] = claim_lines(res)
        out[f"{folder}/table1"] = render_table(
            res["table1"],
            [
                ("network", net),
                ("sparsity", sp),
                ("method", lambda r: r["method"]),
                ("epochs", _cost),
                ("test acc. (%)", _acc),
                ("seeds", lambda r: r["seeds"]),
            ],
        )
        out[f"{folder}/table4"] = render_table(
            res["table4"],
            [
                ("network", net),
                ("sparsity", sp),
                ("search epochs", lambda r: r["epochs"]),
                ("test acc. (%)", _acc),
                (
                    "overlap with magnitude mask",
                    lambda r: f"{r['overlap_with_magnitude_mean']:.4f}",
                ),
            ],
        )

        def ov(r):
            o = ovl.get((r["network"], r["sparsity"], r["criterion"]))
            return None if o is None else f"{o:.4f}"

        out[f"{folder}/criteria"] = render_table(
            res["criteria_accuracy"],
            [
                ("network", net),
                ("sparsity", sp),
                ("criterion", lambda r: r["criterion"]),
                ("test acc. (%)", _acc),
                ("overlap with jackpot", ov),
            ],
        )
        out[f"{folder}/fig2"] = render_table(
            res["fig2"],
            [
                ("network", net),
                ("sparsity", sp),
                ("weights", lambda r: r["weights"]),
                ("test acc. (%)", _acc),
            ],
        )
    if res.get("nm"):
        out[f"{folder}/nm"] = _nm_table(res)
    return out
