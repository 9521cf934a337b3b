"""The response cache: an identical second run makes no LLM call; any change to the prompt misses."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from conftest import ROOT, config, json_answer
from scripted_provider import ScriptedProvider
from webhook_payloads import annotation_event, choice

from backend.llm.response_cache import ResponseCache, cache_key
from backend.store.db import make_engine, migrate

SENT = config("sentiment")


def predict(client, texts: list[str]) -> list:
    tasks = [{"id": i, "data": {"text": t}} for i, t in enumerate(texts)]
    body = {"tasks": tasks, "project": "7.1", "label_config": SENT}
    return client.post("/predict", json=body).get_json()["results"]


def test_second_identical_run_makes_no_llm_call(make_app, provider) -> None:
    provider.responder = lambda body: json_answer({"sentiment": "positive"})
    app = make_app(selection_refresh_seconds=0)
    client = app.test_client()
    texts = [f"text {i}" for i in range(20)]
    first = predict(client, texts)
    assert len(provider.requests) == 20
    second = predict(client, texts)
    assert len(provider.requests) == 20  # all cache hits
    assert second == first
    assert 'lsllm_llm_calls_total{outcome="cache_hit"} 20.0' in client.get("/metrics").get_data(as_text=True)
    # a new reviewed example changes the rendered prompt: the cache misses naturally
    client.post("/webhook", json=annotation_event("ANNOTATION_CREATED", SENT, 1, 1, "text 3 is bad", [choice("negative")], 1.0))
    app.extensions["lsllm_model"].worker.drain()
    predict(client, ["text 3"])
    assert len(provider.requests) == 21


def test_cache_can_be_turned_off(make_app, provider) -> None:
    provider.responder = lambda body: json_answer({"sentiment": "positive"})
    client = make_app(llm_cache=False).test_client()
    predict(client, ["same"])
    predict(client, ["same"])
    assert len(provider.requests) == 2


@pytest.mark.slow  # three `lsllm predict` subprocesses
def test_no_cache_flag_of_lsllm_predict(tmp_path) -> None:
    (tmp_path / "tasks.json").write_text(json.dumps([{"data": {"text": "hello"}}]))
    with ScriptedProvider(lambda body: json_answer({"sentiment": "neutral"})) as provider:
        env = {"PATH": "/usr/bin:/bin", "LLM_BASE_URL": provider.base_url, "DATA_DIR": str(tmp_path / "d")}
        command = [sys.executable, "-m", "backend.cli", "predict", "--config", str(ROOT / "examples/configs/sentiment.xml"),
                   "--tasks", str(tmp_path / "tasks.json"), "--out", str(tmp_path / "out.json")]
        for extra in ([], [], ["--no-cache"]):
            run = subprocess.run(command + extra, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
            assert run.returncode == 0, run.stderr
        assert len(provider.requests) == 2  # first run, then a hit, then --no-cache calls again


def test_cache_key_covers_everything_and_size_is_bounded(tmp_path) -> None:
    base = ("m", [{"role": "user", "content": "x"}], {"type": "object"}, "json_schema", {"temperature": 0})
    variants = [
        ("m2", *base[1:]),
        (base[0], [{"role": "user", "content": "y"}], *base[2:]),
        (*base[:2], {"type": "array"}, *base[3:]),
        (*base[:3], "json_object", base[4]),
        (*base[:4], {"temperature": 0.7}),
    ]
    keys = {cache_key(*base)} | {cache_key(*v) for v in variants}
    assert len(keys) == 6
    engine = make_engine(f"sqlite:///{tmp_path / 'c.sqlite3'}")
    migrate(engine)
    cache = ResponseCache(engine, max_entries=10)
    for i in range(25):
        cache.put(f"k{i:02d}", f"answer {i}", None, 1, 1)
    assert cache.flush() == 25
    assert cache.trim() == 15
    assert cache.get("k00") is None and cache.get("k24")["content"] == "answer 24"


def test_answers_are_written_behind_seen_at_once_here_and_soon_elsewhere(tmp_path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'c.sqlite3'}")
    migrate(engine)
    here = ResponseCache(engine, batch=3, linger=0.3)
    elsewhere = ResponseCache(make_engine(f"sqlite:///{tmp_path / 'c.sqlite3'}"), sync_seconds=0)  # another worker
    here.put("a", "answer a", None, 5, 2)
    assert here.get("a")["prompt_tokens"] == 5  # pending, yet visible in this process
    assert elsewhere.get("a") is None
    time.sleep(0.6)  # the linger timer wrote it
    assert elsewhere.get("a")["content"] == "answer a"
    here.put("b", "b", None, 1, 1)
    here.put("c", "c", None, 1, 1)
    here.put("d", "d", None, 1, 1)  # a full batch is written at once, without waiting
    assert elsewhere.get("d")["content"] == "d" and elsewhere.get("b")["content"] == "b"


def test_a_certain_miss_costs_no_query(tmp_path) -> None:
    from sqlalchemy import event

    engine = make_engine(f"sqlite:///{tmp_path / 'c.sqlite3'}")
    migrate(engine)
    writer = ResponseCache(engine)
    writer.put("f" * 64, "stored", None, 1, 1)
    writer.flush()
    reader = ResponseCache(make_engine(f"sqlite:///{tmp_path / 'c.sqlite3'}"), sync_seconds=60)
    queries: list[str] = []
    event.listen(reader.engine, "before_cursor_execute", lambda *a: queries.append(a[2]) if a[2].lstrip().upper().startswith("SELECT") else None)
    assert reader.get("0" * 64) is None  # first use reads the key set: one query
    assert len(queries) == 1
    for i in range(100):
        assert reader.get(f"{i:064x}") is None
    assert len(queries) == 1  # known misses: no query at all
    assert reader.get("f" * 64)["content"] == "stored"  # a known key is fetched
    assert len(queries) == 2


def test_a_store_outage_keeps_the_newest_answers_and_a_bounded_backlog(tmp_path) -> None:
    from sqlalchemy.exc import SQLAlchemyError

    cache = ResponseCache(make_engine(f"sqlite:///{tmp_path / 'never-migrated.sqlite3'}"), batch=10)
    failures = 0
    for i in range(500):
        try:
            cache.put(f"k{i}", f"answer {i}", None, 1, 1)
        except SQLAlchemyError:  # no llm_cache table: every write fails
            failures += 1
    assert failures > 0
    assert len(cache._pending) <= 10 * 16
    assert cache.get("k499")["content"] == "answer 499"  # still answered from memory
