"""Mask-update rules: how a search turns its scores into the mask of each step.

`MASK_UPDATES` maps a rule's name to ``fn(budget, *, use_abs, swap_rate) -> MaskRule``:

* ``topk`` (the paper, Eq. 8): the mask is recomputed from the scores at every step, the
  exact top-k of each layer (or its N:M pattern); the rule keeps no state.
* ``swap`` (the authors' 2023 code): a persistent mask, updated after every optimiser step by
  balanced swaps (`swap_masks`) at the fraction ``swap_rate(step)``; the rule's state is the
  mask.

A `MaskRule` is four pure functions; the search step calls them and keeps ``rule_state`` in
its `SearchState`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from jackpot_jax.errors import ConfigError
from jackpot_jax.method.masks import masked_params, masks_from_scores
from jackpot_jax.method.paths import PyTree
from jackpot_jax.method.registry import Registry
from jackpot_jax.method.swap import masked_params_from_masks, swap_masks


class MaskRule(NamedTuple):
    """``init(scores) -> rule_state``; ``masked_params(params, scores, rule_state)``: the
    params the model sees, with straight-through masks (gradient to the scores);
    ``masks(scores, rule_state)``: the hard 0/1 masks now; ``update(scores, rule_state,
    step) -> rule_state``: after the optimiser step ``step`` (0-based) moved the scores."""

    init: Callable[[PyTree], Any]
    masked_params: Callable[[PyTree, PyTree, Any], PyTree]
    masks: Callable[[PyTree, Any], PyTree]
    update: Callable[[PyTree, Any, Any], Any]


MASK_UPDATES = Registry(
    "mask_update",
    "fn(budget, *, use_abs: bool, swap_rate: step -> fraction | None) -> MaskRule",
)


@MASK_UPDATES.register("topk")
def topk_rule(budget, *, use_abs: bool = True, swap_rate=None) -> MaskRule:
    """The paper's rule: the top-k (or N:M) mask of the current scores at every step."""
    return MaskRule(
        init=lambda scores: None,
        masked_params=lambda params, scores, _: masked_params(
            params, scores, budget, use_abs=use_abs
        ),
        masks=lambda scores, _: masks_from_scores(scores, budget, use_abs=use_abs),
        update=lambda scores, state, step: state,
    )


@MASK_UPDATES.register("swap")
def swap_rule(budget, *, use_abs: bool = True, swap_rate=None) -> MaskRule:
    """The 2023 rule: a persistent mask (initially the scores' top-k) updated by balanced
    swaps after every step; ``swap_rate(step)`` is the fraction of eligible pairs swapped
    (see `swap_rate`). Needs per-layer keep counts (no N:M, no global count)."""
    if swap_rate is None:
        raise ConfigError("mask_update='swap' needs a swap_rate schedule (step -> fraction)")
    return MaskRule(
        init=lambda scores: masks_from_scores(scores, budget, use_abs=use_abs),
        masked_params=lambda params, scores, masks: masked_params_from_masks(
            params, scores, masks, use_abs=use_abs
        ),
        masks=lambda scores, masks: masks,
        update=lambda scores, masks, step: swap_masks(
            scores, masks, budget, swap_rate(step), use_abs=use_abs
        ),
    )
