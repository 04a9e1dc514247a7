"""Crash points for the resume tests: the library has no kill switch of its own.

`install(callback, setattr)` wraps the pipeline's functions so that ``callback(event)`` runs
at the moments a crash is most harmful:

* ``'step'``: after every training step (`jackpot_jax.core.make_train_step`'s steps, which a
  search step is built on);
* ``'save'``: after each checkpoint save is issued (`pipeline.resume.Checkpointer.save`);
* ``'export'``: three times at the end of a search (`modes.run_search`): before and after
  ``jackpot.npz`` is written (`pipeline.export.write_jackpot`), and after the model directory
  with the scores is written (`pipeline.checkpoint.save_variables` with ``scores=``).

`kill_at(spec)` is the callback that SIGKILLs the process at the n-th ``event`` of
``spec = 'event:n'``. Subprocesses get it from `sitecustomize` in this folder: put the folder
on PYTHONPATH and set JACKPOT_JAX_KILL_AT='event:n'.
"""

import functools
import os
import signal
import sys


def kill_at(spec: str):
    name, _, n = spec.partition(":")
    counts = {"n": 0}

    def callback(event):
        if event != name:
            return
        counts["n"] += 1
        if counts["n"] == int(n):
            os.kill(os.getpid(), signal.SIGKILL)

    return callback


def install(callback, setattr=setattr):
    """Wraps the pipeline's functions (with ``setattr``, e.g. pytest's ``monkeypatch.setattr``
    so that a test undoes it) to call ``callback(event)``."""
    from jackpot_jax import core
    from jackpot_jax.core import steps
    from jackpot_jax.pipeline import checkpoint, export, resume

    make_train_step = steps.make_train_step

    @functools.wraps(make_train_step)
    def counted_make_train_step(*args, **kwargs):
        step = make_train_step(*args, **kwargs)

        def counted(*a, **k):
            out = step(*a, **k)
            callback("step")
            return out

        return counted

    save = resume.Checkpointer.save

    def counted_save(self, *args, **kwargs):
        out = save(self, *args, **kwargs)
        callback("save")
        return out

    write_jackpot = export.write_jackpot

    def counted_write_jackpot(*args, **kwargs):
        searching = sys._getframe(1).f_code.co_name == "run_search"
        if searching:
            callback("export")
        out = write_jackpot(*args, **kwargs)
        if searching:
            callback("export")
        return out

    save_variables = checkpoint.save_variables

    def counted_save_variables(*args, **kwargs):
        out = save_variables(*args, **kwargs)
        if kwargs.get("scores") is not None:
            callback("export")
        return out

    setattr(steps, "make_train_step", counted_make_train_step)
    setattr(core, "make_train_step", counted_make_train_step)
    setattr(resume.Checkpointer, "save", counted_save)
    setattr(export, "write_jackpot", counted_write_jackpot)
    setattr(checkpoint, "save_variables", counted_save_variables)
