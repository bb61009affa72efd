import importlib.util
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.skipif(importlib.util.find_spec("ruff") is None, reason="ruff is not installed (pip install -e .[test])")
def test_ruff_clean():
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def _sources():
    import ast

    for path in sorted((ROOT / "transfer").rglob("*.py")):
        yield path, ast.parse(path.read_text())


def _stage(path) -> str | None:
    parts = path.relative_to(ROOT / "transfer").parts
    return parts[0] if len(parts) > 1 else None


def test_functions_and_modules_stay_short_enough_to_read_at_once():
    import ast

    long_functions = [f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1})"
                      for path, tree in _sources() for node in ast.walk(tree)
                      if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                      and node.end_lineno - node.lineno + 1 > 60]
    long_modules = [f"{path.relative_to(ROOT)} ({n})" for path, _ in _sources()
                    if (n := len(path.read_text().splitlines())) > 500]
    assert long_functions == [] and long_modules == []


def test_only_public_names_cross_stages_and_only_kerass_public_api_is_used():
    import ast

    crossing, private_keras = [], []
    stages = {p.name for p in (ROOT / "transfer").iterdir() if (p / "__init__.py").exists()}
    for path, tree in _sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                parts = node.module.split(".")
                if parts[0] == "keras" and any(p == "src" or p.startswith("_") for p in parts[1:]):
                    private_keras.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.module}")
                if parts[0] == "transfer" and len(parts) > 1 and parts[1] in stages and parts[1] != _stage(path) and (
                        any(p.startswith("_") for p in parts[1:]) or any(a.name.startswith("_") for a in node.names)):
                    crossing.append(f"{path.relative_to(ROOT)}:{node.lineno} from {node.module}")
            if isinstance(node, ast.Import) and any(a.name.startswith("keras.src") for a in node.names):
                private_keras.append(f"{path.relative_to(ROOT)}:{node.lineno}")
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
                private_keras.append(f"{path.relative_to(ROOT)}:{node.lineno} .{node.attr}")
    assert crossing == [] and private_keras == []


def test_the_contributing_pages_layout_names_every_module_of_the_tree():
    page = (ROOT / "docs" / "contributing.md").read_text()
    layout = page[page.index("## How the code is laid out"):]
    layout = layout[:layout.index("\n## ")] if "\n## " in layout else layout
    missing = [str(path.relative_to(ROOT)) for path in sorted((ROOT / "transfer").rglob("*.py"))
               if path.name != "__init__.py" and path.name not in layout]
    stages = [p.name + "/" for p in (ROOT / "transfer").iterdir() if p.is_dir() and (p / "__init__.py").exists()]
    assert missing == [] and all(stage in layout for stage in stages)


def test_every_function_that_asserts_in_a_test_module_runs():
    """A module-level function with an ``assert`` in it is either collected (``test_`` prefix) or called by
    something: one without either never runs, and its checks pass silently."""
    import ast

    sources = {path: path.read_text() for path in sorted((ROOT / "tests").glob("*.py"))}
    called = set()
    for text in sources.values():
        called |= {node.id for node in ast.walk(ast.parse(text)) if isinstance(node, ast.Name)}
        called |= {node.attr for node in ast.walk(ast.parse(text)) if isinstance(node, ast.Attribute)}
    idle = [f"{path.name}:{node.lineno} {node.name}" for path, text in sources.items()
            for node in ast.parse(text).body
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("test_") and node.name not in called
            and any(isinstance(inner, ast.Assert) for inner in ast.walk(node))]
    assert idle == [], "functions that assert but are never collected nor called"
