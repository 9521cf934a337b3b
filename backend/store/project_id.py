"""One normalisation for project ids: "<id>.<created_ts>" in /setup and /predict, an int in webhooks."""

from __future__ import annotations

from typing import Any


def normalise_project_id(project: Any) -> str:
    """Return the bare numeric id as a string; raise ValueError for anything else."""
    if isinstance(project, bool) or project is None:
        raise ValueError("missing project id")
    if isinstance(project, int):
        return str(project)
    if isinstance(project, dict) and "id" in project:
        return normalise_project_id(project["id"])
    if isinstance(project, str):
        head = project.strip().split(".", 1)[0]
        if head.isdigit():
            return str(int(head))
    raise ValueError(f"not a Label Studio project id: {str(project)[:40]!r}")
