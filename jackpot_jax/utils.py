"""Small helpers the pipeline modules share: process 0 logs and writes, JSON, host copies, flat
and nested dicts, and the one digest of a set of masks (`masks_digest`)."""

from __future__ import annotations

import hashlib
import json
import os
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


def masks_digest(masks: Mapping[str, Any]) -> str:
    """The one digest of a set of masks (hex sha256), the same wherever the masks are held.

    ``masks`` is flat, ``{'/'-joined path: 0/1 array}`` (as `jackpot_jax.method.flatten_paths`
    and the ``masks/<path>`` keys of jackpot.npz give them), of any dtype: float32 on the
    device and uint8 in jackpot.npz hash the same. For each path in sorted (Python string)
    order, the hash takes the UTF-8 header ``f"{path}:{shape}:bool;"`` (shape as a tuple, e.g.
    ``(3, 4)``), then the mask as a C-ordered bool array's bytes (one byte per weight, 0 or 1).
    ``tools/mask_digest.py`` prints it for jackpot.npz files; a multi-process run prints it
    for its final masks. A value other than 0 or 1 is a ValueError naming the path."""
    h = hashlib.sha256()
    for path in sorted(masks):
        m = np.asarray(masks[path])
        if not np.all((m == 0) | (m == 1)):
            raise ValueError(f"masks_digest: {path} holds values other than 0 and 1")
        m = np.ascontiguousarray(m, dtype=bool)
        h.update(f"{path}:{m.shape}:bool;".encode())
        h.update(m.tobytes())
    return h.hexdigest()


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
