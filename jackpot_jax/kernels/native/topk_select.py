"""Exact top-k masks on the CPU by a radix select in C++, as an XLA custom call (optional).

The exact mask (`jackpot_jax.method.topk_mask`) is otherwise 32 counting passes of a bitwise
bisection per layer. ``csrc/topk_select.cc`` finds the same threshold with a 16-bit histogram
and a selection among the few keys of one bucket, and writes the same mask (ties to the lower
flat index, NaN below every number): four cheap passes instead of 32
(`benchmarks/bench_masks.py` measures both). The method uses it for every mask on the CPU
backend (``ComputeOptions.mask_layout="auto"``) when `available()`; elsewhere, or without it,
the counting search runs, and both give identical masks. `kth_largest_key` is the same select
on given keys with a traced k: the thresholds of the persistent-mask swap rule
(`jackpot_jax.method.swap_masks`).

It needs a C++17 compiler (the handler is compiled on first use by
`jackpot_jax.kernels.native.build`, in a few seconds, and cached) and, like the oneDNN
convolutions, one device (the custom call has no sharding rule). ``JACKPOT_JAX_TOPK_SELECT=0``
keeps ``ComputeOptions.mask_layout='auto'`` from choosing it (an explicit ``'native'`` still
does; `jackpot_jax.kernels.options`); `unavailable_reason` says why it cannot be used. A
failed build or load is announced once by a `jackpot_jax.kernels.native.FallbackWarning`.
Under `jax.vmap` the handlers run once per mapped element (``vmap_method="sequential"``).
"""

from __future__ import annotations

import numpy as np

from jackpot_jax.errors import LibraryUnavailable
from jackpot_jax.kernels import native

TARGET = "jackpot_jax_topk_mask"
KTH_TARGET = "jackpot_jax_kth_largest_key"
_SYMBOLS = {TARGET: "JjTopkMask", KTH_TARGET: "JjKthLargestKey"}


def _load():
    try:
        lib = native.load(native.build("topk_select.cc"))
        native.register(lib, _SYMBOLS)
    except (OSError, RuntimeError, AttributeError) as err:
        raise LibraryUnavailable(f"native top-k select unavailable: {err}") from err
    return lib


_library = native.OptionalLibrary(
    _load,
    "native top-k select",
    "masks use the counting search (same masks, slower; JACKPOT_JAX_TOPK_SELECT=0 silences this)",
)


def available() -> bool:
    """Whether the native select can be used (builds and registers it on first call)."""
    return _library.available()


def unavailable_reason() -> str:
    """Why `available` is False ("" when it is True)."""
    return _library.reason()


def topk_mask(scores, keep: int):
    """bool array of ``scores``' shape with exactly ``keep`` ones on the largest scores (ties
    to the lower flat index, NaN below every number; scores compared as float32, as
    `jackpot_jax.method.topk_mask` does). ``keep`` is a static int in ``[0, scores.size]``.
    Runs under `jit` on the CPU backend; raises RuntimeError when not `available()`."""
    import jax
    import jax.numpy as jnp

    if not available():
        raise RuntimeError(f"jackpot_jax.kernels.native.topk_select: {unavailable_reason()}")
    n = int(np.size(scores))
    keep = int(keep)
    if not 0 <= keep <= n:
        raise ValueError(f"keep={keep} is outside [0, {n}] for scores of shape {np.shape(scores)}")
    if n >= 2**31:
        raise ValueError(f"{n} scores in one array; the native select takes at most 2**31 - 1")
    scores = jnp.asarray(scores).astype(jnp.float32)
    return jax.ffi.ffi_call(
        TARGET, jax.ShapeDtypeStruct(scores.shape, jnp.bool_), vmap_method="sequential"
    )(scores, keep=np.int64(keep))


def kth_largest_key(keys, k):
    """The ``k``-th largest entry of a uint32 array (flattened), as a uint32 scalar: the
    largest ``t`` with ``count(keys >= t) >= k``. ``k`` may be traced (an int32 scalar in
    ``[1, keys.size]``; outside it the call fails). Runs under `jit` on the CPU backend."""
    import jax
    import jax.numpy as jnp

    if not available():
        raise RuntimeError(f"jackpot_jax.kernels.native.topk_select: {unavailable_reason()}")
    keys = jnp.asarray(keys)
    if keys.dtype != jnp.uint32 or keys.size == 0:
        raise ValueError(
            f"keys of dtype {keys.dtype} and shape {keys.shape}; expected a non-empty uint32 array"
        )
    return jax.ffi.ffi_call(
        KTH_TARGET, jax.ShapeDtypeStruct((), jnp.uint32), vmap_method="sequential"
    )(keys, jnp.asarray(k, jnp.int32))
