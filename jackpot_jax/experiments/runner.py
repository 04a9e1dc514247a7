"""The piece runner shared by the study and the sweep.

A *piece* is one pipeline run (`jackpot_jax.pipeline.train`) in its own folder under
DIR/<network>/seed<k>/<name>/, or one JSON file another piece kind writes. A piece whose result
file exists is read back, not run again, so rerunning a command resumes it (and a piece
interrupted half-way resumes from its last epoch checkpoint). With `plan=True` nothing runs:
every piece asked for is recorded as a `Task` (with the pieces it needs first) and answered with
a placeholder, so the whole list can go to parallel worker processes (`run_workers`) that share
the folder and claim pieces with exclusively created `<target>.claim` files.
"""

from __future__ import annotations

import copy
import json
import multiprocessing
import os
import queue as queue_lib
import socket
import time
from collections.abc import Mapping

import ml_collections

from jackpot_jax import core
from jackpot_jax.pipeline import train
from jackpot_jax.pipeline.sources import load_data

# What a planned piece answers with (its numbers are not known yet).
PLACEHOLDER = {
    "test_accuracy": 0.0,
    "final_val_accuracy": 0.0,
    "metrics": [],
    "overlap_with_init": 0.0,
    "init_mask_val_accuracy": 0.0,
    "init_mask_test_accuracy": 0.0,
}


class Pieces:
    """Pipeline runs as pieces of one folder. `config.base` is every run's pipeline config;
    `config.pretrain_epochs` the dense checkpoint's epochs. `ran` counts the pieces this
    object ran (not those read back)."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str, plan: bool = False):
        self.c = config
        self.workdir = os.path.abspath(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.plan = {} if plan else None  # target file -> Task, in the order first asked
        self.ds = None if plan else load_data(config.base)
        self.mesh = None if plan else core.make_mesh(config.base.num_devices)
        self.ran = 0

    def folder(self, network, seed, name) -> str:
        return os.path.join(self.workdir, network, f"seed{seed}", name)

    def cfg(self, network: str, seed: int, **over) -> ml_collections.ConfigDict:
        c = copy.deepcopy(self.c.base)
        c.unlock()
        c.model, c.seed = network, seed
        c.update_from_flattened_dict(over)  # dotted keys: {"search.epochs": 10}
        return c

    def planned(self, target: str, needs, cost: int, call) -> bool:
        """In planning mode, records the piece `target` (once) when it does not exist yet and
        returns True: the caller answers with a placeholder. A piece that exists is read back
        in planning mode too, so a planner that decides from finished pieces (the sweep's
        coordinate descent) sees their numbers."""
        if self.plan is None or os.path.exists(target):
            return False
        self.plan.setdefault(target, Task(target, needs, cost, call))
        return True

    def piece(self, network, seed, name, mode, needs=(), **over) -> dict:
        """Runs (or reads back) one pipeline run; returns its summary plus its metrics and
        folder (`dir`). `needs`: the piece folders whose results this one reads."""
        path = self.folder(network, seed, name)
        summary_file = os.path.join(path, "summary.json")
        needs = [os.path.join(d, "summary.json") for d in needs]
        call = ("piece", (network, seed, name, mode), over)
        if self.planned(summary_file, needs, 1 + over.get(f"{mode}.epochs", 0), call):
            return {"dir": path, **PLACEHOLDER}
        if not os.path.exists(summary_file):
            t0 = time.time()
            print(f"[pieces] {network} seed{seed} {name} ...", flush=True)
            train.RUNNERS[mode](
                self.cfg(network, seed, mode=mode, **over), path, ds=self.ds, mesh=self.mesh
            )
            self.ran += 1
            print(
                f"[pieces] {network} seed{seed} {name} done in {time.time() - t0:.0f}s",
                flush=True,
            )
        with open(summary_file) as f:
            summary = json.load(f)
        metrics = os.path.join(path, "metrics.jsonl")
        summary["metrics"] = (
            [json.loads(x) for x in open(metrics)] if os.path.exists(metrics) else []
        )
        summary["dir"] = path
        return summary

    def pretrained(self, network, seed, **over) -> dict:
        """The seed's dense checkpoint (`config.pretrain_epochs` epochs); every other piece of
        the seed starts from it."""
        return self.piece(
            network,
            seed,
            "pretrain",
            "pretrain",
            **{"pretrain.epochs": self.c.pretrain_epochs, **over},
        )


def apply_quick(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The quick variant: `quick_settings` override the config's fields (train_subset: the
    pipeline's)."""
    config = copy.deepcopy(config)
    config.unlock()
    for key, value in config.quick_settings.items():
        if key == "train_subset":
            config.base.train_subset = value
        else:
            config[key] = value
    return config


# ---------------------------------------------------------------------------------------------
# Parallel workers: several processes share one workdir (one GPU, or many CPU cores)
# ---------------------------------------------------------------------------------------------


class Task:
    """One piece to run: `target` appears when it is done; `needs` must exist before it starts;
    `call` = (`Pieces` method, args, kwargs) that produces it; `cost` orders the work (epochs)."""

    def __init__(self, target, needs, cost, call):
        self.target, self.needs, self.cost, self.call = target, list(needs), cost, call

    def done(self) -> bool:
        return os.path.exists(self.target)

    def ready(self) -> bool:
        return all(os.path.exists(n) for n in self.needs)

    def run(self, st: Pieces):
        method, args, kwargs = self.call
        getattr(st, method)(*args, **kwargs)


