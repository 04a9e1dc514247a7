"""The efficiency sweep (jackpot_jax/experiments/sweep.py): its selection, verdicts and report
by hand; a tiny sweep end to end, killed and resumed, and re-planned for worker processes."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from pipeline_helpers import ROOT, load_config

from jackpot_jax.experiments import common, runner, stats, sweep, sweep_report
from jackpot_jax.experiments.study_pieces import Study

TABLE = {(1, 1): 0.50, (2, 1): 0.60, (3, 1): 0.55, (1, 2): 0.65, (2, 2): 0.70, (3, 2): 0.80}


def _evaluate(calls, table=TABLE):
    def evaluate(point):
        calls.append((point["a"], point["b"]))
        return table.get((point["a"], point["b"]))

    return evaluate


def test_coordinate_search_by_hand():
    calls = []
    best, seen, finished = common.coordinate_search(
        _evaluate(calls), {"a": 1, "b": 1}, {"a": (1, 2, 3), "b": (1, 2)}, ("a", "b"), 3
    )
    # round 1: a at b=1 -> a=2 (0.60); b at a=2 -> b=2 (0.70)
    # round 2: a at b=2 -> a=3 (0.80); b at a=3 -> stays 2;  round 3: nothing changes
    assert best == {"a": 3, "b": 2} and finished
    assert calls == [(1, 1), (2, 1), (3, 1), (2, 2), (1, 2), (3, 2)]  # each point once
    assert len(seen) == 6
    # One round only: the search stops after round 1 at (2, 2).
    best, _, finished = common.coordinate_search(
        _evaluate([]), {"a": 1, "b": 1}, {"a": (1, 2, 3), "b": (1, 2)}, ("a", "b"), 1
    )
    assert best == {"a": 2, "b": 2} and finished


def test_coordinate_search_ties_keep_the_current_level_and_missing_values_stop():
    flat = {k: 0.5 for k in TABLE}
    best, _, _ = common.coordinate_search(
        _evaluate([], flat), {"a": 2, "b": 2}, {"a": (1, 2, 3), "b": (1, 2)}, ("a", "b"), 2
    )
    assert best == {"a": 2, "b": 2}
    pending = dict(TABLE)
    del pending[(2, 2)]  # not run yet: the search waits there
    calls = []
    best, seen, finished = common.coordinate_search(
        _evaluate(calls, pending), {"a": 1, "b": 1}, {"a": (1, 2, 3), "b": (1, 2)}, ("a", "b"), 2
    )
    assert not finished and best == {"a": 2, "b": 1} and calls[-1] == (2, 2)
    with pytest.raises(ValueError, match="factor 'b'"):
        common.coordinate_search(
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
    mode, over = common.recipe_overrides("jackpot", r, 10)
    assert mode == "search" and over["search.use_abs"] is False  # 2023: raw scores
    assert over["batch_size"] == 64 and over["search.schedule"] == "cosine_step"
    mode, over = common.recipe_overrides("weight_tuning", {"batch_size": 128, "lr": 0.02}, 3)
    assert mode == "finetune" and over == {
        "batch_size": 128,
        "finetune.epochs": 3,
        "finetune.lr": 0.02,
        "finetune.mask": "magnitude",
    }
    with pytest.raises(ValueError, match="kind='dense'"):
        common.recipe_overrides("dense", r, 1)


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
    (v,) = sweep_report.assess({"settings": {"networks": ["n"]}, "rows": rows})
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
            "per_seed": {"test_acc": {"1": 0.90, "2": 0.91}},
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
                "per_seed": {"test_acc": {"1": a, "2": b}},
            }
        )
    (v,) = sweep_report.assess({"settings": {"networks": ["n"]}, "rows": rows})
    # seed 1: -0.2, seed 2: +0.4 points: sample std sqrt(0.3**2 + 0.3**2) = 0.4243; the
    # interval 0.1 -+ t(1) 12.7062 * 0.4243 / sqrt(2) = 0.1 -+ 3.8119 contains 0
    pj = v["paired_jackpot_minus_weight_tuning"]
    assert pj["mean"] == pytest.approx(0.1) and pj["std"] == pytest.approx(0.42426, abs=1e-5)
    assert pj["ci95"] == pytest.approx([-3.7119, 3.9119], abs=1e-4) and pj["within_noise"]
    pd = v["paired_jackpot_minus_dense"]  # -0.3 and -0.1 points: std 0.1414
    assert pd["mean"] == pytest.approx(-0.2) and pd["std"] == pytest.approx(0.14142, abs=1e-5)
    assert pd["per_seed"] == pytest.approx({"1": -0.3, "2": -0.1})


def test_the_sweep_config_is_valid():
    """Every network's design starts inside its levels, its final seeds are fresh, and a
    dry selection (every point worth the same) ends where it starts."""
    c = load_config(os.path.join(ROOT, "configs", "sweep_search_fashion_mnist.py"))
    for net in c.networks:
        d = sweep.design_for(c, net)
        assert c.select_seed not in d["final_seeds"] and len(d["final_seeds"]) == 3
        for kind, factors in (("jackpot", c.jackpot_factors), ("wt", c.wt_factors)):
            best, _, finished = common.coordinate_search(
                lambda p: 0.5,
                d[f"{kind}_start"],
                d[f"{kind}_levels"],
                tuple(factors),
                d["max_rounds"],
            )
            assert finished and best == d[f"{kind}_start"]
        common.recipe_overrides("jackpot", d["jackpot_start"], 1)
    c.per_network.lenet5.final_seeds = (0, 1, 2)
    with pytest.raises(ValueError, match="include the selection seed 0"):
        sweep.design_for(c, "lenet5")


# --- a tiny sweep, run for real --------------------------------------------------------------


def tiny_config():
    """Two jackpot lr levels and one weight-tuning recipe, one epoch each, on 64 synthetic
    images; two fresh seeds: about ten pieces."""
    c = load_config(os.path.join(ROOT, "configs", "sweep_search_fashion_mnist.py"))
    c.base.dataset = "synthetic:fashion_mnist"
    c.base.train_subset, c.base.test_subset, c.base.val_examples = 64, 32, 16
    c.base.batch_size, c.base.eval_batch_size = 32, 16
    c.networks, c.per_network = ("lenet300_100",), {}
    c.pretrain_epochs, c.select_epochs, c.max_rounds = 1, 1, 1
    c.final_seeds, c.final_epochs = (1, 2), (1,)
    c.official.batch_size = c.wt_start.batch_size = 32
    c.jackpot_factors, c.wt_factors = ("lr",), ("lr",)
    c.jackpot_levels.lr, c.wt_levels.lr = (0.1, 0.4), (0.01,)
    return c


def _summaries(workdir) -> dict:
    """{piece folder relative to workdir: summary} of every finished piece."""
    out = {}
    for folder, _, names in os.walk(workdir):
        if "summary.json" in names:
            with open(os.path.join(folder, "summary.json")) as f:
                out[os.path.relpath(folder, workdir)] = json.load(f)
    return out


@pytest.fixture(scope="module")
def serial_sweep(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sweep")
    return sweep.run_sweep(tiny_config(), str(workdir)), workdir


def test_tiny_sweep_end_to_end(serial_sweep):
    res, workdir = serial_sweep
    pieces = _summaries(workdir)
    assert res["complete"] and res["run"]["pieces_run_this_invocation"] == len(pieces) >= 8
    for name in ("report.md", "results.json", "accuracy_vs_epochs.png", "invocations.jsonl"):
        assert os.path.getsize(workdir / name) > 0, name
    # Selection pieces (seed 0) never read the test split; the final seeds' pieces do.
    for piece, summary in pieces.items():
        selection = piece.startswith(os.path.join("lenet300_100", "seed0"))
        for key in ("test_accuracy", "dense_test_accuracy", "init_mask_test_accuracy"):
            if selection:
                assert summary.get(key) is None, (piece, key)
        assert selection or summary["test_accuracy"] is not None, piece
        assert summary["final_val_accuracy"] is not None, piece
    # Every row: the mean and sample std of the pieces' own test accuracies.
    saved = json.load(open(workdir / "results.json"))
    methods = {r["method"] for r in saved["rows"]}
    assert methods == {"dense", *sweep_report.METHODS}
    for row in saved["rows"]:
        name = (
            "pretrain"
            if row["method"] == "dense"
            else sweep.recipe_name(
                "jackpot" if row["method"].startswith("jackpot") else "weight_tuning",
                row["recipe"],
                row["epochs"],
            )
        )
        accs = [pieces[os.path.join("lenet300_100", f"seed{s}", name)] for s in (1, 2)]
        accs = [a["test_accuracy"] for a in accs]
        assert row["per_seed"]["test_acc"] == {"1": accs[0], "2": accs[1]}
        assert row["test_acc_mean"] == pytest.approx((accs[0] + accs[1]) / 2)
        assert row["test_acc_std"] == pytest.approx(abs(accs[0] - accs[1]) / np.sqrt(2))
    # Provenance, written by the tool: in results.json and as the report's last section.
    run = saved["run"]
    for key in ("command", "commit", "dirty", "device", "started", "load_average_start"):
        assert key in run, key
    assert run["command"].startswith("called from Python: ")
    assert run["wall_seconds_this_invocation"] > 0 and run["load_average_end"] is not None
    report = open(workdir / "report.md").read()
    assert "## Provenance" in report and f"`{run['commit']}`" in report
    assert "sample standard deviation over seeds (ddof=1)" in report
    assert "never evaluated the test split" in report
    # The checker recomputes every row and difference of the fresh results.
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import check_results

    errors, checked = check_results.check_file(str(workdir / "results.json"))
    assert errors == [] and checked >= len(saved["rows"])


def test_sweep_killed_then_resumed_by_replanned_workers(serial_sweep, tmp_path, monkeypatch):
    """The command, SIGKILLed in the middle of the selection's second search, then resumed
    with `workers=2`: each batch of planned pieces excludes the finished ones, the selection
    is planned again from the pieces' results, and every number equals the serial run's."""
    serial, serial_dir = serial_sweep
    config = tmp_path / "tiny_sweep.py"
    config.write_text(
        f"import sys\nsys.path.insert(0, {os.path.dirname(__file__)!r})\n"
        "from test_sweep import tiny_config as get_config\n"
    )
    workdir = tmp_path / "wd"
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests", "crashpoints")]),
        JACKPOT_JAX_KILL_AT="export:4",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "jackpot_jax.sweep", f"--config={config}", f"--workdir={workdir}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    # The log's header, by the tool: command, commit, device, date, load average.
    assert f"[sweep] command: python -m jackpot_jax.sweep --config={config}" in proc.stdout
    for field in ("[sweep] commit: ", "[sweep] device: ", "[sweep] date: "):
        assert field in proc.stdout, field
    # Search events 1-3 are the first search's; the 4th is inside the second one.
    before = _summaries(workdir)
    assert sorted(before) == [
        os.path.join("lenet300_100", "seed0", "jackpot_b32_lr0.1_s0.95_cosine_epoch_topk_e1"),
        os.path.join("lenet300_100", "seed0", "pretrain"),
    ]
    stamps = {p: os.stat(workdir / p / "summary.json").st_mtime_ns for p in before}

    batches = []

    def serial_workers(factory, c, wd, tasks, workers):
        batches.append(sorted(os.path.relpath(os.path.dirname(t.target), wd) for t in tasks))
        return runner.work(factory(c, wd), tasks)

    monkeypatch.setattr(runner, "run_workers", serial_workers)
    c = tiny_config()
    c.workers = 2
    res = sweep.run_sweep(c, str(workdir))
    after = _summaries(workdir)
    assert set(after) == set(_summaries(serial_dir))
    assert res["run"]["pieces_run_this_invocation"] == len(after) - len(before)
    assert {p: os.stat(workdir / p / "summary.json").st_mtime_ns for p in before} == stamps
    ran = [p for b in batches for p in b]
    assert len(ran) == len(set(ran)) and not set(ran) & set(before)
    # First batch: the rest of the jackpot selection and the weight-tuning recipe; the final
    # seeds' pieces only once the selection has its numbers.
    assert all("seed0" in p for p in batches[0]) and len(batches) >= 2
    assert any("seed1" in p for p in batches[1])
    assert sum(map(len, batches)) == len(after) - len(before)  # all by the "workers"
    assert res["selected"] == serial["selected"] and res["rows"] == serial["rows"]
    assert res["sweep"] == serial["sweep"]
    assert res["run"]["device"] and res["run"]["workers"] == 2
    # A planner now plans nothing and reads every finished piece's numbers back.
    planner = Study(c, str(workdir), plan=True)
    again = sweep.experiments(planner, c)
    assert planner.plan == {} and again["sweep"] == serial["sweep"]
    assert again["rows"] == serial["rows"]


def test_write_report_tables_by_hand(tmp_path):
    """A fixed small results dict: the budget table's cells, the winner's margin and the
    target's paired differences, computed by hand."""
    per_seed = {  # test accuracy per seed (1, 2, 3)
        ("dense", 5): (0.90, 0.91, 0.92),
        ("jackpot_official", 2): (0.80, 0.82, 0.84),
        ("jackpot_selected", 2): (0.85, 0.86, 0.87),
        ("weight_tuning_selected", 2): (0.85, 0.85, 0.85),
    }
    rows = [
        stats.summary_row(
            {"network": "n", "method": m, "epochs": e, "recipe": {"batch_size": 8, "lr": 0.1}},
            test_acc={str(s): v for s, v in zip((1, 2, 3), accs)},
        )
        for (m, e), accs in per_seed.items()
    ]
    recipe = {
        "batch_size": 8,
        "lr": 0.1,
        "score_pruned": 0.95,
        "schedule": "cosine_epoch",
        "mask_update": "topk",
    }
    design = {
        "jackpot_start": recipe,
        "jackpot_levels": {"lr": [0.1]},
        "wt_start": {"batch_size": 8, "lr": 0.1},
        "wt_levels": {"lr": [0.1]},
        "max_rounds": 1,
        "note": "",
        "final_seeds": [1, 2, 3],
    }
    res = {
        "complete": True,
        "rows": rows,
        "sweep": [],
        "selected": {
            "n": {
                "jackpot": recipe,
                "weight_tuning": {"batch_size": 8, "lr": 0.1},
                "selection_finished": True,
                "dense_val_accuracy": 0.9,
            }
        },
        "settings": {
            "networks": ["n"],
            "sparsity": 0.9,
            "select_seed": 0,
            "select_epochs": 2,
            "final_seeds": [1, 2, 3],
            "final_epochs": [2],
            "pretrain_epochs": 5,
            "official": recipe,
            "jackpot_factors": ["lr"],
            "wt_factors": ["lr"],
            "designs": {"n": design},
            "quick": False,
            "dataset": "d",
            "train_examples": 10,
            "val_examples": 2,
            "test_examples": 3,
            "search_weight_decay": 0.0,
            "finetune_weight_decay": 0.0,
            "selection_evaluates_test": False,
        },
        "run": {
            "command": "c",
            "commit": "abc",
            "cpu_count": 2,
            "machine": "m",
            "jax": "j",
            "backend": "cpu",
            "device": "cpu",
            "wall_seconds_this_invocation": 1.0,
            "pieces_run_this_invocation": 0,
        },
    }
    res["assessment"] = sweep_report.assess(res)
    sweep_report.write_report(res, str(tmp_path))
    report = open(tmp_path / "report.md").read().splitlines()
    # Means and sample stds (ddof=1) in %: official 82.00, std sqrt((4 + 0 + 4) / 2) = 2.00;
    # selected jackpot 86.00 ± 1.00; weight tuning 85.00 ± 0.00; dense 91.00 ± 1.00. The
    # winner: selected jackpot by 1.00 over weight tuning (paired differences 0, +1, +2:
    # interval 1 -+ t(2) 4.3027 * 1 / sqrt(3) = [-1.48, 3.48], within noise).
    assert "| 2 | 82.00 ± 2.00 | 86.00 ± 1.00 | 85.00 ± 0.00 | selected jackpot (+1.00 over " in (
        "\n".join(report)
    )
    table_row = next(line for line in report if line.startswith("| 2 |"))
    # The winner's margin is stated with its interval, not judged (issue 29: no verdict the
    # interval does not support).
    assert table_row.endswith(
        "selected weight tuning; paired +1.00 points (95% interval -1.48 to +3.48, 3 seeds)) |"
    )
    assert any("dense: 91.00 ± 1.00, 5 pretraining epochs; seeds 1, 2, 3" in x for x in report)
    # Target, decided on the intervals (margin 0.3): jackpot - dense per seed -5, -5, -5
    # points: interval [-5, -5], its lower bound below -0.3: not shown within 0.3 points.
    # Jackpot - weight tuning 0, +1, +2: interval [-1.48, 3.48], lower bound below -0.3: not
    # shown no worse. So the target is not shown.
    target = next(line for line in report if line.startswith("- **n**"))
    assert target.startswith("- **n**: target not shown (both tests on the 95% interval")
    assert "-5.00 points (95% interval -5.00 to -5.00, 3 seeds); not shown within 0.3" in target
    assert "+1.00 points (95% interval -1.48 to +3.48, 3 seeds); not shown no worse" in target
    assert "(lower bound -1.48 at or below -0.3)" in target
