"""Report the largest modules and functions of the code base: `python tests/sizes.py [--top N]`.

A module counts its lines; a function its lines from `def` to its last statement (nested functions count inside
their parent too). Data tables are no code to read: a module's top-level assignments of literal data
(dicts, lists, tuples, sets, strings) do not count toward its size.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("t2i_core", "t2i_app")
SCRIPTS = ("app.py",)
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
_LITERALS = (ast.Dict, ast.List, ast.Tuple, ast.Set, ast.Constant)


def source_files() -> list[Path]:
    files = [ROOT / s for s in SCRIPTS if (ROOT / s).is_file()]
    for package in PACKAGES:
        files += sorted((ROOT / package).rglob("*.py"))
    return files


def _is_table(node: ast.stmt) -> bool:
    value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
    return isinstance(value, _LITERALS) and node.end_lineno - node.lineno >= 4


def module_lines(path: Path) -> int:
    """Lines of the module, less those of its top-level data tables."""
    text = path.read_text()
    tree = ast.parse(text)
    tables = sum(n.end_lineno - n.lineno + 1 for n in tree.body if _is_table(n))
    return len(text.splitlines()) - tables


def function_sizes(path: Path) -> list[tuple[str, int]]:
    """(qualified name, lines) of every function and method in the module."""
    out = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([child.lineno] + [d.lineno for d in child.decorator_list])
                out.append((prefix + child.name, child.end_lineno - start + 1))
                visit(child, prefix + child.name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")

    visit(ast.parse(path.read_text()), "")
    return out


def report(top: int = 10) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """The `top` largest modules and functions, largest first, as (name, lines)."""
    modules, functions = [], []
    for path in source_files():
        rel = path.relative_to(ROOT).as_posix()
        modules.append((rel, module_lines(path)))
        functions += [(f"{rel}:{name}", n) for name, n in function_sizes(path)]
    key = lambda item: -item[1]  # noqa: E731
    return sorted(modules, key=key)[:top], sorted(functions, key=key)[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()
    modules, functions = report(args.top)
    print(f"largest modules (limit {MAX_MODULE_LINES} lines, data tables aside):")
    for name, n in modules:
        print(f"  {n:5d}  {name}{'  OVER' if n > MAX_MODULE_LINES else ''}")
    print(f"largest functions (limit {MAX_FUNCTION_LINES} lines):")
    for name, n in functions:
        print(f"  {n:5d}  {name}{'  OVER' if n > MAX_FUNCTION_LINES else ''}")


if __name__ == "__main__":
    main()
