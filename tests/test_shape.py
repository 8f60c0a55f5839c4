"""The package's shape: no import cycles, no function too long to read at once, no
long tuples between modules, one place that takes a naive time as UTC.

Each walks the source with ``ast`` (no import runs), so an import inside a
function or under ``TYPE_CHECKING`` counts as much as one at the top: a lazy
import must not hide a cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import hubreturns

PACKAGE = Path(hubreturns.__file__).parent
MAX_FUNCTION_LINES = 80
#: The most fields a tuple crossing a module boundary may have; more go in a named record.
MAX_TUPLE_FIELDS = 4
#: Functions that are data tables written as code, allowed to be longer.
DATA_TABLES = frozenset(
    {
        # The first migration's DDL: one create_table call per table, as Alembic writes it.
        "dcc/store/migrations/versions/0001_core_tables.py:upgrade",
    }
)
#: The two sides of the package: the DCC service and the Service User's tools. The
#: modules directly under ``hubreturns`` are shared (model, codes, errors, policy,
#: wire, pki, tables) or compose both sides (cli, extensions, demo).
SIDES = ("hubreturns.dcc", "hubreturns.user")
#: The one place a side reaches into the other, with why.
CROSSINGS = {
    # ``testpack run --load``: this service's own database, so a pack can run again.
    ("hubreturns.user.usercli", "hubreturns.demo"),
}
#: Where a naive time is made aware as UTC: operators' input, and SQLite's stored moments.
UTC_ATTACHERS = frozenset({"model.py:as_utc", "dcc/store/types.py:Moment.process_result_value"})
COMPOSERS = frozenset({"hubreturns.cli", "hubreturns.extensions", "hubreturns.demo"})


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package ``__init__``)."""
    found: dict[str, tuple[Path, bool]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ["hubreturns", *path.relative_to(PACKAGE).with_suffix("").parts]
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def _imported(name: str, is_package: bool, node: ast.AST, modules: set[str]) -> Iterator[str]:
    """The package's modules an import statement names."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            here = name.split(".") if is_package else name.split(".")[:-1]
            base = ".".join([*here[: len(here) - node.level + 1], *([base] if base else [])])
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            yield submodule if submodule in modules else base


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        graph[name] = {
            target
            for node in ast.walk(tree)
            for target in _imported(name, is_package, node, set(modules))
            if target in modules and target != name
        }
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component: list[str] = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def long_functions() -> dict[str, int]:
    """``path:qualified.name`` -> length in lines, for every function over the limit."""
    long: dict[str, int] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        where = path.relative_to(PACKAGE).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        todo: list[tuple[ast.AST, str]] = [(tree, "")]
        while todo:
            node, prefix = todo.pop()
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    name = f"{prefix}{child.name}"
                    length = (child.end_lineno or child.lineno) - child.lineno + 1
                    if not isinstance(child, ast.ClassDef) and length > MAX_FUNCTION_LINES:
                        long[f"{where}:{name}"] = length
                    todo.append((child, f"{name}."))
                else:
                    todo.append((child, prefix))
    return long


def _long_tuples(annotation: ast.expr | None) -> Iterator[int]:
    """The length of each ``tuple[...]`` of more than ``MAX_TUPLE_FIELDS`` fields in an
    annotation."""
    for node in ast.walk(annotation) if annotation is not None else ():
        if isinstance(node, ast.Subscript) and ast.unparse(node.value) in ("tuple", "Tuple"):
            fields = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
            if len(fields) > MAX_TUPLE_FIELDS:
                yield len(fields)


def long_public_tuples() -> dict[str, int]:
    """``path:function`` -> fields, for a public function that takes or returns a tuple
    of more than ``MAX_TUPLE_FIELDS`` fields: its callers would unpack it by position."""
    found: dict[str, int] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        where = path.relative_to(PACKAGE).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            if node.name.startswith("_") and node.name != "__init__":
                continue
            arguments = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
            annotations = [node.returns, *(argument.annotation for argument in arguments)]
            lengths = [n for annotation in annotations for n in _long_tuples(annotation)]
            if lengths:
                found[f"{where}:{node.name}"] = max(lengths)
    return found


def test_no_public_function_takes_or_returns_a_tuple_of_more_than_4_fields() -> None:
    assert long_public_tuples() == {}


def test_the_tuple_finder_finds_a_long_tuple() -> None:
    five = ast.parse("tuple[int, str, str, str, bytes | None]", mode="eval").body
    assert list(_long_tuples(five)) == [5]
    assert list(_long_tuples(ast.parse("tuple[int, ...]", mode="eval").body)) == []
    assert list(_long_tuples(ast.parse("tuple[int, str, str, str]", mode="eval").body)) == []


def utc_attachers() -> set[str]:
    """``path:qualified.name`` of each function that calls ``.replace(tzinfo=<a zone>)``."""
    found: set[str] = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        where = path.relative_to(PACKAGE).as_posix()
        todo: list[tuple[ast.AST, str]] = [(ast.parse(path.read_text(encoding="utf-8")), "")]
        while todo:
            node, name = todo.pop()
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    todo.append((child, f"{name}.{child.name}" if name else child.name))
                    continue
                todo.append((child, name))
                if (
                    isinstance(child, ast.Call)
                    and isinstance(child.func, ast.Attribute)
                    and child.func.attr == "replace"
                    and any(
                        k.arg == "tzinfo"
                        and not (isinstance(k.value, ast.Constant) and k.value.value is None)
                        for k in child.keywords
                    )
                ):
                    found.add(f"{where}:{name}")
    return found


def test_only_as_utc_and_the_moment_column_take_a_naive_time_as_utc() -> None:
    """Everything else goes through ``model.as_utc``."""
    assert utc_attachers() == UTC_ATTACHERS


def test_the_package_has_no_import_cycle() -> None:
    graph = import_graph()
    assert "hubreturns.extensions" in graph["hubreturns.cli"]  # lazy imports are seen
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_no_function_is_longer_than_80_lines_outside_data_tables() -> None:
    found = long_functions()
    allowed = DATA_TABLES
    assert allowed <= set(found), f"now short, drop from the lists: {allowed - set(found)}"
    assert {name: n for name, n in found.items() if name not in allowed} == {}


def _side(module: str) -> str:
    """``dcc``, ``user``, ``composer`` or ``shared``."""
    for side in SIDES:
        if module == side or module.startswith(side + "."):
            return side.rsplit(".", 1)[1]
    return "composer" if module in COMPOSERS else "shared"


def test_the_two_sides_do_not_import_each_other() -> None:
    """Shared modules import no side; a side imports shared modules and itself only."""
    wrong = sorted(
        (source, target)
        for source, targets in import_graph().items()
        for target in targets
        if (source, target) not in CROSSINGS
        and _side(target) not in ("shared", _side(source))
        and _side(source) != "composer"
    )
    assert wrong == []
    assert all(_side(s) == "user" and _side(t) == "composer" for s, t in CROSSINGS)
