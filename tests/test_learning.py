"""Issue 4: webhook events replayed in Label Studio's shapes -> durable events -> example store ->
few-shot selection, against SQLite files on disk (and PostgreSQL in test_postgres.py)."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from conftest import config, json_answer
from sqlalchemy import create_engine, text
from webhook_payloads import (
    SECRET_PASSWORD,
    SECRET_TOKEN,
    annotation,
    annotation_event,
    choice,
    deleted_event,
    project,
    span,
    task,
)

from backend.store.db import SCHEMA_VERSION, make_engine, migrate, schema_version
from prompts import unmark_data  # the texts inside the prompts' data markers

SENT = config("sentiment")
NER = config("ner")
T0 = 1_790_000_000.0


def post(client, payload: dict) -> Any:
    return client.post("/webhook", json=payload)


def drain(app) -> None:
    app.extensions["lsllm_model"].worker.drain()


class FakeClock:
    """A monotonic clock the test advances, for the stores' TTLs (no sleeping them out)."""

    def __init__(self) -> None:
        self.now = time.monotonic()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def fake_clock(app) -> FakeClock:
    """Give the app's project store a clock the test controls (before its first request)."""
    clock = FakeClock()
    app.extensions["lsllm_model"].projects.clock = clock
    return clock


def live(client, pid: int = 7) -> dict[int, dict]:
    body = client.get(f"/projects/{pid}/examples?page_size=1000").get_json()
    return {e["annotation_id"]: e for e in body["examples"]}


def test_create_update_duplicate_out_of_order_delete(make_app) -> None:
    app = make_app()
    client = app.test_client()
    created = annotation_event("ANNOTATION_CREATED", SENT, 101, 11, "great phone", [choice("positive")], T0)
    assert post(client, created).status_code == 200
    assert post(client, created).status_code == 200  # duplicate delivery
    newer = annotation_event("ANNOTATION_UPDATED", SENT, 101, 11, "great phone", [choice("neutral")], T0 + 10)
    older = annotation_event("ANNOTATION_UPDATED", SENT, 101, 11, "great phone", [choice("negative")], T0 + 5)
    assert post(client, newer).status_code == 200
    assert post(client, older).status_code == 200  # arrives late: must not win
    drain(app)
    examples = live(client)
    assert list(examples) == [101]
    assert examples[101]["result"][0]["value"]["choices"] == ["neutral"]
    assert examples[101]["data"] == {"text": "great phone"}
    assert post(client, deleted_event(SENT, [101])).status_code == 200
    drain(app)
    assert live(client) == {}
    # a creation delivered after the deletion (out of order) does not bring it back
    post(client, created)
    drain(app)
    assert live(client) == {}


def test_delete_before_create_and_skip(make_app) -> None:
    app = make_app()
    client = app.test_client()
    post(client, deleted_event(SENT, [202]))
    post(client, annotation_event("ANNOTATION_CREATED", SENT, 202, 12, "meh", [choice("neutral")], T0))
    skipped = annotation_event("ANNOTATION_CREATED", SENT, 203, 13, "skip me", [], T0, cancelled=True)
    post(client, skipped)
    drain(app)
    assert live(client) == {}
    skipped_rows = client.get("/projects/7/examples?status=skipped").get_json()
    assert [e["annotation_id"] for e in skipped_rows["examples"]] == [203]


def test_bulk_create_task_import_and_task_delete(make_app) -> None:
    app = make_app()
    client = app.test_client()
    bulk = {
        "action": "ANNOTATIONS_CREATED",
        "annotation": [
            annotation(301, 31, [choice("positive")], T0),
            annotation(302, 32, [choice("negative")], T0),
        ],
        "task": [task(31, "love it"), task(32, "hate it")],
        "project": project(7, SENT),
    }
    assert post(client, bulk).status_code == 200
    imported = {
        "action": "TASKS_CREATED",
        "tasks": [
            {**task(33, "fine"), "annotations": [annotation(303, 33, [choice("neutral")], T0)]},
            {**task(34, "no annotation")},
        ],
        "project": project(7, SENT),
    }
    assert post(client, imported).status_code == 200
    drain(app)
    assert sorted(live(client)) == [301, 302, 303]
    post(client, {"action": "TASKS_DELETED", "tasks": [{"id": 31}, {"id": 33}], "project": project(7, SENT)})
    drain(app)
    assert sorted(live(client)) == [302]


