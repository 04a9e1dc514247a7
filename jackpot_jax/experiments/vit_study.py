"""Do jackpots exist in vision transformers? `python -m jackpot_jax.study --config configs/study_fashion_mnist_vit.py --workdir DIR`.

One small ViT (`config.network`), pretrained here on a Fashion-MNIST subset, one dense
checkpoint per seed; every run is a piece (`jackpot_jax.experiments.runner`), so rerunning the
command resumes, and `--config.workers=N` shares the pieces among N processes.

1. **Recipe selection** on the selection seed's final-epoch VALIDATION accuracy (5,000 ... or
   `base.val_examples` images held out of the training set; its runs never evaluate the test
   split) at `select_sparsity`: coordinate descent (`sweep.coordinate_search`) over the
   optimiser on the scores with its learning rate (SGD or AdamW), the pruned-score value and the
   budget (`global_magnitude`: per-layer counts fixed by the magnitude mask; `global`: the
   scores ranked across layers, so the search may move counts between layers); the same for
   the weight-tuning baseline's optimiser and learning rate.
2. **Final runs** on fresh seeds at every level of `sparsities` and `patterns` (2:4): the
   jackpot with the selected recipe after `search_epochs`, against the magnitude mask and a
   random mask (no tuning), and the magnitude mask with its weights tuned for as many epochs
   (the selected weight-tuning recipe); the overlap of the jackpot with the magnitude, SNIP,
   GraSP and random masks; the jackpot's sparsity per layer (module type x depth, plotted).

Writes DIR/report.md (`vit_report`), DIR/results.json (per-seed values, paired differences with
95% intervals, provenance) and DIR/module_sparsity.png.
"""

from __future__ import annotations

import json
import os
import re

import ml_collections
import numpy as np

from jackpot_jax import method as jm
from jackpot_jax import utils
from jackpot_jax.experiments import provenance, runner
from jackpot_jax.experiments.stats import STD_LABEL, difference_record, per_seed, summary_row
from jackpot_jax.experiments.study_pieces import CRITERIA, Study, level_name, pattern_overrides
from jackpot_jax.experiments.sweep import coordinate_search
from jackpot_jax.pipeline import export

METHODS = ("dense", "magnitude", "random", "magnitude+weight_tuning", "jackpot")

# A prunable kernel's module type and depth, from its '/'-joined path in `models.vit`.
MODULE_TYPES = ("patch_embed", "query", "key", "value", "attn_out", "mlp_fc1", "mlp_fc2")
_BLOCK = re.compile(r"blocks_(\d+)/(attn/(query|key|value|out)|mlp/(fc1|fc2))/kernel$")


def module_of(path: str) -> tuple[str, int] | None:
    """(module type, depth) of a ViT kernel path: the patch embedding is depth 0, block i is
    depth i + 1; None for anything else."""
    if path.endswith("patch_embed/kernel"):
        return "patch_embed", 0
    m = _BLOCK.search(path)
    if m is None:
        return None
    kind = m.group(3) or m.group(4)
    kind = {"out": "attn_out", "fc1": "mlp_fc1", "fc2": "mlp_fc2"}.get(kind, kind)
    return kind, int(m.group(1)) + 1


def parse_optimizer(level: str) -> tuple[str, float]:
    """'adamw/0.003' -> ('adamw', 0.003): an optimiser level names the optimiser and its lr
    together (their scales differ by orders of magnitude)."""
    name, _, lr = level.partition("/")
    try:
        return name, float(lr)
    except ValueError:
        raise ValueError(f"optimizer level {level!r}; expected '<sgd|adamw>/<lr>'") from None


def recipe_tag(kind: str, recipe: dict) -> str:
    opt, lr = parse_optimizer(recipe["optimizer"])
    if kind == "jackpot":
        return f"{opt}_lr{lr:g}_s{recipe['score_pruned']:g}_{recipe['distribution']}"
    return f"{opt}_lr{lr:g}_{recipe['distribution']}"


def recipe_overrides(kind: str, recipe: dict) -> dict:
    opt, lr = parse_optimizer(recipe["optimizer"])
    if kind == "jackpot":
        return {
            "search.optimizer": opt,
            "search.lr": lr,
            "search.score_pruned": recipe["score_pruned"],
            "search.distribution": recipe["distribution"],
        }
    return {
        "finetune.optimizer": opt,
        "finetune.lr": lr,
        "finetune.mask": "magnitude",
        "search.distribution": recipe["distribution"],  # the magnitude mask's budget
    }


def _plain(cfg) -> dict:
    return cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else dict(cfg)


