"""The exports of a run: the one writer and the one reader of ``jackpot.npz``, and loaders
of what a run leaves behind (for evaluation and fine-tuning).

jackpot.npz holds ``masks/<path>`` (0/1, prunable kernels), ``params/<path>`` (every param,
masked), ``batch_stats/<path>`` and ``meta`` (JSON: arch, options, sparsity, N:M pattern or
null, source).
"""

from __future__ import annotations

import json
import os
import zipfile
from typing import Any

import numpy as np

from jackpot_jax import method as jm
from jackpot_jax import models, utils
from jackpot_jax.errors import InputError, MissingInputError
from jackpot_jax.pipeline import checkpoint as ckpt_lib

JACKPOT_GROUPS = ("masks", "params", "batch_stats")


def read_jackpot(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a jackpot.npz (or the run directory holding one) as flat `{path: array}` dicts.

    Returns `{'meta': dict, 'masks': ..., 'params': ..., 'batch_stats': ...}`; `meta` (JSON:
    arch, options, ...) and `batch_stats` are empty when the file has none. Any other key, a
    damaged file, bad JSON in `meta`, a mask that is not 0/1 or has no params entry of its
    shape is an `InputError` naming the file and key, so a foreign file is never half-read.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "jackpot.npz")
    if not os.path.isfile(path):
        raise MissingInputError(f"no jackpot.npz at {path}")
    out: dict[str, Any] = {"meta": {}, **{g: {} for g in JACKPOT_GROUPS}}
    try:
        with np.load(path) as data:
            for key in data.files:
                group, _, leaf = key.partition("/")
                if key == "meta":
                    out["meta"] = _parse_meta(path, data[key])
                elif group in JACKPOT_GROUPS and leaf:
                    out[group][leaf] = data[key]
                else:
                    raise InputError(
                        f"{path}: unexpected key {key!r} (want meta or "
                        f"{'/<path>, '.join(JACKPOT_GROUPS)}/<path>)"
                    )
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"{path}: not a readable .npz (truncated or damaged?): {e}") from e
    for leaf, m in out["masks"].items():
        bad = m[(m != 0) & (m != 1)]
        if bad.size:
            raise InputError(
                f"{path}: masks/{leaf} holds {bad.size} values that are not 0 or 1 "
                f"(e.g. {bad.flat[0]!r}); a mask keeps (1) or prunes (0) a weight"
            )
        p = out["params"].get(leaf)
        if out["params"] and (p is None or p.shape != m.shape):
            raise InputError(
                f"{path}: masks/{leaf} has shape {m.shape} but params/{leaf} is "
                f"{'missing' if p is None else p.shape}"
            )
    return out


def _parse_meta(path, value) -> dict:
    try:
        meta = json.loads(str(value))
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: its 'meta' entry is not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise InputError(f"{path}: its 'meta' entry is {type(meta).__name__}, not a JSON object")
    return meta


def write_jackpot(workdir, config, opts, masks, variables, source) -> str:
    """jackpot.npz: masks/<path> (prunable leaves), params/<path> (masked weights, every
    param leaf), batch_stats/<path>, and meta (JSON: arch, options, sparsity, source)."""
    arrays = {f"masks/{p}": np.asarray(m, np.uint8) for p, m in jm.flatten_paths(masks).items()}
    arrays.update(
        {f"params/{p}": np.asarray(v) for p, v in jm.flatten_paths(variables["params"]).items()}
    )
    if variables.get("batch_stats"):
        arrays.update(
            {
                f"batch_stats/{p}": np.asarray(v)
                for p, v in jm.flatten_paths(variables["batch_stats"]).items()
            }
        )
    pattern = jm.parse_pattern(config.search.get("pattern", ""))
    meta = {
        "arch": config.model,
        "options": opts,
        "pretrained_checkpoint": source,
        "sparsity_target": pattern.sparsity if pattern else config.sparsity,
        "pattern": str(pattern) if pattern else None,
    }
    arrays["meta"] = np.asarray(json.dumps(meta))
    path = os.path.join(workdir, "jackpot.npz")
    if utils.is_primary():
        tmp = path + ".tmp.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    return path


def _npz_path(path) -> str:
    path = os.fspath(path)
    return os.path.join(path, "jackpot.npz") if os.path.isdir(path) else path


