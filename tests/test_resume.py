"""Nothing lost: a workdir belongs to one config, damaged checkpoints fall back one step, a
cut-short metrics line is dropped, and a search killed at any of 10 places ends, once rerun,
with the masks of the uninterrupted run, having trained only the epochs after its newest
finished checkpoint."""

import glob
import json
import os
import shutil
import subprocess
import sys

import crash_hooks
import numpy as np
import pytest
from pipeline_helpers import CRASHPOINTS, ROOT, cli_overrides, pretrained_dir, tiny_config

from jackpot_jax import errors
from jackpot_jax.pipeline import resume, train

# Scores 1.0 / 0.999: masks flip in every epoch of these tiny searches, so equal final masks
# say something (with 0.95 a random-init LeNet-300-100 keeps its initial mask).
SEARCH = {"search.epochs": 3, "search.score_pruned": 0.999}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 3-epoch search (8 steps an epoch): (config, workdir)."""
    tmp = tmp_path_factory.mktemp("reference")
    config = tiny_config(**SEARCH)
    config.pretrained = pretrained_dir(tmp, config)
    train.run(config, str(tmp / "run"))
    return config, tmp / "run"


def _masks(workdir):
    with np.load(os.path.join(workdir, "jackpot.npz")) as z:
        return {k: z[k] for k in z.files if k.startswith("masks/")}


def _assert_same_masks(a, b):
    ma, mb = _masks(a), _masks(b)
    assert ma and ma.keys() == mb.keys()
    for k in ma:
        np.testing.assert_array_equal(ma[k], mb[k], err_msg=k)


def _epochs(workdir):
    return [json.loads(x)["epoch"] for x in open(os.path.join(workdir, "metrics.jsonl"))]


def test_reference_masks_move(reference):
    _, ref = reference
    summary = json.load(open(ref / "summary.json"))
    flips = [json.loads(x)["mask_flips"] for x in open(ref / "metrics.jsonl")]
    assert summary["overlap_with_init"] < 0.99 and all(f > 0 for f in flips), flips


# ------------------------------------------------------------------------------ the config


def test_another_config_is_refused_and_resume_false_moves_the_run_aside(reference, tmp_path):
    config, ref = reference
    work = tmp_path / "run"
    shutil.copytree(ref, work)
    before = {
        p: open(p, "rb").read()
        for p in glob.glob(f"{work}/**", recursive=True)
        if os.path.isfile(p)
    }
    lr = config.search.lr
    changed = tiny_config(**{**SEARCH, "search.lr": 2 * lr, "search.epochs": 4})
    changed.pretrained = config.pretrained
    with pytest.raises(errors.WorkdirError) as e:
        train.run(changed, str(work))
    msg = str(e.value)
    assert "search.epochs: 3 -> 4" in msg and f"search.lr: {lr} -> {2 * lr}" in msg
    assert "resume=False" in msg and "sparsity" not in msg
    after = {
        p: open(p, "rb").read()
        for p in glob.glob(f"{work}/**", recursive=True)
        if os.path.isfile(p)
    }
    assert after == before  # refused before touching anything
    changed.resume = False
    summary = train.run(changed, str(work))
    assert summary["epochs"] == 4 and _epochs(work) == [1, 2, 3, 4]
    aside = tmp_path / "run.old-1"  # the old run, whole, beside the new one
    assert json.load(open(aside / "config.json"))["search"]["epochs"] == 3
    assert _epochs(aside) == [1, 2, 3]
    _assert_same_masks(aside, ref)
    # The same command again resumes (resume=False is not part of what must match).
    changed.resume = True
    assert train.run(changed, str(work))["test_accuracy"] == summary["test_accuracy"]
    assert not os.path.exists(tmp_path / "run.old-2")


def test_damaged_config_json_is_named_and_resume_false_moves_it_aside(reference, tmp_path):
    config, ref = reference
    work = tmp_path / "run"
    shutil.copytree(ref, work)
    (work / "config.json").write_text('{"mode": "sea')
    with pytest.raises(errors.InputError, match=rf"{work}/config.json is not valid JSON"):
        train.run(config, str(work))
    config = tiny_config(**SEARCH, pretrained=config.pretrained, resume=False)
    train.run(config, str(work))
    assert (tmp_path / "run.old-1" / "config.json").read_text() == '{"mode": "sea'
    _assert_same_masks(work, ref)


def test_launch_options_are_not_compared():
    saved = {
        "search": {"lr": 0.1},
        "process_id": 0,
        "coordinator_address": "a:1",
        "data_workers": -1,
    }
    new = {"search": {"lr": 0.1}, "process_id": 1, "coordinator_address": "b:2", "data_workers": 2}
    assert resume.config_differences(saved, new) == []
    assert resume.config_differences(saved, {**new, "seed": 1}) == ["seed: '<unset>' -> 1"]


def test_workdir_holding_files_of_no_run_is_refused(tmp_path):
    config = tiny_config(**SEARCH)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mine.txt").write_text("not the run's")
    with pytest.raises(errors.WorkdirError, match="holds model but no config.json"):
        train.run(config, str(tmp_path))
    assert (tmp_path / "model" / "mine.txt").read_text() == "not the run's"
    assert not (tmp_path / "config.json").exists()


# ------------------------------------------------------------------------- damaged files


def _damage_data(step_dir):
    shutil.rmtree(os.path.join(step_dir, "default", "d"))  # as a half-finished delete


def _damage_manifest(step_dir):
    with open(os.path.join(step_dir, "default", "manifest.ocdbt"), "r+b") as f:
        f.truncate(20)  # cut short


def _damage_metadata(step_dir):
    with open(os.path.join(step_dir, "default", "_METADATA"), "w") as f:
        f.write('{"tree_metadata": {"0"')  # JSON cut short


@pytest.mark.parametrize("damage", [_damage_data, _damage_manifest, _damage_metadata])
def test_damaged_newest_checkpoint_falls_back_to_the_one_before(reference, tmp_path, damage, capfd):
    config, ref = reference
    work = tmp_path / "run"
    shutil.copytree(ref, work)
    assert sorted(os.listdir(work / "checkpoints")) == ["2", "3"]
    damage(str(work / "checkpoints" / "3"))
    capfd.readouterr()
    train.run(config, str(work))
    out, err = capfd.readouterr()
    said = [ln for ln in out.splitlines() if " is damaged " in ln]
    assert len(said) == 1 and f"{work}/checkpoints/3 is damaged" in said[0], out
    assert "Traceback" not in err and "never retrieved" not in err, err
    assert f"resuming {work} from epoch 2" in out
    _assert_same_masks(work, ref)
    assert _epochs(work) == [1, 2, 3]


def test_every_checkpoint_damaged_is_an_error(reference, tmp_path):
    config, ref = reference
    work = tmp_path / "run"
    shutil.copytree(ref, work)
    for step in ("2", "3"):
        _damage_data(str(work / "checkpoints" / step))
    with pytest.raises(
        errors.InputError, match=r"every checkpoint .* is damaged \(steps \[2, 3\]\)"
    ):
        train.run(config, str(work))


def test_checkpoint_of_other_shapes_is_a_clear_error(reference, tmp_path):
    """A checkpoint written for other shapes is never restored into this run (nor skipped)."""
    config, ref = reference
    other = tiny_config(**{**SEARCH, "dataset": "synthetic:cifar10", "search.epochs": 1})
    other.pretrained = pretrained_dir(tmp_path, other)
    work = tmp_path / "cifar"
    train.run(other, str(work))
    shutil.rmtree(work / "checkpoints")
    shutil.copytree(ref / "checkpoints", work / "checkpoints")  # the 28x28x1 run's state
    with pytest.raises(errors.InputError) as e:
        train.run(other, str(work))
    msg = str(e.value)
    assert f"checkpoint {work}/checkpoints/3 does not fit" in msg
    assert "saved (784, 300) float32, expected (3072, 300) float32" in msg


def test_cut_short_metrics_line_is_dropped_and_resume_works(reference, tmp_path, capfd):
    """A kill while appending epoch 3's line, before its checkpoint was written."""
    config, ref = reference
    work = tmp_path / "run"
    shutil.copytree(ref, work)
    shutil.rmtree(work / "checkpoints" / "3")
    text = open(work / "metrics.jsonl").read()
    with open(work / "metrics.jsonl", "w") as f:
        f.write(text[:-25])  # epoch 3's line, cut
    capfd.readouterr()
    train.run(config, str(work))
    out = capfd.readouterr().out
    assert "metrics.jsonl: dropping its last line, cut short" in out
    assert _epochs(work) == [1, 2, 3]
    _assert_same_masks(work, ref)


