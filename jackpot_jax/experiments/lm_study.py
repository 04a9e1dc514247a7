"""Does a pre-trained LM hold a 2:4 jackpot that beats one-shot pruning? `python -m jackpot_jax.study --config configs/study_lm_smollm2.py --workdir DIR`.

One pre-trained causal LM (SmolLM2-135M, converted once into DIR/source_model), one text
corpus (Shakespeare: whole plays held out for validation and test), every run a piece
(`lm_pieces`), so rerunning the command resumes it.

1. **Selection** on the selection seed (its own calibration sample and data order; its runs
   evaluate no test perplexity) at ``select_level``, on the final validation perplexity:
   - the jackpot's learning rate (AdamW on the scores, the score levels fixed: with Adam
     the step is scale-free, so the gap between the two levels is redundant with the
     learning rate) from the first prior, by `lm_pieces.line_search` in ``selection_runs``
     runs (the grid, then a point beyond the best if it sits at an edge, else a midpoint);
     then the other prior at the selected rate (one run): the prior with the lower
     validation perplexity is the selected one;
   - weight tuning's learning rate (AdamW on the kept weights of the first prior's mask,
     the same tokens) in ``selection_runs + 1`` runs: as many as the jackpot had.
2. **Final runs** on fresh seeds (calibration sample and data order), level by level
   (``levels``: 2:4 first): dense, magnitude, Wanda, SparseGPT mask-only, SparseGPT with
   its weight update (it changes the kept weights), the jackpot from each prior and weight
   tuning, all on the test plays; the same ``steps`` of ``batch x seq_len`` tokens for every
   search and tuning run.

Writes DIR/results.json (per-seed test perplexities, paired differences with 95% intervals,
the selection's every run, validation curves, the per-kernel overlap of each jackpot with
its prior, provenance), DIR/report.md and DIR/val_curves.png (`lm_report`).
"""

from __future__ import annotations

import os

import ml_collections

from jackpot_jax import utils
from jackpot_jax.errors import ConfigError
from jackpot_jax.experiments import provenance
from jackpot_jax.experiments.lm_pieces import (
    LmPieces,
    layer_overlaps,
    level_label,
    line_search,
    module_of,
    read_masks,
)
from jackpot_jax.experiments.lm_report import answers, write_report
from jackpot_jax.experiments.stats import STD_LABEL, paired_difference, per_seed, summary_row

ONESHOT = ("magnitude", "wanda", "sparsegpt", "sparsegpt_update")
CHANGES_WEIGHTS = {"sparsegpt_update": True, "tune": True}


def _val(run) -> float:
    """A selection run's value: its final validation perplexity (inf when it diverged)."""
    ppl = run.get("final_perplexity")
    return float("inf") if ppl is None else ppl["val"]


def select(st: LmPieces, c) -> dict:
    """The selection (see the module docstring): every run it made and what it chose."""
    level, seed = c.select_level, c.select_seed
    first, *others = c.priors
    out = {"records": []}

    def search(kind, prior, grid, runs):
        def evaluate(lr):
            return _val(st.train_run(kind, seed, level, lr, prior, selection=True))

        best, seen, done, edge = line_search(evaluate, grid, runs, c.lr_ratio)
        for order, (lr, val) in enumerate(seen):
            out["records"].append(
                {
                    "method": kind,
                    "order": order,
                    "prior": prior,
                    "lr": lr,
                    "val_ppl": None if val == float("inf") else val,
                    "diverged": val == float("inf"),
                    "selected": lr == best,
                }
            )
        return best, edge

    lr, edge = search("jackpot", first, c.jackpot_lrs, c.selection_runs)
    priors = {first: _val(st.train_run("jackpot", seed, level, lr, first, selection=True))}
    for prior in others:
        run = st.train_run("jackpot", seed, level, lr, prior, selection=True)
        priors[prior] = _val(run)
        out["records"].append(
            {
                "method": "jackpot",
                "order": len(out["records"]),
                "prior": prior,
                "lr": lr,
                "val_ppl": priors[prior],
                "diverged": priors[prior] == float("inf"),
                "selected": False,
            }
        )
    prior = min(priors, key=priors.get)
    for r in out["records"]:
        r["selected"] = r["method"] == "jackpot" and r["lr"] == lr and r["prior"] == prior
    tune_lr, tune_edge = search("tune", first, c.tune_lrs, c.selection_runs + len(others))
    runs = {k: sum(r["method"] == k for r in out["records"]) for k in ("jackpot", "tune")}
    oneshot = {m: st.oneshot(seed, level, m, selection=True)["perplexity"]["val"] for m in c.priors}
    out["selected"] = {
        "jackpot": {"lr": lr, "prior": prior, "lr_at_grid_edge": edge},
        "tune": {"lr": tune_lr, "prior": first, "lr_at_grid_edge": tune_edge},
        "runs": runs,
        "prior_val_ppl": oneshot,
    }
    return out


