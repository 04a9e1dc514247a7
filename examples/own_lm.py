"""Your own small Flax language model through `jackpot_jax.find_jackpot`, at 2:4.

A two-block causal transformer is defined here, trained densely for a few hundred steps on a
toy corpus (a random Markov chain over 64 tokens: something to predict), and then a 2:4
jackpot is searched in its Linear layers with the next-token loss (``loss_fn``), AdamW on the
scores and token batches ``(tokens[:, :-1], tokens[:, 1:])``. The embedding and the head
(named ``classifier``) stay dense. About a minute on two CPU cores.

    python examples/own_lm.py
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jackpot_jax
from jackpot_jax import method as jm

VOCAB, WIDTH, SEQ = 64, 64, 32


class Block(nn.Module):
    @nn.compact
    def __call__(self, x):
        b, t, d = x.shape
        y = nn.LayerNorm()(x)
        q, k, v = (nn.Dense(d, name=n)(y).reshape(b, t, 4, d // 4) for n in ("q", "k", "v"))
        a = jax.nn.dot_product_attention(q, k, v, is_causal=True).reshape(b, t, d)
        x = x + nn.Dense(d, name="o")(a)
        y = nn.LayerNorm()(x)
        return x + nn.Dense(d, name="down")(nn.gelu(nn.Dense(4 * d, name="up")(y)))


class TinyLM(nn.Module):
    @nn.compact
    def __call__(self, tokens):
        x = nn.Embed(VOCAB, WIDTH)(tokens) + self.param(
            "positions", nn.initializers.normal(0.02), (SEQ, WIDTH)
        )
        for _ in range(2):
            x = Block()(x)
        return nn.Dense(VOCAB, name="classifier")(nn.LayerNorm()(x))


def next_token_loss(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def corpus(n, seed):
    rng = np.random.default_rng(0)
    successors = rng.integers(0, VOCAB, (VOCAB, 2))  # every token has two possible next ones
    draw = np.random.default_rng(seed)
    out = np.zeros((n, SEQ + 1), np.int32)
    out[:, 0] = draw.integers(0, VOCAB, n)
    for t in range(SEQ):
        out[:, t + 1] = successors[out[:, t], draw.integers(0, 2, n)]
    return out


def perplexity(model, variables, windows):
    logits = model.apply(variables, windows[:, :-1])
    return float(jnp.exp(next_token_loss(logits, windows[:, 1:])))


def main():
    model = TinyLM()
    train, held_out = corpus(4096, 1), corpus(256, 2)
    variables = model.init(jax.random.key(0), train[:1, :-1])
    tx = optax.adamw(3e-3)
    opt = tx.init(variables["params"])

    @jax.jit
    def step(params, opt, batch):
        loss, g = jax.value_and_grad(
            lambda p: next_token_loss(model.apply({"params": p}, batch[:, :-1]), batch[:, 1:])
        )(params)
        updates, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, updates), opt, loss

    params = variables["params"]
    for i in range(300):  # "pre-training"
        params, opt, _ = step(params, opt, train[(i * 32) % 4096 :][:32])
    dense = {"params": params}
    print(f"dense perplexity {perplexity(model, dense, held_out):.3f} (ideal: 2)")

    batches = [(w[:, :-1], w[:, 1:]) for w in np.split(train[:2048], 64)]
    jackpot = jackpot_jax.find_jackpot(
        model,
        dense,
        batches,
        pattern="2:4",
        loss_fn=next_token_loss,
        optimizer="adamw",
        lr=0.01,
        weight_decay=0.0,
        schedule="cosine_step",
        score_pruned=0.99,
        epochs=2,
    )
    masked = {
        "params": jm.apply_masks(params, jm.masks_from_scores(jackpot.scores, jackpot.budget))
    }
    mag = jm.masks_from_scores(jm.magnitude_scores(params), jackpot.budget)
    print(
        f"magnitude 2:4 perplexity {perplexity(model, {'params': jm.apply_masks(params, mag)}, held_out):.3f}"
    )
    print(f"jackpot 2:4 perplexity {perplexity(model, jackpot.variables, held_out):.3f}")
    assert perplexity(model, masked, held_out) == perplexity(model, jackpot.variables, held_out)
    for path, mask in jm.flatten_paths(jackpot.masks).items():
        assert jm.satisfies_pattern(np.asarray(mask), jm.NMPattern(2, 4)), path
    print("every pruned Linear is exactly 2:4; kept weights are the pre-trained ones")


if __name__ == "__main__":
    main()
