"""Saving and loading model variables (and optional scores) with orbax.

A checkpoint is a directory:

  path/variables/   orbax PyTree of {'params': ..., 'batch_stats': ...}
  path/model.json   {"arch": name, "options": {"num_classes": ..., ...}}
  path/scores/      (optional) orbax PyTree of the scores, nested by '/'-joined path

Scores travel as a FLAT dict `{'/'-joined param path: array}`; they are nested by path
segment on disk so orbax never sees a '/' inside a key.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

VARIABLES_DIR = "variables"
SCORES_DIR = "scores"
MODEL_JSON = "model.json"


def _abs(path: str | os.PathLike) -> str:
  # orbax requires absolute paths.
  return os.path.abspath(os.path.expanduser(os.fspath(path)))


def _to_numpy(tree: Any) -> Any:
  return jax.tree.map(np.asarray, tree)


def _nest(flat: Mapping[str, Any]) -> dict:
  nested: dict = {}
  for path, value in flat.items():
    parts = path.split("/")
    node = nested
    for part in parts[:-1]:
      node = node.setdefault(part, {})
      if not isinstance(node, dict):
        raise ValueError(f"score path {path!r} clashes with another score path")
    node[parts[-1]] = value
  return nested


def _flatten(nested: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  flat = {}
  for key, value in nested.items():
    path = f"{prefix}/{key}" if prefix else str(key)
    if isinstance(value, Mapping):
      flat.update(_flatten(value, path))
    else:
      flat[path] = value
  return flat


def _save_tree(path: str, tree: Any) -> None:
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path, tree, force=True)
    ckptr.wait_until_finished()


def _restore_tree(path: str) -> Any:
  with ocp.StandardCheckpointer() as ckptr:
    # The saved metadata fixes the tree; restore everything as host numpy arrays.
    meta = ckptr.metadata(path)
    tree = getattr(meta, "item_metadata", meta)
    target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), tree)
    return _to_numpy(ckptr.restore(path, target))


def save_variables(path: str | os.PathLike, variables: Mapping[str, Any], *,
                   arch: str | None = None, model_options: Mapping[str, Any] | None = None,
                   scores: Mapping[str, Any] | None = None) -> str:
  """Writes `variables` (and `scores`, a flat path->array dict) under directory `path`.

  `arch`/`model_options` go to model.json so that `load_model` can rebuild the module.
  The variables and scores of an earlier checkpoint at `path` are replaced (scores removed
  when none are given). Returns the absolute path.
  """
  path = _abs(path)
  if "params" not in variables:
    raise ValueError(f"save_variables({path!r}): variables have no 'params' collection "
                     f"(got {sorted(variables)})")
  os.makedirs(path, exist_ok=True)
  tree = {k: _to_numpy(v) for k, v in variables.items()
          if k in ("params", "batch_stats")}
  _save_tree(os.path.join(path, VARIABLES_DIR), tree)
  sdir = os.path.join(path, SCORES_DIR)
  if os.path.isdir(sdir):
    shutil.rmtree(sdir)  # a checkpoint is one unit: never leave stale scores behind
  if scores is not None:
    if scores:
      _save_tree(sdir, _nest(_to_numpy(dict(scores))))
    else:
      os.makedirs(sdir)
  if arch is not None or model_options:
    meta = {"arch": arch, "options": dict(model_options or {})}
    with open(os.path.join(path, MODEL_JSON), "w") as f:
      json.dump(meta, f, indent=2, sort_keys=True)
  return path


def load_variables(path: str | os.PathLike) -> dict[str, Any]:
  """Reads `{'params': ..., 'batch_stats': ...}` (numpy arrays) saved by `save_variables`."""
  path = _abs(path)
  vdir = os.path.join(path, VARIABLES_DIR)
  if not os.path.isdir(vdir):
    raise FileNotFoundError(f"{path}: not a jackpot_jax checkpoint, missing the "
                            f"'{VARIABLES_DIR}/' directory")
  return dict(_restore_tree(vdir))


def load_scores(path: str | os.PathLike) -> dict[str, np.ndarray] | None:
  """Reads the flat `{path: array}` scores saved with the checkpoint, or None if there are none."""
  sdir = os.path.join(_abs(path), SCORES_DIR)
  if not os.path.isdir(sdir):
    return None
  if not os.listdir(sdir):
    return {}
  return _flatten(_restore_tree(sdir))


def load_model_info(path: str | os.PathLike) -> dict[str, Any]:
  """Reads model.json: `{"arch": name, "options": {...}}`."""
  path = _abs(path)
  fname = os.path.join(path, MODEL_JSON)
  if not os.path.isfile(fname):
    raise FileNotFoundError(f"{path}: missing {MODEL_JSON} (saved without arch=?), so the "
                            "model cannot be rebuilt")
  with open(fname) as f:
    info = json.load(f)
  if not info.get("arch"):
    raise ValueError(f"{fname}: no 'arch' entry")
  info.setdefault("options", {})
  return info


def load_model(path: str | os.PathLike):
  """Returns `(module, variables)` rebuilt from model.json via `models.get_model`."""
  from jackpot_jax import models  # models import nothing from here; keep import local

  info = load_model_info(path)
  module = models.get_model(info["arch"], **info["options"])
  return module, load_variables(path)


__all__ = ["save_variables", "load_variables", "load_scores", "load_model", "load_model_info"]