def test_bad_metrics_line_in_the_middle_names_file_and_line(reference, tmp_path):
    config, ref = reference
    work = tmp_path / "run"
    shutil.copytree(ref, work)
    lines = open(work / "metrics.jsonl").readlines()
    lines[1] = "{garbage\n"
    open(work / "metrics.jsonl", "w").writelines(lines)
    with pytest.raises(errors.InputError, match=r"metrics.jsonl:2: not a metrics record"):
        train.run(config, str(work))


# ------------------------------------------------------------------------ the kill test

# 3 epochs x 8 steps: kills during steps (first, mid-epoch, after a save, the last step),
# right after each checkpoint save is issued (its async write in flight) and around the
# final export (before jackpot.npz, between it and model/, before summary.json).
KILLS = [
    "step:1",
    "step:5",
    "step:13",
    "step:24",
    "save:1",
    "save:2",
    "save:3",
    "export:1",
    "export:2",
    "export:3",
]


# The epoch each kill must resume from at least: a save's write is in flight until the next
# save is issued (which waits for it) or the run closes (export: training had finished).
RESUMED_AT_LEAST = {
    "step:1": 0,
    "step:5": 0,
    "step:13": 0,
    "step:24": 1,
    "save:1": 0,
    "save:2": 1,
    "save:3": 2,
    "export:1": 3,
    "export:2": 3,
    "export:3": 3,
}
STEPS_PER_EPOCH, EPOCHS = 8, 3


