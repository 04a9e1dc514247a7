"""Which convolutions, BatchNorm and top-k masks a traced step uses: `ComputeOptions`.

A `ComputeOptions` is a frozen, hashable value. The pipeline builds one from the config
(`ComputeOptions.from_config`), resolves its ``'auto'`` fields for the backend at hand
(`resolve`) and hands it to the step builders (`jackpot_jax.core`), which make it
part of every cache key and trace their step inside ``with use(options):``. The kernels and
the method read the options of the step being traced with `current()`; outside any step the
defaults apply. Library users may wrap their own code in ``with use(...)`` too, but should
call it inside the function they jit (as the step builders do): a jitted function does not
know the context it was called in, only the one it was traced in.

Fields:

* ``conv_impl``: ``'xla'`` (lax's convolutions, Flax's BatchNorm), ``'explicit'`` (the
  hand-written gradients of `jackpot_jax.kernels`, which XLA:CPU runs fast) or ``'auto'``
  (`AUTO` for the backend: what benchmarks/bench_step.py measured fastest).
* ``onednn``: ``'on'`` (the explicit path's convolutions are oneDNN's where
  `onednn_off_reason` finds nothing against it: float32, the CPU backend, one device, the
  handler built), ``'off'``, or ``'auto'``: 'on' unless ``JACKPOT_JAX_ONEDNN=0``.
* ``mask_layout``: how several layers' exact top-k masks are computed: ``'together'`` (one
  unrolled radix search over all layers: a few kernels, what GPUs and TPUs want),
  ``'per_layer'`` (one bisection loop per layer: faster than together on XLA:CPU),
  ``'native'`` (a radix select in C++ per layer, CPU only) or ``'auto'`` (native on the CPU
  with one device where the handler builds, unless ``JACKPOT_JAX_TOPK_SELECT=0``; else
  per_layer on the CPU; together elsewhere). All give identical masks.
* ``radix_bits``: threshold bits fixed per pass in the together layout (1, 2, 4 or 8; the
  same masks): 4 = 8 passes of 15 candidate counts instead of 32 dependent passes.
* ``compute_dtype``: ``'float32'`` or ``'bfloat16'`` (activations and masked weights of
  the training steps).

Environment variables choose only what ``'auto'`` means, never an explicit field:
``JACKPOT_JAX_ONEDNN=0`` makes onednn 'auto' leave oneDNN out, ``JACKPOT_JAX_TOPK_SELECT=0``
makes mask_layout 'auto' leave the native select out; ``onednn='on'`` and
``mask_layout='native'`` use them whatever the environment says. They are read each time an
option is resolved (`resolve`, `onednn_off_reason`, `mask_layout`), not once per process, and
the resolved value (``'on'``/``'off'``, a concrete layout) is what step caches are keyed on.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os

import jax
import jax.numpy as jnp

CONV_IMPLS = ("auto", "xla", "explicit")
ONEDNN_MODES = ("auto", "on", "off")
MASK_LAYOUTS = ("auto", "per_layer", "together", "native")
RADIX_BITS = (1, 2, 4, 8)
COMPUTE_DTYPES = ("float32", "bfloat16")
# What conv_impl 'auto' means on each backend (benchmarks/README.md has the measurements).
AUTO = {"cpu": "explicit", "gpu": "xla", "tpu": "xla"}
# Set to "0", these leave a native handler out of what 'auto' picks (explicit fields win).
ONEDNN_ENV = "JACKPOT_JAX_ONEDNN"
TOPK_SELECT_ENV = "JACKPOT_JAX_TOPK_SELECT"


def _opted_out(env: str) -> str:
    """``NAME=0`` when the environment opts out of a native handler now, else "" (read on
    each call: a default chosen by the environment, never cached)."""
    return f"{env}=0" if os.environ.get(env, "1") == "0" else ""


def _check(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r}; expected one of {allowed}")


@dataclasses.dataclass(frozen=True)
class ComputeOptions:
    """How a step is computed (never what it computes: every choice gives the same masks, and
    the same results up to float rounding). See the module docstring for the fields."""

    conv_impl: str = "auto"
    onednn: str = "auto"
    mask_layout: str = "auto"
    radix_bits: int = 4
    compute_dtype: str = "float32"

    def __post_init__(self):
        _check("conv_impl", self.conv_impl, CONV_IMPLS)
        _check("onednn", self.onednn, ONEDNN_MODES)
        _check("mask_layout", self.mask_layout, MASK_LAYOUTS)
        _check("radix_bits", self.radix_bits, RADIX_BITS)
        _check("compute_dtype", self.compute_dtype, COMPUTE_DTYPES)

    @classmethod
    def from_config(cls, config) -> ComputeOptions:
        """The options a run's config asks for (``conv_impl``, ``compute_dtype``, and
        ``onednn``, ``mask_layout``, ``radix_bits`` where the config has them)."""
        fields = {f.name: config.get(f.name, f.default) for f in dataclasses.fields(cls)}
        return cls(**fields)

    def replace(self, **changes) -> ComputeOptions:
        return dataclasses.replace(self, **changes)


DEFAULT = ComputeOptions()
_current: contextvars.ContextVar[ComputeOptions] = contextvars.ContextVar(
    "jackpot_jax_compute_options", default=DEFAULT
)


def current() -> ComputeOptions:
    """The options of the code being traced now (`DEFAULT` outside any `use`)."""
    return _current.get()


@contextlib.contextmanager
def use(options: ComputeOptions | None = None, **changes):
    """``with use(options): ...`` (or ``use(conv_impl='xla')``: the current options with those
    fields changed) traces the block with those options."""
    options = current() if options is None else options
    token = _current.set(options.replace(**changes) if changes else options)
    try:
        yield _current.get()
    finally:
        _current.reset(token)


def conv_impl(options: ComputeOptions | None = None) -> str:
    """``options.conv_impl`` (default: `current()`) with 'auto' resolved for this backend:
    ``'xla'`` or ``'explicit'``."""
    options = current() if options is None else options
    if options.conv_impl != "auto":
        return options.conv_impl
    return AUTO.get(jax.default_backend(), "xla")


def onednn_off_reason(dtype=None, options: ComputeOptions | None = None) -> str:
    """Why a convolution traced with ``options`` (explicit path, ``dtype``, default the
    options' compute dtype) would not call oneDNN; "" when it would. oneDNN runs only with
    one device: the custom calls have no sharding rule, and under data parallelism XLA would
    run them on each device's shard of the batch without adding the shards' weight
    gradients."""
    options = current() if options is None else options
    dtype = options.compute_dtype if dtype is None else dtype
    if options.onednn == "off":
        return "switched off (ComputeOptions.onednn='off')"
    if options.onednn == "auto" and _opted_out(ONEDNN_ENV):
        return f"{_opted_out(ONEDNN_ENV)} (ComputeOptions.onednn='on' overrides it)"
    if jax.default_backend() != "cpu" or jnp.dtype(dtype) != jnp.float32:
        return "used on the CPU in float32 only"
    from jackpot_jax.kernels import native
    from jackpot_jax.kernels.native import onednn

    return native.placement_reason() or onednn.unavailable_reason()


def onednn_used(dtype=None, options: ComputeOptions | None = None) -> bool:
    """Whether a convolution traced with ``options`` (explicit path) would call oneDNN."""
    return not onednn_off_reason(dtype, options)


def native_topk_off_reason() -> str:
    """Why mask_layout 'auto' does not pick the native select on this backend now ("" when it
    does): ``JACKPOT_JAX_TOPK_SELECT=0``, several devices, or the handler unavailable."""
    if _opted_out(TOPK_SELECT_ENV):
        return f"{_opted_out(TOPK_SELECT_ENV)} (ComputeOptions.mask_layout='native' overrides it)"
    from jackpot_jax.kernels import native
    from jackpot_jax.kernels.native import topk_select

    return native.placement_reason() or topk_select.unavailable_reason()


def mask_layout(options: ComputeOptions | None = None) -> str:
    """``options.mask_layout`` (default: `current()`) with 'auto' resolved for this backend."""
    options = current() if options is None else options
    if options.mask_layout != "auto":
        return options.mask_layout
    if jax.default_backend() != "cpu":
        return "together"
    return "per_layer" if native_topk_off_reason() else "native"


def resolve(options: ComputeOptions | None = None) -> ComputeOptions:
    """``options`` with every 'auto' replaced by what it means on this backend and device
    count now (builds the native handlers on first use): the value the step builders key
    their caches on, so that a step never outlives a change of what 'auto' means."""
    options = current() if options is None else options
    return options.replace(
        conv_impl=conv_impl(options),
        onednn="on" if onednn_used(jnp.float32, options) else "off",
        mask_layout=mask_layout(options),
    )


def describe_convolutions(options: ComputeOptions | None = None) -> str:
    """One line saying which convolutions a step traced with ``options`` runs, and why oneDNN's
    are not used where they are not (the CLI prints it at the start of a run)."""
    options = current() if options is None else options
    where = f"{jax.default_backend()}, {options.compute_dtype}"
    if conv_impl(options) == "xla":
        return f"convolutions: XLA's ({where})"
    why = onednn_off_reason(options=options)
    if not why:
        return f"convolutions: oneDNN's ({where})"
    return f"convolutions: XLA's ({where}; oneDNN: {why})"


def describe_masks(options: ComputeOptions | None = None) -> str:
    """One line saying how the exact top-k masks of a step traced with ``options`` are
    computed (the CLI prints it at the start of a run)."""
    options = current() if options is None else options
    layout = mask_layout(options)
    where = jax.default_backend()
    if layout == "native":
        return f"masks: native radix select per layer ({where})"
    if layout == "together":
        return (
            f"masks: radix search, {options.radix_bits} bits a pass, all layers together ({where})"
        )
    why = ""
    if options.mask_layout == "auto" and where == "cpu":
        why = f"; native: {native_topk_off_reason()}"
    return f"masks: 32-pass counting search per layer ({where}{why})"
