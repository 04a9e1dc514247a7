"""The README's "The library" snippet runs as written, using only ``import jackpot_jax``."""

import os
import re

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _library_snippet() -> str:
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text.split("## The library", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the library section has one Python block"
    return blocks[0]


def test_library_snippet_runs_as_written_on_the_top_level_namespace(capsys):
    source = _library_snippet()
    imports = re.findall(r"^(?:import|from) (\S+)", source, re.M)
    assert [m for m in imports if m.startswith("jackpot_jax")] == ["jackpot_jax"], imports
    namespace: dict = {}
    exec(compile(source, "README.md", "exec"), namespace)
    jj, params = namespace["jj"], namespace["params"]
    # What it printed and made is what the method says it is.
    total = namespace["jj"].sparsity_summary(namespace["jackpot"].masks)["_total_sparsity"]
    prunable = sum(
        np.size(w) for w in jj.flatten_paths(jj.map_prunable(lambda _, w: w, params)).values()
    )
    assert abs(total - 0.9) <= 1 / prunable * 2
    kept = jj.flatten_paths(namespace["jackpot"].params)["fc1/kernel"]
    mask = jj.flatten_paths(namespace["jackpot"].masks)["fc1/kernel"]
    np.testing.assert_array_equal(kept, np.asarray(params["fc1"]["kernel"]) * mask)
    assert int(namespace["state"].step) == 1 and bool(namespace["metrics"]["finite"])
    assert len(namespace["jackpot"].history) == 2
    assert capsys.readouterr().out.count("\n") == 3
