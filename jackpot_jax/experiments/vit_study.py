"""Do jackpots exist in vision transformers? `python -m jackpot_jax.study --config configs/study_fashion_mnist_vit.py --workdir DIR`.

One small ViT (`config.network`), pretrained here on a Fashion-MNIST subset, one dense
checkpoint per seed; every run is a piece (`jackpot_jax.experiments.runner`), so rerunning the
command resumes, and `--config.workers=N` shares the pieces among N processes.

1. **Recipe selection** on the selection seed's final-epoch VALIDATION accuracy (5,000 ... or
   `base.val_examples` images held out of the training set; its runs never evaluate the test
   split) at `select_sparsity`: coordinate descent (`common.select`) over the optimiser on
   the scores with its learning rate (SGD or AdamW), the pruned-score value and the budget
   (`global_magnitude`: per-layer counts fixed by the magnitude mask; `global`: the scores
   ranked across layers, so the search may move counts between layers); the same for the
   weight-tuning baseline's optimiser and learning rate.
2. **Final runs** on fresh seeds at every level of `sparsities` and `patterns` (2:4): the
   jackpot with the selected recipe after `search_epochs`, against the magnitude mask and a
   random mask (no tuning), and the magnitude mask with its weights tuned for as many epochs
   (the selected weight-tuning recipe); the overlap of the jackpot with the magnitude, SNIP,
   GraSP and random masks; the jackpot's sparsity per layer (module type x depth, plotted).

Writes DIR/report.md (`vit_report`), DIR/results.json (per-seed values, paired differences with
95% intervals, provenance) and DIR/module_sparsity.png. Its pieces live in `vit_pieces`; its
command line is `registry`'s (study ``"vit"``).
"""

from __future__ import annotations

import os

import ml_collections

from jackpot_jax import utils
from jackpot_jax.errors import ConfigError
from jackpot_jax.experiments import provenance, runner
from jackpot_jax.experiments.common import plain, select
from jackpot_jax.experiments.stats import STD_LABEL, difference_record, per_seed, summary_row
from jackpot_jax.experiments.study_pieces import CRITERIA
from jackpot_jax.experiments.vit_pieces import VitStudy, level_of, module_of
from jackpot_jax.experiments.vit_report import answers, write_report

METHODS = ("dense", "magnitude", "random", "magnitude+weight_tuning", "jackpot")


def experiments(st: VitStudy, c) -> dict:
    """Selection, then the final runs; each asks `st` for its pieces."""
    res = {"sweep": [], "selected": {}, "rows": [], "overlap": [], "layers": [], "complete": True}
    seeds = list(c.final_seeds)
    dense = [st.pretrained(c.network, s) for s in seeds]  # planned before the selection ends
    selected, finished = {}, True
    for kind, start, levels, factors in (
        ("jackpot", c.jackpot_start, c.jackpot_levels, c.jackpot_factors),
        ("weight_tuning", c.wt_start, c.wt_levels, c.wt_factors),
    ):
        levels = {f: tuple(v) for f, v in plain(levels).items()}
        # The baseline's magnitude mask takes the selected jackpot's budget (per-layer counts).
        fixed = {} if kind == "jackpot" else {"distribution": selected["jackpot"]["distribution"]}
        if kind == "weight_tuning" and not finished:
            break  # waits for the jackpot's selection (planning only)

        def evaluate(recipe, kind=kind):  # `select` adds the fixed factors
            r = st.recipe_run(kind, c.select_seed, recipe, c.select_sparsity, selection=True)
            return None if r is None else r["final_val_accuracy"]

        best, records, done = select(
            evaluate, plain(start), levels, factors, c.max_rounds, {"method": kind}, fixed
        )
        finished &= done
        selected[kind] = best
        res["sweep"] += records
    dense_sel = st.pretrained(c.network, c.select_seed, evaluate_test=False)
    res["selected"] = {
        "jackpot": selected.get("jackpot"),
        "weight_tuning": selected.get("weight_tuning"),
        "selection_finished": finished,
        "dense_val_accuracy": dense_sel.get("final_val_accuracy"),
    }
    if not finished:  # the final runs wait for the selection (planning only)
        res["complete"] = False
        return res
    distribution = selected["jackpot"]["distribution"]
    finals = [(level, distribution, "") for level in [*c.sparsities, *c.patterns]]
    if distribution != "global" and c.get("global_budget_level"):
        # Where would the jackpot prune if it could move counts between layers? The selected
        # recipe under the `global` budget (no weight-tuning baseline).
        finals.append((c.global_budget_level, "global", " global"))
    for level, budget, suffix in finals:
        sparsity, pattern = level_of(level)
        label = (pattern or f"{sparsity:g}") + suffix
        recipe = dict(selected["jackpot"], distribution=budget)
        jack = [st.recipe_run("jackpot", s, recipe, level) for s in seeds]
        tuned = (
            [st.recipe_run("weight_tuning", s, selected["weight_tuning"], level) for s in seeds]
            if not suffix
            else []
        )
        masks = [
            None if j is None else st.masks_report(s, level, j["dir"], budget)
            for s, j in zip(seeds, jack)
        ]

        def values(runs, get):
            return per_seed(seeds, [None if r is None else get(r) for r in runs])

        per_method = {
            "dense": values(dense, lambda r: r["test_accuracy"]),
            "magnitude": values(masks, lambda r: r["criteria"]["magnitude"]["test_accuracy"]),
            "random": values(masks, lambda r: r["criteria"]["random"]["test_accuracy"]),
            "magnitude+weight_tuning": values(tuned, lambda r: r["test_accuracy"]),
            "jackpot": values(jack, lambda r: r["test_accuracy"]),
        }
        for method in METHODS:
            if method == "magnitude+weight_tuning" and suffix:
                continue
            epochs = {
                "dense": c.pretrain_epochs,
                "magnitude+weight_tuning": c.tune_epochs,
                "jackpot": c.search_epochs,
            }.get(method, 0)
            fields = {
                "level": label,
                "sparsity": sparsity,
                "budget": "n:m" if pattern else budget,
                "method": method,
                "epochs": epochs,
            }
            row = summary_row(fields, test_acc=per_method[method])
            if method == "jackpot":
                row["pattern_satisfied"] = (
                    all(j is not None and j.get("pattern_satisfied") is True for j in jack)
                    if pattern
                    else None
                )
            res["rows"].append(row)
        for name in CRITERIA:
            fields = {"level": label, "sparsity": sparsity, "criterion": name}
            ov = values(masks, lambda r, n=name: r["criteria"][n]["overlap_with_jackpot"])
            res["overlap"].append(summary_row(fields, overlap=ov))
        for mask_kind in ("jackpot", "magnitude"):
            layer_names = sorted({k for m in masks if m for k in m["layers"][mask_kind]})
            for path in layer_names:
                where = module_of(path)
                fields = {
                    "level": label,
                    "mask": mask_kind,
                    "layer": path,
                    "module": where[0] if where else "other",
                    "depth": where[1] if where else -1,
                }
                pruned = values(masks, lambda r, p=path, k=mask_kind: r["layers"][k][p])
                res["layers"].append(summary_row(fields, pruned=pruned))
    return res


