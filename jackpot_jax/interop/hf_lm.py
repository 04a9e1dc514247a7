"""Hugging Face causal-LM checkpoints in and out: config.json + safetensors <-> Flax variables.

The exchange format is a pair `(hf_config, state_dict)`: the config.json dict and a flat
`{HF parameter name: numpy array}` in torch layouts (Linear weights (out, in); GPT-2's Conv1D
weights (in, out)). `read_hf_dir` reads it from a directory, the GGUF reader
(`interop.gguf_file.read_gguf`) produces the same pair, `lm_from_hf` turns it into
`(arch, model_options, variables)` for `models.get_model`, and `lm_to_hf` / `write_hf_dir` go
back. Supported model_types: llama, qwen2, mistral (`models.llama.LlamaLM`) and gpt2
(`models.gpt2.GPT2LM`). No torch is imported here: safetensors are read and written with
`safetensors.numpy` (bfloat16 tensors, which numpy lacks, are widened to float32 on reading).

`convert_hf_lm` and `save_lm_checkpoint` write an ordinary checkpoint directory
(`pipeline.checkpoint.save_variables`, loaded by `load_model`) with the tokenizer files and the
source config (`hf_config.json`) beside it; `export_lm_to_hf` writes a checkpoint or a jackpot
back as a Hugging Face directory that `AutoModelForCausalLM.from_pretrained` loads.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from jackpot_jax import models, utils
from jackpot_jax.errors import ConfigError, InputError, MissingInputError, OutputExistsError
from jackpot_jax.pipeline import checkpoint, export

SUPPORTED = ("llama", "qwen2", "mistral", "gpt2")
LM_ARCHS = tuple(models.LM_NAMES)  # registry names of the LMs are their HF model_types
ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "mistral": "MistralForCausalLM",
    "gpt2": "GPT2LMHeadModel",
}
CONFIG_JSON = "config.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
SOURCE_CONFIG = "hf_config.json"  # the source's config.json, kept beside a converted checkpoint
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)
# Config entries carried from a source config into an export (they do not change the network).
CARRIED_CONFIG = ("bos_token_id", "eos_token_id", "pad_token_id")
# Buffers some checkpoints store that are not parameters (recomputed by every model).
_IGNORED_SUFFIXES = (".rotary_emb.inv_freq", ".attn.bias", ".attn.masked_bias")


# ------------------------------------------------------------------------------ reading


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    """Every tensor of one .safetensors file as numpy; BF16 ones widened to float32."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:  # numpy knows bfloat16 only once ml_dtypes (a jax dependency) registered it
        return {
            k: v.astype(np.float32) if v.dtype.name == "bfloat16" else v
            for k, v in load_file(path).items()
        }
    except TypeError:  # numpy without bfloat16: read the header and widen those tensors
        pass
    except (SafetensorError, OSError) as e:
        raise InputError(f"{path}: unreadable safetensors file ({e})") from e
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
        start = 8 + size
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            lo, hi = info["data_offsets"]
            f.seek(start + lo)
            raw = f.read(hi - lo)
            if info["dtype"] == "BF16":
                bits = np.frombuffer(raw, np.uint16).astype(np.uint32) << 16
                out[name] = bits.view(np.float32).reshape(info["shape"])
            else:
                from safetensors.numpy import _getdtype  # the library's own dtype names

                out[name] = np.frombuffer(raw, _getdtype(info["dtype"])).reshape(info["shape"])
    return out


def _model_type(hf_config: Mapping[str, Any], source: str = "config") -> str:
    model_type = hf_config.get("model_type")
    if model_type not in SUPPORTED:
        raise ConfigError(
            f"{source}: model_type {model_type!r} is not supported; supported model_types: "
            f"{', '.join(SUPPORTED)}"
        )
    return model_type


