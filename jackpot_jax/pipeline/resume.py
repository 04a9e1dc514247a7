"""What survives a crash: the workdir's config, orbax checkpoints of the train state, and the
metrics log.

A run owns its workdir: `prepare_workdir` refuses to resume a run of another config (or files
no run wrote) and, with ``--config.resume=False``, moves the old run aside. A run checkpoints
its `TrainState` once per epoch; rerunning the same command restores the newest readable step
(falling back to an older one when the newest is damaged) and truncates `metrics.jsonl` to it.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from jackpot_jax import utils
from jackpot_jax.errors import InputError, WorkdirError

CONFIG_JSON = "config.json"
# What a run writes in its workdir (besides config.json); anything else there is left alone.
RUN_FILES = (
    "checkpoints",
    "metrics.jsonl",
    "summary.json",
    "jackpot.npz",
    "model",
    "pretrain",
    "search",
)
# How processes find each other, how many loader workers feed them and whether to resume: none
# changes a run's result (the loader gives the same batches for any worker count), and
# process_id differs between the processes of one run.
LAUNCH_KEYS = (
    "resume",
    "distributed",
    "coordinator_address",
    "num_processes",
    "process_id",
    "data_workers",
    "data_prefetch",
)


# ---------------------------------------------------------------------------------------------
# The workdir's owner: config.json
# ---------------------------------------------------------------------------------------------


def config_differences(saved: dict, new: dict) -> list[str]:
    """``'key: saved -> new'`` for every dotted key whose value differs (launch keys ignored)."""
    a = utils.flatten_dict(saved, sep=".")
    b = utils.flatten_dict(json.loads(json.dumps(new, default=utils.json_default)), sep=".")
    keys = sorted(
        k
        for k in set(a) | set(b)
        if k.split(".")[0] not in LAUNCH_KEYS and a.get(k, "<unset>") != b.get(k, "<unset>")
    )
    return [f"{k}: {a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r}" for k in keys]


def read_config_json(workdir: str) -> dict | None:
    path = os.path.join(workdir, CONFIG_JSON)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise InputError(
            f"{path} is not valid JSON ({e}); it records the config of the run in "
            "this workdir: restore it, or use another --workdir"
        ) from e


def _aside_name(workdir: str) -> str:
    k = 1
    while os.path.exists(f"{workdir}.old-{k}"):
        k += 1
    return f"{workdir}.old-{k}"


def prepare_workdir(config, workdir: str) -> None:
    """Makes ``workdir`` this run's: the saved config.json must equal ``config`` (else a
    `WorkdirError` names the differing keys), unless ``config.resume`` is False, which moves an
    existing run to ``<workdir>.old-<k>`` (nothing is deleted). A workdir holding run files but
    no config.json is refused. Writes config.json (process 0)."""
    new = config.to_dict()
    present = [f for f in RUN_FILES + (CONFIG_JSON,) if os.path.exists(os.path.join(workdir, f))]
    aside = None
    saved = None if not config.resume else read_config_json(workdir)
    if not config.resume:  # a damaged config.json is moved aside with the rest
        aside = _aside_name(workdir) if present else None
    elif saved is not None:
        diff = config_differences(saved, new)
        if diff:
            raise WorkdirError(
                f"{workdir} holds a run of another config ({'; '.join(diff)}). Rerun with the "
                "saved values, pick another --workdir, or add --config.resume=False to move the "
                "old run aside and start over"
            )
    elif present:
        raise WorkdirError(
            f"{workdir} holds {', '.join(present)} but no {CONFIG_JSON}: not a "
            "run this program can resume. Pick another --workdir (nothing was "
            "changed)"
        )
    utils.sync("prepare_workdir:read")  # every process has read before process 0 moves things
    if utils.is_primary():
        if aside is not None:
            os.rename(workdir, aside)
            utils.log(f"--config.resume=False: moved the previous run in {workdir} to {aside}")
        os.makedirs(workdir, exist_ok=True)
    utils.write_json(os.path.join(workdir, CONFIG_JSON), new)
    utils.sync("prepare_workdir:written")


# ---------------------------------------------------------------------------------------------
# Orbax checkpoints of the train state
# ---------------------------------------------------------------------------------------------


# tensorstore reports a missing, truncated or garbled file as a ValueError starting with one
# of these status codes; anything else from a restore is a bug and propagates.
_DAMAGE_CODES = ("NOT_FOUND", "DATA_LOSS", "OUT_OF_RANGE")


@contextlib.contextmanager
def _quiet_sibling_reads():
    """orbax reads a step's arrays concurrently: when files are missing, the first failure is
    raised (and reported in one line by `restore_latest`) and asyncio logs every sibling's as
    "Future exception was never retrieved" when it is collected. Those repeats are muted."""
    logger = logging.getLogger("asyncio")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        gc.collect()  # the failed futures are collected (and would log) here, still muted
        logger.setLevel(level)


def _is_damage(e: Exception) -> bool:
    if isinstance(e, (OSError, EOFError, json.JSONDecodeError)):
        return True
    return isinstance(e, ValueError) and str(e).startswith(_DAMAGE_CODES)


class Checkpointer:
    """Orbax `CheckpointManager` over the flat leaves of a `TrainState`.

    Leaves are saved by index (score trees hold ``None`` leaves, which a flat list does not
    need); the structure comes back from a template state built the same way.
    """

    def __init__(self, directory: str, max_to_keep: int = 2):
        self.directory = os.path.abspath(directory)
        self.mgr = ocp.CheckpointManager(
            self.directory,
            item_handlers=ocp.StandardCheckpointHandler(),
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )

    def save(self, epoch: int, state) -> None:
        leaves = jax.tree.leaves(utils.as_numpy(state))
        self.mgr.save(epoch, args=ocp.args.StandardSave({str(i): x for i, x in enumerate(leaves)}))

    def restore_latest(self, template):
        """(epoch, state) of the newest readable step, or None when there is none.

        A damaged step (missing, truncated or garbled files: a kill while orbax deletes an old
        step can leave one half-deleted) is reported in one line and the next older one is
        tried; a step written for other shapes raises `InputError`, as does a directory whose
        every step is damaged.
        """
        with_paths, treedef = jax.tree_util.tree_flatten_with_path(utils.as_numpy(template))
        names = [jax.tree_util.keystr(p) for p, _ in with_paths]
        target = {str(i): x for i, (_, x) in enumerate(with_paths)}
        damaged = []
        for step in sorted(self.mgr.all_steps(), reverse=True):
            try:
                with _quiet_sibling_reads():
                    self._check_fits(step, self.mgr.item_metadata(step), target, names)
                    got = self.mgr.restore(step, args=ocp.args.StandardRestore(target))
            except (OSError, ValueError) as e:
                if isinstance(e, InputError) or not _is_damage(e):
                    raise
                reason = str(e).split(" [", 1)[0].splitlines()[0][:200]
                utils.log(
                    f"checkpoint {self.directory}/{step} is damaged ({reason}); "
                    "trying the one before"
                )
                damaged.append(step)
                continue
            return step, jax.tree.unflatten(treedef, [got[str(i)] for i in range(len(names))])
        if damaged:
            raise InputError(
                f"every checkpoint in {self.directory} is damaged (steps "
                f"{sorted(damaged)}); move it aside or rerun with "
                "--config.resume=False"
            )
        return None

    def _check_fits(self, step, saved, target, names) -> None:
        """`InputError` naming every leaf whose saved shape or dtype differs from this run's."""
        if not saved or not hasattr(saved, "keys"):
            raise FileNotFoundError(f"step {step} has no readable state")
        where = f"{self.directory}/{step}"
        if set(saved.keys()) != set(target):
            raise InputError(
                f"checkpoint {where} holds {len(saved.keys())} arrays, this run's "
                f"state has {len(target)}: it was written by another model or "
                "version. Use another --workdir or --config.resume=False"
            )
        bad = []
        for i, name in enumerate(names):
            s, t = saved[str(i)], target[str(i)]
            if tuple(s.shape) != np.shape(t) or np.dtype(s.dtype) != np.asarray(t).dtype:
                bad.append(
                    f"{name}: saved {tuple(s.shape)} {np.dtype(s.dtype)}, "
                    f"expected {np.shape(t)} {np.asarray(t).dtype}"
                )
        if bad:
            raise InputError(
                f"checkpoint {where} does not fit this run's state ("
                + "; ".join(bad[:5])
                + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
                + "). Use another --workdir or --config.resume=False"
            )

    def close(self) -> None:
        self.mgr.wait_until_finished()
        self.mgr.close()


