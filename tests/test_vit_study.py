"""The ViT study end to end on a tiny ViT and synthetic data: the selection reads validation
only and picks the best recipe, the final rows are the pieces' own numbers, the per-layer
sparsities are those of the saved masks, every table recomputes, a rerun runs nothing."""

import json
import os
import sys

import numpy as np
import pytest
from pipeline_helpers import ROOT, load_config

from jackpot_jax.experiments import common, vit_pieces, vit_study


def _study_config():
    return load_config(os.path.join(ROOT, "configs", "study_fashion_mnist_vit.py"))


def _tiny_config():
    c = _study_config()
    b = c.base
    b.dataset = "synthetic:fashion_mnist"
    b.train_subset, b.test_subset, b.val_examples = 96, 32, 32
    b.batch_size, b.eval_batch_size = 32, 32
    b.search.batch_size = b.finetune.batch_size = 32
    b.criteria.grasp_per_class = 1
    b.model_options.patch_size = 14  # a 2x2 grid: 5 tokens
    c.pretrain_epochs, c.search_epochs, c.tune_epochs = 1, 1, 1
    c.jackpot_levels.optimizer = ("sgd/0.1", "adamw/0.01")
    c.jackpot_levels.distribution = ("global_magnitude", "uniform")
    c.jackpot_levels.score_pruned = (0.95,)
    c.wt_levels.optimizer = ("adamw/0.0001",)
    c.wt_start.optimizer = "adamw/0.0001"
    c.final_seeds = (1, 2)
    c.sparsities = (0.8,)
    c.patterns = ("2:4",)
    c.global_budget_level = 0.8
    c.workers = 1
    return c


def test_module_of_by_hand():
    assert vit_pieces.module_of("patch_embed/kernel") == ("patch_embed", 0)
    assert vit_pieces.module_of("blocks_0/attn/query/kernel") == ("query", 1)
    assert vit_pieces.module_of("blocks_3/attn/out/kernel") == ("attn_out", 4)
    assert vit_pieces.module_of("blocks_11/mlp/fc2/kernel") == ("mlp_fc2", 12)
    assert vit_pieces.module_of("blocks_0/attn/query/bias") is None
    assert vit_pieces.module_of("classifier/kernel") is None
    assert common.parse_optimizer("adamw/0.003") == ("adamw", 0.003)
    with pytest.raises(ValueError, match="'adamw'.*<sgd\\|adamw>/<lr>"):
        common.parse_optimizer("adamw")


def test_the_study_config_is_valid():
    c = _study_config()
    for kind in ("jackpot", "wt"):
        start, levels = c[f"{kind}_start"], c[f"{kind}_levels"]
        for f in c[f"{kind}_factors"]:
            assert start[f] in levels[f], (kind, f)
    assert c.select_seed not in c.final_seeds


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vit_study")
    return vit_study.run_vit_study(_tiny_config(), str(tmp)), tmp


def test_tiny_vit_study_end_to_end(tiny_study):
    res, tmp = tiny_study
    for name in ("report.md", "results.json", "module_sparsity.png"):
        assert os.path.getsize(tmp / name) > 0, name
    saved = json.load(open(tmp / "results.json"))
    net = "vit_fmnist"

    # Selection: validation only, and the selected recipe has the highest value seen.
    for kind in ("jackpot", "weight_tuning"):
        seen = [r for r in saved["sweep"] if r["method"] == kind]
        best = max(r["val_accuracy"] for r in seen)
        chosen = [r for r in seen if r["selected"]]
        assert len(chosen) == 1 and chosen[0]["val_accuracy"] == best
    seed0 = tmp / net / "seed0"
    for folder in os.listdir(seed0):
        summary = seed0 / folder / "summary.json"
        if summary.exists():
            got = json.load(open(summary))
            for key in ("test_accuracy", "dense_test_accuracy", "init_mask_test_accuracy"):
                assert got.get(key) is None, (folder, key)  # never evaluated
    # The baseline's magnitude mask uses the selected jackpot's budget.
    sel = saved["selected"]
    assert sel["weight_tuning"]["distribution"] == sel["jackpot"]["distribution"]

    # Final rows are the pieces' own test accuracies, seed by seed.
    tag = vit_pieces.recipe_tag("jackpot", sel["jackpot"])
    for level, lname in (("0.8", "p0.8"), ("2:4", "nm2of4")):
        row = next(r for r in saved["rows"] if r["level"] == level and r["method"] == "jackpot")
        for s in (1, 2):
            summary = tmp / net / f"seed{s}" / f"jackpot_{tag}_{lname}_e1" / "summary.json"
            assert row["per_seed"]["test_acc"][str(s)] == json.load(open(summary))["test_accuracy"]
    nm = next(r for r in saved["rows"] if r["level"] == "2:4" and r["method"] == "jackpot")
    assert nm["pattern_satisfied"] is True
    methods = {r["method"] for r in saved["rows"] if r["level"] == "0.8"}
    assert methods == set(vit_study.METHODS)

    # Per-layer pruned fractions are those of the saved jackpot masks (numpy, from the file).
    npz = np.load(tmp / net / "seed1" / f"jackpot_{tag}_p0.8_e1" / "jackpot.npz")
    mask_keys = [k for k in npz.files if k.startswith("masks/")]
    assert mask_keys
    layers = {
        r["layer"]: r["per_seed"]["pruned"]["1"]
        for r in saved["layers"]
        if r["level"] == "0.8" and r["mask"] == "jackpot"
    }
    total = kept = 0
    for k in mask_keys:
        m = npz[k]
        layer = k[len("masks/") :]
        assert layers[layer] == pytest.approx(1 - m.mean()), layer
        total, kept = total + m.size, kept + m.sum()
    assert 1 - kept / total == pytest.approx(0.8, abs=1.5 / total)
    # Every prunable ViT kernel is typed, and the head is not among them.
    typed = {r["module"] for r in saved["layers"]}
    assert typed == set(vit_pieces.MODULE_TYPES)
    # The extra `global` budget rows exist when another budget was selected.
    if sel["jackpot"]["distribution"] != "global":
        assert any(r["level"] == "0.8 global" for r in saved["rows"])

    # Every row and paired difference recomputes from its per-seed values.
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import check_results

    errors, checked = check_results.check_file(str(tmp / "results.json"))
    assert errors == [] and checked > len(saved["rows"])
    names = {d["name"] for d in saved["differences"]}
    assert {"0.8: jackpot - dense", "0.8: jackpot - magnitude+weight_tuning"} <= names
    report = open(tmp / "report.md").read()
    assert "Within 0.5 points of dense" in report and "95% interval" in report
    assert saved["run"]["commit"] and "dirty" in saved["run"]

    # A rerun runs nothing again and gives the same rows.
    again = vit_study.run_vit_study(_tiny_config(), str(tmp))
    assert again["run"]["pieces_run_this_invocation"] == 0
    assert again["rows"] == res["rows"]