def _finished_checkpoints(workdir):
    """Epochs whose checkpoint was completely written (orbax renames a step's temporary
    directory to its number once the write is done)."""
    d = os.path.join(workdir, "checkpoints")
    return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


@pytest.mark.parametrize("kill_at", KILLS)
def test_killed_search_resumes_to_the_same_masks(reference, tmp_path, kill_at, capfd, monkeypatch):
    config, ref = reference
    work = tmp_path / "run"
    args = cli_overrides(
        config,
        [
            "dataset",
            "train_subset",
            "test_subset",
            "val_examples",
            "batch_size",
            "search.batch_size",
            "eval_batch_size",
            "pretrain.epochs",
            "search.epochs",
            "search.score_pruned",
            "pretrained",
        ],
    )
    cmd = [
        sys.executable,
        "-m",
        "jackpot_jax.main",
        "--config",
        os.path.join(ROOT, "configs", "fashion_mnist_lenet300.py"),
        "--workdir",
        str(work),
        *args,
    ]
    # The launcher adds no XLA flags: the CLI's epochs round as the reference's (run here).
    env = dict(
        os.environ,
        JACKPOT_JAX_KILL_AT=kill_at,
        JACKPOT_JAX_XLA_FLAGS="0",
        PYTHONPATH=os.pathsep.join([ROOT, CRASHPOINTS, os.environ.get("PYTHONPATH", "")]),
    )
    killed = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]  # SIGKILL, where asked
    assert not (work / "summary.json").exists()
    # What the rerun must resume from: the newest completely written checkpoint.
    saved = _finished_checkpoints(work)
    resume_from = max(saved, default=0)
    assert resume_from >= RESUMED_AT_LEAST[kill_at], (kill_at, saved)
    logged = open(work / "metrics.jsonl").readlines()
    steps = []  # the rerun's training steps, counted where the loop would kill
    crash_hooks.install(lambda event: steps.append(event == "step"), monkeypatch.setattr)
    capfd.readouterr()
    summary = train.run(config, str(work))  # the same config, rerun
    out = capfd.readouterr().out
    if resume_from:
        assert f"resuming {work} from epoch {resume_from}" in out, out
    else:
        assert "resuming" not in out, out
    # Only the epochs after the checkpoint were trained again; the lines of those before it
    # are the killed run's, untouched.
    assert sum(steps) == STEPS_PER_EPOCH * (EPOCHS - resume_from), (kill_at, resume_from)
    assert open(work / "metrics.jsonl").readlines()[:resume_from] == logged[:resume_from]
    _assert_same_masks(work, ref)
    assert _epochs(work) == [1, 2, 3]
    ref_summary = json.load(open(ref / "summary.json"))
    assert summary["test_accuracy"] == ref_summary["test_accuracy"]
    with np.load(ref / "jackpot.npz") as a, np.load(work / "jackpot.npz") as b:
        for k in a.files:
            if k != "meta":
                np.testing.assert_array_equal(a[k], b[k], err_msg=k)
