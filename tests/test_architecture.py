"""The architecture of docs/ARCHITECTURE.md, read from the code: imports flow one way, no cycles, gradio only in the
app, and no module or function grows past what a reader takes in at once (tests/sizes.py reports the largest)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import sizes

ROOT = Path(__file__).resolve().parent.parent

# Part -> the parts it may import. "root" is t2i_core/__init__.py (version, MAX_SEED, lazy exports); "images",
# "video" and "output" are leaves (tensors to PIL, frames to files, T2IOutput) that import no other part.
ALLOWED = {
    "root": set(),
    "images": set(),
    "video": set(),
    "text": set(),
    "models": set(),
    "data": set(),
    "output": set(),
    "pipeline": {"models", "text", "images", "output"},
    "training": {"models", "text", "data", "images"},
    "evaluation": {"pipeline", "models", "text", "data", "images"},
    "cli": {"pipeline", "training", "evaluation", "models", "text", "data", "images", "video"},
    "recipes": {"pipeline", "training", "models", "text", "data", "images"},
    "app": {"app", "pipeline", "training", "models", "data", "video", "text", "images"},
}
GRADIO_PARTS = {"app"}


def part_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] in ("app", "t2i_app"):
        return "app"
    if len(parts) == 1:
        return "root"
    return "cli" if parts[1] == "__main__" else parts[1]


def project_modules() -> dict[str, Path]:
    found = {"app": ROOT / "app.py"}
    for package in ("t2i_core", "t2i_app"):
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(rel[:-1] if rel[-1] == "__init__" else rel)] = path
    return found


def imports_of(module: str, path: Path) -> set[str]:
    """Every module this one imports, anywhere in it (function-level imports too), as absolute names."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            out.add(target)
            out |= {f"{target}.{a.name}" for a in node.names}  # `from . import x` may name a module
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {m: {i for i in imports_of(m, p) if i in modules and i != m} for m, p in modules.items()}


def test_imports_follow_the_allowed_arrows(graph):
    bad = [f"{m} -> {i}" for m, deps in graph.items() for i in sorted(deps)
           if part_of(i) != part_of(m) and part_of(i) != "root" and part_of(i) not in ALLOWED[part_of(m)]]
    assert bad == []
    # The core never reaches into the app.
    assert [f"{m} -> {i}" for m, deps in graph.items() for i in deps
            if m.startswith("t2i_core") and part_of(i) == "app"] == []


def test_no_import_cycles(graph):
    state, cycles = {}, []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = "open"
        for dep in sorted(graph[m]):
            if state.get(dep) == "open":
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    # A package's __init__ importing its own modules is not a cycle between parts of the code.
    cycles = [c for c in cycles if not any(a.startswith(b + ".") or b.startswith(a + ".") for a, b in zip(c, c[1:]))]
    assert cycles == []


def test_only_the_app_imports_gradio():
    users = [m for m, p in project_modules().items()
             if any(i == "gradio" or i.startswith("gradio.") for i in imports_of(m, p))]
    assert users and all(part_of(m) in GRADIO_PARTS for m in users), users


def test_the_checks_see_a_forbidden_arrow(tmp_path):
    """The import reader resolves relative imports, so a model importing the trainer would be caught."""
    bad = tmp_path / "generator.py"
    bad.write_text("from ..training.loop import Trainer\n")
    found = imports_of("t2i_core.models.generator", bad)
    assert "t2i_core.training.loop" in found and "training" not in ALLOWED["models"]


def test_no_module_over_400_lines_and_no_function_over_60():
    over = [(name, n) for name, n in sizes.report(top=10**6)[0] if n > sizes.MAX_MODULE_LINES]
    over += [(name, n) for name, n in sizes.report(top=10**6)[1] if n > sizes.MAX_FUNCTION_LINES]
    assert over == [], "split these (python tests/sizes.py lists the largest)"


def _layout_block() -> str:
    text = (ROOT / "README.md").read_text()
    return text.split("## Layout", 1)[1].split("\n## ", 1)[0]


def test_readme_layout_and_architecture_name_every_module():
    """The README's tree matches the files, and docs/ARCHITECTURE.md links every module (one hop to any concept)."""
    layout, architecture = _layout_block(), (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    modules = [p for m, p in project_modules().items() if p.name not in ("__init__.py", "__main__.py")]
    assert modules
    missing_in_readme = [p.relative_to(ROOT).as_posix() for p in modules if p.name not in layout]
    missing_in_architecture = [p.relative_to(ROOT).as_posix() for p in modules
                               if p.relative_to(ROOT).as_posix() not in architecture]
    assert missing_in_readme == [] and missing_in_architecture == []
    # Every folder the tree names exists.
    for folder in ("t2i_core/models", "t2i_core/training", "t2i_core/data", "t2i_core/evaluation", "t2i_core/cli",
                   "t2i_core/recipes", "t2i_app"):
        assert folder.split("/")[-1] + "/" in layout and (ROOT / folder).is_dir(), folder
    for name in __import__("re").findall(r"[\w]+\.(?:py|json)", layout):
        assert list(ROOT.glob(f"**/{name}")), f"README layout names {name}, which does not exist"
