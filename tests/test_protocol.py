"""The ML protocol through Flask's test client, with the payload shapes measured on Label Studio 1.23,
against a real scripted OpenAI-compatible HTTP server."""

from __future__ import annotations

import base64
import json
import logging

from conftest import assert_valid, config, json_answer
from scripted_provider import Reply, last_user_text

NER_SENT = config("ner_sentiment")


def setup_payload(schema: str, extra: dict | None = None) -> dict:
    return {
        "project": "7.1732880000",
        "schema": schema,
        "hostname": "http://127.0.0.1:8080",
        "access_token": "ls-token-SECRET-abc",
        "extra_params": extra,
    }


def predict_payload(tasks: list[dict], schema: str = NER_SENT) -> dict:
    return {
        "tasks": tasks,
        "project": "7.1732880000",
        "label_config": schema,
        "params": {"login": None, "password": None, "context": None},
    }


def task(i: int, text: str) -> dict:
    return {"id": i, "data": {"text": text}, "annotations": [], "predictions": []}


def test_health_versions_and_setup(make_app) -> None:
    client = make_app().test_client()
    assert client.get("/health").get_json()["status"] == "UP"
    answer = client.post("/setup", json=setup_payload(NER_SENT, {"instructions": "News text."}))
    assert answer.status_code == 200
    version = answer.get_json()["model_version"]
    assert version.startswith("lsllm-v1-scripted-model")
    assert client.get("/versions").get_json()["versions"] == [version]
    # /setup is idempotent and cheap: same answer again
    assert client.post("/setup", json=setup_payload(NER_SENT)).get_json()["model_version"] == version


def test_predict_ner_and_choices_in_order_with_scores(make_app, provider) -> None:
    answers = {
        "Ada Lovelace met Charles Babbage in London.": {
            "label": [
                {"text": "Ada Lovelace", "label": "Person"},
                {"text": "charles babbage.", "label": "person"},
                {"text": "London", "label": "Location"},
                {"text": "Atlantis", "label": "Location"},
            ],
            "sentiment": "positive",
            "topics": ["science", "business", "unknown-topic"],
        },
        "Google fired nobody.": {"label": [{"text": "Google", "label": "Organization"}], "sentiment": "Neutral",
                                 "topics": []},
    }
    provider.responder = lambda body: json_answer(answers[last_user_text(body)])
    client = make_app().test_client()
    tasks = [task(1, "Ada Lovelace met Charles Babbage in London."), task(2, "Google fired nobody.")]
    response = client.post("/predict", json=predict_payload(tasks))
    assert response.status_code == 200
    results = response.get_json()["results"]
    assert len(results) == 2
    for t, item in zip(tasks, results):
        assert_valid(NER_SENT, t["data"], item)
        assert item["model_version"] == response.get_json()["model_version"]
    spans = [(r["value"]["text"], r["value"]["labels"][0]) for r in results[0]["result"] if r["type"] == "labels"]
    assert spans == [("Ada Lovelace", "PER"), ("Charles Babbage", "PER"), ("London", "LOC")]
    choices = {r["from_name"]: r["value"]["choices"] for r in results[0]["result"] if r["type"] == "choices"}
    assert choices == {"sentiment": ["positive"], "topics": ["science", "business"]}
    assert 0 < results[0]["score"] <= 1
    assert [r["value"]["choices"] for r in results[1]["result"] if r["from_name"] == "sentiment"] == [["neutral"]]
    # the schema sent to the provider has the labels as enums and the task text comes last
    sent = provider.requests[0]
    assert sent["response_format"]["type"] == "json_schema"
    schema = json.dumps(sent["response_format"]["json_schema"]["schema"])
    assert '"Person"' in schema and '"politics"' in schema
    assert last_user_text(sent) in {t["data"]["text"] for t in tasks}
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'lsllm_dropped_entities_total{reason="not_found"} 1.0' in metrics
    assert 'lsllm_dropped_entities_total{reason="unknown_label"} 1.0' in metrics
    assert 'lsllm_llm_calls_total{outcome="ok"} 2.0' in metrics


def test_fenced_and_chatty_answers_are_parsed(make_app, provider) -> None:
    replies = iter(
        [
            Reply(content='```json\n{"sentiment": "negative"}\n```'),
            Reply(content='Sure! Here is the answer: {"sentiment": "positive"} Hope this helps.'),
        ]
    )
    provider.responder = lambda body: next(replies)
    cfg = config("sentiment")
    client = make_app(llm_max_concurrency=1).test_client()
    tasks = [task(1, "bad"), task(2, "good")]
    results = client.post("/predict", json=predict_payload(tasks, cfg)).get_json()["results"]
    assert [r["result"][0]["value"]["choices"] for r in results] == [["negative"], ["positive"]]
    for t, item in zip(tasks, results):
        assert_valid(cfg, t["data"], item)


