"""The exports of a run: the one writer and the one reader of ``jackpot.npz``, and loaders
of what a run leaves behind (for evaluation and fine-tuning).

jackpot.npz holds ``masks/<path>`` (0/1, prunable kernels), ``params/<path>`` (every param,
masked), ``batch_stats/<path>`` and ``meta`` (JSON: arch, options, sparsity, N:M pattern or
null, source).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from jackpot_jax import checkpoint as ckpt_lib
from jackpot_jax import models
from jackpot_jax import sparsity as sp
from jackpot_jax import utils


JACKPOT_GROUPS = ("masks", "params", "batch_stats")


def read_jackpot(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a jackpot.npz (or the run directory holding one) as flat `{path: array}` dicts.

    Returns `{'meta': dict, 'masks': ..., 'params': ..., 'batch_stats': ...}`; `meta` (JSON:
    arch, options, ...) and `batch_stats` are empty when the file has none. Any other key is
    an error, so a foreign file is never half-read.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "jackpot.npz")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no jackpot.npz at {path}")
    out: dict[str, Any] = {"meta": {}, **{g: {} for g in JACKPOT_GROUPS}}
    with np.load(path) as data:
        for key in data.files:
            group, _, leaf = key.partition("/")
            if key == "meta":
                out["meta"] = json.loads(str(data[key]))
            elif group in JACKPOT_GROUPS and leaf:
                out[group][leaf] = data[key]
            else:
                raise ValueError(f"{path}: unexpected key {key!r} (want meta or "
                                                  f"{'/<path>, '.join(JACKPOT_GROUPS)}/<path>)")
    return out


def write_jackpot(workdir, config, opts, masks, variables, source) -> str:
    """jackpot.npz: masks/<path> (prunable leaves), params/<path> (masked weights, every
    param leaf), batch_stats/<path>, and meta (JSON: arch, options, sparsity, source)."""
    arrays = {f"masks/{p}": np.asarray(m, np.uint8) for p, m in sp.flatten_paths(masks).items()}
    arrays.update({f"params/{p}": np.asarray(v)
                   for p, v in sp.flatten_paths(variables["params"]).items()})
    if variables.get("batch_stats"):
        arrays.update({f"batch_stats/{p}": np.asarray(v)
                       for p, v in sp.flatten_paths(variables["batch_stats"]).items()})
    pattern = sp.parse_pattern(config.search.get("pattern", ""))
    meta = {"arch": config.model, "options": opts, "pretrained_checkpoint": source,
            "sparsity_target": pattern.sparsity if pattern else config.sparsity,
            "pattern": str(pattern) if pattern else None}
    arrays["meta"] = np.asarray(json.dumps(meta))
    path = os.path.join(workdir, "jackpot.npz")
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return path


def load_jackpot(path: str) -> tuple[dict, dict, dict, dict]:
    """(meta, masks tree, params tree, batch_stats tree or {}) from a jackpot.npz."""
    jackpot = read_jackpot(path)
    params = ckpt_lib._nest(jackpot["params"])
    masks = sp.tree_from_paths(params, {k: v.astype(np.float32)
                                        for k, v in jackpot["masks"].items()})
    return jackpot["meta"], masks, params, ckpt_lib._nest(jackpot["batch_stats"])


def load_jackpot_for_training(path, config):
    """The search's pre-trained (unmasked) weights, its batch stats and its masks."""
    meta, masks, _, batch_stats = load_jackpot(path)
    source = meta.get("pretrained_checkpoint")
    if source and os.path.isdir(source):
        module, variables = ckpt_lib.load_model(source)
    else:  # random-weight search: weights live only in the run's model/ dir
        module, variables = ckpt_lib.load_model(os.path.join(
            path if os.path.isdir(path) else os.path.dirname(path), "model"))
    variables = utils.variables_of(variables["params"],
                                   batch_stats or utils.batch_stats_of(variables))
    return module, variables, meta["options"], masks, source


def load_for_eval(path: str):
    """(module, variables, masks or None, kind) for a checkpoint dir, workdir or jackpot.npz."""
    if path.endswith(".npz") or os.path.isfile(os.path.join(path, "jackpot.npz")):
        meta, masks, params, batch_stats = load_jackpot(path)
        module = models.get_model(meta["arch"], **meta["options"])
        return module, utils.variables_of(params, batch_stats or None), masks, "jackpot"
    model_dir = path if os.path.isdir(os.path.join(path, ckpt_lib.VARIABLES_DIR)) else \
        os.path.join(path, "model")
    module, variables = ckpt_lib.load_model(model_dir)
    return module, variables, None, "dense"

