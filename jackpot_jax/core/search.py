"""Starting a search: the prune filter, the budget, the warm-up scores and the state; and the
search's masks as it goes (overlap with the initial mask, flips)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import optax

from jackpot_jax import method as jm
from jackpot_jax import utils
from jackpot_jax.core.state import SearchState
from jackpot_jax.errors import ConfigError


class InitialSearch(NamedTuple):
    """What `init_search` returns: the ``state`` at step 0; the ``budget`` (per-layer keep
    counts, N:M patterns, or one global count) that the search step needs; the initial hard
    ``masks`` (the warm-up mask, or the top-k of random scores); the ``filter_fn`` that chose
    the prunable leaves."""

    state: SearchState
    budget: Any
    masks: Any
    filter_fn: jm.FilterFn


def search_filter(
    include: Sequence[str] | None = None, exclude: Sequence[str] | None = None
) -> jm.FilterFn:
    """The prune filter of ``include`` / ``exclude`` regexes over '/'-joined parameter paths
    (default: every kernel except a ``classifier``; see `jm.make_filter`)."""
    return jm.make_filter(
        include=list(include) if include else None,
        exclude=list(jm.DEFAULT_EXCLUDE if exclude is None else exclude),
    )


def search_budget(
    params,
    *,
    sparsity: float = 0.9,
    pattern: str | jm.NMPattern | None = None,
    distribution: str = "global_magnitude",
    filter_fn: jm.FilterFn | None = None,
):
    """The budget of a search: with ``pattern`` (e.g. "2:4") an N:M budget tree (``sparsity``
    and ``distribution`` then play no part; kernels the pattern does not fit stay dense),
    else keep counts at ``sparsity`` under ``distribution`` (`jm.DISTRIBUTIONS`)."""
    if isinstance(pattern, str):
        pattern = jm.parse_pattern(pattern)
    if pattern is not None:
        return jm.nm_budget(params, pattern, filter_fn)
    return jm.keep_counts(params, sparsity, distribution, filter_fn=filter_fn)


def init_search(
    params,
    *,
    apply_fn: Callable,
    tx: optax.GradientTransformation,
    batch_stats=None,
    sparsity: float = 0.9,
    pattern: str | jm.NMPattern | None = None,
    distribution: str = "global_magnitude",
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    filter_fn: jm.FilterFn | None = None,
    init: str = "magnitude",
    score_kept: float = 1.0,
    score_pruned: float = 0.95,
    mask_update: str = "topk",
    use_abs: bool = True,
    seed: int = 0,
    inputs: jm.CriterionInputs | None = None,
) -> InitialSearch:
    """Everything a search starts from, for pre-trained ``params`` (never changed).

    The prunable leaves: ``filter_fn``, or the filter of ``include`` / ``exclude``
    (`search_filter`). The budget: `search_budget`. The scores: warm-up ``init``
    (`jm.WARMUPS`: a criterion's mask under the budget as two levels ``score_kept`` /
    ``score_pruned`` — magnitude by default, as the paper — or ``kaiming`` random scores);
    criteria that read data (SNIP, GraSP) take it from ``inputs`` (`jm.CriterionInputs`).
    The state: `SearchState` with the scores as ``params``, ``tx.init(scores)``, ``params``
    as ``frozen``, ``batch_stats``, the rng of ``seed`` and the ``mask_update`` rule's state.
    """
    jm.MASK_UPDATES.check(mask_update)
    warmup = jm.WARMUPS[init]
    filter_fn = filter_fn or search_filter(include, exclude)
    try:
        jm.prunable_paths(params, filter_fn)
    except ValueError as e:
        raise ConfigError(f"no prunable parameter: {e}") from None
    budget = search_budget(
        params, sparsity=sparsity, pattern=pattern, distribution=distribution, filter_fn=filter_fn
    )
    if inputs is None:
        inputs = jm.CriterionInputs(filter_fn=filter_fn, seed=seed)
    scores = warmup(params, budget, inputs, score_kept, score_pruned)
    masks = jax.jit(lambda s: jm.masks_from_scores(s, budget, use_abs=use_abs))(scores)
    rule_state = masks if mask_update == "swap" else None
    state = SearchState.create(
        apply_fn=apply_fn,
        params=scores,
        tx=tx,
        seed=seed,
        frozen=params,
        batch_stats=batch_stats,
        rule_state=rule_state,
    )
    return InitialSearch(state, budget, masks, filter_fn)


def current_masks(state: SearchState, budget, *, mask_update: str = "topk", use_abs: bool = True):
    """The search's hard masks now: the persistent mask (``swap``) or the top-k / N:M mask
    of the scores (``topk``), as host (numpy) arrays or arrays on the default device."""
    if mask_update == "swap":
        return utils.as_numpy(state.rule_state)
    # Host copies: scores committed to a mesh would compile the mask function again.
    return jm.masks_from_scores(utils.as_numpy(state.params), budget, use_abs=use_abs)


class MaskTracker:
    """The search's history fields: overlap of the current mask with the initial one
    (Eq. 7) and the number of mask entries that changed since the last `record`."""

    def __init__(self, masks_fn: Callable[[SearchState], Any], initial):
        self.masks_fn = masks_fn
        self.initial = initial
        self.previous = initial

    def record(self, state: SearchState) -> dict:
        masks = self.masks_fn(state)
        out = {
            "overlap_with_init": float(jm.overlap(masks, self.initial)),
            "mask_flips": int(jm.mask_flips(masks, self.previous)),
        }
        self.previous = masks
        return out


def swap_rate_schedule(
    epochs: int,
    steps_per_epoch: int,
    schedule: str = "official",
    rate: float = 1.0,
    power: float = 4.0,
) -> Callable:
    """``step -> fraction`` of the eligible pairs the swap rule swaps after that step
    (`jm.swap_rate` of the step's epoch)."""
    jm.check_swap_schedule(schedule, rate, power)
    return lambda step: jm.swap_rate(step // steps_per_epoch, epochs, schedule, rate, power)
