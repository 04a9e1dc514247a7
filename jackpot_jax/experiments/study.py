"""Reproduce the paper's findings: `python -m jackpot_jax.study --config configs/study_fashion_mnist.py --workdir DIR`.

Every experiment is a piece (`jackpot_jax.experiments.runner`): one pipeline run in its own
folder under DIR/<network>/seed<k>/, or one JSON file of mask evaluations; rerunning the
command resumes an interrupted study. Every row of one seed uses the same pre-trained
checkpoint.

The report (DIR/report.md, PNG plots beside it, DIR/results.json) reads only final-epoch test
accuracies; validation accuracies (held out of the training set) drive the convergence plots.
results.json keeps every row's per-seed values (`per_seed`), the paired differences behind
the verdicts (`differences`) and the invocations' provenance.
"""

from __future__ import annotations

import os

import ml_collections

from jackpot_jax import method as jm
from jackpot_jax import utils
from jackpot_jax.errors import ConfigError
from jackpot_jax.experiments import provenance, runner
from jackpot_jax.experiments.claims import assess_claims
from jackpot_jax.experiments.stats import STD_LABEL, per_seed, summary_row
from jackpot_jax.experiments.study_pieces import CRITERIA, Study
from jackpot_jax.experiments.study_report import write_report

# Parts of the study `experiments` selects: the paper's five claims, the N:M rows.
EXPERIMENTS = ("paper", "nm")
TABLES = ("table1", "overlap", "criteria_accuracy", "fig5", "table4", "fig2", "nm")


