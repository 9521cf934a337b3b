"""START_TRAINING: read every annotation of a project back from Label Studio with label-studio-sdk.

Credentials: with LABEL_STUDIO_URL set, requests go only there (with LABEL_STUDIO_API_KEY, else the token
/setup sent), whatever hostname a /setup named; without it, the hostname and access token Label Studio
sent to /setup together (the store forgets a token when a /setup names another host without one).
"""

from __future__ import annotations

import logging
from typing import Any

from backend.labelstudio.api import as_dict, client_for, iter_task_pages
from backend.learning.intake import BadEvent, parse_annotation
from backend.settings import Settings
from backend.store.project_store import ProjectStore

log = logging.getLogger(__name__)


class ResyncError(RuntimeError):
    pass


def credentials(settings: Settings, projects: ProjectStore, project_id: str) -> tuple[str, str]:
    """(url, token) for the project's Label Studio: the only place pushes, resyncs and webhook installs
    send a token."""
    key = settings.label_studio_api_key.get_secret_value() if settings.label_studio_api_key else ""
    if settings.label_studio_url:
        if key:
            return settings.label_studio_url, key
        info = projects.get(project_id)
        if info and info.access_token:  # the configured host, never the one /setup named
            return settings.label_studio_url, info.access_token
        raise ResyncError(
            f"no Label Studio token for project {project_id}: set LABEL_STUDIO_API_KEY, or let Label Studio "
            "call /setup first"
        )
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
