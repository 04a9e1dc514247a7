"""Keeps the tests apart from the machine: caches (JAX's compilation cache included, shared by
the session's processes) and config dirs under a temporary directory, the CPU backend (unless
JACKPOT_TEST_PLATFORMS names another, e.g. cuda), no dataset location from the environment,
and no network (a dead proxy for HTTP in subprocesses too; connections to anything but this
machine are refused in-process). Local HTTP servers on 127.0.0.1 still work."""

import os
import socket
import sys
import tempfile

import pytest

_HOME = tempfile.mkdtemp(prefix="jackpot_jax_tests_")
os.environ.update(
    {
        "XDG_CACHE_HOME": os.path.join(_HOME, "cache"),  # data.py's download cache
        "MPLCONFIGDIR": os.path.join(_HOME, "matplotlib"),
        "TORCH_HOME": os.path.join(_HOME, "torch"),
        # The CPU backend, unless JACKPOT_TEST_PLATFORMS names others (benchmarks/gpu_checks.sh
        # runs the GPU tests with JACKPOT_TEST_PLATFORMS=cuda).
        "JAX_PLATFORMS": os.environ.get("JACKPOT_TEST_PLATFORMS", "cpu"),
        # One compilation cache for the session, subprocesses included: the same small programs
        # are compiled by many tests (each run builds its own jitted step).
        "JAX_COMPILATION_CACHE_DIR": os.path.join(_HOME, "jax_cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
        "http_proxy": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "no_proxy": "127.0.0.1,localhost",
        "NO_PROXY": "127.0.0.1,localhost",
    }
)
os.environ.pop("JACKPOT_JAX_DATA_DIR", None)
os.environ.pop("JACKPOT_DATA_DIR", None)  # the deprecated name, still read
os.environ.pop("JACKPOT_JAX_KILL_AT", None)
# The crash points of the resume tests (`crash_hooks`; subprocesses load them from
# crashpoints/sitecustomize.py when it is on their PYTHONPATH).
CRASHPOINTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "crashpoints")
sys.path.insert(0, CRASHPOINTS)

_LOCAL = ("127.0.0.1", "localhost", "::1", "0.0.0.0")
_connect = socket.socket.connect


def _local_only(self, address):
    host = address[0] if isinstance(address, tuple) else address
    if self.family in (socket.AF_INET, socket.AF_INET6) and host not in _LOCAL:
        raise OSError(f"tests may not reach the network (tried {address})")
    return _connect(self, address)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    monkeypatch.setattr(socket.socket, "connect", _local_only)


def pytest_unconfigure(config):
    import shutil

    shutil.rmtree(_HOME, ignore_errors=True)


# `JACKPOT_TEST_CPU_TIMES=FILE pytest ...` appends each test's CPU seconds (this process and
# its finished subprocesses) to FILE: on a shared, loaded machine wall-clock durations say
# little about what CI (2 idle cores) will take.
_CPU_LOG = os.environ.get("JACKPOT_TEST_CPU_TIMES")


def _cpu_seconds():
    import resource

    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if not _CPU_LOG:
        yield
        return
    import time

    t0, w0 = _cpu_seconds(), time.time()
    yield
    with open(_CPU_LOG, "a") as f:
        f.write(f"{_cpu_seconds() - t0:8.1f} cpu {time.time() - w0:8.1f} wall  {item.nodeid}\n")


@pytest.fixture
def compute():
    """``compute(mask_layout='native', ...)`` traces the rest of the test with those
    `ComputeOptions` fields changed (undone at the end of the test)."""
    import contextlib

    from jackpot_jax import kernels

    with contextlib.ExitStack() as stack:
        yield lambda **changes: stack.enter_context(kernels.use(**changes))
