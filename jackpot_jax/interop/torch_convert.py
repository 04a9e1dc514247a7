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

import argparse
import dataclasses
import os
import pickle
import re
import sys
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import flax
import jax
import numpy as np

from jackpot_jax import models
from jackpot_jax.errors import InputError, JackpotError, MissingInputError, OutputExistsError
from jackpot_jax.models.vit import ViT, resize_pos_embedding
from jackpot_jax.pipeline import checkpoint, export

# Layouts whose classifier is stored as a 1x1 conv `(classes, in, 1, 1)` with bias.
CONV_CLASSIFIER_ARCHS = ("resnet20", "resnet32", "resnet56", "vgg19_cifar")
CIFAR_RESNETS = ("resnet20", "resnet32", "resnet56")
_VGG_BN_FC = {"fc1": "classifier.0", "fc2": "classifier.3", "classifier": "classifier.6"}


class UnsafeCheckpointError(InputError):
    """The file needs full unpickling (arbitrary code), which we refuse to do."""


def _import_torch():
    try:
        import torch  # pylint: disable=import-outside-toplevel
    except ImportError as e:
        raise ImportError(
            "torch is needed to read/write PyTorch checkpoints: pip install 'jackpot_jax[torch]'"
        ) from e
    return torch


# ---------------------------------------------------------------------------- names


