"""Hugging Face causal LMs in and out (interop.hf_lm), against transformers' PyTorch models
built from small random configs (no download): logits to 1e-4 relative in float32, the
checkpoint round trip through load_model, and exports that transformers loads with no missing
or unexpected keys, 2:4 masks intact along each row of the torch weights."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jackpot_jax import method as jm
from jackpot_jax import models
from jackpot_jax.errors import ConfigError, InputError
from jackpot_jax.interop import hf_lm
from jackpot_jax.pipeline import checkpoint

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SMALL = dict(
    vocab_size=97,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)
LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}
GPT2 = dict(vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_positions=64)
T = 12  # longer than the Mistral case's sliding window and the llama3 case's original context


def _hf_model(case: str):
    t = transformers
    configs = {
        "llama3_untied": lambda: t.LlamaConfig(**SMALL, rope_theta=5e5, rope_scaling=LLAMA3),
        "llama_tied_bias": lambda: t.LlamaConfig(
            **SMALL, tie_word_embeddings=True, attention_bias=True, mlp_bias=True
        ),
        "qwen2": lambda: t.Qwen2Config(**SMALL),
        "mistral_window": lambda: t.MistralConfig(**SMALL, sliding_window=4),
        "gpt2": lambda: t.GPT2Config(**GPT2, bos_token_id=0, eos_token_id=0),
        "gpt2_untied": lambda: t.GPT2Config(
            **GPT2, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0
        ),
    }
    torch.manual_seed(sorted(configs).index(case))
    model = t.AutoModelForCausalLM.from_config(configs[case]()).float().eval()
    with torch.no_grad():  # norms and biases away from their 1 / 0 initial values
        for _, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(0.2 * torch.randn_like(p))
    return model


CASES = ["llama3_untied", "llama_tied_bias", "qwen2", "mistral_window", "gpt2", "gpt2_untied"]


@functools.cache
def _saved(case: str, root: str):
    """(HF directory, its model's logits on TOKENS), one per case for the whole module."""
    model = _hf_model(case)
    path = os.path.join(root, case)
    model.save_pretrained(path, safe_serialization=True)
    with torch.no_grad():
        logits = model(torch.as_tensor(np.asarray(TOKENS))).logits.numpy()
    return path, logits


TOKENS = np.random.default_rng(0).integers(0, 97, (2, T)).astype(np.int32)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("hf"))


def _logits(arch, options, variables, tokens=TOKENS):
    module = models.get_model(arch, **options)
    return np.asarray(jax.jit(module.apply)(variables, jnp.asarray(tokens)))


def _close(ours, ref, rtol=1e-4):
    err = np.abs(ours - ref).max() / np.abs(ref).max()
    assert err < rtol, f"max relative error {err:.2e}"


@pytest.mark.parametrize("case", CASES)
def test_logits_equal_transformers(case, root):
    path, ref = _saved(case, root)
    arch, options, variables = hf_lm.lm_from_hf(*hf_lm.read_hf_dir(path))
    assert arch == json.load(open(os.path.join(path, "config.json")))["model_type"]
    ours = _logits(arch, options, variables)
    assert ours.shape == ref.shape == (2, T, 97)
    _close(ours, ref)
    if case == "mistral_window":  # the window is in force: without it the late logits differ
        wide = _logits(arch, {**options, "sliding_window": None}, variables)
        assert np.abs(wide[:, 5:] - ref[:, 5:]).max() > 1e-3 * np.abs(ref).max()
    if case == "llama3_untied":  # and so is the llama3 scaling
        plain = _logits(arch, {**options, "rope_scaling": None}, variables)
        assert np.abs(plain - ref).max() > 1e-3 * np.abs(ref).max()


