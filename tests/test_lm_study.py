"""The LM study end to end on a tiny random Llama (configs/study_lm_tiny.py): every row at
every level, per-seed values equal to the pieces' own summaries and to the summary blocks
of the log, selection runs that never evaluate the test split, tables that regenerate from
results.json alone, and a rerun that runs nothing. Plus the learning-rate line search and the
per-kernel overlap against hand-computed cases.
"""

import contextlib
import io
import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools"))
import check_results  # noqa: E402
from pipeline_helpers import ROOT, load_config  # noqa: E402
from test_lm_pipeline import write_corpus, write_model  # noqa: E402

from jackpot_jax.errors import ConfigError  # noqa: E402
from jackpot_jax.experiments import lm_pieces, lm_report, lm_study, tables  # noqa: E402


def tiny(files):
    c = load_config(os.path.join(ROOT, "configs", "study_lm_tiny.py"))
    c.base.pretrained, c.base.lm.path = files
    return c


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_study")
    files = str(write_model(root / "model")), str(write_corpus(root / "corpus"))
    config = tiny(files)
    work = str(root / "work")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        res = lm_study.run_lm_study(config, work)
    return config, work, res, out.getvalue()


def _summary(work, seed, piece):
    with open(os.path.join(work, "llama", f"seed{seed}", piece, "summary.json")) as f:
        return json.load(f)


def test_every_row_at_every_level(study):
    config, _, res, _ = study
    methods = {
        "dense",
        "magnitude",
        "wanda",
        "sparsegpt",
        "sparsegpt_update",
        "jackpot_wanda",
        "jackpot_sparsegpt",
        "tune",
    }
    for level in ("2:4", "50% unstructured"):
        rows = [r for r in res["rows"] if r["level"] == level]
        assert {r["method"] for r in rows} == methods and len(rows) == len(methods)
        for r in rows:
            assert r["seeds"] == 2 and set(r["per_seed"]["test_ppl"]) == {"1", "2"}
        changes = {r["method"] for r in rows if r["changes_weights"]}
        assert changes == {"sparsegpt_update", "tune"}
    # Selection: as many runs for weight tuning as for the jackpot (issue 29's rule).
    runs = res["selected"]["runs"]
    assert runs["jackpot"] == runs["tune"] == config.selection_runs + 1
    assert sum(r["selected"] for r in res["selection"] if r["method"] == "jackpot") == 1
    assert sum(r["selected"] for r in res["selection"] if r["method"] == "tune") == 1
    # Overlap per module type: q, k, v, o, gate, up, down for each prior and level.
    mods = {(r["level"], r["prior"], r["module"]) for r in res["layers"]}
    assert len(mods) == 2 * 2 * 7
    assert all(0.0 <= r["overlap_mean"] <= 1.0 for r in res["layers"])


def test_per_seed_values_are_the_pieces_summaries(study):
    config, work, res, log = study
    sel = res["selected"]
    for r in res["rows"]:
        for seed, value in r["per_seed"]["test_ppl"].items():
            s = _summary(work, r["piece_seed"] or seed, r["piece"])
            assert value == s["perplexity"]["test"]
    # The jackpot's lr is the selected one, its tokens 4 steps x 2 x 16.
    j = next(r for r in res["rows"] if r["method"] == f"jackpot_{sel['jackpot']['prior']}")
    s = _summary(work, 1, j["piece"])
    assert s["learning_rate"] == sel["jackpot"]["lr"] and s["tokens_seen"] == 4 * 2 * 16
    # The raw log's summary blocks give the same values (what tools/check_results reads).
    pieces = check_results.parse_log(log)
    for r in res["rows"]:
        for seed, value in r["per_seed"]["test_ppl"].items():
            block = pieces[("llama", int(r["piece_seed"] or seed), r["piece"])]
            assert abs(float(block["test_ppl"]) - value) < 5e-6
    # A paired difference recomputed by hand from the rows.
    d = next(x for x in res["differences"] if x["name"] == "2:4: tune - wanda")
    a = next(r for r in res["rows"] if r["level"] == "2:4" and r["method"] == "tune")
    b = next(r for r in res["rows"] if r["level"] == "2:4" and r["method"] == "wanda")
    diffs = [a["per_seed"]["test_ppl"][s] - b["per_seed"]["test_ppl"][s] for s in ("1", "2")]
    assert d["mean"] == pytest.approx(np.mean(diffs))
    half = 12.706205 * np.std(diffs, ddof=1) / np.sqrt(2)
    assert d["ci95"] == pytest.approx([np.mean(diffs) - half, np.mean(diffs) + half])


def test_selection_runs_never_evaluate_the_test_split(study):
    config, work, res, _ = study
    folder = os.path.join(work, "llama", f"seed{config.select_seed}")
    names = sorted(os.listdir(folder))
    assert names and all("_val_" in n or n.startswith(("jackpot_", "tune_")) for n in names)
    for name in names:
        s = _summary(work, config.select_seed, name)
        assert s["evaluate_test"] is False and s["test_tokens"] == 0
        assert "test" not in s["perplexity"]
    assert len(names) == 2 + len(res["selection"])  # the priors' one-shot pieces + the runs