def test_failing_provider_gives_count_matched_empty_items(make_app, provider) -> None:
    provider.responder = lambda body: Reply(status=500, error="boom")
    client = make_app(llm_max_retries=1).test_client()
    tasks = [task(i, f"text {i}") for i in range(5)]
    response = client.post("/predict", json=predict_payload(tasks))
    assert response.status_code == 200
    assert response.get_json()["results"] == [[]] * 5
    assert len(provider.requests) == 10  # one retry each, then given up
    assert 'lsllm_tasks_total{outcome="llm_server"} 5.0' in client.get("/metrics").get_data(as_text=True)


def test_one_bad_task_does_not_sink_the_batch(make_app, provider) -> None:
    def responder(body: dict) -> Reply:
        text = last_user_text(body)
        if text == "explode":
            return Reply(status=400, error="bad request")
        if text == "garbage":
            return Reply(content="I cannot answer that.")
        return json_answer({"sentiment": "positive"})

    provider.responder = responder
    cfg = config("sentiment")
    client = make_app().test_client()
    tasks = [task(1, "fine"), task(2, "explode"), {"id": 3, "data": {"other": "x"}}, task(4, "garbage"),
             "not a task", task(6, "fine too")]
    results = client.post("/predict", json=predict_payload(tasks, cfg)).get_json()["results"]
    assert len(results) == 6
    assert [bool(r) for r in results] == [True, False, False, False, False, True]
    assert_valid(cfg, tasks[0]["data"], results[0])


def test_bad_requests_get_4xx_not_500(make_app) -> None:
    client = make_app(max_body_mb=0.01).test_client()
    assert client.post("/predict", data="{not json", content_type="application/json").status_code == 400
    assert client.post("/predict", json={"project": "1.1"}).status_code == 400
    assert client.post("/predict", json={"tasks": "x", "label_config": NER_SENT}).status_code == 400
    assert client.post("/predict", json=[1, 2]).status_code == 400
    no_config = client.post("/predict", json={"tasks": [task(1, "x")], "project": "99.1"})
    assert no_config.status_code == 400 and "label_config" in no_config.get_json()["error"]
    assert client.post("/setup", json={"project": "1.1"}).status_code == 400
    assert client.post("/setup", json={"project": "abc", "schema": NER_SENT}).status_code == 400
    big = client.post("/predict", json={"tasks": [task(1, "x" * 20000)], "label_config": NER_SENT})
    assert big.status_code == 413
    assert client.post("/webhook", json={"no": "action"}).status_code == 400
    assert client.get("/nope").status_code == 404


def test_unsupported_config_names_the_tag(make_app) -> None:
    client = make_app().test_client()
    image = '<View><Image name="img" value="$image"/><RectangleLabels name="box" toName="img"><Label value="car"/></RectangleLabels></View>'
    for route, payload in (
        ("/setup", setup_payload(image)),
        ("/predict", predict_payload([task(1, "x")], image)),
    ):
        response = client.post(route, json=payload)
        assert response.status_code == 400
        assert "RectangleLabels" in response.get_json()["error"]
    broken = client.post("/setup", json=setup_payload("<View><Text"))
    assert broken.status_code == 400 and "parse" in broken.get_json()["error"]


def test_basic_auth_guards_everything_but_health_and_webhook(make_app, provider) -> None:
    provider.responder = lambda body: json_answer({"sentiment": "positive"})
    client = make_app(basic_auth_user="ls", basic_auth_pass="s3cret").test_client()
    good = {"Authorization": "Basic " + base64.b64encode(b"ls:s3cret").decode()}
    bad = {"Authorization": "Basic " + base64.b64encode(b"ls:wrong").decode()}
    assert client.get("/health").status_code == 200
    for route in ("/versions", "/metrics"):
        assert client.get(route).status_code == 401
        assert client.get(route, headers=bad).status_code == 401
        assert client.get(route, headers=good).status_code == 200
    payload = setup_payload(config("sentiment"))
    assert client.post("/setup", json=payload).status_code == 401
    assert client.post("/setup", json=payload, headers=good).status_code == 200
    assert client.post("/webhook", json={"action": "ANNOTATION_CREATED"}).status_code != 401


def test_secrets_never_reach_the_log(make_app, provider, caplog) -> None:
    provider.responder = lambda body: Reply(status=401, error="invalid api key")
    caplog.set_level(logging.DEBUG)
    client = make_app().test_client()
    client.post("/setup", json=setup_payload(config("sentiment")))
    client.post("/predict", json=predict_payload([task(1, "hello")], config("sentiment")))
    assert len(provider.requests) == 1  # 401 is not retried
    text = caplog.text
    assert "LLM_API_KEY" in text  # the clear line says what to check
    for secret in ("sk-test-secret-key-123", "ls-token-SECRET-abc"):
        assert secret not in text


def test_deadline_answers_unfinished_tasks_with_empty_items(make_app, provider) -> None:
    provider.responder = lambda body: Reply(content='{"sentiment": "positive"}', delay=0.6)
    client = make_app(llm_max_concurrency=2, predict_deadline=1.0, llm_timeout=5.0).test_client()
    tasks = [task(i, f"t{i}") for i in range(8)]
    results = client.post("/predict", json=predict_payload(tasks, config("sentiment"))).get_json()["results"]
    assert len(results) == 8
    done = [r for r in results if r]
    assert 1 <= len(done) < 8
    assert results[0] != []
