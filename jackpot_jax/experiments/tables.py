"""Tables of figures as the tools write them, between markers a checker can find again.

A generated block in a Markdown file:

    <!-- generated: vit/test_accuracy -->
    | ... the table, written by a tool ... |
    <!-- end generated -->

- `render_table(rows, columns)`: a Markdown table, one line per row, every cell written by a
  function of the row (so every figure comes from the data, never typed by hand).
- `block(name, content)`: the block with its markers; `replace_generated(text, name, content)`
  rewrites the content of the block `name` in `text`; `generated_blocks(text)` lists every
  block of a file as {name: content}.

`tools/check_results.py` regenerates every block of README.md, docs/results/**.md and
benchmarks/README.md from the results and the raw logs, and fails on any difference
(`--write` rewrites them). A study's report module gives its blocks through
`generated_tables(res) -> {name: content}` (see `generated.py`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence

from jackpot_jax.errors import InputError

BEGIN = "<!-- generated: {name} -->"
END = "<!-- end generated -->"
_BLOCK = re.compile(
    r"<!-- generated: (?P<name>[^ >]+) -->\n(?P<body>.*?)<!-- end generated -->", re.S
)

Column = tuple[str, Callable[[object], object]] | tuple[str, Callable[[object], object], str]


def render_table(rows: Iterable, columns: Sequence[Column]) -> str:
    """A Markdown table: `columns` are (header, cell) or (header, cell, align) with cell a
    function of one row returning the cell (str() of it is written; None writes '—') and align
    '' (default), 'r' (right: '---:') or 'c'. One line per row, in the order given; no
    trailing newline."""
    heads, cells, aligns = [], [], []
    for col in columns:
        if len(col) not in (2, 3) or not callable(col[1]):
            raise InputError(f"column {col!r}: want (header, function of a row[, 'r'|'c'|''])")
        align = col[2] if len(col) == 3 else ""
        if align not in ("", "r", "c"):
            raise InputError(f"column {col[0]!r}: align {align!r}; use '', 'r' or 'c'")
        heads.append(col[0])
        cells.append(col[1])
        aligns.append({"": "---", "r": "---:", "c": ":---:"}[align])
    lines = ["| " + " | ".join(heads) + " |", "|" + "|".join(aligns) + "|"]
    for row in rows:
        out = []
        for cell in cells:
            v = cell(row)
            out.append("—" if v is None else str(v))
        lines.append("| " + " | ".join(out) + " |")
    return "\n".join(lines)


def block(name: str, content: str) -> str:
    """`content` between the markers of block `name` (content ends with one newline)."""
    _check_name(name)
    return f"{BEGIN.format(name=name)}\n{content.rstrip(chr(10))}\n{END}"


def generated_blocks(text: str) -> dict[str, str]:
    """{name: content} of every generated block in `text` (content without the markers, ending
    with one newline). A name used twice is an InputError."""
    out: dict[str, str] = {}
    for m in _BLOCK.finditer(text):
        name = m["name"]
        if name in out:
            raise InputError(f"generated block {name!r} appears twice; each name once per file")
        out[name] = m["body"]
    return out


def replace_generated(text: str, name: str, content: str) -> str:
    """`text` with the content of block `name` replaced by `content`. The block must be in
    `text` exactly once (InputError naming it otherwise): a tool writes into markers a person
    placed, it never guesses where a table goes."""
    _check_name(name)
    hits = [m for m in _BLOCK.finditer(text) if m["name"] == name]
    if len(hits) != 1:
        have = sorted(generated_blocks(text)) if len(hits) == 0 else name
        raise InputError(
            f"generated block {name!r} found {len(hits)} times; want exactly one "
            f"'{BEGIN.format(name=name)}' ... '{END}' (blocks here: {have})"
        )
    m = hits[0]
    return text[: m.start()] + block(name, content) + text[m.end() :]


def _check_name(name: str) -> None:
    if not name or not re.fullmatch(r"[A-Za-z0-9_./:+-]+", name):
        raise InputError(f"block name {name!r}: use letters, digits and _ . / : + - only")
