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
