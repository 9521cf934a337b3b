"""The rooms' import arrows (the layout in the README): a room may import the rooms before it in ROOMS,
never one after it, so each stage can be read and tested with only what it stands on. `backend.settings`
and `backend.metrics` are shared by every room and import none."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROOMS = ("converters", "prompts", "backend.store", "backend.llm", "backend.learning", "backend.predict",
         "backend.labelstudio", "backend.runs", "backend.service", "backend.cli")
SHARED = ("backend.settings", "backend.metrics")


def room_of(module: str) -> str | None:
    found = [r for r in (*ROOMS, *SHARED) if module == r or module.startswith(r + ".")]
    return max(found, key=len) if found else None


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in the file, wherever it stands (a function's lazy import
    counts: it is the same dependency, paid later)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
    return out


def violations(paths: list[Path], root: Path = ROOT) -> list[str]:
    problems = []
    for path in paths:
        source = room_of(module_name(path, root))
        if source is None:
            problems.append(f"{path.relative_to(root)}: in no room")
            continue
        for line, module in imported(path):
            target = room_of(module)
            if target is None or target == source:
                continue
            where = f"{path.relative_to(root)}:{line} imports {module}"
            if source in SHARED:
                problems.append(f"{where} (a shared module imports no room)")
            elif target in ROOMS and ROOMS.index(target) > ROOMS.index(source):
                problems.append(f"{where} ({target} stands after {source})")
    return problems


def package_files() -> list[Path]:
    return sorted(p for top in ("backend", "converters", "prompts") for p in (ROOT / top).rglob("*.py")
                  if module_name(p) != "backend")


def test_no_room_imports_a_room_after_it() -> None:
    assert violations(package_files()) == []


def test_the_check_finds_an_upward_import(tmp_path: Path) -> None:
    """The rule itself: a store module importing the learning room is reported; the reverse is not."""
    (tmp_path / "backend" / "store").mkdir(parents=True)
    (tmp_path / "backend" / "learning").mkdir(parents=True)
    upward = tmp_path / "backend" / "store" / "bad.py"
    upward.write_text("def f():\n    from backend.learning.student import StudentModel\n")
    downward = tmp_path / "backend" / "learning" / "good.py"
    downward.write_text("from backend.store.db import write\nfrom backend.settings import Settings\n")
    shared = tmp_path / "backend" / "metrics.py"
    shared.write_text("from backend.llm.local_status import STATES\n")
    assert violations([upward, downward, shared], tmp_path) == [
        "backend/store/bad.py:2 imports backend.learning.student (backend.learning stands after backend.store)",
        "backend/metrics.py:1 imports backend.llm.local_status (a shared module imports no room)",
    ]
