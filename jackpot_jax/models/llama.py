"""Causal language models of the Llama family (Llama 2/3, Qwen2, Mistral) in Hugging Face's form.

The computation is that of transformers' `LlamaForCausalLM` (and `Qwen2ForCausalLM`,
`MistralForCausalLM`, which are the same layout): a token embedding, pre-RMSNorm decoder
blocks (grouped-query self-attention with rotary position embeddings, then a SwiGLU MLP), a
final RMSNorm and a linear head, tied to the embedding or not. Qwen2 adds biases to q, k and v
(`qkv_bias`); Llama's `attention_bias` puts them on q, k, v and o (`qkv_bias` and `o_bias`).
RoPE uses the config's theta and, optionally, Llama 3's frequency scaling (`rope_scaling`
with `rope_type='llama3'`: `factor`, `low_freq_factor`, `high_freq_factor`,
`original_max_position_embeddings`); other scalings are refused.
Mistral's sliding window (`sliding_window`) only matters for sequences longer than the window
(4096 in Mistral-7B); it is applied as a local attention window when a sequence is longer.

Parameter names (Flax's (in, out) kernels; `jackpot_jax.interop.hf_lm` maps them to HF's):
`embed_tokens/embedding` (vocab, D), `layers_{i}/input_layernorm/scale`,
`layers_{i}/self_attn/{q_proj,k_proj,v_proj,o_proj}/{kernel,bias}`,
`layers_{i}/post_attention_layernorm/scale`, `layers_{i}/mlp/{gate_proj,up_proj,down_proj}/
kernel`, `norm/scale`, and, when the head is not tied, `classifier/kernel` (D, vocab): HF's
`lm_head`, named `classifier` so that the default prune filter keeps it dense. Only the block
Linears are leaves named `kernel` outside `classifier`, so the default filter prunes exactly
q, k, v, o, gate, up and down of every block.

The block-by-block contract (sequential one-shot calibration needs each block's inputs
computed by the already-pruned earlier blocks), through `module.apply(variables, ...,
method=...)`:

* `embed(tokens) -> hidden` (batch, time, D);
* `block(hidden, index) -> hidden`: block `index` (0-based) on hidden states;
* `logits(hidden) -> logits`: final norm and head, float32 (batch, time, vocab);
* `__call__(tokens, train=False)` is `logits(block(... block(embed(tokens), 0) ..., n-1))`.

Compute dtype: as every model here, the computation follows the dtype of the params it is
given (the training step casts them to bfloat16 under `compute_dtype='bfloat16'`; token ids
stay integers). Norms and softmax reduce in float32, and logits come back float32.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jackpot_jax.errors import ConfigError

ROPE_TYPES = ("default", "llama3")


def check_tokens(tokens) -> jnp.ndarray:
    """`tokens` as an int32 (batch, time) array; a TypeError for anything but integers (token
    ids cast to a float type, e.g. bfloat16, would be silently wrong)."""
    tokens = jnp.asarray(tokens)
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise TypeError(
            f"a language model takes integer token ids, got dtype {tokens.dtype} (do not cast "
            "the tokens to the compute dtype; only the params are cast)"
        )
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be (batch, time), got shape {tuple(tokens.shape)}")
    return tokens.astype(jnp.int32)


def check_length(time: int, max_positions: int) -> None:
    """A ValueError when a sequence of `time` tokens is longer than the model's context."""
    if time > max_positions:
        raise ValueError(
            f"sequence of {time} tokens is longer than the model's context "
            f"(max_position_embeddings={max_positions})"
        )


