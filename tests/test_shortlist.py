"""Label shortlists for large label sets (issue 4): Banking77's 77 intents through /predict against the
scripted provider. The prompt's label list and the JSON schema's enum hold exactly the task's shortlist,
the answered label is always one the config has (and the prompt showed), the kNN vote brings the gold
label of a near-duplicate reviewed example, and scores renormalise over the shortlist only."""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace

import pytest
from conftest import DATASETS, assert_valid, config, json_answer
from scripted_provider import last_user_text
from webhook_payloads import annotation_event, choice

from converters.confidence import Token, TokenProbs
from converters.regions import answer_to_prediction
from converters.shortlist import Lexicon, knn_votes, rank_labels, shortlist_control, shortlist_spec
from converters.task_spec import build_task_spec
from prompts import unmark_data  # the texts inside the prompts' data markers

T0 = 1_790_000_000.0


@pytest.fixture
def banking() -> str:
    path = DATASETS / "intent_banking77_config.xml"
    if not path.exists():
        pytest.skip(f"shared dataset not found at {path} (set LSLLM_DATASETS)")
    return path.read_text()


def listed(body: dict, control: str = "intent") -> list[str]:
    """The labels the system message lists for one control."""
    system = body["messages"][0]["content"]
    section = system.split(f'Task "{control}"', 1)[1].split("Labels:\n", 1)[1]
    out = []
    for line in section.splitlines():
        if not line.startswith("- "):
            break
        out.append(re.split(r": ", line[2:], maxsplit=1)[0])
    return out


def enum(body: dict, control: str = "intent") -> list[str]:
    return body["response_format"]["json_schema"]["schema"]["properties"][control]["enum"]


def predict(client, cfg: str, tasks: list[dict]) -> list:
    response = client.post("/predict", json={"tasks": tasks, "project": "7.1", "label_config": cfg})
    assert response.status_code == 200, response.get_json()
    return response.get_json()["results"]


def test_prompt_and_schema_of_a_77_label_config_hold_exactly_the_shortlist(make_app, provider, banking) -> None:
    text = "I ordered my card two weeks ago and it still has not arrived"
    # defaults: LABEL_SHORTLIST_THRESHOLD=40, LABEL_SHORTLIST_SIZE=20; the labels' words, not their embeddings
    app = make_app(selection_similarity="lexical")
    provider.responder = lambda body: json_answer({"intent": "card_arrival"})
    [item] = predict(app.test_client(), banking, [{"id": 1, "data": {"text": text}}])
    body = provider.requests[-1]
    spec = build_task_spec(banking)
    all_labels = spec.controls[0].display_labels()
    expected = shortlist_spec(spec, 40, 20, votes=lambda c: {}, similarity=lambda c: Lexicon(c).similarity(text))
    shown = listed(body)
    assert len(all_labels) == 77
    assert shown == expected.controls[0].display_labels()
    assert enum(body) == shown  # the schema cannot answer a label the prompt did not show
    assert len(shown) == 20 and shown == [lab for lab in all_labels if lab in shown]  # config order
    assert {"card_arrival", "card_delivery_estimate"} <= set(shown)
    assert item["result"][0]["value"]["choices"] == ["card_arrival"]
    assert_valid(banking, {"text": text}, item)


def test_threshold_decides_what_is_shortlisted(make_app, provider, banking) -> None:
    provider.responder = lambda body: json_answer({"intent": "other"})
    app = make_app(label_shortlist_threshold=0)  # off: all 77
    predict(app.test_client(), banking, [{"id": 1, "data": {"text": "where is my card"}}])
    assert len(listed(provider.requests[-1])) == 77 and len(enum(provider.requests[-1])) == 77
    app = make_app(label_shortlist_threshold=40, label_shortlist_size=12)
    intent = config("intent")  # 5 labels: under the threshold, untouched
    predict(app.test_client(), intent, [{"id": 2, "data": {"text": "where is my card"}}])
    assert listed(provider.requests[-1]) == build_task_spec(intent).controls[0].display_labels()
    predict(app.test_client(), banking, [{"id": 3, "data": {"text": "where is my card"}}])
    assert len(listed(provider.requests[-1])) == 12 and enum(provider.requests[-1]) == listed(provider.requests[-1])


def test_answered_label_is_always_in_the_config_and_the_shortlist(make_app, provider, banking) -> None:
    """The model answers a shown label, a config label it was not shown, or an invented one; only the
    first becomes a region, and every prediction passes Label Studio's validation."""
    sample = DATASETS / "intent_banking77_test_sample500.json"
    tasks = [{"id": i, "data": {"text": t["data"]["text"]}} for i, t in enumerate(json.loads(sample.read_text())[:30])]
    all_labels = build_task_spec(banking).controls[0].display_labels()
    shown_for: dict[str, list[str]] = {}
    answered: dict[str, str] = {}

    def respond(body: dict):
        text, shown = last_user_text(body), listed(body)
        shown_for[text] = shown
        strategy = len(answered) % 3
        if strategy == 0:
            answer = shown[len(answered) % len(shown)]
        elif strategy == 1:
            answer = next(lab for lab in all_labels if lab not in shown)
        else:
            answer = "not_a_banking_intent"
        answered[text] = answer
        return json_answer({"intent": answer})

    provider.responder = respond
    app = make_app(llm_response_format="json_object")  # no enum enforcement on the provider side
    results = predict(app.test_client(), banking, tasks)
    regions = 0
    for task, item in zip(tasks, results):
        assert_valid(banking, task["data"], item)
        text = task["data"]["text"]
        chosen = [c for r in item["result"] for c in r["value"]["choices"]]
        if answered[text] in shown_for[text]:
            assert chosen == [answered[text]]
            regions += 1
        else:
            assert chosen == []
        assert set(chosen) <= set(shown_for[text]) <= set(all_labels)
    assert regions == 10


