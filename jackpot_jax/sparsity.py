"""The lottery-jackpot method, the library's public face: ``from jackpot_jax import sparsity as sp``.

Everything is re-exported from `jackpot_jax.method`, whose modules hold one role each: paths
and prunable filters (`method.paths`), exact top-k masks (`method.topk`), N:M patterns
(`method.nm`), masks under a budget (`method.masks`), the 2023 swap rule (`method.swap`),
layer budgets (`method.budgets`), criterion scores (`method.scores`) and measures
(`method.measures`). See `jackpot_jax.method` for the conventions (paths, mirrored trees,
budgets, the tie rule).
"""

from jackpot_jax.method.budgets import (  # noqa: F401
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
from jackpot_jax.method.paths import (  # noqa: F401
    CRITERIA,
    DEFAULT_EXCLUDE,
    DISTRIBUTIONS,
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
from jackpot_jax.method.scores import (  # noqa: F401
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
    "apply_masks",
    "check_mirror",
    "check_swap_schedule",
    "CRITERIA",
    "criterion_mask",
    "DEFAULT_EXCLUDE",
    "default_filter",
    "dense_kept",
    "DISTRIBUTIONS",
    "FilterFn",
    "flatten_paths",
    "grasp_scores",
    "init_scores_from_mask",
    "kaiming_uniform_scores",
    "keep_counts",
    "magnitude_scores",
    "make_filter",
    "map_prunable",
    "mask_flips",
    "masked_params",
    "masked_params_from_masks",
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
    "satisfies_pattern",
    "snip_scores",
    "sparsity_summary",
    "ste_mask",
    "swap_masks",
    "swap_rate",
    "SWAP_SCHEDULES",
    "temperature_loss",
    "topk_mask",
    "tree_from_paths",
]
