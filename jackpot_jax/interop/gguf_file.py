"""GGUF checkpoints (llama.cpp's file format) read as a Hugging Face Llama.

`read_gguf(path)` returns what `hf_lm.read_hf_dir` returns for a Hugging Face directory, a
config dict as transformers' `LlamaConfig` holds it and a float32 state dict under Hugging Face
names in torch layouts, plus the `tokenizers.Tokenizer` the file's metadata describes; so a GGUF
converts through `hf_lm.lm_from_hf` like any checkpoint. `save_tokenizer` writes that tokenizer
as a folder `transformers.AutoTokenizer` loads.

The facts this relies on:

- GGUF lists a tensor's shape in ggml order (fastest axis first), the reverse of numpy's, so a
  torch Linear weight (out, in) is stored as [in, out] and reads back as rows of length `in`.
- llama.cpp's HF-to-GGUF converter reorders the rows of q_proj and k_proj within each head (see
  `unpermute_rope_rows`); every other tensor keeps its layout.
- Quantised tensors are dequantised with `gguf.quants.dequantize` (llama.cpp's own numpy code).
- The tokenizer of a ``tokenizer.ggml.model = gpt2`` file is byte-level BPE: `tokens` (already
  spelled in GPT-2's byte alphabet), `merges` ('a b', best first), `token_type` (3 = control,
  4 = user-defined), the special ids and ``add_bos_token``. It is built the way transformers'
  GGUF tokenizer converter builds it, so both give the same ids.
"""

import functools
import json
import os
from typing import Any

import numpy as np

from jackpot_jax.errors import ConfigError, InputError, MissingInputError

SUPPORTED_ARCHITECTURES = ("llama",)

# GGUF tensor name -> Hugging Face name, per block and outside the blocks.
_BLOCK_TENSORS = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_TOP_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}

# The pre-tokenizer split of Llama 3 (tiktoken's cl100k-style pattern, digits in runs of 1-3).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# `tokenizer.ggml.pre` -> the split regex before the byte-level mapping; None = GPT-2's own split.
# 'smollm': transformers' GGUF converter has no entry for it and so uses GPT-2's split, which is
# what the ids here must match. llama.cpp (and SmolLM2's own tokenizer.json) also cut digits one
# by one first; SmolLM2's vocabulary has no token of two digits or of a space and a digit, so the
# two differ only on a run of 2+ spaces before a digit ('  1': 'Ġ','Ġ','1' here, 'ĠĠ','1' there).
_PRE_TOKENIZER_SPLITS = {
    "default": None,
    "gpt2": None,
    "smollm": None,
    "llama-bpe": _LLAMA3_SPLIT,
    "llama3": _LLAMA3_SPLIT,
    "llama-v3": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT,
    "falcon3": _LLAMA3_SPLIT,
}
_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp's token types


