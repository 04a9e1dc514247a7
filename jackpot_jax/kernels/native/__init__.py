"""Compiling and loading the package's small C++ XLA FFI handlers (``csrc/``).

Two optional handlers live there: oneDNN's convolutions (`jackpot_jax.kernels.native.onednn`) and the
exact top-k mask's radix select (`jackpot_jax.kernels.native.topk_select`).

`build` compiles one on first use with a C++17 compiler (``CXX``, else ``c++``/``g++``/``clang++``)
against jaxlib's FFI headers, linked with ``-Wl,--no-undefined`` (a missing symbol fails the
build, not the first call), into ``$XDG_CACHE_HOME/jackpot_jax`` (else ``~/.cache/jackpot_jax``).
The file name holds a key (`cache_key`) over the source, the whole command, jaxlib's version,
the compiler's version (the first line of ``CXX --version``), the machine
(`platform.machine`) and what the caller adds (oneDNN's header version), so a second process
loads the cached library at once and a changed toolchain builds afresh. Several processes
building the same library at once compile it once: the build holds an ``fcntl.flock`` on a
lock file next to the output and the others wait for it (at most `LOCK_TIMEOUT_S`), then load
what it wrote. A compile is killed after `BUILD_TIMEOUT_S`. When the cache directory cannot be
written (no home, a read-only file system), libraries are built in a private temporary
directory of the process instead, with a warning.

`OptionalLibrary` loads one library on first use and says why it is unavailable; the first
time it falls back for any reason but an explicit opt-out (or oneDNN not installed at all) it
says so once with a `FallbackWarning`. Its lock is held while the library builds, which takes
at most the build and lock timeouts, so no thread that traces a step waits on it forever. The
handlers are registered for the CPU platform and have no sharding rule, so the package uses
them with one device only (`placement_reason`).
"""

from __future__ import annotations

import atexit
import ctypes
import errno
import fcntl
import functools
import hashlib
import os
import platform
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence

from jackpot_jax.cache import cache_root
from jackpot_jax.errors import LibraryUnavailable

CSRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")

BUILD_TIMEOUT_S = 300  # one compile; killed (with its process group) after this
LOCK_TIMEOUT_S = BUILD_TIMEOUT_S + 60  # waiting for another process's build of the same file


class FallbackWarning(UserWarning):
    """A native handler is unavailable (e.g. its build failed): the package computes without it."""


def compiler() -> str | None:
    """The C++ compiler to use, or None."""
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        path = shutil.which(name) if name else None
        if path:
            return path
    return None


