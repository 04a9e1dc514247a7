"""The causal LMs (models.llama, models.gpt2) on their own: what the default prune filter
selects, the block-by-block contract, causality, remat, compute dtype and bad inputs.
Parity with transformers is in test_hf_lm.py."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jackpot_jax import method as jm
from jackpot_jax import models

LLAMA = dict(
    vocab_size=97,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=32,
)
GPT2 = dict(
    vocab_size=97,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=32,
)
CASES = {
    "llama": ("llama", LLAMA),
    "llama_tied": ("llama", {**LLAMA, "tie_word_embeddings": True}),
    "gpt2": ("gpt2", GPT2),
    "gpt2_untied": ("gpt2", {**GPT2, "tie_word_embeddings": False}),
}


@functools.cache
def _build(case):
    arch, opts = CASES[case]
    module = models.get_model(arch, **opts)
    shape = (1,) + models.input_shape(arch, opts)
    init = jax.jit(lambda key: models.init_variables(module, key, shape))
    return module, init(jax.random.key(0))


def _apply(module, variables, *args, method="__call__"):
    """module.apply jitted (op-by-op dispatch of a transformer is slow on a busy CPU); a
    trailing int argument (the block index) is static."""
    static = (len(args),) if args and isinstance(args[-1], int) else ()
    fn = jax.jit(functools.partial(module.apply, method=method), static_argnums=static)
    return fn(variables, *args)


def _tokens(t=10, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, 97, (2, t)), jnp.int32)


def test_input_shape_is_the_context():
    assert models.input_shape("llama", LLAMA) == (32,)
    assert models.input_shape("gpt2") == (1024,)


@pytest.mark.parametrize("case", ["llama", "llama_tied", "gpt2_untied"])
def test_default_filter_prunes_exactly_the_block_linears(case):
    module, variables = _build(case)
    leaves = jm.flatten_paths(variables["params"])
    if CASES[case][0] == "gpt2":
        linears = ("attn/q_proj", "attn/k_proj", "attn/v_proj", "attn/c_proj")
        linears += ("mlp/c_fc", "mlp/c_proj")
        blocks = ("h_0", "h_1")
    else:
        linears = tuple(f"self_attn/{n}_proj" for n in "qkvo")
        linears += tuple(f"mlp/{n}_proj" for n in ("gate", "up", "down"))
        blocks = ("layers_0", "layers_1")
    want = {f"{b}/{n}/kernel" for b in blocks for n in linears}
    assert want <= set(leaves)  # the names the docstrings promise
    assert set(jm.prunable_paths(variables["params"], jm.make_filter())) == want
    untied = not CASES[case][1].get("tie_word_embeddings", CASES[case][0] == "gpt2")
    assert ("classifier/kernel" in leaves) == untied


@pytest.mark.parametrize("case", ["llama", "gpt2_untied"])
def test_blocks_one_at_a_time_compose_to_call(case):
    module, variables = _build(case)
    tokens = _tokens()
    hidden = _apply(module, variables, tokens, method="embed")
    for i in range(2):
        hidden = _apply(module, variables, hidden, i, method="block")
    stepwise = _apply(module, variables, hidden, method="logits")
    whole = _apply(module, variables, tokens)
    assert whole.shape == (2, 10, 97) and whole.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(stepwise), np.asarray(whole), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", ["llama", "gpt2"])
def test_causal(case):
    # Changing the last tokens changes no earlier position's logits.
    module, variables = _build(case)
    a = _tokens()
    b = a.at[:, 6:].set((a[:, 6:] + 1) % 97)
    la, lb = (np.asarray(_apply(module, variables, t)) for t in (a, b))
    np.testing.assert_array_equal(la[:, :6], lb[:, :6])
    assert np.abs(la[:, 6:] - lb[:, 6:]).max() > 1e-3


@pytest.mark.parametrize("case", ["llama"])
def test_remat_gives_the_same_logits_and_gradients(case):
    module, variables = _build(case)
    remat = models.get_model(CASES[case][0], **{**CASES[case][1], "remat": True})
    tokens = _tokens()
    np.testing.assert_allclose(
        np.asarray(_apply(remat, variables, tokens)),
        np.asarray(_apply(module, variables, tokens)),
        rtol=1e-6,
        atol=1e-6,
    )

    def grads(m):
        loss = lambda p: jnp.mean(m.apply({"params": p}, tokens) ** 2)
        return jax.jit(jax.grad(loss))(variables["params"])

    g0, g1 = grads(module), grads(remat)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("case", ["llama", "gpt2"])
def test_bfloat16_params_compute_in_bfloat16_and_return_float32(case):
    # As the step does it under compute_dtype='bfloat16': params cast, tokens stay integers.
    module, variables = _build(case)
    low = jax.tree.map(lambda x: x.astype(jnp.bfloat16), variables)
    tokens = _tokens()
    out = _apply(module, low, tokens)
    ref = np.asarray(_apply(module, variables, tokens))
    assert out.dtype == jnp.float32
    assert np.abs(np.asarray(out) - ref).max() < 0.05 * np.abs(ref).max()
    hidden = _apply(module, low, tokens, method="embed")
    assert hidden.dtype == jnp.bfloat16
    assert _apply(module, low, hidden, 0, method="block").dtype == jnp.bfloat16


def test_float_tokens_and_long_sequences_are_refused():
    module, variables = _build("llama")
    with pytest.raises(TypeError, match="integer token ids"):
        module.apply(variables, jnp.zeros((1, 4), jnp.bfloat16))
    with pytest.raises(ValueError, match="max_position_embeddings=32"):
        module.apply(variables, jnp.zeros((1, 33), jnp.int32))


def test_gqa_heads_must_divide():
    module = models.get_model("llama", **{**LLAMA, "num_key_value_heads": 3})
    with pytest.raises(ValueError, match="not a multiple of num_key_value_heads=3"):
        models.init_variables(module, jax.random.key(0), (1, 4))


def test_other_rope_scalings_are_refused():
    from jackpot_jax.errors import ConfigError

    module = models.get_model("llama", **{**LLAMA, "rope_scaling": {"rope_type": "yarn"}})
    with pytest.raises(ConfigError, match="'yarn' is not supported"):
        models.init_variables(module, jax.random.key(0), (1, 4))
