"""Issue 14, fuzzing: configs x model answers through the converters (benchmarks/fuzz.py, a short run
here; the 10,000-case run is the benchmark), and a corpus of malformed HTTP bodies for every route: never
a 5xx, nothing stored, and the service keeps answering (Flask test client, and once a real `lsllm serve`)."""

from __future__ import annotations

import json
from typing import Any

import fuzz_cases as fuzz
import httpx
import pytest
from conftest import config
from labelstudio_harness import cleanup, start_backend, stop
from scripted_provider import Reply, ScriptedProvider
from sqlalchemy import func, select

from backend.store.db import events, examples, projects

SENTIMENT = config("sentiment")


@pytest.mark.slow
def test_fuzzed_configs_and_answers_give_no_invalid_region_and_no_exception() -> None:
    counts = fuzz.run(300, seed=14)
    assert counts.cases >= 300 and counts.configs > 30
    assert counts.exceptions == 0, counts.failures[:3]
    assert counts.invalid_regions == 0, counts.failures[:3]


def test_the_fuzzer_counts_what_it_must() -> None:
    """The counters are live: an invalid region and an exception are seen (else a 0 proves nothing)."""
    counts = fuzz.Counts()
    cfg = fuzz.Config(SENTIMENT, [("Text", "text", "text")], ["positive"])
    spec, interface = fuzz.prepare(cfg, counts)
    fuzz.check_answer(spec, interface, cfg, {"text": "fine"}, '{"sentiment": "positive"}', counts)
    assert (counts.cases, counts.regions, counts.invalid_regions, counts.exceptions) == (1, 1, 0, 0)
    fuzz.check_answer(None, interface, cfg, {"text": "fine"}, '{"sentiment": "positive"}', counts)  # a crash
    assert counts.exceptions == 1
    broken = fuzz.Config(SENTIMENT.replace('name="sentiment"', 'name="other"'), cfg.objects, cfg.labels)
    _, other_interface = fuzz.prepare(broken, counts)
    fuzz.check_answer(spec, other_interface, cfg, {"text": "fine"}, '{"sentiment": "positive"}', counts)
    assert counts.removed_regions + counts.invalid_regions >= 1


# --- malformed HTTP bodies ---------------------------------------------------------------------------------

DEEP = b"[" * 5000 + b"]" * 5000
CORPUS: list[tuple[bytes, str]] = [
    (b"", "application/json"),
    (b"null", "application/json"),
    (b"[]", "application/json"),
    (b"42", "application/json"),
    (b'"a string"', "application/json"),
    (b"{", "application/json"),
    (b'{"a": 1,}', "application/json"),
    (b"\xff\xfe\xfa garbage", "application/json"),
    (b'{"action": "\xff\xfe", "schema": "\xc3"}', "application/json"),
    (b'{"schema": "\\ud800", "action": "\\udfff"}', "application/json"),
    (DEEP, "application/json"),
    (b'{"tasks": ' + DEEP + b', "schema": ' + DEEP + b', "action": ' + DEEP + b"}", "application/json"),
    (b'{"tasks": [' + b"{" * 3 + b"}" * 3 + b"]}", "application/json"),
    (b"a=b&tasks=1", "application/x-www-form-urlencoded"),
    (b'{"tasks": [], "schema": "<View/>"}', "text/plain"),
    (b"\x00" * 1000, "application/octet-stream"),
]


