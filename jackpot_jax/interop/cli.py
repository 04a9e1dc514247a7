"""The converter's command line (``tools/convert_torch_weights.py``): a torch `.pth`, a Hugging
Face language-model directory or a GGUF file -> a checkpoint directory; with ``--to-torch`` a
checkpoint, jackpot or run back to a torch `.pth` (a Hugging Face directory for LMs)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from jackpot_jax import models
from jackpot_jax.errors import InputError, JackpotError
from jackpot_jax.interop.torch_convert import (
    _is_jackpot_only,
    convert_checkpoint,
    export_checkpoint,
)
from jackpot_jax.pipeline import checkpoint, export


def _lm_input(path: str) -> str | None:
    """'hf' for a Hugging Face model directory, 'gguf' for a GGUF file, None otherwise."""
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json")):
        return "hf"
    if path.lower().endswith(".gguf"):
        return "gguf"
    return None


def _lm_arch(path: str) -> str | None:
    """The arch of a checkpoint directory or jackpot, if it is a language model."""
    try:
        if _is_jackpot_only(path):
            arch = export.load_jackpot(path)[0]["arch"]
        else:
            arch = checkpoint.load_model_info(path)["arch"]
    except (JackpotError, OSError, KeyError, ValueError):
        return None
    return arch if arch in models.LM_NAMES else None


def _convert_lm(p, args, kind: str) -> str:
    """A Hugging Face directory or a GGUF file -> a checkpoint directory with its tokenizer."""
    from jackpot_jax.interop import hf_lm

    if args.num_classes is not None or args.image_size is not None:
        p.error("--num-classes/--image-size apply to image models, not language models")
    if kind == "hf":
        hf_config, state_dict = hf_lm.read_hf_dir(args.input)
        tokenizer = args.input
    else:
        from jackpot_jax.interop import gguf_file

        hf_config, state_dict, tokenizer = gguf_file.read_gguf(args.input)
    if args.arch and args.arch != hf_config.get("model_type"):
        p.error(f"--arch {args.arch} but {args.input} holds {hf_config.get('model_type')}")
    out = hf_lm.save_lm_checkpoint(
        args.output,
        hf_config,
        state_dict,
        tokenizer if kind == "hf" else None,
        overwrite=args.overwrite,
    )
    if kind == "gguf":
        gguf_file.save_tokenizer(
            tokenizer,
            out,
            bos_token_id=hf_config.get("bos_token_id"),
            eos_token_id=hf_config.get("eos_token_id"),
        )
    return out


# ---------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> str:
    """Command line: torch `.pth` -> checkpoint dir, or with --to-torch the other way.

    An error the user can fix (`JackpotError`) is printed as one `error: ...` message and
    exits with status 1."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--arch",
        metavar="NAME",
        help="model name (required unless --to-torch, where model.json gives it): "
        + models.valid_names(),
    )
    p.add_argument(
        "--input",
        required=True,
        help="torch .pth/.pt file, a Hugging Face LM directory (config.json + safetensors) or "
        "a .gguf file (or, with --to-torch, a checkpoint directory, a jackpot.npz or a run's "
        "workdir holding one)",
    )
    p.add_argument(
        "--output",
        required=True,
        help="checkpoint directory (or, with --to-torch, the .pth to write; for a language "
        "model the Hugging Face directory to write)",
    )
    p.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="expected number of classes (default: read from the classifier)",
    )
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="ViTs: the image size to build the model for (default: the checkpoint's); the "
        "position embedding is resized as timm does it",
    )
    p.add_argument(
        "--to-torch",
        action="store_true",
        help="export a jackpot_jax checkpoint to a torch state_dict",
    )
    p.add_argument(
        "--jackpot",
        default=None,
        help="with --to-torch: npz with masks/<path> (and params/<path>, "
        "batch_stats/<path>) to apply to the checkpoint",
    )
    p.add_argument(
        "--include-scores",
        action="store_true",
        help="with --to-torch: write saved scores as official `<name>.mask` tensors",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing --output (refused otherwise)"
    )
    args = p.parse_args(argv)
    try:
        out = _run(p, args)
    except JackpotError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    print(f"wrote {out}")
    return out


def _run(p, args) -> str:
    if args.arch is not None:
        try:
            models.default_options(args.arch)
        except ValueError as e:
            raise InputError(f"--arch {args.arch}: {e}") from None
    if args.to_torch and _lm_arch(args.input):
        from jackpot_jax.interop import hf_lm

        if args.include_scores or args.image_size is not None:
            p.error("--include-scores/--image-size do not apply to language models")
        if args.arch and args.arch != _lm_arch(args.input):
            p.error(f"--arch {args.arch} but {args.input} holds {_lm_arch(args.input)}")
        return hf_lm.export_lm_to_hf(
            args.input, args.output, args.jackpot, overwrite=args.overwrite
        )
    if not args.to_torch and _lm_input(args.input):
        if args.jackpot or args.include_scores:
            p.error("--jackpot/--include-scores only apply with --to-torch")
        return _convert_lm(p, args, _lm_input(args.input))
    if args.to_torch:
        if args.image_size is not None:
            p.error("--image-size applies when reading torch weights, not with --to-torch")
        if args.arch:
            if _is_jackpot_only(args.input):
                arch = export.load_jackpot(args.input)[0]["arch"]
            else:
                arch = checkpoint.load_model_info(args.input)["arch"]
            if arch != args.arch:
                p.error(f"--arch {args.arch} but {args.input} holds {arch}")
        return export_checkpoint(
            args.input,
            args.output,
            args.jackpot,
            include_scores=args.include_scores,
            overwrite=args.overwrite,
        )
    if not args.arch:
        p.error("--arch is required")
    if args.jackpot or args.include_scores:
        p.error("--jackpot/--include-scores only apply with --to-torch")
    return convert_checkpoint(
        args.arch,
        args.input,
        args.output,
        num_classes=args.num_classes,
        overwrite=args.overwrite,
        image_size=args.image_size,
    )
