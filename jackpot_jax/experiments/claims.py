"""The paper's five claims, each with a verdict and the numbers behind it. A verdict on a
difference of accuracies also gives the paired difference over seeds with its 95% t-interval
(`stats.paired_difference`), recorded in results.json's `differences`, and says when the
interval contains 0 (within noise)."""

from __future__ import annotations

from jackpot_jax.experiments import verdicts as vd
from jackpot_jax.experiments.stats import difference_record, difference_text, paired_difference

CLAIMS = {
    1: "Jackpots exist: a sparse mask over untouched pre-trained weights keeps dense accuracy.",
    2: "Jackpots in the pre-trained network beat sub-networks searched in a random-init network.",
    3: "Criteria masks overlap the jackpot, and magnitude overlaps most.",
    4: "The magnitude warm-up cuts the search cost several-fold (vs. a random warm-up).",
    5: "Fine-tuning after the search adds little.",
}

# The fields that pick one row of each table.
_KEYS = {
    "table1": ("network", "sparsity", "method", "epochs"),
    "fig2": ("network", "sparsity", "weights"),
}


def find_row(rows, **kw):
    for r in rows:
        if all(r.get(k) == v for k, v in kw.items()):
            return r
    return None


def _paired(res: dict, name: str, table: str, a: dict, b: dict) -> dict | None:
    """The paired difference a - b (points) of two rows of `table`, appended to
    res['differences']."""
    refs = []
    for row in (a, b):
        refs.append({"table": table, "match": {k: row[k] for k in _KEYS[table]}})
    rec = difference_record(
        name, refs[0], refs[1], a["per_seed"]["test_acc"], b["per_seed"]["test_acc"]
    )
    if rec is not None:
        res.setdefault("differences", []).append(rec)
    return rec


