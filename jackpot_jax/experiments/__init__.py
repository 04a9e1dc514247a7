"""Experiments built on the pipeline: the paper's findings (`study`, ``python -m
jackpot_jax.study``) and the search-efficiency sweep (`sweep`, ``python -m jackpot_jax.sweep``)."""
