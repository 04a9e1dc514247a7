"""The jitted steps: one builder for every training step, the search step on top of it, and
the evaluation step.

A step is ``step(state, inputs, labels) -> (state, metrics)``: one data-parallel SGD (or
AdamW) update, jitted with the state donated (all but ``state.frozen``, the caller's weights). What it trains is ``state.params``; what the
model sees is ``params_fn(state.params, state)`` — the weights themselves (pretraining),
the weights times fixed masks (fine-tuning), or the frozen weights times the straight-through
masks of the scores (the search). ``metrics``: ``loss``, ``accuracy`` (NaN with a custom
``loss_fn``) and ``finite`` (the loss and the updated ``params`` are finite), device scalars.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jackpot_jax import kernels
from jackpot_jax import method as jm
from jackpot_jax.core.optim import cross_entropy
from jackpot_jax.core.state import SearchState

ParamsFn = Callable[[Any, SearchState], Any]


def compute_options(config) -> kernels.ComputeOptions:
    """The resolved `ComputeOptions` of a run's config: what its steps are traced with."""
    return kernels.resolve(kernels.ComputeOptions.from_config(config))


def cast_floats(tree, dtype):
    """Floating leaves of ``tree`` cast to ``dtype``; other leaves unchanged."""
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree
    )


def calling_convention(apply_fn: Callable) -> Callable:
    """``apply_fn`` as the steps call it: ``f(variables, x, train=True, mutable=[...],
    rngs={...})``. A Linen ``module.apply`` whose ``__call__`` takes no ``train`` keyword is
    wrapped to drop it, so any Flax model's ``apply`` can be given as it is."""
    module = getattr(apply_fn, "__self__", None)
    if isinstance(module, nn.Module) and getattr(apply_fn, "__name__", "") == "apply":
        if "train" not in inspect.signature(type(module).__call__).parameters:

            def without_train(variables, x, train=False, **kwargs):
                return apply_fn(variables, x, **kwargs)

            return without_train
    return apply_fn


def masked_weights(trainable, state: SearchState):
    """``params_fn`` of fine-tuning (Eq. 9): the trained weights times the fixed masks in
    ``state.frozen``."""
    return jm.apply_masks(trainable, state.frozen)


