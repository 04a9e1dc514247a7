"""Converting PyTorch state_dicts to jackpot_jax checkpoints, and back.

torch is optional: it is imported only inside the functions that read or write `.pth`
files. Supported layouts:

* torchvision ResNets (`resnet18` ... `wide_resnet50_2`) and VGG-bn (`vgg11_bn` ...);
* the official CIFAR layouts (`resnet20`, `resnet32`, `resnet56`, `vgg19_cifar`), whose
  classifier is a 1x1 conv with bias and whose pruned convs carry a `<name>.mask` tensor
  holding their scores;
* `lenet300_100` / `lenet5` with the Flax names (`conv1`, `fc1`, `classifier`, ...);
* Vision Transformers: torchvision's `vit_b_16`, `vit_b_32`, `vit_l_16`, `vit_l_32`,
  `vit_h_14`, and timm's standard class-token ViTs as `timm:<name>` (`vit_*_patch*_*`,
  `deit_*` without distillation token) in timm's `VisionTransformer` layout, which is also the
  layout of the project's own `vit_tiny` ... `vit_huge` and `vit_fmnist`. torch's fused
  `(3D, D)` q/k/v projection (`self_attention.in_proj_weight`, `attn.qkv.weight`) is split
  into the Flax model's `query`, `key`, `value` kernels and joined back on export. A
  checkpoint at another image size gets its position embedding resized as timm does it
  (`--image-size`; `models.vit.resize_pos_embedding`).

Names map by replacing `.<i>` with `_<i>` (`layer1.0.conv1` <-> `layer1_0/conv1`,
`features.3` <-> `features_3`), except for the classifier: torchvision's `fc` and
`classifier.6` (VGG-bn; `fc1`/`fc2` are `classifier.0`/`classifier.3`). Tensors: conv OIHW <->
HWIO, Linear (out, in) <-> (in, out), BN weight/bias/running_mean/running_var <->
scale/bias/mean/var (num_batches_tracked dropped on import, zero on export).

Nothing is skipped silently: missing keys, unexpected keys and shape mismatches are all
reported by name in one ValueError.
"""

from __future__ import annotations

import os
import pickle
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import flax
import jax
import numpy as np

from jackpot_jax import models
from jackpot_jax.errors import (
    InputError,
    MissingInputError,
    OutputExistsError,
    UnsafeCheckpointError,
)
from jackpot_jax.interop.layouts import (
    CIFAR_RESNETS,
    TORCHVISION_VITS,
    _entries,
    _Entry,
    _import_torch,
    _infer_vit_options,
    _resize_vit,
    _to_flax,
    _to_torch,
    kernel_targets,
    torch_module_name,
    vit_layout,
)
from jackpot_jax.pipeline import checkpoint, export

# ------------------------------------------------------------------- torch -> Flax


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a `.pth`/`.pt` state_dict (plain or `{'state_dict': ...}`, `module.` prefix
    stripped) with weights-only unpickling, as float32 numpy arrays (integers kept)."""
    torch = _import_torch()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingInputError(f"{path}: no such file (expected a .pth/.pt state_dict)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"{path}: this file needs more than weights-only loading (it pickles objects other "
            "than tensors and plain containers); jackpot_jax refuses to unpickle arbitrary code. "
            "Re-save just the weights with torch.save(model.state_dict(), ...). "
            f"torch said: {str(e).splitlines()[0]}"
        ) from e
    except (RuntimeError, EOFError, OSError, KeyError, ValueError) as e:
        # A cut-short or foreign file: torch raises one of these depending on where it breaks.
        said = (str(e).splitlines() or [""])[0][:160]
        raise InputError(
            f"{path}: not a readable PyTorch checkpoint (truncated or damaged?); "
            f"torch said {type(e).__name__}: {said}"
        ) from e
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise InputError(
            f"{path}: expected a state_dict (a dict of tensors), got {type(obj).__name__}"
        )
    not_tensors = sorted(k for k, v in obj.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise InputError(
            f"{path}: entries that are not tensors: {', '.join(map(str, not_tensors))}"
        )
    keys = list(obj)
    if keys and all(k.startswith("module.") for k in keys):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    out = {}
    for k, v in obj.items():
        v = v.detach().cpu()
        out[k] = (v.float() if v.is_floating_point() else v).numpy()
    return out


def infer_options(arch: str, state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Model options read from tensor shapes: num_classes (classifier rows) and, for the
    CIFAR ResNets, the width multiplier (stem channels / 16); for ViTs the image size
    (position-embedding grid x patch) and, where the name leaves it open, the patch size."""
    if vit_layout(arch) is not None:
        return _infer_vit_options(arch, state_dict)
    options = models.default_options(arch)
    options = {k: v for k, v in options.items() if k in ("num_classes", "width")}
    classifier = f"{torch_module_name(arch, ['classifier'])}.weight"
    if classifier in state_dict:
        options["num_classes"] = int(np.shape(state_dict[classifier])[0])
    if arch in CIFAR_RESNETS and "conv1.weight" in state_dict:
        stem = int(np.shape(state_dict["conv1.weight"])[0])
        if stem % 16:
            raise ValueError(f"{arch}: conv1 has {stem} channels, not a multiple of 16")
        options["width"] = stem // 16
    return options


