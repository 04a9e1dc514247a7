"""jackpot_jax: lottery jackpots in pre-trained networks, in JAX/Flax.

The method (paper: "Lottery Jackpots Exist in Pre-trained Models") is `jackpot_jax.sparsity`
(re-exporting `jackpot_jax.method`); the kernels the models call are `jackpot_jax.kernels`;
models `jackpot_jax.models`; data `jackpot_jax.data`; the pipeline `jackpot_jax.pipeline`
(command line: ``python -m jackpot_jax.main``); the PyTorch converter
`jackpot_jax.interop`; the paper's experiments `jackpot_jax.experiments`. docs/architecture.md
is the map.

Importing the package changes nothing in the process: no XLA flag, no JAX backend. The
launchers add the recommended XLA flags (`recommended_xla_flags`, `jackpot_jax.xla_flags`).
"""

from jackpot_jax.xla_flags import recommended_xla_flags

__version__ = "0.1.0"

__all__ = ["recommended_xla_flags"]
