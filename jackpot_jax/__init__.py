"""jackpot_jax: lottery jackpots in pre-trained networks, in JAX/Flax.

The method (paper: "Lottery Jackpots Exist in Pre-trained Models") lives in
`jackpot_jax.sparsity`; models in `jackpot_jax.models`; the pipeline in
`jackpot_jax.train` and `jackpot_jax.main`.
"""

__version__ = "0.1.0"