def test_report_tables_regenerate_from_results(study):
    _, work, res, _ = study
    with open(os.path.join(work, "report.md")) as f:
        text = f.read()
    with open(os.path.join(work, "results.json")) as f:
        saved = json.load(f)
    blocks = tables.generated_blocks(text)
    want = lm_report.generated_tables(saved, "shakespeare")
    assert set(blocks) == set(want)
    for name, content in want.items():
        assert blocks[name] == content.rstrip("\n") + "\n"
    assert os.path.exists(os.path.join(work, "val_curves.png"))
    # results.json passes the checker's recomputation (rows, differences, the table marked
    # as having no raw log).
    errors, checked = check_results.check_file(os.path.join(work, "results.json"))
    assert not errors and checked == len(res["rows"]) + len(res["layers"]) + len(res["differences"])


def test_check_results_on_a_committed_copy(study, tmp_path):
    """The folder as it would be committed (docs/results/shakespeare with results.json,
    report.md and the log in logs/): tools/check_results.py regenerates every block and
    recomputes every per-seed value from the log's summary blocks; a tampered value fails."""
    _, work, res, log = study
    folder = tmp_path / "docs" / "results" / "shakespeare"
    (folder / "logs").mkdir(parents=True)
    for name in ("results.json", "report.md"):
        (folder / name).write_text(open(os.path.join(work, name)).read())
    (folder / "logs" / "study.log").write_text(log)
    errors, blocks = check_results.check_blocks(str(tmp_path))
    assert not errors and blocks == len(lm_report.generated_tables(res, "shakespeare"))
    report = (folder / "report.md").read_text().splitlines()
    errors, from_logs = check_results.check_logs(str(folder / "results.json"), res, report)
    assert not errors
    assert from_logs == sum(len(v) for r in res["rows"] for v in r["per_seed"].values())
    bad = json.loads(json.dumps(res))
    first = next(iter(bad["rows"][3]["per_seed"]["test_ppl"]))
    bad["rows"][3]["per_seed"]["test_ppl"][first] += 0.01
    errors, _ = check_results.check_logs(str(folder / "results.json"), bad, report)
    assert len(errors) == 1 and "test_ppl" in errors[0]


def test_rerun_runs_nothing(study):
    config, work, res, _ = study
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        again = lm_study.run_lm_study(config, work)
    assert again["run"]["pieces_run_this_invocation"] == 0
    assert "[pieces]" not in out.getvalue()
    assert again["rows"] == res["rows"]


def test_line_search_by_hand():
    calls = []

    def f(lr):  # lowest at 0.03: the grid's edge first, then one step beyond
        calls.append(lr)
        return abs(np.log(lr / 0.03))

    best, seen, done, edge = lm_pieces.line_search(f, (0.001, 0.003), 4, 3.0)
    assert calls == [0.001, 0.003, 0.009, 0.027] and best == 0.027 and done and edge
    calls.clear()
    # An interior best: the midpoint toward the better neighbour.
    best, seen, done, edge = lm_pieces.line_search(f, (0.01, 0.03, 0.1), 4, 3.0)
    assert calls == [0.01, 0.03, 0.1, 0.0173] and best == 0.03 and not edge
    # A value not known yet stops the search unfinished.
    assert lm_pieces.line_search(lambda lr: None, (0.1, 0.2), 3, 2.0)[2] is False


def test_layer_overlap_by_hand():
    a = {"layers_0/mlp/up_proj/kernel": np.array([[1, 0], [1, 0]], np.uint8)}
    b = {"layers_0/mlp/up_proj/kernel": np.array([[1, 0], [0, 1]], np.uint8)}
    assert lm_pieces.layer_overlaps(a, b) == {"layers_0/mlp/up_proj/kernel": 0.5}
    assert lm_pieces.module_of("layers_12/self_attn/q_proj/kernel") == ("q", 12)
    assert lm_pieces.module_of("embed_tokens/embedding") is None


def test_selection_seed_among_final_seeds_is_refused(tmp_path):
    c = tiny(("unused", "unused"))
    c.select_seed = 1
    with pytest.raises(ConfigError, match="fresh seeds"):
        lm_study.run_lm_study(c, str(tmp_path))


def test_a_diverged_run_is_a_finished_piece_with_no_value(tmp_path, monkeypatch):
    """A selection's too-high learning rate: the piece is done (a rerun does not retry it),
    its value is inf for the line search, and the study goes on."""
    from jackpot_jax.errors import NonFiniteError
    from jackpot_jax.pipeline import lm

    calls = []

    def boom(cfg, path):
        calls.append(path)
        raise NonFiniteError("lm weight tuning: the training loss became NaN at step 3")

    monkeypatch.setattr(lm, "run_lm", boom)
    c = tiny((str(tmp_path / "model"), str(tmp_path / "corpus")))
    st = lm_pieces.LmPieces(c, str(tmp_path / "work"))
    with contextlib.redirect_stdout(io.StringIO()):
        r = st.run(0, "tune_wanda_lr10_2of4_s4", **{"lm.train": "weights"})
        again = st.run(0, "tune_wanda_lr10_2of4_s4", **{"lm.train": "weights"})
    assert "NaN" in r["diverged"] and len(calls) == 1 and again["diverged"] == r["diverged"]
    assert lm_study._val(r) == float("inf")
