"""The training engine every mode shares: devices, train state, jitted steps, evaluation and
the epoch loop.

One jitted, data-parallel step over a `Mesh` ('data' axis: batch sharded, state replicated,
BatchNorm statistics over the global batch). The loop trains, validates, checkpoints
(`jackpot_jax.pipeline.resume`) and logs once per epoch, and resumes from the newest checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jackpot_jax import kernels, utils
from jackpot_jax import sparsity as sp
from jackpot_jax.data import input_pipeline
from jackpot_jax.errors import ConfigError, InputError, NonFiniteError
from jackpot_jax.pipeline.resume import Checkpointer, MetricsLog

# ---------------------------------------------------------------------------------------------
# Optimiser and loss
# ---------------------------------------------------------------------------------------------


def cosine_per_epoch(lr: float, epochs: int, steps_per_epoch: int) -> optax.Schedule:
    """Cosine from ``lr`` to 0 stepped once per epoch, no warm-up (the official schedule)."""

    def schedule(step):
        epoch = jnp.minimum(step // steps_per_epoch, epochs)
        return 0.5 * lr * (1.0 + jnp.cos(jnp.pi * epoch / max(epochs, 1)))

    return schedule


def cosine_per_step(lr: float, epochs: int, steps_per_epoch: int) -> optax.Schedule:
    """Cosine from ``lr`` to 0 over the run's ``epochs * steps_per_epoch`` steps, no warm-up."""
    total = max(epochs * steps_per_epoch, 1)

    def schedule(step):
        t = jnp.minimum(step, total)
        return 0.5 * lr * (1.0 + jnp.cos(jnp.pi * t / total))

    return schedule


SCHEDULES = {"cosine_epoch": cosine_per_epoch, "cosine_step": cosine_per_step}


def make_optimizer(opt_cfg, epochs: int, steps_per_epoch: int):
    """(optimizer, schedule): torch-style SGD: weight decay added to the gradient, then momentum
    (no Nesterov); ``opt_cfg.schedule`` is 'cosine_epoch' (the official code) or 'cosine_step'."""
    name = opt_cfg.get("schedule", "cosine_epoch")
    if name not in SCHEDULES:
        raise ConfigError(f"schedule={name!r}; expected one of {sorted(SCHEDULES)}")
    schedule = SCHEDULES[name](opt_cfg.lr, epochs, steps_per_epoch)
    return optax.chain(
        optax.add_decayed_weights(opt_cfg.weight_decay),
        optax.sgd(schedule, momentum=opt_cfg.momentum or None, nesterov=opt_cfg.nesterov),
    ), schedule


def cross_entropy(logits, labels, label_smoothing: float = 0.0):
    num_classes = logits.shape[-1]
    onehot = jax.nn.one_hot(labels, num_classes)
    if label_smoothing:
        onehot = optax.smooth_labels(onehot, label_smoothing)
    return optax.softmax_cross_entropy(logits, onehot).mean()


# ---------------------------------------------------------------------------------------------
# Devices
# ---------------------------------------------------------------------------------------------


def make_mesh(num_devices: int | None = None) -> Mesh:
    devices = jax.devices()
    if num_devices:
        if num_devices > len(devices):
            raise ConfigError(f"num_devices={num_devices} but only {len(devices)} devices exist")
        devices = devices[:num_devices]
    return Mesh(np.asarray(devices), ("data",))


def check_batch(batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
    n = mesh.devices.size
    if batch_size % n:
        raise ConfigError(
            f"{what}={batch_size} does not split across the {n} devices; use a "
            f"multiple of {n} (e.g. {max(n, batch_size // n * n)})"
        )


def shard_batch(mesh: Mesh, batch):
    """Global numpy batch -> arrays sharded along 'data' (this process supplies its slice)."""
    sharding = NamedSharding(mesh, P("data"))
    nproc, pid = jax.process_count(), jax.process_index()

    def put(x):
        per = x.shape[0] // nproc
        local = x[pid * per : (pid + 1) * per]
        return jax.make_array_from_process_local_data(sharding, local, x.shape)

    return jax.tree.map(put, batch)


def shard_local_batch(mesh: Mesh, batch):
    """This process's rows of a global batch -> arrays sharded along 'data' (the global batch
    is every process's rows, in process order)."""
    sharding = NamedSharding(mesh, P("data"))
    nproc = jax.process_count()
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(
            sharding, x, (x.shape[0] * nproc, *x.shape[1:])
        ),
        batch,
    )