def _abstract_variables(arch: str, options: Mapping[str, Any]):
    module = models.get_model(arch, **options)
    shape = (1,) + models.input_shape(arch, options)
    return module, jax.eval_shape(lambda: models.init_variables(module, jax.random.key(0), shape))


def convert_state_dict(
    arch: str,
    state_dict: Mapping[str, Any],
    *,
    num_classes: int | None = None,
    source: str = "state_dict",
    image_size: int | None = None,
):
    """Converts a torch state_dict (numpy or torch values) to Flax variables for `arch`.

    Returns `(variables, scores, options)`: `scores` is the flat `{path: array}` dict built
    from `<conv>.mask` tensors, or None when the state_dict has none. Raises one ValueError
    listing every missing key, unexpected key and shape mismatch. `image_size` (ViTs only)
    builds the model for that image size, resizing the position embedding as timm does.
    """
    state_dict = {
        k: np.asarray(v.detach().cpu().float() if hasattr(v, "detach") else v)
        for k, v in state_dict.items()
    }
    options = infer_options(arch, state_dict)
    if num_classes is not None:
        options["num_classes"] = int(num_classes)
    if image_size is not None:
        if vit_layout(arch) is None:
            raise InputError(
                f"--image-size applies to ViTs only; {arch} takes any input size it was built for"
            )
        _resize_vit(arch, state_dict, options, int(image_size))
    _, abstract = _abstract_variables(arch, options)
    entries = _entries(arch, abstract)

    used, missing, mismatched = set(), [], []
    variables: dict = {}
    scores: dict = {}
    for e in entries:
        candidates = [(e.torch_key, False)]
        if e.path[-1] == "kernel":
            candidates.append((e.torch_key[: -len("weight")] + "mask", True))
        for key, is_mask in candidates:
            if key not in state_dict:
                if not is_mask:
                    missing.append(key)
                continue
            used.add(key)
            value = state_dict[key]
            if tuple(value.shape) != e.torch_shape:
                mismatched.append(f"{key}: expected {e.torch_shape}, got {tuple(value.shape)}")
                continue
            value = np.ascontiguousarray(_to_flax(e.kind, value.astype(np.float32), e.part))
            if is_mask:
                scores[e.flax_path] = value
            else:
                node = variables.setdefault(e.collection, {})
                for part in e.path[:-1]:
                    node = node.setdefault(part, {})
                node[e.path[-1]] = value
    bn_modules = {e.torch_key.rsplit(".", 1)[0] for e in entries if e.collection == "batch_stats"}
    unexpected = sorted(
        k
        for k in state_dict
        if k not in used
        and not (k.endswith(".num_batches_tracked") and k.rsplit(".", 1)[0] in bn_modules)
    )
    if missing or unexpected or mismatched:
        lines = [f"cannot convert {source} to {arch} ({options}):"]
        for title, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        ):
            items = list(dict.fromkeys(items))  # a fused q/k/v tensor is read three times
            if items:
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items))
        raise InputError("\n".join(lines))
    return variables, (scores or None), options


