"""The converter's command line on language models: a Hugging Face directory and a GGUF file
in, a checkpoint directory (with its tokenizer) out; ``--to-torch`` back to a Hugging Face
directory that transformers loads with no missing or unexpected keys and our logits."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jackpot_jax.interop import cli
from jackpot_jax.pipeline import checkpoint

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")


def _logits(path, tokens):
    module, variables = checkpoint.load_model(path)
    return np.asarray(jax.jit(module.apply)(variables, jnp.asarray(tokens)))


def test_hf_directory_in_and_out_through_the_command_line(tmp_path):
    from test_hf_lm import TOKENS, _close, _saved

    hf_dir, ref = _saved("qwen2", str(tmp_path / "hf"))
    out = cli.main(["--input", hf_dir, "--output", str(tmp_path / "ckpt")])
    assert checkpoint.load_model_info(out)["arch"] == "qwen2"
    _close(_logits(out, TOKENS), ref)
    back = cli.main(["--to-torch", "--input", out, "--output", str(tmp_path / "back")])
    model, info = transformers.AutoModelForCausalLM.from_pretrained(back, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    with torch.no_grad():
        theirs = model.float()(torch.as_tensor(np.asarray(TOKENS))).logits.numpy()
    _close(theirs, ref)


def test_gguf_file_in_with_its_tokenizer(tmp_path):
    from test_gguf_file import _write_tiny

    path = tmp_path / "tiny.gguf"
    _write_tiny(path)
    out = cli.main(["--input", str(path), "--output", str(tmp_path / "ckpt"), "--arch", "llama"])
    assert os.path.isfile(os.path.join(out, "tokenizer.json"))
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        str(tmp_path), gguf_file="tiny.gguf", torch_dtype=torch.float32
    )
    tokens = np.asarray([[0, 3, 4, 5, 6, 7]], np.int32)
    with torch.no_grad():
        theirs = ref(torch.as_tensor(tokens)).logits.numpy()
    ours = _logits(out, tokens)
    assert np.abs(ours - theirs).max() / np.abs(theirs).max() < 1e-4


def test_language_model_flags_that_do_not_apply(tmp_path, capsys):
    from test_gguf_file import _write_tiny

    path = tmp_path / "tiny.gguf"
    _write_tiny(path)
    with pytest.raises(SystemExit):
        cli.main(["--input", str(path), "--output", str(tmp_path / "o"), "--num-classes", "3"])
    assert "--num-classes/--image-size apply to image models" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["--input", str(path), "--output", str(tmp_path / "o"), "--arch", "gpt2"])
    assert "--arch gpt2 but" in capsys.readouterr().err
