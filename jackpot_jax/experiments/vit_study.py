"""Do jackpots exist in vision transformers? `python -m jackpot_jax.study --config configs/study_fashion_mnist_vit.py --workdir DIR`.

One small ViT (`config.network`), pretrained here on Fashion-MNIST, one dense checkpoint per
seed (or shared: `dense_of`); every run is a piece (`jackpot_jax.experiments.runner`), so
rerunning the command resumes, and `--config.workers=N` shares the pieces among N processes.

1. **Recipe selection** on the selection seed's final-epoch VALIDATION accuracy (5,000 ... or
   `base.val_examples` images held out of the training set; its runs never evaluate the test
   split) at `select_sparsity`: coordinate descent (`common.select`) for each method over a
   grid of the SAME shape (`check_config` refuses grids of different shapes), so both get as
   many selection runs: the jackpot's optimiser with its lr, budget and pruned-score value;
   weight tuning's optimiser with its lr, weight decay and batch. The report lists what each
   was given and which selected levels sit at an edge of their grid (`edges`).
2. **Final runs** on fresh seeds at every level of `sparsities` and `patterns` (2:4): the
   jackpot with the selected recipe after `search_epochs`, against the dense model, the dense
   model trained `dense_more_epochs` more (control), the magnitude mask and a random mask (no
   tuning), the magnitude mask with its weights tuned for as many epochs (the selected
   weight-tuning recipe), and the same search over a randomly initialised ViT (control, at
   `random_init_levels`); the overlap of the jackpot with the magnitude, SNIP, GraSP and random
   masks; the jackpot's sparsity per layer (module type x depth, plotted) and over every
   prunable weight (at 2:4 the patch embedding stays dense).

Writes DIR/report.md (`vit_report`: its tables and answers between generated-block markers,
the answers decided on the 95% intervals by `verdicts`), DIR/results.json (per-seed values,
paired differences with 95% intervals, what each method was given, provenance) and
DIR/module_sparsity.png. Its pieces live in `vit_pieces`; its command line is `registry`'s
(study ``"vit"``).
"""

from __future__ import annotations

import os

import ml_collections

from jackpot_jax import utils
from jackpot_jax.errors import ConfigError
from jackpot_jax.experiments import provenance, runner
from jackpot_jax.experiments.common import parse_optimizer, plain, select
from jackpot_jax.experiments.stats import STD_LABEL, difference_record, per_seed, summary_row
from jackpot_jax.experiments.study_pieces import CRITERIA
from jackpot_jax.experiments.vit_pieces import VitStudy, dense_map, level_of, module_of
from jackpot_jax.experiments.vit_report import answers, write_report

METHODS = (
    "dense",
    "dense+more_epochs",
    "magnitude",
    "random",
    "magnitude+weight_tuning",
    "jackpot",
    "jackpot_random_init",
)
# What the jackpot is compared with, in the order of the differences.
OTHERS = (
    "dense",
    "dense+more_epochs",
    "magnitude+weight_tuning",
    "magnitude",
    "jackpot_random_init",
)
KINDS = {  # selection: method -> (start, levels, factors) config fields
    "jackpot": ("jackpot_start", "jackpot_levels", "jackpot_factors"),
    "weight_tuning": ("wt_start", "wt_levels", "wt_factors"),
}


def grid_shape(c, kind: str) -> tuple[int, ...]:
    """The number of levels of each factor of `kind`'s selection grid, in visiting order."""
    _, levels, factors = KINDS[kind]
    return tuple(len(c[levels][f]) for f in c[factors])


def check_config(c) -> None:
    """ConfigError unless the final seeds are fresh, both methods' selection grids have the same
    shape (issue 29: each method gets as many selection runs, over a grid of the same shape)
    and the random-init levels are final levels."""
    if c.select_seed in tuple(c.final_seeds):
        raise ConfigError(
            f"final_seeds {tuple(c.final_seeds)} include the selection seed {c.select_seed}; "
            "the final runs need fresh seeds"
        )
    shapes = {kind: grid_shape(c, kind) for kind in KINDS}
    if shapes["jackpot"] != shapes["weight_tuning"]:
        raise ConfigError(
            f"selection grids of different shapes: jackpot {shapes['jackpot']} levels per "
            f"factor, weight tuning {shapes['weight_tuning']}; give both the same shape so "
            "both get as many selection runs"
        )
    finals = [*c.sparsities, *c.patterns]
    odd = [x for x in c.random_init_levels if x not in finals]
    if odd:
        raise ConfigError(f"random_init_levels {odd} are not among the final levels {finals}")
    dense_map(c)


