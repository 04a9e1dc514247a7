"""The train state and the jitted steps: SGD on weights or scores, evaluation."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from jackpot_jax import kernels
from jackpot_jax import method as jm
from jackpot_jax.data import input_pipeline
from jackpot_jax.errors import InputError
from jackpot_jax.pipeline.engine.optim import cross_entropy
from jackpot_jax.pipeline.engine.sharding import batch_to_mesh, check_batch, replicate


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
    loss_fn: Callable | None = None,
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
    the float32 trainables through the casts.

    ``loss_fn(logits, labels) -> scalar`` replaces the cross-entropy (``label_smoothing`` then
    plays no part) for models that are not classifiers; the step's ``accuracy`` is then NaN."""
    options = kernels.resolve(options)
    classify = loss_fn is None
    low = None if options.compute_dtype == "float32" else jnp.dtype(options.compute_dtype)

    def effective_params(trainable, frozen, masks):
        if kind == "dense":
            return trainable
        if kind == "search" and swap_rate is not None:
            return jm.masked_params_from_masks(frozen, trainable, masks, use_abs=use_abs)
        if kind == "search":
            return jm.masked_params(frozen, trainable, budget, use_abs=use_abs)
        return jm.apply_masks(trainable, frozen)

    def step(state: TrainState, frozen, images, labels):
        with kernels.use(options):
            return traced_step(state, frozen, images, labels)

    def traced_step(state: TrainState, frozen, images, labels):
        dropout_rng = jax.random.fold_in(state.rng, state.step)

        def objective(trainable):
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
            logits = logits.astype(jnp.float32)
            if classify:
                loss = cross_entropy(logits, labels, label_smoothing)
            else:
                loss = jnp.asarray(loss_fn(logits, labels), jnp.float32)
            return loss, (logits, updates.get("batch_stats", state.batch_stats))

        (loss, (logits, batch_stats)), grads = jax.value_and_grad(objective, has_aux=True)(
            state.trainable
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.trainable)
        trainable = optax.apply_updates(state.trainable, updates)
        masks = state.masks
        if swap_rate is not None:  # the 2023 rule: swap pairs after every optimiser step
            masks = jm.swap_masks(trainable, masks, budget, swap_rate(state.step), use_abs=use_abs)
        acc = jnp.mean(jnp.argmax(logits, -1) == labels) if classify else jnp.float32(jnp.nan)
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
