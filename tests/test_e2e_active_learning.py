"""Active learning in the real Label Studio 1.23 (issue 13), lean: a 40-task sentiment project and the
scripted provider (scores vary with the task, answers are slow enough to watch the jobs run).

- repeated /setup calls (two gunicorn workers) leave exactly one "Review: least confident first" tab,
  whose filter and ordering Label Studio applies: un-annotated tasks, lowest prediction score first;
- a pushed "Retrieve predictions" is a job listed by GET /projects/<id>/jobs with its counts;
- reviews through Label Studio's API (webhooks fire) move the example-set version; the backend
  refreshes the un-annotated tasks with the new model_version; the refresh is listed while it runs,
  its worker is SIGKILLed mid-way, and the job is still listed and finished by another worker;
- in the end every un-annotated task has one prediction of the new version, the annotated ones none,
  and no task has two predictions of one version.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import config, wait_for
from labelstudio_harness import TOKEN, Backend, LabelStudio, cleanup, start_backend, stop
from scripted_provider import Reply, ScriptedProvider, last_user_text
from test_e2e_labelstudio import connect, create_project, import_tasks, retrieve_predictions, tasks_of

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]

SENTIMENT = config("sentiment")
LABELS = ("positive", "neutral", "negative")
TITLE = "Review: least confident first"
N_TASKS = 40
EVERY = 5  # reviews per example-set version


def number_of(text: str) -> int:
    return int(text.rsplit(" ", 1)[-1])


def respond(body: dict) -> Reply:
    """The label of a task by its number; the confidence too (logprob per token), so scores differ."""
    n = number_of(last_user_text(body))
    return Reply(content=json.dumps({"sentiment": LABELS[n % 3]}), logprob=-0.02 - 0.05 * (n % 9),
                 alternatives=LABELS)


@pytest.fixture(scope="module")
def provider() -> Iterator[ScriptedProvider]:
    with ScriptedProvider(respond, latency=0.25) as p:
        yield p


@pytest.fixture(scope="module")
def backend(provider) -> Iterator[Backend]:
    b = start_backend(
        provider.base_url,
        LLM_MAX_CONCURRENCY="2", PUSH_THRESHOLD="10", STUDENT_MODE="off", LOG_LEVEL="INFO",
        EXAMPLES_VERSION_POLICY="count", EXAMPLES_VERSION_EVERY=str(EVERY),
        REFRESH="on", REFRESH_UNPRICED="allow", REFRESH_DEBOUNCE_SECONDS="1", REFRESH_MIN_INTERVAL_SECONDS="0",
        REFRESH_POLL_SECONDS="0.3", JOB_STALE_SECONDS="4", REVIEW_TAB="on",
    )
    yield b
    stop(b.proc)
    cleanup(b.data_dir)


def jobs(backend: Backend, project: int) -> list[dict[str, Any]]:
    for attempt in range(10):  # right after a worker is SIGKILLed, a connection it had accepted is reset
        try:
            response = httpx.get(f"{backend.url}/projects/{project}/jobs", timeout=10)
            break
        except httpx.TransportError:
            if attempt == 9:
                raise
            time.sleep(0.3)
    assert response.status_code == 200, response.text
    return response.json()["jobs"]


def views(ls: LabelStudio, project: int) -> list[dict[str, Any]]:
    response = ls.api("GET", "/api/dm/views/", params={"project": project})
    assert response.status_code == 200, response.text
    return response.json()


def tab_tasks(ls: LabelStudio, project: int, view: int) -> list[dict[str, Any]]:
    response = ls.api("GET", "/api/tasks", params={"project": project, "view": view, "fields": "all",
                                                   "page_size": 1000})
    assert response.status_code == 200, response.text
    body = response.json()
    return body["tasks"] if isinstance(body, dict) else body


def project_version(ls: LabelStudio, project: int) -> str:
    return str(ls.api("GET", f"/api/projects/{project}").json().get("model_version") or "")


def annotate(ls: LabelStudio, task: dict[str, Any], label: str) -> None:
    result = [{"from_name": "sentiment", "to_name": "text", "type": "choices", "value": {"choices": [label]}}]
    body = {"result": result, "lead_time": 3.0, "parent_prediction": task["predictions"][-1]["id"]}
    response = ls.api("POST", f"/api/tasks/{task['id']}/annotations", json=body)
    assert response.status_code == 201, response.text


def test_review_tab_refresh_and_jobs(label_studio, backend) -> None:
    project = create_project(label_studio, "e2e active learning", SENTIMENT)
    import_tasks(label_studio, project, [f"customer review number {i}" for i in range(N_TASKS)])
    assert connect(label_studio, project, backend.url).status_code == 201

    # the tab: once, whatever number of /setup calls reach whichever worker
    setup = {"project": f"{project}.1700000000", "schema": SENTIMENT, "hostname": label_studio.url,
             "access_token": TOKEN}
    for _ in range(6):
        assert httpx.post(f"{backend.url}/setup", json=setup, timeout=10).status_code == 200
    tabs = wait_for(lambda: [v for v in views(label_studio, project) if v["data"].get("title") == TITLE], 20)
    assert tabs, "the review tab was not created"
    time.sleep(1.5)  # any racing creation would have landed by now
    for _ in range(3):
        assert httpx.post(f"{backend.url}/setup", json=setup, timeout=10).status_code == 200
    time.sleep(1.0)
    tabs = [v for v in views(label_studio, project) if v["data"].get("title") == TITLE]
    assert len(tabs) == 1
    tab = tabs[0]
    assert tab["data"]["ordering"] == ["tasks:predictions_score"]
    assert tab["data"]["filters"]["items"] == [
        {"filter": "filter:tasks:total_annotations", "operator": "equal", "type": "Number", "value": 0}]

    # a pushed retrieve is a job
    assert retrieve_predictions(label_studio, project).status_code == 200
    listed = wait_for(lambda: [j for j in jobs(backend, project) if j["kind"] == "retrieve"], 10)
    assert listed and listed[0]["total"] == N_TASKS
    done = wait_for(lambda: [j for j in jobs(backend, project) if j["kind"] == "retrieve" and j["status"] == "done"],
                    60, 0.3)
    assert done and done[0]["done"] == N_TASKS and done[0]["failed"] == 0
    first_version = done[0]["model_version"]
    tasks = wait_for(lambda: (lambda t: t if all(x["predictions"] for x in t) else None)(
        tasks_of(label_studio, project)), 20, 0.3)
    assert tasks, "the pushed predictions did not reach Label Studio"
    # Label Studio scores tasks over the predictions of the project's model_version only; connecting the
    # backend set it to the backend's title: the backend points it at the version it pushed
    assert wait_for(lambda: project_version(label_studio, project) == first_version, 30, 0.3)

    # Label Studio applies the tab's filter and ordering: un-annotated tasks, lowest score first
    in_tab = tab_tasks(label_studio, project, tab["id"])
    scores = [t["predictions"][0]["score"] for t in in_tab]
    assert len(in_tab) == N_TASKS and scores == sorted(scores) and len(set(scores)) > 3

    # reviews in the tab's order (webhooks fire): one example-set version more
    reviewed = in_tab[:EVERY]
    for task in reviewed:
        annotate(label_studio, task, LABELS[number_of(task["data"]["text"]) % 3])
    in_tab = tab_tasks(label_studio, project, tab["id"])
    assert {t["id"] for t in in_tab}.isdisjoint({t["id"] for t in reviewed})  # annotated: out of the tab

    # the refresh runs, is listed, and survives the SIGKILL of the worker running it
    running = wait_for(lambda: [j for j in jobs(backend, project) if j["kind"] == "refresh"
                                and j["status"] == "running" and j["done"] + j["running"] > 0], 60, 0.1)
    assert running, f"no refresh job seen running: {jobs(backend, project)}"
    job = running[0]
    assert job["model_version"] != first_version and job["total"] == N_TASKS - EVERY
    os.kill(int(job["owner"].split("-")[0]), signal.SIGKILL)
    after_kill = [j for j in jobs(backend, project) if j["id"] == job["id"]]
    assert after_kill and after_kill[0]["status"] in ("running", "stale")
    finished = wait_for(lambda: [j for j in jobs(backend, project) if j["id"] == job["id"] and j["status"] == "done"],
                        90, 0.3)
    assert finished, f"the refresh was not resumed: {jobs(backend, project)}"
    assert finished[0]["owner"] != job["owner"]  # another worker took it over
    assert finished[0]["done"] == N_TASKS - EVERY and finished[0]["failed"] == 0

    final = tasks_of(label_studio, project)
    reviewed_ids = {t["id"] for t in reviewed}
    new_version = job["model_version"]
    for task in final:
        versions = Counter(p["model_version"] for p in task["predictions"])
        assert all(n == 1 for n in versions.values()), (task["id"], versions)  # never two of one version
        if task["id"] in reviewed_ids:
            assert new_version not in versions
        else:
            assert versions[new_version] == 1 and versions[first_version] == 1
    assert wait_for(lambda: project_version(label_studio, project) == new_version, 30, 0.3)
    metrics = httpx.get(f"{backend.url}/metrics", timeout=10).text
    assert f'lsllm_jobs{{project="{project}",kind="refresh",status="done"}} 1' in metrics