def make_train_step(
    apply_fn: Callable,
    tx: optax.GradientTransformation,
    *,
    params_fn: ParamsFn | None = None,
    after_update: Callable[[SearchState, SearchState], SearchState] | None = None,
    loss_fn: Callable | None = None,
    label_smoothing: float = 0.0,
    options: kernels.ComputeOptions | None = None,
):
    """One jitted, data-parallel training step of ``state.params`` by ``tx``.

    ``apply_fn(variables, x, train=True, mutable=['batch_stats'], rngs={'dropout': key})``
    calls the model: a Linen ``module.apply`` (with or without a ``train`` keyword, see
    `calling_convention`). ``params_fn(trainable, state)`` gives the
    params the model sees (default: ``trainable`` itself, i.e. dense training; see
    `masked_weights` and `make_search_step`); gradients reach ``trainable`` through it.
    ``after_update(new_state, old_state)`` may change the state after the optimiser step
    (the search's mask-update rule). ``loss_fn(logits, labels) -> scalar`` replaces the
    cross-entropy (``label_smoothing`` then plays no part).

    ``options`` (a `kernels.ComputeOptions`, default the current ones) says how the step is
    computed; it is resolved here and the step is traced under it. With
    ``compute_dtype='bfloat16'`` the params and floating inputs enter the model in bfloat16;
    the trainables, frozen params, optimiser state, BatchNorm statistics and the loss stay
    float32, and gradients reach the float32 trainables through the casts.
    """
    options = kernels.resolve(options)
    apply_fn = calling_convention(apply_fn)
    classify = loss_fn is None
    low = None if options.compute_dtype == "float32" else jnp.dtype(options.compute_dtype)
    params_fn = params_fn or (lambda trainable, state: trainable)

    def donated_step(state: SearchState, frozen, inputs, labels):
        with kernels.use(options):
            return traced_step(state.replace(frozen=frozen), inputs, labels)

    def traced_step(state: SearchState, inputs, labels):
        dropout_rng = jax.random.fold_in(state.rng, state.step)

        def objective(trainable):
            params = params_fn(trainable, state)
            x = inputs
            if low is not None:
                params = cast_floats(params, low)
                x = x.astype(low) if jnp.issubdtype(x.dtype, jnp.floating) else x
            variables = {"params": params}
            if state.batch_stats is not None:
                variables["batch_stats"] = state.batch_stats
            logits, updates = apply_fn(
                variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": dropout_rng}
            )
            logits = logits.astype(jnp.float32)
            if classify:
                loss = cross_entropy(logits, labels, label_smoothing)
            else:
                loss = jnp.asarray(loss_fn(logits, labels), jnp.float32)
            return loss, (logits, updates.get("batch_stats", state.batch_stats))

        (loss, (logits, batch_stats)), grads = jax.value_and_grad(objective, has_aux=True)(
            state.params
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        trainable = optax.apply_updates(state.params, updates)
        new = state.replace(
            step=state.step + 1, params=trainable, opt_state=opt_state, batch_stats=batch_stats
        )
        if after_update is not None:
            new = after_update(new, state)
        acc = jnp.mean(jnp.argmax(logits, -1) == labels) if classify else jnp.float32(jnp.nan)
        # The epoch runner stops on the first step whose loss or updated trainables are not
        # finite.
        finite = jnp.isfinite(loss) & jnp.all(
            jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(trainable)])
        )
        return new.replace(frozen=None), {"loss": loss, "accuracy": acc, "finite": finite}

    # The state is donated (its buffers are reused for the new one), but not the frozen
    # weights: they are the caller's arrays, passed through unchanged.
    jitted = jax.jit(donated_step, donate_argnums=(0,))

    def step(state: SearchState, inputs, labels):
        new, metrics = jitted(state.replace(frozen=None), state.frozen, inputs, labels)
        return new.replace(frozen=state.frozen), metrics

    step.lower = lambda state, inputs, labels: jitted.lower(
        state.replace(frozen=None), state.frozen, inputs, labels
    )
    return step


def make_search_step(
    apply_fn: Callable,
    tx: optax.GradientTransformation,
    budget,
    *,
    mask_update: str = "topk",
    use_abs: bool = True,
    swap_rate: Callable | None = None,
    loss_fn: Callable | None = None,
    label_smoothing: float = 0.0,
    options: kernels.ComputeOptions | None = None,
):
    """The lottery-jackpot search step (Eq. 8): the model sees ``state.frozen * h(scores)``
    with the straight-through masks of mask-update rule ``mask_update`` (`jm.MASK_UPDATES`:
    'topk' recomputes the top-k / N:M mask of ``budget`` every step; 'swap' keeps the
    persistent mask in ``state.rule_state`` and swaps by ``swap_rate(step)`` after each
    update). ``tx`` updates the scores (``state.params``) only; the frozen weights never
    change. Everything else as `make_train_step`."""
    rule = jm.MASK_UPDATES[mask_update](budget, use_abs=use_abs, swap_rate=swap_rate)

    def params_fn(scores, state: SearchState):
        return rule.masked_params(state.frozen, scores, state.rule_state)

    def after_update(new: SearchState, old: SearchState) -> SearchState:
        if mask_update == "topk":  # the rule keeps no state
            return new
        return new.replace(rule_state=rule.update(new.params, old.rule_state, old.step))

    return make_train_step(
        apply_fn,
        tx,
        params_fn=params_fn,
        after_update=after_update,
        loss_fn=loss_fn,
        label_smoothing=label_smoothing,
        options=options,
    )


def make_eval_step(module, options: kernels.ComputeOptions | None = None):
    """Jitted evaluation step of a classifier, one per module and resolved `ComputeOptions`
    (cached: evaluation runs every epoch): ``step(variables, images, labels, weights)`` ->
    weighted sums of loss, top-1, top-5 and the weight. Evaluation is float32 whatever
    ``options.compute_dtype`` says."""
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
