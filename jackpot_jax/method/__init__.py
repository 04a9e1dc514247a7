"""The lottery-jackpot method: exact top-k masks over frozen weights, and the measures around them.

Everything here is a pure function over pytrees and imports nothing from models, data or
training. Conventions:

* A *path* is the '/'-joined key path of a leaf in the params tree, e.g.
  ``'layer1_0/conv1/kernel'``. It names a layer everywhere: logs, summaries, exports.
* A *prunable filter* ``filter_fn(path, leaf) -> bool`` decides which leaves get scores.
* *Score*, *mask* and *keep-count* trees mirror the params tree with ``None`` on leaves that
  are not pruned. Masks are float 0/1 arrays of the weight's shape and dtype.
* A *budget* says which weights each layer keeps: a tree mirroring the scores whose leaves
  are keep counts (per-layer top-k, the official behaviour) or `NMPattern`s (``n`` of every
  ``m`` consecutive weights along the input axis, the layout of sparse tensor cores); a single
  ``int`` (one global top-k over all scores); or a single `NMPattern` for every layer.

Tie rule: wherever two scores are equal, the one with the lower flat (row-major) index wins,
so every mask has exactly the requested number of ones.

Import it as ``from jackpot_jax import method as jm``; ``import jackpot_jax`` re-exports the
same names at the top level.
"""

from jackpot_jax.method.budgets import (  # noqa: F401
    DISTRIBUTIONS,
    keep_counts,
)
from jackpot_jax.method.masks import (  # noqa: F401
    apply_masks,
    criterion_mask,
    masked_params,
    masks_from_scores,
)
from jackpot_jax.method.measures import (  # noqa: F401
    mask_flips,
    overlap,
    sparsity_summary,
)
from jackpot_jax.method.nm import (  # noqa: F401
    NMPattern,
    dense_kept,
    nm_budget,
    nm_mask,
    nm_ste_mask,
    parse_pattern,
    pattern_summary,
    satisfies_pattern,
)
from jackpot_jax.method.oneshot import (  # noqa: F401
    InputStats,
    add_stats,
    input_stats,
    sparsegpt,
    sparsegpt_from_stats,
    update_stats,
    wanda,
    wanda_from_stats,
)
from jackpot_jax.method.oneshot import magnitude as magnitude_mask  # noqa: F401
from jackpot_jax.method.paths import (  # noqa: F401
    DEFAULT_EXCLUDE,
    FilterFn,
    PyTree,
    check_mirror,
    default_filter,
    flatten_paths,
    make_filter,
    map_prunable,
    path_str,
    prunable_paths,
    tree_from_paths,
)
from jackpot_jax.method.registry import Registry  # noqa: F401
from jackpot_jax.method.rules import (  # noqa: F401
    MASK_UPDATES,
    MaskRule,
    swap_rule,
    topk_rule,
)
from jackpot_jax.method.scores import (  # noqa: F401
    CRITERIA,
    WARMUPS,
    CriterionInputs,
    criterion,
    grasp_scores,
    init_scores_from_mask,
    kaiming_uniform_scores,
    magnitude_scores,
    random_scores,
    snip_scores,
    temperature_loss,
)
from jackpot_jax.method.swap import (  # noqa: F401
    SWAP_SCHEDULES,
    check_swap_schedule,
    masked_params_from_masks,
    swap_masks,
    swap_rate,
)
from jackpot_jax.method.topk import (  # noqa: F401
    ste_mask,
    topk_mask,
)

__all__ = [
    "add_stats",
    "apply_masks",
    "check_mirror",
    "check_swap_schedule",
    "CRITERIA",
    "criterion",
    "criterion_mask",
    "CriterionInputs",
    "DEFAULT_EXCLUDE",
    "default_filter",
    "dense_kept",
    "DISTRIBUTIONS",
    "FilterFn",
    "flatten_paths",
    "grasp_scores",
    "init_scores_from_mask",
    "input_stats",
    "InputStats",
    "kaiming_uniform_scores",
    "keep_counts",
    "magnitude_mask",
    "magnitude_scores",
    "make_filter",
    "map_prunable",
    "mask_flips",
    "MASK_UPDATES",
    "masked_params",
    "masked_params_from_masks",
    "MaskRule",
    "masks_from_scores",
    "nm_budget",
    "nm_mask",
    "nm_ste_mask",
    "NMPattern",
    "overlap",
    "parse_pattern",
    "path_str",
    "pattern_summary",
    "prunable_paths",
    "PyTree",
    "random_scores",
    "Registry",
    "satisfies_pattern",
    "snip_scores",
    "sparsegpt",
    "sparsegpt_from_stats",
    "sparsity_summary",
    "ste_mask",
    "swap_masks",
    "swap_rate",
    "swap_rule",
    "SWAP_SCHEDULES",
    "temperature_loss",
    "topk_mask",
    "topk_rule",
    "tree_from_paths",
    "update_stats",
    "wanda",
    "wanda_from_stats",
    "WARMUPS",
]
