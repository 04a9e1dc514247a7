"""Mutation score of the method package (`jackpot_jax/method/`) against its own tests: run by
hand, never in CI.

    nice -n 19 python tools/mutation_score.py --sample 150 --seed 0 --jobs 1 \
        --json benchmarks/results/mutation_score_<commit>.json

What it does:

1. Copies the repository at ``--rev`` (default HEAD, by ``git archive``; ``--working-tree``
   copies the files as they are now, tracked and untracked-but-not-ignored) into a temporary
   directory, one copy per job. Mutants are written only there, never into the checkout; the
   copies are removed on every exit (``finally``, and SIGTERM/SIGINT/SIGHUP become SystemExit).
   Before anything else a deliberate mutant (``raise ImportError`` appended to the copy's
   ``jackpot_jax/method/__init__.py``) must break ``import jackpot_jax.method`` in the copy's
   environment: otherwise the tests would import the installed package (the editable install
   points at the checkout) and every mutant would survive, so the run stops.
2. Lists every mutant of the package's modules (one AST node changed, the source span of that
   node replaced): comparison flips (``<`` -> ``<=``, ``==`` -> ``!=``, ``is`` -> ``is not``
   ...), arithmetic and bitwise swaps (``+`` <-> ``-``, ``*`` <-> ``/``, ``&`` <-> ``|``,
   ``<<`` <-> ``>>``), ``and`` <-> ``or``, constant changes (an int ``n`` -> ``n + 1``, a
   float ``x`` -> ``2x`` (``0.0`` -> ``1.0``), ``True`` <-> ``False``), negated conditions
   (``if c`` -> ``if not (c)``, ``not c`` -> ``c``, unary minus and ``~`` dropped), removed
   wrappers (``f(x, ...)`` -> ``x``), swapped arguments (``f(a, b)`` -> ``f(b, a)``) and deleted
   statements (-> ``pass``). Skipped as equivalent by construction: docstrings, string
   constants (messages and log text), f-strings, type annotations, imports, ``__all__``, the
   ``maxsize`` of a cache. A fixed ``--seed`` draws ``--sample N`` of them (all without it).
3. Runs the tests once on the unmutated copy (the baseline) with a small tracer plugin that
   records, per test, its duration and which functions of the package it called. A baseline
   failure is reported and that test deselected (it would "kill" every mutant).
4. For each mutant, runs ``pytest -x -q -p no:cacheprovider`` (under ``nice -n 19``) on the
   tests that called the mutated function (all tests for module-level code), fastest first.
   A failure, a collection error or running past ``--timeout`` counts as killed (a timeout is
   reported as ``timeout`` and counted killed: a mutant that hangs a test is detected). A
   mutant no test calls survives without a run. A survivor of the selected tests is run again
   against every test (``--no-confirm`` skips this): a function traced under `jax.jit` or
   kept in an `lru_cache` runs only in the first test that needs it, so later tests that use
   it could still kill the mutant.
5. Prints the score and every survivor as ``file:line`` with the original and mutated code,
   and writes a JSON report (command, commit, seed, sample, tests, baseline, per-mutant result
   and duration). ``--equivalent FILE`` (JSON ``{mutant id: reason}``) leaves the mutants you
   judged equivalent out of the score; ``--only ID ...`` re-checks given mutants.

Why our own AST mutator rather than mutmut or cosmic-ray: mutmut 3 rewrites every function into
a trampoline in its own ``mutants/`` tree and needs its own layout and config, which does not
fit functions that `jax.jit` traces and `functools.lru_cache` keys on; cosmic-ray needs a
session database, a config file and a worker setup. Neither selects the tests per mutant from
a traced baseline (the four method test files take minutes; most mutants die in seconds when
the tests that call the mutated function run first), and a copy-only, stdlib-only script of a
few hundred lines is easy to audit: it never writes into the checkout.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "jackpot_jax/method"
DEFAULT_TESTS = (
    "tests/test_sparsity.py",
    "tests/test_nm.py",
    "tests/test_topk_select.py",
    "tests/test_search_options.py",
    "tests/test_method_contracts.py",
)
# The modules issue 32 names (top-k, N:M, masks, swap, budgets, scores, measures, paths);
# later modules (oneshot, ...) have their own test files: add them with --modules.
DEFAULT_MODULES = ("budgets", "masks", "measures", "nm", "paths", "scores", "swap", "topk")
MODULE_LEVEL = "<module>"

# --------------------------------------------------------------------------------------------
# Mutants
# --------------------------------------------------------------------------------------------

COMPARE_FLIP = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
}
BINOP_SWAP = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
    ast.FloorDiv: ast.Mult,
    ast.Mod: ast.Mult,
    ast.Pow: ast.Mult,
    ast.BitAnd: ast.BitOr,
    ast.BitOr: ast.BitAnd,
    ast.BitXor: ast.BitOr,
    ast.LShift: ast.RShift,
    ast.RShift: ast.LShift,
}


@dataclasses.dataclass
class Mutant:
    id: str  # file:line:col:operator, stable for one source
    file: str
    line: int
    end_line: int
    col: int
    end_col: int
    operator: str
    original: str
    mutated: str
    function: tuple  # (file, first line of the enclosing def's code object) or MODULE_LEVEL


def _parents(tree):
    parent = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parent[child] = node
    return parent


def _skipped_nodes(tree) -> set:
    """Nodes inside which nothing is mutated: docstrings, annotations, f-strings, imports,
    ``__all__``, ``maxsize=`` keywords."""
    skip = set()

    def cover(node):
        if node is not None:
            skip.update(ast.walk(node))

    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                cover(body[0])
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            cover(node.returns)
            for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs:
                cover(a.annotation)
            for a in (node.args.vararg, node.args.kwarg):
                if a is not None:
                    cover(a.annotation)
        if isinstance(node, ast.AnnAssign):
            cover(node.annotation)
        if isinstance(node, (ast.JoinedStr, ast.Import, ast.ImportFrom)):
            cover(node)
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            cover(node)
        if isinstance(node, ast.keyword) and node.arg == "maxsize":
            cover(node)
        # `if TYPE_CHECKING:` blocks and `from __future__` are imports only.
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            cover(node)
    return skip


def _function_of(node, parent, tree) -> tuple | str:
    """(first line of the innermost enclosing def's code object) or MODULE_LEVEL. A decorated
    function's code object starts at its first decorator; a lambda's at its own line."""
    p = parent.get(node)
    while p is not None:
        if isinstance(p, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return min([p.lineno] + [d.lineno for d in p.decorator_list])
        if isinstance(p, ast.Lambda):
            p = parent.get(p)  # lambdas are called from their enclosing function: use that
            continue
        p = parent.get(p)
    return MODULE_LEVEL


def _variants(node):
    """(operator name, replacement node or source text) for one node."""
    out = []
    if isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            if type(op) in COMPARE_FLIP:
                new = ast.Compare(node.left, list(node.ops), node.comparators)
                new.ops[i] = COMPARE_FLIP[type(op)]()
                out.append(("compare_flip", new))
    elif isinstance(node, ast.BinOp) and type(node.op) in BINOP_SWAP:
        out.append(("arith_swap", ast.BinOp(node.left, BINOP_SWAP[type(node.op)](), node.right)))
    elif isinstance(node, ast.BoolOp):
        other = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        out.append(("boolop_swap", ast.BoolOp(other, node.values)))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub, ast.Invert)):
        out.append(("unary_drop", node.operand))
    elif isinstance(node, ast.Constant) and type(node.value) in (int, float, bool):
        v = node.value
        if isinstance(v, bool):
            new = not v
        elif isinstance(v, int):
            new = v + 1
        else:
            new = 1.0 if v == 0 else v * 2
        out.append(("constant", ast.Constant(new)))
    elif isinstance(node, ast.Call) and not any(isinstance(a, ast.Starred) for a in node.args):
        if node.args:
            out.append(("remove_call", node.args[0]))
        if len(node.args) >= 2:
            args = [node.args[1], node.args[0]] + node.args[2:]
            out.append(("swap_args", ast.Call(node.func, args, node.keywords)))
    return out


def _statement_variants(node):
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
        return []  # docstrings and bare constants
    if isinstance(
        node,
        (
            ast.Assign,
            ast.AugAssign,
            ast.AnnAssign,
            ast.Expr,
            ast.Raise,
            ast.Return,
            ast.Continue,
            ast.Break,
        ),
    ):
        return [("delete_statement", "pass")]
    if isinstance(node, (ast.If, ast.While)):
        return [("negate_condition", None)]
    return []


def mutants_of(src: str, rel: str) -> list[Mutant]:
    tree = ast.parse(src)
    parent, skip = _parents(tree), _skipped_nodes(tree)
    found = []
    for node in ast.walk(tree):
        if node in skip or not hasattr(node, "lineno"):
            continue
        original = ast.get_source_segment(src, node)
        if original is None:
            continue
        changes = list(_variants(node))
        if isinstance(node, ast.stmt):
            for name, repl in _statement_variants(node):
                if name == "negate_condition":
                    test = node.test
                    original = ast.get_source_segment(src, test)
                    found.append(
                        _mutant(rel, test, name, original, f"not ({original})", parent, tree)
                    )
                else:
                    found.append(_mutant(rel, node, name, original, repl, parent, tree))
        for name, repl in changes:
            text = repl if isinstance(repl, str) else ast.unparse(repl)
            if "\n" in original and name not in ("remove_call",):
                text = f"({text})"
            if isinstance(repl, ast.AST) and name in ("remove_call", "unary_drop"):
                text = f"({ast.get_source_segment(src, repl) or ast.unparse(repl)})"
            if text == original:
                continue
            found.append(_mutant(rel, node, name, original, text, parent, tree))
    found.sort(key=lambda m: (m.file, m.line, m.col, m.operator, m.mutated))
    seen: dict[str, int] = {}
    for m in found:  # unique ids for several mutants of one node
        n = seen.get(m.id, 0)
        seen[m.id] = n + 1
        if n:
            m.id = f"{m.id}#{n}"
    return found


def _mutant(rel, node, name, original, text, parent, tree) -> Mutant:
    return Mutant(
        id=f"{rel}:{node.lineno}:{node.col_offset}:{name}",
        file=rel,
        line=node.lineno,
        end_line=node.end_lineno,
        col=node.col_offset,
        end_col=node.end_col_offset,
        operator=name,
        original=original,
        mutated=text,
        function=(rel, _function_of(node, parent, tree)),
    )


def apply(src: str, m: Mutant) -> str:
    """``src`` with the mutant's span replaced (positions are UTF-8 byte offsets per line)."""
    lines = src.splitlines(keepends=True)
    enc = [ln.encode() for ln in lines]
    head = b"".join(enc[: m.line - 1]) + enc[m.line - 1][: m.col]
    tail = enc[m.end_line - 1][m.end_col :] + b"".join(enc[m.end_line :])
    return (head + m.mutated.encode() + tail).decode()


# --------------------------------------------------------------------------------------------
# Copies of the repository
# --------------------------------------------------------------------------------------------


def make_copy(dest: Path, rev: str | None) -> None:
    dest.mkdir(parents=True)
    if rev is not None:
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        return
    names = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard", "-z"],
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for name in filter(None, names):
        src = REPO / name.decode()
        if src.is_file():
            (dest / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name.decode())


def copy_env(copy: Path, plugin_dir: Path) -> dict:
    env = dict(os.environ)
    # The copy first on sys.path (before the editable install of the checkout), no bytecode
    # (a mutant of the same size written in the same second could reuse a stale .pyc).
    env["PYTHONPATH"] = os.pathsep.join([str(copy), str(plugin_dir)])
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.pop("PYTEST_ADDOPTS", None)
    return env


def check_copy_is_imported(copy: Path, env: dict) -> None:
    """A deliberate mutant must break the copy's import; otherwise the tests import the checkout."""
    init = copy / PACKAGE / "__init__.py"
    original = init.read_text()
    probe = "import jackpot_jax, jackpot_jax.method; print(jackpot_jax.__file__)"
    try:
        init.write_text(original + "\nraise ImportError('mutation_score: deliberate mutant')\n")
        broken = subprocess.run(
            [sys.executable, "-c", probe], cwd=copy, env=env, capture_output=True, text=True
        )
    finally:
        init.write_text(original)
    clean = subprocess.run(
        [sys.executable, "-c", probe], cwd=copy, env=env, capture_output=True, text=True
    )
    where = clean.stdout.strip()
    if broken.returncode == 0 or not where.startswith(str(copy)):
        raise SystemExit(
            f"mutation_score: the copy at {copy} is not what the tests import "
            f"(jackpot_jax from {where or clean.stderr.strip()!r}; deliberate mutant "
            f"{'not ' if broken.returncode == 0 else ''}detected); refusing to run"
        )


PLUGIN = '''
"""Baseline tracer: per test, its duration and the package functions it called."""
import json, os, sys, threading, time

_ROOT = os.environ["MUTATION_PACKAGE_DIR"]
_OUT = os.environ["MUTATION_TRACE_OUT"]
_seen = set()
_results = {}


def _trace(frame, event, arg):
    code = frame.f_code
    if code.co_filename.startswith(_ROOT):
        _seen.add((os.path.relpath(code.co_filename, os.environ["MUTATION_COPY"]),
                   code.co_firstlineno))
    return None


def pytest_runtest_setup(item):
    # A test's functions: from the first setup to the end of its teardown.
    if item.nodeid not in _results:
        _seen.clear()
        item._mutation_t0 = time.perf_counter()


def pytest_runtest_logreport(report):
    entry = _results.setdefault(report.nodeid, {"outcome": "passed", "functions": set(),
                                                "duration": 0.0})
    entry["duration"] += report.duration
    if report.failed:
        entry["outcome"] = "failed"
    entry["functions"] |= _seen
    if report.when == "teardown":
        _seen.clear()


def pytest_configure(config):
    sys.settrace(_trace)
    threading.settrace(_trace)


def pytest_unconfigure(config):
    sys.settrace(None)
    with open(_OUT, "w") as f:
        json.dump({k: dict(v, functions=sorted(v["functions"])) for k, v in _results.items()}, f)
'''


# --------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------

_children: set = set()
_children_lock = threading.Lock()
_stopping = threading.Event()  # set on a signal: no new run starts, running ones are killed


def stop_all() -> None:
    _stopping.set()
    with _children_lock:
        for p in list(_children):
            _kill(p)


def run_pytest(copy: Path, env: dict, args: list[str], timeout: float | None) -> tuple:
    """(return code or 'timeout', seconds, output tail) of ``nice -n 19 pytest ...`` in ``copy``."""
    cmd = ["nice", "-n", "19", sys.executable, "-m", "pytest", *args]
    t0 = time.perf_counter()
    if _stopping.is_set():
        return "aborted", 0.0, ""
    proc = subprocess.Popen(
        cmd,
        cwd=copy,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: a timeout kills its children too
    )
    with _children_lock:
        _children.add(proc)
    try:
        out, _ = proc.communicate(timeout=timeout)
        rc = "aborted" if _stopping.is_set() else proc.returncode
    except subprocess.TimeoutExpired:
        _kill(proc)
        out, _ = proc.communicate()
        rc = "timeout"
    finally:
        with _children_lock:
            _children.discard(proc)
    return rc, time.perf_counter() - t0, (out or "")[-2000:]


def _kill(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def baseline(copy: Path, env: dict, tests: list[str], plugin_dir: Path) -> dict:
    trace_out = plugin_dir / "baseline.json"
    env = dict(
        env,
        MUTATION_PACKAGE_DIR=str(copy / PACKAGE) + os.sep,
        MUTATION_TRACE_OUT=str(trace_out),
        MUTATION_COPY=str(copy),
    )
    rc, secs, tail = run_pytest(
        copy, env, ["-q", "-p", "no:cacheprovider", "-p", "mutation_trace", *tests], None
    )
    if not trace_out.exists():
        raise SystemExit(f"mutation_score: the baseline run wrote no trace (rc {rc}):\n{tail}")
    per_test = json.loads(trace_out.read_text())
    print(f"baseline: {len(per_test)} tests in {secs:.0f} s (rc {rc})", flush=True)
    return {"seconds": secs, "rc": rc, "tests": per_test}


def run_mutant(m: Mutant, copy: Path, env: dict, base: dict, timeout: float | None, confirm):
    path = copy / m.file
    original = path.read_text()
    tests = base["tests"]
    passing = {k: v for k, v in tests.items() if v["outcome"] == "passed"}
    everything = sorted(passing, key=lambda k: passing[k]["duration"])
    if m.function[1] == MODULE_LEVEL:
        selected = everything
    else:
        key = [m.function[0], m.function[1]]
        selected = [k for k in everything if key in passing[k]["functions"]]
    result = {"selected_tests": len(selected), "runs": []}
    try:
        path.write_text(apply(original, m))
        order = [selected] if selected else []
        if confirm and selected != everything:
            order.append(everything)
        status = "survived"
        for batch in order:
            limit = timeout or (60 + 3 * sum(passing[k]["duration"] for k in batch))
            rc, secs, tail = run_pytest(
                copy, env, ["-x", "-q", "-p", "no:cacheprovider", *batch], limit
            )
            result["runs"].append(
                {
                    "tests": len(batch),
                    "rc": rc,
                    "seconds": round(secs, 1),
                    "timeout_s": round(limit),
                }
            )
            if rc in ("timeout", "aborted"):
                status = rc
                break
            if rc != 0:
                status = "killed" if rc in (1, 2, 3) else f"error rc {rc}"
                result["tail"] = tail[-600:]
                break
        if not selected:
            result["note"] = "no test calls this function"
    finally:
        path.write_text(original)
    result["status"] = status
    result["seconds"] = round(sum(r["seconds"] for r in result["runs"]), 1)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sample", type=int, default=None, help="mutants drawn (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tests", nargs="+", default=list(DEFAULT_TESTS))
    ap.add_argument(
        "--modules", nargs="+", default=list(DEFAULT_MODULES), help="modules of the package"
    )
    ap.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds per mutant run (default: 60 + 3x the baseline's time of "
        "the tests run); a timeout counts as killed",
    )
    ap.add_argument("--jobs", type=int, default=1, help="mutants run at once (one copy each)")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--rev", default="HEAD", help="git revision to mutate (default HEAD)")
    src.add_argument(
        "--working-tree",
        action="store_true",
        help="mutate the files as they are now instead of a commit",
    )
    ap.add_argument(
        "--no-confirm",
        action="store_true",
        help="do not rerun survivors of the selected tests against every test",
    )
    ap.add_argument("--only", nargs="+", default=None, help="mutant ids to run (re-checks)")
    ap.add_argument(
        "--equivalent",
        type=Path,
        default=None,
        help="JSON {mutant id: reason}: judged equivalent, left out of the score",
    )
    ap.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="baseline trace file: read if it exists (same commit and tests), else written",
    )
    ap.add_argument("--resume", type=Path, default=None, help="a partial JSON report to continue")
    ap.add_argument("--list", action="store_true", help="print the drawn mutants and stop")
    ap.add_argument("--json", type=Path, default=None, help="report file")
    args = ap.parse_args(argv)

    rev = None if args.working_tree else args.rev
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", args.rev],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    every = []
    if rev is None:
        files = sorted(p.relative_to(REPO).as_posix() for p in (REPO / PACKAGE).glob("*.py"))
    else:
        listed = subprocess.run(
            ["git", "-C", str(REPO), "ls-tree", "--name-only", rev, f"{PACKAGE}/"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        files = sorted(f for f in listed if f.endswith(".py"))
    files = [f for f in files if Path(f).stem in args.modules]
    for rel in files:
        if rev is None:
            every += mutants_of((REPO / rel).read_text(), rel)
        else:
            text = subprocess.run(
                ["git", "-C", str(REPO), "show", f"{rev}:{rel}"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            every += mutants_of(text, rel)
    if args.only:
        by_id = {m.id: m for m in every}
        missing = [i for i in args.only if i not in by_id]
        if missing:
            raise SystemExit(f"mutation_score: unknown mutant ids {missing}")
        drawn = [by_id[i] for i in args.only]
    elif args.sample is not None and args.sample < len(every):
        drawn = random.Random(args.seed).sample(every, args.sample)
    else:
        drawn = list(every)
    print(
        f"{len(every)} mutants of {PACKAGE} at {'working tree' if rev is None else commit}; "
        f"running {len(drawn)} (seed {args.seed})",
        flush=True,
    )
    if args.list:
        for m in drawn:
            print(f"{m.id}: {m.original!r} -> {m.mutated!r}")
        return 0
    equivalent = json.loads(args.equivalent.read_text()) if args.equivalent else {}
    results: dict[str, dict] = {}
    if args.resume:  # a partial report of the same command: keep its results, run the rest
        keys = ("status", "seconds", "selected_tests", "runs", "note", "tail")
        for entry in json.loads(args.resume.read_text())["mutants"]:
            if "status" in entry:
                results[entry["id"]] = {k: entry[k] for k in keys if k in entry}
        print(f"resumed: {len(results)} results read from {args.resume}", flush=True)
    to_run = [m for m in drawn if m.id not in results]

    work = Path(tempfile.mkdtemp(prefix="mutation_score_"))

    def on_signal(signum, frame):
        stop_all()
        raise SystemExit(f"mutation_score: signal {signum}, cleaning up")

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    started = time.time()
    try:
        plugin_dir = work / "plugin"
        plugin_dir.mkdir()
        (plugin_dir / "mutation_trace.py").write_text(PLUGIN)
        copies = []
        for j in range(max(1, args.jobs)):
            c = work / f"copy{j}"
            make_copy(c, rev)
            copies.append(c)
        env = copy_env(copies[0], plugin_dir)
        check_copy_is_imported(copies[0], env)
        if args.baseline and args.baseline.exists():
            base = json.loads(args.baseline.read_text())  # from a run of the same commit
            print(f"baseline: {len(base['tests'])} tests read from {args.baseline}", flush=True)
        else:
            base = baseline(copies[0], env, args.tests, plugin_dir)
            if args.baseline:
                args.baseline.write_text(json.dumps(base))
        failing = sorted(k for k, v in base["tests"].items() if v["outcome"] != "passed")
        if failing:
            print(f"baseline failures, deselected: {failing}", flush=True)
        free = list(copies)
        lock = threading.Lock()

        def job(m):
            with lock:
                c = free.pop()
            try:
                return m, run_mutant(
                    m, c, copy_env(c, plugin_dir), base, args.timeout, not args.no_confirm
                )
            finally:
                with lock:
                    free.append(c)

        pool = concurrent.futures.ThreadPoolExecutor(max(1, args.jobs))
        try:
            futures = [pool.submit(job, m) for m in to_run]
            for i, fut in enumerate(concurrent.futures.as_completed(futures), 1):
                m, r = fut.result()
                if r["status"] == "aborted":
                    continue
                results[m.id] = r
                print(
                    f"[{i}/{len(drawn)}] {r['status']:9s} {r['seconds']:6.1f}s "
                    f"{m.id}: {m.original!r} -> {m.mutated!r}",
                    flush=True,
                )
        finally:
            stop_all()
            pool.shutdown(wait=True, cancel_futures=True)
    finally:
        stop_all()
        shutil.rmtree(work, ignore_errors=True)
        report(args, commit, rev, every, drawn, results, equivalent, started, locals().get("base"))
    return 0


def report(args, commit, rev, every, drawn, results, equivalent, started, base) -> None:
    done = [m for m in drawn if m.id in results]
    judged = [m for m in done if m.id in equivalent]
    scored = [m for m in done if m.id not in equivalent]
    killed = [m for m in scored if results[m.id]["status"] in ("killed", "timeout")]
    survived = [m for m in scored if results[m.id]["status"] == "survived"]
    errors = [m for m in scored if results[m.id]["status"].startswith("error")]
    score = len(killed) / len(scored) if scored else float("nan")
    print(
        f"\nmutation score: {len(killed)}/{len(scored)} killed = {100 * score:.1f}% "
        f"({len(done)} of {len(drawn)} run, {len(judged)} judged equivalent, "
        f"{len(errors)} errors; a timeout counts as killed)"
    )
    for m in survived:
        print(f"SURVIVED {m.file}:{m.line} [{m.operator}] {m.original!r} -> {m.mutated!r}")
    if args.json is None:
        return
    out = {
        "command": " ".join([os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:]),
        "commit": commit if rev is not None else f"working tree on {commit}",
        "seed": args.seed,
        "sample": args.sample,
        "mutants_total": len(every),
        "tests": args.tests,
        "modules": args.modules,
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "wall_seconds": round(time.time() - started, 1),
        "baseline": None
        if base is None
        else {
            "seconds": round(base["seconds"], 1),
            "tests": len(base["tests"]),
            "failing": sorted(k for k, v in base["tests"].items() if v["outcome"] != "passed"),
        },
        "killed": len(killed),
        "scored": len(scored),
        "score": score,
        "equivalent": {m.id: equivalent[m.id] for m in judged},
        "mutants": [
            dict(dataclasses.asdict(m), function=list(m.function), **results.get(m.id, {}))
            for m in drawn
        ],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1) + "\n")
    print(f"report: {args.json}")


if __name__ == "__main__":
    sys.exit(main())
