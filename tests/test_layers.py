"""The layers of DESIGN.md, read from every module's imports (ast).

* no import cycle between the library's modules (imports at module level:
  an import inside a function runs later and is how a module reaches a
  layer above it without a cycle, e.g. the link errors that cost aiohttp);
* `kernel.net` (the transports) imports nothing else of the library;
* the kernel's core (`kernel.scheduling`, `kernel.runtime`,
  `kernel.execution`, and `kernel.dataflow` but its fluent API) imports
  neither `kernel.operators` nor `kernel.state`, lazily or not;
* `kernel.scheduling` (the microkernel) imports nothing else of the library;
* `kernel.operators` never imports `kernel.net`;
* nothing inside imports the root package `kernel` (it imports everything).
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# folder -> the package it is installed as (pyproject.toml's package-dir)
FOLDERS = {"kernel": "kernel", "net": "kernel.net", "operators": "kernel.operators",
           "state": "kernel.state"}


def library_modules() -> dict[str, Path]:
    modules = {}
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join([package, *parts])
            if folder == "kernel" and name.startswith(tuple(f"kernel.{f}" for f in FOLDERS if f != "kernel")):
                continue
            modules[name] = path
    return modules


MODULES = library_modules()


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


@cache  # each test reads every module's imports: parsed once per run (the files do not change meanwhile)
def imports_of(module: str) -> tuple[tuple[str, bool], ...]:
    """(imported library module, at module level?) for each import in `module`."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node, path.name == "__init__.py")
            targets = [base]
            targets += [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES]
        for target in targets:
            if target.split(".")[0] in ("kernel", "net", "state", "operators"):
                found.append((target, id(node) in top_level))
    return tuple(found)


def _guard_import(module: str, target: str) -> bool:
    """A public alias folder's __init__ importing the package it stands for
    (`import kernel.net` in net/__init__.py, under `if __name__ != ...`), or
    the helper that makes it that package (`kernel._aliases`, which imports
    nothing of the library but by name, at run time)."""
    if target == "kernel._aliases":
        return module in ("kernel.net", "kernel.operators", "kernel.state")
    return target == module and MODULES[module].name == "__init__.py"


def test_the_alias_helper_imports_nothing_of_the_library():
    assert imports_of("kernel._aliases") == ()


def edges(module_level_only: bool) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for module in MODULES:
        for target, at_top in imports_of(module):
            if module_level_only and not at_top:
                continue
            if target in MODULES and not _guard_import(module, target):
                graph[module].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def violations(allowed) -> list[str]:
    bad = []
    for module in sorted(MODULES):
        for target, _ in imports_of(module):
            if not _guard_import(module, target) and not allowed(module, target):
                bad.append(f"{module} imports {target}")
    return bad


def _under(name: str, *packages: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def test_the_layout_is_what_the_test_reads():
    assert "kernel.net._transport" in MODULES and "kernel.operators._sources" in MODULES
    assert "kernel.scheduling._kernel" in MODULES and "kernel.state._store" in MODULES


def test_no_import_cycle_between_modules():
    assert find_cycle(edges(module_level_only=True)) is None


def test_net_imports_nothing_else_of_the_library():
    assert violations(lambda m, t: not _under(m, "kernel.net") or _under(t, "kernel.net")) == []


def test_the_kernels_core_imports_neither_operators_nor_state():
    core = ("kernel.scheduling", "kernel.runtime", "kernel.execution", "kernel.dataflow")

    def allowed(module, target):
        if not _under(module, *core) or module == "kernel.dataflow._api":
            return True
        return not _under(target, "kernel.operators", "kernel.state", "operators", "state")

    assert violations(allowed) == []


def test_the_microkernel_imports_nothing_else_of_the_library():
    assert violations(lambda m, t: not _under(m, "kernel.scheduling") or _under(t, "kernel.scheduling")) == []


def test_operators_never_import_net():
    assert violations(lambda m, t: not _under(m, "kernel.operators") or not _under(t, "kernel.net")) == []


def test_nothing_inside_imports_the_root_package():
    assert violations(lambda m, t: t != "kernel") == []


def test_the_checks_can_fail():
    """A cycle and a forbidden import, made up, are found."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_nothing_below_the_system_imports_it():
    """`kernel.system` (issue 17: coordinator, executors) sits on top: only
    `python -m kernel` (kernel/__main__.py) reaches it."""
    assert violations(lambda m, t: _under(m, "kernel.system") or m == "kernel.__main__"
                      or not _under(t, "kernel.system")) == []