@functools.cache
def compiler_version(cxx: str) -> str:
    """The first line ``cxx --version`` prints (e.g. ``g++ (Debian 12.2.0-14) 12.2.0``), or ""
    when it prints nothing or cannot be run within 30 s."""
    try:
        proc = subprocess.run(
            [cxx, "--version"], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    lines = (proc.stdout or proc.stderr).strip().splitlines()
    return lines[0].strip() if lines else ""


def cache_key(
    source: bytes,
    command: Sequence[str],
    *,
    jaxlib_version: str,
    compiler_version: str,
    machine: str,
    extra: Sequence[str] = (),
) -> str:
    """16 hex digits naming one build: a library is reused only when the source, the compile
    command, jaxlib's version, the compiler's version, the machine and ``extra`` (what else the
    caller's build depends on, e.g. its library headers' version) are all the same."""
    parts = [jaxlib_version, compiler_version, machine, *command, "", *extra]
    return hashlib.sha256(source + b"\0" + "\0".join(parts).encode()).hexdigest()[:16]


class _Unwritable(Exception):
    """The directory cannot hold the build (cannot be created or written)."""


_private_lock = threading.Lock()
_private: list[str] = []  # this process's temporary build directory, once made


def _private_dir(reason: str) -> str:
    with _private_lock:
        if not _private:
            path = tempfile.mkdtemp(prefix="jackpot_jax_native_")
            atexit.register(shutil.rmtree, path, True)
            _private.append(path)
            warnings.warn(
                f"jackpot_jax: the cache directory cannot hold compiled handlers ({reason}); "
                f"building them in {path} instead, for this process only",
                FallbackWarning,
                stacklevel=2,
            )
        return _private[0]


def _flock(fd: int, path: str, timeout: float) -> None:
    """Takes an exclusive lock on ``fd``, waiting at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                raise
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"waited {timeout:.0f} s for the lock {path}, held by another process "
                "building the same library"
            )
        time.sleep(0.05)


def _compile(cmd: list[str], source: str) -> None:
    # A session of its own, so a timeout kills the compiler driver and what it started.
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
    except OSError as err:
        raise RuntimeError(f"cannot run {cmd[0]}: {err}") from err
    try:
        _, stderr = proc.communicate(timeout=BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.communicate()
        raise RuntimeError(
            f"compiling {source} took longer than the build timeout of {BUILD_TIMEOUT_S} s "
            f"(jackpot_jax.kernels.native.BUILD_TIMEOUT_S):\n{' '.join(cmd)}"
        ) from None
    if proc.returncode != 0:
        raise RuntimeError(
            f"compiling {source} failed (exit status {proc.returncode}):\n{' '.join(cmd)}\n"
            f"{stderr[-2000:]}"
        )


def _build_in(directory: str, name: str, cmd: list[str], source: str) -> str:
    """Builds ``directory/name`` under the lock file next to it, unless it is there already."""
    out = os.path.join(directory, name)
    try:
        os.makedirs(directory, exist_ok=True)
        lock = os.open(out + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise _Unwritable(f"{directory}: {err.strerror or err}") from err
    try:
        _flock(lock, out + ".lock", LOCK_TIMEOUT_S)
        if os.path.exists(out):  # built by another process while this one waited
            return out
        try:
            fd, tmp = tempfile.mkstemp(prefix=name + ".", suffix=".tmp", dir=directory)
        except OSError as err:
            raise _Unwritable(f"{directory}: {err.strerror or err}") from err
        os.close(fd)
        try:
            _compile(cmd + ["-o", tmp], source)
            os.replace(tmp, out)  # atomic: a reader sees no file or the whole library
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return out
    finally:
        os.close(lock)  # releases the flock


def build(
    source: str, *, flags: Sequence[str] = (), libs: Sequence[str] = (), key: Sequence[str] = ()
) -> str:
    """Compiles ``csrc/<source>`` into a shared library (once per `cache_key`; ``key`` adds
    what else the build depends on) and returns its path. ``flags`` go before the source (e.g.
    ``-I`` directories), ``libs`` after it (``-L``, ``-l``, rpath). Raises RuntimeError when
    no compiler is found, compiling fails or times out (with the command and the compiler's
    last words)."""
    import jax
    import jaxlib

    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler (set CXX, or install g++)")
    path = os.path.join(CSRC, source)
    with open(path, "rb") as f:
        text = f.read()
    cmd = [
        cxx,
        "-O3",
        "-std=c++17",
        "-shared",
        "-fPIC",
        "-I",
        jax.ffi.include_dir(),
        *flags,
        path,
        *libs,
        "-Wl,--no-undefined",
    ]
    digest = cache_key(
        text,
        cmd,
        jaxlib_version=jaxlib.__version__,
        compiler_version=compiler_version(cxx),
        machine=platform.machine(),
        extra=key,
    )
    name = f"{os.path.splitext(source)[0]}_{digest}.so"
    if os.path.exists(os.path.join(cache_root(), name)):
        return os.path.join(cache_root(), name)
    try:
        return _build_in(cache_root(), name, cmd, path)
    except _Unwritable as err:
        return _build_in(_private_dir(str(err)), name, cmd, path)


def load(path: str) -> ctypes.CDLL:
    """The library at ``path``, loaded (all its symbols bound now)."""
    return ctypes.cdll.LoadLibrary(path)


def register(lib: ctypes.CDLL, targets: Mapping[str, str]) -> None:
    """Registers the XLA FFI handlers of ``lib`` (custom-call target -> symbol) for the CPU
    platform."""
    import jax

    for target, symbol in targets.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")


class OptionalLibrary:
    """A native library loaded once, on first use, by ``load()``: the loaded ctypes library,
    or `errors.LibraryUnavailable` with the reason (which names the library). ``what`` names
    it too, and ``fallback`` says what runs without it, for the one `FallbackWarning`.
    Thread-safe: the first caller builds; others wait for it (bounded by the build's own
    timeouts)."""

    def __init__(self, load: Callable[[], ctypes.CDLL], what: str, fallback: str):
        self._load, self._lock = load, threading.Lock()
        self._what, self._fallback = what, fallback
        self._lib: ctypes.CDLL | None = None
        self._reason: str | None = None

    def _status(self) -> str:
        if self._reason is not None:
            return self._reason
        # Never forever: the loader's compile and lock waits have their own timeouts.
        if not self._lock.acquire(timeout=BUILD_TIMEOUT_S + LOCK_TIMEOUT_S + 60):
            return f"{self._what}: still being built by another thread"
        try:
            if self._reason is None:
                try:
                    self._lib, self._reason = self._load(), ""
                except LibraryUnavailable as err:
                    self._reason = str(err)
                    if err.announce:
                        warnings.warn(
                            f"jackpot_jax: {self._reason}; {self._fallback}",
                            FallbackWarning,
                            stacklevel=3,
                        )
            return self._reason
        finally:
            self._lock.release()

    def available(self) -> bool:
        """Whether the library loaded (loads it on the first call)."""
        return not self._status()

    def reason(self) -> str:
        """Why `available` is False ("" when it is True)."""
        return self._status()

    @property
    def lib(self) -> ctypes.CDLL:
        reason = self._status()
        if reason:
            raise RuntimeError(reason)
        return self._lib

    @property
    def path(self) -> str:
        """The loaded library's file."""
        return self.lib._name


def placement_reason() -> str:
    """Why a step traced now would not call the handlers ("" when it would): they run on the
    CPU backend, and with one device only (a custom call without a sharding rule would see
    each device's shard of the batch alone)."""
    import jax

    if jax.default_backend() != "cpu":
        return "CPU only"
    if jax.device_count() != 1:
        return f"used with one device only ({jax.device_count()} here)"
    return ""
