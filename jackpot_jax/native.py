"""Compiling and loading the package's small C++ XLA FFI handlers (``csrc/``).

Two optional handlers live there: oneDNN's convolutions (`jackpot_jax.onednn`) and the exact
top-k mask's radix select (`jackpot_jax.topk_select`). Each is compiled on first use with a
C++17 compiler (``CXX``, else ``c++``/``g++``/``clang++``) against jaxlib's FFI headers, into
``$XDG_CACHE_HOME/jackpot_jax`` (else ``~/.cache/jackpot_jax``), keyed by the source, the
compiler flags and the jaxlib version, so a second process loads the cached library at once.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile

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

    from jackpot_jax.data_files import cache_root
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler (set CXX, or install g++)")
    path = os.path.join(CSRC, source)
    with open(path, "rb") as f:
        text = f.read()
    cmd = [cxx, "-O3", "-std=c++17", "-shared", "-fPIC", "-I", jax.ffi.include_dir(),
           *flags, path, *libs]
    key = hashlib.sha256(text + jaxlib.__version__.encode()
                         + "\0".join(cmd[1:]).encode()).hexdigest()[:16]
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
    os.replace(tmp, out)   # atomic: concurrent builds leave one complete file
    return out
