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
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jackpot_jax import utils
from jackpot_jax.errors import InputError, MissingInputError, OutputExistsError

VARIABLES_DIR = "variables"
SCORES_DIR = "scores"
MODEL_JSON = "model.json"


def _abs(path: str | os.PathLike) -> str:
    # orbax requires absolute paths.
    return os.path.abspath(os.path.expanduser(os.fspath(path)))


def _to_numpy(tree: Any) -> Any:
    return jax.tree.map(np.asarray, tree)


def _save_tree(path: str, tree: Any) -> None:
    # Every process of a multi-process run calls this: orbax decides who writes what.
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path, tree, force=True)
        ckptr.wait_until_finished()


def _restore_tree(path: str) -> Any:
    with ocp.StandardCheckpointer() as ckptr:
        # The saved metadata fixes the tree; restore everything as host numpy arrays.
        try:
            meta = ckptr.metadata(path)
            tree = getattr(meta, "item_metadata", meta)
            target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), tree)
            return _to_numpy(ckptr.restore(path, target))
        except (OSError, ValueError) as e:  # tensorstore: missing/truncated files are ValueErrors
            raise InputError(
                f"{path}: unreadable checkpoint ({str(e).split(' [', 1)[0][:300]})"
            ) from e


def save_variables(
    path: str | os.PathLike,
    variables: Mapping[str, Any],
    *,
    arch: str | None = None,
    model_options: Mapping[str, Any] | None = None,
    scores: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> str:
    """Writes `variables` (and `scores`, a flat path->array dict) under directory `path`.

    `arch`/`model_options` go to model.json so that `load_model` can rebuild the module.
    A `path` that exists and is not empty is refused (`OutputExistsError`) unless `overwrite`,
    which replaces its variables, scores (removed when none are given) and model.json.
    In a multi-process run every process calls this; process 0 writes all but orbax's shards.
    Returns the absolute path.
    """
    path = _abs(path)
    if "params" not in variables:
        raise ValueError(
            f"save_variables({path!r}): variables have no 'params' collection "
            f"(got {sorted(variables)})"
        )
    if not overwrite and os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise OutputExistsError(
            f"{path} exists and is not empty; refusing to overwrite it (choose "
            "another output, or pass --overwrite)"
        )
    utils.sync("save_variables:checked")  # every process looked before process 0 writes
    if utils.is_primary():
        os.makedirs(path, exist_ok=True)
    utils.sync("save_variables:made")
    tree = {k: _to_numpy(v) for k, v in variables.items() if k in ("params", "batch_stats")}
    _save_tree(os.path.join(path, VARIABLES_DIR), tree)
    sdir = os.path.join(path, SCORES_DIR)
    if utils.is_primary() and os.path.isdir(sdir):
        shutil.rmtree(sdir)  # a checkpoint is one unit: never leave stale scores behind
    utils.sync("save_variables:scores")
    if scores is not None:
        if scores:
            _save_tree(sdir, utils.nest_dict(_to_numpy(dict(scores))))
        elif utils.is_primary():
            os.makedirs(sdir)
    if (arch is not None or model_options) and utils.is_primary():
        meta = {"arch": arch, "options": dict(model_options or {})}
        tmp = os.path.join(path, MODEL_JSON + ".tmp")
        with open(tmp, "w") as f:
            json.dump(meta, f, indent=2, sort_keys=True)
        os.replace(tmp, os.path.join(path, MODEL_JSON))
    utils.sync("save_variables:done")
    return path


def load_variables(path: str | os.PathLike) -> dict[str, Any]:
    """Reads `{'params': ..., 'batch_stats': ...}` (numpy arrays) saved by `save_variables`."""
    path = _abs(path)
    vdir = os.path.join(path, VARIABLES_DIR)
    if not os.path.isdir(vdir):
        raise MissingInputError(
            f"{path}: not a jackpot_jax checkpoint, missing the '{VARIABLES_DIR}/' directory"
        )
    return dict(_restore_tree(vdir))


def load_scores(path: str | os.PathLike) -> dict[str, np.ndarray] | None:
    """Reads the flat `{path: array}` scores saved with the checkpoint, or None if there are none."""
    sdir = os.path.join(_abs(path), SCORES_DIR)
    if not os.path.isdir(sdir):
        return None
    if not os.listdir(sdir):
        return {}
    return utils.flatten_dict(_restore_tree(sdir))


def load_model_info(path: str | os.PathLike) -> dict[str, Any]:
    """Reads model.json: `{"arch": name, "options": {...}}`."""
    path = _abs(path)
    fname = os.path.join(path, MODEL_JSON)
    if not os.path.isfile(fname):
        raise MissingInputError(
            f"{path}: missing {MODEL_JSON} (saved without arch=?), so the model cannot be rebuilt"
        )
    want = '{"arch": "<model name>", "options": {"num_classes": ..., ...}}'
    try:
        with open(fname) as f:
            info = json.load(f)
    except json.JSONDecodeError as e:
        raise InputError(f"{fname}: not valid JSON ({e}); it should read {want}") from e
    if not isinstance(info, dict) or not info.get("arch"):
        raise InputError(f"{fname}: no 'arch' entry; it should read {want}")
    info.setdefault("options", {})
    if not isinstance(info["options"], dict):
        raise InputError(
            f"{fname}: 'options' is {info['options']!r}, not an object; it should read {want}"
        )
    return info


def check_variables(module, variables: Mapping[str, Any], input_shape, source: str) -> None:
    """`InputError` listing every param/batch_stats path of `variables` that is missing,
    unexpected or mis-shaped for `module` on inputs of shape `input_shape` (H, W, C)."""
    from jackpot_jax import models  # models import nothing from here; keep import local

    abstract = jax.eval_shape(
        lambda: models.init_variables(module, jax.random.key(0), (1, *input_shape))
    )
    problems = []
    for col in ("params", "batch_stats"):
        want = {p: tuple(v.shape) for p, v in utils.flatten_dict(abstract.get(col, {})).items()}
        got = {
            p: tuple(np.shape(v)) for p, v in utils.flatten_dict(variables.get(col) or {}).items()
        }
        problems += [
            f"{col}/{p}: shape {got[p]}, expected {want[p]}"
            for p in sorted(set(want) & set(got))
            if want[p] != got[p]
        ]
        problems += [
            f"{col}/{p}: missing (expected {want[p]})" for p in sorted(set(want) - set(got))
        ]
        problems += [f"{col}/{p}: not in the model" for p in sorted(set(got) - set(want))]
    if problems:
        raise InputError(
            f"{source} does not fit {type(module).__name__} on {tuple(input_shape)} "
            f"inputs: "
            + "; ".join(problems[:8])
            + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        )


def load_model(path: str | os.PathLike, input_shape=None):
    """Returns `(module, variables)` rebuilt from model.json via `models.get_model`, checked
    against the model's shapes on `input_shape` (H, W, C; default: the model's own)."""
    from jackpot_jax import models  # models import nothing from here; keep import local

    info = load_model_info(path)
    try:
        module = models.get_model(info["arch"], **info["options"])
    except (TypeError, ValueError) as e:
        raise InputError(
            f"{os.path.join(_abs(path), MODEL_JSON)}: cannot build {info['arch']!r} "
            f"with options {info['options']} ({e})"
        ) from e
    variables = load_variables(path)
    check_variables(
        module,
        variables,
        input_shape or models.input_shape(info["arch"], info["options"]),
        f"checkpoint {_abs(path)}",
    )
    return module, variables


__all__ = [
    "save_variables",
    "load_variables",
    "load_scores",
    "load_model",
    "load_model_info",
    "check_variables",
]
