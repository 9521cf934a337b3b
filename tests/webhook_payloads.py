"""Webhook payloads in the shapes Label Studio 1.23 sends (see the protocol notes), for tests and
benchmarks. Every project payload carries the secrets Label Studio includes (invite token, task data
password), so tests can check they are never stored or logged."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

SECRET_TOKEN = "invite-token-SECRET-9f8e"
SECRET_PASSWORD = "task-data-password-SECRET"


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def project(pid: int, label_config: str) -> dict[str, Any]:
    return {
        "id": pid,
        "title": f"Project {pid}",
        "label_config": label_config,
        "parsed_label_config": {},
        "model_version": "",
        "token": SECRET_TOKEN,
        "task_data_login": "bob",
        "task_data_password": SECRET_PASSWORD,
        "created_by": {"id": 1, "email": "owner@example.com"},
    }


def task(tid: int, text: str, pid: int = 7) -> dict[str, Any]:
    return {"id": tid, "data": {"text": text}, "project": pid, "is_labeled": True, "meta": {}}


def choice(value: str, from_name: str = "sentiment") -> dict[str, Any]:
    return {"id": f"r{value}", "from_name": from_name, "to_name": "text", "type": "choices",
            "value": {"choices": [value]}, "origin": "manual"}


def span(text: str, surface: str, label: str, from_name: str = "label") -> dict[str, Any]:
    start = text.index(surface)
    return {"id": f"s{start}", "from_name": from_name, "to_name": "text", "type": "labels",
            "value": {"start": start, "end": start + len(surface), "text": surface, "labels": [label]}}


def annotation(
    aid: int, tid: int, result: list[dict[str, Any]], updated: float, pid: int = 7,
    cancelled: bool = False, prediction: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "id": aid,
        "result": result,
        "was_cancelled": cancelled,
        "ground_truth": False,
        "lead_time": 3.2,
        "prediction": {"result": prediction, "model_version": "lsllm-v1"} if prediction is not None else {},
        "parent_prediction": None,
        "task": tid,
        "project": pid,
        "completed_by": 1,
        "created_at": iso(updated - 1),
        "updated_at": iso(updated),
    }


def annotation_event(
    action: str, config: str, aid: int, tid: int, text: str, result: list[dict[str, Any]], updated: float,
    pid: int = 7, **kw: Any,
) -> dict[str, Any]:
    return {
        "action": action,
        "annotation": annotation(aid, tid, result, updated, pid, **kw),
        "project": project(pid, config),
        "task": task(tid, text, pid),
    }


def deleted_event(config: str, ids: list[int], pid: int = 7) -> dict[str, Any]:
    return {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": i} for i in ids], "project": project(pid, config)}
