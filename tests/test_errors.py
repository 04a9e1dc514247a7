"""Nothing trusted blindly: every bad input is one clear error naming the file, key or value
(no traceback from the CLI or the converter), nothing is overwritten unasked, and a run whose
loss or scores stop being finite stops with the epoch and step and its last good checkpoint."""

import ast
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from pipeline_helpers import ROOT, cli, pretrained_dir, tiny_config

from jackpot_jax import errors, models
from jackpot_jax import method as jm
from jackpot_jax.pipeline import checkpoint as ckpt_lib
from jackpot_jax.pipeline import export, resume, train

LENET300 = os.path.join(ROOT, "configs", "fashion_mnist_lenet300.py")


def _one_error_line(proc, *needles):
    """The CLI failed with status 1 and one `error: ...` message naming ``needles``."""
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr
    errs = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errs) == 1, proc.stderr
    msg = proc.stderr[proc.stderr.index("error: ") :]
    for n in needles:
        assert n in msg, (n, msg)
    return msg


# ------------------------------------------------------------------------- the method core


def test_erk_at_low_sparsity_keeps_everything():
    # Every layer ends dense: nothing is left to share out (a division by zero before).
    assert jm.keep_counts({"a": {"kernel": np.ones((801, 229))}}, 0.0, "erk") == {
        "a": {"kernel": 801 * 229}
    }
    params = {"l1": {"kernel": np.ones((10, 10))}, "l2": {"kernel": np.ones((100, 10))}}
    assert jm.keep_counts(params, 0.0, "erk") == {"l1": {"kernel": 100}, "l2": {"kernel": 1000}}
    counts = jm.keep_counts(params, 0.001, "erk")  # all but one weight: l1 dense, l2 999
    assert counts == {"l1": {"kernel": 100}, "l2": {"kernel": 999}}


def test_nan_scores_rank_below_every_number():
    x = jnp.array([np.nan, 1.0, np.inf, -np.inf, -np.nan, 0.0])
    expect = {
        1: [0, 0, 1, 0, 0, 0],
        2: [0, 1, 1, 0, 0, 0],
        3: [0, 1, 1, 0, 0, 1],
        4: [0, 1, 1, 1, 0, 1],
        5: [1, 1, 1, 1, 0, 1],
        6: [1] * 6,
    }
    for k, want in expect.items():
        np.testing.assert_array_equal(jm.topk_mask(x, k), want, err_msg=f"keep={k}")
    # |NaN| is NaN: with use_abs a NaN score still loses to every finite one.
    scores = {"w": {"kernel": jnp.array([[np.nan, -3.0], [0.5, np.nan]])}}
    m = jm.masks_from_scores(scores, {"w": {"kernel": 2}}, use_abs=True)
    np.testing.assert_array_equal(m["w"]["kernel"], [[0, 1], [1, 0]])
    m = jm.masks_from_scores(scores, 2, use_abs=True)  # one global top-k
    np.testing.assert_array_equal(m["w"]["kernel"], [[0, 1], [1, 0]])


# ---------------------------------------------------------------------- non-finite stops


def test_nan_weight_stops_the_search_at_the_first_step(tmp_path):
    config = tiny_config(**{"search.epochs": 2})
    ds_dir = pretrained_dir(tmp_path, config)
    module, variables = ckpt_lib.load_model(ds_dir)
    variables["params"]["fc1"]["kernel"][3, 7] = np.nan
    config.pretrained = ckpt_lib.save_variables(
        tmp_path / "nan_dense", variables, arch=config.model, model_options={"num_classes": 10}
    )
    with pytest.raises(errors.NonFiniteError) as e:
        train.run(config, str(tmp_path / "run"))
    assert "at epoch 1, step 1 (step 1 of 8 in the epoch)" in str(e.value)
    assert "last good checkpoint: none" in str(e.value)
    assert os.listdir(tmp_path / "run" / "checkpoints") == []
    assert not (tmp_path / "run" / "summary.json").exists()


