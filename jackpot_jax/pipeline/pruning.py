"""Masks from criteria on a dataset: the prunable filter, per-layer budgets (top-k counts or
an N:M pattern), and the magnitude / random / SNIP / GraSP masks that warm-start the search
or serve as baselines.

The formulas and registries are in `jackpot_jax.method`, the search's start in
`jackpot_jax.core`; this module feeds them the config and the data.
"""

from __future__ import annotations

import jax
import numpy as np

from jackpot_jax import core, utils
from jackpot_jax import method as jm
from jackpot_jax.data import input_pipeline


def prune_filter(config) -> jm.FilterFn:
    """The prune filter of ``config.prune`` (``include`` / ``exclude`` regexes)."""
    return core.search_filter(config.prune.include, config.prune.exclude)


def criterion_inputs(config, module, variables, ds, seed: int, filter_fn) -> jm.CriterionInputs:
    """What the data criteria read, from a config and its dataset: the model's train-mode
    forward pass (batch statistics, as SNIP/GraSP compute on a mini-batch; statistics
    discarded), ``config.criteria.snip_batches`` training batches for SNIP, and for GraSP a
    class-balanced sample of ``config.criteria.grasp_per_class`` per class, shuffled and split
    in two halves as the GraSP code does."""
    batch_stats = utils.batch_stats_of(variables)

    def logits_fn(p, x):
        out, _ = module.apply(
            utils.variables_of(p, batch_stats),
            x,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": jax.random.key(0)},
        )
        return out

    def batches(count):
        it = input_pipeline.iterate_batches(
            ds, "train", config.batch_size, train=True, seed=seed, epoch=10_000
        )
        return [next(it) for _ in range(count)]

    def balanced(per_class):
        x, y = input_pipeline.balanced_batch(ds, "train", per_class, seed)
        half = len(y) // 2
        order = np.random.default_rng(seed).permutation(len(y))
        x, y = x[order], y[order]
        return [(x[:half], y[:half]), (x[half:], y[half:])]

    return jm.CriterionInputs(
        filter_fn=filter_fn,
        seed=seed,
        logits_fn=logits_fn,
        batches=batches,
        balanced=balanced,
        snip_batches=config.criteria.snip_batches,
        grasp_per_class=config.criteria.grasp_per_class,
        grasp_temperature=config.criteria.grasp_temperature,
    )


def criterion_importance(name: str, config, module, variables, ds, seed: int, filter_fn):
    """Importance scores (larger = keep) of criterion ``name`` (`jm.CRITERIA`)."""
    inputs = criterion_inputs(config, module, variables, ds, seed, filter_fn)
    return jm.CRITERIA[name](variables["params"], inputs)


def pattern_of(config) -> jm.NMPattern | None:
    """The configured N:M pattern (``config.search.pattern``, e.g. "2:4"), None if unstructured."""
    return jm.parse_pattern(config.search.get("pattern", ""))


def budget_for(config, params, filter_fn):
    """The budget every mask of a run uses (`core.search_budget` of the config)."""
    return core.search_budget(
        params,
        sparsity=config.sparsity,
        pattern=pattern_of(config),
        distribution=config.search.distribution,
        filter_fn=filter_fn,
    )


def criterion_mask(name: str, config, module, variables, ds, seed, filter_fn, budget):
    """The mask of criterion ``name`` under ``budget`` (top-k counts or an N:M pattern)."""
    importance = criterion_importance(name, config, module, variables, ds, seed, filter_fn)
    return jm.criterion_mask(importance, budget)


def pattern_report(masks, config, target: bool = True) -> dict:
    """Summary fields of an N:M run, {} without a pattern: the pattern, the sparsity over the
    patterned kernels (``sparsity_achieved``, exactly ``1 - n/m``) and over every masked
    kernel, the kernels kept dense, and whether every patterned mask satisfies it exactly."""
    pattern = pattern_of(config)
    if pattern is None:
        return {}
    s = jm.pattern_summary(masks, pattern)
    out = {
        "pattern": s["pattern"],
        "sparsity_achieved": s["sparsity_patterned"],
        "sparsity_achieved_all_masked": s["sparsity_all_masked"],
        "patterned_layers": s["patterned_layers"],
        "dense_kept": s["dense_kept"],
        "pattern_satisfied": s["pattern_satisfied"],
    }
    if target:
        out["sparsity_target"] = pattern.sparsity
    return out