def differences(res: dict) -> list[dict]:
    """Per level: jackpot - dense, jackpot - magnitude + weight tuning, jackpot - magnitude."""
    out = []
    levels = list(dict.fromkeys(r["level"] for r in res["rows"]))

    def row(level, method):
        return next((r for r in res["rows"] if r["level"] == level and r["method"] == method), None)

    for level in levels:
        a = row(level, "jackpot")
        for other in ("dense", "magnitude+weight_tuning", "magnitude"):
            b = row(level, other)
            if a is None or b is None:
                continue
            d = difference_record(
                f"{level}: jackpot - {other}",
                {"table": "rows", "match": {"level": level, "method": "jackpot"}},
                {"table": "rows", "match": {"level": level, "method": other}},
                a["per_seed"]["test_acc"],
                b["per_seed"]["test_acc"],
            )
            if d is not None:
                out.append(d)
    return out


def run_vit_study(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs (or resumes) the ViT study and writes the report; returns results.json's content."""
    if config.quick:
        config = runner.apply_quick(config)
    c = config
    if c.select_seed in tuple(c.final_seeds):
        raise ConfigError(
            f"final_seeds {tuple(c.final_seeds)} include the selection seed {c.select_seed}; "
            "the final runs need fresh seeds"
        )
    run = provenance.start("study", c.get("workers", 1))
    # The selection decides the final runs: plan, run, re-plan.
    ran_by_workers = runner.run_replanned(VitStudy, experiments, c, workdir)
    st = VitStudy(c, workdir)
    res = experiments(st, c)
    res["differences"] = differences(res)
    res["statistics"] = {"std": STD_LABEL, "interval": "95% t-interval of paired differences"}
    b = c.base
    res["settings"] = {
        "network": c.network,
        "model_options": plain(b.model_options),
        "dataset": b.dataset,
        "train_examples": len(st.ds.train),
        "val_examples": len(st.ds.val),
        "test_examples": len(st.ds.test),
        "pretrain": {
            "epochs": c.pretrain_epochs,
            "optimizer": b.pretrain.optimizer,
            "lr": b.pretrain.lr,
            "weight_decay": b.pretrain.weight_decay,
            "schedule": b.pretrain.schedule,
            "batch_size": b.pretrain.batch_size or b.batch_size,
        },
        "search": {
            "epochs": c.search_epochs,
            "batch_size": b.search.batch_size or b.batch_size,
            "schedule": b.search.schedule,
            "weight_decay": b.search.weight_decay,
            "score_kept": b.search.score_kept,
        },
        "tune": {
            "epochs": c.tune_epochs,
            "batch_size": b.finetune.batch_size or b.batch_size,
            "schedule": b.finetune.schedule,
            "weight_decay": b.finetune.weight_decay,
        },
        "select_seed": c.select_seed,
        "select_sparsity": c.select_sparsity,
        "max_rounds": c.max_rounds,
        "jackpot_start": plain(c.jackpot_start),
        "jackpot_factors": list(c.jackpot_factors),
        "jackpot_levels": {k: list(v) for k, v in plain(c.jackpot_levels).items()},
        "wt_start": plain(c.wt_start),
        "wt_factors": list(c.wt_factors),
        "wt_levels": {k: list(v) for k, v in plain(c.wt_levels).items()},
        "final_seeds": list(c.final_seeds),
        "sparsities": list(c.sparsities),
        "patterns": list(c.patterns),
        "quick": c.quick,
        "selection_evaluates_test": False,
    }
    res["invocations"] = provenance.finish(run, st.workdir, st.ran + ran_by_workers)
    res["run"] = res["invocations"][-1]
    utils.write_json(os.path.join(st.workdir, "results.json"), res)
    write_report(res, st.workdir)
    return res


def lines(res: dict) -> list[str]:
    """What the command prints when the study is done: its answers, once every run is in."""
    return answers(res) if res.get("complete") else []
