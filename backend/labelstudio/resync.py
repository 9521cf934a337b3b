"""START_TRAINING: read every annotation of a project back from Label Studio with label-studio-sdk, as
Label Studio's API returns them (the learner parses them with the webhook's rules)."""

from __future__ import annotations

from typing import Any

from backend.labelstudio.api import as_dict, client_for, iter_task_pages
from backend.labelstudio.credentials import credentials
from backend.settings import Settings
from backend.store.project_store import ProjectStore


def fetch_project_annotations(
    url: str, token: str, project_id: str, page_size: int = 100, timeout: float = 30.0
) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Every task of the project ({"id", "data"}) with its raw annotations."""
    client = client_for(url, token, timeout)
    out: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
    for _total, tasks in iter_task_pages(client, int(project_id), page_size):
        for task in tasks:
            annotations = [dict(as_dict(raw)) for raw in task.get("annotations") or []]
            out.append(({"id": int(task["id"]), "data": dict(task.get("data") or {})}, annotations))
    return out


def make_resync(settings: Settings, projects: ProjectStore):  # type: ignore[no-untyped-def]
    def resync(project_id: str) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
        url, token = credentials(settings, projects, project_id)
        return fetch_project_annotations(url, token, project_id)

    return resync
