"""Statistics over seeds, as every table and verdict of the study and the sweep states them.

- `mean_std`: the mean and the SAMPLE standard deviation (ddof=1) of per-seed values; with one
  seed the std is None (not 0: one value measures no spread).
- `paired_difference`: a - b seed by seed (every seed's runs share its dense checkpoint), its
  mean, sample std and 95% t-interval over the seeds; "within noise" when the interval
  contains 0.

`tools/check_results.py` recomputes the committed results with these functions.
"""

from __future__ import annotations

import math

import numpy as np

STD_LABEL = "sample std (ddof=1)"
STD_NOTE = (
    "± is the sample standard deviation over seeds (ddof=1); a single seed has no ± "
    "(one value measures no spread)."
)

# Two-sided 95% quantiles of Student's t, t_{0.975}(df), df = 1..30.
_T975 = (
    12.706205,
    4.302653,
    3.182446,
    2.776445,
    2.570582,
    2.446912,
    2.364624,
    2.306004,
    2.262157,
    2.228139,
    2.200985,
    2.178813,
    2.160369,
    2.144787,
    2.131450,
    2.119905,
    2.109816,
    2.100922,
    2.093024,
    2.085963,
    2.079614,
    2.073873,
    2.068658,
    2.063899,
    2.059539,
    2.055529,
    2.051831,
    2.048407,
    2.045230,
    2.042272,
)


def t975(df: int) -> float:
    """t_{0.975} with `df` degrees of freedom: a table up to 30, then the Cornish-Fisher
    expansion around the normal quantile (within 1e-5 of the exact value from df 30 on)."""
    if df < 1:
        raise ValueError(f"df={df}; a t-interval needs at least 1 degree of freedom (2 seeds)")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959963984540054
    return (
        z
        + (z**3 + z) / (4 * df)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
    )


def mean_std(values) -> tuple[float | None, float | None, int]:
    """(mean, sample std with ddof=1 or None below 2 values, count) of the non-None values."""
    v = np.asarray([x for x in values if x is not None], np.float64)
    if not v.size:
        return None, None, 0
    return float(v.mean()), (float(v.std(ddof=1)) if v.size > 1 else None), int(v.size)


def mean_curve(curves) -> list[float]:
    """Element-wise mean of equally long curves (one per seed)."""
    return np.asarray(curves, np.float64).mean(0).tolist()


def per_seed(seeds, values) -> dict[str, float]:
    """{seed: value} for the values that exist (JSON keys are strings)."""
    return {str(s): v for s, v in zip(seeds, values) if v is not None}


def interval(diffs) -> dict:
    """Mean, sample std, 95% t-interval of per-seed differences and whether it contains 0."""
    m, sd, n = mean_std(diffs)
    if n < 2:
        return {"mean": m, "std": None, "seeds": n, "ci95": None, "within_noise": None}
    half = t975(n - 1) * sd / math.sqrt(n)
    lo, hi = m - half, m + half
    return {"mean": m, "std": sd, "seeds": n, "ci95": [lo, hi], "within_noise": lo <= 0 <= hi}


def paired_difference(a: dict, b: dict, scale: float = 100.0) -> dict | None:
    """`scale * (a[s] - b[s])` for every seed s in both {seed: value} dicts, with its
    `interval`; None when they share no seed. `per_seed` keeps the differences."""
    seeds = [s for s in a if s in b and a[s] is not None and b[s] is not None]
    if not seeds:
        return None
    d = {s: scale * (a[s] - b[s]) for s in seeds}
    return {**interval(list(d.values())), "per_seed": d, "scale": scale}


def difference_record(name, a_ref: dict, b_ref: dict, a_values, b_values, quantity="test_acc"):
    """A difference as results.json keeps it: which rows it compares (`a`, `b`: the table and
    the fields that pick the row), the quantity, and `paired_difference` of their per-seed
    values (in points). None when they share no seed."""
    p = paired_difference(a_values, b_values)
    if p is None:
        return None
    return {"name": name, "a": a_ref, "b": b_ref, "quantity": quantity, **p}


def difference_text(p: dict | None, unit: str = "points") -> str:
    """'+0.24 points (95% interval -0.18 to +0.66 over 3 seeds: within noise)'."""
    if p is None:
        return "n/a (no common seeds)"
    head = f"{p['mean']:+.2f} {unit}"
    if p["ci95"] is None:
        return head + f" ({p['seeds']} seed: no interval)"
    lo, hi = p["ci95"]
    verdict = "within noise" if p["within_noise"] else "outside noise"
    return head + f" (95% interval {lo:+.2f} to {hi:+.2f} over {p['seeds']} seeds: {verdict})"


def pct(m, s=None) -> str:
    """A fraction as a percentage with its std: '91.30 ± 0.07', '91.30' (no std), 'n/a'."""
    if m is None:
        return "n/a"
    return f"{100 * m:.2f}" + (f" ± {100 * s:.2f}" if s is not None else "")


def summary_row(fields: dict, **quantities: dict) -> dict:
    """A table row: `fields`, then for each quantity q ({seed: value}) its `q_mean` and
    `q_std` (sample std; a {seed: curve} quantity gets the element-wise mean curve only),
    `seeds` (how many seeds the first quantity has) and `per_seed` ({q: {seed: value}})."""
    row = dict(fields)
    seeds = None
    for q, values in quantities.items():
        v = list(values.values())
        if v and isinstance(v[0], list):
            row[f"{q}_mean"] = mean_curve(v)
            n = len(v)
        else:
            row[f"{q}_mean"], row[f"{q}_std"], n = mean_std(v)
        seeds = n if seeds is None else seeds
    row["seeds"] = seeds or 0
    row["per_seed"] = {q: dict(v) for q, v in quantities.items()}
    return row
