"""Find a 90% jackpot in your own Flax model: ``python examples/own_model.py``.

A small CNN defined here (not from the zoo) is trained densely on Fashion-MNIST for one epoch
with optax, then `jackpot_jax.find_jackpot` searches a mask that removes 90% of its prunable
weights without changing any kept one. ``--subset N`` trains and searches on N images (a
quick look); the Fashion-MNIST files come from `apt-get install dataset-fashion-mnist`.
"""

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jackpot_jax
from jackpot_jax.data import datasets


class SmallCNN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        for width in (16, 32):
            x = nn.Conv(width, (3, 3), use_bias=False)(x)
            x = nn.BatchNorm(use_running_average=not train)(x)
            x = nn.max_pool(nn.relu(x), (2, 2), (2, 2))
        x = nn.relu(nn.Dense(64)(x.reshape((x.shape[0], -1))))
        return nn.Dense(10, name="classifier")(x)  # named so: kept dense by default


def batches(images, labels, size, seed):
    order = np.random.default_rng(seed).permutation(len(images))
    return [
        (images[i], labels[i])
        for i in np.split(order[: len(order) // size * size], len(order) // size)
    ]


def accuracy(model, variables, images, labels):
    logits = jax.jit(lambda v, x: model.apply(v, x))(variables, images)
    return float(jnp.mean(jnp.argmax(logits, -1) == labels))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--subset", type=int, default=None, help="use only N training images")
    args = ap.parse_args()
    ds = datasets.load_dataset("fashion_mnist", train_subset=args.subset, val_examples=0)
    prep = lambda x: (x.astype(np.float32) / 255.0 - 0.286) / 0.353  # noqa: E731
    x, y = prep(ds.train.images), ds.train.labels
    x_test, y_test = prep(ds.test.images[:2000]), ds.test.labels[:2000]

    model = SmallCNN()
    variables = model.init(jax.random.key(0), x[:2])
    tx = optax.sgd(0.05, momentum=0.9)
    opt_state = tx.init(variables["params"])

    @jax.jit
    def train_step(variables, opt_state, images, labels):
        def loss_fn(params):
            logits, upd = model.apply(
                {**variables, "params": params}, images, train=True, mutable=["batch_stats"]
            )
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), upd

        grads, upd = jax.grad(loss_fn, has_aux=True)(variables["params"])
        updates, opt_state = tx.update(grads, opt_state)
        params = optax.apply_updates(variables["params"], updates)
        return {"params": params, **upd}, opt_state

    for images, labels in batches(x, y, 64, seed=0):  # one dense epoch: our "pre-trained" model
        variables, opt_state = train_step(variables, opt_state, images, labels)
    print(f"dense: {accuracy(model, variables, x_test, y_test):.4f}")

    jackpot = jackpot_jax.find_jackpot(
        model,
        variables,
        lambda epoch: batches(x, y, 64, seed=epoch + 1),
        sparsity=0.9,
        epochs=3,
        lr=0.2,
        schedule="cosine_step",
    )
    for h in jackpot.history:
        print(f"search epoch {h['epoch']}: loss {h['loss']:.3f}, mask flips {h['mask_flips']}")
    print(
        f"jackpot (90% of the prunable weights removed, kept weights untouched): "
        f"{accuracy(model, jackpot.variables, x_test, y_test):.4f}"
    )


if __name__ == "__main__":
    main()