def batch_to_mesh(mesh: Mesh, ds, keys=("image", "label")):
    """A function: a uint8 batch dict of this process's rows -> the arrays ``keys`` sharded on
    the mesh, images normalised there (float32, the dataset's mean/std)."""
    scale = (1.0 / (255.0 * np.asarray(ds.std, np.float64))).astype(np.float32)
    bias = (-np.asarray(ds.mean, np.float64) / np.asarray(ds.std, np.float64)).astype(np.float32)
    normalize = jax.jit(lambda x: x.astype(jnp.float32) * scale + bias)

    def put(batch):
        arrays = shard_local_batch(mesh, tuple(batch[k] for k in keys))
        return (normalize(arrays[0]), *arrays[1:])

    return put


def replicate(mesh: Mesh, tree):
    return jax.device_put(tree, NamedSharding(mesh, P()))


# ---------------------------------------------------------------------------------------------
# Training state and steps
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TrainState:
    """What must survive a crash. ``trainable`` is the params (pretrain/finetune) or the
    scores (search); ``frozen`` inputs are not part of the state. ``masks``: the persistent
    0/1 masks of a swap search (``search.mask_update='swap'``), None otherwise."""

    step: jax.Array
    trainable: Any
    opt_state: Any
    batch_stats: Any
    rng: jax.Array
    masks: Any = None


jax.tree_util.register_dataclass(
    TrainState,
    data_fields=["step", "trainable", "opt_state", "batch_stats", "rng", "masks"],
    meta_fields=[],
)


COMPUTE_DTYPES = kernels.options.COMPUTE_DTYPES


def compute_options(config) -> kernels.ComputeOptions:
    """The resolved `ComputeOptions` of a run's config: what its steps are traced with."""
    return kernels.resolve(kernels.ComputeOptions.from_config(config))


def _cast_floats(tree, dtype):
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree
    )


def make_train_step(
    module,
    kind: str,
    tx,
    budget=None,
    use_abs: bool = True,
    label_smoothing: float = 0.0,
    swap_rate: Callable | None = None,
    options: kernels.ComputeOptions | None = None,
):
    """One jitted SGD step. ``kind``: 'dense' (trainable = params), 'search' (trainable =
    scores, frozen = pre-trained params) or 'masked' (trainable = params, frozen = masks).
    With ``swap_rate`` (step -> fraction, see `sparsity.swap_rate`) a search uses the state's
    persistent masks and updates them by `sparsity.swap_masks` after the optimiser step.

    ``options`` (a `ComputeOptions`, default the current ones) says how the step is computed;
    it is resolved here and the step is traced under it. ``options.compute_dtype='bfloat16'``:
    the (masked) params and the images enter the model in bfloat16, so activations and
    convolutions are bfloat16; the trainable tree, frozen params, optimiser state, BatchNorm
    statistics (Flax reduces them in float32) and the loss stay float32, and gradients reach
    the float32 trainables through the casts."""
    options = kernels.resolve(options)
    low = None if options.compute_dtype == "float32" else jnp.dtype(options.compute_dtype)

    def effective_params(trainable, frozen, masks):
        if kind == "dense":
            return trainable
        if kind == "search" and swap_rate is not None:
            return sp.masked_params_from_masks(frozen, trainable, masks, use_abs=use_abs)
        if kind == "search":
            return sp.masked_params(frozen, trainable, budget, use_abs=use_abs)
        return sp.apply_masks(trainable, frozen)

    def step(state: TrainState, frozen, images, labels):
        with kernels.use(options):
            return traced_step(state, frozen, images, labels)

    def traced_step(state: TrainState, frozen, images, labels):
        dropout_rng = jax.random.fold_in(state.rng, state.step)

        def loss_fn(trainable):
            params = effective_params(trainable, frozen, state.masks)
            x = images
            if low is not None:
                params, x = _cast_floats(params, low), x.astype(low)
            variables = {"params": params}
            if state.batch_stats is not None:
                variables["batch_stats"] = state.batch_stats
            logits, updates = module.apply(
                variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": dropout_rng}
            )
            loss = cross_entropy(logits.astype(jnp.float32), labels, label_smoothing)
            return loss, (logits, updates.get("batch_stats", state.batch_stats))

        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.trainable
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.trainable)
        trainable = optax.apply_updates(state.trainable, updates)
        masks = state.masks
        if swap_rate is not None:  # the 2023 rule: swap pairs after every optimiser step
            masks = sp.swap_masks(trainable, masks, budget, swap_rate(state.step), use_abs=use_abs)
        acc = jnp.mean(jnp.argmax(logits, -1) == labels)
        new = TrainState(state.step + 1, trainable, opt_state, batch_stats, state.rng, masks)
        # The loop stops on the first step whose loss or updated trainables are not finite.
        finite = jnp.isfinite(loss) & jnp.all(
            jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(trainable)])
        )
        return new, {"loss": loss, "accuracy": acc, "finite": finite}

    return jax.jit(step, donate_argnums=(0,))


