"""Issue 11, live agreement: webhook reviews -> review outcomes in the store -> /projects/<id>/quality,
/metrics and `lsllm report`, with hand-made payloads in Label Studio's shapes (the real server is in
test_e2e_quality.py). Every expected figure is worked out by hand in the comments."""

from __future__ import annotations

import base64
import math
from typing import Any

import pytest
from conftest import config
from webhook_payloads import annotation_event, choice, deleted_event, span

from backend.learning.agreement import NoPrediction, ReviewOutcome, review_outcome, summarise

SENT = config("sentiment")
NER = config("ner")
T0 = 1_790_000_000.0


def review(aid: int, tid: int, kept: str, predicted: str | None, score: float | None, version: str = "v1",
           updated: float = T0, action: str = "ANNOTATION_CREATED", **kw: Any) -> dict[str, Any]:
    """A sentiment review; `predicted` None: the annotation did not start from a prediction."""
    event = annotation_event(action, SENT, aid, tid, f"text {tid}", [choice(kept)], updated,
                             prediction=[choice(predicted)] if predicted else None, **kw)
    if predicted:
        event["annotation"]["prediction"].update({"id": 100 + tid, "score": score, "model_version": version})
        event["annotation"]["parent_prediction"] = 100 + tid
    return event


def send(client: Any, app: Any, *events: dict[str, Any]) -> None:
    for event in events:
        assert client.post("/webhook", json=event).status_code == 200
    app.extensions["lsllm_model"].worker.drain()


def quality(client: Any, pid: int = 7, **kw: Any) -> dict[str, Any]:
    response = client.get(f"/projects/{pid}/quality", **kw)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


# --- the pure rules ------------------------------------------------------------------------------
def test_outcome_of_an_accepted_and_a_corrected_choice() -> None:
    prediction = {"result": [{**choice("positive"), "id": "other-id"}], "score": 0.9, "model_version": "v"}
    accepted = review_outcome({"result": [choice("positive")]}, prediction)
    assert (accepted.accepted, accepted.right, accepted.score, accepted.model_version) == (True, True, 0.9, "v")
    corrected = review_outcome({"result": [choice("negative")]}, {"result": [choice("positive")], "score": None})
    assert (corrected.accepted, corrected.right, corrected.score) == (False, False, None)
    assert corrected.predicted == {"sentiment": {"type": "choices", "choice": "positive"}}
    assert corrected.reviewed == {"sentiment": {"type": "choices", "choice": "negative"}}


def test_no_prediction_and_skipped_tasks_are_not_reviews() -> None:
    with pytest.raises(NoPrediction):
        review_outcome({"result": [choice("positive")]}, None)
    with pytest.raises(NoPrediction):
        review_outcome({"result": [choice("positive")]}, {})
    with pytest.raises(ValueError):
        review_outcome({"result": [], "was_cancelled": True}, {"result": [choice("positive")]})


def test_ner_spans_are_strict() -> None:
    text = "Ada Lovelace lives in London"
    predicted = [span(text, "Ada Lovelace", "PER"), span(text, "London", "LOC")]
    kept = [span(text, "Ada Lovelace", "PER"), span(text, "London", "ORG"), span(text, "Ada", "PER")]
    summary = summarise([review_outcome({"result": kept}, {"result": predicted, "score": 0.5})])
    label = summary["controls"]["label"]
    # tp: Ada Lovelace/PER; fp: London/LOC; fn: London/ORG, Ada/PER -> P 1/2, R 1/3, F1 0.4
    assert (label["tp"], label["fp"], label["fn"]) == (1, 1, 2)
    assert label["precision"] == 0.5 and math.isclose(label["recall"], 1 / 3) and math.isclose(label["f1"], 0.4)
    assert label["per_label"]["LOC"]["precision"] == 0.0 and label["per_label"]["ORG"]["recall"] == 0.0
    assert summary["accepted"] == 0 and summary["right"] == 0


