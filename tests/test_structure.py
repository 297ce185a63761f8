"""The house rules the import contract (``lint-imports``) cannot see: which modules may import inside a
function (only the heavy libraries, so that importing the package stays cheap), and how long a function in
``backend/`` may be (docs/architecture.md#layers)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGES = ("backend", "worker", "rubric_judge")
#: libraries a module may import inside a function: heavy to import (torch, transformers, peft, matplotlib, the
#: Label Studio SDK and its HTTP stack, gunicorn) or optional (psutil, tqdm)
LAZY_LIBRARIES = {
    "torch",
    "transformers",
    "peft",
    "matplotlib",
    "label_studio_sdk",
    "httpx",
    "gunicorn",
    "psutil",
    "tqdm",
}
#: project modules a module may import inside a function, and why
LAZY_MODULES = {
    # `rubric-judge worker` and the offline commands never import Flask: only `serve` builds the app
    "rubric_judge/cli.py": {"backend.web.app"},
}
MAX_FUNCTION_LINES = 79


def _modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (REPO / package).rglob("*.py"))


def _function_imports(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for function in ast.walk(tree):
        if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(function):
                if isinstance(node, ast.Import):
                    found += [(node.lineno, alias.name) for alias in node.names]
                elif isinstance(node, ast.ImportFrom):
                    found.append((node.lineno, node.module or ""))
    return found


def test_only_heavy_libraries_are_imported_inside_functions():
    wrong = []
    for path in _modules():
        name = str(path.relative_to(REPO))
        for line, module in _function_imports(ast.parse(path.read_text())):
            if module.split(".")[0] not in LAZY_LIBRARIES and module not in LAZY_MODULES.get(name, ()):
                wrong.append(f"{name}:{line} imports {module} inside a function")
    assert wrong == [], "import these at the top of the module (or add the heavy library here):\n" + "\n".join(wrong)


def test_the_lazy_lists_name_only_what_is_imported_lazily():
    used = {
        str(path.relative_to(REPO)): {m for _, m in _function_imports(ast.parse(path.read_text()))}
        for path in _modules()
    }
    stale = {name: modules - used.get(name, set()) for name, modules in LAZY_MODULES.items()}
    assert all(not s for s in stale.values()), stale
    roots = {m.split(".")[0] for modules in used.values() for m in modules}
    assert LAZY_LIBRARIES - roots == set(), "no module imports these lazily any more"


def test_no_function_in_backend_is_longer_than_the_limit():
    lengths = sorted(
        (
            (node.end_lineno or node.lineno) - node.lineno + 1,
            f"{path.relative_to(REPO)}:{node.lineno} {node.name}",
        )
        for path in sorted((REPO / "backend").rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    )
    longest = lengths[-1]
    assert longest[0] <= MAX_FUNCTION_LINES, f"{longest[1]} is {longest[0]} lines; split it"
