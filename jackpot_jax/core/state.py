"""`SearchState`: everything a step reads and a checkpoint keeps."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax.training import train_state


class SearchState(train_state.TrainState):
    """A Flax `TrainState` for every run of the library: search, pretraining, fine-tuning.

    As in any `TrainState`, ``params`` is what the optimiser ``tx`` trains and ``apply_fn``
    calls the model. In a search ``params`` holds the *scores* (read them as ``.scores``) and
    ``frozen`` the pre-trained weights, which no step changes; in pretraining ``params`` are
    the weights and ``frozen`` is None; in fine-tuning (Eq. 9) ``params`` are the weights and
    ``frozen`` the fixed masks. ``batch_stats``: BatchNorm statistics (None without BatchNorm);
    ``rng``: raw key data (``jax.random.key_data``), folded with the step for dropout;
    ``rule_state``: what the search's mask-update rule keeps between steps (the persistent
    mask of the ``swap`` rule; None for ``topk``).

    Checkpoints keep everything but ``frozen`` (the caller's pre-trained weights, which it can
    load again): see `checkpoint_view`.
    """

    frozen: Any = None
    batch_stats: Any = None
    rng: jax.Array | None = None
    rule_state: Any = None

    @property
    def scores(self):
        """The search's scores (``params``: what the optimiser trains)."""
        return self.params

    @classmethod
    def create(cls, *, apply_fn, params, tx, seed: int | None = 0, **kwargs) -> SearchState:
        """A state at step 0 (an int32 scalar) with ``tx.init(params)``; ``rng`` from ``seed``
        unless given."""
        if "rng" not in kwargs and seed is not None:
            kwargs["rng"] = jax.random.key_data(jax.random.key(seed))
        state = super().create(apply_fn=apply_fn, params=params, tx=tx, **kwargs)
        return state.replace(step=jnp.zeros((), jnp.int32))

    def checkpoint_view(self) -> SearchState:
        """The state as checkpoints keep it: without the frozen weights."""
        return self.replace(frozen=None)
