"""Command line: ``python -m jackpot_jax.sweep --config configs/sweep_search_fashion_mnist.py --workdir DIR``.

The code is `jackpot_jax.experiments.sweep`; this module only launches it.
"""

if __name__ == "__main__":
    from jackpot_jax.experiments.sweep import cli

    cli()