def _curve(run, start) -> dict:
    """Validation perplexity against tokens seen, from the prior's (0 tokens) on."""
    return {
        "tokens": [0] + [m["tokens"] for m in run["metrics"]],
        "val_ppl": [start] + [m["val_perplexity"] for m in run["metrics"]],
    }


def final_runs(st: LmPieces, c, chosen: dict, level) -> dict:
    """Every row of one level over the final seeds: per-seed test perplexities, curves and
    per-kernel overlaps of the jackpots with their priors."""
    seeds = list(c.final_seeds)
    label = level_label(level)
    dense = st.dense()
    jack_lr, tune_lr = chosen["jackpot"]["lr"], chosen["tune"]["lr"]
    methods = {"dense": {s: dense for s in seeds}}
    for m in ONESHOT:
        methods[m] = {s: st.oneshot(s, level, m) for s in seeds}
    for prior in c.priors:
        methods[f"jackpot_{prior}"] = {
            s: st.train_run("jackpot", s, level, jack_lr, prior) for s in seeds
        }
    methods["tune"] = {s: st.train_run("tune", s, level, tune_lr, c.priors[0]) for s in seeds}
    rows, curves, layers = [], [], []
    for method, runs in methods.items():
        kind = method.split("_")[0] if method.startswith(("jackpot", "tune")) else "oneshot"
        prior = method[len("jackpot_") :] if method.startswith("jackpot_") else None
        prior = c.priors[0] if method == "tune" else prior
        fields = {
            "level": label,
            "method": method,
            "kind": "dense" if method == "dense" else kind,
            "prior": prior,
            "changes_weights": CHANGES_WEIGHTS.get(method, False),
            "lr": {"jackpot": jack_lr, "tune": tune_lr}.get(kind),
            "tokens": (c.steps * c.base.batch_size * c.base.lm.seq_len)
            if kind in ("jackpot", "tune")
            else 0,
            "piece": os.path.basename(next(iter(runs.values()))["dir"]),
            # dense and magnitude read no data: measured once, the same value for every seed
            "piece_seed": seeds[0] if method in ("dense", "magnitude") else None,
        }
        # A diverged run (no perplexity) has no value: the row counts the seeds it has.
        ppl = {s: runs[s].get("perplexity") or {} for s in seeds}
        rows.append(
            summary_row(
                fields,
                test_ppl=per_seed(seeds, [ppl[s].get("test") for s in seeds]),
                val_ppl=per_seed(seeds, [ppl[s].get("val") for s in seeds]),
            )
        )
        if prior is None:
            continue
        seeds_ok = [s for s in seeds if ppl[s]]
        for s in seeds_ok:
            start = methods[prior][s]["perplexity"]["val"]
            curves.append({"level": label, "method": method, "seed": s, **_curve(runs[s], start)})
        if kind != "jackpot":
            continue
        per_kernel = {
            s: layer_overlaps(
                read_masks(os.path.join(runs[s]["dir"], "final_mask.npz")),
                read_masks(os.path.join(methods[prior][s]["dir"], f"masks_{prior}.npz")),
            )
            for s in seeds_ok
        }
        if per_kernel:
            layers += _layer_rows(per_kernel, label, prior, c.depth_groups)
    return {"rows": rows, "curves": curves, "layers": layers}


