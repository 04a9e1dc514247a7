"""The search's options for efficiency (issue 13): the 2023 swap rule against a numpy
transcription of the authors' code, its rate schedule, the per-step cosine schedule, and a
swap search killed and resumed."""

import json
import os

import crash_hooks
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pipeline_helpers import (
    CRASHPOINTS,
    ROOT,
    TINY,
    cli,
    cli_overrides,
    pretrained_dir,
    tiny_config,
)

from jackpot_jax import core
from jackpot_jax import method as jm
from jackpot_jax.pipeline import checkpoint as ckpt_lib
from jackpot_jax.pipeline import train
from jackpot_jax.pipeline.config import base_config

CONFIG = os.path.join(ROOT, "configs", "fashion_mnist_lenet300.py")


def _ranks(scores):
    """Dense ranks of float32 scores in the order the swap rule uses: NaN below every number
    (-inf included), all NaNs equal, -0.0 equal to 0.0."""
    m = np.asarray(scores, np.float32).ravel()
    nan = np.isnan(m)
    ranks = np.zeros(m.size, np.int64)
    ranks[~nan] = np.unique(m[~nan], return_inverse=True)[1].ravel() + 1
    return ranks


def reference_swap(scores, mask, keep, rate, use_abs=False):
    """The authors' `final_pop_up` (utils/conv_type.py, 2023) in numpy, ties made explicit:
    of equal scores the lower flat index rises first and falls last; NaN ranks below every
    number (numpy's sort would put it above). Returns (new mask, pairs swapped, whether the
    two sets were balanced)."""
    m = _ranks(np.abs(scores) if use_abs else scores)  # ranks compare as the scores do
    b = np.asarray(mask).ravel().copy()
    prune_num = m.size - keep
    if prune_num == 0 or keep == 0:
        return b.reshape(np.shape(mask)), 0, True
    cut = np.sort(m)[prune_num - 1]
    idx0, idx1 = np.nonzero(b == 0)[0], np.nonzero(b)[0]
    pop0, pop1 = idx0[m[idx0] > cut], idx1[m[idx1] <= cut]
    if len(pop0) == 0 or len(pop0) != len(pop1):
        return b.reshape(np.shape(mask)), 0, len(pop0) == len(pop1)
    num = len(pop0)
    if num > 1:
        num = int(np.ceil(np.float32(num) * np.float32(rate)))
    up = pop0[np.lexsort((pop0, -m[pop0]))][:num]  # highest first, lower index first
    down = pop1[np.lexsort((-pop1, m[pop1]))][:num]  # lowest first, higher index first
    b[up], b[down] = 1, 0
    return b.reshape(np.shape(mask)), num, True


# --- the swap rule ----------------------------------------------------------------------------


