"""Bug 7 (undeclared imports): every third-party module the code imports comes from a distribution that
pyproject.toml declares, so a fresh install cannot fail with ModuleNotFoundError on a module that only
happened to arrive as someone else's dependency (`httpx2` in the LLM client, `yaml` in the tests).

The package (backend/, converters/, prompts/) may use the dependencies and the runtime extras (local,
postgres); the tests may also use the dev extra."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ("backend", "converters", "prompts")
RUNTIME_EXTRAS = ("local", "postgres")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(extras: tuple[str, ...]) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    return {normalise(re.split(r"[^A-Za-z0-9._-]", r.strip(), maxsplit=1)[0]) for r in requirements}


def imports(paths: list[Path]) -> dict[str, set[str]]:
    """Top-level module -> the files importing it (absolute imports only)."""
    found: dict[str, set[str]] = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(path.name)
    return found


def undeclared(paths: list[Path], allowed: set[str], local: set[str]) -> list[str]:
    provided = importlib.metadata.packages_distributions()
    problems = []
    for module, files in sorted(imports(paths).items()):
        if module in sys.stdlib_module_names or module in local:
            continue
        distributions = {normalise(d) for d in provided.get(module, [])}
        if not distributions:
            problems.append(f"{module} (not installed; imported by {sorted(files)})")
        elif not distributions & allowed:
            problems.append(f"{module} from {sorted(distributions)}, not declared (imported by {sorted(files)})")
    return problems


def package_files() -> list[Path]:
    return [p for d in PACKAGE for p in (ROOT / d).rglob("*.py")]


def test_the_package_imports_only_declared_distributions() -> None:
    assert undeclared(package_files(), declared(RUNTIME_EXTRAS), set(PACKAGE)) == []


def test_the_tests_import_only_declared_distributions() -> None:
    files = list((ROOT / "tests").rglob("*.py"))
    local = set(PACKAGE) | {p.stem for p in files}
    assert undeclared(files, declared((*RUNTIME_EXTRAS, "dev")), local) == []


def test_the_check_catches_an_undeclared_import(tmp_path: Path) -> None:
    """The check itself can fail: an import of a distribution that only arrives as another's dependency."""
    probe = tmp_path / "probe.py"
    probe.write_text("import httpx2\nimport yaml\nimport json\nfrom backend import settings\n")
    problems = undeclared([probe], declared(RUNTIME_EXTRAS), set(PACKAGE))
    assert [p.split(" ")[0] for p in problems] == ["httpx2", "yaml"]
