"""The search core: a state, an initialiser, a step and an epoch.

Every caller of the search — the command line (`jackpot_jax.pipeline`), `find_jackpot`, the
studies and the benchmarks — runs these, and pretraining and fine-tuning run the same step
builder with what they train:

* `SearchState` (a Flax `TrainState`): scores as ``params``, the frozen pre-trained weights,
  BatchNorm statistics, the rng, and what the mask-update rule keeps;
* `init_search`: the prune filter, the budget, the warm-up scores and the state;
* `make_search_step` (on `make_train_step`): one jitted, data-parallel step;
* `run_epoch`: an epoch of steps, the one non-finite check, one history record.

The core imports the method and the kernels, never data, models or the pipeline.
"""

from jackpot_jax.core.epoch import run_epoch
from jackpot_jax.core.optim import (
    OPTIMIZERS,
    SCHEDULES,
    cosine_per_epoch,
    cosine_per_step,
    cross_entropy,
    make_optimizer,
)
from jackpot_jax.core.search import (
    InitialSearch,
    MaskTracker,
    current_masks,
    init_search,
    search_budget,
    search_filter,
    swap_rate_schedule,
)
from jackpot_jax.core.sharding import (
    batch_to_mesh,
    check_batch,
    make_mesh,
    replicate,
    shard_batch,
    shard_local_batch,
)
from jackpot_jax.core.state import SearchState
from jackpot_jax.core.steps import (
    cast_floats,
    compute_options,
    make_eval_step,
    make_search_step,
    make_train_step,
    masked_weights,
)

__all__ = [
    "InitialSearch",
    "MaskTracker",
    "OPTIMIZERS",
    "SCHEDULES",
    "SearchState",
    "batch_to_mesh",
    "cast_floats",
    "check_batch",
    "compute_options",
    "cosine_per_epoch",
    "cosine_per_step",
    "cross_entropy",
    "current_masks",
    "init_search",
    "make_eval_step",
    "make_mesh",
    "make_optimizer",
    "make_search_step",
    "make_train_step",
    "masked_weights",
    "replicate",
    "run_epoch",
    "search_budget",
    "search_filter",
    "shard_batch",
    "shard_local_batch",
    "swap_rate_schedule",
]
