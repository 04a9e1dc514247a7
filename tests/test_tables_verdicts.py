"""experiments.tables (generated blocks) and experiments.verdicts (claims decided on intervals),
against hand-written expectations."""

import pytest

from jackpot_jax.errors import InputError
from jackpot_jax.experiments import tables, verdicts


def test_render_table_writes_each_cell_from_the_row():
    rows = [{"n": "a", "v": 1.234}, {"n": "b", "v": None}]
    got = tables.render_table(rows, [("name", lambda r: r["n"]), ("v", lambda r: r["v"], "r")])
    assert got == "| name | v |\n|---|---:|\n| a | 1.234 |\n| b | — |"
    with pytest.raises(InputError, match="align 'x'"):
        tables.render_table(rows, [("v", lambda r: r["v"], "x")])


def test_replace_generated_rewrites_only_its_block():
    text = "intro\n<!-- generated: a/t -->\nold\n<!-- end generated -->\nmid\n" + (
        "<!-- generated: b -->\nkeep\n<!-- end generated -->\n"
    )
    new = tables.replace_generated(text, "a/t", "| x |\n")
    assert new == text.replace("old\n", "| x |\n")
    assert tables.generated_blocks(new) == {"a/t": "| x |\n", "b": "keep\n"}
    with pytest.raises(InputError, match="'missing' found 0 times"):
        tables.replace_generated(text, "missing", "x")
    with pytest.raises(InputError, match="appears twice"):
        tables.generated_blocks(text + text)


@pytest.mark.parametrize(
    "ci, margin, eq, ni",
    [
        ([-0.4, 0.3], 0.5, True, True),
        ([-0.5, 0.5], 0.5, False, False),  # a bound on the margin does not clear it
        ([-1.52, 1.14], 0.5, False, False),  # the ViT 50% interval of issue 29
        ([-0.2, 1.14], 0.5, False, True),  # above the margin: no equivalence, non-inferior
        ([-0.49, 0.1], 0.5, True, True),
        (None, 0.5, False, False),
    ],
)
def test_tests_decide_on_the_bounds(ci, margin, eq, ni):
    assert verdicts.within_margin(ci, margin) is eq
    assert verdicts.non_inferior(ci, margin) is ni


def test_sentences_claim_only_what_the_interval_shows():
    wide = {"mean": -0.19, "ci95": [-1.52, 1.14], "seeds": 3}
    s = verdicts.equivalence_sentence("jackpot", "dense", wide, 0.5)
    assert "not shown within 0.5 points" in s and "lower bound -1.52 at or below -0.5" in s
    assert "upper bound +1.14 at or above +0.5" in s and "is within" not in s
    tight = {"mean": 0.1, "ci95": [-0.2, 0.4], "seeds": 3}
    assert verdicts.equivalence_sentence("a", "b", tight, 0.5).startswith("A is within 0.5 points")
    s = verdicts.non_inferiority_sentence("a", "b", wide, 0.5)
    assert "not shown no worse" in s
    s = verdicts.difference_sentence("a", "b", wide)
    assert "(95% interval -1.52 to +1.14, 3 seeds)" in s and "up to 1.52 points higher" in s
    up = {"mean": 1.3, "ci95": [0.2, 2.4], "seeds": 3}
    assert verdicts.difference_sentence("a", "b", up).endswith(
        "a is higher (the interval excludes 0)."
    )
    one = {"mean": 1.3, "ci95": None, "seeds": 1}
    assert "too few seeds" in verdicts.difference_sentence("a", "b", one)
    assert "no equivalence claim" in verdicts.equivalence_sentence("a", "b", one, 0.5)
    with pytest.raises(InputError, match="margin -1"):
        verdicts.within_margin([0, 1], -1)
    with pytest.raises(InputError, match="lower bound above upper"):
        verdicts.within_margin([1, 0], 1)
