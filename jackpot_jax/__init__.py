"""jackpot_jax: lottery jackpots in pre-trained networks, in JAX/Flax.

``import jackpot_jax as jj`` gives the library:

* the method (paper: "Lottery Jackpots Exist in Pre-trained Models"), pure functions over
  pytrees: `jj.keep_counts`, `jj.masks_from_scores`, `jj.masked_params`, `jj.topk_mask`,
  `jj.nm_budget`, `jj.overlap`, ... and its registries `jj.CRITERIA`, `jj.DISTRIBUTIONS`,
  `jj.WARMUPS`, `jj.MASK_UPDATES` (every name of `jackpot_jax.method`);
* the search core: `jj.SearchState`, `jj.init_search`, `jj.make_search_step`,
  `jj.make_train_step`, `jj.run_epoch`, `jj.make_optimizer` (`jackpot_jax.core`);
* `jj.ComputeOptions`: how a step is computed (convolutions, mask layout, dtype), never what;
* `jj.find_jackpot(module, variables, batches, ...)`: the whole search on any Flax model.

The command line is ``python -m jackpot_jax.main`` (`jackpot_jax.pipeline`); docs/architecture.md
is the map. Importing the package changes nothing in the process: no XLA flag, no JAX backend
(the names above are imported on first use). The launchers add the recommended XLA flags
(`recommended_xla_flags`, `jackpot_jax.xla_flags`).
"""

from jackpot_jax.xla_flags import recommended_xla_flags

__version__ = "0.1.0"

_CORE = (
    "SearchState",
    "InitialSearch",
    "MaskTracker",
    "init_search",
    "make_search_step",
    "make_train_step",
    "make_eval_step",
    "run_epoch",
    "make_optimizer",
    "make_mesh",
    "search_budget",
    "search_filter",
    "current_masks",
    "swap_rate_schedule",
)
_ELSEWHERE = {
    "find_jackpot": "jackpot_jax.pipeline.search",
    "Jackpot": "jackpot_jax.pipeline.search",
    "ComputeOptions": "jackpot_jax.kernels",
}


def _method_names() -> tuple[str, ...]:
    import importlib

    return tuple(importlib.import_module("jackpot_jax.method").__all__)


def __getattr__(name):
    # Lazy: `import jackpot_jax` stays light (no JAX, Flax or data imports).
    import importlib

    if name in _CORE:
        return getattr(importlib.import_module("jackpot_jax.core"), name)
    if name in _ELSEWHERE:
        return getattr(importlib.import_module(_ELSEWHERE[name]), name)
    if name in _method_names():
        return getattr(importlib.import_module("jackpot_jax.method"), name)
    raise AttributeError(f"module 'jackpot_jax' has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_CORE, *_ELSEWHERE, *_method_names()})


__all__ = ["recommended_xla_flags", *_CORE, *_ELSEWHERE]