def test_calibration_figures_by_hand() -> None:
    def o(score: float, right: bool) -> ReviewOutcome:
        return ReviewOutcome("v", score, right, right)

    s = summarise([o(0.9, True), o(0.8, True), o(0.3, False), o(0.2, True)])["calibration"]
    # one task per bin: |0.9-1| + |0.8-1| + |0.3-0| + |0.2-1| = 1.4, over 4 tasks
    assert math.isclose(s["ece"], 0.35)
    # the right ones beat the one error in 2 of 3 pairs (0.2 < 0.3)
    assert math.isclose(s["auroc"], 2 / 3)
    # the lowest 20% (ceil(0.8) = 1 task: 0.2) holds no error
    assert s["errors_in_lowest_20"] == 0.0 and s["scored"] == 4


# --- through the webhook, the worker and the store ------------------------------------------------
def test_quality_follows_reviews_updates_and_deletes(make_app) -> None:
    app = make_app()
    client = app.test_client()
    send(
        client, app,
        review(1, 11, "positive", "positive", 0.9),  # accepted
        review(2, 12, "negative", "positive", 0.8),  # corrected
        review(3, 13, "negative", "negative", 0.3, version="v2", updated=T0 + 5),  # accepted, a later version
        review(4, 14, "neutral", "neutral", 0.7, cancelled=True),  # skipped: no review
        review(5, 15, "neutral", None, None),  # no prediction: no review
    )
    body = quality(client)
    overall = body["overall"]
    assert (overall["reviews"], overall["accepted"]) == (3, 2)
    sentiment = overall["controls"]["sentiment"]
    assert math.isclose(sentiment["accuracy"], 2 / 3)
    # positive: predicted twice, right once; negative: predicted once (right), reviewed twice
    per_label = sentiment["per_label"]
    assert (per_label["positive"]["precision"], per_label["positive"]["recall"]) == (0.5, 1.0)
    assert (per_label["negative"]["precision"], per_label["negative"]["recall"]) == (1.0, 0.5)
    # scores 0.9 right, 0.8 wrong, 0.3 right: the error outranks one of the two right ones
    assert math.isclose(overall["calibration"]["auroc"], 0.5)
    assert [(v["model_version"], v["reviews"], v["accepted"]) for v in body["model_versions"]] == [
        ("v1", 2, 1), ("v2", 1, 1)]
    # examples the project had learnt when each review arrived: 0, 1 and 2, in one bucket [0, 10)
    assert [(b["examples_from"], b["examples_to"], b["reviews"]) for b in body["by_examples"]] == [(0, 10, 3)]

    # a re-delivery changes nothing; an update replaces the review; a stale update is ignored
    send(client, app, review(1, 11, "positive", "positive", 0.9),
         review(1, 11, "neutral", "positive", 0.9, updated=T0 + 10, action="ANNOTATION_UPDATED"),
         review(2, 12, "positive", "positive", 0.8, updated=T0 - 10, action="ANNOTATION_UPDATED"))
    overall = quality(client)["overall"]
    assert (overall["reviews"], overall["accepted"]) == (3, 1)
    assert math.isclose(overall["controls"]["sentiment"]["accuracy"], 1 / 3)

    # deleted: gone, and a creation delivered after the deletion does not bring it back
    send(client, app, deleted_event(SENT, [2]), review(2, 12, "negative", "positive", 0.8))
    overall = quality(client)["overall"]
    assert (overall["reviews"], overall["accepted"]) == (2, 1)
    # updated to skipped: no longer a review
    send(client, app, review(3, 13, "negative", "negative", 0.3, version="v2", updated=T0 + 20,
                             action="ANNOTATION_UPDATED", cancelled=True))
    assert quality(client)["overall"]["reviews"] == 1

    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'lsllm_quality_reviews{project="7",model_version="v1"} 1' in metrics
    assert 'lsllm_quality_accepted_share{project="7",model_version="v1"} 0.0' in metrics
    assert 'lsllm_quality_agreement{project="7",model_version="v1",metric="accuracy"} 0.0' in metrics
    # the gauges are cached between scrapes, and recomputed as soon as a review arrives
    assert client.get("/metrics").get_data(as_text=True).count("lsllm_quality_reviews{") == metrics.count(
        "lsllm_quality_reviews{")
    send(client, app, review(4, 14, "positive", "positive", 0.7))
    again = client.get("/metrics").get_data(as_text=True)
    assert 'lsllm_quality_reviews{project="7",model_version="v1"} 2' in again
    assert 'lsllm_quality_accepted_share{project="7",model_version="v1"} 0.5' in again


