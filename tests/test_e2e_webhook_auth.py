"""Issue 14 against a real Label Studio 1.23: once connected, the backend gives Label Studio's own webhook
a secret header (one webhook, never a second); a real annotation still arrives, and a forged event of
the same shape sent straight to /webhook is refused and changes nothing."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from conftest import config, wait_for
from test_e2e_labelstudio import backend_examples, connect, create_project, import_tasks
from webhook_payloads import annotation_event, choice

from backend.labelstudio.webhooks import HEADER

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]

SENTIMENT = config("sentiment")


def hooks_to(ls: Any, project: int, backend_url: str) -> list[dict[str, Any]]:
    hooks = ls.api("GET", "/api/webhooks", params={"project": project}).json()
    return [h for h in hooks if str(h.get("url", "")).rstrip("/") == backend_url + "/webhook"]


def test_real_annotations_arrive_and_forged_events_are_refused(label_studio, e2e_backend) -> None:
    project = create_project(label_studio, "e2e webhook auth", SENTIMENT)
    texts = ["the battery is great", "the screen cracked"]
    task_ids = import_tasks(label_studio, project, texts)
    assert connect(label_studio, project, e2e_backend.url).status_code == 201

    def header_installed() -> list[dict[str, Any]]:
        label_studio.api("GET", "/api/ml", params={"project": project})  # Label Studio calls /setup again
        return [h for h in hooks_to(label_studio, project, e2e_backend.url) if HEADER in (h.get("headers") or {})]

    # the backend looks for the webhook a few times after /setup, and again on a /setup 30 s later
    installed = wait_for(header_installed, timeout=90, interval=1.0)
    assert installed, hooks_to(label_studio, project, e2e_backend.url)
    label_studio.api("GET", "/api/ml", params={"project": project})  # Label Studio calls /setup again
    time.sleep(1)
    assert len(hooks_to(label_studio, project, e2e_backend.url)) == 1  # the same webhook, never a second

    url = f"{e2e_backend.url}/webhook"

    def forged(aid: int, value: str) -> dict[str, Any]:
        return annotation_event("ANNOTATION_CREATED", SENTIMENT, aid, task_ids[1], texts[1], [choice(value)],
                                time.time(), pid=project)

    # every gunicorn worker enforces it once its 5 s project cache has expired: probe with an event whose
    # label is not in the config (refused with 422 if it passed the secret check: never stored either way)
    def refused_everywhere() -> bool:
        return all(httpx.post(url, json=forged(900_001, "no-such-label")).status_code == 401 for _ in range(6))

    assert wait_for(refused_everywhere, timeout=20, interval=0.5)
    before = backend_examples(e2e_backend, project)
    answer = httpx.post(url, json=forged(900_002, "negative"))
    assert answer.status_code == 401, answer.text
    wrong = httpx.post(url, json=forged(900_003, "negative"), headers={HEADER: "0" * 64})
    assert wrong.status_code == 401

    result = [{"from_name": "sentiment", "to_name": "text", "type": "choices", "value": {"choices": ["positive"]}}]
    created = label_studio.api("POST", f"/api/tasks/{task_ids[0]}/annotations", json={"result": result})
    assert created.status_code == 201, created.text
    annotation_id = int(created.json()["id"])
    examples = wait_for(lambda: backend_examples(e2e_backend, project).get(annotation_id), timeout=10)
    assert examples, "the real annotation did not reach the example store"
    after = backend_examples(e2e_backend, project)
    assert set(after) - set(before) == {annotation_id}  # the forged ones are nowhere
    assert 900_002 not in after and 900_003 not in after
