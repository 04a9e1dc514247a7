"""tools/check_results.py: a results.json written here by hand passes, each tampered copy
fails naming what is wrong, and the committed docs/results/ pass."""

import copy
import json
import math
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import check_results  # noqa: E402

from jackpot_jax.experiments import stats  # noqa: E402

# Hand-computed: per-seed 0.5 and 0.7 -> mean 0.6, sample std sqrt(0.02) = 0.1414...;
# a - b in points: 10 and 30 -> mean 20, std sqrt(200) = 14.142..., 95% interval
# 20 -+ t(1) 12.706205 * 14.142 / sqrt(2) = 20 -+ 127.06205.
STD = math.sqrt(0.02)
HALF = 12.706205 * math.sqrt(200) / math.sqrt(2)


def _results():
    row = {
        "network": "n",
        "method": "jackpot",
        "epochs": 1,
        "test_acc_mean": 0.6,
        "test_acc_std": STD,
        "seeds": 2,
        "per_seed": {"test_acc": {"0": 0.5, "1": 0.7}},
    }
    base = dict(
        row,
        method="magnitude",
        test_acc_mean=0.4,
        test_acc_std=0.0,
        per_seed={"test_acc": {"0": 0.4, "1": 0.4}},
    )
    curve = {
        "network": "n",
        "init": "random",
        "val_acc_mean": [0.25, 0.5],
        "seeds": 2,
        "per_seed": {"val_acc": {"0": [0.2, 0.4], "1": [0.3, 0.6]}},
    }
    diff = {
        "name": "jackpot - magnitude",
        "a": {"table": "table1", "match": {"network": "n", "method": "jackpot"}},
        "b": {"table": "table1", "match": {"network": "n", "method": "magnitude"}},
        "quantity": "test_acc",
        "scale": 100.0,
        "per_seed": {"0": 10.0, "1": 30.0},
        "mean": 20.0,
        "std": math.sqrt(200),
        "seeds": 2,
        "ci95": [20 - HALF, 20 + HALF],
        "within_noise": True,
    }
    return {
        "table1": [row, base],
        "fig5": [curve],
        "differences": [diff],
        "assessment": [{"paired": copy.deepcopy(diff)}],
    }


def _write(tmp_path, res, report="# report\n"):
    (tmp_path / "results.json").write_text(json.dumps(res))
    (tmp_path / "report.md").write_text(report)
    return str(tmp_path / "results.json")


def test_a_correct_file_passes(tmp_path, capsys):
    path = _write(tmp_path, _results())
    errors, checked = check_results.check_file(path)
    assert errors == [] and checked == 5  # 3 rows, 2 copies of the difference
    assert check_results.main([str(tmp_path)]) == 0
    assert "ok: " in capsys.readouterr().out


@pytest.mark.parametrize(
    "tamper, message",
    [
        (lambda r: r["table1"][0].update(test_acc_mean=0.61), "test_acc_mean 0.61 != recomputed"),
        (  # the population std (ddof=0) of 0.5 and 0.7
            lambda r: r["table1"][0].update(test_acc_std=0.1),
            "test_acc_std 0.1 != recomputed sample std",
        ),
        (lambda r: r["table1"][0].update(seeds=3), "seeds 3 != 2"),
        (lambda r: r["fig5"][0]["val_acc_mean"].__setitem__(1, 0.55), "val_acc_mean"),
        (lambda r: r["table1"][1]["per_seed"]["test_acc"].update({"1": 0.41}), "test_acc_mean"),
        (lambda r: r["differences"][0].update(mean=21.0), "mean 21.0 != recomputed"),
        (lambda r: r["differences"][0].update(within_noise=False), "within_noise False"),
        (lambda r: r["differences"][0]["ci95"].__setitem__(0, -100.0), "ci95"),
        (lambda r: r["assessment"][0]["paired"].update(std=1.0), "std 1.0 != recomputed"),
        (
            lambda r: r["differences"][0]["b"]["match"].update(method="snip"),
            "not (uniquely) in the tables",
        ),
    ],
)
def test_a_tampered_file_fails(tmp_path, capsys, tamper, message):
    res = _results()
    tamper(res)
    errors, _ = check_results.check_file(_write(tmp_path, res))
    assert errors and any(message in e for e in errors), errors
    assert check_results.main([str(tmp_path)]) == 1
    assert "MISMATCH" in capsys.readouterr().out


