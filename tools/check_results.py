"""Checks every committed figure against what the tools wrote; exits 1 on any mismatch.

    python tools/check_results.py [PATH ...]   (default: docs/results, README.md, benchmarks)
    python tools/check_results.py --write      rewrite every generated block in place

1. Generated blocks. Every `<!-- generated: NAME -->` ... `<!-- end generated -->` block in
   README.md, benchmarks/README.md and docs/results/**/*.md is regenerated from the results
   (`jackpot_jax.experiments.generated.generate`) and must equal the committed text.
2. results.json against itself (every results.json under docs/results):
   - every table row (a row of a top-level list with `<q>_mean` fields) that keeps `per_seed`
     values: `<q>_mean` is their mean (a curve: the element-wise mean), `<q>_std` their sample
     standard deviation (ddof=1; None for one seed), `seeds` their count;
   - every paired difference (a dict with `a`, `b`, `quantity`, `per_seed`): its per-seed
     differences are `scale * (a - b)` of the two rows it names, its mean, sample std and 95%
     t-interval are theirs, `within_noise` says whether the interval contains 0;
   - a table whose rows keep no per-seed values: the report.md beside it must say so on a
     line naming the table (`name`) and "no per-seed values".
3. results.json against the raw logs (a folder with `logs/`): every per-seed value is
   recomputed from the summary block the CLI printed at the end of its piece (test
   accuracies to 4 decimals, exact on 10,000 test images), found by network, seed and piece
   name (`LOG_SOURCES`). A table whose values no log holds must be marked in report.md on a
   line naming the table and "no raw log"; a folder listed in `PENDING` is reported, not
   failed (the reason is printed).
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import re
import sys

import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)  # prefer the tree this script ships with

from jackpot_jax.errors import InputError  # noqa: E402
from jackpot_jax.experiments import generated, tables  # noqa: E402
from jackpot_jax.experiments.stats import t975  # noqa: E402

TOL = 1e-9
MARK = "no per-seed values"
NO_LOG = "no raw log"
LOG_TOL = 5e-5  # the summaries print accuracies to 4 decimals
# Results folders whose log check waits for a rerun: reported, not failed.
PENDING = {
    "vit": "issue 29 item 5: the ViT study is being rerun with resumable pieces and controls; "
    "its random-mask rows, overlaps and per-layer fractions have no raw log"
}


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


# ---------------------------------------------------------------- raw logs

_DONE = re.compile(r"^\[(?:study|pieces)\] (\S+) seed(\d+) (\S+) done in ")
_RULE = re.compile(r"^-{10,}$")


def parse_log(text: str) -> dict[tuple[str, int, str], dict]:
    """{(network, seed, piece): summary} of every piece a log finished: the summary block the
    CLI printed (key-value lines between two rules) is the last one before the piece's
    'done' line with the same model and seed (workers interleave lines, not blocks). A piece
    finished twice keeps its last summary."""
    out, blocks, cur = {}, [], None
    for line in text.splitlines():
        if _RULE.match(line.strip()):
            if cur is None:
                cur = {}
            else:
                blocks.append(cur)
                cur = None
            continue
        if cur is not None:
            parts = line.split()
            if len(parts) == 2 and not line.startswith(" "):
                cur[parts[0]] = parts[1]
            continue
        m = _DONE.match(line)
        if m:
            net, seed, piece = m[1], int(m[2]), m[3]
            for i in range(len(blocks) - 1, -1, -1):
                b = blocks[i]
                if b.get("model") == net and b.get("seed") == str(seed):
                    out[(net, seed, piece)] = blocks.pop(i)
                    break
    return out


def read_logs(folder: str) -> dict:
    pieces = {}
    for path in sorted(glob.glob(os.path.join(folder, "logs", "*.log"))):
        with open(path) as f:
            pieces.update(parse_log(f.read()))
    return pieces


def _nm_source(row: dict, seed: int):
    net, st, m = row["network"], row["structure"], row["method"]
    nm = "search_pretrained_magnitude_nm2of4_e10"
    if m == "dense":
        return (net, seed, nm), "dense_test_accuracy"
    piece = nm if st == "2:4" else f"search_pretrained_magnitude_p{row['sparsity']:g}_e10"
    if m == "magnitude+finetune":
        return (net, seed, piece.replace("search_", "finetune_")), "test_accuracy"
    return (net, seed, piece), {"magnitude": "init_mask_test_accuracy"}.get(m, "test_accuracy")


def _sweep_source(row: dict, seed: int):
    net, m, e, r = row["network"], row["method"], row["epochs"], row.get("recipe", {})
    if m == "dense":
        return (net, seed, "pretrain"), "test_accuracy"
    if m.startswith("jackpot"):
        piece = (
            f"jackpot_b{r['batch_size']}_lr{r['lr']:g}_s{r['score_pruned']:g}_"
            f"{r['schedule']}_{r['mask_update']}_e{e}"
        )
    else:
        piece = f"wt_b{r['batch_size']}_lr{r['lr']:g}_e{e}"
    return (net, seed, piece), "test_accuracy"


def _lm_source(row: dict, seed: int):
    # The LM study's rows name their piece; dense and magnitude read no data and were
    # measured once, at `piece_seed`. The pieces print test_ppl / val_ppl to 6 decimals.
    return ("llama", row.get("piece_seed") or seed, row["piece"]), "test_ppl"


# Per results folder: {table: function(row, seed) -> ((network, seed, piece), summary key)}.
LOG_SOURCES = {
    "nm": {"nm": _nm_source},
    "efficiency": {"rows": _sweep_source},
    "shakespeare": {"rows": _lm_source},
}


def check_logs(path: str, res: dict, report: list[str]) -> tuple[list[str], int]:
    """(errors, values recomputed) of one results.json against its folder's raw logs."""
    folder = os.path.dirname(path)
    name = os.path.basename(folder)
    if not os.path.isdir(os.path.join(folder, "logs")):
        return [], 0
    if name in PENDING:
        print(f"PENDING {path}: raw logs not checked ({PENDING[name]})")
        return [], 0
    pieces = read_logs(folder)
    sources = LOG_SOURCES.get(name, {})
    errors, checked = [], 0
    for table, rows in _tables(res):
        src = sources.get(table)
        if src is None:
            if not any(NO_LOG in line and f"`{table}`" in line for line in report):
                errors.append(
                    f"{path}: table `{table}`: no raw log source known for its values, and "
                    f"report.md has no line naming `{table}` with '{NO_LOG}'"
                )
            continue
        for i, row in enumerate(rows):
            for q, values in row.get("per_seed", {}).items():
                for seed, value in values.items():
                    key, field = src(row, int(seed))
                    field = field if q == "test_acc" else q  # other quantities: same piece
                    got = pieces.get(key, {}).get(field)
                    where = f"{path}: {table}[{i}] ({_label(row)}) seed {seed}"
                    if got is None:
                        errors.append(f"{where}: no '{field}' of piece {key} in {folder}/logs")
                    elif abs(float(got) - value) > LOG_TOL:
                        errors.append(f"{where}: {q} {value} != {got} in the log ({key})")
                    checked += 1
            if "per_seed" not in row:
                errors.append(f"{path}: {table}[{i}] ({_label(row)}): no per-seed values")
    return errors, checked