class VitStudy(Study):
    """The ViT study's pieces: recipe runs and a mask-evaluation piece that also handles N:M."""

    def recipe_run(self, kind, seed, recipe, level, selection=False) -> dict | None:
        """One jackpot search or weight-tuning run of `recipe` at `level` (a sparsity or an N:M
        pattern); None while only planned. A selection run and its seed's dense checkpoint
        never evaluate the test split."""
        c, net = self.c, self.c.network
        test = {"evaluate_test": False} if selection else {}
        dense = self.pretrained(net, seed, **test)
        sparsity, pattern = _level(level)
        mode, epochs = (
            ("search", c.search_epochs) if kind == "jackpot" else ("finetune", c.tune_epochs)
        )
        name = f"{kind}_{recipe_tag(kind, recipe)}_{level_name(sparsity, pattern)}_e{epochs}"
        r = self.piece(
            net,
            seed,
            name,
            mode,
            needs=[dense["dir"]],
            sparsity=sparsity,
            pretrained=os.path.join(dense["dir"], "model"),
            **{f"{mode}.epochs": epochs},
            **recipe_overrides(kind, recipe),
            **pattern_overrides(pattern),
            **test,
        )
        return r if os.path.exists(os.path.join(r["dir"], "summary.json")) else None

    def masks_report(self, seed, level, jackpot_dir, distribution) -> dict | None:
        """Test accuracy of every criterion's mask (no tuning) at `level` under the budget
        `distribution`, its overlap with the jackpot in `jackpot_dir`, and the jackpot's and
        the magnitude mask's pruned fraction per prunable kernel. None while only planned."""
        net = self.c.network
        sparsity, pattern = _level(level)
        tag = os.path.basename(jackpot_dir)
        path = self.folder(net, seed, f"masks_{tag}.json")
        if os.path.exists(path):
            with open(path) as f:
                return json.load(f)
        dense = self.pretrained(net, seed)
        needs = [os.path.join(d, "summary.json") for d in (dense["dir"], jackpot_dir)]
        call = ("masks_report", (seed, level, jackpot_dir, distribution), {})
        if self.planned(path, needs, 1, call):
            return None
        _, jackpot_masks, _, _ = export.load_jackpot(jackpot_dir)
        c = self.cfg(
            net,
            seed,
            sparsity=sparsity,
            pretrained=os.path.join(dense["dir"], "model"),
            **{"search.distribution": distribution},
            **pattern_overrides(pattern),
        )
        out = {"criteria": {}, "layers": {}}
        for name, masks, acc, overlap in self.criterion_masks(c, seed, jackpot_masks):
            out["criteria"][name] = {"test_accuracy": acc, "overlap_with_jackpot": overlap}
            if name == "magnitude":
                out["layers"]["magnitude"] = _pruned_fractions(masks)
        out["layers"]["jackpot"] = _pruned_fractions(jackpot_masks)
        utils.write_json(path, out)
        return out


def _level(level) -> tuple[float, str]:
    """(sparsity, pattern) of a level: a float sparsity, or an N:M pattern string."""
    if isinstance(level, str):
        pattern = jm.parse_pattern(level)
        return pattern.sparsity, str(pattern)
    return float(level), ""


def _pruned_fractions(masks) -> dict[str, float]:
    flat = utils.flatten_dict(masks)
    return {k: float(1.0 - np.mean(np.asarray(m))) for k, m in flat.items() if m is not None}


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
        levels = {f: tuple(v) for f, v in _plain(levels).items()}
        # The baseline's magnitude mask takes the selected jackpot's budget (per-layer counts).
        fixed = {} if kind == "jackpot" else {"distribution": selected["jackpot"]["distribution"]}
        if kind == "weight_tuning" and not finished:
            break  # waits for the jackpot's selection (planning only)

        def evaluate(point, kind=kind, fixed=fixed):
            recipe = dict(point, **fixed)
            r = st.recipe_run(kind, c.select_seed, recipe, c.select_sparsity, selection=True)
            return None if r is None else r["final_val_accuracy"]

        best, seen, done = coordinate_search(
            evaluate, _plain(start), levels, tuple(factors), c.max_rounds
        )
        finished &= done
        selected[kind] = dict(best, **fixed)
        for order, (key, val) in enumerate(seen.items()):
            res["sweep"].append(
                {
                    "method": kind,
                    "order": order,
                    "recipe": dict(dict(key), **fixed),
                    "val_accuracy": val,
                    "selected": dict(key) == best and done,
                }
            )
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
        sparsity, pattern = _level(level)
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
    from jackpot_jax.experiments.vit_report import write_report

    if config.quick:
        config = runner.apply_quick(config)
    c = config
    if c.select_seed in tuple(c.final_seeds):
        raise ValueError(
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
        "model_options": _plain(b.model_options),
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
        "jackpot_start": _plain(c.jackpot_start),
        "jackpot_factors": list(c.jackpot_factors),
        "jackpot_levels": {k: list(v) for k, v in _plain(c.jackpot_levels).items()},
        "wt_start": _plain(c.wt_start),
        "wt_factors": list(c.wt_factors),
        "wt_levels": {k: list(v) for k, v in _plain(c.wt_levels).items()},
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
