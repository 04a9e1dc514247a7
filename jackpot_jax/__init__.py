"""jackpot_jax: lottery jackpots in pre-trained networks, in JAX/Flax.

The method (paper: "Lottery Jackpots Exist in Pre-trained Models") lives in
`jackpot_jax.sparsity`; models in `jackpot_jax.models`; the pipeline in
`jackpot_jax.train` and `jackpot_jax.main`.

XLA flags: importing this package adds ``--xla_cpu_experimental_ynn_fusion_type=`` (an empty
list: XLA:CPU's YNNPACK fusions off) to ``XLA_FLAGS``, which made the training steps ~10%
cheaper on 2 CPU cores (benchmarks/README.md). It does so only

* if ``XLA_FLAGS`` does not already name that flag (a flag the user set always wins),
* if ``JACKPOT_JAX_XLA_FLAGS`` is not ``0`` (the opt-out),
* for jaxlib 0.10.x, where the flag is known to exist (XLA aborts on an unknown flag),
* and before JAX has started a backend: import jackpot_jax before running any JAX
  computation for it to take effect (the flag is read once, when the CPU client starts).

It only concerns XLA:CPU; GPU and TPU backends ignore it.
"""

import os as _os
import sys as _sys

__version__ = "0.1.0"

_YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type="
_FLAG_JAXLIB = ((0, 10),)   # jaxlib (major, minor) versions known to have the flag


def _jaxlib_version():
    try:
        from importlib.metadata import version
        return tuple(int(p) for p in version("jaxlib").split(".")[:2])
    except Exception:  # pylint: disable=broad-except  # not installed, odd version string
        return None


def _backends_started() -> bool:
    bridge = _sys.modules.get("jax._src.xla_bridge")
    return bool(getattr(bridge, "_backends", None))


def default_xla_flags(environ=None) -> str | None:
    """The ``XLA_FLAGS`` value this package sets at import, or None where it leaves it alone
    (see the module docstring for when)."""
    environ = _os.environ if environ is None else environ
    current = environ.get("XLA_FLAGS", "")
    if (environ.get("JACKPOT_JAX_XLA_FLAGS", "1") == "0"
            or "xla_cpu_experimental_ynn_fusion_type" in current
            or _jaxlib_version() not in _FLAG_JAXLIB):
        return None
    return f"{current} {_YNN_FLAG}".strip()


if not _backends_started():
    _flags = default_xla_flags()
    if _flags is not None:
        _os.environ["XLA_FLAGS"] = _flags
