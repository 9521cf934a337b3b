"""START_TRAINING: read every annotation of a project back from Label Studio with label-studio-sdk.

Credentials: LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY when set, otherwise the hostname and access token
Label Studio sent to /setup for this project.
"""

from __future__ import annotations

import logging
from typing import Any

from backend.labelstudio.api import as_dict, client_for, iter_task_pages
from backend.store.project_store import ProjectStore
from backend.settings import Settings
from backend.learning.intake import BadEvent, parse_annotation

log = logging.getLogger(__name__)


class ResyncError(RuntimeError):
    pass


def credentials(settings: Settings, projects: ProjectStore, project_id: str) -> tuple[str, str]:
    if settings.label_studio_url and settings.label_studio_api_key:
        return settings.label_studio_url, settings.label_studio_api_key.get_secret_value()
    info = projects.get(project_id)
    if info and info.hostname and info.access_token:
        return info.hostname, info.access_token
    raise ResyncError(
        f"no Label Studio credentials for project {project_id}: set LABEL_STUDIO_URL and "
        "LABEL_STUDIO_API_KEY, or let Label Studio call /setup first"
    )


def fetch_project_annotations(
    url: str, token: str, project_id: str, page_size: int = 100, timeout: float = 30.0
) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Every task of the project with its annotations, normalised like webhook annotations."""
    client = client_for(url, token, timeout)
    out: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
    for _total, tasks in iter_task_pages(client, int(project_id), page_size):
        for task in tasks:
            annotations = []
            for raw in task.get("annotations") or []:
                try:
                    annotations.append(parse_annotation(as_dict(raw), int(task["id"])))
                except BadEvent as exc:
                    log.warning("resync: task %s: skipped an annotation (%s)", task.get("id"), exc)
            out.append(({"id": int(task["id"]), "data": dict(task.get("data") or {})}, annotations))
    return out


def make_resync(settings: Settings, projects: ProjectStore):  # type: ignore[no-untyped-def]
    def resync(project_id: str) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
        url, token = credentials(settings, projects, project_id)
        return fetch_project_annotations(url, token, project_id)

    return resync
