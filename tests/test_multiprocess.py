"""Two processes through `jax.distributed` on 127.0.0.1, launched through the CLI, end with
the masks and accuracies of one process running the same program (same global batch, same
2-device mesh), those agree with an independent reference, one process on one device (no
sharding at all), and only process 0 writes the run's files. On a synthetic Fashion-MNIST
stand-in always; on the real files where they are installed."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from pipeline_helpers import ROOT, needs_fmnist, pretrained_dir, tiny_config

from jackpot_jax import utils
from jackpot_jax.pipeline import train

REAL = {
    "dataset": "fashion_mnist",
    "train_subset": 2048,
    "val_examples": 256,
    "test_subset": 1000,
    "batch_size": 128,
    "eval_batch_size": 250,
    "pretrain.epochs": 1,
    "search.epochs": 2,
    "search.score_pruned": 0.99,
}
# Random images and labels: 8 steps of 32 an epoch, from a random-init dense model.
SYNTHETIC = {
    "dataset": "synthetic:fashion_mnist",
    "train_subset": 256,
    "val_examples": 16,
    "test_subset": 64,
    "batch_size": 32,
    "eval_batch_size": 16,
    "pretrain.epochs": 1,
    "search.epochs": 2,
    "search.score_pruned": 0.999,  # masks flip in these short searches of a random init
}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _masks(workdir):
    with np.load(os.path.join(workdir, "jackpot.npz")) as z:
        return {k[len("masks/") :]: z[k] for k in z.files if k.startswith("masks/")}


def _pretrained(tmp_path, subset):
    if subset["dataset"].startswith("synthetic"):
        return pretrained_dir(tmp_path, tiny_config(**subset))
    pre = tiny_config(**{**subset, "mode": "pretrain"})
    train.run(pre, str(tmp_path / "dense"))
    return str(tmp_path / "dense" / "model")


@pytest.mark.parametrize(
    "subset", [SYNTHETIC, pytest.param(REAL, marks=needs_fmnist)], ids=["synthetic", "real"]
)
def test_two_processes_match_one_process_and_one_device(tmp_path, subset):
    args = [f"--config.{k}={v}" for k, v in subset.items()]
    args += [
        f"--config.pretrained={_pretrained(tmp_path, subset)}",
        # the config's own search batch (64) gives way to the batch above
        "--config.search.batch_size=0",
    ]
    cmd = [
        sys.executable,
        "-m",
        "jackpot_jax.main",
        "--config",
        os.path.join(ROOT, "configs", "fashion_mnist_lenet300.py"),
        *args,
    ]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("XLA_FLAGS", None)

    def one_process(name, devices):
        out = subprocess.run(
            cmd + ["--workdir", str(tmp_path / name)],
            cwd=ROOT,
            text=True,
            capture_output=True,
            env=dict(env, JAX_NUM_CPU_DEVICES=str(devices)),
            timeout=600,
        )
        assert out.returncode == 0, out.stderr[-3000:]

    # One process, two CPU devices: the mesh the two processes build together.
    one_process("one", 2)
    # One process, one device: no sharded batch, no cross-device sum of the gradients.
    one_process("single", 1)
    port = _free_port()
    procs = [
        subprocess.Popen(
            cmd
            + [
                "--workdir",
                str(tmp_path / "two"),
                f"--config.coordinator_address=127.0.0.1:{port}",
                "--config.num_processes=2",
                f"--config.process_id={i}",
            ],
            cwd=ROOT,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in range(2)
    ]
    try:
        outs = [p.communicate(timeout=600) for p in procs]
    finally:  # a hang (or any failure) leaves no process behind
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]

    ref = _masks(tmp_path / "one")
    got = _masks(tmp_path / "two")
    assert ref.keys() == got.keys() == {"fc1/kernel", "fc2/kernel"}
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
    # Every process ended with those masks (each prints its own digest).
    digest = utils.masks_digest(ref)  # the tool's digest of jackpot.npz, too
    for i, (out, _) in enumerate(outs):
        assert f"process {i}/2: final masks sha256 {digest}" in out, out[-2000:]
    s1 = json.load(open(tmp_path / "one" / "summary.json"))
    s2 = json.load(open(tmp_path / "two" / "summary.json"))
    assert s2["num_devices"] == s1["num_devices"] == 2
    for key in (
        "test_accuracy",
        "dense_test_accuracy",
        "init_mask_test_accuracy",
        "sparsity_achieved",
        "overlap_with_init",
        "final_val_accuracy",
    ):
        assert s2[key] == s1[key], key
    assert s2["overlap_with_init"] < 1.0  # the search moved the masks

    # The independent reference: one device sums each batch's gradient in another order, so
    # a score within rounding of a layer's cut may fall on the other side; nothing more.
    single = _masks(tmp_path / "single")
    s0 = json.load(open(tmp_path / "single" / "summary.json"))
    assert s0["num_devices"] == 1
    for k in ref:
        assert single[k].sum() == ref[k].sum(), k  # the same keep counts
        differ = int((single[k] != ref[k]).sum())
        assert differ <= max(8, single[k].size // 10**4), (k, differ)
    assert s0["overlap_with_init"] == pytest.approx(s1["overlap_with_init"], abs=1e-4)
    for key in ("dense_test_accuracy", "init_mask_test_accuracy", "sparsity_achieved"):
        assert s0[key] == s1[key], key
    assert abs(s0["test_accuracy"] - s1["test_accuracy"]) <= 2 / subset["test_subset"]
    # Only process 0 wrote: one metrics line per epoch, no temporary files left behind.
    assert [json.loads(x)["epoch"] for x in open(tmp_path / "two" / "metrics.jsonl")] == [1, 2]
    leftovers = [f for _, _, fs in os.walk(tmp_path / "two") for f in fs if ".tmp" in f]
    assert not leftovers, leftovers
