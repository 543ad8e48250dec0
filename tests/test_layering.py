"""The package map holds: imports point one way (spectral, quant -> io -> evals -> train -> experiments -> CLI),
and nothing outside the `qclip` namespace is installed or imported as a top-level project package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# package -> (folder, layer); a module may import its own layer's package and any lower layer, never a higher one
PACKAGES = {
    "qclip.spectral": ("spectral", 0),
    "qclip.quant": ("quant", 0),
    "qclip.io": ("qclip/io", 1),
    "qclip.evals": ("evals", 2),
    "qclip.train": ("train", 3),
    "qclip.experiments": ("qclip/experiments", 4),
    "qclip": ("qclip", 5),  # the CLI and the package root
    "qclip.commands": ("qclip/commands", 5),  # one module per CLI command
}
# spectral and quant share the bottom layer but stay independent of each other and of everything else
INDEPENDENT = {"qclip.spectral": {"qclip.spectral"}, "qclip.quant": {"qclip.quant"}}


def _modules() -> list[tuple[str, Path]]:
    out = []
    for package, (folder, _) in PACKAGES.items():
        root = REPO / folder
        files = [p for p in root.glob("**/*.py")] if package != "qclip" else list(root.glob("*.py"))
        for path in files:
            rel = path.relative_to(root).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out.append((".".join([package, *parts]), path))
    return out


def _package_of(module: str) -> str:
    """The longest package of PACKAGES that `module` lies in."""
    best = ""
    for package in PACKAGES:
        if (module == package or module.startswith(package + ".")) and len(package) > len(best):
            best = package
    return best


def _imports(module: str, path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[:len(base) - (node.level - 1)]
                target = ".".join(anchor + ([node.module] if node.module else []))
                found += [target] if node.module else [f"{target}.{a.name}" for a in node.names]
            elif node.module:
                found.append(node.module)
    return found


MODULES = _modules()


def test_every_package_folder_has_modules():
    assert {_package_of(m) for m, _ in MODULES} == set(PACKAGES)
    assert len(MODULES) > 40


@pytest.mark.parametrize("module, path", MODULES, ids=[m for m, _ in MODULES])
def test_imports_point_one_way(module, path):
    own = _package_of(module)
    layer = PACKAGES[own][1]
    for target in _imports(module, path):
        top = target.split(".")[0]
        assert top not in ("spectral", "quant", "evals", "train"), f"{module} imports top-level {target!r}"
        if top != "qclip":
            continue
        other = _package_of(target)
        if own in INDEPENDENT:
            assert other in INDEPENDENT[own], f"{module} ({own}) must not import {target}"
        assert PACKAGES[other][1] <= layer, f"{module} (layer {layer}) imports {target} (layer {PACKAGES[other][1]})"


def test_the_checker_sees_an_upward_import(tmp_path):
    """The walker itself: an io module importing experiments is caught, a relative import is resolved."""
    fake = tmp_path / "m.py"
    fake.write_text("from qclip.experiments import report\nfrom ..evals import suite\n")
    assert _imports("qclip.io.m", fake) == ["qclip.experiments", "qclip.evals"]
    assert PACKAGES[_package_of("qclip.experiments.report")][1] > PACKAGES["qclip.io"][1]


def test_only_the_qclip_namespace_is_installed():
    import tomllib

    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert all(p == "qclip" or p.startswith("qclip.") for p in cfg["packages"])
    assert set(cfg["package-dir"]) <= {"qclip", *PACKAGES}
    assert {cfg["package-dir"][p] for p in ("qclip.spectral", "qclip.quant", "qclip.evals", "qclip.train")} == {
        "spectral", "quant", "evals", "train"}


def test_every_package_folder_is_listed_for_the_wheel():
    """A package missing from pyproject's explicit list still imports in an editable install but is absent from the
    wheel (qclip.commands once was): every folder with an __init__.py must be listed under its mapped name."""
    import tomllib

    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = set()
    for package, folder in cfg["package-dir"].items():
        for init in (REPO / folder).glob("**/__init__.py"):
            rel = init.parent.relative_to(REPO / folder).parts
            name = ".".join([package, *rel])
            if package == "qclip" and rel and rel[0] in ("spectral", "quant", "evals", "train"):
                continue
            found.add(name)
    assert found <= set(cfg["packages"]), sorted(found - set(cfg["packages"]))
    assert {"qclip.commands", "qclip.io", "qclip.experiments", "qclip.evals.metrics"} <= found


def _module_graph(prefix: str) -> dict[str, set[str]]:
    """Module -> the modules under `prefix` it imports (at module level or inside functions; `from P import m`
    counts as an import of the submodule `P.m` when that is a module)."""
    known = {m for m, _ in MODULES if m == prefix or m.startswith(prefix + ".")}
    graph: dict[str, set[str]] = {}
    for module, path in MODULES:
        if module not in known:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        targets = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                anchor = ".".join(base[:len(base) - (node.level - 1)]) if node.level else ""
                parent = ".".join(p for p in (anchor, node.module or "") if p)
                targets += [parent, *(f"{parent}.{a.name}" for a in node.names)]
        graph[module] = {t for t in targets if t in known and t != module}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph, or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_foundation_has_no_import_cycle():
    """Within qclip.io no module imports one that imports it back, not even inside a function (build and verify
    once did: the digests and shard checks they share live in qclip.io.integrity)."""
    graph = _module_graph("qclip.io")
    assert {"qclip.io.build", "qclip.io.verify", "qclip.io.integrity"} <= set(graph)
    assert "qclip.io.integrity" in graph["qclip.io.build"] and "qclip.io.integrity" in graph["qclip.io.verify"]
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # the checker sees one