def make_eval_step(module, options: kernels.ComputeOptions | None = None):
    """Jitted eval step, one per module and resolved `ComputeOptions` (cached: evaluation runs
    every epoch). Evaluation is float32 whatever ``options.compute_dtype`` says."""
    return _eval_step(module, kernels.resolve(options).replace(compute_dtype="float32"))


@functools.lru_cache(maxsize=16)
def _eval_step(module, options: kernels.ComputeOptions):
    @jax.jit
    def step(variables, images, labels, weights):
        with kernels.use(options):
            logits = module.apply(variables, images, train=False)
        logp = jax.nn.log_softmax(logits)
        nll = -jnp.take_along_axis(logp, labels[:, None], axis=1)[:, 0]
        top1 = jnp.argmax(logits, -1) == labels
        k = min(5, logits.shape[-1])
        topk = jnp.any(jax.lax.top_k(logits, k)[1] == labels[:, None], axis=-1)
        return {
            "loss": jnp.sum(nll * weights),
            "top1": jnp.sum(top1 * weights),
            "top5": jnp.sum(topk * weights),
            "count": jnp.sum(weights),
        }

    return step


def evaluate(
    module,
    variables,
    ds,
    split: str,
    batch_size: int,
    mesh: Mesh,
    workers: int = input_pipeline.AUTO_WORKERS,
    options: kernels.ComputeOptions | None = None,
) -> dict:
    """Top-1 (and top-5 where classes > 5) accuracy and mean loss over a whole split.
    ``workers``: loader processes, as ``config.data_workers`` (default: decoded files use
    every core, in-memory arrays the main process)."""
    check_batch(batch_size, mesh, "eval_batch_size")
    step = make_eval_step(module, options)
    variables = replicate(mesh, variables)
    totals = None
    # Every batch is padded to batch_size (weight 0): one compilation; each process reads its rows.
    workers = input_pipeline.resolve_workers(workers, ds.split(split))
    batches = input_pipeline.eval_batches(
        ds,
        split,
        batch_size,
        workers=workers,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        normalize=False,
    )
    put = batch_to_mesh(mesh, ds, ("image", "label", "weight"))
    for b in batches:
        out = step(variables, *put(b))
        out = jax.device_get(out)
        totals = out if totals is None else {k: totals[k] + out[k] for k in out}
    if totals is None:
        raise InputError(f"the {split} split is empty")
    count = float(totals["count"])
    res = {
        "accuracy": float(totals["top1"]) / count,
        "loss": float(totals["loss"]) / count,
        "examples": int(count),
    }
    if ds.num_classes > 5:
        res["top5"] = float(totals["top5"]) / count
    return res


# ---------------------------------------------------------------------------------------------
# The epoch loop
# ---------------------------------------------------------------------------------------------


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
        sc = config.search
        sp.check_swap_schedule(sc.swap_schedule, sc.swap_rate, sc.swap_power)
        swap_rate = lambda step: sp.swap_rate(
            step // spe, epochs, sc.swap_schedule, sc.swap_rate, sc.swap_power
        )
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
