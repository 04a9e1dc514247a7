"""Two processes through `jax.distributed` on 127.0.0.1, launched through the CLI, end with
the masks and accuracy of one process running the same program (same global batch, same
2-device mesh), and only process 0 writes the run's files."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
from pipeline_helpers import ROOT, needs_fmnist, tiny_config

from jackpot_jax import utils
from jackpot_jax.pipeline import train

SUBSET = {
    "dataset": "fashion_mnist",
    "train_subset": 2048,
    "val_examples": 256,
    "test_subset": 1000,
    "batch_size": 128,
    "eval_batch_size": 250,
    "pretrain.epochs": 1,
    "search.epochs": 2,
}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _masks(workdir):
    with np.load(os.path.join(workdir, "jackpot.npz")) as z:
        return {k[len("masks/") :]: z[k] for k in z.files if k.startswith("masks/")}


@needs_fmnist
def test_two_processes_match_one_process(tmp_path):
    pre = tiny_config(**{**SUBSET, "mode": "pretrain"})
    train.run(pre, str(tmp_path / "dense"))
    args = [f"--config.{k}={v}" for k, v in SUBSET.items()]
    args += [
        f"--config.pretrained={tmp_path / 'dense' / 'model'}",
        "--config.search.score_pruned=0.99",
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
    # One process, two CPU devices: the mesh the two processes build together.
    one = subprocess.run(
        cmd + ["--workdir", str(tmp_path / "one")],
        cwd=ROOT,
        text=True,
        capture_output=True,
        env=dict(env, JAX_NUM_CPU_DEVICES="2"),
        timeout=600,
    )
    assert one.returncode == 0, one.stderr[-3000:]
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
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]

    ref = _masks(tmp_path / "one")
    got = _masks(tmp_path / "two")
    assert ref.keys() == got.keys() == {"fc1/kernel", "fc2/kernel"}
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
    # Every process ended with those masks (each prints its own digest).
    digest = utils.digest({k: v.astype(np.float32) for k, v in ref.items()})
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
    # Only process 0 wrote: one metrics line per epoch, no temporary files left behind.
    assert [json.loads(x)["epoch"] for x in open(tmp_path / "two" / "metrics.jsonl")] == [1, 2]
    leftovers = [f for _, _, fs in os.walk(tmp_path / "two") for f in fs if ".tmp" in f]
    assert not leftovers, leftovers