def test_checkpoint_round_trip_through_load_model(root, tmp_path):
    path, ref = _saved("llama3_untied", root)
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel

    tok = Tokenizer(WordLevel({"[UNK]": 0, "to": 1, "be": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(os.path.join(path, "tokenizer.json"))
    out = hf_lm.convert_hf_lm(path, tmp_path / "ckpt")
    module, variables = checkpoint.load_model(out)
    ours = np.asarray(jax.jit(module.apply)(variables, jnp.asarray(TOKENS)))
    _close(ours, ref)
    assert Tokenizer.from_file(os.path.join(out, "tokenizer.json")).encode("to be").ids == [1, 2]


def _two_four_masks(params):
    """Keeps the 2 largest |w| of each group of 4 consecutive inputs (axis 0) of every block
    kernel, for every output: a 2:4 pattern along the input axis in Flax's layout."""
    masks = {}
    for path in jm.prunable_paths(params, jm.make_filter()):
        w = np.abs(np.asarray(params_at(params, path)))
        groups = w.reshape(w.shape[0] // 4, 4, w.shape[1])
        rank = np.argsort(np.argsort(-groups, axis=1, kind="stable"), axis=1, kind="stable")
        masks[path] = (rank < 2).reshape(w.shape).astype(np.float32)
    return masks


def params_at(params, path):
    node = params
    for part in path.split("/"):
        node = node[part]
    return node


@pytest.mark.parametrize("case", ["llama3_untied", "llama_tied_bias", "qwen2", "gpt2_untied"])
def test_export_loads_in_transformers_with_our_logits(case, root, tmp_path):
    path, _ = _saved(case, root)
    arch, options, variables = hf_lm.lm_from_hf(*hf_lm.read_hf_dir(path))
    masks = _two_four_masks(variables["params"])
    hf_config, state_dict = hf_lm.lm_to_hf(arch, options, variables, masks)
    out = hf_lm.write_hf_dir(tmp_path / "export", hf_config, state_dict)
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["model_type"] == arch and config["torch_dtype"] == "float32"
    model, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert not info["mismatched_keys"], info
    with torch.no_grad():
        ref = model.float().eval()(torch.as_tensor(TOKENS)).logits.numpy()
    masked = jax.tree.map(np.asarray, variables)
    for p, m in masks.items():
        node = params_at(masked["params"], p.rsplit("/", 1)[0])
        node["kernel"] = node["kernel"] * m
    _close(_logits(arch, options, masked), ref)
    # 2:4 along each Linear's input axis: rows of torch's (out, in) weights; GPT-2's Conv1D
    # weights are (in, out), and c_attn holds q, k and v side by side.
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    if arch == "gpt2":
        linears = {k: sd[k].T for k in sd if ".h." in k and sd[k].ndim == 2}
        assert len(linears) == len(masks) - 2 * options["num_hidden_layers"]
    else:
        linears = {k: sd[k] for k in sd if k.endswith("_proj.weight")}
        assert len(linears) == len(masks)
    for key, rows in linears.items():
        nonzero = (rows.reshape(rows.shape[0], -1, 4) != 0).sum(-1)
        assert (nonzero == 2).all(), key


def test_bfloat16_and_sharded_checkpoints_read_as_float32(root, tmp_path):
    model = _hf_model("qwen2")
    model.to(torch.bfloat16).save_pretrained(
        tmp_path / "bf16", safe_serialization=True, max_shard_size="40KB"
    )
    assert os.path.isfile(tmp_path / "bf16" / hf_lm.WEIGHTS_INDEX)
    _, state_dict = hf_lm.read_hf_dir(tmp_path / "bf16")
    want = {k: v.float().numpy() for k, v in model.state_dict().items()}
    assert set(state_dict) == set(want)
    for k, v in want.items():
        assert state_dict[k].dtype == np.float32
        np.testing.assert_array_equal(state_dict[k], v, err_msg=k)


def test_unsupported_model_type_and_bad_state_dicts(root, tmp_path):
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ConfigError, match="model_type 'bert' is not supported.*llama, qwen2"):
        hf_lm.read_hf_dir(tmp_path / "bert")
    path, _ = _saved("qwen2", root)
    config, state_dict = hf_lm.read_hf_dir(path)
    state_dict = dict(state_dict)
    del state_dict["model.layers.1.mlp.up_proj.weight"]
    state_dict["model.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(InputError, match=r"layers\.1\.mlp\.up_proj\.weight: missing.*extra"):
        hf_lm.lm_from_hf(config, state_dict)


def test_export_of_a_checkpoint_with_a_jackpot_and_of_a_jackpot_alone(root, tmp_path):
    path, _ = _saved("qwen2", root)
    hf_config = json.load(open(os.path.join(path, "config.json")))
    hf_config["bos_token_id"] = 5  # carried into the export from the checkpoint's hf_config.json
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf_config, f)
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump({"model_max_length": 64}, f)
    ckpt = hf_lm.convert_hf_lm(path, tmp_path / "ckpt")
    module, variables = checkpoint.load_model(ckpt)
    masks = _two_four_masks(variables["params"])
    masked = jax.tree.map(np.asarray, variables)
    for p, m in masks.items():
        node = params_at(masked["params"], p.rsplit("/", 1)[0])
        node["kernel"] = node["kernel"] * m
    info = checkpoint.load_model_info(ckpt)
    arrays = {f"masks/{p}": m.astype(np.uint8) for p, m in masks.items()}
    arrays.update({f"params/{p}": v for p, v in jm.flatten_paths(masked["params"]).items()})
    meta = {"arch": info["arch"], "options": info["options"], "pretrained_checkpoint": ckpt}
    npz = str(tmp_path / "jackpot.npz")
    np.savez(npz, meta=np.asarray(json.dumps(meta)), **arrays)
    ours = _logits(info["arch"], info["options"], masked)
    for name, args in (("both", (ckpt, npz)), ("alone", (npz, None))):
        out = hf_lm.export_lm_to_hf(args[0], tmp_path / name, args[1])
        assert os.path.isfile(os.path.join(out, "tokenizer_config.json"))
        config = json.load(open(os.path.join(out, "config.json")))
        assert config["bos_token_id"] == 5 and config["architectures"] == ["Qwen2ForCausalLM"]
        model = transformers.AutoModelForCausalLM.from_pretrained(out).float().eval()
        with torch.no_grad():
            _close(ours, model(torch.as_tensor(TOKENS)).logits.numpy())
    with pytest.raises(InputError, match="not a checkpoint directory"):
        hf_lm.export_lm_to_hf(npz, tmp_path / "x", npz)
