"""Compiling and loading the package's small C++ XLA FFI handlers (``csrc/``).

Two optional handlers live there: oneDNN's convolutions (`jackpot_jax.kernels.native.onednn`) and the exact
top-k mask's radix select (`jackpot_jax.kernels.native.topk_select`). Each is compiled on first use with a
C++17 compiler (``CXX``, else ``c++``/``g++``/``clang++``) against jaxlib's FFI headers, into
``$XDG_CACHE_HOME/jackpot_jax`` (else ``~/.cache/jackpot_jax``), keyed by the source, the
compiler flags and the jaxlib version, so a second process loads the cached library at once.
`OptionalLibrary` loads one of them on first use and says why it is unavailable; the handlers
are registered for the CPU platform and have no sharding rule, so the package uses them with
one device only (`placement_reason`).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Mapping

from jackpot_jax.cache import cache_root

CSRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")


def compiler() -> str | None:
    """The C++ compiler to use, or None."""
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        path = shutil.which(name) if name else None
        if path:
            return path
    return None


def build(source: str, *, flags: list[str] = (), libs: list[str] = ()) -> str:
    """Compiles ``csrc/<source>`` into a shared library (once per source, flags and jaxlib
    version) and returns its path. ``flags`` go before the source (e.g. ``-I`` directories),
    ``libs`` after it (``-L``, ``-l``, rpath). Raises RuntimeError when no compiler is found
    or compiling fails (with the command and the compiler's last words)."""
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
    ]
    key = hashlib.sha256(
        text + jaxlib.__version__.encode() + "\0".join(cmd[1:]).encode()
    ).hexdigest()[:16]
    out = os.path.join(cache_root(), f"{os.path.splitext(source)[0]}_{key}.so")
    if os.path.exists(out):
        return out
    os.makedirs(cache_root(), exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache_root())
    os.close(fd)
    proc = subprocess.run(cmd + ["-o", tmp], capture_output=True, text=True)
    if proc.returncode != 0:
        os.unlink(tmp)
        raise RuntimeError(f"compiling {path} failed:\n{' '.join(cmd)}\n{proc.stderr[-2000:]}")
    os.replace(tmp, out)  # atomic: concurrent builds leave one complete file
    return out


def register(path: str, targets: Mapping[str, str]) -> ctypes.CDLL:
    """Loads the library at ``path`` and registers its XLA FFI handlers (custom-call target ->
    symbol) for the CPU platform; returns the library."""
    import jax

    lib = ctypes.cdll.LoadLibrary(path)
    for target, symbol in targets.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
    return lib


class Unavailable(Exception):
    """Raised by an `OptionalLibrary`'s loader: the message says why the library is off."""


class OptionalLibrary:
    """A native library loaded once, on first use, by ``load()``: the loaded ctypes library,
    or `Unavailable` with the reason. Thread-safe."""

    def __init__(self, load: Callable[[], ctypes.CDLL]):
        self._load, self._lock = load, threading.Lock()
        self._lib: ctypes.CDLL | None = None
        self._reason: str | None = None

    def available(self) -> bool:
        """Whether the library loaded (loads it on the first call)."""
        with self._lock:
            if self._reason is None:
                try:
                    self._lib, self._reason = self._load(), ""
                except Unavailable as err:
                    self._reason = str(err)
            return not self._reason

    def reason(self) -> str:
        """Why `available` is False ("" when it is True)."""
        self.available()
        return self._reason

    @property
    def lib(self) -> ctypes.CDLL:
        if not self.available():
            raise RuntimeError(self._reason)
        return self._lib


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
