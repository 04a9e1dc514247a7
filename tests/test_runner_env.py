"""The piece runner passes its GPU memory share to its worker processes in their environment and
leaves its own alone (jackpot_jax.experiments.runner.run_workers / worker_env)."""

import os

import pytest

from jackpot_jax.experiments import runner

FRACTION = "XLA_PYTHON_CLIENT_MEM_FRACTION"
PREALLOCATE = "XLA_PYTHON_CLIENT_PREALLOCATE"


class EnvProbe:
    """A `Pieces` stand-in whose one piece writes what its worker's environment holds."""

    def __init__(self, config, workdir):
        self.workdir = workdir

    def record(self, name):
        with open(os.path.join(self.workdir, name), "w") as f:
            f.write(f"{os.environ.get(FRACTION)}|{os.environ.get(PREALLOCATE)}")


def _run(tmp_path, workers, names):
    tasks = [runner.Task(str(tmp_path / n), [], 1, ("record", (n,), {})) for n in names]
    assert runner.run_workers(EnvProbe, None, str(tmp_path), tasks, workers) == len(names)
    return {(tmp_path / n).read_text() for n in names}


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv(FRACTION, raising=False)
    monkeypatch.delenv(PREALLOCATE, raising=False)
    return monkeypatch


def test_worker_env_is_an_equal_share_unless_the_user_chose():
    assert runner.worker_env(2, {}) == {FRACTION: "0.450"}  # 0.9 / 2
    assert runner.worker_env(1, {}) == {FRACTION: "0.750"}  # capped at 0.75
    assert runner.worker_env(4, {FRACTION: "0.3"}) == {}
    assert runner.worker_env(4, {PREALLOCATE: "false"}) == {}


def test_workers_get_their_share_and_the_parent_keeps_its_environment(tmp_path, clean_env):
    before = dict(os.environ)
    assert _run(tmp_path, 2, ["a", "b"]) == {"0.450|None"}
    assert dict(os.environ) == before  # nothing added to this process


def test_a_users_choice_reaches_the_workers_unchanged(tmp_path, clean_env):
    clean_env.setenv(PREALLOCATE, "false")
    assert _run(tmp_path, 1, ["a"]) == {"None|false"}
    assert FRACTION not in os.environ