def convert_checkpoint(
    arch: str,
    input_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    num_classes: int | None = None,
    overwrite: bool = False,
    image_size: int | None = None,
) -> str:
    """Reads a torch `.pth` state_dict and writes a jackpot_jax checkpoint directory
    (variables, model.json and, when `.mask` tensors exist, scores). Returns its path.

    An existing, non-empty `output_dir` is refused (`OutputExistsError`) before anything is
    read, unless `overwrite`. `image_size`: ViTs only, see `convert_state_dict`."""
    _refuse_existing(output_dir, overwrite)
    state_dict = load_torch_state_dict(input_path)
    variables, scores, options = convert_state_dict(
        arch,
        state_dict,
        num_classes=num_classes,
        source=os.fspath(input_path),
        image_size=image_size,
    )
    return checkpoint.save_variables(
        output_dir, variables, arch=arch, model_options=options, scores=scores, overwrite=overwrite
    )


def _refuse_existing(path, overwrite: bool) -> None:
    path = os.fspath(path)
    if overwrite or not os.path.exists(path):
        return
    if os.path.isdir(path) and not os.listdir(path):
        return
    raise OutputExistsError(
        f"{path} exists; refusing to overwrite it (choose another --output, or pass --overwrite)"
    )


# ------------------------------------------------------------------- Flax -> torch


def _flat_by_path(name: str, flat: Mapping[str, Any] | None, known: Mapping[str, tuple]):
    """Normalises a flat `{path: array}` dict ('params/' prefix optional) against the
    kernel paths in `known`, raising on unknown paths or wrong shapes."""
    if flat is None:
        return {}
    out, errors = {}, []
    for path, value in flat.items():
        path = path[len("params/") :] if path.startswith("params/") else path
        value = np.asarray(value)
        if path not in known:
            errors.append(f"{path}: not a kernel of the model")
        elif value.shape != known[path]:
            errors.append(f"{path}: expected {known[path]}, got {value.shape}")
        else:
            out[path] = value
    if errors:
        raise InputError(f"{name} do not fit the model: " + "; ".join(errors))
    return out


def export_to_torch_state_dict(
    arch: str,
    variables: Mapping[str, Any],
    masks: Mapping[str, Any] | None = None,
    *,
    scores: Mapping[str, Any] | None = None,
) -> OrderedDict[str, Any]:
    """Flax variables -> torch state_dict (`dict[str, torch.Tensor]`) for `arch`'s layout.

    `masks` (flat `{param path: 0/1 array}`) are applied as `w * m`, so the jackpot runs in
    plain PyTorch; `scores` (flat dict) are written as `<name>.mask` tensors, the official
    code's format. BatchNorm modules get `num_batches_tracked = 0` so that torchvision's
    `load_state_dict(strict=True)` accepts the result.
    """
    torch = _import_torch()
    entries = _entries(arch, variables)
    kernels = {
        e.flax_path: tuple(np.shape(_leaf(variables, e))) for e in entries if e.path[-1] == "kernel"
    }
    masks = _flat_by_path("masks", masks, kernels)
    for path, m in masks.items():
        if np.any((m != 0) & (m != 1)):
            raise InputError(
                f"masks/{path} holds values other than 0 and 1 (e.g. "
                f"{m[(m != 0) & (m != 1)].flat[0]!r}); a mask keeps (1) or prunes (0)"
            )
    scores = _flat_by_path("scores", scores, kernels)
    out: OrderedDict = OrderedDict()
    fused: dict[str, dict[int, np.ndarray]] = {}  # ViTs: q, k, v parts of one torch tensor

    def put(key: str, e: _Entry, value: np.ndarray):
        if e.part is None:
            out[key] = torch.from_numpy(np.array(_to_torch(e.kind, value), order="C"))
            return
        parts = fused.setdefault(key, {})
        parts[e.part] = _to_torch(e.kind, value)
        if len(parts) == 3:
            joined = np.concatenate([parts[i] for i in range(3)], 0)
            out[key] = torch.from_numpy(np.array(joined, order="C"))

    for e in entries:
        value = np.asarray(_leaf(variables, e), dtype=np.float32)
        if e.flax_path in masks and e.collection == "params":
            value = value * masks[e.flax_path].astype(np.float32)
        put(e.torch_key, e, value)
        if e.collection == "params" and e.flax_path in scores:
            s = np.asarray(scores[e.flax_path], dtype=np.float32)
            put(e.torch_key[: -len("weight")] + "mask", e, s)
        if e.collection == "batch_stats" and e.path[-1] == "var":
            out[e.torch_key[: -len("running_var")] + "num_batches_tracked"] = torch.tensor(0)
    return out