def assess_claims(res, c) -> list[dict]:
    """The paper's five claims, each with a verdict and the numbers behind it."""
    out = []
    p = c.warmup_sparsity
    S, L = c.short_epochs, c.long_epochs
    for net in c.networks:
        t1 = [r for r in res["table1"] if r["network"] == net]
        dense = find_row(t1, sparsity=p, method="dense")
        jp_s = find_row(t1, sparsity=p, method="jackpot", epochs=S)
        jp_l = find_row(t1, sparsity=p, method="jackpot", epochs=L)
        mag = find_row(t1, sparsity=p, method="magnitude")
        ft = find_row(t1, sparsity=p, method="jackpot+finetune")
        if dense and jp_s and jp_l and mag:
            gap_s = 100 * (dense["test_acc_mean"] - jp_s["test_acc_mean"])
            gap_l = 100 * (dense["test_acc_mean"] - jp_l["test_acc_mean"])
            gain = 100 * (jp_l["test_acc_mean"] - mag["test_acc_mean"])
            verdict = (
                "supported"
                if min(gap_s, gap_l) <= 1.0
                else ("partly supported" if min(gap_s, gap_l) <= 3.0 else "not supported")
            )
            d_s = _paired(res, f"{net}: jackpot@{S} - dense", "table1", jp_s, dense)
            d_l = _paired(res, f"{net}: jackpot@{L} - dense", "table1", jp_l, dense)
            out.append(
                {
                    "network": net,
                    "claim": 1,
                    "verdict": verdict,
                    "text": (
                        f"jackpot at {p:.0%} sparsity, weights untouched: {100 * jp_s['test_acc_mean']:.2f}% "
                        f"after {S} search epochs and {100 * jp_l['test_acc_mean']:.2f}% after {L}, against "
                        f"dense {100 * dense['test_acc_mean']:.2f}% (gap {gap_s:.2f} / {gap_l:.2f} points; "
                        f"the magnitude mask alone: {100 * mag['test_acc_mean']:.2f}%, the search adds "
                        f"{gain:.2f} points). Criterion: gap <= 1 point supported, <= 3 partly. "
                        f"Paired over seeds, jackpot - dense: {difference_text(d_s)} after {S} "
                        f"epochs, {difference_text(d_l)} after {L}."
                    ),
                }
            )
        f2 = [r for r in res["fig2"] if r["network"] == net]
        diffs = []
        for q in c.curve_sparsities:
            a, b = (
                find_row(f2, sparsity=q, weights="pretrained"),
                find_row(f2, sparsity=q, weights="random"),
            )
            if a and b:
                d = _paired(res, f"{net}: pretrained - random at {q:.0%}", "fig2", a, b)
                diffs.append((q, 100 * (a["test_acc_mean"] - b["test_acc_mean"]), d))
        if diffs:
            wins = sum(d > 0 for _, d, _ in diffs)
            out.append(
                {
                    "network": net,
                    "claim": 2,
                    "verdict": "supported"
                    if wins == len(diffs)
                    else ("partly supported" if wins else "not supported"),
                    "text": "pre-trained minus random-init sub-network accuracy, same search "
                    f"({S} epochs), paired over seeds: "
                    + ", ".join(f"{q:.0%}: {difference_text(d)}" for q, _, d in diffs),
                }
            )
        ov = {
            r["criterion"]: r["overlap_mean"]
            for r in res["overlap"]
            if r["network"] == net and r["sparsity"] == p
        }
        if ov:
            best = max(ov, key=ov.get)
            verdict = (
                "supported"
                if best == "magnitude" and ov["magnitude"] > 0.9
                else ("partly supported" if best == "magnitude" else "not supported")
            )
            out.append(
                {
                    "network": net,
                    "claim": 3,
                    "verdict": verdict,
                    "text": (
                        f"overlap (Eq. 7) with the {S}-epoch jackpot at {p:.0%}: "
                        + ", ".join(
                            f"{k} {v:.4f}" for k, v in sorted(ov.items(), key=lambda kv: -kv[1])
                        )
                        + ". Criterion: magnitude highest and > 0.9. Note that two masks at sparsity p "
                        "agree on at least 1 - 2(1 - p) of the weights by counting alone."
                    ),
                }
            )
        f5 = {r["init"]: r for r in res["fig5"] if r["network"] == net}
        if "magnitude" in f5 and "random" in f5:
            target = f5["random"]["val_acc_mean"][-1]
            curve = f5["magnitude"]["val_acc_mean"]
            reach = next((e for e, v in enumerate(curve) if v >= target), None)
            epochs = len(curve) - 1
            if reach is None:
                verdict, txt = "not supported", "never reaches it"
            else:
                verdict = "supported" if reach <= epochs / 3 else "not supported"
                txt = f"reaches it after {reach} epoch(s) (epoch 0 = the mask before search)"
            out.append(
                {
                    "network": net,
                    "claim": 4,
                    "verdict": verdict,
                    "text": (
                        f"random warm-up ends at {100 * target:.2f}% validation accuracy after {epochs} "
                        f"epochs; the magnitude warm-up {txt}. Criterion: within a third of the epochs."
                    ),
                }
            )
        if ft and jp_s:
            add = 100 * (ft["test_acc_mean"] - jp_s["test_acc_mean"])
            d_f = _paired(res, f"{net}: jackpot+finetune - jackpot@{S}", "table1", ft, jp_s)
            out.append(
                {
                    "network": net,
                    "claim": 5,
                    "verdict": "supported" if add <= 1.0 else "not supported",
                    "text": (
                        f"fine-tuning the {S}-epoch jackpot for {c.finetune_epochs} epochs: "
                        f"{100 * jp_s['test_acc_mean']:.2f}% -> {100 * ft['test_acc_mean']:.2f}% "
                        f"({add:+.2f} points; paired over seeds: {difference_text(d_f)}). "
                        "Criterion: adds <= 1 point."
                    ),
                }
            )
    return out


# The margin (points) of claim 1 ("keeps dense accuracy") and claim 5 ("adds little").
CLAIM_MARGIN = 1.0


def _diff(a: dict | None, b: dict | None) -> dict | None:
    """a - b in points, paired over seeds, with its interval; None without per-seed values."""
    if not a or not b or "per_seed" not in a or "per_seed" not in b:
        return None
    return paired_difference(a["per_seed"]["test_acc"], b["per_seed"]["test_acc"])


def _means_only(a_name: str, b_name: str, a: dict, b: dict) -> str:
    d = 100 * (a["test_acc_mean"] - b["test_acc_mean"])
    return (
        f"{a_name} minus {b_name}: {d:+.2f} points on the means "
        f"({100 * a['test_acc_mean']:.2f}% against {100 * b['test_acc_mean']:.2f}%); "
        "no per-seed values, so no interval and no verdict."
    )