def claim(target: str) -> bool:
    """Claims `target` for this process with an exclusively created `<target>.claim` file; a
    claim left by a dead process of this host is taken over."""
    lock = target + ".claim"
    os.makedirs(os.path.dirname(lock), exist_ok=True)
    me = f"{socket.gethostname()} {os.getpid()}"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                host, pid = open(lock).read().split()
            except (OSError, ValueError):
                return False  # being written right now
            if host != socket.gethostname() or alive(int(pid)):
                return False
            try:
                os.remove(lock)  # its owner died: take the piece over
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me)
        return True
    return False


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def work(
    st: Pieces, tasks: list[Task], poll_seconds: float = 1.0, warn_after_seconds: float = 600.0
) -> int:
    """Runs every task of `tasks` that no other process claims, costliest ready task first,
    until all are done (by this process or others). Returns how many this process ran."""
    pending = sorted(tasks, key=lambda t: -t.cost)
    ran, idle_since = 0, time.time()
    while pending:
        pending = [t for t in pending if not t.done()]
        task = next((t for t in pending if t.ready() and claim(t.target)), None)
        if task is None:
            if pending and time.time() - idle_since > warn_after_seconds:
                held = [t.target + ".claim" for t in pending if os.path.exists(t.target + ".claim")]
                print(
                    f"[pieces] waiting {time.time() - idle_since:.0f}s for pieces claimed by "
                    f"other processes: {held[:3]}{' ...' if len(held) > 3 else ''}; a claim "
                    "left by a process of another machine that is gone must be deleted by "
                    "hand",
                    flush=True,
                )
                idle_since = time.time()
            if pending:
                time.sleep(poll_seconds)
            continue
        idle_since = time.time()
        try:
            if not task.done():
                task.run(st)
                ran += 1
        finally:
            os.remove(task.target + ".claim")
        idle_since = time.time()
    return ran


def worker_env(workers: int, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The variables each of `workers` worker processes adds to the environment it inherits:
    an equal share of a GPU's memory (XLA_PYTHON_CLIENT_MEM_FRACTION, at most 0.75), unless
    ``environ`` already sets XLA_PYTHON_CLIENT_MEM_FRACTION or XLA_PYTHON_CLIENT_PREALLOCATE."""
    if any(
        k in environ for k in ("XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_PREALLOCATE")
    ):
        return {}
    return {"XLA_PYTHON_CLIENT_MEM_FRACTION": f"{min(0.75, 0.9 / workers):.3f}"}


def _worker_main(factory, config, workdir, tasks, index, queue, env):
    """A worker process: its own JAX runtime, data and mesh, the shared task list."""
    # The worker's own environment, before its first JAX computation starts a backend
    # (importing the package starts none); the parent's stays as it was.
    os.environ.update(env)
    try:
        st = factory(config, workdir)
        queue.put((index, work(st, tasks), None))
    except BaseException as e:  # reported by the parent, which then fails loudly
        import traceback

        queue.put((index, 0, f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))


def run_workers(factory, config, workdir: str, tasks: list[Task], workers: int) -> int:
    """Runs `tasks` in `workers` spawned processes that share `workdir`, each with its own
    `factory(config, workdir)` (a `Pieces` class); returns how many pieces they ran. On a GPU
    each process gets an equal share of its memory (`worker_env`: passed to the workers, this
    process's environment is left alone)."""
    if not tasks:
        return 0
    env = worker_env(workers)
    print(f"[pieces] {len(tasks)} pieces to run on {workers} worker processes", flush=True)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_worker_main, args=(factory, config, workdir, tasks, i, queue, env))
        for i in range(workers)
    ]
    for proc in procs:
        proc.start()
    ran, errors, reported = 0, [], set()
    while len(reported) < len(procs) and not errors:
        try:
            index, n, err = queue.get(timeout=5)
        except queue_lib.Empty:  # a worker that died without a word (killed, crashed)
            errors += [
                f"worker {i}: exited with code {p.exitcode} and no report"
                for i, p in enumerate(procs)
                if i not in reported and p.exitcode
            ]
            continue
        reported.add(index)
        ran += n
        if err:
            errors.append(f"worker {index}: {err}")
    if errors:  # no point in going on: the results would be incomplete
        for proc in procs:
            proc.terminate()
    for proc in procs:
        proc.join()
    if errors:
        raise RuntimeError("a worker process failed:\n" + "\n".join(errors))
    return ran


def run_replanned(factory, experiments, config, workdir: str) -> int:
    """With `config.workers` > 1: plans `experiments(factory(..., plan=True), config)`, runs the
    planned pieces in that many worker processes, and plans again until nothing is left (for
    experiments that decide their next pieces from finished ones, as a selection does).
    Returns how many pieces the workers ran; 0 with one worker (the caller runs them)."""
    ran = 0
    while config.get("workers", 1) > 1:
        planner = factory(config, workdir, plan=True)
        experiments(planner, config)
        tasks = list(planner.plan.values())
        if not tasks:
            break
        ran += run_workers(factory, config, workdir, tasks, config.workers)
    return ran