def _leaf(variables, e: _Entry):
    node = variables[e.collection]
    for part in e.path:
        node = node[part]
    return node


def _is_jackpot_only(path) -> bool:
    """A jackpot.npz, or a run's workdir holding one (not a checkpoint directory)."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return path.endswith(".npz")
    return os.path.isfile(os.path.join(path, "jackpot.npz")) and not os.path.isdir(
        os.path.join(path, checkpoint.VARIABLES_DIR)
    )


def export_checkpoint(
    checkpoint_dir: str | os.PathLike,
    output_pth: str | os.PathLike,
    jackpot_npz: str | os.PathLike | None = None,
    *,
    include_scores: bool = False,
    overwrite: bool = False,
) -> str:
    """Writes a jackpot_jax network as a torch state_dict file (`torch.save`).

    `checkpoint_dir` is a checkpoint directory, or a jackpot.npz (or a run's workdir holding
    one) written by the pipeline, which then carries everything: its meta names the model.
    With `jackpot_npz`, its `params/<path>` and `batch_stats/<path>` arrays replace the
    checkpoint's (so the network is the one the search evaluated, BatchNorm statistics
    included) and its `masks/<path>` are applied as `w * m`. `include_scores` writes saved
    scores as `.mask`. An existing `output_pth` is refused unless `overwrite`.
    """
    torch = _import_torch()
    output_pth = os.fspath(output_pth)
    _refuse_existing(output_pth, overwrite)
    if _is_jackpot_only(checkpoint_dir):
        if jackpot_npz is not None:
            raise InputError(
                f"--input {checkpoint_dir} is already a jackpot; --jackpot applies to a "
                "checkpoint directory"
            )
        jackpot_npz = checkpoint_dir
        meta, _, params, batch_stats = export.load_jackpot(checkpoint_dir)
        arch, variables, scores = meta["arch"], {"params": params}, None
        if batch_stats:
            variables["batch_stats"] = batch_stats
        if include_scores:
            raise InputError(
                "--include-scores needs a checkpoint directory (a jackpot.npz holds "
                "no scores); use the run's model/ directory as --input"
            )
    else:
        arch = checkpoint.load_model_info(checkpoint_dir)["arch"]
        variables = checkpoint.load_variables(checkpoint_dir)
        scores = checkpoint.load_scores(checkpoint_dir) if include_scores else None
    masks = None
    if jackpot_npz is not None:
        jackpot = export.read_jackpot(jackpot_npz)
        meta_arch = jackpot["meta"].get("arch")
        if meta_arch is not None and meta_arch != arch:
            raise InputError(
                f"{jackpot_npz} is a {meta_arch} jackpot but {checkpoint_dir} holds {arch}"
            )
        masks = jackpot["masks"]
        for group in ("params", "batch_stats"):
            if not jackpot[group]:
                continue
            flat = flax.traverse_util.flatten_dict(variables.get(group, {}), sep="/")
            unknown = sorted(set(jackpot[group]) - set(flat))
            if unknown:
                raise InputError(f"{jackpot_npz}: {group} not in the model: {', '.join(unknown)}")
            wrong = [
                f"{group}/{k}: {v.shape}, the model's is {np.shape(flat[k])}"
                for k, v in sorted(jackpot[group].items())
                if v.shape != np.shape(flat[k])
            ]
            if wrong:
                raise InputError(
                    f"{jackpot_npz} does not fit {checkpoint_dir}: " + "; ".join(wrong)
                )
            flat.update(jackpot[group])
            variables[group] = flax.traverse_util.unflatten_dict(flat, sep="/")
    state_dict = export_to_torch_state_dict(arch, variables, masks, scores=scores)
    tmp = output_pth + ".tmp"
    torch.save(state_dict, tmp)
    os.replace(tmp, output_pth)
    return output_pth


__all__ = [
    "convert_state_dict",
    "convert_checkpoint",
    "load_torch_state_dict",
    "infer_options",
    "export_to_torch_state_dict",
    "export_checkpoint",
    "kernel_targets",
    "torch_module_name",
    "vit_layout",
    "TORCHVISION_VITS",
]