def test_prediction_read_back_when_the_webhook_carries_only_its_id(make_app) -> None:
    """Label Studio sends `prediction: {}` and `parent_prediction: id` unless the project pins a model
    version (the case with a connected backend); the worker reads the prediction by id."""
    app = make_app()
    asked: list[tuple[str, int]] = []

    def fetch(project_id: str, prediction_id: int) -> dict[str, Any]:
        asked.append((project_id, prediction_id))
        return {"id": prediction_id, "result": [choice("positive")], "score": 0.6, "model_version": "v9"}

    app.extensions["lsllm_model"].worker.learner.fetch_prediction = fetch
    client = app.test_client()
    event = review(1, 11, "positive", None, None)
    event["annotation"]["parent_prediction"] = 555
    send(client, app, event)
    assert asked == [("7", 555)]
    body = quality(client)
    assert body["model_versions"][0]["model_version"] == "v9"
    assert (body["overall"]["reviews"], body["overall"]["accepted"]) == (1, 1)
    examples = client.get("/projects/7/examples").get_json()["examples"]
    assert examples[0]["corrected"] is False  # the example store sees the accepted prediction too


def test_unreadable_prediction_keeps_the_example_and_scores_nothing(make_app) -> None:
    app = make_app()
    app.extensions["lsllm_model"].worker.learner.fetch_prediction = lambda pid, prediction_id: None
    client = app.test_client()
    event = review(1, 11, "positive", None, None)
    event["annotation"]["parent_prediction"] = 555
    send(client, app, event)
    assert quality(client)["overall"]["reviews"] == 0
    assert len(client.get("/projects/7/examples").get_json()["examples"]) == 1


def test_quality_needs_basic_auth_like_the_other_routes(make_app) -> None:
    client = make_app(basic_auth_user="ls", basic_auth_pass="s3cret").test_client()
    assert client.get("/projects/7/quality").status_code == 401
    token = base64.b64encode(b"ls:s3cret").decode()
    assert client.get("/projects/7/quality", headers={"Authorization": f"Basic {token}"}).status_code == 200
    assert client.get("/projects/x y/quality", headers={"Authorization": f"Basic {token}"}).status_code == 400


