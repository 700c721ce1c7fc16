"""The import graph reads like the folders: layers from the model up to the CLI, no cycles.

Every import counts, function-local and `TYPE_CHECKING` ones included: a lazy import still ties two
modules together, and a cycle through one is still a cycle a reader has to untangle.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("vae", "pipelines")

#: Lower layers never import higher ones. A module may import its own layer (acyclically) and below.
#: A prefix ending in "." places a whole package.
LAYERS: list[tuple[str, ...]] = [
    ("vae.",),  # the model: imports nothing from pipelines
    (  # contracts and helpers every stage shares
        "pipelines.errors",
        "pipelines.redaction",
        "pipelines.storage",
        "pipelines.dataset_format",
        "pipelines.console",
        "pipelines.lazy",
        "pipelines.procfs",
        "pipelines.sections",
        "pipelines.data.config",
        "pipelines.config",
    ),
    (
        "pipelines.data.",
        "pipelines.visualize",
        "pipelines.raycluster",
        "pipelines.watchdog",
        "pipelines.prefect_server",
    ),
    ("pipelines.training.", "pipelines.usefulness.", "pipelines.evaluate"),
    ("pipelines.generate.", "pipelines.readers."),  # readers never import the writer (checked below)
    (
        "pipelines.checks",
        "pipelines.stages",
        "pipelines.inspection",
        "pipelines.rayjob",
        "pipelines.training_cache",
    ),
    ("pipelines.flow", "pipelines.schedule", "pipelines.launch", "pipelines.cli", "pipelines.__main__"),
]


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The modules of ours that `name` imports anywhere in its body (a package counts as its __init__)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: climb from this module's package
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        out.update(t for t in targets if t in MODULES and t != name)
    return out


def _graph() -> dict[str, set[str]]:
    """Every module's imports, plus what the package __init__s they run import: importing `a.b.c`
    runs `a.b`'s __init__ first (lazy exports import nothing until used)."""
    direct = {name: _imports(name, path) for name, path in MODULES.items()}
    graph = {name: set(targets) for name, targets in direct.items()}
    for name, targets in direct.items():
        parents = {t.rpartition(".")[0] for t in targets} - {name}
        for parent in (p for p in parents if p in direct and not name.startswith(p + ".")):
            graph[name] |= direct[parent] - {name}
    return graph


GRAPH = _graph()


def _layer(name: str) -> int | None:
    for number, members in enumerate(LAYERS):
        if any(name == m or (m.endswith(".") and name.startswith(m)) for m in members):
            return number
    if name in PACKAGES:  # the empty top-level packages
        return 0
    if name.count(".") == 1 and name + "." in {m for layer in LAYERS for m in layer}:
        return _layer(name + ".x")  # a subpackage's __init__ sits in its package's layer
    return None


def test_every_module_has_a_layer() -> None:
    unplaced = sorted(name for name in MODULES if _layer(name) is None)
    assert not unplaced, f"place these modules in a layer of LAYERS: {unplaced}"


def test_no_module_imports_a_higher_layer() -> None:
    upward = [
        f"{name} (layer {_layer(name)}) imports {target} (layer {_layer(target)})"
        for name, targets in GRAPH.items()
        for target in sorted(targets)
        if (_layer(target) or 0) > (_layer(name) or 0)
    ]
    assert not upward, "\n".join(upward)


def _edges(source: str, target: str) -> list[str]:
    """The imports from modules under `source` of modules under `target` (dotted prefixes)."""
    found = ((n, t) for n, ts in GRAPH.items() if n.startswith(source) for t in ts)
    return [f"{n} -> {t}" for n, t in found if t.startswith(target)]


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("vae", "pipelines"),  # the model knows nothing of the pipelines around it
        ("pipelines.readers", "pipelines.generate"),  # readers need the format, never the writer
    ],
)
def test_forbidden_imports(source: str, target: str) -> None:
    assert _edges(source, target) == []


def test_the_edge_finder_sees_an_import() -> None:
    assert _edges("pipelines.generate", "pipelines.dataset_format")  # the writer uses the format


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_import_graph_has_no_cycle() -> None:
    assert _cycles(GRAPH) == []


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
        ({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}}, [["a", "b"], ["c", "d"]]),
    ],
)
def test_cycle_finder(graph: dict[str, set[str]], expected: list[list[str]]) -> None:
    assert sorted(_cycles(graph)) == expected


def test_the_graph_sees_local_imports() -> None:
    # pipelines.cli imports the stages inside its commands only: the graph must still hold the edge.
    assert "pipelines.stages" in GRAPH["pipelines.cli"]


def test_no_module_is_named_like_the_standard_library() -> None:
    # Prefect loads a flow's file as a script, which puts its folder (pipelines/) first on sys.path:
    # a pipelines/inspect.py then shadowed the standard `inspect` for every process spawned later.
    # (vae/ holds no entrypoint: its `vae.io` is only ever imported as part of the package.)
    folder = [name for name in MODULES if name.startswith("pipelines.") and name.count(".") == 1]
    clashes = [name for name in folder if name.rpartition(".")[2] in sys.stdlib_module_names]
    assert not clashes, f"rename these modules: {clashes}"


#: Modules whose tests live in another file than their mirror `tests/<folder>/test_<name>.py`: the
#: file that drives them with the parts they work with (each must import the module).
TESTED_IN = {
    "pipelines.data.stream": "tests/pipelines/data/test_index.py",
    "pipelines.generate.actors": "tests/pipelines/generate/test_fanout.py",
    "pipelines.generate.conditional": "tests/pipelines/generate/test_exactly_once.py",
    "pipelines.generate.driver": "tests/pipelines/generate/test_preview.py",
    "pipelines.launch": "tests/pipelines/test_redaction.py",  # and README command 1: test_command1.py
    "pipelines.training.export": "tests/pipelines/test_training_cache.py",
    "pipelines.training.model_config": "tests/pipelines/training/test_streaming.py",
    "pipelines.training.preflight": "tests/pipelines/training/test_ray_train.py",
    "pipelines.training.stream_reader": "tests/pipelines/training/test_streaming.py",
    "pipelines.training.worker": "tests/pipelines/training/test_ray_train.py",
    "pipelines.usefulness.classifier": "tests/pipelines/usefulness/test_report.py",
    "pipelines.usefulness.dataset": "tests/pipelines/usefulness/test_report.py",
    "pipelines.usefulness.judge": "tests/pipelines/generate/test_curation.py",
    "pipelines.usefulness.metrics": "tests/pipelines/usefulness/test_report.py",
}


def _mirror(name: str) -> Path:
    folder, _, module = name.rpartition(".")
    return ROOT / "tests" / Path(*folder.split(".")) / f"test_{module}.py"


def test_tests_mirror_the_tree() -> None:
    modules = [n for n, p in MODULES.items() if p.name not in ("__init__.py", "__main__.py")]
    untested = [n for n in modules if not _mirror(n).exists() and n not in TESTED_IN]
    assert not untested, f"add tests/<folder>/test_<name>.py (or a TESTED_IN entry) for: {untested}"
    stale = [n for n in TESTED_IN if n not in modules or _mirror(n).exists()]
    assert not stale, f"drop these TESTED_IN entries (gone, or tested in their mirror now): {stale}"
    test_module = lambda f: ".".join(Path(f).with_suffix("").parts)  # noqa: E731
    elsewhere = [f"{n} in {f}" for n, f in TESTED_IN.items() if n not in _imports(test_module(f), ROOT / f)]
    assert not elsewhere, f"these test files do not import the module they are said to test: {elsewhere}"
