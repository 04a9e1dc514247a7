"""The training engine every mode shares: optimiser (`optim`), devices (`sharding`), the train
state and jitted steps (`steps`), and the epoch loop (`loop`).

One jitted, data-parallel step over a `Mesh` ('data' axis: batch sharded, state replicated,
BatchNorm statistics over the global batch), traced under the run's `ComputeOptions`. The loop
trains, validates, checkpoints (`jackpot_jax.pipeline.resume`) and logs once per epoch, and
resumes from the newest checkpoint. ``from jackpot_jax.pipeline import engine`` gives every
public name below.
"""

from jackpot_jax.pipeline.engine.loop import (
    mode_batch_size,
    swap_rate_fn,
    train_loop,
)
from jackpot_jax.pipeline.engine.optim import (
    SCHEDULES,
    cosine_per_epoch,
    cosine_per_step,
    cross_entropy,
    make_optimizer,
)
from jackpot_jax.pipeline.engine.sharding import (
    batch_to_mesh,
    check_batch,
    make_mesh,
    replicate,
    shard_batch,
    shard_local_batch,
)
from jackpot_jax.pipeline.engine.steps import (
    COMPUTE_DTYPES,
    TrainState,
    compute_options,
    evaluate,
    make_eval_step,
    make_train_step,
)

__all__ = [
    "COMPUTE_DTYPES",
    "SCHEDULES",
    "TrainState",
    "batch_to_mesh",
    "check_batch",
    "compute_options",
    "cosine_per_epoch",
    "cosine_per_step",
    "cross_entropy",
    "evaluate",
    "make_eval_step",
    "make_mesh",
    "make_optimizer",
    "make_train_step",
    "mode_batch_size",
    "replicate",
    "shard_batch",
    "shard_local_batch",
    "swap_rate_fn",
    "train_loop",
]
