"""Masks from criteria on a dataset: the prunable filter, per-layer budgets (top-k counts or
an N:M pattern), and the magnitude / random / SNIP / GraSP masks that warm-start the search
or serve as baselines.

The formulas are in `jackpot_jax.method`; this module feeds them the config and the data.
"""

from __future__ import annotations

import jax
import numpy as np

from jackpot_jax import kernels, utils
from jackpot_jax import method as jm
from jackpot_jax.data import input_pipeline

WARMUPS = ("magnitude", "snip", "grasp", "random", "kaiming")


def prune_filter(config) -> jm.FilterFn:
    include = list(config.prune.include) or None
    exclude = list(config.prune.exclude)
    return jm.make_filter(include=include, exclude=exclude)


def criterion_importance(name: str, config, module, variables, ds, seed: int, filter_fn):
    """Importance scores (larger = keep) of one criterion on the given weights."""
    params, batch_stats = variables["params"], utils.batch_stats_of(variables)
    if name == "magnitude":
        return jm.magnitude_scores(params, filter_fn)
    if name == "random":
        return jm.random_scores(jax.random.key(seed + 7919), params, filter_fn)

    def logits_fn(p, x):
        # Train mode (batch statistics), as SNIP/GraSP compute on a mini-batch; stats discarded.
        out, _ = module.apply(
            utils.variables_of(p, batch_stats),
            x,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": jax.random.key(0)},
        )
        return out

    if name == "snip":
        batches = []
        it = input_pipeline.iterate_batches(
            ds, "train", config.batch_size, train=True, seed=seed, epoch=10_000
        )
        for _ in range(config.criteria.snip_batches):
            batches.append(next(it))
        return jm.snip_scores(jm.temperature_loss(logits_fn, 1.0), params, batches, filter_fn)
    if name == "grasp":
        x, y = input_pipeline.balanced_batch(ds, "train", config.criteria.grasp_per_class, seed)
        half = len(y) // 2  # the GraSP code splits its balanced sample in two halves
        order = np.random.default_rng(seed).permutation(len(y))
        x, y = x[order], y[order]
        batches = [(x[:half], y[:half]), (x[half:], y[half:])]
        loss = jm.temperature_loss(logits_fn, config.criteria.grasp_temperature)
        # The Hessian-vector product is forward-over-reverse: XLA's own convolution (the
        # explicit one defines only a reverse-mode rule).
        with kernels.use(conv_impl="xla"):
            return jm.grasp_scores(loss, params, batches, filter_fn)
    raise ValueError(f"criterion={name!r}; expected one of {jm.CRITERIA}")


def pattern_of(config) -> jm.NMPattern | None:
    """The configured N:M pattern (``config.search.pattern``, e.g. "2:4"), None if unstructured."""
    return jm.parse_pattern(config.search.get("pattern", ""))


def budget_for(config, params, filter_fn):
    """The budget every mask of a run uses: with ``search.pattern`` an N:M budget tree
    (``config.sparsity`` and ``search.distribution`` then play no part; kernels the pattern
    does not fit stay dense), else per-layer keep counts at ``config.sparsity``."""
    pattern = pattern_of(config)
    if pattern is not None:
        return jm.nm_budget(params, pattern, filter_fn)
    return jm.keep_counts(params, config.sparsity, config.search.distribution, filter_fn=filter_fn)


def criterion_mask(name: str, config, module, variables, ds, seed, filter_fn, budget):
    """The mask of criterion ``name`` under ``budget`` (top-k counts or an N:M pattern)."""
    importance = criterion_importance(name, config, module, variables, ds, seed, filter_fn)
    return jm.criterion_mask(importance, budget)


def initial_scores(config, module, variables, ds, seed: int, filter_fn, budget):
    """The search's starting scores (``config.search``): the warm-up criterion's mask under
    ``budget`` as two score levels (``score_kept`` / ``score_pruned``), or edge-popup's random
    Kaiming scores (``init='kaiming'``, no warm-up mask)."""
    cfg = config.search
    if cfg.init == "kaiming":
        return jm.kaiming_uniform_scores(jax.random.key(seed), variables["params"], filter_fn)
    mask = criterion_mask(cfg.init, config, module, variables, ds, seed, filter_fn, budget)
    return jm.init_scores_from_mask(mask, cfg.score_kept, cfg.score_pruned)


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