def test_report_page_from_the_store_the_backend_uses(make_app, tmp_path, monkeypatch) -> None:
    from backend.cli import main

    app = make_app()
    client = app.test_client()
    send(client, app, review(1, 11, "positive", "positive", 0.9), review(2, 12, "negative", "positive", 0.8),
         review(3, 13, "negative", "negative", 0.3, version="v2", updated=T0 + 5))
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))  # make_settings' data_dir
    monkeypatch.delenv("DATABASE_URL", raising=False)
    out = tmp_path / "report.html"
    assert main(["report", "--project", "7", "--out", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>") and "<style>" in page
    assert "http://" not in page and "https://" not in page  # self-contained: nothing fetched
    assert page.count('src="data:image/png;base64,') == 3  # versions, examples, reliability
    # summary rows: all reviews 3, accepted 2/3, accuracy 2/3, ECE (|0.9-1| + |0.8-0| + |0.3-1|) / 3,
    # AUROC 0.5, the lowest-scored task (0.3) is right: 0 of the 1 error; v1 2 reviews, 1/2; v2 1, 1
    def row(*cells: str) -> str:
        return f'<td class="l">{cells[0]}</td>' + "".join(f'<td class="">{c}</td>' for c in cells[1:])

    assert row("all reviews", "3", "0.667", "0.667", "0.533", "0.500", "0.000") in page
    assert row("v1", "2", "0.500", "0.500") in page
    assert row("v2", "1", "1.000", "1.000") in page
    assert main(["report", "--project", "not a project", "--out", str(out)]) == 2


def test_bulk_predictions_to_annotations_are_no_reviews(make_app) -> None:
    """Label Studio's "Create annotations from predictions" (ANNOTATIONS_CREATED) copies predictions: no
    reviewer judged them, so they must not count as accepted; a later edit of one is a review."""
    app = make_app()
    client = app.test_client()
    one, two = review(1, 11, "positive", "positive", 0.9), review(2, 12, "neutral", "neutral", 0.4)
    bulk = {"action": "ANNOTATIONS_CREATED", "annotation": [one["annotation"], two["annotation"]],
            "task": [one["task"], two["task"]], "project": one["project"]}
    send(client, app, bulk)
    assert len(client.get("/projects/7/examples").get_json()["examples"]) == 2
    assert quality(client)["overall"]["reviews"] == 0
    send(client, app, review(2, 12, "negative", "neutral", 0.4, updated=T0 + 5, action="ANNOTATION_UPDATED"))
    overall = quality(client)["overall"]
    assert (overall["reviews"], overall["accepted"]) == (1, 0)


def test_prediction_fetch_backs_off_after_a_failure_and_caches_answers(tmp_path) -> None:
    """An unreachable Label Studio costs one timeout per project and minute, not one per event (the
    worker would otherwise hold its leased events past the lease); a read prediction is asked once."""
    from conftest import make_settings

    from backend.labelstudio.prediction_fetch import make_prediction_fetch
    from backend.store.db import make_engine, migrate
    from backend.store.project_store import ProjectStore

    settings = make_settings(tmp_path, "http://127.0.0.1:9", label_studio_url="http://ls.invalid",
                             label_studio_api_key="ls-key-123")
    engine = make_engine(f"sqlite:///{tmp_path / 'store.sqlite3'}")
    migrate(engine)
    now = [0.0]
    calls: list[tuple[str, str, int]] = []
    down = [True]

    class Predictions:
        def __init__(self, url: str, token: str) -> None:
            self.url, self.token = url, token

        def get(self, id: int) -> dict[str, Any]:  # noqa: A002 - the SDK's keyword
            calls.append((self.url, self.token, id))
            if down[0]:
                raise ConnectionError("refused")
            return {"id": id, "result": [choice("positive")], "score": 0.7, "model_version": "v", "task": 3}

    class Client:
        def __init__(self, url: str, token: str, timeout: float) -> None:
            self.predictions = Predictions(url, token)

    fetch = make_prediction_fetch(settings, ProjectStore(engine), backoff=60.0, client_factory=Client,
                                  clock=lambda: now[0])
    assert fetch("7", 1) is None and len(calls) == 1
    down[0] = False
    assert fetch("7", 2) is None and len(calls) == 1  # within the backoff: not asked
    now[0] = 61.0
    answer = fetch("7", 2)
    assert answer == {"id": 2, "result": [choice("positive")], "score": 0.7, "model_version": "v"}
    assert calls == [("http://ls.invalid", "ls-key-123", 1), ("http://ls.invalid", "ls-key-123", 2)]
    assert fetch("7", 2) == answer and len(calls) == 2  # cached


def test_choice_scores_follow_the_eval_conventions() -> None:
    """The one-pass counting gives exactly what lsllm eval's classification_scores gives."""
    import random

    from backend.learning.agreement import choice_scores
    from converters.scoring import classification_scores

    rng = random.Random(3)
    labels = ["a", "b", "c", "d"]
    for _ in range(50):
        n = rng.randint(1, 30)
        gold = [rng.choice(labels) for _ in range(n)]
        guess = [rng.choice(labels + [None]) for _ in range(n)]
        mine, theirs = choice_scores(gold, guess), classification_scores(gold, guess)
        assert (mine["reviews"], mine["per_label"]) == (theirs.n, theirs.per_label)
        assert math.isclose(mine["accuracy"], theirs.accuracy) and math.isclose(mine["macro_f1"], theirs.macro_f1)
