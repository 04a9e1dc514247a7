"""The efficiency sweep's selection and verdicts (jackpot_jax/sweep.py), by hand."""

import pytest

from jackpot_jax.experiments import sweep

TABLE = {(1, 1): 0.50, (2, 1): 0.60, (3, 1): 0.55, (1, 2): 0.65, (2, 2): 0.70, (3, 2): 0.80}


def _evaluate(calls, table=TABLE):
    def evaluate(point):
        calls.append((point["a"], point["b"]))
        return table.get((point["a"], point["b"]))

    return evaluate


def test_coordinate_search_by_hand():
    calls = []
    best, seen, finished = sweep.coordinate_search(
        _evaluate(calls), {"a": 1, "b": 1}, {"a": (1, 2, 3), "b": (1, 2)}, ("a", "b"), 3
    )
    # round 1: a at b=1 -> a=2 (0.60); b at a=2 -> b=2 (0.70)
    # round 2: a at b=2 -> a=3 (0.80); b at a=3 -> stays 2;  round 3: nothing changes
    assert best == {"a": 3, "b": 2} and finished
    assert calls == [(1, 1), (2, 1), (3, 1), (2, 2), (1, 2), (3, 2)]  # each point once
    assert len(seen) == 6
    # One round only: the search stops after round 1 at (2, 2).
    best, _, finished = sweep.coordinate_search(
        _evaluate([]), {"a": 1, "b": 1}, {"a": (1, 2, 3), "b": (1, 2)}, ("a", "b"), 1
    )
    assert best == {"a": 2, "b": 2} and finished


def test_coordinate_search_ties_keep_the_current_level_and_missing_values_stop():
    flat = {k: 0.5 for k in TABLE}
    best, _, _ = sweep.coordinate_search(
        _evaluate([], flat), {"a": 2, "b": 2}, {"a": (1, 2, 3), "b": (1, 2)}, ("a", "b"), 2
    )
    assert best == {"a": 2, "b": 2}
    pending = dict(TABLE)
    del pending[(2, 2)]  # not run yet: the search waits there
    calls = []
    best, seen, finished = sweep.coordinate_search(
        _evaluate(calls, pending), {"a": 1, "b": 1}, {"a": (1, 2, 3), "b": (1, 2)}, ("a", "b"), 2
    )
    assert not finished and best == {"a": 2, "b": 1} and calls[-1] == (2, 2)
    with pytest.raises(ValueError, match="factor 'b'"):
        sweep.coordinate_search(
            _evaluate([]), {"a": 1, "b": 9}, {"a": (1, 2, 3), "b": (1, 2)}, ("a", "b"), 1
        )


def test_recipe_names_and_overrides():
    r = {
        "batch_size": 64,
        "lr": 0.2,
        "score_pruned": 0.99,
        "schedule": "cosine_step",
        "mask_update": "swap",
    }
    assert sweep.recipe_name("jackpot", r, 10) == "jackpot_b64_lr0.2_s0.99_cosine_step_swap_e10"
    mode, over = sweep.recipe_overrides("jackpot", r, 10)
    assert mode == "search" and over["search.use_abs"] is False  # 2023: raw scores
    assert over["batch_size"] == 64 and over["search.schedule"] == "cosine_step"
    mode, over = sweep.recipe_overrides("weight_tuning", {"batch_size": 128, "lr": 0.02}, 3)
    assert mode == "finetune" and over == {
        "batch_size": 128,
        "finetune.epochs": 3,
        "finetune.lr": 0.02,
        "finetune.mask": "magnitude",
    }
    with pytest.raises(ValueError, match="kind='dense'"):
        sweep.recipe_overrides("dense", r, 1)


def test_assessment_by_hand():
    rows = [{"network": "n", "method": "dense", "epochs": 10, "test_acc_mean": 0.9000}]
    for m, accs in {
        "jackpot_official": (0.85, 0.8900),
        "jackpot_selected": (0.88, 0.8980),
        "weight_tuning_selected": (0.87, 0.8950),
    }.items():
        rows += [
            {"network": "n", "method": m, "epochs": e, "test_acc_mean": a}
            for e, a in zip((1, 10), accs)
        ]
    (v,) = sweep.assess({"settings": {"networks": ["n"]}, "rows": rows})
    assert v["target_epochs"] == 10
    assert v["gap_to_dense"] == pytest.approx(0.20)
    assert v["jackpot_minus_weight_tuning"] == pytest.approx(0.30)
    assert v["within_0.3_of_dense"] and v["at_least_weight_tuning"]
    b1 = v["budgets"][0]
    assert b1["winner"] == "jackpot_selected" and b1["runner_up"] == "weight_tuning_selected"
    assert b1["margin"] == pytest.approx(1.0)


def test_paired_differences_by_hand():
    rows = [
        {
            "network": "n",
            "method": "dense",
            "epochs": 10,
            "test_acc_mean": 0.90,
            "per_seed": {"1": 0.90, "2": 0.91},
        }
    ]
    for m, (a, b) in {
        "jackpot_official": (0.88, 0.88),
        "jackpot_selected": (0.897, 0.909),
        "weight_tuning_selected": (0.899, 0.905),
    }.items():
        rows.append(
            {
                "network": "n",
                "method": m,
                "epochs": 10,
                "test_acc_mean": (a + b) / 2,
                "per_seed": {"1": a, "2": b},
            }
        )
    (v,) = sweep.assess({"settings": {"networks": ["n"]}, "rows": rows})
    pj = v["paired_jackpot_minus_weight_tuning"]  # seed 1: -0.2, seed 2: +0.4 points
    assert pj["mean"] == pytest.approx(0.1) and pj["std"] == pytest.approx(0.3)
    pd = v["paired_jackpot_minus_dense"]  # -0.3 and -0.1 points
    assert pd["mean"] == pytest.approx(-0.2) and pd["std"] == pytest.approx(0.1)


def test_the_sweep_config_is_valid():
    """Every network's design starts inside its levels, its final seeds are fresh, and a
    dry selection (every point worth the same) ends where it starts."""
    import os

    from pipeline_helpers import ROOT, load_config

    c = load_config(os.path.join(ROOT, "configs", "sweep_search_fashion_mnist.py"))
    for net in c.networks:
        d = sweep.design_for(c, net)
        assert c.select_seed not in d["final_seeds"] and len(d["final_seeds"]) == 3
        for kind, factors in (("jackpot", c.jackpot_factors), ("wt", c.wt_factors)):
            best, _, finished = sweep.coordinate_search(
                lambda p: 0.5,
                d[f"{kind}_start"],
                d[f"{kind}_levels"],
                tuple(factors),
                d["max_rounds"],
            )
            assert finished and best == d[f"{kind}_start"]
        sweep.recipe_overrides("jackpot", d["jackpot_start"], 1)
    c.per_network.lenet5.final_seeds = (0, 1, 2)
    with pytest.raises(ValueError, match="include the selection seed 0"):
        sweep.design_for(c, "lenet5")
