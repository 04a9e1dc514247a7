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
provenance) and DIR/accuracy_vs_epochs.png.
"""

from __future__ import annotations

import os

import ml_collections

from jackpot_jax import utils
from jackpot_jax.experiments import provenance, runner
from jackpot_jax.experiments.stats import STD_LABEL, per_seed, summary_row
from jackpot_jax.experiments.study_pieces import Study
from jackpot_jax.experiments.sweep_report import METHODS, assess, write_report

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
    planned (a `Study` with `plan=True`: no result yet). A `selection` run (and its seed's
    dense checkpoint) does not evaluate the test split."""
    test = {"evaluate_test": False} if selection else {}
    dense = st.pretrained(network, seed, **test)
    mode, over = recipe_overrides(kind, recipe, epochs)
    over.update(test)
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
            "jackpot_official": ("jackpot", _plain(c.official)),
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
