"""Command line: ``python -m jackpot_jax.study --config configs/study_fashion_mnist.py --workdir DIR``.

The code is `jackpot_jax.experiments.study`; this module only launches it.
"""

if __name__ == "__main__":
    from jackpot_jax.experiments.study import cli

    cli()