def wrong_types() -> list[dict[str, Any]]:
    bad: list[Any] = [None, 0, -1, 1.5, True, "", "x", [], {}, [None], {"id": "x"}, "7" * 500, 2**70]
    bodies: list[dict[str, Any]] = []
    for key in ("project", "schema", "label_config", "extra_params", "hostname", "access_token", "tasks", "params",
                "action", "annotation", "annotations", "task"):
        for value in bad:
            bodies.append({key: value})
    bodies += [
        {"tasks": [None, 1, "a", [], {"data": 5}, {"data": {"text": 5}}, {"id": "x", "data": {}}],
         "label_config": "<View><Text name='t' value='$text'/></View>"},
        {"tasks": [{"id": i} for i in range(20_000)], "label_config": 5},
        {"tasks": [[]] * 50_000},
        {"schema": "<View><Choices name='c' toName='t'/></View>", "project": "7.1"},
        {"schema": "<not xml", "project": "x.y"},
        {"schema": "<View>" + "<View>" * 3000 + "</View>" * 3001, "project": "7"},
        {"action": "ANNOTATION_CREATED", "annotation": {"id": "x", "result": 5, "task": []}, "project": {"id": 7}},
        {"action": "ANNOTATION_CREATED", "annotation": {"id": 1, "result": [5, None, {"value": 3}], "task": 1},
         "project": {"id": 7, "label_config": 5}, "task": {"id": 1, "data": []}},
        {"action": "ANNOTATIONS_CREATED", "annotation": [1, None], "task": "x", "project": {"id": 7}},
        {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": None}, 5, "x"], "project": {"id": 7}},
        {"action": "ANNOTATIONS_DELETED", "annotations": [[i] for i in range(100_000)], "project": {"id": 7}},
        {"action": "TASKS_CREATED", "tasks": "x"},
        {"action": "START_TRAINING", "project": {"id": [1]}},
        {"action": "A" * 10_000, "project": {"id": 7}},
    ]
    return bodies


def routes(app: Any) -> list[tuple[str, str]]:
    """(method, path) of every route the app has, with a placeholder for path arguments."""
    out = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = rule.rule.replace("<project>", "7")
        path = path.split("<", 1)[0] + ("x" if "<" in path else "")
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            out.append((method, path))
    return out


def store_counts(app: Any) -> tuple[int, int, int]:
    engine = app.extensions["lsllm_model"].examples.engine
    with engine.connect() as conn:
        return tuple(int(conn.execute(select(func.count()).select_from(t)).scalar_one())  # type: ignore[return-value]
                     for t in (projects, events, examples))


@pytest.mark.slow
def test_malformed_bodies_on_every_route_never_5xx_and_store_nothing(make_app, provider) -> None:
    provider.responder = lambda body: Reply(content='{"sentiment": "positive"}')
    app = make_app(max_predict_tasks=30_000)
    client = app.test_client()
    before = store_counts(app)
    seen: dict[int, int] = {}
    for method, path in routes(app):
        requests: list[tuple[bytes, str]] = list(CORPUS)
        if method == "POST":  # a GET reads no body: the raw corpus is enough there
            requests += [(json.dumps(body).encode(), "application/json") for body in wrong_types()]
        for data, content_type in requests:
            answer = client.open(path, method=method, data=data, content_type=content_type)
            seen[answer.status_code] = seen.get(answer.status_code, 0) + 1
            assert answer.status_code < 500, (method, path, data[:200], answer.get_data(as_text=True)[:300])
        for query in ("?page=x", "?page_size=-5&page=999999999999999999999", "?status=%ff%fe", "?status=" + "x" * 5000):
            assert client.open(path + query, method=method).status_code < 500, (method, path, query)
    assert store_counts(app) == before, "a malformed request stored something"
    assert client.get("/health").status_code == 200
    assert seen.get(400, 0) > 100  # the corpus was refused, not silently accepted


@pytest.mark.slow
def test_a_real_server_survives_the_corpus() -> None:
    with ScriptedProvider(lambda body: Reply(content='{"sentiment": "positive"}')) as llm:
        backend = start_backend(llm.base_url)
        try:
            with httpx.Client(base_url=backend.url, timeout=30) as http:
                for path in ("/setup", "/predict", "/webhook"):
                    for data, content_type in CORPUS:
                        answer = http.post(path, content=data, headers={"Content-Type": content_type})
                        assert answer.status_code < 500, (path, data[:100], answer.text[:300])
                    for body in wrong_types()[::3]:
                        answer = http.post(path, json=body)
                        assert answer.status_code < 500, (path, str(body)[:200], answer.text[:300])
                assert http.get("/health").status_code == 200
                setup = {"project": "7.1", "schema": SENTIMENT}
                assert http.post("/setup", json=setup).status_code == 200  # and still does its work
        finally:
            stop(backend.proc)
            cleanup(backend.data_dir)
