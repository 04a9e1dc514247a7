"""Parameter names and tensor layouts, torch <-> Flax: the CNN layouts (torchvision ResNets and
VGG-bn, the official CIFAR layouts, LeNets) and the ViT layouts (torchvision's and timm's,
with the fused q/k/v projection split and joined). See `jackpot_jax.interop.torch_convert`."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

import flax
import numpy as np

from jackpot_jax import models
from jackpot_jax.errors import InputError
from jackpot_jax.models.vit import ViT, resize_pos_embedding

# Layouts whose classifier is stored as a 1x1 conv `(classes, in, 1, 1)` with bias.
CONV_CLASSIFIER_ARCHS = ("resnet20", "resnet32", "resnet56", "vgg19_cifar")
CIFAR_RESNETS = ("resnet20", "resnet32", "resnet56")
_VGG_BN_FC = {"fc1": "classifier.0", "fc2": "classifier.3", "classifier": "classifier.6"}


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


def kernel_targets(arch: str, variables: Mapping[str, Any]) -> dict[str, tuple[str, int | None]]:
    """{Flax kernel path: (torch module name, part)} of every kernel: `part` is None, or for a
    ViT's q, k, v the block (0, 1, 2) of the fused `(3D, D)` torch weight they share."""
    return {
        e.flax_path: (e.torch_key[: -len(".weight")], e.part)
        for e in _entries(arch, variables)
        if e.collection == "params" and e.path[-1] == "kernel"
    }


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
