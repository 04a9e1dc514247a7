"""Claims decided on 95% intervals, worded by the tool.

A difference here is `stats.paired_difference`'s dict (`mean`, `ci95` = [lo, hi] or None,
`seeds`), in points. Two tests, decided on the interval's bounds, never on the mean:

- `within_margin(ci, margin)`: equivalence: both bounds strictly inside (-margin, +margin);
- `non_inferior(ci, margin)`: non-inferiority: the lower bound above -margin.

`equivalence_sentence` and `non_inferiority_sentence` claim "within X points of" / "no worse
than" only where the test passes; otherwise they state the difference with its interval and
say which bound misses the margin. `difference_sentence` states a difference with its
interval and nothing else. With fewer than 2 seeds there is no interval: the sentences say so
and claim nothing (no causal sentence rests on one seed).
"""

from __future__ import annotations

import math

from jackpot_jax.errors import InputError


def _ci(ci):
    if ci is None:
        return None
    if len(ci) != 2 or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in ci):
        raise InputError(f"interval {ci!r}: want [lower, upper], two finite numbers")
    lo, hi = float(ci[0]), float(ci[1])
    if lo > hi:
        raise InputError(f"interval {ci!r}: lower bound above upper bound")
    return lo, hi


def _margin(margin) -> float:
    if not isinstance(margin, (int, float)) or not margin > 0:
        raise InputError(f"margin {margin!r}: want a positive number of points")
    return float(margin)


def within_margin(ci, margin: float) -> bool:
    """Equivalence: True when both bounds of the interval [lo, hi] lie strictly inside
    (-margin, +margin), as `non_inferior`'s bound does. False without an interval (None)."""
    m, c = _margin(margin), _ci(ci)
    return c is not None and -m < c[0] and c[1] < m


def non_inferior(ci, margin: float) -> bool:
    """Non-inferiority of a over b for a difference a - b: True when the interval's lower
    bound is above -margin. False without an interval (None)."""
    m, c = _margin(margin), _ci(ci)
    return c is not None and c[0] > -m


def interval_text(diff: dict | None, unit: str = "points") -> str:
    """'+0.24 points (95% interval -0.18 to +0.66, 3 seeds)'; one seed: '+0.24 points (1 seed:
    no interval)'; None: 'n/a (no common seeds)'."""
    if diff is None:
        return "n/a (no common seeds)"
    head = f"{diff['mean']:+.2f} {unit}"
    c = _ci(diff.get("ci95"))
    n = diff.get("seeds")
    if c is None:
        return head + f" ({n} seed{'s' if n != 1 else ''}: no interval)"
    return head + f" (95% interval {c[0]:+.2f} to {c[1]:+.2f}, {n} seeds)"


def _difference_sentence(a: str, b: str, diff: dict | None, unit: str = "points") -> str:
    """'A minus B: +0.24 points (95% interval -0.18 to +0.66, 3 seeds).' and, when the
    interval excludes 0, which side it lies on; no claim of equality when it includes 0 (the
    interval's width says what it allows)."""
    text = f"{a} minus {b}: {interval_text(diff, unit)}"
    c = None if diff is None else _ci(diff.get("ci95"))
    if c is None:
        return text + "; too few seeds to decide anything."
    if c[0] > 0:
        return text + f"; {a} is higher (the interval excludes 0)."
    if c[1] < 0:
        return text + f"; {a} is lower (the interval excludes 0)."
    return text + (
        f"; the interval includes 0: neither is shown higher, and it allows {b} to be up to "
        f"{-c[0]:.2f} {unit} higher or {a} up to {c[1]:.2f} {unit} higher."
    )


def _equivalence_sentence(
    a: str, b: str, diff: dict | None, margin: float, unit: str = "points"
) -> str:
    """'A is within 0.5 points of B: ...' only when `within_margin(diff's interval, margin)`;
    otherwise the difference with its interval and the bound that misses the margin."""
    m = _margin(margin)
    c = None if diff is None else _ci(diff.get("ci95"))
    if c is not None and within_margin(c, m):
        return (
            f"{a} is within {m:g} {unit} of {b}: {a} minus {b} is "
            f"{interval_text(diff, unit)}, inside ±{m:g}."
        )
    if c is None:
        return f"{a} minus {b}: {interval_text(diff, unit)}; no interval, no equivalence claim."
    miss = []
    if c[0] <= -m:
        miss.append(f"lower bound {c[0]:+.2f} at or below -{m:g}")
    if c[1] >= m:
        miss.append(f"upper bound {c[1]:+.2f} at or above +{m:g}")
    return (
        f"{a} minus {b}: {interval_text(diff, unit)}; not shown within {m:g} {unit} "
        f"({' and '.join(miss)})."
    )


def _non_inferiority_sentence(
    a: str, b: str, diff: dict | None, margin: float, unit: str = "points"
) -> str:
    """'A is no worse than B by more than 0.5 points: ...' only when `non_inferior`;
    otherwise the difference with its interval and how far below -margin its lower bound is."""
    m = _margin(margin)
    c = None if diff is None else _ci(diff.get("ci95"))
    if c is not None and non_inferior(c, m):
        return (
            f"{a} is no worse than {b} by more than {m:g} {unit}: {a} minus {b} is "
            f"{interval_text(diff, unit)}, lower bound above -{m:g}."
        )
    if c is None:
        return f"{a} minus {b}: {interval_text(diff, unit)}; no interval, no non-inferiority claim."
    return (
        f"{a} minus {b}: {interval_text(diff, unit)}; not shown no worse than {b} within "
        f"{m:g} {unit} (lower bound {c[0]:+.2f} at or below -{m:g})."
    )


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def difference_sentence(a: str, b: str, diff: dict | None, unit: str = "points") -> str:
    """'A minus B: +0.24 points (95% interval -0.18 to +0.66, 3 seeds).' and, when the
    interval excludes 0, which side it lies on; no claim of equality when it includes 0 (the
    interval's width says what it allows). The sentence starts with a capital."""
    return _cap(_difference_sentence(a, b, diff, unit))


def equivalence_sentence(
    a: str, b: str, diff: dict | None, margin: float, unit: str = "points"
) -> str:
    """'A is within 0.5 points of B: ...' only when `within_margin(diff's interval, margin)`;
    otherwise the difference with its interval and the bound that misses the margin."""
    return _cap(_equivalence_sentence(a, b, diff, margin, unit))


def non_inferiority_sentence(
    a: str, b: str, diff: dict | None, margin: float, unit: str = "points"
) -> str:
    """'A is no worse than B by more than 0.5 points: ...' only when `non_inferior`;
    otherwise the difference with its interval and how far below -margin its lower bound is."""
    return _cap(_non_inferiority_sentence(a, b, diff, margin, unit))
