"""Several classification tasks per LLM call (LLM_TASKS_PER_CALL): the answer form, splitting it back
per task, and the whole path through /predict and prelabel against the scripted provider."""

from __future__ import annotations

import json

from conftest import assert_valid, config, make_settings
from scripted_provider import Reply, ScriptedProvider, group_items, last_user_text

from backend.llm.pricing import PriceTable
from backend.runs.prelabel import Prelabeler, PrelabelOptions, RunTarget
from converters.group import group_schema, split_group_answer
from converters.output_schema import output_json_schema
from converters.task_spec import build_task_spec

SENT = config("sentiment")
NER = config("ner")
LABELS = ("positive", "negative", "neutral")


def label_for(text: str) -> str:
    return LABELS[int(text.rsplit(" ", 1)[-1]) % 3]


def group_answer(body: dict, leave_out: int | None = None) -> Reply:
    """Answers a grouped request item by item (or a single one); optionally leaves one item out."""
    text = last_user_text(body)
    items = group_items(text)
    if not items:
        return Reply(content=json.dumps({"sentiment": label_for(text)}))
    answer = [{"item": n, "sentiment": label_for(t)} for n, t in items if n != leave_out]
    return Reply(content=json.dumps({"items": answer[::-1]}))  # out of order: matched by number


def test_group_schema_wraps_the_single_one() -> None:
    single = output_json_schema(build_task_spec(SENT))
    schema = group_schema(single, 4)
    item = schema["properties"]["items"]["items"]
    assert schema["required"] == ["items"] and schema["additionalProperties"] is False
    assert schema["properties"]["items"]["minItems"] == schema["properties"]["items"]["maxItems"] == 4
    assert item["required"][0] == "item" and item["properties"]["item"] == {"type": "integer",
                                                                            "description": "the item's number"}
    assert item["properties"]["sentiment"] == single["properties"]["sentiment"]
    assert item["additionalProperties"] is False


def test_split_matches_by_number_then_position_and_leaves_gaps() -> None:
    answer = {"items": [{"item": 3, "s": "c"}, {"s": "b-by-position"}, {"item": 1, "s": "a"},
                        {"item": 1, "s": "duplicate"}, {"item": 9, "s": "out of range"}, "junk"]}
    assert split_group_answer(answer, 4) == [{"s": "a"}, {"s": "b-by-position"}, {"s": "c"}, None]
    assert split_group_answer({"nope": []}, 2) == [None, None]


def test_predict_groups_choices_tasks_and_keeps_ner_single(make_app, provider) -> None:
    provider.responder = group_answer
    client = make_app(llm_tasks_per_call=4).test_client()
    tasks = [{"id": i, "data": {"text": f"review number {i}"}} for i in range(10)]
    body = client.post("/predict", json={"tasks": tasks, "label_config": SENT}).get_json()
    assert len(provider.requests) == 3  # 4 + 4 + 2
    for task, item in zip(tasks, body["results"]):
        assert_valid(SENT, task["data"], item)
        assert item["result"][0]["value"]["choices"] == [label_for(task["data"]["text"])]
        assert "score" not in item  # grouped answers carry no per-item probabilities
    provider.responder = lambda b: Reply(content=json.dumps({"label": []}))
    client.post("/predict", json={"tasks": tasks[:3], "label_config": NER})
    assert len(provider.requests) == 6  # spans are never grouped: one call per task


def test_a_task_left_out_of_the_answer_gets_nothing(make_app, provider) -> None:
    provider.responder = lambda body: group_answer(body, leave_out=2)
    client = make_app(llm_tasks_per_call=3).test_client()
    tasks = [{"id": i, "data": {"text": f"review number {i}"}} for i in range(3)]
    results = client.post("/predict", json={"tasks": tasks, "label_config": SENT}).get_json()["results"]
    assert results[1] == [] and results[0] and results[2]
    assert results[2]["result"][0]["value"]["choices"] == [label_for("review number 2")]


def test_prelabel_sends_groups_and_pushes_every_task(tmp_path) -> None:
    from backend.service.app import build_model

    with ScriptedProvider(group_answer, latency=0.01) as provider:
        settings = make_settings(tmp_path, provider.base_url, llm_tasks_per_call=5, llm_model="gpt-4o-mini")
        model = build_model(settings)
        plan = model.predictor.plan(SENT)
        pushed: list[dict] = []
        target = RunTarget(model.predictor, plan, "v1", "7", pushed.extend, PriceTable.from_setting(None))
        runner = Prelabeler(target, PrelabelOptions(in_flight=2))
        stats = runner.run(iter([{"id": i, "data": {"text": f"review number {i}"}} for i in range(23)]))
        model.close()
    assert len(provider.requests) == 5  # 5 + 5 + 5 + 5 + 3
    assert stats.pushed == 23 and stats.llm_calls == 5 and not stats.failed
    assert sorted(i["task"] for i in pushed) == list(range(23))
    assert all(i["result"][0]["value"]["choices"] == [label_for(f"review number {i['task']}")] for i in pushed)