def load_jackpot(path: str, input_shape=None) -> tuple[dict, dict, dict, dict]:
    """(meta, masks tree, params tree, batch_stats tree or {}) from a jackpot.npz written by
    the pipeline: `meta` must name the model (`InputError` otherwise). With `input_shape`
    (H, W, C), params and batch_stats are checked against the model's shapes."""
    jackpot = read_jackpot(path)
    meta = jackpot["meta"]
    if not isinstance(meta.get("arch"), str) or not isinstance(meta.get("options"), dict):
        raise InputError(
            f"{_npz_path(path)} has no 'meta' entry naming the model ({{'arch': ..., 'options': "
            "{...}}), so the network cannot be rebuilt: it was not written by the jackpot_jax "
            "pipeline. Export it with tools/convert_torch_weights.py --to-torch --input "
            f"<checkpoint dir> --jackpot {_npz_path(path)} instead"
        )
    params = utils.nest_dict(jackpot["params"])
    batch_stats = utils.nest_dict(jackpot["batch_stats"])
    if input_shape is not None:
        ckpt_lib.check_variables(
            model_of(meta, path),
            utils.variables_of(params, batch_stats or None),
            input_shape,
            _npz_path(path),
        )
    masks = jm.tree_from_paths(
        params, {k: v.astype(np.float32) for k, v in jackpot["masks"].items()}
    )
    return meta, masks, params, batch_stats


def model_of(meta: dict, path):
    """The Flax module a jackpot's meta names."""
    try:
        return models.get_model(meta["arch"], **meta["options"])
    except (TypeError, ValueError) as e:
        raise InputError(
            f"{_npz_path(path)}: its meta names {meta['arch']!r} with options "
            f"{meta['options']}, which cannot be built ({e})"
        ) from e


def _same_weights(variables, params, masks) -> bool:
    """Whether dense ``variables`` hold the jackpot's weights: equal on every kept entry."""
    dense, kept = jm.flatten_paths(variables["params"]), jm.flatten_paths(masks)
    flat = jm.flatten_paths(params)
    if set(dense) != set(flat):
        return False
    for p, w in flat.items():
        d = np.asarray(dense[p])
        if d.shape != w.shape:
            return False
        keep = np.asarray(kept[p]) == 1 if p in kept else np.ones(w.shape, bool)
        if not np.array_equal(d[keep], w[keep]):
            return False
    return True


def load_jackpot_for_training(path, config, input_shape=None):
    """The jackpot's unmasked weights, its batch stats and its masks, for fine-tuning.

    The unmasked weights come from the first of ``meta.pretrained_checkpoint`` and the run's
    own ``model/`` that builds the same architecture and agrees with the jackpot's weights on
    every kept entry; a checkpoint that has since been replaced by another is never used.
    """
    meta, masks, params, batch_stats = load_jackpot(path, input_shape)
    npz = _npz_path(path)
    source = meta.get("pretrained_checkpoint")
    candidates = [
        c for c in (source, os.path.join(os.path.dirname(npz), "model")) if c and os.path.isdir(c)
    ]
    tried = []
    for cand in candidates:
        info = ckpt_lib.load_model_info(cand)
        if (info["arch"], info["options"]) != (meta["arch"], meta["options"]):
            tried.append(f"{cand} holds {info['arch']} {info['options']}")
            continue
        module, variables = ckpt_lib.load_model(cand, input_shape)
        if not _same_weights(variables, params, masks):
            tried.append(f"{cand} holds other weights than the jackpot's")
            continue
        if cand != source and source:
            utils.log(
                f"{source} is not the jackpot's pre-trained checkpoint any more; using {cand}"
            )
        variables = utils.variables_of(
            variables["params"], batch_stats or utils.batch_stats_of(variables)
        )
        return module, variables, meta["options"], masks, source
    raise InputError(
        f"{npz}: no checkpoint with the jackpot's unmasked weights ({meta['arch']} "
        f"{meta['options']}): "
        + ("; ".join(tried) if tried else f"neither {source!r} nor a model/ beside it exists")
    )


def load_for_eval(path: str, input_shape=None):
    """(module, variables, masks or None, kind) for a checkpoint dir, workdir or jackpot.npz,
    checked against the model's shapes on `input_shape` (H, W, C) when given."""
    if not os.path.exists(path):
        raise MissingInputError(
            f"checkpoint={path!r} does not exist (expected a checkpoint "
            "directory, a run's workdir or a jackpot.npz)"
        )
    if path.endswith(".npz") or os.path.isfile(os.path.join(path, "jackpot.npz")):
        meta, masks, params, batch_stats = load_jackpot(path, input_shape)
        module = model_of(meta, path)
        return module, utils.variables_of(params, batch_stats or None), masks, "jackpot"
    model_dir = (
        path
        if os.path.isdir(os.path.join(path, ckpt_lib.VARIABLES_DIR))
        else os.path.join(path, "model")
    )
    module, variables = ckpt_lib.load_model(model_dir, input_shape)
    return module, variables, None, "dense"
