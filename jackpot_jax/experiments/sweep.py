"""Search efficiency: `python -m jackpot_jax.sweep --config configs/sweep_search_fashion_mnist.py --workdir DIR`.

Stage 1 selects, per network, a jackpot recipe (batch size, lr, pruned-score level, lr
schedule, mask update) and a weight-tuning recipe (magnitude mask + fine-tuning: batch size,
lr) by coordinate descent on one seed's final-epoch VALIDATION accuracy at one epoch budget.
Stage 2 runs the official jackpot recipe, the selected one and the selected weight tuning on
fresh seeds at several budgets and reports final-epoch TEST accuracy.

Every run is a piece (`jackpot_jax.experiments.runner`: one folder under DIR/<network>/seed<k>/,
read back when its summary exists; the same pre-trained checkpoint per seed), so rerunning
the command resumes, and `--config.workers=N` shares the pieces among N processes (planned
again after each batch: coordinate descent decides its next points from finished runs). The
selection seed's runs are made with `evaluate_test=False`: they never read the test split.
Writes DIR/report.md (`sweep_report`), DIR/results.json (per-seed values, paired differences,
provenance) and DIR/accuracy_vs_epochs.png. Recipes as overrides and pieces, and the
coordinate search, are `common`'s; the command line is `registry`'s (study ``"sweep"``).
"""

from __future__ import annotations

import os

import ml_collections

from jackpot_jax import utils
from jackpot_jax.errors import ConfigError
from jackpot_jax.experiments import provenance, runner
from jackpot_jax.experiments.common import plain, recipe_overrides, recipe_run, select
from jackpot_jax.experiments.stats import STD_LABEL, per_seed, summary_row
from jackpot_jax.experiments.study_pieces import Study
from jackpot_jax.experiments.sweep_report import METHODS, assess, write_report


def recipe_name(kind: str, recipe: dict, epochs: int) -> str:
    """The piece folder of a recipe: every setting in the name, so equal recipes share runs."""
    if kind == "jackpot":
        return (
            f"jackpot_b{recipe['batch_size']}_lr{recipe['lr']:g}_s{recipe['score_pruned']:g}"
            f"_{recipe['schedule']}_{recipe['mask_update']}_e{epochs}"
        )
    return f"wt_b{recipe['batch_size']}_lr{recipe['lr']:g}_e{epochs}"


def run_recipe(
    st: Study,
    kind: str,
    network: str,
    seed: int,
    recipe: dict,
    epochs: int,
    sparsity: float,
    selection: bool = False,
) -> dict | None:
    """The summary of one recipe's run (run now, or read back), or None while it is only
    planned. A `selection` run (and its seed's dense checkpoint) does not evaluate the test
    split."""
    mode, over = recipe_overrides(kind, recipe, epochs)
    name = recipe_name(kind, recipe, epochs)
    return recipe_run(st, network, seed, name, mode, over, sparsity, selection)


def design_for(c, network: str) -> dict:
    """The selection design of one network: starting points, levels and rounds, with
    `c.per_network[network]` (if any) overriding the sweep-wide ones."""
    d = {
        "jackpot_start": plain(c.jackpot_start or c.official),
        "jackpot_levels": plain(c.jackpot_levels),
        "wt_start": plain(c.wt_start),
        "wt_levels": plain(c.wt_levels),
        "max_rounds": c.max_rounds,
        "note": "",
        "final_seeds": tuple(c.final_seeds),
    }
    over = plain(c.per_network.get(network) or {})
    unknown = sorted(set(over) - set(d))
    if unknown:
        raise ConfigError(
            f"per_network.{network}: unknown keys {unknown}; expected some of {sorted(d)}"
        )
    for k, v in over.items():
        d[k] = dict(d[k], **plain(v)) if isinstance(d[k], dict) else v
    d["final_seeds"] = tuple(d["final_seeds"])
    if c.select_seed in d["final_seeds"]:
        raise ConfigError(
            f"{network}: final_seeds {d['final_seeds']} include the selection seed "
            f"{c.select_seed}; the final runs need fresh seeds"
        )
    for k in ("jackpot_levels", "wt_levels"):
        d[k] = {f: tuple(v) for f, v in d[k].items()}
    return d


def experiments(st: Study, c) -> dict:
    """The selection, then the final runs of every network; each asks `st` for its pieces."""
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
                r = run_recipe(
                    st, kind, net, c.select_seed, point, c.select_epochs, c.sparsity, True
                )
                return None if r is None else r["final_val_accuracy"]

            best, records, done = select(
                evaluate,
                design[f"{prefix}_start"],
                design[f"{prefix}_levels"],
                factors,
                design["max_rounds"],
                {"network": net, "method": kind},
            )
            finished &= done
            selected[kind] = best
            res["sweep"] += records
        dense_sel = st.pretrained(net, c.select_seed, evaluate_test=False)
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
            "jackpot_official": ("jackpot", plain(c.official)),
            "jackpot_selected": ("jackpot", selected["jackpot"]),
            "weight_tuning_selected": ("weight_tuning", selected["weight_tuning"]),
        }
        dense = [st.pretrained(net, s)["test_accuracy"] for s in seeds]
        fields = {"network": net, "method": "dense", "epochs": c.pretrain_epochs}
        res["rows"].append(summary_row(fields, test_acc=per_seed(seeds, dense)))
        rows = []
        for e in sorted(c.final_epochs, reverse=True):  # the target's budget first
            for method in METHODS:
                kind, recipe = recipes[method]
                runs = [run_recipe(st, kind, net, s, recipe, e, c.sparsity) for s in seeds]
                accs = [None if r is None else r["test_accuracy"] for r in runs]
                fields = {"network": net, "method": method, "epochs": e, "recipe": recipe}
                rows.append(summary_row(fields, test_acc=per_seed(seeds, accs)))
        res["rows"] += sorted(rows, key=lambda r: (METHODS.index(r["method"]), r["epochs"]))
    return res


def run_sweep(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs (or resumes) the sweep and writes the report; returns results.json's content."""
    if config.quick:
        config = runner.apply_quick(config)
    c = config
    run = provenance.start("sweep", c.get("workers", 1))
    # Coordinate descent decides its next points from finished runs: plan, run, re-plan.
    ran_by_workers = runner.run_replanned(Study, experiments, c, workdir)
    st = Study(c, workdir)
    res = experiments(st, c)
    res["settings"] = {
        "networks": list(c.networks),
        "sparsity": c.sparsity,
        "select_seed": c.select_seed,
        "select_epochs": c.select_epochs,
        "final_seeds": list(c.final_seeds),
        "final_epochs": list(c.final_epochs),
        "pretrain_epochs": c.pretrain_epochs,
        "official": plain(c.official),
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
        "selection_evaluates_test": False,
    }
    res["statistics"] = {"std": STD_LABEL, "interval": "95% t-interval of paired differences"}
    res["differences"] = []
    res["assessment"] = assess(res)  # appends its paired differences to res["differences"]
    res["invocations"] = provenance.finish(run, st.workdir, st.ran + ran_by_workers)
    res["run"] = res["invocations"][-1]
    utils.write_json(os.path.join(st.workdir, "results.json"), res)
    write_report(res, st.workdir)
    return res


def lines(res: dict) -> list[str]:
    """What the command prints when the sweep is done: each network's selected recipes."""
    return [
        f"{net}: jackpot {sel['jackpot']}, weight tuning {sel['weight_tuning']}"
        for net, sel in res["selected"].items()
    ]
