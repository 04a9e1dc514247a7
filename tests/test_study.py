"""A tiny study end to end: every piece runs, the report, plots and results.json appear, a
rerun reads the pieces back instead of running them again."""

import json
import os

import pytest

from jackpot_jax import study

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny_config():
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "study_cfg", os.path.join(ROOT, "configs", "study_fashion_mnist.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
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
    return c


def test_tiny_study_end_to_end(tmp_path):
    res = study.run_study(_tiny_config(), str(tmp_path))
    for name in ["report.md", "results.json", "fig2_pretrained_vs_random.png",
                 "fig3_criteria_accuracy.png", "fig4_overlap.png", "fig5_warmup.png"]:
        assert os.path.getsize(tmp_path / name) > 0, name
    saved = json.load(open(tmp_path / "results.json"))
    methods = {r["method"] for r in saved["table1"]}
    assert methods == {"dense", "magnitude", "snip", "grasp", "random", "magnitude+finetune",
                       "snip+train", "jackpot", "jackpot+finetune"}
    for row in saved["table1"]:
        assert set(row) >= {"network", "sparsity", "method", "epochs", "cost", "test_acc_mean",
                            "test_acc_std", "seeds"}
        assert row["seeds"] == 2 and 0.0 <= row["test_acc_mean"] <= 1.0
    assert sorted(r["epochs"] for r in saved["table1"] if r["method"] == "jackpot") == [1, 2]
    # The dense row of both seeds is the pre-trained checkpoint's accuracy.
    dense = [r for r in saved["table1"] if r["method"] == "dense"][0]
    accs = [json.load(open(tmp_path / "lenet300_100" / f"seed{s}" / "pretrain" / "summary.json"))
            ["test_accuracy"] for s in (0, 1)]
    assert dense["test_acc_mean"] == pytest.approx(sum(accs) / 2)
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
    # A rerun runs no piece again.
    again = study.run_study(_tiny_config(), str(tmp_path))
    assert again["run"]["pieces_run_this_invocation"] == 0
    assert again["table1"] == res["table1"]
