"""Command line: ``python -m jackpot_jax.sweep --config configs/sweep_search_fashion_mnist.py --workdir DIR``.

The same command line as ``python -m jackpot_jax.study``, with the study ``"sweep"`` for a
config that names none (`jackpot_jax.experiments.sweep`); this module only launches it.
"""

if __name__ == "__main__":
    from jackpot_jax.experiments.registry import cli

    cli(default="sweep")
