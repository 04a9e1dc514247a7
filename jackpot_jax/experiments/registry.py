"""The studies by name: what ``python -m jackpot_jax.study --config FILE`` runs is
``STUDIES[config.study]`` (``"paper"`` when the config has no ``study`` field;
``python -m jackpot_jax.sweep`` defaults to ``"sweep"``).

This is the one module that imports every study: a new study is a module with
``run(config, workdir) -> results`` and ``lines(results) -> list[str]``, an entry here and a
config naming it.
"""

from __future__ import annotations

from jackpot_jax.experiments import common, lm_study, study, sweep, vit_study

STUDIES: dict[str, common.StudyRunner] = {
    "paper": common.StudyRunner(study.run_study, study.lines),  # configs/study_fashion_mnist.py
    "sweep": common.StudyRunner(sweep.run_sweep, sweep.lines),  # configs/sweep_*.py
    "vit": common.StudyRunner(vit_study.run_vit_study, vit_study.lines),  # study_*_vit.py
    "lm": common.StudyRunner(lm_study.run_lm_study, lm_study.lines),  # study_lm_*.py
}


def cli(default: str) -> None:
    """The command line of ``python -m jackpot_jax.study`` / ``sweep``: runs the config's study
    (``default`` when the config names none); see `common.cli`."""
    common.cli(STUDIES, default)
