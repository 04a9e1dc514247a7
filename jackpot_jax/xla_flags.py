"""XLA flags the launchers recommend (``python -m jackpot_jax.main|study|sweep``, benchmarks).

Importing jackpot_jax changes no flag: XLA reads ``XLA_FLAGS`` once, when a backend starts,
and for the whole process (and its children), so only a program's launcher may decide them.
The launchers call `apply_recommended` before JAX starts; library users who want the same
may call it first thing in their own program, or add `recommended_xla_flags()` themselves.

The one recommendation today: ``--xla_cpu_experimental_ynn_fusion_type=`` (an empty list:
XLA:CPU's YNNPACK fusions off), which made the training steps ~10% cheaper on 2 CPU cores
(benchmarks/README.md), for jaxlib 0.10.x, where the flag is known to exist (XLA aborts on an
unknown flag). It concerns XLA:CPU only; GPU and TPU backends ignore it.

Standard library only: this module must not start JAX.
"""

from __future__ import annotations

import os
import sys

OPT_OUT = "JACKPOT_JAX_XLA_FLAGS"  # set to 0: the launchers add nothing
_FLAGS_BY_JAXLIB = {(0, 10): ("--xla_cpu_experimental_ynn_fusion_type=",)}


def _jaxlib_version() -> tuple[int, int] | None:
    try:
        from importlib.metadata import version

        return tuple(int(p) for p in version("jaxlib").split(".")[:2])
    except Exception:  # pylint: disable=broad-except  # not installed, odd version string
        return None


def recommended_xla_flags() -> list[str]:
    """The flags jackpot_jax recommends for the installed jaxlib (possibly none)."""
    return list(_FLAGS_BY_JAXLIB.get(_jaxlib_version(), ()))


def _flag_name(flag: str) -> str:
    return flag.lstrip("-").split("=", 1)[0]


def _backends_started() -> bool:
    bridge = sys.modules.get("jax._src.xla_bridge")
    return bool(getattr(bridge, "_backends", None))


def apply_recommended(environ=None) -> str:
    """Adds to ``XLA_FLAGS`` (in ``environ``, default `os.environ`) each recommended flag that
    it does not already name (a flag the user set always wins), unless ``JACKPOT_JAX_XLA_FLAGS``
    is ``0`` or a JAX backend has already started (then the flags could not take effect).
    Returns one line for the run's header saying what was added, or why nothing was."""
    environ = os.environ if environ is None else environ
    if environ.get(OPT_OUT, "1") == "0":
        return f"XLA flags: none added ({OPT_OUT}=0)"
    wanted = recommended_xla_flags()
    if not wanted:
        return f"XLA flags: none added (none recommended for jaxlib {_jaxlib_version()})"
    current = environ.get("XLA_FLAGS", "")
    new = [f for f in wanted if _flag_name(f) not in current]
    if not new:
        return "XLA flags: none added (XLA_FLAGS already sets them)"
    if environ is os.environ and _backends_started():
        return "XLA flags: none added (JAX had already started: set them before its first use)"
    environ["XLA_FLAGS"] = " ".join([current, *new]).strip()
    return f"XLA flags: added {' '.join(new)} ({OPT_OUT}=0 to opt out)"
