"""The import rules of docs/architecture.md: each package imports only from the layers below it
(read off the source with `ast`, local imports included)."""

import ast
import pathlib

import jackpot_jax

ROOT = pathlib.Path(jackpot_jax.__file__).parent
GROUND = {"errors", "utils", "cache", "xla_flags"}
# room -> rooms it may import (besides itself and the ground floor)
ALLOWED = {
    "kernels": set(),
    "method": {"kernels"},
    "sparsity": {"method"},
    "models": {"kernels"},
    "data": set(),
    "pipeline": {"method", "sparsity", "kernels", "models", "data"},
    "interop": {"pipeline", "method", "sparsity", "kernels", "models", "data"},
    "experiments": {"pipeline", "method", "sparsity", "kernels", "models", "data"},
    "launchers": {"pipeline", "experiments"},
}
LAUNCHERS = {"main", "study", "sweep", "__init__"}


def _room(path: pathlib.Path) -> str:
    part = path.relative_to(ROOT).parts[0].removesuffix(".py")
    if part in LAUNCHERS:
        return "launchers"
    return "ground" if part in GROUND else part


def _imported_rooms(path: pathlib.Path) -> set[str]:
    rooms = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module + "." + a.name for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "jackpot_jax" and len(parts) > 1:
                rooms.add("ground" if parts[1] in GROUND else parts[1])
    return rooms


def test_every_room_is_known():
    rooms = {_room(p) for p in ROOT.rglob("*.py")}
    assert rooms <= set(ALLOWED) | {"ground"}, rooms - set(ALLOWED)


def test_imports_run_one_way():
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        room = _room(path)
        allowed = {room, "ground"} | (set() if room == "ground" else ALLOWED[room])
        for other in _imported_rooms(path) - allowed:
            bad.append(f"{path.relative_to(ROOT)} ({room}) imports {other}")
    assert not bad, "\n".join(bad)


def test_the_ground_floor_is_standard_library_or_jax_only():
    for name in ("cache", "xla_flags"):
        assert _imported_rooms(ROOT / f"{name}.py") == set()
