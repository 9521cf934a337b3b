"""Bug 5 (store outage -> 500): while the shared store is down, /predict with a label_config in the
request answers zero-shot predictions (no examples), and one without a label_config answers 503 with
the reason, never 500. The outage is real: the SQLite database file is replaced by a directory (every
new connection fails), or the PostgreSQL database is dropped."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import PG_ADMIN_URL, assert_valid, config, json_answer
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from test_selection import FakeClock, add
from webhook_payloads import annotation_event, choice

from backend.learning.selection import Selector
from backend.store.db import make_engine, migrate
from backend.store.example_store import ExampleStore
from converters.task_spec import build_task_spec

SENT = config("sentiment")
T0 = 1_790_000_000.0
TASK: dict[str, Any] = {"id": 1, "data": {"text": "the battery died after an hour"}}


def break_sqlite(app: Any) -> None:
    """Make the app's SQLite store unusable."""
    break_engine(app.extensions["lsllm_model"].projects.engine)


def break_engine(engine: Engine) -> None:
    """Make a SQLite store unusable: the file becomes a directory, pooled connections are closed."""
    database = Path(str(engine.url.database))
    engine.dispose()
    for suffix in ("", "-wal", "-shm"):
        path = Path(f"{database}{suffix}")
        if path.exists():
            path.rename(f"{path}.moved")
    database.mkdir()


@pytest.fixture(params=["sqlite", "postgres"])
def broken_store(request: pytest.FixtureRequest, make_app: Callable[..., Any]) -> Iterator[tuple[Any, Callable]]:
    """(an app, a function that takes its store down) for SQLite, and for PostgreSQL when it runs."""
    if request.param == "sqlite":
        app = make_app(selection_refresh_seconds=0)
        yield app, lambda: break_sqlite(app)
        return
    url = request.getfixturevalue("pg_url")
    app = make_app(selection_refresh_seconds=0, database_url=url)
    name = url.rsplit("/", 1)[1]

    def drop() -> None:
        app.extensions["lsllm_model"].projects.engine.dispose()
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()

    yield app, drop


def predict(client: Any, **body: Any) -> Any:
    return client.post("/predict", json={"tasks": [TASK], "project": "7.1700000000", **body})


def test_predict_with_a_label_config_answers_zero_shot_while_the_store_is_down(broken_store, provider,
                                                                               caplog) -> None:
    app, take_down = broken_store
    client = app.test_client()
    # a reviewed example exists, so a prompt with examples would show it
    event = annotation_event("ANNOTATION_CREATED", SENT, 101, 11, "my phone battery is awful", [choice("negative")],
                             T0)
    assert client.post("/webhook", json=event).status_code == 200
    app.extensions["lsllm_model"].worker.drain()
    provider.responder = lambda body: json_answer({"sentiment": "negative"})
    take_down()
    caplog.set_level(logging.WARNING)
    for _ in range(2):
        response = predict(client, label_config=SENT)
        assert response.status_code == 200, response.get_data(as_text=True)
        body = response.get_json()
        item = body["results"][0]
        assert item["result"][0]["value"]["choices"] == ["negative"]
        assert_valid(SENT, TASK["data"], item)
        assert body["model_version"].endswith("-e0")
    # zero-shot: the prompt holds the task only (system + user), no example turns
    assert [m["role"] for m in provider.requests[-1]["messages"]] == ["system", "user"]
    # one line says the store is down and what /predict does meanwhile, not one per request
    unavailable = [r for r in caplog.records if r.name == "backend.service.model"]
    assert len(unavailable) == 1, [r.getMessage() for r in caplog.records]
    assert "store is unavailable" in unavailable[0].getMessage()


def test_predict_without_a_label_config_answers_503_while_the_store_is_down(broken_store, provider) -> None:
    app, take_down = broken_store
    client = app.test_client()
    take_down()
    response = predict(client)
    assert response.status_code == 503
    error = response.get_json()["error"]
    assert "store" in error and "label_config" in error
    assert provider.requests == []


def test_the_store_comes_back(make_app, provider, tmp_path: Path) -> None:
    """After the outage the same process reads the store again (nothing is stuck in a fallback)."""
    app = make_app(selection_refresh_seconds=0)
    client = app.test_client()
    assert client.post("/setup", json={"project": "7.1700000000", "schema": SENT}).status_code == 200
    break_sqlite(app)
    database = Path(app.extensions["lsllm_model"].projects.engine.url.database)
    provider.responder = lambda body: json_answer({"sentiment": "positive"})
    assert predict(client, label_config=SENT).status_code == 200
    database.rmdir()
    for suffix in ("", "-wal", "-shm"):
        moved = Path(f"{database}{suffix}.moved")
        if moved.exists():
            os.rename(moved, f"{database}{suffix}")
    event = annotation_event("ANNOTATION_CREATED", SENT, 102, 12, "what a lovely phone", [choice("positive")], T0)
    assert client.post("/webhook", json=event).status_code == 200
    app.extensions["lsllm_model"].worker.drain()
    assert predict(client, label_config=SENT).status_code == 200
    # the example written after the outage reaches the prompt
    assert "what a lovely phone" in str(provider.requests[-1]["messages"])


def test_selection_survives_a_store_outage(tmp_path: Path, caplog) -> None:
    """The few-shot source never fails a task on a store error: before its first load it gives no
    examples (zero-shot), after it the last snapshot; one warning line per outage."""
    engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    migrate(engine)
    store = ExampleStore(engine)
    add(store, [(1, "the battery died", "negative")])
    spec = build_task_spec(SENT)
    clock = FakeClock()
    never_loaded = Selector(store, k=2, token_budget=1000, refresh_seconds=1.0, clock=clock)
    loaded = Selector(store, k=2, token_budget=1000, refresh_seconds=1.0, clock=clock)
    assert len(loaded.context("7", spec, {"text": "battery"}).examples) == 1
    break_engine(engine)
    caplog.set_level(logging.INFO, logger="backend.learning.selection")
    for _ in range(3):
        clock.now += 1.0  # due for a refresh every time
        assert never_loaded.context("7", spec, {"text": "battery"}).examples == ()
        assert len(loaded.context("7", spec, {"text": "battery"}).examples) == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all("example store unavailable" in w for w in warnings), warnings
