"""The epoch loop every mode shares: train, validate, checkpoint, log, resume."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jackpot_jax import method as jm
from jackpot_jax import utils
from jackpot_jax.data import input_pipeline
from jackpot_jax.errors import ConfigError, NonFiniteError
from jackpot_jax.pipeline.engine.optim import make_optimizer
from jackpot_jax.pipeline.engine.sharding import batch_to_mesh, check_batch, replicate
from jackpot_jax.pipeline.engine.steps import TrainState, compute_options, evaluate, make_train_step
from jackpot_jax.pipeline.resume import Checkpointer, MetricsLog


def swap_rate_fn(search_cfg, epochs: int, steps_per_epoch: int) -> Callable:
    """step -> the fraction of eligible pairs the 2023 swap rule swaps after that step."""
    sc = search_cfg
    jm.check_swap_schedule(sc.swap_schedule, sc.swap_rate, sc.swap_power)
    return lambda step: jm.swap_rate(
        step // steps_per_epoch, epochs, sc.swap_schedule, sc.swap_rate, sc.swap_power
    )


def mode_batch_size(config, opt_cfg) -> int:
    """The global training batch of a mode: its own ``batch_size`` if set, else the config's."""
    return int((opt_cfg.get("batch_size") if opt_cfg is not None else 0) or config.batch_size)


def _check_finite(finite, epoch, spe, kind, ckpt_dir, opt_cfg) -> None:
    """`NonFiniteError` naming the first step of the epoch whose loss or trainables (scores
    in a search) became NaN or infinite. One host sync per epoch."""
    ok = np.asarray(jax.device_get(finite), bool)
    if ok.all():
        return
    i = int(np.argmin(ok))
    what = "scores" if kind == "search" else "weights"
    last = f"epoch {epoch} in {ckpt_dir}" if epoch > 0 else "none: it failed in the first epoch"
    raise NonFiniteError(
        f"{kind}: the training loss or the {what} became NaN or infinite at epoch {epoch + 1}, "
        f"step {epoch * spe + i + 1} (step {i + 1} of {spe} in the epoch); nothing of this epoch "
        f"was saved (last good checkpoint: {last}). Lower the learning rate "
        f"(lr={opt_cfg.lr}) or check the inputs"
    )


def train_loop(
    *,
    config,
    workdir: str,
    module,
    ds,
    mesh: Mesh,
    kind: str,
    trainable,
    frozen,
    batch_stats,
    opt_cfg,
    epochs: int,
    seed: int,
    budget=None,
    masks=None,
    epoch_hook: Callable[[int, TrainState], dict] | None = None,
    eval_params: Callable[[TrainState], Any],
) -> tuple[TrainState, MetricsLog]:
    """Epoch loop shared by every mode: train, validate, checkpoint, log, resume.

    ``masks``: the initial persistent masks of a swap search (``config.search.mask_update
    == 'swap'``), kept in the train state and checkpointed with it."""
    options = compute_options(config)
    batch_size = mode_batch_size(config, opt_cfg)
    check_batch(batch_size, mesh)
    spe = input_pipeline.num_batches(ds.train, batch_size, drop_remainder=True)
    if spe == 0:
        raise ConfigError(
            f"train split has {len(ds.train)} examples, fewer than batch_size={batch_size}"
        )
    tx, schedule = make_optimizer(opt_cfg, epochs, spe)
    swap_rate = None
    if kind == "search" and config.search.get("mask_update", "topk") == "swap":
        if masks is None:
            raise ConfigError("search.mask_update='swap' needs the initial masks")
        swap_rate = swap_rate_fn(config.search, epochs, spe)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        trainable=trainable,
        opt_state=tx.init(trainable),
        batch_stats=batch_stats,
        rng=jax.random.key_data(jax.random.key(seed)),
        masks=masks if swap_rate is not None else None,
    )
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    start = 0
    try:
        restored = ckpt.restore_latest(state)
    except BaseException:
        ckpt.close()
        raise
    if restored is not None:
        start, state = restored
        utils.log(f"resuming {workdir} from epoch {start}")
    log = MetricsLog(os.path.join(workdir, "metrics.jsonl"), start)
    step_fn = make_train_step(
        module,
        kind,
        tx,
        budget=budget,
        use_abs=config.search.use_abs,
        label_smoothing=config.label_smoothing,
        swap_rate=swap_rate,
        options=options,
    )
    # Host copies first: the step donates the state, which must not free the caller's arrays.
    state = replicate(mesh, utils.as_numpy(state))
    frozen = replicate(mesh, frozen)
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
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
            batch_to_mesh(mesh, ds),
            config.get("data_prefetch", 2),
        )
    )
    try:  # closing waits for the last async save: a raise must not leave it half-written
        for epoch in range(start, epochs):
            t0 = time.time()
            lr = float(schedule(epoch * spe))
            metrics = []  # per-step device scalars, summed once per epoch
            bar = (
                tqdm(
                    total=spe, desc=f"{kind} epoch {epoch + 1}/{epochs}", leave=False, disable=None
                )
                if tqdm
                else None
            )
            if bar is not None and bar.disable:  # not a terminal: no bar, no host syncs
                bar = None
            for i, (images, labels) in enumerate(itertools.islice(batches, spe)):
                state, m = step_fn(state, frozen, images, labels)
                utils.kill_point("step")
                metrics.append(m)
                if bar is not None:
                    if i % 10 == 0 or i == spe - 1:  # a host sync: only for a visible bar
                        bar.set_postfix(
                            loss=f"{float(m['loss']):.3f}",
                            img_s=f"{(i + 1) * batch_size / (time.time() - t0):.0f}",
                        )
                    bar.update(1)
            if bar is not None:
                bar.close()
            metrics = jax.device_get(metrics)
            _check_finite([m["finite"] for m in metrics], epoch, spe, kind, ckpt.directory, opt_cfg)
            sums = {k: sum(float(m[k]) for m in metrics) for k in ("loss", "accuracy")}
            train_seconds = time.time() - t0
            loss = float(sums["loss"]) / spe
            val = (
                evaluate(
                    module,
                    eval_params(state),
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
            record = {
                "epoch": epoch + 1,
                "loss": loss,
                "train_accuracy": float(sums["accuracy"]) / spe,
                "val_accuracy": val.get("accuracy"),
                "val_loss": val.get("loss"),
                "learning_rate": lr,
                "seconds": time.time() - t0,
                "train_images_per_second": spe * batch_size / train_seconds,
            }
            if epoch_hook is not None:
                record.update(epoch_hook(epoch + 1, state))
            # The line first: a kill before the save completes redoes this epoch and drops it.
            log.append(record)
            ckpt.save(epoch + 1, state)
            utils.kill_point("save")
            utils.log(
                " ".join(
                    f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in record.items()
                    if v is not None
                )
            )
    finally:
        batches.close()
        ckpt.close()
    return state, log