def _first_overflow_step(lr, wd, epochs, spe, s0=0.999):
    """Step at which SGD with momentum 0.9 and weight decay alone first overflows a float32
    score (the gradient is negligible next to lr * wd * s once scores grow)."""
    s, v = np.float32(s0), np.float32(0)
    with np.errstate(over="ignore"):
        for t in range(epochs * spe):
            lr_t = np.float32(0.5 * lr * (1 + np.cos(np.pi * (t // spe) / epochs)))
            v = np.float32(0.9) * v + np.float32(wd) * s
            s = s - lr_t * v
            if not np.isfinite(s):
                return t + 1
    return None


def test_exploding_scores_stop_with_epoch_step_and_last_good_checkpoint(tmp_path):
    config = tiny_config(
        **{
            "search.epochs": 4,
            "search.lr": 1000.0,
            "search.weight_decay": 0.1,
            "search.schedule": "cosine_epoch",
        }
    )
    config.pretrained = pretrained_dir(tmp_path, config)
    step = _first_overflow_step(1000.0, 0.1, 4, 8)
    assert step == 21  # epoch 3, its 5th step
    with pytest.raises(errors.NonFiniteError) as e:
        train.run(config, str(tmp_path / "run"))
    msg = str(e.value)
    assert "search: the training loss or the scores became NaN or infinite" in msg
    assert f"at epoch 3, step {step} (step 5 of 8 in the epoch)" in msg
    assert f"last good checkpoint: epoch 2 in {tmp_path / 'run' / 'checkpoints'}" in msg
    work = tmp_path / "run"
    assert sorted(os.listdir(work / "checkpoints")) == ["1", "2"]
    assert [json.loads(x)["epoch"] for x in open(work / "metrics.jsonl")] == [1, 2]
    assert not (work / "summary.json").exists() and not (work / "jackpot.npz").exists()
    # The last good checkpoint reads back, finite (the template only fixes shapes).
    ckpt = resume.Checkpointer(str(work / "checkpoints"))
    template = ckpt.mgr.item_metadata(2)
    restored = ckpt.mgr.restore(2)
    ckpt.close()
    assert set(restored) == set(template.keys())
    assert all(
        np.all(np.isfinite(np.asarray(v, np.float64)))
        for v in restored.values()
        if np.issubdtype(np.asarray(v).dtype, np.floating)
    )


# ---------------------------------------------------------------- files that do not fit


def test_bad_model_json_is_named_by_the_cli(tmp_path):
    config = tiny_config()
    pre = pretrained_dir(tmp_path, config)
    with open(os.path.join(pre, "model.json"), "w") as f:
        f.write('{"arch": "lenet300_100", "options": {')
    out = cli(
        tmp_path / "run",
        LENET300,
        "--config.dataset=synthetic:fashion_mnist",
        f"--config.pretrained={pre}",
        check=False,
    )
    _one_error_line(out, f"{pre}/model.json: not valid JSON", '"arch": "<model name>"')


def test_missing_dataset_is_one_error_from_the_cli(tmp_path):
    out = cli(
        tmp_path / "run",
        LENET300,
        "--config.dataset=cifar10",
        f"--config.data_dir={tmp_path / 'empty'}",
        check=False,
    )
    _one_error_line(out, "cifar10 not found", str(tmp_path / "empty"), "--config.data_dir")


def test_checkpoint_of_another_model_is_a_clear_error(tmp_path):
    config = tiny_config()
    lenet5 = tiny_config("fashion_mnist_lenet5.py")
    pre = pretrained_dir(tmp_path, lenet5, "lenet5_dense")
    info = json.load(open(os.path.join(pre, "model.json")))
    info["arch"] = "lenet300_100"  # model.json edited, weights are LeNet-5
    json.dump(info, open(os.path.join(pre, "model.json"), "w"))
    config.pretrained = pre
    with pytest.raises(errors.InputError) as e:
        train.run(config, str(tmp_path / "run"))
    msg = str(e.value)
    assert f"checkpoint {pre} does not fit LeNet300100 on (28, 28, 1) inputs" in msg
    assert "params/fc1/kernel: shape (800, 500), expected (784, 300)" in msg
    assert "params/fc2/kernel: missing (expected (300, 100))" in msg


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A finished 1-epoch search: (config, workdir)."""
    tmp = tmp_path_factory.mktemp("searched")
    config = tiny_config(**{"search.epochs": 1})
    config.pretrained = pretrained_dir(tmp, config)
    train.run(config, str(tmp / "search"))
    return config, tmp / "search"


def _rewrite_npz(src, dst, **changes):
    with np.load(src) as z:
        arrays = {k: z[k] for k in z.files}
    for k, v in changes.items():
        if v is None:
            arrays.pop(k)
        else:
            arrays[k] = v
    np.savez(dst, **arrays)
    return str(dst)


def _eval(config, path, workdir):
    c = tiny_config(mode="eval", checkpoint=str(path))
    return train.run(c, str(workdir))


def test_jackpot_npz_that_does_not_fit_is_named(searched, tmp_path):
    config, work = searched
    npz = work / "jackpot.npz"
    no_meta = _rewrite_npz(npz, tmp_path / "no_meta.npz", meta=None)
    with pytest.raises(
        errors.InputError,
        match=r"no_meta.npz has no 'meta' entry naming the "
        r"model .*--to-torch",
    ):
        _eval(config, no_meta, tmp_path / "e1")
    with np.load(npz) as z:
        bad = z["masks/fc1/kernel"].copy()
        small = z["params/fc2/kernel"][:50]
    bad[0, 0] = 2
    not01 = _rewrite_npz(npz, tmp_path / "not01.npz", **{"masks/fc1/kernel": bad})
    with pytest.raises(
        errors.InputError,
        # numpy 2 writes the example value as np.uint8(2), numpy 1 as 2
        match=r"masks/fc1/kernel holds 1 values that are not 0 or 1 \(e\.g\. (np\.uint8\(2\)|2)\)",
    ):
        _eval(config, not01, tmp_path / "e2")
    shapes = _rewrite_npz(
        npz, tmp_path / "shapes.npz", **{"params/fc2/kernel": small, "masks/fc2/kernel": None}
    )
    with pytest.raises(
        errors.InputError,
        match=r"shapes.npz does not fit .*params/fc2/kernel: shape \(50, 100\), "
        r"expected \(300, 100\)",
    ):
        _eval(config, shapes, tmp_path / "e3")
    cut = tmp_path / "cut.npz"
    cut.write_bytes(npz.read_bytes()[:5000])
    with pytest.raises(errors.InputError, match=r"cut.npz: not a readable .npz"):
        _eval(config, cut, tmp_path / "e4")


def test_npz_without_meta_is_one_error_from_the_cli(searched, tmp_path):
    _, work = searched
    no_meta = _rewrite_npz(work / "jackpot.npz", tmp_path / "no_meta.npz", meta=None)
    out = cli(
        tmp_path / "eval",
        LENET300,
        "--config.mode=eval",
        "--config.dataset=synthetic:fashion_mnist",
        f"--config.checkpoint={no_meta}",
        check=False,
    )
    _one_error_line(out, "no_meta.npz has no 'meta' entry")


def test_pretrained_checkpoint_followed_only_when_it_holds_the_jackpots_weights(
    searched, tmp_path, capfd
):
    """A jackpot whose meta.pretrained_checkpoint was since replaced by another model: the
    fine-tune takes the unmasked weights from the run's own model/ (and says so); with
    neither, one error names both."""
    config, work = searched
    search = tmp_path / "search"
    import shutil

    shutil.copytree(work, search)
    source = tmp_path / "replaced"
    shutil.copytree(config.pretrained, source)
    _rewrite_npz(
        search / "jackpot.npz",
        search / "jackpot.npz",
        meta=np.asarray(
            json.dumps(
                {
                    **json.loads(str(np.load(search / "jackpot.npz")["meta"])),
                    "pretrained_checkpoint": str(source),
                }
            )
        ),
    )
    other = tiny_config("fashion_mnist_lenet5.py")
    shutil.rmtree(source)
    pretrained_dir(tmp_path, other, "replaced")  # now a LeNet-5 lives there
    ft = tiny_config(**{"mode": "finetune", "finetune.epochs": 1, "finetune.jackpot": str(search)})
    capfd.readouterr()
    summary = train.run(ft, str(tmp_path / "ft"))
    assert (
        f"{source} is not the jackpot's pre-trained checkpoint any more; using "
        f"{search / 'model'}" in capfd.readouterr().out
    )
    _, masks, _, _ = export.load_jackpot(str(tmp_path / "ft"))
    _, search_masks, _, _ = export.load_jackpot(str(search))
    assert float(jm.overlap(masks, search_masks)) == 1.0 and summary["mode"] == "finetune"
    shutil.rmtree(search / "model")
    with pytest.raises(
        errors.InputError,
        match=rf"no checkpoint with the jackpot's unmasked "
        rf"weights .*{source} holds lenet5",
    ):
        train.run(
            tiny_config(
                **{"mode": "finetune", "finetune.epochs": 1, "finetune.jackpot": str(search)}
            ),
            str(tmp_path / "ft2"),
        )


def test_bad_config_values_are_named():
    for over, needle in [
        ({"search.distribution": "erk2"}, "search.distribution='erk2'"),
        ({"finetune.mask": "oracle"}, "finetune.mask='oracle'"),
        ({"batch_size": 0}, "batch_size=0 must be positive"),
        ({"num_processes": 2, "process_id": 2}, "process_id=2 must be in"),
    ]:
        with pytest.raises(errors.ConfigError, match=needle.replace("(", r"\(")):
            train.check_config(tiny_config(**over))


# -------------------------------------------------------------------------- the converter


def _convert(args, capsys):
    from jackpot_jax.interop import cli

    with pytest.raises(SystemExit) as e:
        cli.main(args)
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


def test_converter_refuses_damaged_and_missing_files(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    net = torch.nn.Sequential(torch.nn.Linear(4, 3))
    torch.save(net.state_dict(), tmp_path / "w.pth")
    data = (tmp_path / "w.pth").read_bytes()
    for n in (len(data) // 2, 100, 0):
        (tmp_path / "cut.pth").write_bytes(data[:n])
        err = _convert(
            [
                "--arch",
                "lenet5",
                "--input",
                str(tmp_path / "cut.pth"),
                "--output",
                str(tmp_path / "out"),
            ],
            capsys,
        )
        assert f"{tmp_path / 'cut.pth'}: not a readable PyTorch checkpoint" in err, err
        assert err.count("\n") == 1
    err = _convert(
        [
            "--arch",
            "lenet5",
            "--input",
            str(tmp_path / "none.pth"),
            "--output",
            str(tmp_path / "out"),
        ],
        capsys,
    )
    assert "none.pth: no such file" in err
    assert not (tmp_path / "out").exists()


def test_converter_script_prints_one_error_for_a_truncated_pth(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save({"w": torch.zeros(100, 100)}, tmp_path / "w.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "w.pth").read_bytes()[:3000])
    out = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "tools", "convert_torch_weights.py"),
            "--arch",
            "lenet5",
            "--input",
            "cut.pth",
            "--output",
            "ckpt",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    _one_error_line(out, "cut.pth: not a readable PyTorch checkpoint")


def test_converter_never_overwrites_unasked(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from jackpot_jax.interop import cli, torch_convert

    module = models.get_model("lenet300_100")
    variables = models.init_variables(module, __import__("jax").random.key(0), (1, 28, 28, 1))
    sd = torch_convert.export_to_torch_state_dict("lenet300_100", variables)
    torch.save(sd, tmp_path / "w.pth")
    out = tmp_path / "existing"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    err = _convert(
        ["--arch", "lenet300_100", "--input", str(tmp_path / "w.pth"), "--output", str(out)], capsys
    )
    assert f"{out} exists; refusing to overwrite it" in err and "--overwrite" in err
    assert os.listdir(out) == ["notes.txt"]
    cli.main(
        [
            "--arch",
            "lenet300_100",
            "--input",
            str(tmp_path / "w.pth"),
            "--output",
            str(out),
            "--overwrite",
        ]
    )
    assert ckpt_lib.load_model_info(out)["arch"] == "lenet300_100"
    # --to-torch: an existing .pth is refused too, and left as it was.
    (tmp_path / "keep.pth").write_bytes(b"precious")
    err = _convert(
        ["--to-torch", "--input", str(out), "--output", str(tmp_path / "keep.pth")], capsys
    )
    assert "keep.pth exists; refusing to overwrite it" in err
    assert (tmp_path / "keep.pth").read_bytes() == b"precious"


def test_converter_names_jackpot_arrays_that_do_not_fit_the_checkpoint(searched, tmp_path, capsys):
    pytest.importorskip("torch")
    config, work = searched
    with np.load(work / "jackpot.npz") as z:
        small = z["params/fc2/bias"][:7]
    bad = _rewrite_npz(work / "jackpot.npz", tmp_path / "bad.npz", **{"params/fc2/bias": small})
    err = _convert(
        [
            "--to-torch",
            "--input",
            config.pretrained,
            "--jackpot",
            bad,
            "--output",
            str(tmp_path / "j.pth"),
        ],
        capsys,
    )
    assert (
        f"bad.npz does not fit {config.pretrained}: params/fc2/bias: (7,), the model's is "
        "(100,)" in err
    )
    assert not (tmp_path / "j.pth").exists()


# ----------------------------------------------------------------- where the exceptions live


def _exception_classes_outside_errors_py():
    """``module:Class`` for each public class of the package outside errors.py whose bases name
    an exception (``...Error``, ``...Exception``), read from the source."""
    root = os.path.join(ROOT, "jackpot_jax")
    found = []
    for dirpath, _, names in os.walk(root):
        for name in sorted(names):
            path = os.path.join(dirpath, name)
            if not name.endswith(".py") or path == os.path.join(root, "errors.py"):
                continue
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                if not isinstance(node, ast.ClassDef) or node.name.startswith("_"):
                    continue
                bases = [ast.unparse(b).rsplit(".", 1)[-1] for b in node.bases]
                if any(b.endswith(("Error", "Exception")) for b in bases):
                    found.append(f"{os.path.relpath(path, ROOT)}:{node.name}")
    return found


def test_every_exception_class_is_defined_in_errors_py():
    assert _exception_classes_outside_errors_py() == []
    # The two that lived beside their raisers are errors a user can fix: the CLI and the
    # converter print them as one line, and `except ValueError` still catches them.
    for cls in (errors.ChecksumError, errors.UnsafeCheckpointError):
        assert issubclass(cls, errors.JackpotError) and issubclass(cls, ValueError), cls
