"""Recomputes the committed tables from their per-seed values; exits 1 on any mismatch.

    python tools/check_results.py [PATH ...]     (default: docs/results)

Every results.json under PATH is read (the study's and the sweep's):

- every table row (a row of a top-level list with `<q>_mean` fields) that keeps `per_seed`
  values: `<q>_mean` is their mean (a curve: the element-wise mean), `<q>_std` their sample
  standard deviation (ddof=1; None for one seed), `seeds` their count;
- every paired difference (a dict with `a`, `b`, `quantity`, `per_seed` anywhere in the file):
  its per-seed differences are `scale * (a - b)` of the two rows it names, its mean, sample std
  and 95% t-interval are theirs, `within_noise` says whether the interval contains 0;
- a table whose rows keep no per-seed values cannot be recomputed: the report.md beside the
  results must then say so, on a line naming the table (`name`) and "no per-seed values".
"""

from __future__ import annotations

import json
import math
import os
import sys

import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)  # prefer the tree this script ships with

from jackpot_jax.experiments.stats import t975  # noqa: E402

TOL = 1e-9
MARK = "no per-seed values"


def _close(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, list) or isinstance(b, list):
        return (
            isinstance(a, list)
            and isinstance(b, list)
            and len(a) == len(b)
            and all(_close(x, y) for x, y in zip(a, b))
        )
    return math.isclose(a, b, rel_tol=0, abs_tol=TOL)


def _label(row: dict) -> str:
    keys = ("network", "structure", "sparsity", "method", "criterion", "init", "weights")
    return ", ".join(f"{k}={row[k]}" for k in (*keys, "epochs") if k in row)


def _tables(res: dict):
    """(name, rows) of every top-level list of rows with `<q>_mean` fields."""
    for name, rows in res.items():
        if isinstance(rows, list) and any(
            isinstance(r, dict) and any(k.endswith("_mean") for k in r) for r in rows
        ):
            yield name, rows


def check_row(row: dict) -> list[str]:
    errors = []
    quantities = row["per_seed"]
    means = {k[: -len("_mean")] for k in row if k.endswith("_mean")}
    for q in sorted(means - set(quantities)):
        errors.append(f"{q}_mean has no per-seed values")
    for i, (q, values) in enumerate(quantities.items()):
        v = [x for x in values.values() if x is not None]
        n = len(v)
        if i == 0 and row.get("seeds") != n:
            errors.append(f"seeds {row.get('seeds')} != {n} per-seed values of {q}")
        mean = np.asarray(v, np.float64).mean(0).tolist() if n else None
        if not _close(row.get(f"{q}_mean"), mean):
            errors.append(f"{q}_mean {row.get(f'{q}_mean')} != recomputed {mean}")
        if f"{q}_std" in row:
            std = float(np.std(np.asarray(v, np.float64), ddof=1)) if n > 1 else None
            if not _close(row[f"{q}_std"], std):
                errors.append(f"{q}_std {row[f'{q}_std']} != recomputed sample std {std}")
    return errors


def _find(res: dict, ref: dict):
    rows = res.get(ref["table"]) or []
    hits = [r for r in rows if all(r.get(k) == v for k, v in ref["match"].items())]
    return hits[0] if len(hits) == 1 else None


def check_difference(res: dict, d: dict) -> list[str]:
    a, b = _find(res, d["a"]), _find(res, d["b"])
    if a is None or b is None:
        return [f"the rows it compares are not (uniquely) in the tables: {d['a']}, {d['b']}"]
    q, scale = d["quantity"], d.get("scale", 100.0)
    va, vb = a["per_seed"][q], b["per_seed"][q]
    seeds = [s for s in va if s in vb]
    diffs = {s: scale * (va[s] - vb[s]) for s in seeds}
    errors = []
    if set(diffs) != set(d["per_seed"]) or not all(
        _close(d["per_seed"][s], x) for s, x in diffs.items()
    ):
        errors.append(f"per-seed differences {d['per_seed']} != recomputed {diffs}")
    x = np.asarray(list(diffs.values()), np.float64)
    n = x.size
    mean = float(x.mean()) if n else None
    std = float(x.std(ddof=1)) if n > 1 else None
    ci = None
    if n > 1:
        half = t975(n - 1) * std / math.sqrt(n)
        ci = [mean - half, mean + half]
    for key, want in (("mean", mean), ("std", std), ("ci95", ci), ("seeds", n)):
        if not _close(d.get(key), want):
            errors.append(f"{key} {d.get(key)} != recomputed {want}")
    noise = None if ci is None else ci[0] <= 0 <= ci[1]
    if d.get("within_noise") != noise:
        errors.append(f"within_noise {d.get('within_noise')} != recomputed {noise}")
    return errors


def _differences(obj):
    """Every paired-difference record anywhere in `obj`."""
    if isinstance(obj, dict):
        if {"a", "b", "quantity", "per_seed"} <= set(obj):
            yield obj
        for v in obj.values():
            yield from _differences(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _differences(v)


def check_file(path: str) -> tuple[list[str], int]:
    """(errors, how many numbers were recomputed) of one results.json."""
    with open(path) as f:
        res = json.load(f)
    report_path = os.path.join(os.path.dirname(path), "report.md")
    report = open(report_path).read().splitlines() if os.path.exists(report_path) else []
    errors, checked = [], 0
    for name, rows in _tables(res):
        raw = [r for r in rows if "per_seed" in r]
        if len(raw) < len(rows):
            marked = any(MARK in line and f"`{name}`" in line for line in report)
            if not marked:
                errors.append(
                    f"{path}: table `{name}`: {len(rows) - len(raw)} of {len(rows)} rows keep "
                    f"no per-seed values, and {report_path} has no line naming `{name}` with "
                    f"'{MARK}'"
                )
        for i, row in enumerate(raw):
            for e in check_row(row):
                errors.append(f"{path}: {name}[{i}] ({_label(row)}): {e}")
            checked += 1
    for d in _differences(res):
        for e in check_difference(res, d):
            errors.append(f"{path}: difference {d.get('name')!r}: {e}")
        checked += 1
    return errors, checked


def main(argv: list[str]) -> int:
    roots = argv or [os.path.join(_ROOT, "docs", "results")]
    files = []
    for root in roots:
        if os.path.isfile(root):
            files.append(root)
            continue
        if not os.path.isdir(root):
            print(f"check_results: {root!r} is neither a results.json nor a folder")
            return 2
        for folder, _, names in sorted(os.walk(root)):
            files += [os.path.join(folder, n) for n in sorted(names) if n == "results.json"]
    failed = 0
    for path in files:
        errors, checked = check_file(path)
        for e in errors:
            print(f"MISMATCH {e}")
        status = "FAILED" if errors else "ok"
        print(f"{status}: {path}: {checked} rows and differences recomputed")
        failed += bool(errors)
    if not files:
        print(f"check_results: no results.json under {roots}")
        return 2
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
