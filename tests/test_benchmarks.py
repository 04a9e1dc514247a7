"""The benchmarks' shared modules: the timing helpers of benchmarks/common.py and the authors'
masked layers of benchmarks/reference.py, against hand-computed cases and numpy."""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))

import common  # noqa: E402


def test_time_sides_rotates_the_order_and_keeps_a_failure():
    calls = []

    def builder(side, fail_at=None):
        def build():
            def run():
                calls.append(side)
                if fail_at is not None and calls.count(side) == fail_at:
                    raise RuntimeError("boom\nsecond line")
                return float(calls.count(side)), 0.5

            return run

        return build

    res = common.time_sides(
        {"a": builder("a"), "b": builder("b"), "c": builder("c", fail_at=4)},
        steps=1,
        warmup=2,
        rounds=3,
        log=None,
    )
    # Warm-up (2 calls each, in order), then rounds a b c | b c a | c a b: c fails on its
    # 4th call (round 2) and is not called again.
    assert calls == ["a", "a", "b", "b", "c", "c", "a", "b", "c", "b", "c", "a", "a", "b"]
    assert res["c"] == {"error": "RuntimeError: boom"}
    # a's timed steps returned 3, 4, 5 (its call counts): median 4, quartiles 3.5 and 4.5.
    assert res["a"]["ms"] == 4.0 and res["a"]["min"] == 3.0 and res["a"]["n"] == 3
    assert (res["a"]["q1"], res["a"]["q3"]) == (3.5, 4.5)
    assert res["a"]["loss0"] == 0.5 and res["a"]["first_s"] == pytest.approx(1e-3, abs=1e-3)


def test_median_ms_uses_the_clock_after_the_warmup():
    seen = []
    ticks = iter([5.0, 1.0, 3.0])

    def clock(fn):
        fn()
        return next(ticks)

    ms = common.median_ms(lambda: seen.append(1), repeats=3, warmup=2, clock=clock)
    assert ms == 3.0 and len(seen) == 5


def test_masked_layers_keep_the_top_scores_and_pass_gradients_straight_through():
    torch = pytest.importorskip("torch")
    import reference

    rng = np.random.default_rng(0)
    net = reference.masked(reference.LeNet5(10), {"conv2": 300, "fc1": 4000})
    scores = {n: m.mask for n, m in net.named_modules() if isinstance(m, reference.Scored)}
    with torch.no_grad():
        for s in scores.values():  # distinct magnitudes, random signs: no ties
            v = (rng.permutation(s.numel()) + 1) * rng.choice([-1.0, 1.0], s.numel())
            s.copy_(torch.from_numpy(v.astype(np.float32).reshape(s.shape)))
    for name, keep in (("conv2", 300), ("fc1", 4000)):
        s = scores[name].detach().abs().numpy().ravel()
        expected = np.zeros(s.size, np.float32)
        expected[np.argsort(-s)[:keep]] = 1
        for sort in (False, True):
            got = reference.GetMask.apply(scores[name].abs(), keep, sort).detach().numpy()
            np.testing.assert_array_equal(got.ravel(), expected)
    # Straight-through: d loss / d scores = d loss / d (masked weight) * weight * sign(scores).
    layer = net.fc1
    x = torch.from_numpy(rng.standard_normal((3, 800)).astype(np.float32))
    layer(x).square().sum().backward()
    w = layer.masked_weight().detach().requires_grad_(True)
    torch.nn.functional.linear(x, w, layer.bias).square().sum().backward()
    expected = w.grad * layer.weight * torch.sign(layer.mask.detach())
    torch.testing.assert_close(layer.mask.grad, expected)
    assert layer.weight.grad is None  # frozen


def test_lm_row_masks_losses_and_score_gradients_agree_with_transformers():
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import jax
    import reference
    from bench_lm_step import PATTERN, TINY, jax_runner, lm_setup, torch_runner, torch_weights

    from jackpot_jax import method as jm
    from jackpot_jax.pipeline.lm import next_token_loss

    setup = lm_setup(dict(TINY, vocab_size=96), batch=2, seq_len=8)
    # Distinct random scores (no ties, either sign) instead of the two magnitude levels.
    rng = np.random.default_rng(1)
    scores = jax.tree.map(
        lambda s: (
            (rng.permutation(s.size).reshape(s.shape) + 1.0) * rng.choice([-1.0, 1.0], s.shape)
        ),
        setup.search.state.params,
    )
    scores = jax.tree.map(lambda s: np.asarray(s, np.float32), scores)
    state = setup.search.state.replace(params=scores)
    masks = jm.masks_from_scores(scores, setup.search.budget)
    setup = setup._replace(search=setup.search._replace(state=state, masks=masks))
    weights = torch_weights(setup)
    net = reference.lm_network(*weights, PATTERN.n, PATTERN.m)
    layers = {n: m for n, m in net.named_modules() if isinstance(m, reference.MaskedNMLinear)}
    ours = {reference.lm_module_name(p): np.asarray(m) for p, m in jm.flatten_paths(masks).items()}
    assert sorted(layers) == sorted(ours) and len(ours) == 7 * TINY["num_hidden_layers"]
    for name, layer in layers.items():
        m = reference.nm_mask(layer.scores.detach().abs(), 2, 4).numpy()
        np.testing.assert_array_equal(m, ours[name].T, err_msg=name)
        # exactly 2 of every 4 consecutive inputs of each output row
        assert (m.reshape(m.shape[0], -1, 4).sum(-1) == 2).all(), name
    # Step-0 losses: the benchmark's two steps (ours through the core, transformers' eager)
    # on the same masked network and next-token loss.
    loss_jax = jax_runner(setup, "float32")()[1]
    run = torch_runner(setup, weights, "eager", "float32", "cpu")
    loss_torch = run()[1]
    assert loss_torch == pytest.approx(loss_jax, rel=1e-5)
    trained = [p for g in run.optimizer.param_groups for p in g["params"]]
    assert sorted(tuple(p.shape) for p in trained) == sorted(m.T.shape for m in ours.values())

    # The straight-through gradient reaching the scores: ours (jax.grad through
    # jm.masked_params) against torch's autograd through MaskedNMLinear.
    def loss(s):
        p = jm.masked_params(setup.variables["params"], s, setup.search.budget)
        return next_token_loss(setup.module.apply({"params": p}, setup.inputs), setup.labels)

    value, grads = jax.value_and_grad(loss)(scores)
    assert float(value) == pytest.approx(loss_jax, rel=1e-6)
    net = reference.lm_network(*weights, PATTERN.n, PATTERN.m)
    x = torch.from_numpy(setup.inputs.astype(np.int64))
    y = torch.from_numpy(setup.labels.astype(np.int64))
    logits = net(input_ids=x).logits
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten()).backward()
    named = dict(net.named_modules())
    for path, g in jm.flatten_paths(grads).items():
        layer = named[reference.lm_module_name(path)]
        got = layer.scores.grad.numpy()
        np.testing.assert_allclose(got, np.asarray(g).T, rtol=1e-4, atol=1e-7, err_msg=path)
        assert np.abs(got).max() > 0 and layer.weight.grad is None, path  # weights frozen
