"""oneDNN's convolutions on the CPU, as XLA custom calls (optional).

XLA:CPU's own convolutions were the slow part of a ResNet-32x2 search step on 2 CPU cores
(batch 128, float32, `benchmarks/bench_conv.py`): its weight gradient is an Eigen contraction
over the image patches of a whole-feature-map window, after transposing the activations to
batch-minor (2.3-2.8x as long as oneDNN's direct kernel on the first two stages, 1.5x on
the third), and its forward and input-gradient convolutions took 1.1-1.4x as long as
oneDNN's on NHWC data. This module compiles a small XLA FFI handler (``csrc/onednn_conv.cc``)
that runs oneDNN's convolution forward, backward-data and backward-weights primitives on the
NHWC activations in place, and registers it with JAX. `jackpot_jax.kernels.conv2d` uses it for
the explicit path's convolutions when `available()`.

It is optional. It needs

* oneDNN's library and its C headers of the same release: ``pip install 'jackpot_jax[onednn]'``
  (``onednn-cpu-gomp``, the library built with OpenMP, CPU only, and
  ``onednn-devel-cpu-gomp``, its headers), or ``JACKPOT_JAX_ONEDNN_ROOT`` naming a directory with
  ``lib/libdnnl.so`` and ``include/oneapi/dnnl/dnnl.h``. The handler is compiled against the
  headers found next to the library (never another copy, such as torch's); at load, a library
  older than those headers (or of another major version) is refused with both versions named;
* a C++17 compiler: the handler is compiled on first use (`jackpot_jax.kernels.native.build`: into
  ``$XDG_CACHE_HOME/jackpot_jax``, else ``~/.cache/jackpot_jax``), in a few seconds;
* float32, on the CPU backend, with one device (the custom calls have no sharding rule: under
  data parallelism over several CPU devices the convolutions stay XLA's).

``JACKPOT_JAX_ONEDNN=0`` keeps ``ComputeOptions.onednn='auto'`` from using it (an explicit
``onednn='on'`` still does; `jackpot_jax.kernels.options`); `unavailable_reason` says why it
cannot be used. Anything missing means XLA's own convolutions, as before (announced once by a
`jackpot_jax.kernels.native.FallbackWarning` when oneDNN is installed but the handler cannot be
built or loaded). Under `jax.vmap` each custom call runs once per mapped element
(``vmap_method="sequential"``): the handlers take 4-D arrays only, and the mapped axis cannot
simply join the batch axis (the weight gradient sums over the batch).
"""

from __future__ import annotations

import ctypes
import os
import re
import sys
import sysconfig

import numpy as np

from jackpot_jax.errors import LibraryUnavailable
from jackpot_jax.kernels import native

# XLA custom-call targets -> the handler symbols in csrc/onednn_conv.cc.
TARGETS = {
    "jackpot_jax_onednn_conv_forward": "JjOnednnForward",
    "jackpot_jax_onednn_conv_input_grad": "JjOnednnInputGrad",
    "jackpot_jax_onednn_conv_weight_grad": "JjOnednnWeightGrad",
}


def _roots() -> list[str]:
    roots = []
    if os.environ.get("JACKPOT_JAX_ONEDNN_ROOT"):
        roots.append(os.environ["JACKPOT_JAX_ONEDNN_ROOT"])
    roots += [sysconfig.get_paths()["data"], sys.prefix, "/usr/local", "/usr"]
    return list(dict.fromkeys(roots))


def _has_library(root: str) -> bool:
    return os.path.exists(os.path.join(root, "lib", "libdnnl.so"))


def _has_headers(root: str) -> bool:
    return os.path.exists(os.path.join(root, "include", "oneapi", "dnnl", "dnnl.h"))


def find_onednn() -> tuple[str, str] | None:
    """(library directory, include directory) of an installed oneDNN (both under one root),
    or None."""
    for root in _roots():
        if _has_library(root) and _has_headers(root):
            return os.path.join(root, "lib"), os.path.join(root, "include")
    return None


