"""Model registry. Models are plain Flax Linen modules that know nothing of pruning.

Conventions every model follows (other code relies on them):
  * `module.apply(variables, x, train=False)` on NHWC float32 input returns logits (N, C);
  * variables are `{'params', 'batch_stats'}` (no 'batch_stats' without BatchNorm);
  * the last linear layer is a submodule named `classifier` (Dense with bias);
    every other weight is named `kernel` (ViTs also have `cls_token` and `pos_embedding`);
  * stage outputs are sown into the 'intermediates' collection (see `block_outputs`).

ViTs come under three kinds of names (all `models.vit.ViT`): `vit_tiny` ... `vit_huge` and
the small `vit_fmnist` (options `patch_size`, `image_size`); torchvision's `vit_b_16`,
`vit_b_32`, `vit_l_16`, `vit_l_32`, `vit_h_14`; and timm's standard class-token ViTs as
`timm:<name>` (`timm:vit_small_patch16_224`, `timm:deit_tiny_patch16_224`; see
`TIMM_VIT_PATTERN`). The name also says which PyTorch layout the converter writes.

Causal language models (`llama`, `qwen2`, `mistral`: `models.llama.LlamaLM`; `gpt2`:
`models.gpt2.GPT2LM`) take int token ids (batch, time) and return float32 logits (batch, time,
vocab); their options are HF config names (`vocab_size` plays the part of `num_classes`, which
they do not take) and their untied head is the `classifier`.
"""

import functools
import re
from collections.abc import Callable, Mapping
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from jackpot_jax.errors import ConfigError
from jackpot_jax.models.cifar_resnet import CifarResNet
from jackpot_jax.models.gpt2 import GPT2LM
from jackpot_jax.models.lenet import LeNet5, LeNet300100
from jackpot_jax.models.llama import LlamaLM
from jackpot_jax.models.resnet import BasicBlock, Bottleneck, ResNet
from jackpot_jax.models.vgg import CFGS, VGG, VGGCifar
from jackpot_jax.models.vit import SIZES as VIT_SIZES
from jackpot_jax.models.vit import ViT
from jackpot_jax.models.vit import vit as _vit_of_size

# name -> (constructor, default options, default input shape HWC)
_CIFAR = (32, 32, 3)
_IMAGENET = (224, 224, 3)
_MNIST = (28, 28, 1)
_TOKENS = (None,)  # causal LMs: (time,) int32 token ids; `input_shape` gives the context


def _llama_options(**overrides) -> dict[str, Any]:
    # HF's LlamaConfig defaults (Llama-2-7B), under LlamaLM's field names.
    base = {
        "vocab_size": 32000,
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": None,
        "head_dim": None,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "qkv_bias": False,
        "o_bias": False,
        "mlp_bias": False,
        "max_position_embeddings": 2048,
        "sliding_window": None,
        "remat": False,
    }
    return {**base, **overrides}