def test_a_table_without_per_seed_values_needs_the_reports_mark(tmp_path):
    res = _results()
    for row in res["table1"]:
        del row["per_seed"]
    res["differences"], res["assessment"] = [], []
    errors, _ = check_results.check_file(_write(tmp_path, res))
    assert len(errors) == 1 and "table `table1`" in errors[0]
    marked = "Tables `table1`: no raw logs / no per-seed values; kept as written.\n"
    errors, checked = check_results.check_file(_write(tmp_path, res, marked))
    assert errors == [] and checked == 1  # fig5 still recomputed
    # The mark names the table: a mark for another table does not count.
    errors, _ = check_results.check_file(_write(tmp_path, res, marked.replace("table1", "fig2")))
    assert errors


def test_t_quantiles_match_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 5, 10, 29, 30, 31, 45, 100, 1000):
        assert stats.t975(df) == pytest.approx(scipy_stats.t.ppf(0.975, df), abs=2e-6), df
    with pytest.raises(ValueError, match="df=0"):
        stats.t975(0)


def test_the_committed_results_pass(capsys):
    assert check_results.main([os.path.join(ROOT, "docs", "results")]) == 0, capsys.readouterr()


def _copy_tree(tmp_path):
    """The files the checker reads, copied: README, benchmarks README and JSONs, docs/results."""
    import shutil

    root = tmp_path / "repo"
    shutil.copytree(os.path.join(ROOT, "docs", "results"), root / "docs" / "results")
    (root / "benchmarks" / "results").mkdir(parents=True)
    for name in os.listdir(os.path.join(ROOT, "benchmarks", "results")):
        if name.endswith(".json"):  # every committed JSON a generated table may read
            shutil.copy(
                os.path.join(ROOT, "benchmarks", "results", name), root / "benchmarks" / "results"
            )
    shutil.copy(os.path.join(ROOT, "README.md"), root / "README.md")
    shutil.copy(os.path.join(ROOT, "benchmarks", "README.md"), root / "benchmarks" / "README.md")
    return root


def _run(root):
    return check_results.main(["--root", str(root), str(root / "docs" / "results")])


def _bump(path, old, new):
    text = path.read_text()
    assert text.count(old) >= 1, old
    path.write_text(text.replace(old, new, 1))


def test_tampered_copies_fail(tmp_path, capsys):
    root = _copy_tree(tmp_path)
    assert _run(root) == 0, capsys.readouterr().out
    capsys.readouterr()

    # One number +0.1 in a report's generated table.
    report = root / "docs" / "results" / "fashion_mnist" / "nm" / "report.md"
    _bump(report, "| 91.13 ± 0.05 |", "| 91.23 ± 0.05 |")
    assert _run(root) == 1
    out = capsys.readouterr().out
    assert (
        "block 'nm/nm' differs" in out and "+| lenet5 | 2:4 | 50% | jackpot | 10(S) | 91.13" in out
    )
    _bump(report, "| 91.23 ± 0.05 |", "| 91.13 ± 0.05 |")

    # One number +0.1 in the README.
    _bump(root / "README.md", "| 90.66 |", "| 90.76 |")
    assert _run(root) == 1
    assert "block 'readme/lenet' differs" in capsys.readouterr().out
    _bump(root / "README.md", "| 90.76 |", "| 90.66 |")
    assert _run(root) == 0
    capsys.readouterr()

    # One per-seed value changed, its mean and std regenerated and every table rewritten:
    # only the raw log can tell.
    path = root / "docs" / "results" / "fashion_mnist" / "nm" / "results.json"
    res = json.loads(path.read_text())
    row = res["nm"][2]
    row["per_seed"]["test_acc"]["0"] += 0.001
    m, s, n = stats.mean_std(row["per_seed"]["test_acc"].values())
    row.update(test_acc_mean=m, test_acc_std=s, seeds=n)
    path.write_text(json.dumps(res))
    check_results.check_blocks(str(root), write=True)
    capsys.readouterr()
    assert check_results.check_blocks(str(root))[0] == []
    assert check_results.check_file(str(path))[0] == []  # consistent with itself
    assert _run(root) == 1
    out = capsys.readouterr().out
    assert "nm[2]" in out and "seed 0: test_acc" in out and "in the log" in out


def test_parse_log_pairs_each_summary_with_its_piece():
    log = "\n".join(
        [
            "[study] n seed1 a ...",
            "[study] n seed2 b ...",
            "-" * 12,
            "model  n",
            "seed   2",
            "test_accuracy  0.5000",
            "-" * 12,
            "-" * 12,
            "model  n",
            "seed   1",
            "test_accuracy  0.2500",
            "-" * 12,
            "[study] n seed1 a done in 3s",
            "[study] n seed2 b done in 4s",
        ]
    )
    got = check_results.parse_log(log)
    assert got[("n", 1, "a")]["test_accuracy"] == "0.2500"
    assert got[("n", 2, "b")]["test_accuracy"] == "0.5000"
