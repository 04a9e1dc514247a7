"""What survives a crash: orbax checkpoints of the train state, and the metrics log.

A run checkpoints its `TrainState` once per epoch; rerunning the same command restores the
newest readable step (falling back to older ones) and truncates `metrics.jsonl` to it.
"""

from __future__ import annotations

import json
import os

import jax
import orbax.checkpoint as ocp

from jackpot_jax import utils


class Checkpointer:
    """Orbax `CheckpointManager` over the flat leaves of a `TrainState`.

    Leaves are saved by index (score trees hold ``None`` leaves, which a flat list does not
    need); the structure comes back from a template state built the same way.
    """

    def __init__(self, directory: str, max_to_keep: int = 2):
        self.mgr = ocp.CheckpointManager(
            os.path.abspath(directory),
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

    def save(self, epoch: int, state) -> None:
        leaves = jax.tree.leaves(utils.as_numpy(state))
        self.mgr.save(epoch, args=ocp.args.StandardSave({str(i): x for i, x in enumerate(leaves)}))

    def restore_latest(self, template):
        """(epoch, state) of the newest readable step, trying older ones if the newest is
        damaged (a kill while orbax deletes an old step can leave one half-deleted)."""
        leaves, treedef = jax.tree.flatten(utils.as_numpy(template))
        target = {str(i): x for i, x in enumerate(leaves)}
        for step in sorted(self.mgr.all_steps(), reverse=True):
            try:
                got = self.mgr.restore(step, args=ocp.args.StandardRestore(target))
            except Exception as e:  # noqa: BLE001 - any unreadable step: fall back to an older one
                utils.log(f"checkpoint step {step} unreadable ({type(e).__name__}: {e}); trying older")
                continue
            return step, jax.tree.unflatten(treedef, [got[str(i)] for i in range(len(leaves))])
        return None

    def close(self) -> None:
        self.mgr.wait_until_finished()
        self.mgr.close()



class MetricsLog:
    """metrics.jsonl, one line per epoch; lines past a resumed epoch are dropped."""

    def __init__(self, path: str, resume_epoch: int):
        self.path = path
        lines = []
        if os.path.exists(path):
            with open(path) as f:
                lines = [ln for ln in f if ln.strip() and json.loads(ln)["epoch"] <= resume_epoch]
        with open(path, "w") as f:
            f.writelines(lines)
        self.records = [json.loads(ln) for ln in lines]

    def append(self, record: dict) -> None:
        self.records.append(record)
        if jax.process_index() == 0:
            with open(self.path, "a") as f:
                f.write(json.dumps(record, default=utils.json_default) + "\n")