def claim_lines(res: dict) -> str:
    """The paper's claims as bullets, each decided on the 95% interval of a paired
    difference over seeds (`verdicts`): claim 1 as equivalence with dense within
    `CLAIM_MARGIN` points, claim 2 as the difference pre-trained - random with its interval,
    claim 5 as equivalence of fine-tuning's gain with 0 within the margin, and the jackpot
    against magnitude + fine-tuning at equal epochs; claims 3 and 4 (overlaps, mean curves)
    stated as measured, with no test. Rows without per-seed values give the means and say
    that nothing is decided; one seed decides nothing."""
    st = res["settings"]
    p = res["fig5"][0]["sparsity"] if res.get("fig5") else 0.9  # the warm-up sparsity
    S, L = st["short_epochs"], st["long_epochs"]
    out = []
    for net in st["networks"]:
        t1 = [r for r in res["table1"] if r["network"] == net]
        dense = find_row(t1, sparsity=p, method="dense")
        jp_s = find_row(t1, sparsity=p, method="jackpot", epochs=S)
        jp_l = find_row(t1, sparsity=p, method="jackpot", epochs=L)
        ft = find_row(t1, sparsity=p, method="jackpot+finetune")
        mft = find_row(t1, sparsity=p, method="magnitude+finetune")
        lines = []
        for jp, e in ((jp_s, S), (jp_l, L)):
            if jp and dense:
                name = f"the {e}-epoch jackpot at {p:.0%}"
                d = _diff(jp, dense)
                lines.append(
                    vd.equivalence_sentence(name, "dense", d, CLAIM_MARGIN)
                    if d
                    else _means_only(name, "dense", jp, dense)
                )
        if lines:
            out.append(f"- **Claim 1** ({CLAIMS[1]}) {net}: " + " ".join(lines))
        f2 = [r for r in res["fig2"] if r["network"] == net]
        parts = []
        for q in st["curve_sparsities"]:
            a = find_row(f2, sparsity=q, weights="pretrained")
            b = find_row(f2, sparsity=q, weights="random")
            if a and b:
                d = _diff(a, b)
                parts.append(
                    f"at {q:.0%}, "
                    + (
                        vd.difference_sentence("pre-trained", "random-init", d)
                        if d
                        else _means_only("pre-trained", "random-init", a, b)
                    )
                )
        if parts:
            out.append(f"- **Claim 2** ({CLAIMS[2]}) {net}: " + " ".join(parts))
        ov = {
            r["criterion"]: r["overlap_mean"]
            for r in res["overlap"]
            if r["network"] == net and r["sparsity"] == p
        }
        if ov:
            out.append(
                f"- **Claim 3** ({CLAIMS[3]}) {net}: overlap (Eq. 7) with the {S}-epoch jackpot "
                f"at {p:.0%}, mean over seeds: "
                + ", ".join(f"{k} {v:.4f}" for k, v in sorted(ov.items(), key=lambda kv: -kv[1]))
                + f". Two masks at {p:.0%} sparsity agree on at least {1 - 2 * (1 - p):.0%} of "
                "the weights by counting alone."
            )
        f5 = {r["init"]: r for r in res["fig5"] if r["network"] == net}
        if "magnitude" in f5 and "random" in f5:
            target = f5["random"]["val_acc_mean"][-1]
            curve = f5["magnitude"]["val_acc_mean"]
            reach = next((e for e, v in enumerate(curve) if v >= target), None)
            seeds = f5["magnitude"].get("seeds")
            out.append(
                f"- **Claim 4** ({CLAIMS[4]}) {net}: the random warm-up ends at "
                f"{100 * target:.2f}% validation accuracy after {len(curve) - 1} epochs; the "
                "magnitude warm-up's mean curve "
                + ("never reaches it" if reach is None else f"reaches it after {reach} epoch(s)")
                + f" (mean curves over {seeds} seed(s); no interval, no test)."
            )
        lines = []
        if ft and jp_s:
            d = _diff(ft, jp_s)
            name = f"fine-tuning the {S}-epoch jackpot for {st['finetune_epochs']} epochs"
            lines.append(
                vd.equivalence_sentence(
                    name + " (jackpot+finetune)", f"the {S}-epoch jackpot", d, CLAIM_MARGIN
                )
                if d
                else _means_only("jackpot+finetune", f"the {S}-epoch jackpot", ft, jp_s)
            )
        if mft and jp_s:
            d = _diff(jp_s, mft)
            name = f"the {S}-epoch jackpot"
            other = f"magnitude + {mft['epochs']} epochs of fine-tuning"
            lines.append(
                vd.difference_sentence(name, other, d) if d else _means_only(name, other, jp_s, mft)
            )
        if lines:
            out.append(f"- **Claim 5** ({CLAIMS[5]}) {net}: " + " ".join(lines))
    return "\n".join(out)
