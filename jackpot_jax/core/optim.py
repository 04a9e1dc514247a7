"""The optimiser over the trainable tree, its learning-rate schedules, and the loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jackpot_jax.errors import ConfigError


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


OPTIMIZERS = ("sgd", "adamw")


def make_optimizer(opt_cfg, epochs: int, steps_per_epoch: int):
    """(optimizer, schedule) of ``opt_cfg.optimizer``: 'sgd' is torch-style SGD (weight decay
    added to the gradient, then momentum, Nesterov if asked: the official code); 'adamw' is
    Adam with decoupled weight decay (``optax.adamw``, betas ``b1`` / ``b2``), what
    transformers are trained with. ``opt_cfg.schedule`` is 'cosine_epoch' (the official code)
    or 'cosine_step'; it scales the learning rate of either."""
    name = opt_cfg.get("schedule", "cosine_epoch")
    if name not in SCHEDULES:
        raise ConfigError(f"schedule={name!r}; expected one of {sorted(SCHEDULES)}")
    kind = opt_cfg.get("optimizer", "sgd")
    if kind not in OPTIMIZERS:
        raise ConfigError(f"optimizer={kind!r}; expected one of {list(OPTIMIZERS)}")
    schedule = SCHEDULES[name](opt_cfg.lr, epochs, steps_per_epoch)
    if kind == "adamw":
        return optax.adamw(
            schedule,
            b1=opt_cfg.get("b1", 0.9),
            b2=opt_cfg.get("b2", 0.999),
            weight_decay=opt_cfg.weight_decay,
        ), schedule
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