def not_found_reason() -> str:
    """Why `find_onednn` finds nothing ("" when it finds oneDNN)."""
    if find_onednn() is not None:
        return ""
    libs = [root for root in _roots() if _has_library(root)]
    if libs:
        return (
            f"oneDNN's library is in {os.path.join(libs[0], 'lib')} but its C headers "
            "(include/oneapi/dnnl/dnnl.h) are not there (pip install 'jackpot_jax[onednn]' "
            "installs both: onednn-cpu-gomp and onednn-devel-cpu-gomp)"
        )
    return (
        "oneDNN not found (pip install 'jackpot_jax[onednn]', or set JACKPOT_JAX_ONEDNN_ROOT "
        "to a directory with lib/libdnnl.so and include/oneapi/dnnl/dnnl.h)"
    )


Version = tuple[int, int, int]


def header_version(include_dir: str) -> Version:
    """(major, minor, patch) that ``include_dir/oneapi/dnnl/dnnl_version.h`` declares."""
    path = os.path.join(include_dir, "oneapi", "dnnl", "dnnl_version.h")
    with open(path) as f:
        text = f.read()
    found = {}
    for part in ("MAJOR", "MINOR", "PATCH"):
        match = re.search(rf"^#\s*define\s+DNNL_VERSION_{part}\s+(\d+)", text, re.M)
        if match is None:
            raise RuntimeError(f"{path} declares no DNNL_VERSION_{part}")
        found[part] = int(match.group(1))
    return found["MAJOR"], found["MINOR"], found["PATCH"]


def _dotted(version: Version) -> str:
    return ".".join(map(str, version))


def version_problem(library: Version, headers: Version) -> str:
    """Why a handler compiled against oneDNN ``headers`` must not run with the oneDNN
    ``library`` ("" when it may): another major version (another ABI), or an older release
    (the handler may use what that release does not have)."""
    if library[0] != headers[0]:
        return (
            f"oneDNN library {_dotted(library)} is of another major version than the headers "
            f"{_dotted(headers)} the handler was built against"
        )
    if library < headers:
        return (
            f"oneDNN library {_dotted(library)} is older than the headers {_dotted(headers)} "
            "the handler was built against"
        )
    return ""


def _version_of(function) -> Version:
    parts = [ctypes.c_int() for _ in range(3)]
    function(*(ctypes.byref(p) for p in parts))
    return tuple(p.value for p in parts)


def _build(lib_dir: str, inc_dir: str) -> str:
    """Compiles the handler (once per source, toolchain, oneDNN location and header version);
    returns its path."""
    return native.build(
        "onednn_conv.cc",
        flags=["-I", inc_dir],
        libs=["-L", lib_dir, "-ldnnl", f"-Wl,-rpath,{lib_dir}"],
        key=[f"oneDNN headers {_dotted(header_version(inc_dir))}"],
    )


def _load():
    found = find_onednn()
    if found is None:
        # Not installed at all: the expected case without the extra, no warning; the library
        # without its headers is a broken install, announced.
        raise LibraryUnavailable(
            not_found_reason(), announce=any(_has_library(root) for root in _roots())
        )
    try:
        lib = native.load(_build(*found))
        headers = _version_of(lib.JjOnednnHeaderVersion)
        library = _version_of(lib.JjOnednnLibraryVersion)
    except (OSError, RuntimeError, AttributeError) as err:
        hint = ""
        if isinstance(err, OSError) and ("tbb" in str(err) or "sycl" in str(err)):
            hint = (
                f" ({found[0]}/libdnnl.so is oneDNN's SYCL build, from the `onednn` package; "
                "pip install --force-reinstall --no-deps onednn-cpu-gomp==2023.2.0 puts the "
                "CPU build back)"
            )
        raise LibraryUnavailable(f"oneDNN handler unavailable: {err}{hint}") from err
    problem = version_problem(library, headers)
    if problem:
        raise LibraryUnavailable(f"{problem} ({found[0]})")
    native.register(lib, TARGETS)
    lib.JjOnednnLastImpl.restype = ctypes.c_size_t
    lib.JjOnednnLastImpl.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    return lib


