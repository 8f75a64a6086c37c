"""Every DVC stage depends on every src/kboost module its script imports, directly or not, so a
code change can never leave a result silently stale (imports inside functions count too: they
run when the stage calls them)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "kboost"


def _module_file(name: str) -> Path | None:
    """The file of module ``kboost.a.b`` (a package's __init__.py), or None outside kboost."""
    if name != "kboost" and not name.startswith("kboost."):
        return None
    path = REPO / "src" / Path(*name.split("."))
    if path.is_dir():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO / "src").with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[Path]:
    """kboost module files imported anywhere in ``path`` (and the packages on the way)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0] \
        if path.is_relative_to(PACKAGE) else ""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parent + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # submodules imported by name
    found = set()
    for name in names:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__, a/b/__init__ too
            file = _module_file(".".join(parts[:i]))
            if file is not None:
                found.add(file)
    return found


def import_closure(script: Path) -> set[Path]:
    seen, todo = set(), [script]
    while todo:
        for file in _imports(todo.pop()):
            if file not in seen:
                seen.add(file)
                todo.append(file)
    return seen


def _stages() -> dict[str, dict]:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in stages.items()}


def missing_deps(stage: dict) -> list[str]:
    script = REPO / re.search(r"python (pipeline/\S+\.py)", stage["cmd"]).group(1)
    deps = [REPO / dep for dep in stage.get("deps", []) if "${" not in dep]
    needed = import_closure(script) | {script}
    return sorted(str(f.relative_to(REPO)) for f in needed
                  if not any(f == dep or dep in f.parents for dep in deps))


@pytest.mark.parametrize("name", sorted(_stages()))
def test_stage_depends_on_its_whole_import_closure(name):
    assert missing_deps(_stages()[name]) == []


def test_the_walker_sees_imports_inside_functions_and_packages():
    closure = import_closure(REPO / "pipeline" / "train.py")
    assert PACKAGE / "training.py" in closure  # imported inside a function of experiment.py
    assert PACKAGE / "models" / "__init__.py" in closure
