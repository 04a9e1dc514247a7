"""Experiments built on the pipeline: the paper's findings, the search-recipe sweep and the ViT
study, each run by ``python -m jackpot_jax.study --config FILE --workdir DIR`` (the config's
``study`` field picks it from `registry.STUDIES`; ``python -m jackpot_jax.sweep`` is the same
command with ``"sweep"`` as the default).

Modules by layer, bottom first (imports run downwards; `tests/test_architecture.py` checks):
`provenance` (what each invocation records about itself), `stats` (sample stds, paired
differences with 95% t-intervals), `runner` (pieces: one pipeline run per folder, read back
when done, planned for worker processes), `common` (recipes as overrides and pieces, the
coordinate search, the command line); the pieces and verdicts: `study_pieces`, `vit_pieces`,
`claims`; the reports: `study_report`, `sweep_report`, `vit_report`; the studies: `study`
(the paper), `sweep`, `vit_study`; `registry` (study name -> runner).
`tools/check_results.py` recomputes a results.json from its per-seed values.
"""