def test_knn_vote_puts_the_gold_label_of_a_near_duplicate_in_the_shortlist(make_app, provider, banking) -> None:
    text = "The shop said they gave my money back but I cannot see it anywhere"
    gold = "Refund_not_showing_up"
    app = make_app(selection_refresh_seconds=0, selection_similarity="lexical")  # embeddings bring it without votes
    client = app.test_client()
    provider.responder = lambda body: json_answer({"intent": listed(body)[0]})
    predict(client, banking, [{"id": 1, "data": {"text": text}}])
    assert gold not in listed(provider.requests[-1])  # the words alone do not bring it
    reviewed = [
        (9001, "The shop said they gave my money back but I can't see it anywhere in my account", gold),
        (9002, "How do I top up with cash at a shop", "top_up_by_cash_or_cheque"),
        (9003, "I want my money back for this item", "request_refund"),
        (9004, "The exchange rate you gave me was wrong", "card_payment_wrong_exchange_rate"),
    ]
    for aid, example, label in reviewed:
        event = annotation_event("ANNOTATION_CREATED", banking, aid, aid, example, [choice(label, "intent")], T0)
        assert client.post("/webhook", json=event).status_code == 200
    app.extensions["lsllm_model"].worker.drain()
    calls = len(provider.requests)
    predict(client, banking, [{"id": 2, "data": {"text": text}}])
    assert len(provider.requests) == calls + 1  # a new shortlist is a new prompt: no response-cache hit
    body = provider.requests[-1]
    shown = listed(body)
    assert gold in shown and gold in enum(body) and len(shown) == 20
    shots = [unmark_data(m["content"]) for m in body["messages"][1:-1]]
    assert shots[-2] == reviewed[0][1]  # the near-duplicate sits right before the task
    assert all(json.loads(a)["intent"] in shown for a in shots[1::2])  # examples answer shown labels only


def test_scores_renormalise_over_the_shortlist_only(banking) -> None:
    spec = build_task_spec(banking)
    narrowed = replace(
        spec,
        controls=(shortlist_control(spec.controls[0], {"card_arrival": 2.0, "lost_or_stolen_card": 1.0}, {}, 2),),
    )
    assert narrowed.controls[0].display_labels() == ["card_arrival", "lost_or_stolen_card"]
    content = '{"intent": "card_arrival"}'
    tokens = [Token('{"', -0.01), Token("intent", -0.01), Token('":', -0.01), Token(' "', -0.01),
              Token("card", math.log(0.5), (("card", math.log(0.5)), ("age", math.log(0.3)), ("lost", math.log(0.1)))),
              Token("_arrival", -0.01), Token('"}', -0.01)]
    assert "".join(t.text for t in tokens) == content
    short = answer_to_prediction(narrowed, {"text": "x"}, {"intent": "card_arrival"}, TokenProbs(content, tokens))
    full = answer_to_prediction(spec, {"text": "x"}, {"intent": "card_arrival"}, TokenProbs(content, tokens))
    # age_limit was not shown: its probability no longer counts against the answer
    assert short.result[0]["score"] == pytest.approx(0.5 / (0.5 + 0.1))
    assert full.result[0]["score"] == pytest.approx(0.5 / (0.5 + 0.3 + 0.1))


def test_ranking_is_vote_then_similarity_then_config_order(banking) -> None:
    control = build_task_spec(banking).controls[0]
    neighbours = [(1.0, [choice("age_limit", "intent")]), (0.5, [choice("pin_blocked", "intent")]),
                  (0.5, [choice("age_limit", "intent")]), (0.0, [choice("atm_support", "intent")])]
    votes = knn_votes(control, neighbours)
    assert votes == {"age_limit": 1.5, "pin_blocked": 0.5}  # a zero-similarity neighbour has no vote
    similarity = {"exchange_rate": 0.9, "card_linking": 0.9, "pin_blocked": 5.0}
    ranked = [lab.value for lab in rank_labels(control, votes, similarity)]
    # votes first; equal similarity keeps config order (card_linking is before exchange_rate there)
    assert ranked[:4] == ["age_limit", "pin_blocked", "card_linking", "exchange_rate"]
    assert ranked[4:] == [lab.value for lab in control.labels if lab.value not in ranked[:4]]
    narrowed = shortlist_control(control, votes, similarity, 3)
    assert [lab.value for lab in narrowed.labels] == ["card_linking", "age_limit", "pin_blocked"]
    spec = build_task_spec(banking)
    assert shortlist_spec(spec, 77, 3, votes=lambda c: {}, similarity=lambda c: {}) is spec  # 77 is not > 77