# ---------------------------------------------------------------- generated blocks


def marked_files(root: str) -> list[str]:
    files = [os.path.join(root, "README.md"), os.path.join(root, "benchmarks", "README.md")]
    files += sorted(glob.glob(os.path.join(root, "docs", "results", "**", "*.md"), recursive=True))
    return [f for f in files if os.path.exists(f)]


def check_blocks(root: str, write: bool = False) -> tuple[list[str], int]:
    """(errors, blocks checked): every generated block of every marked file regenerated and
    compared (or rewritten, with `write`)."""
    errors, checked, cache = [], 0, {}
    for path in marked_files(root):
        with open(path) as f:
            text = f.read()
        try:
            blocks = tables.generated_blocks(text)
        except InputError as e:
            errors.append(f"{path}: {e}")
            continue
        new = text
        for name, body in blocks.items():
            try:
                want = generated.generate(root, name, cache).rstrip("\n") + "\n"
            except (InputError, OSError, KeyError, StopIteration) as e:
                errors.append(f"{path}: block {name!r} cannot be generated: {e!r}")
                continue
            checked += 1
            if body != want:
                if write:
                    new = tables.replace_generated(new, name, want)
                else:
                    errors.append(
                        f"{path}: block {name!r} differs from its source:\n" + _diff(body, want)
                    )
        if write and new != text:
            with open(path, "w") as f:
                f.write(new)
            print(f"rewrote {path}")
    return errors, checked


def _diff(have: str, want: str) -> str:
    import difflib

    return "\n".join(
        difflib.unified_diff(
            have.splitlines(), want.splitlines(), "committed", "generated", lineterm="", n=0
        )
    )


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="*")
    ap.add_argument("--write", action="store_true", help="rewrite every generated block")
    ap.add_argument("--root", default=_ROOT, help="the repository whose files are checked")
    args = ap.parse_args(argv)
    block_errors, n_blocks = check_blocks(args.root, args.write)
    for e in block_errors:
        print(f"MISMATCH {e}")
    print(f"{'FAILED' if block_errors else 'ok'}: {n_blocks} generated blocks regenerated")
    roots = args.paths or [os.path.join(args.root, "docs", "results")]
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
    failed = bool(block_errors)
    for path in files:
        errors, checked = check_file(path)
        with open(path) as f:
            res = json.load(f)
        report_path = os.path.join(os.path.dirname(path), "report.md")
        report = open(report_path).read().splitlines() if os.path.exists(report_path) else []
        log_errors, from_logs = check_logs(path, res, report)
        errors += log_errors
        for e in errors:
            print(f"MISMATCH {e}")
        status = "FAILED" if errors else "ok"
        print(
            f"{status}: {path}: {checked} rows and differences recomputed, {from_logs} "
            "per-seed values recomputed from raw logs"
        )
        failed |= bool(errors)
    if not files:
        print(f"check_results: no results.json under {roots}")
        return 2
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
