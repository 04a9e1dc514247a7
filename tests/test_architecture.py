"""The import rules of docs/architecture.md, read off the source with `ast`:

- each package (room) imports only from the rooms below it;
- inside `experiments/`, modules import only from their own layer or the layers below;
- no module imports itself back through other modules: the module-level import graph of
  `jackpot_jax/` has no cycle, inside a package or across packages.

Every import counts, those inside functions included: a function-local import that closes a
circle only moves the circle from import time to call time (the ViT study's lazy import of its
report was one), and the two modules still cannot be read, tested or changed one without the
other. The cycle finder proves itself on small synthetic graphs and on a package written to a
temporary folder.
"""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1] / "jackpot_jax"
PACKAGE = "jackpot_jax"
GROUND = {"errors", "utils", "cache", "xla_flags"}
# room -> rooms it may import (besides itself and the ground floor)
ALLOWED = {
    "kernels": set(),
    "method": {"kernels"},
    "models": {"kernels"},
    "data": set(),
    "core": {"method", "kernels"},  # the search core: state, step, epoch
    "pipeline": {"core", "method", "kernels", "models", "data"},
    "interop": {"pipeline", "core", "method", "kernels", "models", "data"},
    "experiments": {"pipeline", "core", "method", "kernels", "models", "data"},
    # the launchers and `jackpot_jax/__init__` (the library's top-level namespace)
    "launchers": {"pipeline", "experiments", "core", "method", "kernels"},
}
LAUNCHERS = {"main", "study", "sweep", "__init__"}
# Layers of `experiments/`, bottom first: a module imports its own layer and those below.
EXPERIMENT_LAYERS = (
    # machinery every study shares (tables and interval verdicts included)
    {"__init__", "provenance", "stats", "runner", "common", "tables", "verdicts"},
    {"study_pieces", "vit_pieces", "lm_pieces", "claims"},  # the studies' pieces and verdicts
    {"study_report", "sweep_report", "vit_report", "lm_report"},  # reports (and printed answers)
    {"study", "sweep", "vit_study", "lm_study"},  # the studies
    # study name -> runner: the one module that imports every study; the generated tables
    # of every report (tools/check_results.py)
    {"registry", "generated"},
)


def _room(path: pathlib.Path) -> str:
    part = path.relative_to(ROOT).parts[0].removesuffix(".py")
    if part in LAUNCHERS:
        return "launchers"
    return "ground" if part in GROUND else part


def module_name(path: pathlib.Path, root: pathlib.Path, package: str) -> str:
    """The dotted name of the module in `path` (a package's `__init__.py` is the package)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([package, *parts])


def imported_names(path: pathlib.Path, root: pathlib.Path, package: str) -> set[str]:
    """Every dotted name the module in `path` imports, at module level or inside functions:
    ``import a.b`` gives ``a.b``, ``from a import b`` gives ``a.b`` (a module or an attribute
    of ``a``: `import_graph` decides); relative imports are resolved against the module's
    package."""
    here = module_name(path, root, package).split(".")
    if path.name != "__init__.py":
        here = here[:-1]  # the package the module is in
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            names |= {f"{mod}.{a.name}" for a in node.names}
    return names


def import_graph(root: pathlib.Path, package: str) -> dict[str, set[str]]:
    """module -> the modules of `package` (under `root`) that it imports. ``from p import x``
    is an edge to ``p.x`` when that is a module and to ``p`` otherwise; importing a submodule
    is not counted as importing its parent packages (a package's ``__init__`` may re-export
    its own modules)."""
    files = sorted(root.rglob("*.py"))
    modules = {module_name(f, root, package): f for f in files}
    graph = {}
    for name, path in modules.items():
        edges = set()
        for imported in imported_names(path, root, package):
            if imported in modules:
                edges.add(imported)
            elif imported.rpartition(".")[0] in modules:
                edges.add(imported.rpartition(".")[0])  # `from p import attribute`
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles of `graph`: every strongly connected component with more than one
    module, or a module that imports itself, each sorted (Tarjan's algorithm)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def _imported_rooms(path: pathlib.Path) -> set[str]:
    rooms = set()
    for name in imported_names(path, ROOT, PACKAGE):
        parts = name.split(".")
        if parts[0] == PACKAGE and len(parts) > 1:
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


def test_no_import_cycles():
    found = cycles(import_graph(ROOT, PACKAGE))
    assert not found, "import circles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_experiments_import_downwards():
    rank = {name: i for i, layer in enumerate(EXPERIMENT_LAYERS) for name in layer}
    folder = ROOT / "experiments"
    unknown = sorted({p.stem for p in folder.glob("*.py")} - set(rank))
    assert not unknown, f"experiments modules in no layer of EXPERIMENT_LAYERS: {unknown}"
    prefix = f"{PACKAGE}.experiments."
    bad = []
    for module, edges in import_graph(ROOT, PACKAGE).items():
        if not module.startswith(prefix):
            continue
        for other in edges:
            if (
                other.startswith(prefix)
                and rank[other[len(prefix) :]] > rank[module[len(prefix) :]]
            ):
                bad.append(f"{module} imports {other}, a layer above it")
    assert not bad, "\n".join(sorted(bad))


# -- the checks check themselves --------------------------------------------------------------


def test_cycles_on_hand_made_graphs():
    acyclic = {"a": {"b", "c"}, "b": {"c"}, "c": set(), "d": {"a"}}
    assert cycles(acyclic) == []
    circle = dict(acyclic, c={"a"})  # a -> b -> c -> a, and a -> c -> a
    assert cycles(circle) == [["a", "b", "c"]]
    two = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c", "a"}, "e": {"e"}}
    assert cycles(two) == [["a", "b"], ["c", "d"], ["e"]]
    assert cycles({"x": {"outside"}}) == []  # an edge to a module outside the graph


def test_a_cycle_inside_a_package_written_to_disk_is_found(tmp_path):
    """A package whose report imports its study at module level while the study imports the
    report inside a function (the old vit_study <-> vit_report circle), and one relative
    import; the graph holds exactly these edges and the circle is found."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from pkg.sub import study\n")
    (pkg / "sub" / "study.py").write_text(
        "from . import helpers\n\ndef run():\n    from pkg.sub.report import write\n"
    )
    (pkg / "sub" / "report.py").write_text("from pkg.sub.study import run\nimport os\n")
    (pkg / "sub" / "helpers.py").write_text("import pkg.errors\n")
    (pkg / "errors.py").write_text("CONSTANT = 1\n")
    graph = import_graph(pkg, "pkg")
    assert graph == {
        "pkg": set(),
        "pkg.errors": set(),
        "pkg.sub": {"pkg.sub.study"},
        "pkg.sub.helpers": {"pkg.errors"},
        "pkg.sub.report": {"pkg.sub.study"},
        "pkg.sub.study": {"pkg.sub.helpers", "pkg.sub.report"},
    }
    assert cycles(graph) == [["pkg.sub.report", "pkg.sub.study"]]
    # Moving what the report needs into a module below both breaks the circle.
    (pkg / "sub" / "report.py").write_text("from pkg.sub.helpers import run\n")
    assert cycles(import_graph(pkg, "pkg")) == []
