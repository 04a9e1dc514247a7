"""GPT-2 causal language models in Hugging Face's form (`GPT2LMHeadModel`).

Learned token and position embeddings, pre-LayerNorm blocks (causal multi-head attention with
biases, then an MLP of two Dense layers with tanh GELU, HF's `gelu_new`), a final LayerNorm
(eps `layer_norm_epsilon`) and a head tied to the token embedding (or untied, when
`tie_word_embeddings=False`). Attention logits are scaled by 1/sqrt(head_dim).

Parameter names (Flax's (in, out) kernels): `wte/embedding` (vocab, D), `wpe/embedding`
(positions, D), `h_{i}/ln_1/{scale,bias}`, `h_{i}/attn/{q_proj,k_proj,v_proj,c_proj}/
{kernel,bias}`, `h_{i}/ln_2/{scale,bias}`, `h_{i}/mlp/{c_fc,c_proj}/{kernel,bias}`,
`ln_f/{scale,bias}`, and `classifier/kernel` (D, vocab) when the head is untied (named
`classifier` so that the default prune filter keeps it dense).

HF's checkpoint holds q, k and v as one fused Conv1D `attn.c_attn` (weight (D, 3D), columns
`[0, D)` q, `[D, 2D)` k, `[2D, 3D)` v); here they are three (D, D) Dense kernels, split and
joined exactly by `interop.hf_lm`. Pruning therefore ranks q, k and v as three layers (each
keeps its own share under a per-layer budget, as in `models.vit`), and an N:M pattern runs
along each one's input axis, which is also the input axis of the fused weight.

The block-by-block contract, through `module.apply(variables, ..., method=...)`:
`embed(tokens) -> hidden` (token plus position embeddings), `block(hidden, index) -> hidden`,
`logits(hidden) -> float32 logits`; `__call__(tokens, train=False)` is their composition.
Dropout is off (`train`, `rngs` and `mutable` are accepted and change nothing). The compute
dtype follows the params' dtype; LayerNorm and softmax reduce in float32.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from jackpot_jax.errors import ConfigError
from jackpot_jax.models.llama import causal_attention, check_length, check_tokens

# HF's names for the GELUs GPT-2 configs use: tanh approximation or exact erf.
ACTIVATIONS = {"gelu_new": True, "gelu_pytorch_tanh": True, "gelu": False}


def _dense(features: int, name: str) -> nn.Dense:
    return nn.Dense(features, kernel_init=nn.initializers.normal(0.02), name=name)


def _layer_norm(eps: float, name: str | None = None) -> nn.LayerNorm:
    # Two-pass variance, as torch computes it.
    return nn.LayerNorm(epsilon=eps, use_fast_variance=False, name=name)


class GPT2Attention(nn.Module):
    """Causal multi-head self-attention: q, k, v and the output `c_proj` are Dense layers."""

    num_heads: int

    @nn.compact
    def __call__(self, x):
        b, t, d = x.shape
        split = lambda y: y.reshape(b, t, self.num_heads, d // self.num_heads)
        q, k, v = (split(_dense(d, name)(x)) for name in ("q_proj", "k_proj", "v_proj"))
        return _dense(d, "c_proj")(causal_attention(q, k, v).reshape(b, t, d))


class GPT2MLP(nn.Module):
    """`c_proj(gelu(c_fc(x)))`."""

    intermediate_size: int
    tanh_gelu: bool = True

    @nn.compact
    def __call__(self, x):
        y = nn.gelu(_dense(self.intermediate_size, "c_fc")(x), approximate=self.tanh_gelu)
        return _dense(x.shape[-1], "c_proj")(y)


class GPT2Block(nn.Module):
    """x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    num_heads: int
    intermediate_size: int
    eps: float
    tanh_gelu: bool = True

    @nn.compact
    def __call__(self, x):
        x = x + GPT2Attention(self.num_heads, name="attn")(_layer_norm(self.eps, "ln_1")(x))
        y = _layer_norm(self.eps, "ln_2")(x)
        return x + GPT2MLP(self.intermediate_size, self.tanh_gelu, name="mlp")(y)


class GPT2LM(nn.Module):
    """GPT-2 on int token ids (batch, time) -> float32 logits (batch, time, vocab_size).

    Fields use the generic HF names (`hidden_size` = n_embd, `num_hidden_layers` = n_layer,
    `num_attention_heads` = n_head, `intermediate_size` = n_inner or 4 x hidden_size when None,
    `max_position_embeddings` = n_positions); `activation_function` is one of `ACTIVATIONS`."""

    vocab_size: int = 50257
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int | None = None
    max_position_embeddings: int = 1024
    layer_norm_epsilon: float = 1e-5
    activation_function: str = "gelu_new"
    tie_word_embeddings: bool = True
    remat: bool = False

    # init_variables feeds integer zeros to models that take token ids.
    takes_tokens = True

    def setup(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}"
            )
        if self.activation_function not in ACTIVATIONS:
            raise ConfigError(
                f"GPT-2 activation_function {self.activation_function!r} is not supported; "
                f"supported: {sorted(ACTIVATIONS)}"
            )
        init = nn.initializers.normal(0.02)
        self.wte = nn.Embed(self.vocab_size, self.hidden_size, embedding_init=init)
        self.wpe = nn.Embed(self.max_position_embeddings, self.hidden_size, embedding_init=init)
        block = nn.remat(GPT2Block) if self.remat else GPT2Block
        self.h = [
            block(
                self.num_attention_heads,
                self.intermediate_size or 4 * self.hidden_size,
                self.layer_norm_epsilon,
                ACTIVATIONS[self.activation_function],
            )
            for _ in range(self.num_hidden_layers)
        ]
        self.ln_f = _layer_norm(self.layer_norm_epsilon)
        if not self.tie_word_embeddings:
            self.classifier = nn.Dense(self.vocab_size, use_bias=False, kernel_init=init)

    def embed(self, tokens):
        """Token ids (batch, time) -> token plus position embeddings (batch, time, D)."""
        tokens = check_tokens(tokens)
        check_length(tokens.shape[1], self.max_position_embeddings)
        x = self.wte(tokens)
        return x + self.wpe(jnp.arange(tokens.shape[1])[None]).astype(x.dtype)

    def block(self, hidden, index: int):
        """Block `index` (0-based) on hidden states (batch, time, D)."""
        return self.h[index](hidden)

    def logits(self, hidden):
        """Final LayerNorm and head: hidden states -> float32 logits (batch, time, vocab)."""
        x = self.ln_f(hidden)
        out = self.wte.attend(x) if self.tie_word_embeddings else self.classifier(x)
        return out.astype(jnp.float32)

    def __call__(self, tokens, train: bool = False):
        x = self.embed(tokens)
        for i in range(self.num_hidden_layers):
            x = self.block(x, i)
        return self.logits(x)