def run_study(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs (or resumes) the study and writes the report; returns results.json's content."""
    if config.quick:
        config = runner.apply_quick(config)
    c = config
    run = provenance.start("study", c.get("workers", 1))
    ran_by_workers = 0
    if c.get("workers", 1) > 1:
        planner = Study(c, workdir, plan=True)
        experiments(planner, c)
        ran_by_workers = runner.run_workers(
            Study, c, workdir, list(planner.plan.values()), c.workers
        )
    st = Study(c, workdir)
    res = experiments(st, c)
    res["differences"] = []
    res["claims"] = assess_claims(res, c)
    res["statistics"] = {"std": STD_LABEL, "interval": "95% t-interval of paired differences"}
    res["settings"] = {
        "networks": list(c.networks),
        "seeds": list(c.seeds),
        "short_epochs": c.short_epochs,
        "long_epochs": c.long_epochs,
        "finetune_epochs": c.finetune_epochs,
        "pretrain_epochs": c.pretrain_epochs,
        "table_sparsities": list(c.table_sparsities),
        "curve_sparsities": list(c.curve_sparsities),
        "quick": c.quick,
        "dataset": c.base.dataset,
        "train_examples": len(st.ds.train),
        "val_examples": len(st.ds.val),
        "test_examples": len(st.ds.test),
        "batch_size": c.base.batch_size,
        "search_lr": c.base.search.lr,
        "score_init": [c.base.search.score_kept, c.base.search.score_pruned],
        "distribution": c.base.search.distribution,
        "experiments": list(c.get("experiments", ("paper",))),
        "nm_pattern": c.get("nm_pattern"),
    }
    res["invocations"] = provenance.finish(run, st.workdir, st.ran + ran_by_workers)
    res["run"] = res["invocations"][-1]
    utils.write_json(os.path.join(st.workdir, "results.json"), res)
    write_report(res, st.workdir)
    return res


def experiments(st: Study, c: ml_collections.ConfigDict) -> dict:
    """Every experiment of the study, in order; each asks `st` for the pieces it reads."""
    res = {t: [] for t in TABLES}
    chosen = tuple(c.get("experiments", ("paper",)))
    unknown = sorted(set(chosen) - set(EXPERIMENTS))
    if unknown:
        raise ConfigError(
            f"experiments={chosen!r}: unknown {unknown}; expected a subset of {EXPERIMENTS}"
        )
    if "nm" in chosen:
        res["nm"] = nm_rows(st, c)
    for net in c.networks if "paper" in chosen else ():
        _paper_rows(st, c, net, res)
    return res


def _paper_rows(st: Study, c, net: str, res: dict) -> None:
    S, L, F = c.short_epochs, c.long_epochs, c.finetune_epochs
    seeds = list(c.seeds)

    def acc(runs, key="test_accuracy", on=seeds):
        return per_seed(on, [r[key] for r in runs])

    # Table 1 -----------------------------------------------------------------------------
    for p in c.table_sparsities:

        def add(method, epochs, cost, runs, key="test_accuracy"):
            fields = {"network": net, "sparsity": p, "method": method}
            fields.update(epochs=epochs, cost=cost)
            res["table1"].append(summary_row(fields, test_acc=acc(runs, key)))

        add("dense", c.pretrain_epochs, "T", [st.pretrained(net, s) for s in seeds])
        crit = [st.criteria(net, s, p) for s in seeds]
        for name in CRITERIA:
            add(name, 0, "", [x[name] for x in crit])
        add("magnitude+finetune", S, "T", [st.finetune(net, s, p, S, "magnitude") for s in seeds])
        snip = [st.finetune(net, s, p, S, "snip", weights="random") for s in seeds]
        add("snip+train", S, "T", snip)
        for e in (S, L):
            add("jackpot", e, "S", [st.search(net, s, p, e) for s in seeds])
        tuned = [
            st.finetune(net, s, p, F, "jackpot", jackpot=st.search(net, s, p, S)["dir"])
            for s in seeds
        ]
        add("jackpot+finetune", S + F, "S+T", tuned)
    # Fig. 3 / 4: criteria accuracy and overlap across sparsities -----------------------------
    curve_seeds = seeds if c.curves_all_seeds else seeds[:1]
    for p in c.curve_sparsities:
        crit = [st.criteria(net, s, p) for s in curve_seeds]
        for name in (*CRITERIA, "jackpot"):
            fields = {"network": net, "sparsity": p, "criterion": name}
            runs = [x[name] for x in crit]
            res["criteria_accuracy"].append(summary_row(fields, test_acc=acc(runs, on=curve_seeds)))
            if name != "jackpot":
                overlap = acc(runs, "overlap_with_jackpot", curve_seeds)
                res["overlap"].append(summary_row(fields, overlap=overlap))
    # Fig. 5: warm-up from each criterion, validation accuracy per epoch ----------------------
    for init in CRITERIA:
        runs = [st.search(net, s, c.warmup_sparsity, L, init=init) for s in curve_seeds]
        curves = [
            [r["init_mask_val_accuracy"]] + [m["val_accuracy"] for m in r["metrics"]] for r in runs
        ]
        fields = {"network": net, "sparsity": c.warmup_sparsity, "init": init}
        res["fig5"].append(
            summary_row(
                fields,
                val_acc=per_seed(curve_seeds, curves),
                final_test_acc=acc(runs, on=curve_seeds),
            )
        )
    # Table 4: search epochs against accuracy and overlap with the magnitude mask ------------
    for e in c.table4_epochs:
        runs = [st.search(net, s, c.warmup_sparsity, e) for s in seeds]
        fields = {"network": net, "sparsity": c.warmup_sparsity, "epochs": e}
        res["table4"].append(
            summary_row(
                fields,
                test_acc=acc(runs),
                overlap_with_magnitude=acc(runs, "overlap_with_init"),
            )
        )
    # Fig. 2: pre-trained against randomly initialised weights -----------------------------
    for p in c.curve_sparsities:
        for weights in ("pretrained", "random"):
            runs = [st.search(net, s, p, S, weights=weights) for s in curve_seeds]
            fields = {"network": net, "sparsity": p, "weights": weights, "epochs": S}
            res["fig2"].append(summary_row(fields, test_acc=acc(runs, on=curve_seeds)))


def nm_rows(st: Study, c: ml_collections.ConfigDict) -> list[dict]:
    """N:M sub-networks (``c.nm_pattern``) against the dense network, each seed's one
    pre-trained checkpoint: the magnitude N:M mask without tuning (the search's starting
    mask), the N:M jackpot after ``short_epochs`` of search, and the magnitude N:M mask with
    the weights fine-tuned as long; with ``nm_unstructured_baseline`` also the unstructured
    magnitude mask and jackpot at the same sparsity (1 - n/m) and search budget."""
    pattern = jm.parse_pattern(c.nm_pattern)
    if pattern is None:
        raise ConfigError("experiments include 'nm' but nm_pattern is empty; set e.g. '2:4'")
    S, p, name = c.short_epochs, pattern.sparsity, str(pattern)
    rows = []
    for net in c.networks:
        seeds = list(c.seeds)

        def add(
            structure, method, epochs, cost, runs, key="test_accuracy", checked="pattern_satisfied"
        ):
            fields = {
                "network": net,
                "structure": structure,
                "sparsity": 0.0 if structure == "dense" else p,
                "method": method,
                "epochs": epochs,
                "cost": cost,
            }
            q = {"test_acc": per_seed(seeds, [r[key] for r in runs])}
            if method == "jackpot":
                q["overlap_with_init"] = per_seed(seeds, [r["overlap_with_init"] for r in runs])
            row = summary_row(fields, **q)
            if structure == name:
                row["dense_kept"] = sorted({k for r in runs for k in r.get("dense_kept", [])})
                # each row checks its own masks: the magnitude row its search's starting mask
                row["pattern_satisfied"] = all(r.get(checked) is True for r in runs)
            rows.append(row)

        add("dense", "dense", c.pretrain_epochs, "T", [st.pretrained(net, s) for s in seeds])
        jackpot = [st.search(net, s, p, S, pattern=name) for s in seeds]
        add(
            name,
            "magnitude",
            0,
            "",
            jackpot,
            key="init_mask_test_accuracy",
            checked="init_mask_pattern_satisfied",
        )
        add(name, "jackpot", S, "S", jackpot)
        tuned = [st.finetune(net, s, p, S, "magnitude", pattern=name) for s in seeds]
        add(name, "magnitude+finetune", S, "T", tuned)
        if c.get("nm_unstructured_baseline", True):
            free = [st.search(net, s, p, S) for s in seeds]
            add("unstructured", "magnitude", 0, "", free, key="init_mask_test_accuracy")
            add("unstructured", "jackpot", S, "S", free)
    return rows


def lines(res: dict) -> list[str]:
    """What the command prints when the study is done: each claim's verdict per network."""
    return [
        f"claim {claim['claim']} {claim['network']}: {claim['verdict']}"
        for claim in sorted(res["claims"], key=lambda x: (x["claim"], x["network"]))
    ]