_REGISTRY: dict[str, tuple[Callable[..., nn.Module], dict[str, Any], tuple[int, int, int]]] = {
    "resnet20": (
        functools.partial(CifarResNet, num_blocks=3),
        {"num_classes": 10, "width": 1},
        _CIFAR,
    ),
    "resnet32": (
        functools.partial(CifarResNet, num_blocks=5),
        {"num_classes": 10, "width": 2},
        _CIFAR,
    ),
    "resnet56": (
        functools.partial(CifarResNet, num_blocks=9),
        {"num_classes": 10, "width": 1},
        _CIFAR,
    ),
    "vgg19_cifar": (VGGCifar, {"num_classes": 10}, _CIFAR),
    **{
        f"{name}_bn": (
            functools.partial(VGG, cfg=CFGS[name]),
            {"num_classes": 1000, "dropout_rate": 0.5},
            _IMAGENET,
        )
        for name in ("vgg11", "vgg13", "vgg16", "vgg19")
    },
    "resnet18": (
        functools.partial(ResNet, block=BasicBlock, layers=(2, 2, 2, 2)),
        {"num_classes": 1000},
        _IMAGENET,
    ),
    "resnet34": (
        functools.partial(ResNet, block=BasicBlock, layers=(3, 4, 6, 3)),
        {"num_classes": 1000},
        _IMAGENET,
    ),
    "resnet50": (
        functools.partial(ResNet, block=Bottleneck, layers=(3, 4, 6, 3)),
        {"num_classes": 1000},
        _IMAGENET,
    ),
    "resnet101": (
        functools.partial(ResNet, block=Bottleneck, layers=(3, 4, 23, 3)),
        {"num_classes": 1000},
        _IMAGENET,
    ),
    "resnet152": (
        functools.partial(ResNet, block=Bottleneck, layers=(3, 8, 36, 3)),
        {"num_classes": 1000},
        _IMAGENET,
    ),
    "wide_resnet50_2": (
        functools.partial(ResNet, block=Bottleneck, layers=(3, 4, 6, 3), base_width=128),
        {"num_classes": 1000},
        _IMAGENET,
    ),
    "lenet300_100": (LeNet300100, {"num_classes": 10}, _MNIST),
    "lenet5": (LeNet5, {"num_classes": 10}, _MNIST),
    **{
        f"vit_{size}": (
            functools.partial(_vit_of_size, size),
            {
                "num_classes": 1000,
                "patch_size": 14 if size == "huge" else 16,
                "image_size": 224,
                "dropout_rate": 0.0,
            },
            _IMAGENET,
        )
        for size in VIT_SIZES
    },
    # torchvision's names: the patch size is part of the architecture.
    **{
        f"vit_{size[0]}_{patch}": (
            functools.partial(_vit_of_size, size, patch_size=patch),
            {"num_classes": 1000, "image_size": 224, "dropout_rate": 0.0},
            _IMAGENET,
        )
        for size, patch in (("base", 16), ("base", 32), ("large", 16), ("large", 32), ("huge", 14))
    },
    # Pretrains on Fashion-MNIST on two CPU cores in minutes: 7x7 patches of 4x4 pixels.
    "vit_fmnist": (
        functools.partial(ViT, width=64, depth=4, num_heads=4, mlp_dim=256),
        {"num_classes": 10, "patch_size": 4, "image_size": 28, "dropout_rate": 0.0},
        _MNIST,
    ),
    # Causal LMs (Hugging Face model_types; defaults are HF's config defaults).
    "llama": (LlamaLM, _llama_options(), _TOKENS),
    "qwen2": (
        LlamaLM,
        _llama_options(
            vocab_size=151936,
            intermediate_size=22016,
            qkv_bias=True,
            max_position_embeddings=32768,
        ),
        _TOKENS,
    ),
    "mistral": (
        LlamaLM,
        _llama_options(
            intermediate_size=14336,
            num_key_value_heads=8,
            head_dim=128,
            max_position_embeddings=131072,
            sliding_window=4096,
        ),
        _TOKENS,
    ),
    "gpt2": (
        GPT2LM,
        {
            "vocab_size": 50257,
            "hidden_size": 768,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "intermediate_size": None,
            "max_position_embeddings": 1024,
            "layer_norm_epsilon": 1e-5,
            "activation_function": "gelu_new",
            "tie_word_embeddings": True,
            "remat": False,
        },
        _TOKENS,
    ),
}

# Causal LMs take token ids, not images: listed apart so that code looping over the image
# classifiers (MODEL_NAMES) keeps their conventions; get_model takes both.
LM_NAMES = ["llama", "qwen2", "mistral", "gpt2"]
MODEL_NAMES = [name for name in _REGISTRY if name not in LM_NAMES]

# timm's standard class-token ViTs (no distillation token, no register tokens, token pooling),
# with an optional pretrained tag after a dot: `timm:vit_base_patch16_224.augreg_in21k`.
TIMM_VIT_PATTERN = re.compile(
    r"timm:(?:vit|deit)_(?P<size>tiny|small|base|large|huge)_patch(?P<patch>\d+)_(?P<image>\d+)"
    r"(?:\.[A-Za-z0-9_]+)?"
)
TIMM_VIT_FORM = "timm:<vit|deit>_<tiny|small|base|large|huge>_patch<P>_<image size>"


