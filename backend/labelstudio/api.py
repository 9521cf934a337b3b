"""Label Studio's REST API through label-studio-sdk: connect with one clear error, walk a project's
tasks page by page, push predictions.

Pages are walked by the `total` of the first page, since the open-source server answers a page past
the end with 404 (measured on 1.23).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError
from label_studio_sdk.types import PredictionRequest


class LabelStudioAccessError(RuntimeError):
    """Label Studio cannot be used as asked; the message is one line a user can act on."""


def as_dict(obj: Any) -> dict[str, Any]:
    """SDK models and plain dicts alike, as a dict (extra fields the server sent included)."""
    if isinstance(obj, dict):
        return obj
    dump = getattr(obj, "model_dump", None) or getattr(obj, "dict", None)
    return dict(dump()) if dump else dict(obj)


def client_for(url: str, token: str, timeout: float = 60.0) -> LabelStudio:
    return LabelStudio(base_url=url.rstrip("/"), api_key=token, timeout=timeout)


def open_project(url: str, token: str, project_id: int, timeout: float = 30.0) -> tuple[LabelStudio, dict[str, Any]]:
    """(client, project) or LabelStudioAccessError saying whether the URL, the key or the id is wrong."""
    client = client_for(url, token, timeout)
    try:
        project = as_dict(client.projects.get(id=int(project_id)))
    except ApiError as exc:
        if exc.status_code in (401, 403):
            raise LabelStudioAccessError(
                f"Label Studio at {url} refused the API key (HTTP {exc.status_code}): use the token from "
                "Account & Settings (a legacy token, or a personal access token)"
            ) from None
        if exc.status_code == 404:
            raise LabelStudioAccessError(
                f"project {project_id} does not exist at {url} (or this key cannot see it)"
            ) from None
        raise LabelStudioAccessError(f"Label Studio at {url} answered HTTP {exc.status_code}") from None
    except (httpx.HTTPError, ValueError) as exc:
        raise LabelStudioAccessError(f"cannot reach Label Studio at {url}: {type(exc).__name__}") from None
    if not project.get("label_config"):
        raise LabelStudioAccessError(f"project {project_id} has no labeling config yet")
    return client, project


def backend_extra_params(client: LabelStudio, project_id: int) -> dict[str, Any]:
    """The "Extra params" a project's ML backend connection holds (instructions, label_descriptions,
    model...), so a prelabel run prompts as /predict does; {} when no connection, or several, have
    any."""
    try:
        backends = client.ml.list(project=int(project_id))
    except (ApiError, httpx.HTTPError):
        return {}
    found = [b.extra_params for b in backends if isinstance(getattr(b, "extra_params", None), dict) and b.extra_params]
    return dict(found[0]) if len(found) == 1 else {}


def iter_task_pages(
    client: LabelStudio, project_id: int, page_size: int = 100, view: int | None = None, fields: str = "all"
) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """(total, tasks of one page) for every page, in the server's order."""
    page, pages = 1, 1
    while page <= pages:
        pager: Any = client.tasks.list(project=int(project_id), view=view, fields=fields, page=page,
                                       page_size=page_size)
        total = int(getattr(pager.response, "total", 0) or 0)
        if page == 1:
            pages = max(1, math.ceil(total / page_size))
        yield total, [as_dict(task) for task in pager.items or []]
        page += 1


def prediction_versions(task: dict[str, Any]) -> set[str]:
    """The model_versions of the predictions a task already has (as listed with fields=all)."""
    versions = set()
    for prediction in task.get("predictions") or []:
        if isinstance(prediction, dict) and prediction.get("model_version"):
            versions.add(str(prediction["model_version"]))
    return versions


def import_predictions(client: LabelStudio, project_id: int, items: list[dict[str, Any]]) -> None:
    """One call storing many predictions ({"task", "result", "score", "model_version"} each)."""
    client.projects.import_predictions(id=int(project_id), request=[PredictionRequest(**item) for item in items])