def rope_inverse_frequencies(
    head_dim: int, theta: float, scaling: Mapping[str, Any] | None = None
) -> np.ndarray:
    """RoPE's inverse frequencies (head_dim // 2,) float32, as transformers computes them:
    `1 / theta ** (2i / head_dim)` in float32, then Llama 3's scaling when `scaling` says
    `rope_type='llama3'` (wavelengths longer than `original / low_freq_factor` divided by
    `factor`, shorter than `original / high_freq_factor` kept, a smooth blend between).
    `ConfigError` for another rope type."""
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    inv = (np.float32(1.0) / (np.float32(theta) ** exponents)).astype(np.float32)
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if kind == "default":
        return inv
    if kind != "llama3":
        raise ConfigError(
            f"rope_scaling of rope_type {kind!r} is not supported; supported: {list(ROPE_TYPES)} "
            "(or no rope_scaling)"
        )
    try:
        factor = float(scaling["factor"])
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        original = float(scaling["original_max_position_embeddings"])
    except KeyError as e:
        raise ConfigError(
            f"llama3 rope_scaling {dict(scaling)} lacks {e.args[0]!r}; it needs factor, "
            "low_freq_factor, high_freq_factor and original_max_position_embeddings"
        ) from None
    wavelen = 2 * math.pi / inv
    low_wavelen, high_wavelen = original / low, original / high
    scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (original / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, blended, scaled).astype(np.float32)


