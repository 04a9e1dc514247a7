"""A tiny study end to end: every piece runs, the report, plots and results.json appear, a
rerun reads the pieces back instead of running them again; parallel workers sharing a workdir
give the serial run's numbers."""

import json
import os
import socket
import subprocess
import sys

import pytest
from pipeline_helpers import ROOT, load_config

from jackpot_jax.experiments import runner, study


def _tiny_config():
    c = load_config(os.path.join(ROOT, "configs", "study_fashion_mnist.py"))
    c.base.dataset = "synthetic:fashion_mnist"
    c.base.train_subset, c.base.test_subset, c.base.val_examples = 128, 32, 16
    c.base.batch_size, c.base.eval_batch_size = 32, 16
    c.base.criteria.grasp_per_class = 1
    c.networks = ("lenet300_100",)
    c.seeds = (0, 1)
    c.pretrain_epochs, c.short_epochs, c.long_epochs, c.finetune_epochs = 1, 1, 2, 1
    c.table_sparsities = (0.9,)
    c.curve_sparsities = (0.5, 0.9)
    c.table4_epochs = (0, 1, 2)
    c.curves_all_seeds = False
    c.experiments = ("paper",)  # the N:M rows have their own test (tests/test_nm.py)
    return c


@pytest.fixture(scope="module")
def serial_study(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("serial")
    return study.run_study(_tiny_config(), str(tmp_path)), tmp_path


def test_tiny_study_end_to_end(serial_study):
    res, tmp_path = serial_study
    for name in [
        "report.md",
        "results.json",
        "fig2_pretrained_vs_random.png",
        "fig3_criteria_accuracy.png",
        "fig4_overlap.png",
        "fig5_warmup.png",
    ]:
        assert os.path.getsize(tmp_path / name) > 0, name
    saved = json.load(open(tmp_path / "results.json"))
    methods = {r["method"] for r in saved["table1"]}
    assert methods == {
        "dense",
        "magnitude",
        "snip",
        "grasp",
        "random",
        "magnitude+finetune",
        "snip+train",
        "jackpot",
        "jackpot+finetune",
    }
    for row in saved["table1"]:
        assert set(row) >= {
            "network",
            "sparsity",
            "method",
            "epochs",
            "cost",
            "test_acc_mean",
            "test_acc_std",
            "seeds",
        }
        assert row["seeds"] == 2 and 0.0 <= row["test_acc_mean"] <= 1.0
    assert sorted(r["epochs"] for r in saved["table1"] if r["method"] == "jackpot") == [1, 2]
    # The dense row of both seeds is the pre-trained checkpoint's accuracy.
    dense = [r for r in saved["table1"] if r["method"] == "dense"][0]
    accs = [
        json.load(open(tmp_path / "lenet300_100" / f"seed{s}" / "pretrain" / "summary.json"))[
            "test_accuracy"
        ]
        for s in (0, 1)
    ]
    assert dense["test_acc_mean"] == pytest.approx(sum(accs) / 2)
    assert dense["test_acc_std"] == pytest.approx(abs(accs[0] - accs[1]) / 2**0.5)  # ddof=1
    assert dense["per_seed"]["test_acc"] == {"0": accs[0], "1": accs[1]}
    # Every row and paired difference recomputes from its per-seed values.
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import check_results

    errors, checked = check_results.check_file(str(tmp_path / "results.json"))
    assert errors == [] and checked > len(saved["table1"])
    names = {d["name"] for d in saved["differences"]}
    assert {
        "lenet300_100: jackpot@1 - dense",
        "lenet300_100: jackpot@2 - dense",
        "lenet300_100: jackpot+finetune - jackpot@1",
        "lenet300_100: pretrained - random at 90%",
    } <= names
    claim5 = next(c for c in saved["claims"] if c["claim"] == 5)
    assert "95% interval" in claim5["text"] and "over 2 seeds" in claim5["text"]
    ov = {(r["sparsity"], r["criterion"]): r["overlap_mean"] for r in saved["overlap"]}
    assert set(ov) == {(p, c) for p in (0.5, 0.9) for c in study.CRITERIA}
    # Two masks with sparsity p agree on at least 1 - 2(1 - p) of the weights.
    assert all(v >= 1 - 2 * (1 - p) - 1e-6 for (p, _), v in ov.items())
    assert {r["epochs"] for r in saved["table4"]} == {0, 1, 2}
    t4 = {r["epochs"]: r for r in saved["table4"]}
    assert t4[0]["overlap_with_magnitude_mean"] == 1.0
    assert {c["claim"] for c in saved["claims"]} == {1, 2, 3, 4, 5}
    report = open(tmp_path / "report.md").read()
    assert report.count("**Claim") == 5 and "Table 1 analogue" in report
    assert "sample standard deviation over seeds (ddof=1)" in report
    assert saved["run"]["commit"] and "dirty" in saved["run"] and saved["run"]["device"]
    # A rerun runs no piece again.
    again = study.run_study(_tiny_config(), str(tmp_path))
    assert again["run"]["pieces_run_this_invocation"] == 0
    # Both invocations are on record, and the report names them.
    assert [r["pieces_run_this_invocation"] for r in again["invocations"]] == [
        res["run"]["pieces_run_this_invocation"],
        0,
    ]
    assert "Invocation 1:" in open(tmp_path / "report.md").read()
    assert again["table1"] == res["table1"]


def test_parallel_workers_match_the_serial_study(serial_study, tmp_path):
    """Two worker processes share the pieces of one workdir; every piece runs exactly once and
    every number equals the serial run's piece (each piece is deterministic on the CPU). One
    seed of the two: half the pieces, each compared with its serial twin."""
    _, serial_dir = serial_study
    c = _tiny_config()
    c.seeds = (0,)
    c.workers = 2
    planner = study.Study(c, str(tmp_path), plan=True)
    study.experiments(planner, c)
    n_pieces = len(planner.plan)
    res = study.run_study(c, str(tmp_path))
    assert res["run"]["pieces_run_this_invocation"] == n_pieces > 10
    pieces = [os.path.relpath(t, tmp_path) for t in planner.plan]

    def numbers(path, root):
        out = {}
        for k, v in json.load(open(path)).items():
            if k == "wall_seconds":
                continue
            out[k] = v.replace(str(root), "<workdir>") if isinstance(v, str) else v
        return out

    for piece in pieces:
        assert numbers(tmp_path / piece, tmp_path) == numbers(serial_dir / piece, serial_dir), piece
    assert not list(tmp_path.glob("**/*.claim"))


def test_claim_is_exclusive_and_taken_over_from_a_dead_owner(tmp_path):
    target = str(tmp_path / "piece" / "summary.json")
    assert runner.claim(target)
    assert not runner.claim(target)  # held by this (live) process
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with open(target + ".claim", "w") as f:
        f.write(f"{socket.gethostname()} {dead.pid}")
    assert runner.claim(target)  # its owner is gone: taken over
    with open(target + ".claim") as f:
        assert f.read() == f"{socket.gethostname()} {os.getpid()}"


def test_plan_lists_each_piece_once_with_what_it_needs(tmp_path):
    c = _tiny_config()
    planner = study.Study(c, str(tmp_path), plan=True)
    study.experiments(planner, c)
    tasks = planner.plan
    pre = {
        s: str(tmp_path / "lenet300_100" / f"seed{s}" / "pretrain" / "summary.json")
        for s in c.seeds
    }
    assert all(pre[s] in tasks and tasks[pre[s]].needs == [] for s in c.seeds)
    for target, task in tasks.items():
        for need in task.needs:  # every prerequisite is itself planned
            assert need in tasks, (target, need)
    jf = [t for t in tasks.values() if "finetune_pretrained_jackpot" in t.target]
    assert len(jf) == len(c.seeds)
    for t in jf:
        assert any("search_pretrained_magnitude_p0.9_e1" in n for n in t.needs)
    # Nothing ran: no folder but the plan's targets' parents was touched.
    assert not list(tmp_path.glob("**/summary.json"))


def test_each_study_config_names_its_study_in_the_registry():
    """`python -m jackpot_jax.study` runs what the config's `study` field names."""
    from jackpot_jax.experiments import common, registry, sweep, vit_study

    expected = {
        "study_fashion_mnist.py": study.run_study,
        "sweep_search_fashion_mnist.py": sweep.run_sweep,
        "study_fashion_mnist_vit.py": vit_study.run_vit_study,
    }
    for name, run in expected.items():
        config = load_config(os.path.join(ROOT, "configs", name))
        _, chosen = common.study_of(config, registry.STUDIES, default="paper")
        assert chosen.run is run, name
    config = load_config(os.path.join(ROOT, "configs", "study_fashion_mnist.py"))
    del config["study"]  # a config without the field: the launcher's default
    assert common.study_of(config, registry.STUDIES, "sweep")[1].run is sweep.run_sweep


def test_the_command_names_an_unknown_study_in_one_error_line(tmp_path):
    config = os.path.join(ROOT, "configs", "study_fashion_mnist.py")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "jackpot_jax.study",
            f"--config={config}",
            "--config.study=vit_large",
            f"--workdir={tmp_path}",
        ],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: study='vit_large' is not a study; expected one of ['lm', 'paper', 'sweep', 'vit']"
    ]
    assert not os.listdir(tmp_path)  # nothing ran
