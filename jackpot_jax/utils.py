"""Small helpers the pipeline modules share: process 0 logs and writes, JSON, host copies, flat
and nested dicts, and the kill hook the crash tests use."""

from __future__ import annotations

import hashlib
import json
import os
import signal
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np


def is_primary() -> bool:
    """True on process 0, the one process of a multi-process run that writes files."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """Barrier over all processes (nothing to do in a one-process run)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def log(msg: str) -> None:
    """Prints on process 0 only (every process of a multi-host run runs the same code)."""
    if is_primary():
        print(msg, flush=True)


def write_json(path: str, obj: Any) -> None:
    """Writes JSON atomically (a temporary file, then a rename), on process 0 only."""
    if not is_primary():
        return
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


def digest(flat: dict) -> str:
    """sha256 over a flat ``{path: array}`` dict (paths, shapes, dtypes and bytes, in path order)."""
    h = hashlib.sha256()
    for path in sorted(flat):
        a = np.ascontiguousarray(flat[path])
        h.update(f"{path}:{a.shape}:{a.dtype};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


# The crash tests' hook: JACKPOT_JAX_KILL_AT="<event>:<n>" SIGKILLs this process at the n-th
# `kill_point(event)` it passes (events: 'step', 'save', 'export'), so that a test can stop a
# run at the same place every time instead of racing a timer. Unset: a dict look-up per call.
_KILL_COUNTS: dict[str, int] = {}


def kill_point(event: str) -> None:
    """SIGKILLs the process at the n-th ``event`` when JACKPOT_JAX_KILL_AT='event:n' is set."""
    spec = os.environ.get("JACKPOT_JAX_KILL_AT")
    if not spec:
        return
    name, _, n = spec.partition(":")
    if name != event:
        return
    _KILL_COUNTS[event] = _KILL_COUNTS.get(event, 0) + 1
    if _KILL_COUNTS[event] == int(n):
        os.kill(os.getpid(), signal.SIGKILL)


def flatten_dict(nested: Mapping[str, Any], sep: str = "/", prefix: str = "") -> dict[str, Any]:
    """``{'a': {'b': 1}}`` -> ``{'a/b': 1}`` (keys joined with ``sep``; mappings are walked,
    anything else is a leaf)."""
    flat = {}
    for key, value in nested.items():
        path = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten_dict(value, sep, path))
        else:
            flat[path] = value
    return flat


def nest_dict(flat: Mapping[str, Any], sep: str = "/") -> dict:
    """The inverse of `flatten_dict`: ``{'a/b': 1}`` -> ``{'a': {'b': 1}}``. Raises ValueError
    when one path is a prefix of another (``'a'`` and ``'a/b'``)."""
    nested: dict = {}
    for path, value in flat.items():
        parts = path.split(sep)
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"path {path!r} clashes with another path")
        if isinstance(node.get(parts[-1]), dict):
            raise ValueError(f"path {path!r} clashes with another path")
        node[parts[-1]] = value
    return nested
