"""The referee (backend.learning.referee): after training, the LLM answers held-out reviewed examples the
student is unsure of, without that example or the student in its prompt; the cascade then lets the
student answer wherever its calibrated probability beats the LLM's measured accuracy."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pytest
from conftest import json_answer
from test_student import LABELS, SENT, WORDS, model_of, predict, text_for
from webhook_payloads import annotation_event, choice

from backend.learning.referee import (
    Verdict,
    best_switch,
    count_switch,
    deferred_sample,
    fit_llm_score,
    judge_llm,
    llm_score,
    still_valid,
)
from backend.learning.student import train_student
from converters.task_spec import build_task_spec

T0 = 1_790_000_000.0


@dataclass
class Answered:
    item: Any
    reason: str = "ok"


def noisy_model() -> tuple[Any, list[str]]:
    """A student on overlapping classes with a demanding precision: many held-out examples are unsure."""
    rng = np.random.default_rng(4)
    centres = rng.normal(0, 1, (3, 12)).astype(np.float32) * 0.8
    y = rng.integers(0, 3, 90)
    x = (centres[y] + rng.normal(0, 1, (90, 12))).astype(np.float32)
    labels = [LABELS[i] for i in y]
    model = train_student(x, labels, precision=0.99)
    assert model is not None and model.held_out is not None
    return model, labels


def region(label: str, score: float | None = None) -> dict[str, Any]:
    found = {"from_name": "sentiment", "to_name": "text", "type": "choices", "value": {"choices": [label]}}
    return {"result": [found if score is None else {**found, "score": score}]}


def test_the_verdict_counts_what_the_llm_got_right_on_the_unsure_held_out_examples() -> None:
    model, labels = noisy_model()
    sample = deferred_sample(model, 20)
    held = model.held_out
    assert held is not None and len(sample) == 20
    assert all(held.top[i] < model.threshold for i in sample)  # only examples the cascade would not answer
    datas = [{"text": f"example {i}"} for i in range(len(labels))]
    asked: list[str] = []

    def judge(plan: Any, project_id: str, data: Any, what: str, examples: bool = True) -> Answered:
        asked.append(data["text"])
        position = int(data["text"].split()[1])
        if position % 5 == 0:
            return Answered([], reason="llm_timeout")  # a failed call: not counted either way
        if position % 7 == 0:
            return Answered([], reason="unparsable")  # an answer that could not be read: the LLM was wrong
        right = position % 2 == 0
        label = labels[position] if right else next(lab for lab in LABELS if lab != labels[position])
        return Answered(region(label, 0.9 if right else 0.4))  # the LLM is surer when it is right

    verdict = judge_llm(model, datas, labels, "sentiment", judge, None, "7", 20)
    assert verdict is not None and len(asked) == 20
    answered = [int(held.index[i]) for i in sample if int(held.index[i]) % 5 != 0]
    assert verdict.n == len(answered)
    assert verdict.llm_accuracy == sum(p % 2 == 0 and p % 7 != 0 for p in answered) / len(answered)
    assert verdict.student_accuracy == float(np.mean([held.right[i] for i in sample if held.index[i] % 5 != 0]))
    assert verdict.at_examples == 90
    probs = [float(held.top[i]) for i in sample if held.index[i] % 5 != 0]
    rights = [bool(held.right[i]) for i in sample if held.index[i] % 5 != 0]
    assert verdict.switch == best_switch(probs, rights, [p % 2 == 0 and p % 7 != 0 for p in answered])
    assert verdict.score is not None  # fitted on the LLM's own probability and the student's
    assert llm_score(verdict.score, 0.9, 0.3) > 0.5 > llm_score(verdict.score, 0.4, 0.3)
    assert verdict.zero_shot_accuracy is None and verdict.examples  # not asked without examples
    assert Verdict.from_json(json.loads(json.dumps(verdict.as_json()))) == Verdict(
        round(verdict.llm_accuracy, 4), round(verdict.student_accuracy, 4), verdict.n, 90, verdict.switch,
        verdict.score)
    older = {k: v for k, v in verdict.as_json().items() if k not in ("zero_shot_accuracy", "examples")}
    assert Verdict.from_json(older).examples  # a verdict stored before the zero-shot arm keeps the examples
    with pytest.raises(ValueError):
        Verdict.from_json({**verdict.as_json(), "examples": "no"})
    # a provider without logprobs: a verdict, but no score of the LLM's own (the student's stays)
    plain = judge_llm(model, datas, labels, "sentiment", lambda *a, **k: Answered(region(labels[0])), None, "7", 20)
    assert plain is not None and plain.score is None
    # too few answers for a verdict
    assert judge_llm(model, datas, labels, "sentiment", lambda *a, **k: Answered([], "llm_timeout"), None, "7", 20) is None
    # a verdict holds until the reviewed examples have doubled, or have reached the count from which a
    # tie goes to the student
    assert still_valid(verdict, 179) and not still_valid(verdict, 180) and not still_valid(None, 10)
    assert still_valid(verdict, 99, trusted_from=100) and not still_valid(verdict, 100, trusted_from=100)
    assert still_valid(verdict, 179, trusted_from=90)  # measured at 90: a tie already went to the student
    assert deferred_sample(replace(model, held_out=None), 20) == []


def test_below_the_count_it_is_trusted_from_the_student_is_judged_as_a_whole() -> None:
    model, labels = noisy_model()  # 90 reviewed examples
    held = model.held_out
    assert held is not None
    datas = [{"text": f"example {i}"} for i in range(len(labels))]
    at = {int(held.index[i]): i for i in range(len(held.index))}
    unsure = set(deferred_sample(model, 20))
    whole = deferred_sample(model, 20, whole=True)
    assert len(whole) == 20 and set(whole) != unsure
    # two of the unsure examples the student got wrong: an LLM right there and wherever the student is
    # has two wins and no loss (a coin toss for the sign test, not for the count)
    wrong = sorted((i for i in unsure if not held.right[i]), key=lambda i: held.top[i])[:2]
    assert len(wrong) == 2
    asked: list[int] = []

    def right_also_on(extra: set[int]) -> Any:
        def judge(plan: Any, project_id: str, data: Any, what: str, examples: bool = True) -> Answered:
            position = int(data["text"].split()[1])
            asked.append(at[position])
            right = at[position] in extra or bool(held.right[at[position]])
            return Answered(region(labels[position] if right else next(x for x in LABELS if x != labels[position])))
        return judge

    trusted = judge_llm(model, datas, labels, "sentiment", right_also_on(set(wrong)), None, "7", 20, trusted_from=90)
    assert trusted is not None and set(asked) == unsure and not trusted.whole
    assert trusted.llm_accuracy > trusted.student_accuracy
    assert trusted.switch == 0.0  # the test: two wins may be chance, the student answers every task
    asked.clear()
    young = judge_llm(model, datas, labels, "sentiment", right_also_on(set(wrong)), None, "7", 20, trusted_from=91)
    assert young is not None and set(asked) == set(whole) and young.whole  # sampled from all held-out ones
    assert young.llm_accuracy > young.student_accuracy  # (the whole sample holds a student error the LLM fixes)
    assert young.switch == 2.0  # the count: the LLM got more right, it answers every task

    def twin(plan: Any, project_id: str, data: Any, what: str, examples: bool = True) -> Answered:
        """An LLM right exactly where the student is: an equal count goes to the LLM."""
        position = int(data["text"].split()[1])
        right = bool(held.right[at[position]])
        return Answered(region(labels[position] if right else next(x for x in LABELS if x != labels[position])))

    tied = judge_llm(model, datas, labels, "sentiment", twin, None, "7", 20, trusted_from=91)
    assert tied is not None and tied.whole and tied.switch == 2.0
    behind = judge_llm(model, datas, labels, "sentiment",
                       lambda plan, pid, data, what, examples=True: Answered(region("nonsense")), None, "7", 20,
                       trusted_from=91)
    assert behind is not None and behind.whole and behind.switch == 0.0  # the student ahead: it answers all
    assert Verdict.from_json(json.loads(json.dumps(young.as_json()))) == Verdict.from_json(young.as_json())
    assert Verdict.from_json(young.as_json()).whole


def test_the_llm_is_also_asked_without_examples_and_the_better_of_the_two_is_weighed_against_the_student() -> None:
    model, labels = noisy_model()
    held = model.held_out
    assert held is not None
    datas = [{"text": f"example {i}"} for i in range(len(labels))]
    calls: list[tuple[int, bool]] = []
    sampled = deferred_sample(model, 20)
    sample = [int(held.index[i]) for i in sampled]
    failing = sample[3]

    def wrong(position: int) -> str:
        return next(x for x in LABELS if x != labels[position])

    def examples_mislead(plan: Any, project_id: str, data: Any, what: str, examples: bool = True) -> Answered:
        """Right on every example when asked without examples, on a third of them with."""
        position = int(data["text"].split()[1])
        calls.append((position, examples))
        if position == failing and not examples:
            return Answered([], reason="llm_rate_limit")  # failed without examples: the pair is not counted
        right = not examples or position % 3 == 0
        return Answered(region(labels[position] if right else wrong(position), 0.8))

    verdict = judge_llm(model, datas, labels, "sentiment", examples_mislead, None, "7", 20, zero_shot=True)
    assert len(sample) == 20
    assert sorted(calls) == sorted([(p, True) for p in sample] + [(p, False) for p in sample])
    kept = [i for i in sampled if int(held.index[i]) != failing]
    counted = [int(held.index[i]) for i in kept]
    assert verdict is not None and verdict.n == len(counted)
    assert verdict.llm_accuracy == sum(p % 3 == 0 for p in counted) / len(counted)  # with examples
    assert verdict.zero_shot_accuracy == 1.0 and not verdict.examples
    # weighed against the LLM without examples, which was right on every unsure example
    probs, rights = [float(held.top[i]) for i in kept], [bool(held.right[i]) for i in kept]
    assert verdict.switch == best_switch(probs, rights, [True] * len(kept))
    assert verdict.switch != best_switch(probs, rights, [p % 3 == 0 for p in counted])
    assert Verdict.from_json(json.loads(json.dumps(verdict.as_json()))).examples is False

    # the same LLM with and without examples (a tie): the examples stay, and the switch is as before
    twin = judge_llm(model, datas, labels, "sentiment",
                     lambda plan, pid, data, what, examples=True: examples_mislead(plan, pid, data, what, True),
                     None, "7", 20, zero_shot=True)
    alone = judge_llm(model, datas, labels, "sentiment",
                      lambda plan, pid, data, what, examples=True: examples_mislead(plan, pid, data, what, True),
                      None, "7", 20)
    assert twin is not None and alone is not None
    assert twin.examples and twin.zero_shot_accuracy == twin.llm_accuracy and twin.switch == alone.switch


def noisy_feed(client: Any, flip: float = 0.25, per_label: int = 30) -> None:
    """Reviews whose label is sometimes another than its words say: the student stays unsure of many."""
    rng = random.Random(5)
    aid = 1
    for label, vocabulary in WORDS.items():
        for _ in range(per_label):
            given = rng.choice([lab for lab in LABELS if lab != label]) if rng.random() < flip else label
            event = annotation_event("ANNOTATION_CREATED", SENT, aid, aid, text_for(vocabulary, rng),
                                     [choice(given)], T0 + aid)
            assert client.post("/webhook", json=event).status_code == 200
            aid += 1


def trained(make_app: Any, **overrides: Any) -> Any:
    app = make_app(examples_version_policy="every", student_debounce_seconds=0.0, student_min_examples=20,
                   student_precision=1.0, **overrides)
    client = app.test_client()
    noisy_feed(client)
    model = model_of(app)
    model.worker.drain()
    students = model.predictor.pipeline.student
    assert students.settle("7", model.predictor.plan(SENT), timeout=300)  # what a refresh does first
    assert students.trainer.trained == 1
    return app


def test_the_referee_asks_the_llm_without_the_example_and_the_student_then_answers_where_it_is_likelier_right(
    make_app: Any, provider: Any
) -> None:
    provider.responder = lambda body: json_answer({"sentiment": "neutral"})  # an LLM that always says neutral
    app = trained(make_app, student_referee_sample=15)
    spec = build_task_spec(SENT)
    students = model_of(app).predictor.pipeline.student
    student = students.student("7", spec, spec.controls[0])
    assert student is not None and student.threshold > 1.0  # precision 1.0: the threshold alone never answers
    verdict = Verdict.from_json(student.referee)
    assert verdict.n >= 10 and verdict.llm_accuracy < 0.6  # "neutral" is right for about a third
    assert verdict.llm_accuracy < verdict.student_accuracy
    referee_asks = [r for r in provider.requests if "sentiment" in json.dumps(r.get("response_format") or {})]
    assert len(referee_asks) >= verdict.n
    for request in referee_asks:  # the example asked is never among its own few-shot examples
        asked = request["messages"][-1]["content"]
        earlier = " ".join(m["content"] for m in request["messages"][:-1])
        text = next(t for t in _example_texts(app) if t in asked)
        assert text not in earlier

    # a task at or above the switch: the student answers, where before (threshold above 1) the LLM was asked
    text = "wonderful excellent fantastic superb"
    ranked = student.ranked(text, students.embedder.embed([text])[0])
    assert ranked[0][1] >= verdict.switch
    before = len(provider.requests)
    item = predict(app.test_client(), text, SENT, 930)["results"][0]
    assert len(provider.requests) == before, "the student should have answered"
    assert item["result"][0]["value"]["choices"] == [ranked[0][0]]
    assert item["score"] == pytest.approx(student.top(ranked[0][1]), abs=1e-5)


def _by_the_words(body: dict[str, Any], with_examples: str | None) -> dict[str, Any]:
    """A scripted LLM that reads the task's words right; with few-shot examples in the prompt it answers
    `with_examples` instead (None: right either way)."""
    messages = body["messages"]
    if with_examples is not None and len(messages) > 2:  # system, example turns, task: examples present
        return json_answer({"sentiment": with_examples})
    words = messages[-1]["content"].lower()
    label = max(WORDS, key=lambda lab: sum(w in words for w in WORDS[lab]))
    return json_answer({"sentiment": label})


@pytest.mark.parametrize("misled", [True, False])
def test_the_llm_is_asked_without_examples_when_the_referee_found_it_better_so(
    make_app: Any, provider: Any, misled: bool
) -> None:
    """An LLM that few-shot examples mislead (it says "neutral" whenever the prompt has some) is asked
    without them once the referee has measured that; one they do not mislead keeps them."""
    provider.responder = lambda body: _by_the_words(body, "neutral" if misled else None)
    app = trained(make_app, student_referee_sample=15)
    spec = build_task_spec(SENT)
    students = model_of(app).predictor.pipeline.student
    student = students.student("7", spec, spec.controls[0])
    assert student is not None
    verdict = Verdict.from_json(student.referee)
    assert verdict.zero_shot_accuracy is not None and verdict.examples is not misled
    if misled:
        assert verdict.zero_shot_accuracy > verdict.llm_accuracy
    plan = model_of(app).predictor.plan(SENT)
    assert students.examples_help(plan, "7") is not misled
    referee_asks = [r for r in provider.requests if "sentiment" in json.dumps(r.get("response_format") or {})]
    assert sum(len(r["messages"]) == 2 for r in referee_asks) >= verdict.n  # each example asked bare too
    assert sum(len(r["messages"]) > 2 for r in referee_asks) >= verdict.n  # and with its examples

    # what a task the student leaves to the LLM is asked with (the pipeline's prompt, as /predict builds it)
    sent = model_of(app).predictor.pipeline.prompt(plan, {"text": "tuesday wonderful terrible package"}, "7")
    assert (len(sent.messages) == 2) is misled  # system and task only: no few-shot turns
    assert len(model_of(app).predictor.pipeline.prompt(plan, {"text": "noon junk"}, "7", examples=True).messages) > 2


@pytest.mark.parametrize("trusted_from", [0, 100])
def test_a_verdict_is_kept_until_the_reviews_double(make_app: Any, provider: Any, trusted_from: int) -> None:
    """...or until they reach STUDENT_TRUSTED_FROM, where a tie changes hands: measured again then."""
    provider.responder = lambda body: json_answer({"sentiment": "neutral"})
    app = trained(make_app, student_referee_sample=15, student_trusted_from=trusted_from)
    model = model_of(app)
    students = model.predictor.pipeline.student
    spec = build_task_spec(SENT)
    first = students.student("7", spec, spec.controls[0])
    asked = len(provider.requests)
    client = app.test_client()
    rng = random.Random(8)
    for aid in range(500, 510):  # 10 more reviews: 100 in all, fewer than twice the 90 measured
        event = annotation_event("ANNOTATION_CREATED", SENT, aid, aid, text_for(WORDS["positive"], rng),
                                 [choice("positive")], T0 + aid)
        assert client.post("/webhook", json=event).status_code == 200
    model.worker.drain()
    assert students.settle("7", model.predictor.plan(SENT), timeout=300)
    second = students.student("7", spec, spec.controls[0])
    assert second is not None and first is not None and second.version > first.version
    assert second.n_examples == 100
    if trusted_from == 0:
        assert second.referee == first.referee  # carried over from the store
        assert len(provider.requests) == asked  # and no LLM call was made to measure it again
    else:  # 100 reviews reach STUDENT_TRUSTED_FROM: the referee asks again
        assert second.referee is not None and Verdict.from_json(second.referee).at_examples == 100
        assert len(provider.requests) > asked


def test_without_the_referee_the_threshold_alone_decides(make_app: Any, provider: Any) -> None:
    provider.responder = lambda body: json_answer({"sentiment": "neutral"})
    app = trained(make_app, student_referee_sample=0)
    spec = build_task_spec(SENT)
    student = model_of(app).predictor.pipeline.student.student("7", spec, spec.controls[0])
    assert student is not None and student.referee is None
    before = len(provider.requests)
    predict(app.test_client(), "wonderful excellent fantastic superb", SENT, 931)
    assert len(provider.requests) == before + 1  # unsure by the threshold: the LLM answers


def test_the_switch_gets_the_most_held_out_examples_right_and_prefers_the_student_on_ties() -> None:
    from backend.learning.referee import best_switch
    from backend.learning.students import _answers, _likelier_than_llm

    probs = [i / 20 for i in range(20)]
    # the LLM is right on the hard half, the student on the easy half: switch at 0.5 (10 wins, 0 losses)
    assert best_switch(probs, [0] * 10 + [1] * 10, [1] * 10 + [0] * 10) == 0.5
    assert best_switch(probs, [1] * 20, [1] * 20) == 0.0  # as good as the LLM: the student answers all
    assert best_switch(probs, [0] * 20, [1] * 20) == 2.0  # the LLM is better on every one: never
    assert best_switch(probs, [1, 0] * 10, [0] * 20) == 0.0  # an LLM that gets nothing right
    # below 0.15 the LLM wins the 3 examples: the most right, but three heads in a row happen (p = 0.125)
    few = [0, 0, 0, 1] + [1] * 16
    assert best_switch(probs, few, [1, 1, 1, 0] + [0] * 16) == 0.0
    assert best_switch(probs, few, [1, 1, 1, 0] + [0] * 16, alpha=0.2) == 0.15
    # a student trained on too few reviews to switch on its probability: the one with more right takes all
    assert count_switch(few, [1, 1, 1, 0] + [0] * 16) == 0.0  # 17 right against 3
    assert count_switch([1] * 20, [1] * 20) == 2.0  # an equal count: the LLM, until the student is ahead
    assert count_switch([1] * 10 + [0] * 10, [1] * 9 + [0] * 11) == 0.0  # ahead by one
    assert count_switch(few, [1] * 19 + [0]) == 2.0  # 19 right against 17
    assert best_switch(probs, few, [1] * 19 + [0]) == 0.0  # (the test: three wins are a coin toss)
    assert count_switch([0] * 10 + [1] * 10, [1] * 9 + [0] * 11) == 0.0  # 10 against 9: no switch between
    assert best_switch(probs, [0] * 10 + [1] * 10, [1] * 9 + [0] * 11) == 0.45  # where the test finds one
    model, _ = noisy_model()
    judged = replace(model, referee=Verdict(0.8, 0.6, 40, 90, 0.5).as_json())
    assert not _likelier_than_llm(judged, 0.49) and _likelier_than_llm(judged, 0.5)
    assert not _likelier_than_llm(replace(model, referee=None), 0.99)  # no verdict: the threshold decides
    # the cascade: above the threshold the student answers, unless a verdict on it as a whole says the LLM
    sure = replace(model, threshold=0.6)
    assert _answers(replace(sure, referee=Verdict(0.8, 0.6, 40, 90, 2.0).as_json()), 0.7)
    assert not _answers(replace(sure, referee=Verdict(0.8, 0.6, 40, 90, 2.0).as_json()), 0.5)
    assert not _answers(replace(sure, referee=Verdict(0.8, 0.6, 40, 49, 2.0, whole=True).as_json()), 0.99)
    assert _answers(replace(sure, referee=Verdict(0.5, 0.6, 40, 49, 0.0, whole=True).as_json()), 0.1)


def test_the_llm_score_uses_the_llms_own_probability_and_the_students() -> None:
    from backend.learning.calibration import auroc

    rng = np.random.default_rng(6)
    right = rng.random(400) < 0.5
    llm_p = np.where(right, rng.uniform(0.5, 1.0, 400), rng.uniform(0.2, 0.8, 400))  # informative, overlapping
    student_p = np.where(right, rng.uniform(0.1, 0.6, 400), rng.uniform(0.0, 0.4, 400))
    weights = fit_llm_score(llm_p[:40], student_p[:40], right[:40])  # fitted on 40, as the referee does
    assert weights is not None and weights[0] > 0 and weights[1] > 0
    scores = [llm_score(weights, a, b) for a, b in zip(llm_p[40:], student_p[40:])]
    assert all(0.0 < v < 1.0 for v in scores)
    assert auroc(scores, right[40:]) > max(auroc(llm_p[40:], right[40:]), auroc(student_p[40:], right[40:]))
    assert fit_llm_score([0.9, 0.8], [0.5, 0.5], [True, True]) is None  # nothing to separate


def test_the_llm_score_leaves_out_a_student_that_knows_nothing() -> None:
    """A student probability that carries no signal on the referee's examples must not enter the score,
    which then ranks as the LLM's own probability does. (At 50 TweetEval reviews a fit of both ranked the
    LLM's answers at AUROC 0.498 where its own probability gave 0.721; there the 40 examples did favour
    both, so this rule leaves that figure as it was.)"""
    from backend.learning.calibration import auroc

    rng = np.random.default_rng(3)
    right = rng.random(440) < 0.5
    llm_p = np.where(right, rng.uniform(0.5, 1.0, 440), rng.uniform(0.2, 0.8, 440))
    student_p = rng.uniform(0.0, 0.5, 440)  # noise
    weights = fit_llm_score(llm_p[:40], student_p[:40], right[:40])
    assert weights is not None and weights[0] > 0 and weights[1] == 0.0
    scores = [llm_score(weights, a, b) for a, b in zip(llm_p[40:], student_p[40:])]
    assert auroc(scores, right[40:]) == pytest.approx(auroc(llm_p[40:], right[40:]))


def test_the_llm_score_never_turns_certainty_into_doubt() -> None:
    """On a few dozen examples where the more certain answers happened to be wrong more often, no weight
    goes negative and the score is the examples' share of right answers, whatever the student says: the
    LLM's own certainty is always one of the score's inputs."""
    right = [True, False] * 20
    llm_p = [0.6 if r else 0.9 for r in right]  # wrong answers the more certain ones
    for student_p in ([0.3] * 40, [0.5 if r else 0.2 for r in right]):  # the student silent, then helpful
        weights = fit_llm_score(llm_p, student_p, right)
        assert weights is not None and weights[0] == weights[1] == 0.0
        assert llm_score(weights, 0.9, 0.3) == pytest.approx(0.5)


def test_the_llm_score_keeps_the_llms_own_certainty() -> None:
    """SST-2 at 50 reviews: on the referee's 40 examples the student's probability alone had the lowest
    log loss, and a score on it alone was nearly constant (AUROC 0.565 where the LLM's own gave 0.731)."""
    rng = np.random.default_rng(0)  # a draw where the student's alone wins the log loss
    right = rng.random(40) < 0.75
    llm_p = np.where(right, rng.uniform(0.55, 1.0, 40), rng.uniform(0.5, 0.9, 40))  # weakly informative
    student_p = np.where(right, rng.uniform(0.3, 0.9, 40), rng.uniform(0.1, 0.6, 40))
    weights = fit_llm_score(llm_p, student_p, right)
    assert weights is not None and weights[0] > 0


def test_a_student_that_never_saw_a_label_does_not_bury_the_llms_right_answers() -> None:
    """The active-learning benchmark's refresh (100 reviews of 77 intents): the LLM was right on 91% of
    200 tasks, often on intents the student had seen once or never (its probability under 0.002), and
    the fitted score put those right answers lowest: the 20% lowest-scored tasks held 0.167 of the
    errors. Read no lower than STUDENT_FLOOR, they held 0.833. Here: the same shape, ten draws of 40
    reviews and 200 tasks (without the floor: 0.42 on average, under a third in five draws)."""

    def sample(rng: np.random.Generator, n: int, right_rate: float,
               rare: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        right = rng.random(n) < right_rate
        llm_p = np.where(right, rng.uniform(0.7, 0.99, n), rng.uniform(0.3, 0.86, n))
        student_p = np.where(right, np.where(rng.random(n) < rare, rng.uniform(0.0, 0.002, n),
                                             rng.uniform(0.02, 0.3, n)), rng.uniform(0.002, 0.03, n))
        return right, llm_p, student_p

    shares = []
    for seed in range(10):
        rng = np.random.default_rng(seed)
        right, llm_p, student_p = sample(rng, 40, 0.48, 0.1)  # the referee's held-out reviews
        weights = fit_llm_score(llm_p, student_p, right)
        assert weights is not None and weights[0] > 0
        right, llm_p, student_p = sample(rng, 200, 0.91, 0.6)  # the tasks nobody reviewed
        scores = np.array([llm_score(weights, a, b) for a, b in zip(llm_p, student_p)])
        lowest = np.argsort(scores, kind="stable")[:40]
        shares.append((~right[lowest]).sum() / (~right).sum())
    assert np.mean(shares) >= 0.6


def _example_texts(app: Any) -> list[str]:
    with model_of(app).examples.engine.connect() as conn:
        rows = model_of(app).examples.all_rows(conn, "7", ["live"])
    return [row.data["text"] for row in rows]
