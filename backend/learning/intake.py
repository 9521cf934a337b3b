"""Webhook intake: check a Label Studio event's shape and keep only what learning needs.

Pure functions: payload in, a minimal event (or a reason to refuse) out. The minimal form leaves out
what must never be stored or logged (the project's invite token, task_data_login/password, users'
emails) and is what the durable event table holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from backend.store.project_id import normalise_project_id

ANNOTATION_ACTIONS = {"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED"}
HANDLED = ANNOTATION_ACTIONS | {
    "ANNOTATIONS_DELETED",
    "TASKS_CREATED",
    "TASKS_DELETED",
    "PROJECT_UPDATED",
    "START_TRAINING",
}


class BadEvent(ValueError):
    """The payload does not have the shape its action requires; the message says what is wrong."""


@dataclass
class Intake:
    action: str
    project_id: str
    payload: dict[str, Any] = field(default_factory=dict)  # the minimal event


def parse_time(value: Any) -> float:
    """Label Studio's ISO timestamps ("2026-11-29T19:00:00.123456Z") -> epoch seconds; 0 if absent."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return 0.0
    return 0.0


def _id(value: Any, what: str) -> int:
    if isinstance(value, Mapping):
        value = value.get("id")
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).isdigit():
        raise BadEvent(f"{what} must carry an integer id")
    return int(value)


def _user(value: Any) -> str | None:
    if isinstance(value, Mapping):
        value = value.get("id")
    return str(value) if value is not None else None


def parse_annotation(raw: Any, task_id: int | None) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise BadEvent("annotation must be an object")
    result = raw.get("result")
    if result is None:
        result = []
    if not isinstance(result, list) or not all(isinstance(r, Mapping) for r in result):
        raise BadEvent("annotation.result must be a list of regions")
    task = raw.get("task", task_id)
    prediction = raw.get("prediction")
    return {
        "id": _id(raw.get("id"), "annotation"),
        "task_id": _id(task, "annotation.task") if task is not None else task_id,
        "result": [dict(r) for r in result],
        "was_cancelled": bool(raw.get("was_cancelled")),
        "updated_at": parse_time(raw.get("updated_at") or raw.get("created_at")),
        "completed_by": _user(raw.get("completed_by")),
        "prediction": (
            {"result": prediction.get("result") or [], **_prediction_meta(prediction)}
            if isinstance(prediction, Mapping) and "result" in prediction
            else None
        ),
        # the id of the prediction the annotation started from (live agreement looks it up when
        # Label Studio sends `prediction: {}`, as it does unless the project pins a model version)
        "parent_prediction": _optional_id(raw.get("parent_prediction")),
    }


def _prediction_meta(prediction: Mapping[str, Any]) -> dict[str, Any]:
    """The parent prediction's id, score and model_version (for live agreement), when well-formed."""
    out: dict[str, Any] = {}
    score = prediction.get("score")
    if isinstance(score, (int, float)) and not isinstance(score, bool):
        out["score"] = float(score)
    if isinstance(prediction.get("model_version"), str):
        out["model_version"] = prediction["model_version"]
    if _optional_id(prediction.get("id")) is not None:
        out["id"] = _optional_id(prediction.get("id"))
    return out


def _optional_id(value: Any) -> int | None:
    if isinstance(value, Mapping):
        value = value.get("id")
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).isdigit():
        return None
    return int(value)


def _task(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, Mapping) or not isinstance(raw.get("data"), Mapping):
        raise BadEvent("task must be an object with 'id' and 'data'")
    return {"id": _id(raw.get("id"), "task"), "data": dict(raw["data"])}


def _project_id(body: Mapping[str, Any]) -> str:
    project = body.get("project")
    if project is None:
        annotation = body.get("annotation")
        if isinstance(annotation, Mapping):
            project = annotation.get("project")
    try:
        return normalise_project_id(project)
    except ValueError as exc:
        raise BadEvent(f"project: {exc}") from None


def _as_list(value: Any, what: str) -> list[Any]:
    if isinstance(value, Mapping):
        return [value]
    if not isinstance(value, list):
        raise BadEvent(f"'{what}' must be a list or an object")
    return value


def intake(body: Mapping[str, Any]) -> Intake | None:
    """The minimal event for a handled action; None for actions this backend ignores.

    Raises BadEvent for a handled action whose payload has the wrong shape."""
    action = body.get("action")
    if not isinstance(action, str) or not action:
        raise BadEvent("'action' is required")
    if action not in HANDLED:
        return None
    project_id = _project_id(body)
    raw_project = body.get("project")
    project: Mapping[str, Any] = raw_project if isinstance(raw_project, Mapping) else {}
    event: dict[str, Any] = {}
    label_config = project.get("label_config")
    if isinstance(label_config, str) and label_config.strip():
        event["label_config"] = label_config

    if action in ANNOTATION_ACTIONS:
        annotations = _as_list(body.get("annotation"), "annotation")
        tasks = [_task(t) for t in _as_list(body.get("task"), "task")]
        by_id = {t["id"]: t for t in tasks}
        parsed = []
        for i, raw in enumerate(annotations):
            fallback = tasks[i]["id"] if i < len(tasks) else None
            annotation = parse_annotation(raw, fallback)
            if annotation["task_id"] not in by_id:
                raise BadEvent(f"annotation {annotation['id']} has no matching task in the payload")
            parsed.append(annotation)
        event["annotations"] = parsed
        event["tasks"] = tasks
    elif action == "TASKS_CREATED":
        tasks_raw = _as_list(body.get("tasks"), "tasks")
        tasks, annotations = [], []
        for raw in tasks_raw:
            task = _task(raw)
            tasks.append(task)
            for ann in raw.get("annotations") or []:
                annotations.append(parse_annotation(ann, task["id"]))
        event["tasks"] = tasks
        event["annotations"] = annotations
    elif action == "ANNOTATIONS_DELETED":
        listed = _as_list(body.get("annotations"), "annotations")
        event["deleted_annotations"] = [_id(a, "annotations[]") for a in listed]
    elif action == "TASKS_DELETED":
        event["deleted_tasks"] = [_id(t, "tasks[]") for t in _as_list(body.get("tasks"), "tasks")]
    elif action in ("PROJECT_UPDATED", "START_TRAINING"):
        if not project:
            raise BadEvent(f"{action} must carry the project object")
    return Intake(action=action, project_id=project_id, payload=event)
