"""Issue 10, bug 8: "nothing here" is an answer. A submitted (not cancelled) annotation with an empty
result, a sentence with no entities, is a live example and shows in prompts as a few-shot turn with an
empty entity list; only `was_cancelled` means skipped. A single-choice control with nothing chosen
cannot be an example (its answer form needs a label): it is kept, set aside, and never shown."""

from __future__ import annotations

import json
import random

from conftest import config, json_answer
from webhook_payloads import annotation_event, choice, project, span

from prompts import unmark_data  # the texts inside the prompts' data markers

NER = config("ner")
SENT = config("sentiment")
T0 = 1_790_000_000.0

PEOPLE = ["Peter Blackburn", "Werner Zwingelberg", "Franz Fischler", "Nikolaus van der Pas", "Kim Jong-il"]
ORGS = ["European Commission", "Reuters", "Bayer AG", "United Nations", "Ajax Amsterdam"]
PLACES = ["Germany", "Britain", "Brussels", "Bonn", "North Korea"]
EVENTS = ["World Cup", "Australian Open", "Tour de France"]
WITH = [
    ("{per} told {org} that {loc} would not back the plan .", ("per", "org", "loc")),
    ("{org} said on Thursday it would cut jobs in {loc} .", ("org", "loc")),
    ("{per} won the {misc} final in straight sets .", ("per", "misc")),
    ("Officials in {loc} met {per} of {org} .", ("loc", "per", "org")),
]
# CoNLL-2003 has about a fifth of such sentences: scores, fragments, sentences about no named thing.
WITHOUT = [
    "The match ended in a {n}-{m} draw after extra time .",
    "Shares rose {n} percent in early trading on Tuesday .",
    "Half-time {n}-{m} .",
    "The company did not give a reason for the decision .",
    "Attendance : {n}{m}00 .",
]
LABEL = {"per": "PER", "org": "ORG", "loc": "LOC", "misc": "MISC"}


def conll_like(n: int, seed: int = 2003) -> list[tuple[str, list[tuple[str, str]]]]:
    """n (sentence, [(entity, label)]) pairs, one in five without entities."""
    rng = random.Random(seed)
    out: list[tuple[str, list[tuple[str, str]]]] = []
    for i in range(n):
        if i % 5 == 4:
            out.append((rng.choice(WITHOUT).format(n=rng.randint(1, 9), m=rng.randint(0, 9)), []))
            continue
        template, slots = rng.choice(WITH)
        names = {"per": rng.choice(PEOPLE), "org": rng.choice(ORGS), "loc": rng.choice(PLACES),
                 "misc": rng.choice(EVENTS)}
        out.append((template.format(**names), [(names[slot], LABEL[slot]) for slot in slots]))
    return out


def examples(client, status: str) -> list[dict]:
    return client.get(f"/projects/7/examples?status={status}&page_size=1000").get_json()["examples"]


def test_sentences_without_entities_are_live_examples_shown_with_an_empty_list(make_app, provider) -> None:
    sentences = conll_like(200)
    empty = {text for text, entities in sentences if not entities}
    assert len(empty) >= 20 and sum(1 for _, e in sentences if not e) == 40
    app = make_app(few_shot_k=4, selection_refresh_seconds=0)
    client = app.test_client()
    for i, (text, entities) in enumerate(sentences):
        result = [span(text, surface, label) for surface, label in entities]
        response = client.post("/webhook", json=annotation_event("ANNOTATION_CREATED", NER, 5000 + i, 9000 + i,
                                                                 text, result, T0 + i))
        assert response.status_code == 200
    app.extensions["lsllm_model"].worker.drain()
    assert len(examples(client, "live")) == 200  # was 160 live and 40 skipped
    assert examples(client, "skipped") == []

    provider.responder = lambda body: json_answer({"label": []})
    task = "Shares rose 4 percent in early trading on Monday ."
    response = client.post("/predict", json={"tasks": [{"id": 1, "data": {"text": task}}], "project": "7.1",
                                             "label_config": NER})
    assert response.status_code == 200
    messages = provider.requests[-1]["messages"]
    shots = list(zip(messages[1:-1:2], messages[2:-1:2]))
    assert len(shots) == 4 and unmark_data(messages[-1]["content"]) == task
    empty_shots = [(unmark_data(user["content"]), json.loads(reply["content"])) for user, reply in shots
                   if unmark_data(user["content"]) in empty]
    assert empty_shots, [user["content"] for user, _ in shots]
    assert all(answer == {"label": []} for _, answer in empty_shots)
    # the most similar example, right before the task, says "nothing"
    assert unmark_data(shots[-1][0]["content"]) in empty


def test_only_cancelled_is_skipped_and_an_unchosen_single_choice_is_set_aside(make_app, provider) -> None:
    app = make_app(few_shot_k=4, selection_refresh_seconds=0)
    client = app.test_client()
    events = [
        annotation_event("ANNOTATION_CREATED", NER, 1, 1, "Half-time 1-0 .", [], T0),
        annotation_event("ANNOTATION_CREATED", NER, 2, 2, "Half-time 2-2 .", [], T0, cancelled=True),
        annotation_event("ANNOTATION_CREATED", SENT, 3, 3, "the phone is fine", [], T0, pid=8),
        annotation_event("ANNOTATION_CREATED", SENT, 4, 4, "the phone is great", [choice("positive")], T0, pid=8),
    ]
    for event in events:
        assert client.post("/webhook", json=event).status_code == 200
    app.extensions["lsllm_model"].worker.drain()
    assert [e["annotation_id"] for e in examples(client, "live")] == [1]
    assert [e["annotation_id"] for e in examples(client, "skipped")] == [2]
    set_aside = client.get("/projects/8/examples?status=set_aside").get_json()["examples"]
    assert [e["annotation_id"] for e in set_aside] == [3]  # kept (nothing thrown away), not shown
    # a config update re-checks it: still no answer for a single choice; with choice="multiple" the
    # empty choice is an answer ([]) and the example comes back
    client.post("/webhook", json={"action": "PROJECT_UPDATED", "project": project(8, SENT)})
    app.extensions["lsllm_model"].worker.drain()
    set_aside = client.get("/projects/8/examples?status=set_aside").get_json()["examples"]
    assert [e["annotation_id"] for e in set_aside] == [3]
    multiple = SENT.replace('choice="single-radio"', 'choice="multiple"')
    client.post("/webhook", json={"action": "PROJECT_UPDATED", "project": project(8, multiple)})
    app.extensions["lsllm_model"].worker.drain()
    live = client.get("/projects/8/examples?status=live").get_json()["examples"]
    assert sorted(e["annotation_id"] for e in live) == [3, 4]
    client.post("/webhook", json={"action": "PROJECT_UPDATED", "project": project(8, SENT)})
    app.extensions["lsllm_model"].worker.drain()

    provider.responder = lambda body: json_answer({"sentiment": "positive"})
    client.post("/predict", json={"tasks": [{"id": 9, "data": {"text": "the phone is fine"}}], "project": "8.1",
                                  "label_config": SENT})
    shots = [unmark_data(m["content"]) for m in provider.requests[-1]["messages"][1:-1]]
    assert shots == ["the phone is great", '{"sentiment": "positive"}']
