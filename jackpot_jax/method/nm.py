"""N:M patterns: n kept in every m consecutive weights along the input axis."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jackpot_jax.method.paths import FilterFn, PyTree, flatten_paths, map_prunable
from jackpot_jax.method.topk import float_dtype, maybe_abs, ordered_keys, straight_through_of

# ---------------------------------------------------------------------------------------------
# N:M patterns
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NMPattern:
    """A budget leaf: exactly ``n`` kept weights in every group of ``m`` consecutive entries
    along a kernel's input-feature axis (axis -2: ``in`` of a Dense ``(in, out)`` kernel, ``I``
    of a conv ``HWIO`` kernel), the reduction axis of the layer's matmul. 2:4 is what NVIDIA's
    sparse tensor cores (A100, H100, H200) run at up to twice the dense rate.
    """

    n: int
    m: int

    def __post_init__(self):
        if not (
            isinstance(self.n, (int, np.integer))
            and isinstance(self.m, (int, np.integer))
            and 0 < self.n <= self.m
        ):
            raise ValueError(
                f"N:M pattern needs integers 0 < n <= m, got n={self.n!r}, m={self.m!r}"
            )

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"

    @property
    def sparsity(self) -> float:
        return 1.0 - self.n / self.m

    def fits(self, shape: Sequence[int]) -> bool:
        """Whether a kernel of this shape can carry the pattern (axis -2 divisible by m)."""
        return len(shape) >= 2 and shape[-2] % self.m == 0

    def check(self, shape: Sequence[int], what: str = "scores") -> None:
        if not self.fits(shape):
            raise ValueError(
                f"{what} of shape {tuple(shape)} cannot carry the {self} pattern: it needs at "
                f"least 2 dims and an input axis (-2) divisible by {self.m}"
            )


def parse_pattern(text: str) -> NMPattern | None:
    """``"2:4"`` -> ``NMPattern(2, 4)``; ``""`` -> ``None`` (unstructured top-k)."""
    text = (text or "").strip()
    if not text:
        return None
    parts = text.split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(
            f"pattern={text!r}; expected 'n:m' with integers 0 < n <= m, e.g. "
            "'2:4', or '' for unstructured masks"
        )
    return NMPattern(int(parts[0]), int(parts[1]))


def nm_mask(scores: jax.Array, n: int, m: int) -> jax.Array:
    """0/1 array of ``scores``' shape with exactly ``n`` ones in every group of ``m``
    consecutive entries along axis -2, on the group's largest scores.

    Ties go to the lower index in the group (the lower flat index, as in `topk_mask`); NaN
    ranks below every number. ``scores`` needs at least 2 dims and ``scores.shape[-2] % m == 0``. Works under `jit`;
    returns the dtype of ``scores`` if floating.
    """
    NMPattern(n, m).check(np.shape(scores))
    return _nm_mask(jnp.asarray(scores), int(n), int(m))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _nm_mask(scores: jax.Array, n: int, m: int) -> jax.Array:
    return nm_hard(scores, n, m).astype(float_dtype(scores))


def nm_hard(scores: jax.Array, n: int, m: int) -> jax.Array:
    """bool N:M mask. Each entry's rank in its group is the number of entries that beat it
    (a larger key, or an equal key at a lower index); the ``n`` of rank < n are kept. The
    order-preserving uint32 keys make the order total (NaN included), so counts are exact."""
    keys = jnp.moveaxis(ordered_keys(jax.lax.stop_gradient(scores)), -2, -1)
    groups = keys.reshape(*keys.shape[:-1], keys.shape[-1] // m, m)
    a, b = groups[..., :, None], groups[..., None, :]  # entry i, competitor j
    lower = np.tril(np.ones((m, m), bool), -1)  # [i, j]: j < i
    rank = jnp.sum((b > a) | ((b == a) & lower), axis=-1, dtype=jnp.int32)
    return jnp.moveaxis((rank < n).reshape(keys.shape), -1, -2)


def nm_ste_mask(scores: jax.Array, n: int, m: int, *, use_abs: bool = True) -> jax.Array:
    """Straight-through N:M mask: the value is ``nm_mask`` (of ``|scores|`` with ``use_abs``),
    the gradient the identity (times ``sign(scores)`` with ``use_abs``), as `ste_mask`."""
    s = maybe_abs(scores, use_abs)
    return straight_through_of(nm_mask(s, n, m), s)


def nm_budget(params: PyTree, pattern: NMPattern, filter_fn: FilterFn | None = None) -> PyTree:
    """Budget tree: ``pattern`` on every prunable kernel whose input axis (-2) is divisible by
    ``pattern.m``, and the kernel's full size (kept dense) on the others, e.g. a first
    convolution with one input channel; `dense_kept` lists those."""
    return map_prunable(
        lambda _, w: pattern if pattern.fits(np.shape(w)) else int(np.size(w)), params, filter_fn
    )


def dense_kept(budget: PyTree) -> list[str]:
    """Paths of an N:M budget tree's layers that carry no `NMPattern` (`nm_budget` gives them
    their full size: kept dense); [] for a budget with no pattern at all."""
    flat = flatten_paths(budget)
    if not any(isinstance(b, NMPattern) for b in flat.values()):
        return []
    return [p for p, b in flat.items() if not isinstance(b, NMPattern)]


def satisfies_pattern(mask, pattern: NMPattern) -> bool:
    """Whether a 0/1 mask has exactly ``n`` ones in every group of ``m`` along axis -2."""
    mask = np.asarray(mask)
    if not pattern.fits(mask.shape):
        return False
    per_group = np.moveaxis(mask != 0, -2, -1).reshape(-1, pattern.m).sum(-1)
    return bool(np.all(per_group == pattern.n))


def pattern_summary(masks: PyTree, pattern: NMPattern) -> dict[str, Any]:
    """What an N:M mask tree achieves: ``pattern``, the layers it covers and those kept dense,
    the sparsity over the patterned layers (``1 - n/m`` when every one satisfies it) and over
    all of them, and whether every patterned layer satisfies the pattern exactly."""
    flat = {p: np.asarray(m) for p, m in flatten_paths(masks).items()}
    patterned = [p for p, m in flat.items() if pattern.fits(m.shape)]
    kept = [p for p in flat if p not in patterned and np.all(flat[p] != 0)]
    other = [p for p in flat if p not in patterned and p not in kept]

    def zeros(paths):
        n = sum(flat[p].size for p in paths)
        return (
            float(sum(flat[p].size - np.count_nonzero(flat[p]) for p in paths) / n) if n else None
        )

    return {
        "pattern": str(pattern),
        "patterned_layers": patterned,
        "dense_kept": kept,
        "unpatterned_pruned": other,
        "pattern_satisfied": all(satisfies_pattern(flat[p], pattern) for p in patterned),
        "sparsity_patterned": zeros(patterned),
        "sparsity_all_masked": zeros(list(flat)),
    }
