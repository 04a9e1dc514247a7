"""The ViT study end to end on a tiny ViT and synthetic data: the selection reads validation
only, gives both methods as many runs over grids of one shape and picks the best recipe; the
final rows (the controls included: dense + more epochs, the search over a random ViT, a seed
sharing another's dense model) are the pieces' own numbers; the per-layer sparsities and the
sparsity over all prunable weights are those of the saved masks counted with numpy; every
table recomputes and the report's generated blocks are `generated_tables`'; a rerun runs
nothing."""

import json
import os
import sys

import numpy as np
import pytest
from pipeline_helpers import ROOT, load_config

from jackpot_jax.errors import ConfigError
from jackpot_jax.experiments import common, tables, vit_pieces, vit_report, vit_study


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
    # The study's 7x7 patches (a 4x4 grid): at 2:4 the patch embedding's 49 inputs do not fit
    # the pattern, as in the real study.
    c.pretrain_epochs, c.search_epochs, c.tune_epochs, c.dense_more_epochs = 1, 1, 1, 1
    # Grids of one shape (1 x 2 x 1): 2 selection runs per method.
    c.jackpot_levels.optimizer = ("adamw/0.01",)
    c.jackpot_levels.distribution = ("uniform", "global_magnitude")
    c.jackpot_levels.score_pruned = (0.95,)
    c.wt_levels.optimizer = ("adamw/0.001",)
    c.wt_levels.weight_decay = (0.0, 0.05)
    c.wt_levels.batch_size = (32,)
    c.wt_start.batch_size = 32
    c.final_seeds = (1, 2)
    c.dense_of = ((2, 1),)  # seed 2 searches from seed 1's dense model
    c.sparsities = (0.8,)
    c.patterns = ("2:4",)
    c.random_init_levels = (0.8,)
    c.global_budget_level = 0.0
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
    vit_study.check_config(c)
    assert c.base.train_subset == 0 and len(c.final_seeds) >= 3
    # The jackpot starts from the main config's recipe (what a user gets).
    main = load_config(os.path.join(ROOT, "configs", "fashion_mnist_vit.py"))
    assert main.model == c.network and main.search.distribution != "global_magnitude"
    assert c.jackpot_start.distribution == main.search.distribution
    assert common.parse_optimizer(c.jackpot_start.optimizer) == (
        main.search.optimizer,
        main.search.lr,
    )
    assert c.jackpot_start.score_pruned == main.search.score_pruned
    # Weight tuning's grid has a point beyond the previous study's choice (AdamW 1e-3, wd 0).
    lrs = [common.parse_optimizer(x) for x in c.wt_levels.optimizer]
    assert max(lr for o, lr in lrs if o == "adamw") > 1e-3
    assert max(c.wt_levels.weight_decay) > 0


def test_unequal_grids_and_a_shared_selection_seed_are_refused():
    c = _tiny_config()
    c.wt_levels.batch_size = (32, 64)
    with pytest.raises(ConfigError, match=r"jackpot \(1, 2, 1\).*weight tuning \(1, 2, 2\)"):
        vit_study.check_config(c)
    c = _tiny_config()
    c.dense_of = ((2, 0),)
    with pytest.raises(ConfigError, match="dense_of entry \\(2, 0\\)"):
        vit_study.check_config(c)


def test_weight_tuning_recipes_reach_the_run_config(tmp_path):
    # Planning only: the overrides a weight-tuning run gets from its recipe.
    c = _tiny_config()
    st = vit_pieces.VitStudy(c, str(tmp_path), plan=True)
    recipe = {"optimizer": "sgd/0.03", "weight_decay": 0.2, "batch_size": 64, "distribution": "erk"}
    assert st.recipe_run("weight_tuning", 1, recipe, 0.5) is None
    # (the test's own folder name contains "weight_tuning": match the piece folder only)
    folder = lambda t: os.path.basename(os.path.dirname(t.target))  # noqa: E731
    task = next(t for t in st.plan.values() if folder(t).startswith("weight_tuning"))
    run = st.cfg("vit_fmnist", 1, **task.call[2])
    assert (run.finetune.optimizer, run.finetune.lr, run.finetune.weight_decay) == (
        "sgd",
        0.03,
        0.2,
    )
    assert (run.batch_size, run.search.distribution, run.finetune.mask) == (64, "erk", "magnitude")
    assert "wd0.2_b64_erk_p0.5" in task.target