def valid_names() -> str:
    """The model names `get_model` takes, for messages."""
    return (
        f"{', '.join(MODEL_NAMES)}, {TIMM_VIT_FORM} (e.g. timm:vit_small_patch16_224), or a "
        f"language model: {', '.join(LM_NAMES)}"
    )


def _entry(name: str):
    if name in _REGISTRY:
        return _REGISTRY[name]
    match = TIMM_VIT_PATTERN.fullmatch(name) if isinstance(name, str) else None
    if match:
        image = int(match["image"])
        return (
            functools.partial(_vit_of_size, match["size"], patch_size=int(match["patch"])),
            {"num_classes": 1000, "image_size": image, "dropout_rate": 0.0},
            (image, image, 3),
        )
    raise ConfigError(f"unknown model {name!r}; valid names: {valid_names()}")


def default_options(name: str) -> dict[str, Any]:
    """The options `get_model(name)` uses when none are given (num_classes included)."""
    return dict(_entry(name)[1])


def input_shape(name: str, options: Mapping[str, Any] | None = None) -> tuple[int, ...]:
    """The (H, W, C) input shape the model is meant for (CIFAR, ImageNet or MNIST); for a ViT
    built with `options` holding `image_size`, that size; for a causal LM (`llama`, `qwen2`,
    `mistral`, `gpt2`), `(max_position_embeddings,)`: token ids over its whole context (any
    shorter length works too)."""
    if _entry(name)[2] == _TOKENS:
        return (int({**_entry(name)[1], **(options or {})}["max_position_embeddings"]),)
    h, w, c = _entry(name)[2]
    size = (options or {}).get("image_size")
    if size is not None and "image_size" in _entry(name)[1]:
        h = w = int(size)
    return (h, w, c)


def get_model(name: str, num_classes: int | None = None, **options) -> nn.Module:
    """Returns the Flax module `name` (one of MODEL_NAMES or LM_NAMES, or a `timm:` ViT name).

    `num_classes` defaults to 10 for CIFAR/MNIST models and 1000 for ImageNet ones;
    `options` are model-specific (`width` for CIFAR ResNets, `dropout_rate` for VGG-bn,
    `image_size` and, for `vit_tiny` ... `vit_huge` and `vit_fmnist`, `patch_size` for ViTs).
    """
    ctor, defaults, _ = _entry(name)
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ConfigError(
            f"model {name!r} does not take options {unknown}; valid options: {sorted(defaults)}"
        )
    kwargs = {**defaults, **options}
    if num_classes is not None:
        kwargs["num_classes"] = int(num_classes)
    return ctor(**kwargs)


def block_outputs(
    module: nn.Module, variables: Mapping[str, Any], x: jnp.ndarray, train: bool = False
) -> dict[str, jnp.ndarray]:
    """Runs the model and returns its sown stage outputs by name ('stem', 'layer1', ...).

    ResNets sow `stem` and `layer{k}`; VGGs sow `pool{k}` after each max-pool; LeNet-5
    sows `features`; ViTs sow `embed` and `block{i}` (tokens, (N, 1 + patches, D)). In train mode the updated batch stats are discarded.
    """
    chex.assert_rank(x, 4)
    variables = {k: v for k, v in variables.items() if k != "intermediates"}
    mutable = ["intermediates"] + (["batch_stats"] if train and "batch_stats" in variables else [])
    _, state = module.apply(variables, x, train=train, mutable=mutable)
    return {k: v[0] for k, v in state.get("intermediates", {}).items()}


def init_variables(module: nn.Module, rng: jax.Array, shape: tuple[int, ...]) -> dict[str, Any]:
    """`module.init` on zeros of `shape` (NHWC; (batch, time) int32 token ids for the models
    whose class says `takes_tokens`), returning the variables without intermediates."""
    dtype = jnp.int32 if getattr(module, "takes_tokens", False) else jnp.float32
    variables = module.init(rng, jnp.zeros(shape, dtype), train=False)
    return {k: v for k, v in variables.items() if k != "intermediates"}


__all__ = [
    "MODEL_NAMES",
    "LM_NAMES",
    "TIMM_VIT_PATTERN",
    "valid_names",
    "get_model",
    "default_options",
    "input_shape",
    "block_outputs",
    "init_variables",
]