def _layer_rows(per_kernel: dict, label: str, prior: str, groups: int) -> list[dict]:
    """Per module type x depth group (and over all depths): the mean over its kernels of the
    overlap with the prior, per seed."""
    paths = sorted(next(iter(per_kernel.values())))
    where = {p: module_of(p) for p in paths}
    blocks = 1 + max(w[1] for w in where.values() if w)
    size = -(-blocks // groups)
    spans = [(g * size, min(blocks, (g + 1) * size) - 1) for g in range(groups)]
    spans.append((0, blocks - 1))
    rows = []
    for module in ("q", "k", "v", "o", "gate", "up", "down"):
        for i, (lo, hi) in enumerate(spans):
            ks = [
                p for p in paths if where[p] and where[p][0] == module and lo <= where[p][1] <= hi
            ]
            values = {str(s): sum(v[p] for p in ks) / len(ks) for s, v in per_kernel.items()}
            fields = {
                "level": label,
                "prior": prior,
                "module": module,
                "blocks": "all" if i == len(spans) - 1 else f"{lo + 1}-{hi + 1}",
            }
            rows.append(summary_row(fields, overlap=values))
    return rows


# The differences the verdicts rest on: (a, b) by method, test perplexity a - b.
def differences(res: dict) -> list[dict]:
    """Per level: the selected jackpot against every other row, and the other prior's."""
    out = []
    prior = res["selected"]["jackpot"]["prior"]
    for level in dict.fromkeys(r["level"] for r in res["rows"]):
        rows = {r["method"]: r for r in res["rows"] if r["level"] == level}
        pairs = [(f"jackpot_{prior}", m) for m in rows if m != f"jackpot_{prior}"]
        pairs += [("tune", m) for m in ("wanda", "sparsegpt", "sparsegpt_update") if m in rows]
        for a, b in pairs:
            if a not in rows or b not in rows:
                continue
            p = paired_difference(
                rows[a]["per_seed"]["test_ppl"], rows[b]["per_seed"]["test_ppl"], scale=1.0
            )
            if p is None:
                continue
            out.append(
                {
                    "name": f"{level}: {a} - {b}",
                    "level": level,
                    "a": {"table": "rows", "match": {"level": level, "method": a}},
                    "b": {"table": "rows", "match": {"level": level, "method": b}},
                    "quantity": "test_ppl",
                    **p,
                }
            )
    return out


def run_lm_study(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs (or resumes) the LM study and writes the report; returns results.json's content."""
    c = config
    if c.select_seed in tuple(c.final_seeds):
        raise ConfigError(
            f"final_seeds {tuple(c.final_seeds)} include the selection seed {c.select_seed}; "
            "the final runs need fresh seeds"
        )
    if c.select_level not in tuple(c.levels):
        raise ConfigError(f"select_level={c.select_level!r} is not one of levels {c.levels}")
    run = provenance.start("study", 1)
    st = LmPieces(c, workdir)
    sel = select(st, c)
    res = {"selection": sel["records"], "selected": sel["selected"], "rows": [], "layers": []}
    res["curves"] = []
    for level in c.levels:
        out = final_runs(st, c, sel["selected"], level)
        res["rows"] += out["rows"]
        res["curves"] += out["curves"]
        res["layers"] += out["layers"]
    res["differences"] = differences(res)
    res["complete"] = True
    res["statistics"] = {
        "std": STD_LABEL,
        "interval": "95% t-interval of paired differences over the final seeds (perplexity)",
    }
    b = c.base
    res["settings"] = {
        "network": c.network,
        "source": c.get("source") or b.pretrained,
        "dataset": b.lm.dataset,
        "seq_len": b.lm.seq_len,
        "batch_size": b.batch_size,
        "steps": c.steps,
        "tokens_per_run": c.steps * b.batch_size * b.lm.seq_len,
        "eval_every": c.eval_every,
        "max_eval_tokens": b.lm.max_eval_tokens,
        "calibration_samples": b.lm.calibration_samples,
        "remat": b.lm.remat,
        "levels": list(c.levels),
        "priors": list(c.priors),
        "search": {
            "optimizer": b.search.optimizer,
            "schedule": b.search.schedule,
            "weight_decay": b.search.weight_decay,
            "score_kept": b.search.score_kept,
            "score_pruned": b.search.score_pruned,
        },
        "tune": {
            "optimizer": b.finetune.optimizer,
            "schedule": b.finetune.schedule,
            "weight_decay": b.finetune.weight_decay,
        },
        "jackpot_lrs": list(c.jackpot_lrs),
        "tune_lrs": list(c.tune_lrs),
        "lr_ratio": c.lr_ratio,
        "selection_runs": c.selection_runs,
        "select_seed": c.select_seed,
        "select_level": c.select_level,
        "final_seeds": list(c.final_seeds),
        "depth_groups": c.depth_groups,
        "selection_evaluates_test": False,
    }
    res["invocations"] = provenance.finish(run, st.workdir, st.ran)
    res["run"] = res["invocations"][-1]
    utils.write_json(os.path.join(st.workdir, "results.json"), res)
    write_report(res, st.workdir)
    return res


def lines(res: dict) -> list[str]:
    """What the command prints when the study is done: its answers."""
    return answers(res) if res.get("complete") else []