def test_reviewer_changed_prediction_is_recorded(make_app) -> None:
    app = make_app()
    client = app.test_client()
    predicted = [choice("positive")]
    post(client, annotation_event("ANNOTATION_CREATED", SENT, 401, 41, "ok", [choice("negative")], T0, prediction=predicted))
    post(client, annotation_event("ANNOTATION_CREATED", SENT, 402, 42, "ok!", [choice("positive")], T0, prediction=predicted))
    post(client, annotation_event("ANNOTATION_CREATED", SENT, 403, 43, "ok?", [choice("positive")], T0))
    drain(app)
    examples = live(client)
    assert [examples[i]["corrected"] for i in (401, 402, 403)] == [True, False, None]


def test_project_updated_sets_aside_vanished_labels(make_app) -> None:
    app = make_app()
    client = app.test_client()
    post(client, annotation_event("ANNOTATION_CREATED", SENT, 501, 51, "bad", [choice("negative")], T0))
    post(client, annotation_event("ANNOTATION_CREATED", SENT, 502, 52, "good", [choice("positive")], T0))
    drain(app)
    without_negative = SENT.replace('<Choice value="negative"/>', "")
    post(client, {"action": "PROJECT_UPDATED", "project": project(7, without_negative)})
    drain(app)
    assert sorted(live(client)) == [502]
    post(client, {"action": "PROJECT_UPDATED", "project": project(7, SENT)})
    drain(app)
    assert sorted(live(client)) == [501, 502]


