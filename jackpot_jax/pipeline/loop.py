"""The command line's epoch loop: the core's epochs over a dataset, with validation,
checkpoints, the metrics log, a progress bar, and resumption from the newest checkpoint."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import jax
from jax.sharding import Mesh

from jackpot_jax import core, utils
from jackpot_jax.data import input_pipeline
from jackpot_jax.errors import ConfigError
from jackpot_jax.pipeline.evaluate import evaluate
from jackpot_jax.pipeline.resume import Checkpointer, MetricsLog


def mode_batch_size(config, opt_cfg) -> int:
    """The global training batch of a mode: its own ``batch_size`` if set, else the config's."""
    return int((opt_cfg.get("batch_size") if opt_cfg is not None else 0) or config.batch_size)


def steps_per_epoch(config, ds, mesh: Mesh, opt_cfg) -> tuple[int, int]:
    """(global batch size, steps per epoch) of a mode on ``ds``: full batches only."""
    batch_size = mode_batch_size(config, opt_cfg)
    core.check_batch(batch_size, mesh)
    spe = input_pipeline.num_batches(ds.train, batch_size, drop_remainder=True)
    if spe == 0:
        raise ConfigError(
            f"train split has {len(ds.train)} examples, fewer than batch_size={batch_size}"
        )
    return batch_size, spe


def _progress(label: str, epoch: int, epochs: int, spe: int, batch_size: int, t0: float):
    """(on_step callback, bar) of a tqdm bar on a terminal, (None, None) elsewhere: off a
    terminal there is no bar and no host sync."""
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return None, None
    bar = tqdm(total=spe, desc=f"{label} epoch {epoch + 1}/{epochs}", leave=False, disable=None)
    if bar.disable:
        return None, None

    def on_step(i, m):
        if i % 10 == 0 or i == spe - 1:  # a host sync: only for a visible bar
            bar.set_postfix(
                loss=f"{float(m['loss']):.3f}",
                img_s=f"{(i + 1) * batch_size / (time.time() - t0):.0f}",
            )
        bar.update(1)

    return on_step, bar


def train_loop(
    *,
    config,
    workdir: str,
    module,
    ds,
    mesh: Mesh,
    state: core.SearchState,
    step: Callable,
    schedule: Callable,
    opt_cfg,
    epochs: int,
    seed: int,
    label: str,
    eval_variables: Callable[[core.SearchState], Any],
    tracker: core.MaskTracker | None = None,
) -> tuple[core.SearchState, MetricsLog]:
    """Runs epochs ``[start, epochs)`` of ``step`` from ``state`` (restored from the newest
    checkpoint in ``workdir/checkpoints`` when there is one): each epoch is `core.run_epoch`
    over the training batches, then validation of ``eval_variables(state)``, one line of
    ``metrics.jsonl``, a checkpoint (everything but the frozen weights) and a log line.
    ``label``: 'search', 'pretrain' or 'finetune' (what the log and errors say)."""
    options = core.compute_options(config)
    batch_size, spe = steps_per_epoch(config, ds, mesh, opt_cfg)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    start = 0
    try:
        restored = ckpt.restore_latest(state.checkpoint_view())
    except BaseException:
        ckpt.close()
        raise
    if restored is not None:
        start, saved = restored
        state = saved.replace(frozen=state.frozen)
        utils.log(f"resuming {workdir} from epoch {start}")
    log = MetricsLog(os.path.join(workdir, "metrics.jsonl"), start)
    # Host copies first: the step donates the state, which must not free the caller's arrays.
    state = core.replicate(mesh, utils.as_numpy(state))
    # One loader for all remaining epochs (its workers start once); the next batches are
    # made and placed on the mesh while a step runs.
    data_workers = config.get("data_workers", input_pipeline.AUTO_WORKERS)
    workers = input_pipeline.resolve_workers(data_workers, ds.train)
    batches = iter(
        input_pipeline.device_prefetch(
            input_pipeline.train_batches(
                ds,
                batch_size,
                seed=seed,
                epochs=range(start, epochs),
                workers=workers,
                process_index=jax.process_index(),
                process_count=jax.process_count(),
                normalize=False,
            ),
            core.batch_to_mesh(mesh, ds),
            config.get("data_prefetch", 2),
        )
    )
    what = "scores" if label == "search" else "weights"
    try:  # closing waits for the last async save: a raise must not leave it half-written
        for epoch in range(start, epochs):
            t0 = time.time()
            lr = float(schedule(epoch * spe))
            on_step, bar = _progress(label, epoch, epochs, spe, batch_size, t0)
            last = (
                f"epoch {epoch} in {ckpt.directory}"
                if epoch > 0
                else "none: it failed in the first epoch"
            )
            try:
                state, record = core.run_epoch(
                    step,
                    state,
                    batches,
                    steps=spe,
                    epoch=epoch,
                    tracker=tracker,
                    on_step=on_step,
                    label=label,
                    what=what,
                    lr=opt_cfg.lr,
                    failure_context=(
                        f"; nothing of this epoch was saved (last good checkpoint: {last})"
                    ),
                )
            finally:
                if bar is not None:
                    bar.close()
            train_seconds = time.time() - t0
            val = (
                evaluate(
                    module,
                    eval_variables(state),
                    ds,
                    "val",
                    config.eval_batch_size,
                    mesh,
                    data_workers,
                    options,
                )
                if len(ds.val)
                else {}
            )
            line = {
                "epoch": epoch + 1,
                "loss": record["loss"],
                "train_accuracy": record["accuracy"],
                "val_accuracy": val.get("accuracy"),
                "val_loss": val.get("loss"),
                "learning_rate": lr,
                "seconds": time.time() - t0,
                "train_images_per_second": spe * batch_size / train_seconds,
            }
            line.update({k: v for k, v in record.items() if k not in ("loss", "accuracy")})
            # The line first: a kill before the save completes redoes this epoch and drops it.
            log.append(line)
            ckpt.save(epoch + 1, state.checkpoint_view())
            utils.log(
                " ".join(
                    f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in line.items()
                    if v is not None
                )
            )
    finally:
        batches.close()
        ckpt.close()
    return state, log