def experiments(st: VitStudy, c) -> dict:
    """Selection, then the final runs; each asks `st` for its pieces."""
    res = {"sweep": [], "selected": {}, "rows": [], "overlap": [], "layers": [], "complete": True}
    seeds = list(c.final_seeds)
    # The selection seed's dense model first: the selection waits for it, the others do not.
    st.pretrained(c.network, c.select_seed, evaluate_test=False)
    dense = [st.pretrained(c.network, s) for s in seeds]  # planned before the selection ends
    selected, finished = {}, True
    for kind, (start, levels, factors) in KINDS.items():
        levels = {f: tuple(v) for f, v in plain(c[levels]).items()}
        # The baseline's magnitude mask takes the selected jackpot's budget (per-layer counts).
        fixed = {} if kind == "jackpot" else {"distribution": selected["jackpot"]["distribution"]}
        if kind == "weight_tuning" and not finished:
            break  # waits for the jackpot's selection (planning only)

        def evaluate(recipe, kind=kind):  # `select` adds the fixed factors
            r = st.recipe_run(kind, c.select_seed, recipe, c.select_sparsity, selection=True)
            return None if r is None else r["final_val_accuracy"]

        best, records, done = select(
            evaluate, plain(c[start]), levels, c[factors], c.max_rounds, {"method": kind}, fixed
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
    more = [st.dense_more(s) for s in seeds]
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
        rand = (
            [st.recipe_run("jackpot", s, recipe, level, weights="random") for s in seeds]
            if not suffix and level in tuple(c.random_init_levels)
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
            "dense+more_epochs": values(more, lambda r: r["test_accuracy"]),
            "magnitude": values(masks, lambda r: r["criteria"]["magnitude"]["test_accuracy"]),
            "random": values(masks, lambda r: r["criteria"]["random"]["test_accuracy"]),
            "magnitude+weight_tuning": values(tuned, lambda r: r["test_accuracy"]),
            "jackpot": values(jack, lambda r: r["test_accuracy"]),
            "jackpot_random_init": values(rand, lambda r: r["test_accuracy"]),
        }
        epochs = {
            "dense": c.pretrain_epochs,
            "dense+more_epochs": c.pretrain_epochs + c.dense_more_epochs,
            "magnitude+weight_tuning": c.tune_epochs,
            "jackpot": c.search_epochs,
            "jackpot_random_init": c.search_epochs,
        }
        for method in METHODS:
            if method in ("magnitude+weight_tuning", "jackpot_random_init") and not (
                tuned if method == "magnitude+weight_tuning" else rand
            ):
                continue
            fields = {
                "level": label,
                "sparsity": sparsity,
                "budget": "n:m" if pattern else budget,
                "method": method,
                "epochs": epochs.get(method, 0),
            }
            if method == "jackpot":
                # Over every prunable weight: at 2:4 the patch embedding stays dense.
                all_w = values(masks, lambda r: r["sparsity_all"]["jackpot"])
                row = summary_row(fields, test_acc=per_method[method], sparsity_all=all_w)
                row["pattern_satisfied"] = (
                    all(j is not None and j.get("pattern_satisfied") is True for j in jack)
                    if pattern
                    else None
                )
            else:
                row = summary_row(fields, test_acc=per_method[method])
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
    """Per level: the jackpot minus each of `OTHERS` (the rows that exist), paired by seed."""
    out = []
    levels = list(dict.fromkeys(r["level"] for r in res["rows"]))

    def row(level, method):
        return next((r for r in res["rows"] if r["level"] == level and r["method"] == method), None)

    for level in levels:
        a = row(level, "jackpot")
        for other in OTHERS:
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


def selection_budget(res: dict, c) -> dict:
    """What each method was given in the selection: its factors and levels, its start, how many
    runs it had, and which selected levels sit at an edge of their factor's grid."""
    out = {}
    for kind, (start, levels, factors) in KINDS.items():
        lv = {f: list(v) for f, v in plain(c[levels]).items() if f in tuple(c[factors])}
        best = res["selected"].get(kind) or {}
        out[kind] = {
            "factors": list(c[factors]),
            "levels": lv,
            "start": plain(c[start]),
            "grid_shape": list(grid_shape(c, kind)),
            "runs": sum(1 for r in res["sweep"] if r["method"] == kind),
            "edges": edges(best, lv) if best else [],
        }
    return out


def edges(best: dict, levels: dict) -> list[str]:
    """The factors whose selected level is the smallest or largest of its grid among levels
    of the same kind (the same optimiser for '<opt>/<lr>' levels; numbers for the rest): no
    point beyond it was tried."""
    out = []
    for f, lv in levels.items():
        v = best.get(f)
        if v is None:
            continue
        if f == "optimizer":
            opt, lr = parse_optimizer(v)
            same = sorted(parse_optimizer(x)[1] for x in lv if parse_optimizer(x)[0] == opt)
            if len(same) > 1 and lr in (same[0], same[-1]):
                out.append(
                    f"{f}: {opt} lr {lr:g} is the {'smallest' if lr == same[0] else 'largest'} {opt} lr tried"
                )
        elif all(isinstance(x, (int, float)) for x in lv) and len(lv) > 1:
            s = sorted(lv)
            if v in (s[0], s[-1]):
                out.append(f"{f}: {v:g} is the {'smallest' if v == s[0] else 'largest'} tried")
    return out


def run_vit_study(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs (or resumes) the ViT study and writes the report; returns results.json's content."""
    if config.quick:
        config = runner.apply_quick(config)
    c = config
    check_config(c)
    run = provenance.start("study", c.get("workers", 1))
    # The selection decides the final runs: plan, run, re-plan.
    ran_by_workers = runner.run_replanned(VitStudy, experiments, c, workdir)
    st = VitStudy(c, workdir)
    res = experiments(st, c)
    res["differences"] = differences(res)
    res["selection_budget"] = selection_budget(res, c)
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
        "dense_more": {"epochs": c.dense_more_epochs, "recipe": "pretrain"},
        "dense_of": {str(k): v for k, v in dense_map(c).items()},
        "random_init_levels": [str(x) for x in c.random_init_levels],
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