def test_swap_by_hand():
    s = jnp.array([0.9, 0.2, 0.5, 0.7, 0.1, 0.6])
    m = jnp.array([1.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    budget, run = (
        {"w": 3},
        lambda r, sc=s, mk=m: np.asarray(jm.swap_masks({"w": sc}, {"w": mk}, budget, r)["w"]),
    )
    # cut = 3rd smallest = 0.5; risers: 0.7 (3), 0.6 (5); fallers: 0.2 (1), 0.1 (4): balanced
    np.testing.assert_array_equal(run(1.0), [1, 0, 0, 1, 0, 1])
    # rate 0.4: ceil(0.8) = 1 pair, the highest riser (0.7) for the lowest faller (0.1)
    np.testing.assert_array_equal(run(0.4), [1, 1, 0, 1, 0, 0])
    # Ties make the sets unbalanced: cut 0.5, one riser (1.0), two fallers (0.5, 0.5): no swap,
    # although the top-3 of these scores would be [1, 1, 1, 0, 0, 0].
    s2, m2 = jnp.array([1.0, 1.0, 0.5, 0.5, 0.5, 0.2]), jnp.array([1.0, 0, 1, 1, 0, 0])
    np.testing.assert_array_equal(run(1.0, s2, m2), np.asarray(m2))
    # Raw scores (default) against |scores|: -0.9 is the lowest raw score, the highest |s|.
    s3, m3 = jnp.array([-0.9, 0.3, 0.2, 0.1]), jnp.array([1.0, 0, 1, 0])
    np.testing.assert_array_equal(
        np.asarray(jm.swap_masks({"w": s3}, {"w": m3}, {"w": 2}, 1.0)["w"]), [0, 1, 1, 0]
    )
    np.testing.assert_array_equal(
        np.asarray(jm.swap_masks({"w": s3}, {"w": m3}, {"w": 2}, 1.0, use_abs=True)["w"]),
        [1, 1, 0, 0],
    )
    # NaN ranks below every number, -inf included: the kept NaN is the one faller (cut: the
    # 2nd smallest score, -inf), the pruned 0.5 the one riser. Were NaN the highest score, the
    # cut would be 0.5 and nothing would rise.
    s4, m4 = jnp.array([jnp.nan, 0.9, -jnp.inf, 0.5]), jnp.array([1.0, 1, 0, 0])
    np.testing.assert_array_equal(
        np.asarray(jm.swap_masks({"w": s4}, {"w": m4}, {"w": 2}, 1.0)["w"]), [0, 1, 0, 1]
    )
    np.testing.assert_array_equal(reference_swap(s4, m4, 2, 1.0)[0], [0, 1, 0, 1])
    # A pruned NaN never rises, whatever the rate; |NaN| is NaN.
    s5, m5 = jnp.array([0.3, jnp.nan, 0.1, 0.2]), jnp.array([1.0, 0, 0, 1])
    for use_abs in (False, True):
        got = jm.swap_masks({"w": s5}, {"w": m5}, {"w": 2}, 1.0, use_abs=use_abs)["w"]
        np.testing.assert_array_equal(np.asarray(got), [1, 0, 0, 1])


@pytest.mark.parametrize("layout", ["per_layer", "native"])
def test_swap_matches_the_numpy_transcription_over_many_steps(layout, monkeypatch, compute):
    """Several layers, scores moved by random steps quantised so that ties straddle the cut
    now and then, masks carried from step to step, rates below and at 1, raw and |s|; the
    thresholds by the counting search and by the native select (`sparsity.MASK_LAYOUT`; "f"
    is above the select's small-array size, 2**14)."""
    if layout == "native":
        from jackpot_jax.kernels.native import topk_select

        if jax.default_backend() != "cpu" or not topk_select.available():
            pytest.skip(f"native select: {topk_select.unavailable_reason() or 'CPU only'}")
    compute(mask_layout=layout)
    rng = np.random.default_rng(0)
    shapes = {"a": (7, 5), "b": (3, 3, 2, 4), "c": (50,), "d": (4, 4), "e": (6,), "f": (150, 120)}
    keeps = {
        "a": 9,
        "b": 30,
        "c": 5,
        "d": 16,
        "e": 0,  # d: all kept, e: none kept
        "f": 1800,
    }
    for use_abs in (False, True):
        swap = jax.jit(lambda s, m, r: jm.swap_masks(s, m, keeps, r, use_abs=use_abs))
        masks, scores = {}, {}
        for p, shape in shapes.items():
            n = int(np.prod(shape))
            masks[p] = np.zeros(n, np.float32)
            masks[p][rng.permutation(n)[: keeps[p]]] = 1
            masks[p] = masks[p].reshape(shape)
            scores[p] = np.where(masks[p] > 0, 1.0, 0.95).astype(np.float32)
        seen = {"partial": 0, "all": 0, "unbalanced": 0, "nan fell": 0}
        for step in range(12):
            rate = [1.0, 0.5, 0.3, 0.75][step % 4]
            scores = {
                p: (s + np.round(rng.normal(0, 4, s.shape)) * 0.01).astype(np.float32)
                for p, s in scores.items()
            }
            if use_abs:  # negative scores, where raw and |s| ranks differ
                scores["c"][:10] = -np.abs(scores["c"][:10]) - 0.5
            # NaN scores this step (the scores carried on stay numbers): below every number
            shown = {p: s.copy() for p, s in scores.items()}
            for p in ("a", "c", "f"):
                flat = shown[p].reshape(-1)
                flat[rng.choice(flat.size, 2 + step % 3, replace=False)] = np.nan
            new = jax.device_get(swap(shown, masks, rate))
            for p in shapes:
                ref, pairs, balanced = reference_swap(shown[p], masks[p], keeps[p], rate, use_abs)
                np.testing.assert_array_equal(new[p], ref, err_msg=f"{p} step {step} {use_abs}")
                assert new[p].sum() == keeps[p]  # counts never change
                assert int((new[p] != masks[p]).sum()) == 2 * pairs  # pairs only
                seen["unbalanced"] += not balanced
                seen["nan fell"] += int((np.isnan(shown[p]) & (masks[p] > 0) & (new[p] == 0)).sum())
                if pairs:
                    seen["all" if rate == 1.0 else "partial"] += 1
            masks = {p: np.asarray(v) for p, v in new.items()}
        assert all(seen.values()), seen  # every branch of the rule was exercised


def test_swap_rate_respected_and_highest_risers_first():
    """20 balanced candidates on each side; rate r swaps ceil(20 r) pairs: the highest risers
    and the lowest fallers."""
    n, keep = 60, 30
    mask = np.zeros(n, np.float32)
    mask[:30] = 1
    s = np.empty(n, np.float32)
    s[:10] = 5 + np.arange(10)  # kept, stay high
    s[10:30] = np.linspace(0.0, 0.19, 20)  # kept, fallen below the cut
    s[30:50] = np.linspace(1.0, 2.9, 20)  # pruned, risen above
    s[50:] = -1 - np.arange(10)  # pruned, stay low
    for rate, pairs in [(1.0, 20), (0.5, 10), (0.26, 6), (0.01, 1)]:
        got = np.asarray(jm.swap_masks({"w": s}, {"w": mask}, {"w": keep}, rate)["w"])
        assert got.sum() == keep
        risen, fallen = (
            np.nonzero((got > 0) & (mask == 0))[0],
            np.nonzero((got == 0) & (mask > 0))[0],
        )
        assert len(risen) == len(fallen) == pairs
        np.testing.assert_array_equal(risen, np.arange(50 - pairs, 50))  # highest scores
        np.testing.assert_array_equal(fallen, np.arange(10, 10 + pairs))  # lowest scores


def test_swap_rate_schedules():
    E = 10
    official = [float(jm.swap_rate(e, E)) for e in range(E)]
    assert official == [1.0] * E  # ceil((1 - e/E)^4) = 1 within the run
    poly = [float(jm.swap_rate(e, E, "poly", rate=0.5, power=2.0)) for e in (0, 5, 9)]
    np.testing.assert_allclose(poly, [0.5, 0.5 * 0.25, 0.5 * 0.01], rtol=1e-6)
    traced = jax.jit(lambda step: jm.swap_rate(step // 3, 4, "poly", 1.0, 1.0))
    np.testing.assert_allclose(
        [float(traced(jnp.int32(t))) for t in (0, 3, 11)], [1.0, 0.75, 0.25], rtol=1e-6
    )
    with pytest.raises(ValueError, match="swap schedule 'cubic'"):
        jm.swap_rate(0, E, "cubic")
    with pytest.raises(ValueError, match="swap rate=1.5"):
        jm.swap_rate(0, E, "poly", rate=1.5)
    with pytest.raises(ValueError, match="needs a keep-count tree"):
        jm.swap_masks({"w": jnp.ones(4)}, {"w": jnp.ones(4)}, 2, 1.0)


def test_persistent_mask_gradient_is_straight_through():
    w = {"w": jnp.array([2.0, -3.0, 4.0])}
    s = {"w": jnp.array([0.5, -1.0, 0.2])}
    m = {"w": jnp.array([1.0, 1.0, 0.0])}
    x = jnp.array([1.0, 1.0, 1.0])

    def loss(scores, use_abs):
        p = jm.masked_params_from_masks(w, scores, m, use_abs=use_abs)
        return jnp.sum(p["w"] * x)

    assert float(loss(s, False)) == pytest.approx(2.0 - 3.0)  # value: the mask
    np.testing.assert_allclose(jax.grad(loss)(s, False)["w"], [2.0, -3.0, 4.0])  # dL/dm * w
    np.testing.assert_allclose(jax.grad(loss)(s, True)["w"], [2.0, 3.0, 4.0])  # * sign(s)


# --- the per-step cosine ----------------------------------------------------------------------


def test_cosine_per_step_learning_rates_by_hand():
    cfg = base_config().search
    cfg.lr, cfg.momentum, cfg.weight_decay, cfg.schedule = 0.2, 0.0, 0.0, "cosine_step"
    tx, schedule = core.make_optimizer(cfg, epochs=2, steps_per_epoch=3)
    # 0.5 * 0.2 * (1 + cos(pi t / 6)), t = 0..5, worked out by hand
    hand = [0.2, 0.1866025, 0.15, 0.1, 0.05, 0.0133975]
    np.testing.assert_allclose([float(schedule(t)) for t in range(6)], hand, atol=1e-6)
    # ... and applied: with gradient 1 and no momentum, step t moves the parameter by -lr_t.
    p = jnp.zeros(())
    state = tx.init(p)
    moves = []
    for _ in range(6):
        upd, state = tx.update(jnp.ones(()), state, p)
        moves.append(-float(upd))
    np.testing.assert_allclose(moves, hand, atol=1e-6)
    cfg.schedule = "cosine_epoch"  # the official code: constant within an epoch
    _, per_epoch = core.make_optimizer(cfg, epochs=2, steps_per_epoch=3)
    np.testing.assert_allclose(
        [float(per_epoch(t)) for t in range(6)], [0.2, 0.2, 0.2, 0.1, 0.1, 0.1], atol=1e-7
    )
    cfg.schedule = "linear"
    with pytest.raises(ValueError, match="schedule='linear'"):
        core.make_optimizer(cfg, 2, 3)


def test_adamw_updates_by_hand():
    """optimizer='adamw': Adam's bias-corrected moments written out in numpy, plus decoupled
    weight decay (lr * wd * p, not through the moments), under the per-step cosine."""
    cfg = base_config().search
    cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.schedule = "adamw", 0.01, 0.1, "cosine_step"
    cfg.b1, cfg.b2 = 0.8, 0.9
    tx, schedule = core.make_optimizer(cfg, epochs=1, steps_per_epoch=4)
    grads = np.array([0.5, -2.0, 1.0, 0.25])
    p, state = jnp.asarray(3.0), None
    state = tx.init(p)
    ref_p, m, v = 3.0, 0.0, 0.0
    for t, g in enumerate(grads, start=1):
        lr = 0.5 * 0.01 * (1 + np.cos(np.pi * (t - 1) / 4))
        m, v = 0.8 * m + 0.2 * g, 0.9 * v + 0.1 * g * g
        m_hat, v_hat = m / (1 - 0.8**t), v / (1 - 0.9**t)
        ref_p -= lr * (m_hat / (np.sqrt(v_hat) + 1e-8) + 0.1 * ref_p)
        upd, state = tx.update(jnp.asarray(g, jnp.float32), state, p)
        p = p + upd
        np.testing.assert_allclose(float(p), ref_p, rtol=1e-6)
    cfg.optimizer = "adam"
    with pytest.raises(ValueError, match="optimizer='adam'.*sgd.*adamw"):
        core.make_optimizer(cfg, 2, 3)


# --- a swap search end to end: resume ---------------------------------------------------------


SWAP = {
    "search.epochs": 4,
    "sparsity": 0.8,
    "search.mask_update": "swap",
    "search.use_abs": False,
    "search.swap_schedule": "poly",
    "search.swap_rate": 0.5,
    "search.swap_power": 1.0,
    "search.lr": 2.0,
    "search.score_pruned": 0.99,
    "search.schedule": "cosine_step",
    "search.batch_size": 16,
}


def test_swap_search_killed_and_rerun_resumes_to_the_same_mask(tmp_path, monkeypatch, capfd):
    """LeNet-300-100 on a small synthetic Fashion-MNIST stand-in, searching with swaps (16
    steps an epoch, 4 epochs): the CLI's run SIGKILLed right after issuing epoch 3's
    checkpoint, rerun, resumes from its newest finished checkpoint (epoch 2 at least) and ends
    with the uninterrupted run's masks."""
    config = tiny_config(**SWAP)
    config.pretrained = pretrained_dir(tmp_path, config)
    ref = train.run(config, str(tmp_path / "ref"))
    assert ref["mask_update"] == "swap" and ref["schedule"] == "cosine_step"
    assert ref["batch_size"] == 16  # the search's own batch, not the config's
    lines = [json.loads(x) for x in open(tmp_path / "ref" / "metrics.jsonl")]
    assert lines[1]["learning_rate"] == pytest.approx(1.0 + np.cos(np.pi * 16 / 64))  # step 16
    with np.load(tmp_path / "ref" / "jackpot.npz") as z:
        ref_masks = {k: z[k] for k in z.files if k.startswith("masks/")}
    # Half the swaps a step makes are left out (rate <= 0.5), so the persistent mask lags the
    # top-k of the scores: a resume that rebuilt it from the scores would not end the same.
    scores = ckpt_lib.load_scores(tmp_path / "ref" / "model")
    topk = {
        p: np.asarray(jm.topk_mask(jnp.asarray(s), int(ref_masks["masks/" + p].sum())))
        for p, s in scores.items()
    }
    assert any((topk[p] != ref_masks["masks/" + p]).any() for p in topk)

    work = tmp_path / "killed"
    keys = ["dataset", "pretrained", "eval_batch_size", "pretrain.epochs", *TINY, *SWAP]
    # The launcher adds no XLA flags: the CLI's first epochs round as this process does (the
    # swaps, lr 2.0, follow score differences that a fusion flag's rounding can change).
    env = dict(
        os.environ, JACKPOT_JAX_KILL_AT="save:3", JACKPOT_JAX_XLA_FLAGS="0", PYTHONPATH=CRASHPOINTS
    )
    killed = cli(work, CONFIG, *cli_overrides(config, keys), check=False, timeout=600, env=env)
    assert killed.returncode == -9, killed.stderr[-2000:]  # SIGKILL, where asked
    assert not (work / "summary.json").exists()
    # The rerun resumes from the newest finished checkpoint: epoch 2's at least (saving
    # epoch 3's waited for it), epoch 3's if its write had finished before the kill.
    done = [int(n) for n in os.listdir(work / "checkpoints") if n.isdigit()]
    assert max(done) in (2, 3), done
    steps = []  # the rerun's training steps, counted where the loop would kill
    crash_hooks.install(lambda event: steps.append(event == "step"), monkeypatch.setattr)
    capfd.readouterr()
    again = train.run(config, str(work))
    assert f"resuming {work} from epoch {max(done)}" in capfd.readouterr().out
    assert sum(steps) == 16 * (4 - max(done))
    with np.load(work / "jackpot.npz") as z:
        for k, v in ref_masks.items():
            np.testing.assert_array_equal(z[k], v, err_msg=k)
    assert again["test_accuracy"] == ref["test_accuracy"]
