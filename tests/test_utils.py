"""The small shared helpers on hand-written cases: flat and nested dicts, the mask digest (and
its command, tools/mask_digest.py) against sha256 written out by hand."""

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

from jackpot_jax import utils


def test_flatten_and_nest_are_inverse():
    nested = {"conv1": {"kernel": 1, "bias": 2}, "layer1_0": {"bn1": {"scale": 3}}, "fc": 4}
    flat = {"conv1/kernel": 1, "conv1/bias": 2, "layer1_0/bn1/scale": 3, "fc": 4}
    assert utils.flatten_dict(nested) == flat
    assert utils.nest_dict(flat) == nested
    assert utils.flatten_dict({"a": {"b": 1}}, sep=".") == {"a.b": 1}
    assert utils.nest_dict({}) == {} and utils.flatten_dict({}) == {}


@pytest.mark.parametrize("flat", [{"a": 1, "a/b": 2}, {"a/b": 2, "a": 1}])
def test_nest_refuses_a_path_that_is_a_prefix_of_another(flat):
    with pytest.raises(ValueError, match="clashes with another path"):
        utils.nest_dict(flat)


# ------------------------------------------------------------------------- the mask digest

# Hand-made masks, given out of order: "conv/kernel" sorts before "conv1/kernel" ('/' < '1').
MASKS = {
    "fc/kernel": [[1, 0, 1], [0, 0, 1]],
    "conv1/kernel": [1, 1, 0, 1],
    "conv/kernel": [[[0]], [[1]]],
}


def _by_hand() -> str:
    """sha256 of the documented layout, written out: per sorted path the header
    "path:shape:bool;" and one byte (0 or 1) per weight in C order."""
    h = hashlib.sha256()
    h.update(b"conv/kernel:(2, 1, 1):bool;" + bytes([0, 1]))
    h.update(b"conv1/kernel:(4,):bool;" + bytes([1, 1, 0, 1]))
    h.update(b"fc/kernel:(2, 3):bool;" + bytes([1, 0, 1, 0, 0, 1]))
    return h.hexdigest()


@pytest.mark.parametrize("dtype", [np.float32, np.uint8, np.bool_])
def test_masks_digest_is_the_documented_sha256_in_any_dtype(dtype):
    masks = {p: np.asarray(m, dtype) for p, m in MASKS.items()}
    assert utils.masks_digest(masks) == _by_hand()
    flipped = dict(masks, **{"conv1/kernel": np.asarray([1, 1, 1, 0], dtype)})
    assert utils.masks_digest(flipped) != _by_hand()


def test_masks_digest_refuses_a_value_that_is_not_0_or_1():
    with pytest.raises(ValueError, match="fc/kernel holds values other than 0 and 1"):
        utils.masks_digest({"fc/kernel": np.asarray([0.0, 0.5, 1.0])})


def test_mask_digest_tool_prints_the_same_digest_for_a_file_and_its_run_dir(tmp_path):
    arrays = {f"masks/{p}": np.asarray(m, np.uint8) for p, m in MASKS.items()}
    arrays.update({f"params/{p}": np.ones(np.shape(m), np.float32) for p, m in MASKS.items()})
    np.savez(tmp_path / "jackpot.npz", **arrays)
    tool = os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools", "mask_digest.py")
    run = [sys.executable, tool, str(tmp_path), str(tmp_path / "jackpot.npz")]
    proc = subprocess.run(run, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        f"{_by_hand()}  {tmp_path}",
        f"{_by_hand()}  {tmp_path / 'jackpot.npz'}",
    ]
    proc = subprocess.run(
        [sys.executable, tool, str(tmp_path / "none")], capture_output=True, text=True
    )
    assert proc.returncode == 1 and proc.stderr.startswith("error: no jackpot.npz at"), proc.stderr