def test_edges_and_sparsity_over_prunable_by_hand():
    levels = {"optimizer": ["sgd/0.4", "adamw/0.003", "adamw/0.01"], "weight_decay": [0.0, 0.2]}
    got = vit_study.edges({"optimizer": "adamw/0.01", "weight_decay": 0.05}, levels)
    assert got == ["optimizer: adamw lr 0.01 is the largest adamw lr tried"]
    assert vit_study.edges({"optimizer": "sgd/0.4", "weight_decay": 0.0}, levels) == [
        "weight_decay: 0 is the smallest tried"
    ]
    # 4 + 6 prunable weights, the second kernel unmasked (kept): 2 pruned of 10.
    params = {"a": {"kernel": np.ones((2, 2))}, "b": {"kernel": np.ones((2, 3))}, "c": {"bias": 1}}
    masks = {"a": {"kernel": np.array([[1, 0], [0, 1]])}, "b": {"kernel": None}}
    f = lambda path, leaf: path.endswith("kernel")  # noqa: E731
    assert vit_pieces.sparsity_over_prunable(params, masks, f) == pytest.approx(0.2)


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

    # Selection: validation only, as many runs for each method (1 + 1 + 0 over a 1 x 2 x 1
    # grid in one round), and the selected recipe has the highest value seen.
    for kind in ("jackpot", "weight_tuning"):
        seen = [r for r in saved["sweep"] if r["method"] == kind]
        assert len(seen) == 2 == saved["selection_budget"][kind]["runs"], kind
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

    def row(level, method):
        return next(r for r in saved["rows"] if r["level"] == level and r["method"] == method)

    def test_acc(seed, folder):
        return json.load(open(tmp / net / f"seed{seed}" / folder / "summary.json"))["test_accuracy"]

    for level, lname in (("0.8", "p0.8"), ("2:4", "nm2of4")):
        for s in (1, 2):
            got = row(level, "jackpot")["per_seed"]["test_acc"][str(s)]
            assert got == test_acc(s, f"jackpot_{tag}_{lname}_e1")
    for s in (1, 2):
        # The controls: the search over a random ViT, and the dense model 1 epoch more.
        got = row("0.8", "jackpot_random_init")["per_seed"]["test_acc"][str(s)]
        assert got == test_acc(s, f"jackpot_randominit_{tag}_p0.8_e1")
        got = row("0.8", "dense+more_epochs")["per_seed"]["test_acc"][str(s)]
        assert got == test_acc(s, "dense_more_e1")
        # Seed 2 shares seed 1's dense model: its dense row is seed 1's checkpoint.
        dense_seed = {2: 1}.get(s, s)
        assert row("0.8", "dense")["per_seed"]["test_acc"][str(s)] == test_acc(
            dense_seed, "pretrain"
        )
    assert not (tmp / net / "seed2" / "pretrain").exists()
    # dense + more epochs: nothing pruned, trained at the pretraining lr.
    more = tmp / net / "seed1" / "dense_more_e1"
    assert set(json.load(open(more / "summary.json"))["per_layer_sparsity"].values()) == {0.0}
    lr = json.loads(open(more / "metrics.jsonl").readline())["learning_rate"]
    assert lr == pytest.approx(_tiny_config().base.pretrain.lr)
    rand = json.load(
        open(tmp / net / "seed1" / f"jackpot_randominit_{tag}_p0.8_e1" / "summary.json")
    )
    assert rand["weights"] == "random" and rand["pretrained_checkpoint"] is None
    assert not any(
        r["level"] == "2:4" and r["method"] == "jackpot_random_init" for r in saved["rows"]
    )
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
    # Within one weight per layer of the target (each layer's count is rounded).
    assert 1 - kept / total == pytest.approx(0.8, abs=len(mask_keys) / total)
    assert row("0.8", "jackpot")["per_seed"]["sparsity_all"]["1"] == pytest.approx(1 - kept / total)
    # At 2:4 the sparsity over all prunable weights counts every prunable kernel of the saved
    # parameters (the classifier excluded), a kernel without a mask as kept: below 50%.
    npz = np.load(tmp / net / "seed1" / f"jackpot_{tag}_nm2of4_e1" / "jackpot.npz")
    kernels = [
        k[len("params/") :]
        for k in npz.files
        if k.startswith("params/") and k.endswith("/kernel") and "classifier" not in k
    ]
    total = sum(npz["params/" + k].size for k in kernels)
    pruned = sum(
        npz["masks/" + k].size - npz["masks/" + k].sum()
        for k in kernels
        if "masks/" + k in npz.files
    )
    # The pattern does not fit the patch embedding's 49 inputs: its mask keeps everything.
    assert npz["masks/patch_embed/kernel"].all()
    all_2of4 = row("2:4", "jackpot")["per_seed"]["sparsity_all"]["1"]
    assert all_2of4 == pytest.approx(pruned / total) and all_2of4 < 0.5
    # Every prunable ViT kernel is typed, and the head is not among them.
    typed = {r["module"] for r in saved["layers"]}
    assert typed == set(vit_pieces.MODULE_TYPES)
    # No extra `global` budget rows: global_budget_level is 0 here.
    assert not any("global" in r["level"] for r in saved["rows"])

    # Every row and paired difference recomputes from its per-seed values.
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import check_results

    errors, checked = check_results.check_file(str(tmp / "results.json"))
    assert errors == [] and checked > len(saved["rows"])
    names = {d["name"] for d in saved["differences"]}
    assert {f"0.8: jackpot - {other}" for other in vit_study.OTHERS} <= names
    report = open(tmp / "report.md").read()
    blocks = tables.generated_blocks(report)
    want = vit_report.generated_tables(saved)
    assert set(blocks) == set(want) and "vit/test_accuracy" in blocks
    for name, content in want.items():
        assert blocks[name] == content.rstrip("\n") + "\n", name
    assert "Does pre-training matter?" in blocks["vit/answers"]
    assert saved["run"]["commit"] and "dirty" in saved["run"]

    # A rerun runs nothing again and gives the same rows.
    again = vit_study.run_vit_study(_tiny_config(), str(tmp))
    assert again["run"]["pieces_run_this_invocation"] == 0
    assert again["rows"] == res["rows"]
