"""oneDNN's convolution weight gradient on the CPU, as an XLA custom call (optional).

XLA:CPU computes a convolution's weight gradient as an Eigen contraction over the image
patches of a whole-feature-map window, after transposing the activations to batch-minor: it
took 2.8x, 2.4x and 1.3x as long as oneDNN's direct kernel on ResNet-32x2's three stages
(benchmarks/bench_conv.py, batch 128, 2 CPU cores; 10% of the whole search step). This
module compiles a small XLA FFI handler (``csrc/onednn_conv.cc``) that calls oneDNN's
convolution backward-weights primitive on the NHWC activations in place, and registers it
with JAX. `jackpot_jax.ops` uses it for the explicit path's weight gradients when
`available()`.

It is optional. It needs

* oneDNN: ``pip install 'jackpot_jax[onednn]'`` (``onednn-cpu-gomp``: the library built with
  OpenMP, CPU only; ``onednn-devel``: its C headers), or ``JACKPOT_JAX_ONEDNN_ROOT`` naming a
  directory with ``lib/libdnnl.so`` and ``include/oneapi/dnnl/dnnl.h``;
* a C++17 compiler (``CXX``, else ``c++``/``g++``): the handler is compiled on first use into
  ``$XDG_CACHE_HOME/jackpot_jax`` (else ``~/.cache/jackpot_jax``), keyed by the source and
  jaxlib version, in a few seconds;
* float32, on the CPU backend, with one device (the custom call has no sharding rule: under
  data parallelism over several CPU devices the weight gradients stay XLA's).

``JACKPOT_JAX_ONEDNN=0`` turns it off; `unavailable_reason` says why it is off. Anything
missing means XLA's own weight gradient, as before.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading

TARGET = "jackpot_jax_onednn_weight_grad"
_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "onednn_conv.cc")

_lock = threading.Lock()
_state: dict = {}   # "ok": bool, "reason": str, "lib": ctypes.CDLL


def _roots() -> list[str]:
    roots = []
    if os.environ.get("JACKPOT_JAX_ONEDNN_ROOT"):
        roots.append(os.environ["JACKPOT_JAX_ONEDNN_ROOT"])
    roots += [sysconfig.get_paths()["data"], sys.prefix, "/usr/local", "/usr"]
    return list(dict.fromkeys(roots))


def find_onednn() -> tuple[str, str] | None:
    """(library directory, include directory) of an installed oneDNN, or None."""
    for root in _roots():
        lib, inc = os.path.join(root, "lib"), os.path.join(root, "include")
        if (os.path.exists(os.path.join(lib, "libdnnl.so"))
                and os.path.exists(os.path.join(inc, "oneapi", "dnnl", "dnnl.h"))):
            return lib, inc
    return None


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        path = shutil.which(name) if name else None
        if path:
            return path
    return None


def _cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jackpot_jax")


def _build(lib_dir: str, inc_dir: str) -> str:
    """Compiles the handler (once per source, jaxlib and oneDNN location); returns its path."""
    import jax
    import jaxlib
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler (set CXX, or install g++)")
    with open(_SOURCE, "rb") as f:
        source = f.read()
    key = hashlib.sha256(source + jaxlib.__version__.encode() + lib_dir.encode()
                         + inc_dir.encode()).hexdigest()[:16]
    out = os.path.join(_cache_dir(), f"onednn_conv_{key}.so")
    if os.path.exists(out):
        return out
    os.makedirs(_cache_dir(), exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=_cache_dir())
    os.close(fd)
    cmd = [cxx, "-O2", "-std=c++17", "-shared", "-fPIC", "-I", jax.ffi.include_dir(),
           "-I", inc_dir, _SOURCE, "-L", lib_dir, "-ldnnl", f"-Wl,-rpath,{lib_dir}", "-o", tmp]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        os.unlink(tmp)
        raise RuntimeError(f"compiling {_SOURCE} failed:\n{' '.join(cmd)}\n{proc.stderr[-2000:]}")
    os.replace(tmp, out)   # atomic: concurrent builds leave one complete file
    return out


def _load() -> None:
    if os.environ.get("JACKPOT_JAX_ONEDNN", "1") == "0":
        _state.update(ok=False, reason="JACKPOT_JAX_ONEDNN=0")
        return
    found = find_onednn()
    if found is None:
        _state.update(ok=False, reason="oneDNN not found (pip install 'jackpot_jax[onednn]', "
                                       "or set JACKPOT_JAX_ONEDNN_ROOT)")
        return
    try:
        import jax
        lib = ctypes.cdll.LoadLibrary(_build(*found))
        jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(lib.JjOnednnWeightGrad),
                                    platform="cpu")
    except (OSError, RuntimeError, AttributeError) as err:
        _state.update(ok=False, reason=f"oneDNN handler unavailable: {err}")
        return
    lib.JjOnednnLastImpl.restype = ctypes.c_char_p
    _state.update(ok=True, reason="", lib=lib)


def available() -> bool:
    """Whether the oneDNN weight gradient can be used (builds and registers it on first call)."""
    with _lock:
        if not _state:
            _load()
        return _state["ok"]


def unavailable_reason() -> str:
    """Why `available` is False ("" when it is True)."""
    available()
    return _state["reason"]


def last_implementation() -> str:
    """The kernel oneDNN chose for the last layer shape it built (e.g. ``jit:avx512_core``)."""
    if not available():
        return ""
    return _state["lib"].JjOnednnLastImpl().decode()


def weight_grad(x, g, w_shape, strides, pads):
    """dL/dw (HWIO, ``w_shape``) of the NHWC convolution of ``x`` with strides and explicit
    ``pads`` ((top, bottom), (left, right)), given the output gradient ``g``; float32."""
    import jax
    import jax.numpy as jnp
    if not available():
        raise RuntimeError(f"jackpot_jax.onednn.weight_grad: {unavailable_reason()}")
    return jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct(tuple(w_shape), jnp.float32))(
        x, g, stride_h=int(strides[0]), stride_w=int(strides[1]),
        pad_top=int(pads[0][0]), pad_bottom=int(pads[0][1]),
        pad_left=int(pads[1][0]), pad_right=int(pads[1][1]))
