"""Command line: ``python -m jackpot_jax.study --config configs/study_fashion_mnist.py --workdir DIR``.

Runs the study that the config's ``study`` field names (``"paper"`` without one) from
`jackpot_jax.experiments.registry.STUDIES`; this module only launches it.
"""

if __name__ == "__main__":
    from jackpot_jax.experiments.registry import cli

    cli(default="paper")