def read_hf_dir(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """`(hf_config, state_dict)` of a Hugging Face model directory: config.json and
    model.safetensors, or the shards a model.safetensors.index.json lists. A model_type other
    than llama, qwen2, mistral, gpt2 is a `ConfigError`; missing files `MissingInputError`."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise MissingInputError(f"{path}: not a directory (a Hugging Face model directory)")
    cfg_path = os.path.join(path, CONFIG_JSON)
    if not os.path.isfile(cfg_path):
        raise MissingInputError(f"{path}: no {CONFIG_JSON}; not a Hugging Face model directory")
    try:
        with open(cfg_path) as f:
            hf_config = json.load(f)
    except json.JSONDecodeError as e:
        raise InputError(f"{cfg_path}: not valid JSON ({e})") from e
    _model_type(hf_config, cfg_path)
    single, index = os.path.join(path, WEIGHTS), os.path.join(path, WEIGHTS_INDEX)
    if os.path.isfile(single):
        files = [single]
    elif os.path.isfile(index):
        with open(index) as f:
            weight_map = json.load(f).get("weight_map", {})
        files = [os.path.join(path, name) for name in sorted(set(weight_map.values()))]
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise MissingInputError(f"{index} lists shards that are not there: {missing}")
    else:
        raise MissingInputError(
            f"{path}: no {WEIGHTS} or {WEIGHTS_INDEX} (only safetensors weights are read; save "
            "the model with save_pretrained(dir, safe_serialization=True))"
        )
    state_dict: dict[str, np.ndarray] = {}
    for name in files:
        state_dict.update(_read_safetensors(name))
    return hf_config, state_dict


# ------------------------------------------------------------------------ HF -> Flax


def _rope_options(cfg: Mapping[str, Any]) -> tuple[float, dict | None]:
    """(rope_theta, rope_scaling) from either config form: transformers 5's `rope_parameters`
    or the older top-level `rope_theta` and `rope_scaling`."""
    params = cfg.get("rope_parameters")
    if isinstance(params, Mapping) and params:
        theta = params.get("rope_theta", cfg.get("rope_theta", 10000.0))
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    else:
        theta, scaling = cfg.get("rope_theta", 10000.0), cfg.get("rope_scaling")
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if kind == "default":
        return float(theta), None
    if kind != "llama3":
        raise ConfigError(
            f"rope scaling of rope_type {kind!r} is not supported; supported: default, llama3"
        )
    keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    missing = [k for k in keys if k not in scaling]
    if missing:
        raise ConfigError(f"llama3 rope scaling {dict(scaling)} lacks {missing}")
    return float(theta), {"rope_type": "llama3", **{k: scaling[k] for k in keys}}


def _llama_options(cfg: Mapping[str, Any], model_type: str) -> dict[str, Any]:
    if cfg.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"{model_type} hidden_act {cfg['hidden_act']!r} is not supported: silu")
    if model_type == "qwen2" and cfg.get("use_sliding_window"):
        raise ConfigError("qwen2 with use_sliding_window=true is not supported")
    theta, scaling = _rope_options(cfg)
    defaults = models.default_options(model_type)
    opts = {k: cfg.get(k, v) for k, v in defaults.items() if k in cfg}
    bias = bool(cfg.get("attention_bias", False))
    opts.update(
        num_key_value_heads=cfg.get("num_key_value_heads") or None,
        head_dim=cfg.get("head_dim") or None,
        rope_theta=theta,
        rope_scaling=scaling,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        qkv_bias=True if model_type == "qwen2" else bias if model_type == "llama" else False,
        o_bias=bias if model_type == "llama" else False,
        mlp_bias=bool(cfg.get("mlp_bias", False)) if model_type == "llama" else False,
        sliding_window=cfg.get("sliding_window") if model_type == "mistral" else None,
    )
    return opts


def _gpt2_options(cfg: Mapping[str, Any]) -> dict[str, Any]:
    refuse = {
        "scale_attn_by_inverse_layer_idx": True,
        "add_cross_attention": True,
        "scale_attn_weights": False,
    }
    for key, bad in refuse.items():
        if cfg.get(key, not bad) == bad:
            raise ConfigError(f"gpt2 with {key}={bad} is not supported")
    names = {
        "vocab_size": "vocab_size",
        "n_embd": "hidden_size",
        "n_layer": "num_hidden_layers",
        "n_head": "num_attention_heads",
        "n_inner": "intermediate_size",
        "n_positions": "max_position_embeddings",
        "layer_norm_epsilon": "layer_norm_epsilon",
        "activation_function": "activation_function",
        "tie_word_embeddings": "tie_word_embeddings",
    }
    return {ours: cfg[hf] for hf, ours in names.items() if hf in cfg}


class _Taker:
    """Pops HF tensors by name as float32, remembering the names that were not there."""

    def __init__(self, state_dict: Mapping[str, Any], prefix: str = ""):
        self.sd = {k: v for k, v in state_dict.items() if not k.endswith(_IGNORED_SUFFIXES)}
        self.prefix = prefix
        self.missing: list[str] = []

    def __call__(self, name: str, transpose: bool = False):
        key = self.prefix + name
        if key not in self.sd:
            self.missing.append(key)
            return None
        value = np.asarray(self.sd.pop(key), np.float32)
        return np.ascontiguousarray(value.T) if transpose else value

    def has(self, name: str) -> bool:
        return self.prefix + name in self.sd


def _dense(take: _Taker, name: str, bias: bool) -> dict[str, np.ndarray]:
    out = {"kernel": take(f"{name}.weight", transpose=True)}
    if bias:
        out["bias"] = take(f"{name}.bias")
    return out


def _llama_params(take: _Taker, o: Mapping[str, Any]) -> dict[str, Any]:
    params: dict[str, Any] = {"embed_tokens": {"embedding": take("model.embed_tokens.weight")}}
    for i in range(o["num_hidden_layers"]):
        pre = f"model.layers.{i}."
        attn = {
            n: _dense(take, f"{pre}self_attn.{n}", o["qkv_bias"])
            for n in ("q_proj", "k_proj", "v_proj")
        }
        attn["o_proj"] = _dense(take, f"{pre}self_attn.o_proj", o["o_bias"])
        mlp = {
            n: _dense(take, f"{pre}mlp.{n}", o["mlp_bias"])
            for n in ("gate_proj", "up_proj", "down_proj")
        }
        params[f"layers_{i}"] = {
            "input_layernorm": {"scale": take(f"{pre}input_layernorm.weight")},
            "self_attn": attn,
            "post_attention_layernorm": {"scale": take(f"{pre}post_attention_layernorm.weight")},
            "mlp": mlp,
        }
    params["norm"] = {"scale": take("model.norm.weight")}
    if o["tie_word_embeddings"]:
        take.sd.pop("lm_head.weight", None)  # some tied checkpoints store the copy too
    else:
        params["classifier"] = {"kernel": take("lm_head.weight", transpose=True)}
    return params


def _layer_norm(take: _Taker, name: str) -> dict[str, np.ndarray]:
    return {"scale": take(f"{name}.weight"), "bias": take(f"{name}.bias")}


def _gpt2_params(take: _Taker, o: Mapping[str, Any]) -> dict[str, Any]:
    # Conv1D weights are already (in, out), Flax's layout.
    conv = lambda name: {"kernel": take(f"{name}.weight"), "bias": take(f"{name}.bias")}
    params: dict[str, Any] = {
        "wte": {"embedding": take("wte.weight")},
        "wpe": {"embedding": take("wpe.weight")},
    }
    for i in range(o["num_hidden_layers"]):
        pre = f"h.{i}."
        fused = conv(f"{pre}attn.c_attn")
        attn = {}
        if fused["kernel"] is not None and fused["bias"] is not None:
            kernels = np.split(fused["kernel"], 3, axis=1)
            biases = np.split(fused["bias"], 3)
            attn = {
                n: {"kernel": np.ascontiguousarray(k), "bias": b}
                for n, k, b in zip(("q_proj", "k_proj", "v_proj"), kernels, biases, strict=True)
            }
        attn["c_proj"] = conv(f"{pre}attn.c_proj")
        params[f"h_{i}"] = {
            "ln_1": _layer_norm(take, f"{pre}ln_1"),
            "attn": attn,
            "ln_2": _layer_norm(take, f"{pre}ln_2"),
            "mlp": {"c_fc": conv(f"{pre}mlp.c_fc"), "c_proj": conv(f"{pre}mlp.c_proj")},
        }
    params["ln_f"] = _layer_norm(take, "ln_f")
    if o["tie_word_embeddings"]:
        take.sd.pop("lm_head.weight", None)
    else:
        take.prefix = ""  # the head sits outside `transformer.`
        params["classifier"] = {"kernel": take("lm_head.weight", transpose=True)}
    return params


def _abstract_params(arch: str, options: Mapping[str, Any]) -> dict[str, tuple]:
    module = models.get_model(arch, **options)
    abstract = jax.eval_shape(lambda: models.init_variables(module, jax.random.key(0), (1, 2)))
    return {p: tuple(v.shape) for p, v in utils.flatten_dict(abstract["params"]).items()}


def lm_from_hf(
    hf_config: Mapping[str, Any], state_dict: Mapping[str, Any]
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """`(arch, model_options, variables)` of an HF causal LM given as its config dict and its
    HF-named state dict (torch layouts, any float dtype): `models.get_model(arch,
    **model_options).apply(variables, tokens)` computes the HF model's logits. Linear weights
    are transposed to Flax's (in, out); GPT-2's fused `c_attn` is split into q, k, v. A
    missing, unexpected or mis-shaped tensor is an `InputError` naming it; an unsupported
    model_type or option a `ConfigError`."""
    model_type = _model_type(hf_config)
    if model_type == "gpt2":
        options = {**models.default_options("gpt2"), **_gpt2_options(hf_config)}
        prefix = "transformer." if any(k.startswith("transformer.") for k in state_dict) else ""
        take = _Taker(state_dict, prefix)
        params = _gpt2_params(take, options)
    else:
        options = {**models.default_options(model_type), **_llama_options(hf_config, model_type)}
        take = _Taker(state_dict)
        params = _llama_params(take, options)
    problems = [f"{k}: missing" for k in take.missing]
    problems += [f"{k}: not a parameter of the {model_type} model" for k in sorted(take.sd)]
    if not problems:
        want = _abstract_params(model_type, options)
        got = {p: tuple(np.shape(v)) for p, v in utils.flatten_dict(params).items()}
        problems = [
            f"{p}: shape {got.get(p)}, expected {s}" for p, s in want.items() if got.get(p) != s
        ]
    if problems:
        raise InputError(
            f"the {model_type} state dict does not fit its config: "
            + "; ".join(problems[:8])
            + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        )
    return model_type, options, {"params": params}


# ------------------------------------------------------------------------ Flax -> HF


def _flat_masks(masks: Any, kernels: Mapping[str, tuple]) -> dict[str, np.ndarray]:
    """Masks given flat (`{path: array}`, 'params/' optional) or as a tree mirroring the
    params (None where unpruned) -> flat dict, checked against the model's kernels."""
    if masks is None:
        return {}
    flat = dict(masks) if any("/" in str(k) for k in masks) else utils.flatten_dict(masks)
    out, errors = {}, []
    for path, value in flat.items():
        if value is None:
            continue
        path = path.removeprefix("params/")
        value = np.asarray(value)
        if path not in kernels:
            errors.append(f"{path}: not a Linear kernel of the model")
        elif value.shape != kernels[path]:
            errors.append(f"{path}: shape {value.shape}, the kernel's is {kernels[path]}")
        elif np.any((value != 0) & (value != 1)):
            errors.append(f"{path}: holds values other than 0 and 1")
        else:
            out[path] = value
    if errors:
        raise InputError("masks do not fit the model: " + "; ".join(errors))
    return out


def _llama_config(model_type: str, o: Mapping[str, Any]) -> dict[str, Any]:
    qkv, ob, mlp = bool(o["qkv_bias"]), bool(o["o_bias"]), bool(o["mlp_bias"])
    allowed = {
        "llama": qkv == ob,
        "qwen2": qkv and not ob and not mlp,
        "mistral": not (qkv or ob or mlp),
    }
    if not allowed[model_type]:
        raise ConfigError(
            f"a {model_type} checkpoint cannot hold qkv_bias={qkv}, o_bias={ob}, "
            f"mlp_bias={mlp} (llama: q, k, v, o biased together; qwen2: q, k, v only; "
            "mistral: none)"
        )
    heads = int(o["num_attention_heads"])
    cfg = {
        "vocab_size": o["vocab_size"],
        "hidden_size": o["hidden_size"],
        "intermediate_size": o["intermediate_size"],
        "num_hidden_layers": o["num_hidden_layers"],
        "num_attention_heads": heads,
        "num_key_value_heads": o["num_key_value_heads"] or heads,
        "head_dim": o["head_dim"] or int(o["hidden_size"]) // heads,
        "hidden_act": "silu",
        "max_position_embeddings": o["max_position_embeddings"],
        "rms_norm_eps": o["rms_norm_eps"],
        "rope_theta": o["rope_theta"],
        "rope_scaling": dict(o["rope_scaling"]) if o["rope_scaling"] else None,
        "rope_parameters": {
            "rope_type": "default",
            **(dict(o["rope_scaling"]) if o["rope_scaling"] else {}),
            "rope_theta": o["rope_theta"],
        },
        "tie_word_embeddings": bool(o["tie_word_embeddings"]),
    }
    if model_type == "llama":
        cfg.update(attention_bias=qkv, mlp_bias=mlp)
    elif model_type == "qwen2":
        cfg.update(use_sliding_window=False, sliding_window=None)
    else:
        cfg.update(sliding_window=o["sliding_window"])
    return cfg


def _llama_state_dict(params: Mapping[str, Any], o: Mapping[str, Any]) -> dict[str, np.ndarray]:
    sd = {"model.embed_tokens.weight": params["embed_tokens"]["embedding"]}
    for i in range(o["num_hidden_layers"]):
        layer, pre = params[f"layers_{i}"], f"model.layers.{i}."
        sd[f"{pre}input_layernorm.weight"] = layer["input_layernorm"]["scale"]
        sd[f"{pre}post_attention_layernorm.weight"] = layer["post_attention_layernorm"]["scale"]
        for group, names in (
            ("self_attn", ("q_proj", "k_proj", "v_proj", "o_proj")),
            ("mlp", ("gate_proj", "up_proj", "down_proj")),
        ):
            for n in names:
                sd[f"{pre}{group}.{n}.weight"] = layer[group][n]["kernel"].T
                if "bias" in layer[group][n]:
                    sd[f"{pre}{group}.{n}.bias"] = layer[group][n]["bias"]
    sd["model.norm.weight"] = params["norm"]["scale"]
    if not o["tie_word_embeddings"]:
        sd["lm_head.weight"] = params["classifier"]["kernel"].T
    return sd


def _gpt2_state_dict(params: Mapping[str, Any], o: Mapping[str, Any]) -> dict[str, np.ndarray]:
    t = "transformer."
    sd = {
        f"{t}wte.weight": params["wte"]["embedding"],
        f"{t}wpe.weight": params["wpe"]["embedding"],
    }

    def put(name: str, leaf: Mapping[str, Any]):
        for ours, theirs in (("kernel", "weight"), ("scale", "weight"), ("bias", "bias")):
            if ours in leaf:
                sd[f"{t}{name}.{theirs}"] = leaf[ours]

    for i in range(o["num_hidden_layers"]):
        block, pre = params[f"h_{i}"], f"h.{i}."
        attn = block["attn"]
        parts = [attn[n] for n in ("q_proj", "k_proj", "v_proj")]
        sd[f"{t}{pre}attn.c_attn.weight"] = np.concatenate([p["kernel"] for p in parts], 1)
        sd[f"{t}{pre}attn.c_attn.bias"] = np.concatenate([p["bias"] for p in parts])
        put(f"{pre}attn.c_proj", attn["c_proj"])
        for n in ("ln_1", "ln_2"):
            put(f"{pre}{n}", block[n])
        put(f"{pre}mlp.c_fc", block["mlp"]["c_fc"])
        put(f"{pre}mlp.c_proj", block["mlp"]["c_proj"])
    put("ln_f", params["ln_f"])
    if not o["tie_word_embeddings"]:
        sd["lm_head.weight"] = params["classifier"]["kernel"].T
    return sd


def lm_to_hf(
    arch: str,
    model_options: Mapping[str, Any],
    variables: Mapping[str, Any],
    masks: Any = None,
    *,
    extra_config: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """`(hf_config, state_dict)` of one of our LMs, in the layout transformers'
    `{Llama,Qwen2,Mistral}ForCausalLM` / `GPT2LMHeadModel` load (float32, contiguous).

    `masks` (flat `{param path: 0/1}` or a tree mirroring the params, Flax (in, out) layout)
    are applied as `w * m` before the transpose, so a pattern along each kernel's input axis
    is along each row of the torch (out, in) Linear weight (GPT-2's Conv1D weights stay
    (in, out): along their first axis). `extra_config` entries (e.g. bos/eos token ids) are
    written too, under the ones that describe the network."""
    if arch not in LM_ARCHS:
        raise ConfigError(f"{arch!r} is not a language model; supported: {', '.join(LM_ARCHS)}")
    options = {**models.default_options(arch), **dict(model_options)}
    shapes = _abstract_params(arch, options)
    params = utils.flatten_dict(jax.tree.map(np.asarray, dict(variables["params"])))
    wrong = sorted(set(shapes) ^ set(params))
    wrong += [p for p in shapes if p in params and params[p].shape != shapes[p]]
    if wrong:
        raise InputError(f"variables do not fit {arch} with {options}: {wrong[:8]}")
    kernels = {p: s for p, s in shapes.items() if p.endswith("/kernel")}
    for path, m in _flat_masks(masks, kernels).items():
        params[path] = params[path] * m.astype(params[path].dtype)
    nested = utils.nest_dict({p: np.asarray(v, np.float32) for p, v in params.items()})
    if arch == "gpt2":
        cfg = {
            "vocab_size": options["vocab_size"],
            "n_embd": options["hidden_size"],
            "n_layer": options["num_hidden_layers"],
            "n_head": options["num_attention_heads"],
            "n_inner": options["intermediate_size"],
            "n_positions": options["max_position_embeddings"],
            "layer_norm_epsilon": options["layer_norm_epsilon"],
            "activation_function": options["activation_function"],
            "tie_word_embeddings": bool(options["tie_word_embeddings"]),
        }
        sd = _gpt2_state_dict(nested, options)
    else:
        cfg = _llama_config(arch, options)
        sd = _llama_state_dict(nested, options)
    hf_config = {
        **dict(extra_config or {}),
        "architectures": [ARCHITECTURES[arch]],
        "model_type": arch,
        **cfg,
        "torch_dtype": "float32",
        "dtype": "float32",
    }
    return hf_config, {k: np.ascontiguousarray(v, np.float32) for k, v in sd.items()}


def _refuse_existing(path: str, overwrite: bool) -> None:
    if overwrite or not os.path.exists(path):
        return
    if os.path.isdir(path) and not os.listdir(path):
        return
    raise OutputExistsError(
        f"{path} exists; refusing to overwrite it (choose another --output, or pass --overwrite)"
    )


def copy_tokenizer(tokenizer: Any, directory: str | os.PathLike) -> list[str]:
    """Puts a tokenizer into `directory`: from a directory, its `TOKENIZER_FILES` that exist;
    from a file, that file (a `tokenizer.json` under its own name); from an object with
    `save(path)` (a `tokenizers.Tokenizer`), `tokenizer.json`. Returns the names written."""
    directory = os.fspath(directory)
    if tokenizer is None:
        return []
    if hasattr(tokenizer, "save") and not isinstance(tokenizer, (str, os.PathLike)):
        tokenizer.save(os.path.join(directory, "tokenizer.json"))
        return ["tokenizer.json"]
    source = os.fspath(tokenizer)
    if os.path.isdir(source):
        names = [n for n in TOKENIZER_FILES if os.path.isfile(os.path.join(source, n))]
        for n in names:
            shutil.copyfile(os.path.join(source, n), os.path.join(directory, n))
        return names
    if os.path.isfile(source):
        shutil.copyfile(source, os.path.join(directory, os.path.basename(source)))
        return [os.path.basename(source)]
    raise MissingInputError(f"tokenizer {source}: no such file or directory")


def write_hf_dir(
    directory: str | os.PathLike,
    hf_config: Mapping[str, Any],
    state_dict: Mapping[str, np.ndarray],
    tokenizer_dir_or_file: Any = None,
    *,
    overwrite: bool = False,
) -> str:
    """Writes a Hugging Face model directory: config.json, model.safetensors (float32, with
    the `format: pt` metadata transformers expects) and the tokenizer files if given (see
    `copy_tokenizer`). An existing non-empty `directory` is refused unless `overwrite`.
    Returns the directory."""
    from safetensors.numpy import save_file

    directory = os.fspath(directory)
    _refuse_existing(directory, overwrite)
    os.makedirs(directory, exist_ok=True)
    tensors = {k: np.ascontiguousarray(v) for k, v in state_dict.items()}
    save_file(tensors, os.path.join(directory, WEIGHTS), metadata={"format": "pt"})
    with open(os.path.join(directory, CONFIG_JSON), "w") as f:
        json.dump(dict(hf_config), f, indent=2, sort_keys=True)
    copy_tokenizer(tokenizer_dir_or_file, directory)
    return directory


# ------------------------------------------------------- checkpoints (the converter)


def save_lm_checkpoint(
    output_dir: str | os.PathLike,
    hf_config: Mapping[str, Any],
    state_dict: Mapping[str, Any],
    tokenizer: Any = None,
    *,
    overwrite: bool = False,
) -> str:
    """Converts `(hf_config, state_dict)` (from `read_hf_dir` or the GGUF reader) and writes
    an ordinary checkpoint directory (`checkpoint.save_variables`, so `load_model` rebuilds
    it) with the tokenizer (see `copy_tokenizer`) and the source config as `hf_config.json`
    beside it. Returns the absolute path."""
    arch, options, variables = lm_from_hf(hf_config, state_dict)
    path = checkpoint.save_variables(
        output_dir, variables, arch=arch, model_options=options, overwrite=overwrite
    )
    if utils.is_primary():
        with open(os.path.join(path, SOURCE_CONFIG), "w") as f:
            json.dump(dict(hf_config), f, indent=2, sort_keys=True)
        copy_tokenizer(tokenizer, path)
    return path


def convert_hf_lm(
    input_dir: str | os.PathLike, output_dir: str | os.PathLike, *, overwrite: bool = False
) -> str:
    """A Hugging Face model directory -> a checkpoint directory (with its tokenizer files)."""
    hf_config, state_dict = read_hf_dir(input_dir)
    return save_lm_checkpoint(output_dir, hf_config, state_dict, input_dir, overwrite=overwrite)


def export_lm_to_hf(
    input_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    jackpot: str | os.PathLike | None = None,
    *,
    overwrite: bool = False,
) -> str:
    """Writes an LM checkpoint directory, or a jackpot (a jackpot.npz or a run's workdir
    holding one), as a Hugging Face directory (`write_hf_dir`). With `jackpot` beside a
    checkpoint, its params replace the checkpoint's and its masks are applied. The tokenizer
    and the source config's token ids come from the checkpoint directory (for a jackpot
    alone: from its `pretrained_checkpoint` when that directory holds them)."""
    input_path = os.fspath(input_path)
    output_dir = os.fspath(output_dir)
    _refuse_existing(output_dir, overwrite)
    masks = None
    if os.path.isdir(os.path.join(input_path, checkpoint.VARIABLES_DIR)):
        info = checkpoint.load_model_info(input_path)
        arch, options = info["arch"], info["options"]
        variables = checkpoint.load_variables(input_path)
        source = input_path
    else:
        if jackpot is not None:
            raise InputError(
                f"{input_path} is not a checkpoint directory; --jackpot applies to one"
            )
        jackpot, source = input_path, None
        arch, options = None, None
    if jackpot is not None:
        meta, masks, params, _ = export.load_jackpot(os.fspath(jackpot))
        if arch is not None and meta["arch"] != arch:
            raise InputError(f"{jackpot} is a {meta['arch']} jackpot but {input_path} holds {arch}")
        if arch is None:
            arch, options, variables = meta["arch"], meta["options"], {"params": params}
            source = meta.get("pretrained_checkpoint")
        else:
            flat = utils.flatten_dict(variables["params"])
            flat.update(utils.flatten_dict(params))
            variables = {"params": utils.nest_dict(flat)}
    if arch not in LM_ARCHS:
        raise InputError(
            f"{input_path} holds {arch!r}, not a language model ({', '.join(LM_ARCHS)})"
        )
    extra, tokenizer = {}, None
    if isinstance(source, str) and os.path.isdir(source):
        tokenizer = source
        src_cfg = os.path.join(source, SOURCE_CONFIG)
        if os.path.isfile(src_cfg):
            with open(src_cfg) as f:
                extra = {k: v for k, v in json.load(f).items() if k in CARRIED_CONFIG}
    hf_config, state_dict = lm_to_hf(arch, options, variables, masks, extra_config=extra)
    return write_hf_dir(output_dir, hf_config, state_dict, tokenizer, overwrite=overwrite)


__all__ = [
    "SUPPORTED",
    "LM_ARCHS",
    "read_hf_dir",
    "lm_from_hf",
    "lm_to_hf",
    "write_hf_dir",
    "copy_tokenizer",
    "save_lm_checkpoint",
    "convert_hf_lm",
    "export_lm_to_hf",
]
