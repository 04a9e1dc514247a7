"""Small helpers the pipeline modules share (logging on process 0, JSON, host copies)."""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np


def log(msg: str) -> None:
    """Prints on process 0 only (every process of a multi-host run runs the same code)."""
    if jax.process_index() == 0:
        print(msg, flush=True)


def write_json(path: str, obj: Any) -> None:
    """Writes JSON atomically (a temporary file, then a rename)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=json_default)
    os.replace(tmp, path)


def json_default(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, (np.ndarray, jax.Array)):
        return np.asarray(x).tolist()
    raise TypeError(f"not JSON serialisable: {type(x)}")


def as_numpy(tree):
    """Host numpy copies of every leaf."""
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


def batch_stats_of(variables):
    """The ``batch_stats`` collection of a variables dict, or None (models without BatchNorm)."""
    return variables.get("batch_stats") or None


def variables_of(params, batch_stats):
    """``{'params': params}`` plus ``batch_stats`` when there are any."""
    v = {"params": params}
    if batch_stats is not None:
        v["batch_stats"] = batch_stats
    return v