def test_bad_payloads_get_4xx_never_500(make_app, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    app = make_app()
    client = app.test_client()
    cases = [
        {"action": "ANNOTATION_CREATED"},
        {"action": "ANNOTATION_CREATED", "annotation": {"id": "x"}, "project": project(7, SENT), "task": task(1, "t")},
        {"action": "ANNOTATION_CREATED", "annotation": annotation(1, 1, [], T0), "project": {"id": "nope"}, "task": task(1, "t")},
        {"action": "ANNOTATION_CREATED", "annotation": {**annotation(1, 1, [], T0), "result": "x"}, "project": project(7, SENT), "task": task(1, "t")},
        {"action": "ANNOTATION_CREATED", "annotation": annotation(1, 2, [], T0), "project": project(7, SENT), "task": task(1, "t")},
        {"action": "ANNOTATIONS_DELETED", "annotations": "all", "project": project(7, SENT)},
        {"action": "TASKS_CREATED", "tasks": [{"id": 1}], "project": project(7, SENT)},
    ]
    for payload in cases:
        response = post(client, payload)
        assert 400 <= response.status_code < 500, (payload, response.get_json())
    assert client.post("/webhook", data=b"\x00garbage", content_type="application/json").status_code == 400
    ignored = post(client, {"action": "PROJECT_CREATED", "project": project(7, SENT)})
    assert ignored.status_code == 200 and ignored.get_json()["status"] == "ignored"
    # a result that does not fit the config: rejected with a reason, nothing stored
    wrong = annotation_event("ANNOTATION_CREATED", SENT, 601, 61, "x", [choice("furious")], T0)
    response = post(client, wrong)
    assert response.status_code == 422 and "furious" in response.get_json()["error"]
    shifted = annotation_event("ANNOTATION_CREATED", NER, 602, 62, "Ada met Bob", [span("Ada met Bob", "Bob", "PER")], T0)
    shifted["annotation"]["result"][0]["value"]["start"] = 0
    response = post(client, shifted)
    assert response.status_code == 422 and "data[" in response.get_json()["error"]
    drain(app)
    assert live(client) == {}
    assert SECRET_TOKEN not in caplog.text and SECRET_PASSWORD not in caplog.text


def test_secrets_are_not_stored(make_app, tmp_path) -> None:
    app = make_app()
    client = app.test_client()
    post(client, annotation_event("ANNOTATION_CREATED", SENT, 701, 71, "fine", [choice("neutral")], T0))
    drain(app)
    raw = (tmp_path / "data" / "lsllm.sqlite3").read_bytes()
    wal = tmp_path / "data" / "lsllm.sqlite3-wal"
    raw += wal.read_bytes() if wal.exists() else b""
    assert SECRET_TOKEN.encode() not in raw and SECRET_PASSWORD.encode() not in raw
    assert b"owner@example.com" not in raw


def test_store_outage_answers_503_quickly(make_app) -> None:
    app = make_app()
    client = app.test_client()
    model = app.extensions["lsllm_model"]
    # a real fault: the store's engine now points at a PostgreSQL port nothing listens on
    model.examples.engine = create_engine(
        "postgresql+psycopg://nobody@127.0.0.1:9/none", connect_args={"connect_timeout": 1}
    )
    started = time.monotonic()
    response = post(client, annotation_event("ANNOTATION_CREATED", SENT, 801, 81, "x", [choice("neutral")], T0))
    assert response.status_code == 503
    assert time.monotonic() - started < 2.0


def test_version_policy_every_event(make_app) -> None:
    app = make_app(examples_version_policy="every")
    clock = fake_clock(app)
    client = app.test_client()
    setup = {"project": "7.1732880000", "schema": SENT}
    first = client.post("/setup", json=setup).get_json()["model_version"]
    assert first.endswith("-e0")
    post(client, annotation_event("ANNOTATION_CREATED", SENT, 901, 91, "x", [choice("neutral")], T0))
    drain(app)
    # the version is read at most once a second per process: still cached, then read again
    assert client.post("/setup", json=setup).get_json()["model_version"].endswith("-e0")
    clock.advance(1.0)
    second = client.post("/setup", json=setup).get_json()["model_version"]
    assert second.endswith("-e1")


def test_version_policy_count_and_training(make_app) -> None:
    app = make_app(examples_version_every=3, selection_refresh_seconds=0)
    clock = fake_clock(app)
    client = app.test_client()
    for i in range(2):
        post(client, annotation_event("ANNOTATION_CREATED", SENT, 910 + i, 92 + i, "x", [choice("neutral")], T0))
    drain(app)
    assert client.get("/projects/7/examples").get_json()["examples_version"] == 0
    post(client, annotation_event("ANNOTATION_CREATED", SENT, 913, 95, "x", [choice("neutral")], T0))
    drain(app)
    clock.advance(1.0)
    assert client.get("/projects/7/examples").get_json()["examples_version"] == 1


def test_prompt_contains_the_most_similar_reviewed_examples(make_app, provider, caplog) -> None:
    reviewed = [
        (1001, "the battery life of this phone is terrible", "negative"),
        (1002, "what a wonderful sunny day at the beach", "positive"),
        (1003, "the phone battery died after one hour", "negative"),
        (1004, "lovely beach, wonderful holiday", "positive"),
        (1005, "the train was on time", "neutral"),
    ]
    app = make_app(few_shot_k=2, selection_refresh_seconds=0)
    client = app.test_client()
    for aid, text_, label in reviewed:
        post(client, annotation_event("ANNOTATION_CREATED", SENT, aid, aid, text_, [choice(label)], T0))
    drain(app)
    provider.responder = lambda body: json_answer({"sentiment": "negative"})
    caplog.set_level(logging.DEBUG, logger="backend.predict")  # the prompt debug line, wherever it lives there
    response = client.post(
        "/predict",
        json={"tasks": [{"id": 5000, "data": {"text": "my phone battery is terrible"}}],
              "project": "7.1732880000", "label_config": SENT},
    )
    assert response.status_code == 200
    messages = provider.requests[-1]["messages"]
    shots = [unmark_data(m["content"]) for m in messages[1:-1]]
    assert unmark_data(messages[-1]["content"]) == "my phone battery is terrible"
    user_shots = shots[0::2]
    assert set(user_shots) == {"the battery life of this phone is terrible", "the phone battery died after one hour"}
    assert user_shots[-1] == "the battery life of this phone is terrible"  # most similar right before the task
    assert json.loads(shots[1]) == {"sentiment": "negative"}
    assert "the battery life of this phone is terrible" in caplog.text  # visible in the debug log


def test_label_coverage_in_selection(make_app, provider) -> None:
    app = make_app(few_shot_k=4, selection_refresh_seconds=0)
    client = app.test_client()
    for i in range(8):
        post(client, annotation_event("ANNOTATION_CREATED", SENT, 1100 + i, 1100 + i, f"phone review number {i}", [choice("negative")], T0))
    post(client, annotation_event("ANNOTATION_CREATED", SENT, 1200, 1200, "great phone", [choice("positive")], T0))
    drain(app)
    provider.responder = lambda body: json_answer({"sentiment": "negative"})
    client.post("/predict", json={"tasks": [{"id": 1, "data": {"text": "phone review"}}], "project": "7.1", "label_config": SENT})
    answers = [json.loads(m["content"])["sentiment"] for m in provider.requests[-1]["messages"] if m["role"] == "assistant"]
    assert len(answers) == 4 and "positive" in answers and answers.count("negative") <= 3


def test_ner_examples_use_display_names_in_reading_order(make_app, provider) -> None:
    cfg = config("ner_sentiment")
    text_ = "Ada Lovelace met Charles Babbage in London"
    result = [span(text_, "London", "LOC"), span(text_, "Ada Lovelace", "PER"), choice("positive")]
    app = make_app(selection_refresh_seconds=0)
    client = app.test_client()
    post(client, annotation_event("ANNOTATION_CREATED", cfg, 1300, 1300, text_, result, T0))
    drain(app)
    provider.responder = lambda body: json_answer({"label": [], "sentiment": "neutral", "topics": []})
    client.post("/predict", json={"tasks": [{"id": 1, "data": {"text": "Babbage in London"}}], "project": "7.1", "label_config": cfg})
    shot = json.loads(provider.requests[-1]["messages"][2]["content"])
    assert shot == {
        "label": [{"text": "Ada Lovelace", "label": "Person"}, {"text": "London", "label": "Location"}],
        "sentiment": "positive",
        "topics": [],  # nothing chosen in a multiple-choice control: the empty answer, every key present
    }


def test_migration_upgrades_an_old_store(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    old = create_engine(url)
    with old.begin() as conn:  # the store as version 0.1 of this backend wrote it
        conn.execute(text(
            "CREATE TABLE projects (project_id VARCHAR(64) PRIMARY KEY, label_config TEXT, extra_params TEXT,"
            " hostname VARCHAR(512), access_token VARCHAR(512), updated_at FLOAT NOT NULL)"
        ))
        conn.execute(text("INSERT INTO projects VALUES ('3', '<View/>', '{}', NULL, NULL, 1.0)"))
    engine = make_engine(url)
    assert migrate(engine) == SCHEMA_VERSION
    assert migrate(engine) == SCHEMA_VERSION  # idempotent
    with engine.connect() as conn:
        assert schema_version(conn) == SCHEMA_VERSION
        row = conn.execute(text("SELECT project_id, examples_version, generation FROM projects")).one()
    assert tuple(row) == ("3", 0, 0)


class StubLabelStudio:
    """Plays Label Studio's GET /api/tasks (paginated like the open-source server) for the resync."""

    def __init__(self, tasks: list[dict], token: str) -> None:
        self.tasks = tasks
        self.token = token
        self.seen_auth: list[str] = []

    def handler(self, request):  # werkzeug request from pytest-httpserver
        from werkzeug import Response

        self.seen_auth.append(request.headers.get("Authorization", ""))
        if request.headers.get("Authorization") != f"Token {self.token}":
            return Response(json.dumps({"detail": "auth"}), 401, content_type="application/json")
        page = int(request.args.get("page", 1))
        size = int(request.args.get("page_size", 100))
        chunk = self.tasks[(page - 1) * size : page * size]
        if not chunk and page > 1:
            return Response(json.dumps({"detail": "Invalid page."}), 404, content_type="application/json")
        body = {"tasks": chunk, "total": len(self.tasks), "total_annotations": 0, "total_predictions": 0}
        return Response(json.dumps(body), 200, content_type="application/json")


def test_start_training_resyncs_from_label_studio(make_app, httpserver) -> None:
    ls_tasks = []
    for i in range(250):  # three pages of 100
        tid = 2000 + i
        anns = [annotation(5000 + i, tid, [choice(["positive", "negative", "neutral"][i % 3])], T0 + i)]
        ls_tasks.append({**task(tid, f"text number {i}"), "annotations": anns, "predictions": []})
    stub = StubLabelStudio(ls_tasks, "ls-api-token-xyz")
    httpserver.expect_request("/api/tasks/").respond_with_handler(stub.handler)
    app = make_app(selection_refresh_seconds=0)
    clock = fake_clock(app)
    client = app.test_client()
    client.post("/setup", json={"project": "7.17", "schema": SENT, "hostname": httpserver.url_for("/").rstrip("/"),
                                "access_token": "ls-api-token-xyz"})
    # an example Label Studio no longer has: the resync removes it
    post(client, annotation_event("ANNOTATION_CREATED", SENT, 99, 99, "stale", [choice("neutral")], T0))
    drain(app)
    before = client.get("/projects/7/examples").get_json()["examples_version"]
    assert post(client, {"action": "START_TRAINING", "project": project(7, SENT)}).status_code == 200
    drain(app)
    body = client.get("/projects/7/examples?page_size=1000").get_json()
    assert body["total"] == 250
    assert {e["annotation_id"] for e in body["examples"]} == {5000 + i for i in range(250)}
    clock.advance(1.0)
    assert client.get("/projects/7/examples").get_json()["examples_version"] == before + 1
    assert all(a == "Token ls-api-token-xyz" for a in stub.seen_auth)


def test_start_training_without_credentials_is_recorded_not_crashing(make_app) -> None:
    app = make_app()
    client = app.test_client()
    assert post(client, {"action": "START_TRAINING", "project": project(8, SENT)}).status_code == 200
    drain(app)
    assert "lsllm_events{outcome=\"error\"} 1" in client.get("/metrics").get_data(as_text=True)


def test_examples_export_cli(make_app, tmp_path) -> None:
    import subprocess
    import sys

    from conftest import ROOT

    app = make_app()
    client = app.test_client()
    post(client, annotation_event("ANNOTATION_CREATED", SENT, 1400, 14, "lovely", [choice("positive")], T0))
    post(client, annotation_event("ANNOTATION_CREATED", SENT, 1401, 15, "awful", [choice("negative")], T0))
    post(client, deleted_event(SENT, [1401]))
    drain(app)
    out = tmp_path / "export.json"
    run = subprocess.run(
        [sys.executable, "-m", "backend.cli", "examples", "export", "--project", "7", "--out", str(out)],
        cwd=ROOT, env={"PATH": "/usr/bin:/bin", "DATA_DIR": str(tmp_path / "data")},
        capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 0, run.stderr
    tasks = json.loads(out.read_text())
    assert [t["data"] for t in tasks] == [{"text": "lovely"}]
    assert tasks[0]["annotations"][0]["result"][0]["value"]["choices"] == ["positive"]


def _burst(client, start: int, n: int, gap: float) -> None:
    for i in range(n):
        event = annotation_event("ANNOTATION_CREATED", SENT, start + i, start + i, f"burst {start + i}",
                                 [choice("positive")], T0 + i)
        assert post(client, event).status_code == 200
        time.sleep(gap)


def test_worker_gives_way_to_a_burst_then_catches_up(make_app) -> None:
    app = make_app()
    worker = app.extensions["lsllm_model"].worker
    worker.quiet, worker.max_lag = 0.3, 30.0
    client = app.test_client()
    _burst(client, 500, 30, 0.01)
    assert worker.learner.store.pending_count() == 30  # nothing applied while the webhooks kept coming
    deadline = time.monotonic() + 5
    while worker.learner.store.pending_count() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert worker.learner.store.pending_count() == 0
    assert set(live(client)) == set(range(500, 530))


def test_worker_applies_during_traffic_longer_than_max_lag(make_app) -> None:
    app = make_app()
    worker = app.extensions["lsllm_model"].worker
    worker.quiet, worker.max_lag = 0.3, 0.3
    client = app.test_client()
    _burst(client, 600, 60, 0.02)  # about 1.5 s of continuous traffic
    assert worker.learner.store.pending_count() < 50