# ---------------------------------------------------------------------------------------------
# metrics.jsonl
# ---------------------------------------------------------------------------------------------


class MetricsLog:
    """metrics.jsonl, one line per epoch; lines past a resumed epoch are dropped.

    A last line cut short (a kill while appending) is dropped with one line saying so; a bad
    line anywhere else is an `InputError` naming the file and line.
    """

    def __init__(self, path: str, resume_epoch: int):
        self.path = path
        records = []
        if os.path.exists(path):
            with open(path) as f:
                lines = [(i + 1, ln) for i, ln in enumerate(f) if ln.strip()]
            for k, (lineno, ln) in enumerate(lines):
                try:
                    rec = json.loads(ln)
                    epoch = rec["epoch"]
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    if k == len(lines) - 1 and not ln.endswith("\n"):
                        utils.log(f"{path}: dropping its last line, cut short ({ln[:40]!r}...)")
                        continue
                    raise InputError(
                        f"{path}:{lineno}: not a metrics record ({e}); every line "
                        "should be a JSON object with an 'epoch'"
                    ) from e
                if epoch <= resume_epoch:
                    records.append(rec)
        self.records = records
        if utils.is_primary():  # rewritten atomically: a kill now loses nothing
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                f.writelines(json.dumps(r, default=utils.json_default) + "\n" for r in records)
            os.replace(tmp, path)

    def append(self, record: dict) -> None:
        self.records.append(record)
        if utils.is_primary():
            with open(self.path, "a") as f:
                f.write(json.dumps(record, default=utils.json_default) + "\n")