def torch_module_name(arch: str, module_path: Sequence[str]) -> str:
    """The torch module name of a Flax module path, e.g. ('layer1_0', 'conv1') -> 'layer1.0.conv1'."""
    if len(module_path) == 1 and module_path[0] in ("classifier", "fc1", "fc2"):
        name = module_path[0]
        if arch.startswith("vgg") and arch.endswith("_bn"):
            return _VGG_BN_FC[name]
        if name == "classifier" and arch.startswith(("resnet", "wide_resnet")):
            return "fc"
        return name
    return ".".join(re.sub(r"_(\d+)$", r".\1", seg) for seg in module_path)


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One torch tensor <-> one Flax leaf."""

    torch_key: str
    collection: str  # 'params' or 'batch_stats'
    path: tuple  # path inside the collection
    kind: str  # 'conv' | 'linear' | 'conv_linear' | 'vector'
    torch_shape: tuple
    part: int | None = None  # ViTs: q (0), k (1) or v (2) of a fused (3D, ...) tensor

    @property
    def flax_path(self) -> str:
        return "/".join(self.path)


_LEAF_NAMES = {
    ("params", "kernel"): "weight",
    ("params", "bias"): "bias",
    ("params", "scale"): "weight",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}


def _entries(arch: str, variables: Mapping[str, Any]) -> list[_Entry]:
    """The torch tensors a model's variables correspond to, in the model's order."""
    layout = vit_layout(arch)
    if layout is not None:
        return _vit_entries(layout, variables)
    out = []
    for collection in ("params", "batch_stats"):
        if collection not in variables:
            continue
        for path, leaf in flax.traverse_util.flatten_dict(dict(variables[collection])).items():
            *module, leaf_name = path
            if (collection, leaf_name) not in _LEAF_NAMES:
                raise ValueError(f"no torch equivalent for {collection}/{'/'.join(path)}")
            key = f"{torch_module_name(arch, module)}.{_LEAF_NAMES[collection, leaf_name]}"
            shape = tuple(np.shape(leaf))
            if leaf_name == "kernel" and len(shape) == 4:
                kind, tshape = "conv", (shape[3], shape[2], shape[0], shape[1])
            elif (
                leaf_name == "kernel" and module == ["classifier"] and arch in CONV_CLASSIFIER_ARCHS
            ):
                kind, tshape = "conv_linear", (shape[1], shape[0], 1, 1)
            elif leaf_name == "kernel":
                kind, tshape = "linear", (shape[1], shape[0])
            else:
                kind, tshape = "vector", shape
            out.append(_Entry(key, collection, tuple(path), kind, tshape))
    return out


# ------------------------------------------------------------------------------ ViTs

TORCHVISION_VITS = ("vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14")

# Flax module path (with `{i}` for the block) -> torch module name, per layout.
_VIT_NAMES = {
    "torchvision": {
        "patch_embed": "conv_proj",
        "blocks_{i}/ln1": "encoder.layers.encoder_layer_{i}.ln_1",
        "blocks_{i}/attn/out": "encoder.layers.encoder_layer_{i}.self_attention.out_proj",
        "blocks_{i}/ln2": "encoder.layers.encoder_layer_{i}.ln_2",
        "blocks_{i}/mlp/fc1": "encoder.layers.encoder_layer_{i}.mlp.0",
        "blocks_{i}/mlp/fc2": "encoder.layers.encoder_layer_{i}.mlp.3",
        "norm": "encoder.ln",
        "classifier": "heads.head",
    },
    "timm": {
        "patch_embed": "patch_embed.proj",
        "blocks_{i}/ln1": "blocks.{i}.norm1",
        "blocks_{i}/attn/out": "blocks.{i}.attn.proj",
        "blocks_{i}/ln2": "blocks.{i}.norm2",
        "blocks_{i}/mlp/fc1": "blocks.{i}.mlp.fc1",
        "blocks_{i}/mlp/fc2": "blocks.{i}.mlp.fc2",
        "norm": "norm",
        "classifier": "head",
    },
}
# Tensors that are not a module's weight/bias: the tokens and the fused q/k/v projection.
_VIT_TENSORS = {
    "torchvision": {
        "cls_token": "class_token",
        "pos_embedding": "encoder.pos_embedding",
        "qkv_weight": "encoder.layers.encoder_layer_{i}.self_attention.in_proj_weight",
        "qkv_bias": "encoder.layers.encoder_layer_{i}.self_attention.in_proj_bias",
    },
    "timm": {
        "cls_token": "cls_token",
        "pos_embedding": "pos_embed",
        "qkv_weight": "blocks.{i}.attn.qkv.weight",
        "qkv_bias": "blocks.{i}.attn.qkv.bias",
    },
}
_QKV = ("query", "key", "value")


def vit_layout(arch: str) -> str | None:
    """'torchvision' or 'timm' for a ViT name (the PyTorch layout its weights take), None
    for the CNNs. The project's own ViTs (`vit_tiny` ..., `vit_fmnist`) use timm's layout,
    whose `VisionTransformer` takes any width, depth, patch, image size and channel count."""
    if arch in TORCHVISION_VITS:
        return "torchvision"
    try:
        module = models.get_model(arch)
    except ValueError:
        return None
    return "timm" if isinstance(module, ViT) else None


def _vit_entries(layout: str, variables: Mapping[str, Any]) -> list[_Entry]:
    names, tensors = _VIT_NAMES[layout], _VIT_TENSORS[layout]
    out = []
    for path, leaf in flax.traverse_util.flatten_dict(dict(variables["params"])).items():
        shape = tuple(np.shape(leaf))
        *module, leaf_name = path
        block = re.fullmatch(r"blocks_(\d+)", module[0]) if module else None
        i = block[1] if block else None
        generic = "/".join(["blocks_{i}", *module[1:]] if block else module)
        if not module and leaf_name in ("cls_token", "pos_embedding"):
            out.append(_Entry(tensors[leaf_name], "params", path, "vector", shape))
        elif block and module[1:2] == ["attn"] and module[2:] and module[2] in _QKV:
            part = _QKV.index(module[2])
            if leaf_name == "kernel":
                key, kind = tensors["qkv_weight"], "qkv_linear"
                tshape = (3 * shape[1], shape[0])
            else:
                key, kind, tshape = tensors["qkv_bias"], "qkv_vector", (3 * shape[0],)
            out.append(_Entry(key.format(i=i), "params", path, kind, tshape, part))
        elif generic in names and (leaf_name, len(shape)) in (
            ("kernel", 4),
            ("kernel", 2),
            ("bias", 1),
            ("scale", 1),
        ):
            key = f"{names[generic].format(i=i)}.{_LEAF_NAMES['params', leaf_name]}"
            if leaf_name == "kernel" and len(shape) == 4:
                kind, tshape = "conv", (shape[3], shape[2], shape[0], shape[1])
            elif leaf_name == "kernel":
                kind, tshape = "linear", (shape[1], shape[0])
            else:
                kind, tshape = "vector", shape
            out.append(_Entry(key, "params", path, kind, tshape))
        else:
            raise ValueError(f"no torch equivalent for params/{'/'.join(path)}")
    return out


def _vit_grid(arch: str, state_dict: Mapping[str, Any]) -> int | None:
    """The side of the position embedding's patch grid in a ViT state_dict (None if absent)."""
    key = _VIT_TENSORS[vit_layout(arch)]["pos_embedding"]
    if key not in state_dict or np.ndim(state_dict[key]) != 3:
        return None
    tokens = int(np.shape(state_dict[key])[1]) - 1
    side = int(round(tokens**0.5))
    return side if side * side == tokens else None


