"""jackpot_jax: lottery jackpots in pre-trained networks, in JAX/Flax.

The method (paper: "Lottery Jackpots Exist in Pre-trained Models") is `jackpot_jax.sparsity`
(re-exporting `jackpot_jax.method`); the kernels the models call are `jackpot_jax.kernels`;
models `jackpot_jax.models`; data `jackpot_jax.data`; the pipeline `jackpot_jax.pipeline`
(command line: ``python -m jackpot_jax.main``); the PyTorch converter
`jackpot_jax.interop`; the paper's experiments `jackpot_jax.experiments`. docs/architecture.md
is the map.

`find_jackpot(module, variables, batches, ...)` searches a jackpot in any Flax model
(`jackpot_jax.pipeline.search`; imported on first use).

Importing the package changes nothing in the process: no XLA flag, no JAX backend. The
launchers add the recommended XLA flags (`recommended_xla_flags`, `jackpot_jax.xla_flags`).
"""

from jackpot_jax.xla_flags import recommended_xla_flags

__version__ = "0.1.0"

__all__ = ["Jackpot", "find_jackpot", "recommended_xla_flags"]


def __getattr__(name):
    # Lazy: `import jackpot_jax` stays light (no JAX, Flax or data imports).
    if name in ("find_jackpot", "Jackpot"):
        from jackpot_jax.pipeline import search

        return getattr(search, name)
    raise AttributeError(f"module 'jackpot_jax' has no attribute {name!r}")