_library = native.OptionalLibrary(
    _load, "oneDNN convolutions", "the convolutions stay XLA's (JACKPOT_JAX_ONEDNN=0 silences this)"
)


def available() -> bool:
    """Whether the oneDNN convolutions can be used (builds and registers them on first call)."""
    return _library.available()


def unavailable_reason() -> str:
    """Why `available` is False ("" when it is True)."""
    return _library.reason()


def versions() -> dict[str, str]:
    """The oneDNN versions of the loaded handler: ``headers`` (compiled in) and ``library``
    (the libdnnl it runs with); empty when not `available()`."""
    if not available():
        return {}
    lib = _library.lib
    return {
        "headers": _dotted(_version_of(lib.JjOnednnHeaderVersion)),
        "library": _dotted(_version_of(lib.JjOnednnLibraryVersion)),
    }


def last_implementation() -> str:
    """The kernel oneDNN chose for the last primitive it built (e.g. ``brgconv:avx512_core``)."""
    if not available():
        return ""
    size = 256
    while True:
        buf = ctypes.create_string_buffer(size)
        length = _library.lib.JjOnednnLastImpl(buf, size)
        if length < size:
            return buf.value.decode()
        size = length + 1


def _call(target, out_shape, a, b, strides, pads):
    import jax
    import jax.numpy as jnp

    if not available():
        raise RuntimeError(f"jackpot_jax.kernels.native.onednn: {unavailable_reason()}")
    if (
        len(out_shape) != 4
        or np.ndim(a) != 4
        or np.ndim(b) != 4
        or min(out_shape) < 1
        or min(strides) < 1
        or min(min(p) for p in pads) < 0
    ):
        raise ValueError(
            f"jackpot_jax.kernels.native.onednn: arrays of shapes {np.shape(a)}, {np.shape(b)} -> "
            f"{tuple(out_shape)}, strides {tuple(strides)}, padding {tuple(pads)}; expected "
            "4-D NHWC/HWIO arrays, a non-empty output, strides >= 1 and padding >= 0"
        )
    # Under vmap: one call per mapped element (the handlers take 4-D arrays only).
    return jax.ffi.ffi_call(
        target, jax.ShapeDtypeStruct(tuple(out_shape), jnp.float32), vmap_method="sequential"
    )(
        a,
        b,
        stride_h=int(strides[0]),
        stride_w=int(strides[1]),
        pad_top=int(pads[0][0]),
        pad_bottom=int(pads[0][1]),
        pad_left=int(pads[1][0]),
        pad_right=int(pads[1][1]),
    )


def output_shape(x_shape, w_shape, strides, pads) -> tuple[int, int, int, int]:
    """(N, Ho, Wo, O) of the NHWC convolution of ``x_shape`` with the HWIO ``w_shape``."""
    n, h, w, _ = x_shape
    kh, kw, _, o = w_shape
    return (
        n,
        (h + pads[0][0] + pads[0][1] - kh) // strides[0] + 1,
        (w + pads[1][0] + pads[1][1] - kw) // strides[1] + 1,
        o,
    )


# In the three functions below: NHWC activations, HWIO kernel, float32; ``strides`` (h, w)
# and explicit ``pads`` ((top, bottom), (left, right)), as in `lax.conv_general_dilated`.


def forward(x, w, strides, pads):
    """The convolution (cross-correlation) of ``x`` with ``w``."""
    return _call(
        "jackpot_jax_onednn_conv_forward",
        output_shape(x.shape, w.shape, strides, pads),
        x,
        w,
        strides,
        pads,
    )


def input_grad(g, w, x_shape, strides, pads):
    """dL/dx (shape ``x_shape``) of that convolution, given the output gradient ``g``."""
    return _call("jackpot_jax_onednn_conv_input_grad", x_shape, g, w, strides, pads)


def weight_grad(x, g, w_shape, strides, pads):
    """dL/dw (HWIO, ``w_shape``) of that convolution of ``x``, given the output gradient ``g``."""
    return _call("jackpot_jax_onednn_conv_weight_grad", w_shape, x, g, strides, pads)