def _infer_vit_options(arch: str, state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """num_classes (head rows), patch_size (where the name leaves it open: the patch
    embedding's kernel) and image_size (position-embedding grid x patch)."""
    layout = vit_layout(arch)
    options = {k: v for k, v in models.default_options(arch).items() if k != "dropout_rate"}
    head = f"{_VIT_NAMES[layout]['classifier']}.weight"
    if np.ndim(state_dict.get(head)) == 2:
        options["num_classes"] = int(np.shape(state_dict[head])[0])
    proj = state_dict.get(f"{_VIT_NAMES[layout]['patch_embed']}.weight")
    patch = models.get_model(arch).patch_size
    if np.ndim(proj) == 4 and "patch_size" in options:
        options["patch_size"] = patch = int(np.shape(proj)[2])
    grid = _vit_grid(arch, state_dict)
    if grid is not None:
        options["image_size"] = grid * patch
    return options


def _resize_vit(arch, state_dict, options, image_size):
    """Sets options['image_size'] and resizes the state_dict's position embedding to it."""
    patch = options.get("patch_size") or models.get_model(arch).patch_size
    if image_size <= 0 or image_size % patch:
        raise InputError(
            f"--image-size {image_size}: a ViT needs a positive multiple of its patch size "
            f"({patch}) for {arch}"
        )
    options["image_size"] = int(image_size)
    key = _VIT_TENSORS[vit_layout(arch)]["pos_embedding"]
    grid = _vit_grid(arch, state_dict)
    if grid is not None and grid != image_size // patch:
        state_dict[key] = resize_pos_embedding(state_dict[key], image_size // patch)


def _to_flax(kind: str, w: np.ndarray, part: int | None = None) -> np.ndarray:
    if kind == "qkv_linear":
        d = w.shape[0] // 3
        return w.reshape(3, d, w.shape[1])[part].T
    if kind == "qkv_vector":
        return w.reshape(3, -1)[part]
    if kind == "conv":
        return np.transpose(w, (2, 3, 1, 0))
    if kind == "conv_linear":
        return w.reshape(w.shape[0], w.shape[1]).T
    if kind == "linear":
        return w.T
    return w


def _to_torch(kind: str, w: np.ndarray) -> np.ndarray:
    """One Flax leaf in torch's layout (a q, k or v part: its rows of the fused tensor)."""
    if kind == "qkv_linear":
        return w.T
    if kind == "qkv_vector":
        return w
    if kind == "conv":
        return np.transpose(w, (3, 2, 0, 1))
    if kind == "conv_linear":
        return w.T[:, :, None, None]
    if kind == "linear":
        return w.T
    return w


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


def load_jackpot(npz_path: str | os.PathLike):
    """Reads a jackpot npz -> (masks, params, batch_stats) flat `{path: array}` dicts
    (batch_stats empty when the file has none)."""
    jackpot = export.read_jackpot(npz_path)
    return jackpot["masks"], jackpot["params"], jackpot["batch_stats"]


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


# ---------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> str:
    """Command line: torch `.pth` -> checkpoint dir, or with --to-torch the other way.

    An error the user can fix (`JackpotError`) is printed as one `error: ...` message and
    exits with status 1."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--arch",
        metavar="NAME",
        help="model name (required unless --to-torch, where model.json gives it): "
        + models.valid_names(),
    )
    p.add_argument(
        "--input",
        required=True,
        help="torch .pth/.pt file (or, with --to-torch, a checkpoint directory, a "
        "jackpot.npz or a run's workdir holding one)",
    )
    p.add_argument(
        "--output",
        required=True,
        help="checkpoint directory (or, with --to-torch, the .pth to write)",
    )
    p.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="expected number of classes (default: read from the classifier)",
    )
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="ViTs: the image size to build the model for (default: the checkpoint's); the "
        "position embedding is resized as timm does it",
    )
    p.add_argument(
        "--to-torch",
        action="store_true",
        help="export a jackpot_jax checkpoint to a torch state_dict",
    )
    p.add_argument(
        "--jackpot",
        default=None,
        help="with --to-torch: npz with masks/<path> (and params/<path>, "
        "batch_stats/<path>) to apply to the checkpoint",
    )
    p.add_argument(
        "--include-scores",
        action="store_true",
        help="with --to-torch: write saved scores as official `<name>.mask` tensors",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing --output (refused otherwise)"
    )
    args = p.parse_args(argv)
    try:
        out = _run(p, args)
    except JackpotError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    print(f"wrote {out}")
    return out


def _run(p, args) -> str:
    if args.arch is not None:
        try:
            models.default_options(args.arch)
        except ValueError as e:
            raise InputError(f"--arch {args.arch}: {e}") from None
    if args.to_torch:
        if args.image_size is not None:
            p.error("--image-size applies when reading torch weights, not with --to-torch")
        if args.arch:
            if _is_jackpot_only(args.input):
                arch = export.load_jackpot(args.input)[0]["arch"]
            else:
                arch = checkpoint.load_model_info(args.input)["arch"]
            if arch != args.arch:
                p.error(f"--arch {args.arch} but {args.input} holds {arch}")
        return export_checkpoint(
            args.input,
            args.output,
            args.jackpot,
            include_scores=args.include_scores,
            overwrite=args.overwrite,
        )
    if not args.arch:
        p.error("--arch is required")
    if args.jackpot or args.include_scores:
        p.error("--jackpot/--include-scores only apply with --to-torch")
    return convert_checkpoint(
        args.arch,
        args.input,
        args.output,
        num_classes=args.num_classes,
        overwrite=args.overwrite,
        image_size=args.image_size,
    )


__all__ = [
    "convert_state_dict",
    "convert_checkpoint",
    "load_torch_state_dict",
    "infer_options",
    "export_to_torch_state_dict",
    "export_checkpoint",
    "load_jackpot",
    "torch_module_name",
    "vit_layout",
    "TORCHVISION_VITS",
    "UnsafeCheckpointError",
    "main",
]
