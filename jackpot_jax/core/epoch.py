"""One epoch of any step: the steps, the one non-finite check, one history record."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

import jax
import numpy as np

from jackpot_jax.core.search import MaskTracker
from jackpot_jax.core.state import SearchState
from jackpot_jax.errors import InputError, NonFiniteError


def run_epoch(
    step: Callable,
    state: SearchState,
    batches: Iterable,
    *,
    steps: int,
    epoch: int,
    tracker: MaskTracker | None = None,
    on_step: Callable[[int, dict], None] | None = None,
    label: str = "search",
    what: str = "scores",
    lr: float | None = None,
    failure_context: str = "",
) -> tuple[SearchState, dict]:
    """Runs ``steps`` steps of ``step`` over ``(inputs, labels)`` pairs from ``batches`` in
    epoch ``epoch`` (0-based) and returns ``(state, record)``.

    ``record``: ``loss`` and ``accuracy``, means over the epoch's steps (summed on the host
    in float64), and with a ``tracker`` the mask's ``overlap_with_init`` and ``mask_flips``.
    Metrics stay on the device until the epoch ends (one host sync). If any step's loss or
    updated trainables (``what``) were not finite, raises `NonFiniteError` naming the first
    such step, prefixed by ``label`` and naming the learning rate ``lr`` if given;
    ``failure_context`` is added to that message (e.g. the last good checkpoint).
    ``on_step(i, metrics)`` is called after each step with its device metrics.
    """
    metrics = []
    for i, (inputs, labels) in enumerate(itertools.islice(batches, steps)):
        state, m = step(state, inputs, labels)
        metrics.append(m)
        if on_step is not None:
            on_step(i, m)
    if not metrics:
        raise InputError(f"the batches gave no batch in epoch {epoch + 1}")
    metrics = jax.device_get(metrics)
    n = len(metrics)
    finite = np.asarray([m["finite"] for m in metrics], bool)
    if not finite.all():
        i = int(np.argmin(finite))
        rate = "the learning rate" if lr is None else f"the learning rate (lr={lr})"
        raise NonFiniteError(
            f"{label}: the training loss or the {what} became NaN or infinite at epoch "
            f"{epoch + 1}, step {epoch * steps + i + 1} (step {i + 1} of {n} in the epoch)"
            f"{failure_context}. Lower {rate} or check the inputs"
        )
    record = {
        "loss": sum(float(m["loss"]) for m in metrics) / n,
        "accuracy": sum(float(m["accuracy"]) for m in metrics) / n,
    }
    if tracker is not None:
        record.update(tracker.record(state))
    return state, record
