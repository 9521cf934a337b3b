"""The LLM and the student together (backend.learning.blend): the LLM's probability of every label it was
shown, read from its answer's tokens; a weighted product with the student's, fitted on the referee's
paired reviews and kept only when those reviews show it better than the LLM alone."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest
from conftest import Reply
from test_referee import noisy_feed
from test_student import LABELS, SENT, WORDS, model_of, predict

from backend.learning.blend import BlendRow, blended, choose_blend, fit_blend
from backend.learning.referee import Verdict
from converters.confidence import Token, TokenProbs, member_at
from converters.regions import answer_to_prediction
from converters.task_spec import build_task_spec


def t(text: str, p: float = 0.999, *alternatives: tuple[str, float]) -> Token:
    return Token(text, math.log(p), tuple((a, math.log(q)) for a, q in alternatives))


def located(tokens: list[Token], key: str) -> tuple[TokenProbs, Any]:
    content = "".join(token.text for token in tokens)
    probs = TokenProbs(content, tokens)
    return probs, member_at(probs.locate(json.loads(content)), key)


def test_one_token_labels_share_the_renormalised_first_token() -> None:
    probs, node = located([t('{"'), t("sentiment"), t('":'), t(' "'),
                           t("positive", 0.6, ("positive", 0.6), ("negative", 0.2), ("Positive", 0.1), ("s", 0.05)),
                           t('"}')], "sentiment")
    got = probs.distribution(node, ["negative", "neutral", "positive"])
    assert got == pytest.approx({"negative": 0.25, "neutral": 0.0, "positive": 0.75})
    assert got["positive"] == pytest.approx(probs.probability(node, ["negative", "neutral", "positive"]))


def test_labels_that_share_their_first_tokens_are_told_apart_where_they_branch() -> None:
    """card_arrival / card_linking / cash_withdrawal: the answer wrote "card", "_", "arrival"; the second
    token's alternative "link" leaves its path for card_linking, the first token's "cash" for
    cash_withdrawal."""
    labels = ["card_arrival", "card_linking", "cash_withdrawal"]
    probs, node = located([t('{"'), t("intent"), t('":'), t(' "'),
                           t("card", 0.8, ("card", 0.8), ("cash", 0.2)), t("_"),
                           t("arr", 0.5, ("arr", 0.5), ("link", 0.3), ("xyz", 0.2)), t("ival"), t('"}')], "intent")
    got = probs.distribution(node, labels)
    # at "arr": xyz spells nothing and is left out: arr 0.5 / 0.8, link 0.3 / 0.8
    assert got == pytest.approx({"card_arrival": 0.8 * 0.625, "card_linking": 0.8 * 0.375, "cash_withdrawal": 0.2})
    assert sum(got.values()) == pytest.approx(1.0)


def test_a_label_that_is_the_start_of_another_branches_at_the_closing_quote() -> None:
    probs, node = located([t('{"'), t("x"), t('":'), t(' "'), t("pos", 0.9), t("itive", 0.9),
                           t('"}', 0.7, ('"}', 0.7), ("_strong", 0.3))], "x")
    assert probs.distribution(node, ["positive", "positive_strong"]) == pytest.approx(
        {"positive": 0.7, "positive_strong": 0.3})


def test_a_value_the_tokens_do_not_spell_as_a_label_has_no_distribution() -> None:
    probs, node = located([t('{"'), t("x"), t('":'), t(' "'), t("maybe"), t('"}')], "x")
    assert probs.distribution(node, ["yes", "no"]) is None
    assert probs.distribution(None, ["yes", "no"]) is None


def test_the_prediction_carries_the_votes_of_single_choice_controls_by_stored_value() -> None:
    config = """<View><Text name="text" value="$text"/>
      <Choices name="sentiment" toName="text"><Choice value="pos" alias="P"/><Choice value="neg" alias="N"/></Choices>
      <Choices name="topics" toName="text" choice="multiple"><Choice value="a"/><Choice value="b"/></Choices>
    </View>"""
    tokens = [t('{"'), t("sentiment"), t('":'), t(' "'), t("pos", 0.7, ("pos", 0.7), ("neg", 0.3)), t('",'),
              t(' "'), t("topics"), t('":'), t(' ["'), t("a", 0.6, ("a", 0.6), ("b", 0.4)), t('"]}')]
    content = "".join(token.text for token in tokens)
    prediction = answer_to_prediction(build_task_spec(config), {"text": "x"}, json.loads(content),
                                      TokenProbs(content, tokens))
    assert prediction.votes == {"sentiment": pytest.approx({"P": 0.7, "N": 0.3})}  # not the multiple choice
    assert "votes" not in prediction.as_ls("v1")  # never sent to Label Studio
    assert answer_to_prediction(build_task_spec(config), {"text": "x"}, json.loads(content)).votes == {}


def _view(rng: random.Random, truth: str, hit: float) -> dict[str, float]:
    """One side's probabilities: right with chance `hit`; when wrong it still puts the truth second (what
    it knows, the other side may not); at a third or less it knows nothing (the truth is anywhere)."""
    others = [lab for lab in LABELS if lab != truth]
    rng.shuffle(others)
    if hit <= 1 / 3:
        order = [truth, *others]
        rng.shuffle(order)
        return dict(zip(order, (0.6, 0.3, 0.1)))
    if rng.random() < hit:
        return {truth: 0.6, others[0]: 0.3, others[1]: 0.1}
    return {others[0]: 0.6, truth: 0.3, others[1]: 0.1}


def _rows(n: int, llm_hit: float, student_hit: float, seed: int = 0) -> tuple[list[BlendRow], list[bool]]:
    """Paired reviews over three labels: an LLM and a student, independent of each other."""
    rng = random.Random(seed)
    rows, llm_right = [], []
    for _ in range(n):
        truth = rng.choice(LABELS)
        votes, student = _view(rng, truth, llm_hit), _view(rng, truth, student_hit)
        rows.append(BlendRow(votes, student, truth))
        llm_right.append(max(votes, key=lambda k: votes[k]) == truth)
    return rows, llm_right


def test_two_independent_views_blend_into_a_better_one() -> None:
    rows, llm_right = _rows(120, 0.6, 0.6)
    chosen = choose_blend(rows, llm_right)
    assert chosen is not None and min(chosen.weights) > 0
    assert sum(chosen.right) > sum(llm_right)
    assert all(0.0 <= p <= 1.0 for p in chosen.p)
    mixed = blended(chosen.weights, rows[0].votes or {}, rows[0].student)
    assert set(mixed) == set(LABELS) and sum(mixed.values()) == pytest.approx(1.0)


def test_a_student_that_knows_nothing_is_kept_out_of_the_llms_answers() -> None:
    rows, llm_right = _rows(120, 0.7, 1 / 3, seed=1)
    assert choose_blend(rows, llm_right) is None
    a, b = fit_blend(rows) or (0.0, 0.0)
    assert a > 4 * b  # the fit itself leans on the LLM


def test_a_gain_the_sign_test_cannot_tell_from_chance_is_not_taken() -> None:
    """Three more right of 40, none fewer (TweetEval at 50 reviews was 23 against 21): p = 0.125."""
    a, b, c = LABELS
    rows = ([BlendRow({a: 0.6, b: 0.3, c: 0.1}, {a: 0.6, b: 0.3, c: 0.1}, a)] * 20  # both right
            + [BlendRow({b: 0.9, a: 0.05, c: 0.05}, {c: 0.4, b: 0.35, a: 0.25}, b)] * 5  # the LLM knows better
            + [BlendRow({b: 0.6, a: 0.3, c: 0.1}, {b: 0.6, a: 0.3, c: 0.1}, a)] * 12  # both wrong alike
            + [BlendRow({b: 0.45, a: 0.4, c: 0.15}, {a: 0.8, b: 0.1, c: 0.1}, a)] * 3)  # the student corrects
    llm_right = [r.truth == max(r.votes or {}, key=lambda k: (r.votes or {})[k]) for r in rows]
    chosen = choose_blend(rows, llm_right, alpha=1.0)  # without the test it would have been kept
    assert chosen is not None and sum(chosen.right) == sum(llm_right) + 3
    assert choose_blend(rows, llm_right) is None


def test_rows_without_votes_leave_the_llms_answer_and_nothing_to_learn_gives_no_blend() -> None:
    rows, llm_right = _rows(120, 0.6, 0.6)
    rows[0] = BlendRow(None, rows[0].student, rows[0].truth)
    chosen = choose_blend(rows, llm_right)
    assert chosen is not None and chosen.labels[0] is None and chosen.right[0] == llm_right[0]
    assert fit_blend([BlendRow(None, {"a": 1.0}, "a")]) is None
    assert choose_blend([BlendRow({"a": 0.5, "b": 0.5}, {"a": 1.0}, "c")], [False]) is None  # truth not shown


def _sure_of_neutral(body: dict[str, Any]) -> Reply:
    """An LLM that always answers "neutral" at 0.55, with the label the task's words say as its only
    alternative: right about the words, wrong about its choice."""
    words = body["messages"][-1]["content"].lower()
    by_words = max(WORDS, key=lambda lab: sum(w in words for w in WORDS[lab]))
    return Reply(content=json.dumps({"sentiment": "neutral"}), logprob=math.log(0.55), alternatives=(by_words,))


@pytest.mark.parametrize("blend", [True, False])
def test_the_service_blends_where_the_referee_found_the_blend_better(make_app: Any, provider: Any,
                                                                       blend: bool) -> None:
    provider.responder = _sure_of_neutral
    app = make_app(examples_version_policy="every", student_debounce_seconds=0.0, student_min_examples=20,
                   student_precision=1.0, student_referee_sample=40, student_blend=blend)
    noisy_feed(app.test_client())
    model = model_of(app)
    model.worker.drain()
    students = model.predictor.pipeline.student
    assert students.settle("7", model.predictor.plan(SENT), timeout=300)
    spec = build_task_spec(SENT)
    student = students.student("7", spec, spec.controls[0])
    assert student is not None
    verdict = Verdict.from_json(student.referee)
    if not blend:  # STUDENT_BLEND=false: the LLM's answers are its own; here the student beats them
        assert verdict.blend is None and verdict.blend_accuracy is None and verdict.switch == 0.0
        return
    assert verdict.blend is not None and verdict.blend_accuracy is not None
    assert verdict.blend_accuracy > verdict.llm_accuracy
    assert verdict.switch > 1.0  # young, and the blend beats the student: the LLM, blended, answers all

    asked = len(provider.requests)
    item = predict(app.test_client(), "wonderful excellent fantastic superb", SENT, 931)["results"][0]
    assert len(provider.requests) == asked + 1  # the LLM was asked
    assert item["result"][0]["value"]["choices"] == ["positive"]  # it said neutral; the blend says positive
    assert 0.0 <= item["score"] <= 1.0
    metrics = app.test_client().get("/metrics").get_data(as_text=True)
    assert "lsllm_student_blend_changes_total 1.0" in metrics


def test_a_verdict_stored_before_the_blend_reads_as_no_blend() -> None:
    verdict = Verdict(0.5, 0.6, 40, 90, 2.0, (1.0, 0.5, 0.0), 0.55, True, True, (0.7, 0.4), 0.65)
    assert Verdict.from_json(json.loads(json.dumps(verdict.as_json()))) == verdict
    older = {k: v for k, v in verdict.as_json().items() if k not in ("blend", "blend_accuracy")}
    assert Verdict.from_json(older).blend is None and Verdict.from_json(older).blend_accuracy is None