def rope_tables(time: int, inv_freq: np.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """cos and sin (time, head_dim) float32 for positions 0 .. time-1 (angles repeated over
    both halves, as HF's `rotate_half` pairs dim i with i + head_dim / 2)."""
    angles = jnp.arange(time, dtype=jnp.float32)[:, None] * jnp.asarray(inv_freq)[None, :]
    angles = jnp.concatenate([angles, angles], -1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray) -> jnp.ndarray:
    """x (batch, time, heads, head_dim) rotated: `x * cos + rotate_half(x) * sin`."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], -1)
    cos, sin = cos[:, None, :].astype(x.dtype), sin[:, None, :].astype(x.dtype)
    return x * cos + rotated * sin


def causal_attention(q, k, v, window: int | None = None) -> jnp.ndarray:
    """Causal (grouped-query) attention of q (b, t, heads, d) over k, v (b, t, kv_heads, d),
    scaled by 1/sqrt(d); with `window`, each position sees itself and the `window - 1` before
    it (Mistral's sliding window)."""
    local = (window - 1, 0) if window is not None and q.shape[1] > window else None
    return jax.nn.dot_product_attention(
        q, k, v, is_causal=True, local_window_size=local, implementation="xla"
    )


def _dense(features: int, name: str | None, use_bias: bool = False) -> nn.Dense:
    return nn.Dense(
        features, use_bias=use_bias, kernel_init=nn.initializers.normal(0.02), name=name
    )


class RMSNorm(nn.Module):
    """`scale * x / sqrt(mean(x^2) + eps)`, the statistic in float32 (as HF's LlamaRMSNorm:
    the normalised value is cast back to the input dtype before the scale)."""

    eps: float = 1e-6

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + self.eps)
        return scale.astype(x.dtype) * y.astype(x.dtype)


class LlamaAttention(nn.Module):
    """Grouped-query self-attention with RoPE: q, k, v, o are Dense layers."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    qkv_bias: bool = False
    o_bias: bool = False
    sliding_window: int | None = None

    @nn.compact
    def __call__(self, x, cos, sin):
        b, t, d = x.shape
        q = _dense(self.num_heads * self.head_dim, "q_proj", self.qkv_bias)(x)
        k = _dense(self.num_kv_heads * self.head_dim, "k_proj", self.qkv_bias)(x)
        v = _dense(self.num_kv_heads * self.head_dim, "v_proj", self.qkv_bias)(x)
        q = apply_rope(q.reshape(b, t, self.num_heads, self.head_dim), cos, sin)
        k = apply_rope(k.reshape(b, t, self.num_kv_heads, self.head_dim), cos, sin)
        v = v.reshape(b, t, self.num_kv_heads, self.head_dim)
        y = causal_attention(q, k, v, self.sliding_window)
        return _dense(d, "o_proj", self.o_bias)(y.reshape(b, t, self.num_heads * self.head_dim))


class SwiGLU(nn.Module):
    """`down(silu(gate(x)) * up(x))`."""

    intermediate_size: int
    use_bias: bool = False

    @nn.compact
    def __call__(self, x):
        gate = _dense(self.intermediate_size, "gate_proj", self.use_bias)(x)
        up = _dense(self.intermediate_size, "up_proj", self.use_bias)(x)
        return _dense(x.shape[-1], "down_proj", self.use_bias)(nn.silu(gate) * up)


class LlamaBlock(nn.Module):
    """x + attn(input_layernorm(x)), then x + mlp(post_attention_layernorm(x))."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    sliding_window: int | None = None

    @nn.compact
    def __call__(self, x, cos, sin):
        attn = LlamaAttention(
            self.num_heads,
            self.num_kv_heads,
            self.head_dim,
            self.qkv_bias,
            self.o_bias,
            self.sliding_window,
            name="self_attn",
        )
        x = x + attn(RMSNorm(self.rms_norm_eps, name="input_layernorm")(x), cos, sin)
        y = RMSNorm(self.rms_norm_eps, name="post_attention_layernorm")(x)
        return x + SwiGLU(self.intermediate_size, self.mlp_bias, name="mlp")(y)


class LlamaLM(nn.Module):
    """A Llama-family causal LM on int token ids (batch, time) -> float32 logits (batch, time,
    vocab_size). Fields are HF config names (`qkv_bias`/`o_bias` split `attention_bias`;
    `head_dim` None = hidden_size // num_attention_heads; `num_key_value_heads` None = the
    head count; `remat` rematerialises each block in the backward pass). `train`, `rngs` and
    `mutable` are accepted and change nothing (there is no dropout)."""

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    rope_theta: float = 10000.0
    rope_scaling: Mapping[str, Any] | None = None
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    max_position_embeddings: int = 2048
    sliding_window: int | None = None
    remat: bool = False

    # init_variables feeds integer zeros to models that take token ids.
    takes_tokens = True

    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def dims_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    def setup(self):
        if self.num_attention_heads % self.kv_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.kv_heads}"
            )
        if self.dims_per_head % 2:
            raise ValueError(f"RoPE needs an even head_dim, got {self.dims_per_head}")
        self.inv_freq = rope_inverse_frequencies(
            self.dims_per_head, self.rope_theta, self.rope_scaling
        )
        self.embed_tokens = nn.Embed(
            self.vocab_size, self.hidden_size, embedding_init=nn.initializers.normal(0.02)
        )
        block = nn.remat(LlamaBlock) if self.remat else LlamaBlock
        self.layers = [
            block(
                self.num_attention_heads,
                self.kv_heads,
                self.dims_per_head,
                self.intermediate_size,
                self.rms_norm_eps,
                self.qkv_bias,
                self.o_bias,
                self.mlp_bias,
                self.sliding_window,
            )
            for _ in range(self.num_hidden_layers)
        ]
        self.norm = RMSNorm(self.rms_norm_eps)
        if not self.tie_word_embeddings:
            self.classifier = _dense(self.vocab_size, None)  # setup names it

    def embed(self, tokens):
        """Token ids (batch, time) -> hidden states (batch, time, hidden_size)."""
        tokens = check_tokens(tokens)
        check_length(tokens.shape[1], self.max_position_embeddings)
        return self.embed_tokens(tokens)

    def block(self, hidden, index: int):
        """Block `index` (0-based) on hidden states (batch, time, hidden_size)."""
        cos, sin = rope_tables(hidden.shape[1], self.inv_freq)
        return self.layers[index](hidden, cos, sin)

    def logits(self, hidden):
        """Final RMSNorm and head: hidden states -> float32 logits (batch, time, vocab)."""
        x = self.norm(hidden)
        out = self.embed_tokens.attend(x) if self.tie_word_embeddings else self.classifier(x)
        return out.astype(jnp.float32)

    def __call__(self, tokens, train: bool = False):
        x = self.embed(tokens)
        for i in range(self.num_hidden_layers):
            x = self.block(x, i)
        return self.logits(x)
