"""The import graph of the product: no circle between modules, and no arrow back up the folder order.

The order is the README's "Where things are" table, top to bottom (fleet > bench > engine > calibration > export >
train > kitti > runtime): a module may import its own folder or one below it, never one above. Imports inside
functions count: a deferred import is still an arrow.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import REPO


def folder_order(readme: str) -> list[str]:
    """The code folders of the README's "Where things are" table, top to bottom (folders with no Python skipped)."""
    section = readme.split("## Where things are", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\| `(\w+)/` \|", section, flags=re.M)
    return [name for name in listed if name != "tests" and ((REPO / name / "__init__.py").is_file()
                                                             or not (REPO / name).exists())]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The product modules `path` imports, anywhere in the file (a `from pkg import mod` names the module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            candidates = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in candidates:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def import_graph(folders: list[str]) -> dict[str, set[str]]:
    paths = {module_name(path): path for folder in folders for path in sorted((REPO / folder).glob("*.py"))}
    return {name: imports_of(path, set(paths)) - {name} for name, path in paths.items()}


def arrows_up(graph: dict[str, set[str]], folders: list[str]) -> list[str]:
    rank = {folder: index for index, folder in enumerate(folders)}  # 0 = top
    return sorted(f"{source} -> {target}" for source, targets in graph.items() for target in targets
                  if rank[target.split(".")[0]] < rank[source.split(".")[0]])


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


FOLDERS = folder_order((REPO / "README.md").read_text())


def test_the_readme_names_the_folder_order():
    known = ["bench", "engine", "calibration", "export", "train", "kitti", "runtime"]
    assert [folder for folder in FOLDERS if folder in known] == known
    assert FOLDERS[0] == "fleet", "fleet/ sits on top: it imports runtime/ and nothing imports it"


def test_no_arrow_back_up_the_folder_order():
    upward = arrows_up(import_graph(FOLDERS), FOLDERS)
    assert not upward, "\n".join(upward)


def test_no_circle_between_modules():
    found = circles(import_graph(FOLDERS))
    assert not found, "\n".join(" <-> ".join(component) for component in found)


def test_the_graph_checks_can_fail():
    graph = {"bench.a": {"bench.b"}, "bench.b": {"bench.a"}, "runtime.c": {"bench.a"}, "bench.d": {"runtime.c"}}
    assert circles(graph) == [["bench.a", "bench.b"]]
    assert arrows_up(graph, ["bench", "runtime"]) == ["runtime.c -> bench.a"]
    assert "bench.table" in import_graph(FOLDERS)["bench.__main__"]