def read_gguf(path: str, *, tokenizer_file: str | None = None) -> tuple[dict, dict, Any]:
    """The Hugging Face view of a llama GGUF: ``(hf_config, state_dict, tokenizer)``.

    - `hf_config`: the dict transformers' `LlamaConfig` holds (model_type 'llama', sizes, head
      counts, rope_theta, rms_norm_eps, max_position_embeddings, tie_word_embeddings (True when
      the file has no ``output.weight``), bos/eos/pad ids, rope_scaling when the metadata has one).
    - `state_dict`: every tensor dequantised to float32 numpy under its Hugging Face name, torch
      layout (Linear (out, in)), q and k rows back in Hugging Face's RoPE order; ``lm_head.weight``
      only when the head is untied.
    - `tokenizer`: the file's byte-level BPE tokenizer (`tokenizers.Tokenizer`), or the one in
      `tokenizer_file` (a ``tokenizer.json``) when given, for a file without tokenizer metadata.

    Raises `MissingInputError` (no file, no tokenizer), `ConfigError` (an architecture other than
    llama) and `InputError` (not a GGUF, a tensor type the `gguf` package cannot dequantise,
    missing or unexpected metadata or tensors).
    """
    reader = _open(path)
    metadata = {
        name: field.contents() for name, field in reader.fields.items() if name[:5] != "GGUF."
    }
    architecture = metadata.get("general.architecture")
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise ConfigError(
            f"{path}: GGUF architecture {architecture!r} (general.architecture) is not supported; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    # The tokenizer first: a file without one fails before the slow part.
    if tokenizer_file is not None:
        tokenizer = _tokenizer_from_file(tokenizer_file)
    else:
        tokenizer = tokenizer_from_metadata(metadata, path)
    hf_config = llama_config(metadata, tensors, path)
    state_dict = _llama_state_dict(tensors, hf_config, path)
    return hf_config, state_dict, tokenizer


def _open(path: str):
    import gguf

    if not os.path.isfile(path):
        raise MissingInputError(f"GGUF file not found: {path}")
    try:
        return gguf.GGUFReader(path, "r")
    except (ValueError, OSError, IndexError) as e:  # bad magic, truncated file
        raise InputError(f"{path} is not a readable GGUF file ({e})") from None


def _require(metadata: dict, key: str, path: str):
    if key not in metadata:
        raise InputError(f"{path}: GGUF metadata has no {key!r}, which a llama model needs")
    return metadata[key]


def llama_config(metadata: dict, tensors: dict, path: str) -> dict:
    """The `LlamaConfig` dict of a llama GGUF from its metadata (``llama.*`` keys) and tensor names."""
    key = lambda name: _require(metadata, f"llama.{name}", path)  # noqa: E731
    if metadata.get("llama.expert_count", 0):
        raise ConfigError(
            f"{path}: a mixture-of-experts llama GGUF (llama.expert_count="
            f"{metadata['llama.expert_count']}) is not supported; supported: dense llama"
        )
    if "rope_freqs.weight" in tensors:
        raise InputError(
            f"{path}: the GGUF holds rope_freqs.weight (Llama-3.1-style RoPE frequency factors), "
            f"which cannot be turned back into a rope_scaling config; convert the model's "
            f"Hugging Face directory instead"
        )
    if "token_embd.weight" not in tensors:
        raise InputError(f"{path}: the GGUF has no token_embd.weight")
    hidden = int(key("embedding_length"))
    heads = int(key("attention.head_count"))
    head_dim = int(metadata.get("llama.attention.key_length", hidden // heads))
    rotary = metadata.get("llama.rope.dimension_count", head_dim)
    if rotary != head_dim:
        raise InputError(
            f"{path}: llama.rope.dimension_count={rotary} rotates part of each {head_dim}-wide "
            f"head; a Hugging Face Llama rotates the whole head"
        )
    vocab = int(tensors["token_embd.weight"].shape[1])  # ggml order: [hidden, vocab]
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": int(key("feed_forward_length")),
        "num_hidden_layers": int(key("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(metadata.get("llama.attention.head_count_kv", heads)),
        "head_dim": head_dim,
        "hidden_act": "silu",
        "rope_theta": float(metadata.get("llama.rope.freq_base", 10000.0)),
        "rms_norm_eps": float(key("attention.layer_norm_rms_epsilon")),
        "max_position_embeddings": int(key("context_length")),
        "tie_word_embeddings": "output.weight" not in tensors,
        "attention_bias": False,
        "mlp_bias": False,
    }
    for name in ("bos", "eos", "padding"):
        token_id = metadata.get(f"tokenizer.ggml.{name}_token_id")
        if token_id is not None:
            config[f"{name.replace('padding', 'pad')}_token_id"] = int(token_id)
    scaling = metadata.get("llama.rope.scaling.type", "none")
    if scaling == "linear":
        config["rope_scaling"] = {
            "rope_type": "linear",
            "factor": float(key("rope.scaling.factor")),
        }
    elif scaling == "yarn":
        config["rope_scaling"] = {
            "rope_type": "yarn",
            "factor": float(key("rope.scaling.factor")),
            "original_max_position_embeddings": int(key("rope.scaling.original_context_length")),
        }
    elif scaling != "none":
        raise InputError(
            f"{path}: llama.rope.scaling.type {scaling!r} is not supported; "
            f"supported: none, linear, yarn"
        )
    return config


def unpermute_rope_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's reordering of the rows of q_proj or k_proj (one head after another).

    Rotary embedding rotates each head's features in pairs. Hugging Face's `rotate_half` pairs
    feature j with j + d/2 (d the head width), while ggml's RoPE pairs features 2j and 2j + 1,
    so llama.cpp's converter moves Hugging Face row ``h * d/2 + j`` (half h in {0, 1}, j < d/2)
    of each head to row ``2j + h``. Rotation and the q.k products are then the same in both.
    The inverse reads each head's rows as (d/2, 2), swaps those axes to (2, d/2) and flattens:
    row ``2j + h`` goes back to ``h * d/2 + j``. Works on weights (rows, in) and biases (rows,).
    """
    rows = weight.shape[0]
    if rows % (2 * num_heads):
        raise InputError(
            f"cannot split {rows} rows into {num_heads} heads of an even width for RoPE"
        )
    half = rows // num_heads // 2
    heads = weight.reshape(num_heads, half, 2, *weight.shape[1:])
    return heads.swapaxes(1, 2).reshape(weight.shape)


def _llama_state_dict(tensors: dict, config: dict, path: str) -> dict[str, np.ndarray]:
    """Every tensor dequantised to float32 under its Hugging Face name, shapes checked."""
    hidden, inner = config["hidden_size"], config["intermediate_size"]
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config["head_dim"]
    names = dict(_TOP_TENSORS)
    for i in range(config["num_hidden_layers"]):
        for gguf_name, hf_name in _BLOCK_TENSORS.items():
            names[f"blk.{i}.{gguf_name}"] = f"model.layers.{i}.{hf_name}"
    unexpected = sorted(set(tensors) - set(names))
    if unexpected:
        raise InputError(
            f"{path}: tensors a Hugging Face Llama has no place for: {', '.join(unexpected[:5])}"
            + (f" (and {len(unexpected) - 5} more)" if len(unexpected) > 5 else "")
        )
    missing = sorted(n for n in names if n not in tensors and n != "output.weight")
    if missing:
        raise InputError(
            f"{path}: a llama GGUF with {config['num_hidden_layers']} blocks lacks "
            f"{', '.join(missing[:5])}"
            + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else "")
        )
    shapes = {
        "model.embed_tokens.weight": (config["vocab_size"], hidden),
        "lm_head.weight": (config["vocab_size"], hidden),
        "model.norm.weight": (hidden,),
        "input_layernorm.weight": (hidden,),
        "post_attention_layernorm.weight": (hidden,),
        "self_attn.q_proj.weight": (heads * head_dim, hidden),
        "self_attn.k_proj.weight": (kv_heads * head_dim, hidden),
        "self_attn.v_proj.weight": (kv_heads * head_dim, hidden),
        "self_attn.o_proj.weight": (hidden, heads * head_dim),
        "mlp.gate_proj.weight": (inner, hidden),
        "mlp.up_proj.weight": (inner, hidden),
        "mlp.down_proj.weight": (hidden, inner),
    }
    state_dict = {}
    for gguf_name, hf_name in names.items():
        if gguf_name not in tensors:
            continue
        weight = _dequantize(tensors[gguf_name], path)
        expected = shapes[hf_name if hf_name in shapes else hf_name.split(".", 3)[3]]
        if weight.shape != expected:
            raise InputError(
                f"{path}: {gguf_name} has shape {weight.shape} (torch layout); the metadata's "
                f"config needs {expected} for {hf_name}"
            )
        if hf_name.endswith("q_proj.weight"):
            weight = unpermute_rope_rows(weight, heads)
        elif hf_name.endswith("k_proj.weight"):
            weight = unpermute_rope_rows(weight, kv_heads)
        state_dict[hf_name] = weight
    return state_dict


def _dequantize(tensor, path: str) -> np.ndarray:
    """One tensor as a float32 array of numpy shape (the ggml shape reversed), owning its data."""
    from gguf.quants import dequantize

    try:
        values = dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError:
        raise InputError(
            f"{path}: tensor {tensor.name} is of type {tensor.tensor_type.name}, which the gguf "
            f"package cannot dequantise; re-export the GGUF in F32, F16, BF16 or a type such as Q8_0 or Q4_K"
        ) from None
    shape = tuple(int(n) for n in reversed(tensor.shape.tolist()))
    # F32 comes back as a view of the memory-mapped file: copy it so the file can close.
    if np.may_share_memory(values, tensor.data) or values.dtype != np.float32:
        values = np.array(values, dtype=np.float32)
    return values.reshape(shape)


def tokenizer_from_metadata(metadata: dict, path: str = "<gguf>"):
    """The `tokenizers.Tokenizer` a GGUF's ``tokenizer.ggml.*`` metadata describes (byte-level BPE).

    Built as transformers' GGUF converter builds it: the BPE model from `tokens` and `merges`;
    control tokens as special added tokens and user-defined ones as plain added tokens (matched
    whole, never split); the pre-tokenizer `tokenizer.ggml.pre` names; byte-level decoding; bos /
    eos added when ``add_bos_token`` / ``add_eos_token`` say so (both default to False).
    Raises `MissingInputError` when the file has no tokenizer and `InputError` for a kind of
    tokenizer or pre-tokenizer this cannot build.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.processors import TemplateProcessing

    tokens = metadata.get("tokenizer.ggml.tokens")
    if not tokens:
        raise MissingInputError(
            f"{path}: the GGUF has no tokenizer (no tokenizer.ggml.tokens metadata); pass the "
            f"model's Hugging Face tokenizer.json instead (read_gguf(path, tokenizer_file=...))"
        )
    kind = metadata.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise InputError(
            f"{path}: GGUF tokenizer kind {kind!r} (tokenizer.ggml.model) is not supported; "
            f"supported: 'gpt2' (byte-level BPE); pass the model's Hugging Face tokenizer.json "
            f"instead (read_gguf(path, tokenizer_file=...))"
        )
    merges = metadata.get("tokenizer.ggml.merges")
    if not merges:
        raise InputError(
            f"{path}: the GGUF's byte-level BPE tokenizer has no tokenizer.ggml.merges"
        )
    pre = metadata.get("tokenizer.ggml.pre", "default")
    if pre not in _PRE_TOKENIZER_SPLITS:
        raise InputError(
            f"{path}: GGUF pre-tokenizer {pre!r} (tokenizer.ggml.pre) is not supported; "
            f"supported: {', '.join(sorted(_PRE_TOKENIZER_SPLITS))}; pass the model's Hugging "
            f"Face tokenizer.json instead (read_gguf(path, tokenizer_file=...))"
        )
    alphabet = set(_byte_alphabet().values())
    types = metadata.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    vocab = {}
    for index, (token, kind_) in enumerate(zip(tokens, types)):
        # A plain token outside the byte alphabet was written as text: spell its UTF-8 bytes.
        if kind_ not in (_CONTROL, _USER_DEFINED) and not set(token) <= alphabet:
            token = "".join(_byte_alphabet()[b] for b in token.encode("utf-8"))
        vocab[token] = index
    model = models.BPE(
        vocab=vocab,
        merges=[tuple(merge.split(" ", 1)) for merge in merges],
        dropout=None,
        continuing_subword_prefix="",
        end_of_word_suffix="",
        fuse_unk=False,
    )
    tokenizer = Tokenizer(model)
    split = _PRE_TOKENIZER_SPLITS[pre]
    if split is None:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(
        [
            AddedToken(t, special=True, normalized=False)
            for t, k in zip(tokens, types)
            if k == _CONTROL
        ]
    )
    tokenizer.add_tokens(
        [
            AddedToken(t, special=False, normalized=False)
            for t, k in zip(tokens, types)
            if k == _USER_DEFINED
        ]
    )
    single, specials = "$A", []
    for name, where in (("bos", "before"), ("eos", "after")):
        token_id = metadata.get(f"tokenizer.ggml.{name}_token_id")
        if metadata.get(f"tokenizer.ggml.add_{name}_token", False) and token_id is not None:
            token = tokens[int(token_id)]
            single = f"{token} {single}" if where == "before" else f"{single} {token}"
            specials.append((token, int(token_id)))
    tokenizer.post_processor = TemplateProcessing(single=single, special_tokens=specials)
    return tokenizer


def _tokenizer_from_file(tokenizer_file: str):
    from tokenizers import Tokenizer

    if os.path.isdir(tokenizer_file):
        tokenizer_file = os.path.join(tokenizer_file, "tokenizer.json")
    if not os.path.isfile(tokenizer_file):
        raise MissingInputError(f"tokenizer file not found: {tokenizer_file}")
    try:
        return Tokenizer.from_file(tokenizer_file)
    except Exception as e:  # the Rust parser's errors have no common Python class
        raise InputError(f"{tokenizer_file} is not a tokenizers tokenizer.json ({e})") from None


@functools.cache
def _byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> character table: printable bytes stand for themselves, the rest are
    shifted to code points 256 and up, in byte order."""
    printable = {*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)}
    table, shifted = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + shifted)
            shifted += 1
    return table


def save_tokenizer(
    tokenizer, directory: str, *, bos_token_id: int | None = None, eos_token_id: int | None = None
) -> None:
    """Write `tokenizer` as ``directory/tokenizer.json`` and a minimal ``tokenizer_config.json``.

    `transformers.AutoTokenizer.from_pretrained(directory)` then loads it and gives the same ids:
    the config names bos/eos (from the ids given, e.g. `hf_config`'s) and says whether they are
    added, as the tokenizer's post-processor adds them.
    """
    os.makedirs(directory, exist_ok=True)
    tokenizer.save(os.path.join(directory, "tokenizer.json"))
    single = json.loads(tokenizer.to_str()).get("post_processor") or {}
    single = single.get("single", []) if single.get("type") == "TemplateProcessing" else []
    kinds = [next(iter(piece)) for piece in single]
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": bool(kinds) and kinds[0] == "SpecialToken",
        "add_eos_token": bool(kinds) and kinds[-1] == "SpecialToken",
    }
    for name, token_id in (("bos_token", bos_token_id), ("eos_token", eos_token_id)):
        if token_id is not None:
            config[name] = tokenizer.id_to_token(int(token_id))
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)
