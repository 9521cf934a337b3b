"""prelabel --batch against the scripted provider's Batch API (files, batches, polling, output file)
through the real openai SDK: every task answered, validated and pushed, half the price, cached tasks
never uploaded, and an interrupted run's batch collected by the next run without paying again."""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import assert_valid, config, make_settings
from scripted_provider import Reply, ScriptedProvider, last_user_text
from webhook_payloads import annotation_event, choice

from backend.llm.pricing import PriceTable
from backend.runs.batch_api import BatchOptions, BatchRun
from backend.runs.prelabel import RunTarget
from backend.service.app import build_model

SENT = config("sentiment")
LABELS = ("positive", "negative", "neutral")


def answer(body: dict) -> Reply:
    text = last_user_text(body)
    if text.endswith("13"):
        return Reply(status=500, error="scripted failure for one line")
    return Reply(content=json.dumps({"sentiment": LABELS[int(text.rsplit(" ", 1)[-1]) % 3]}))


def tasks(n: int) -> list[dict[str, Any]]:
    return [{"id": i, "data": {"text": f"review number {i}"}, "predictions": []} for i in range(n)]


class Progress:
    def __init__(self, interrupt_after: int | None = None) -> None:
        self.n, self.interrupt_after, self.polls = 0, interrupt_after, 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix_str(self, s: str, refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass


def run(tmp_path, provider, todo, progress=None, settings=None, **options) -> tuple[Any, list[dict[str, Any]]]:
    settings = settings or make_settings(tmp_path, provider.base_url, llm_model="gpt-4o-mini")
    model = build_model(settings)
    plan = model.predictor.plan(SENT)
    pushed: list[dict[str, Any]] = []
    target = RunTarget(model.predictor, plan, "v-batch", "7", pushed.extend, PriceTable.from_setting(None))
    runner = BatchRun(target, BatchOptions(tmp_path / "state.json", poll_seconds=0.01, **options), progress)
    try:
        return runner.run(iter(todo)), pushed
    finally:
        model.close()


def test_batch_answers_validates_and_pushes_every_task_at_half_price(tmp_path) -> None:
    with ScriptedProvider(answer) as provider:
        todo = tasks(30)
        todo[5]["predictions"] = [{"model_version": "v-batch"}]  # done before: skipped
        stats, pushed = run(tmp_path, provider, todo, max_requests=12)
        emulator = provider.batches
    assert emulator.uploads == 3 and emulator.lines_answered == 29  # 12 + 12 + 5 requests
    assert len(provider.requests) == 0  # no live call at all
    assert stats.skipped == 1 and stats.pushed == stats.predicted == 28
    assert dict(stats.failed) == {"batch_http_500": 1}  # the line the provider failed (task 13)
    for item in pushed:
        text = f"review number {item['task']}"
        assert item["result"][0]["value"]["choices"] == [LABELS[item["task"] % 3]]
        assert_valid(SENT, {"text": text}, {"result": item["result"], "score": item["score"]})
    live = PriceTable.from_setting(None).cost("gpt-4o-mini", stats.prompt_tokens, stats.completion_tokens)
    assert stats.cost == pytest.approx(live / 2)
    assert not (tmp_path / "state.json").exists()  # nothing left running


def test_cached_tasks_are_not_uploaded_and_answers_are_cached(tmp_path) -> None:
    with ScriptedProvider(answer) as provider:
        run(tmp_path, provider, tasks(10))
        stats, _pushed = run(tmp_path, provider, tasks(10))  # Label Studio lost them: all asked again
        emulator = provider.batches
    assert emulator.uploads == 1  # the second run found every answer in the response cache
    assert stats.cache_hits == 10 and stats.pushed == 10 and stats.cost == 0


def test_interrupted_run_leaves_the_batch_running_and_the_next_run_collects_it(tmp_path) -> None:
    class Interrupting(Progress):
        def update(self, n: int = 1) -> None:
            raise KeyboardInterrupt

    with ScriptedProvider(answer) as provider:
        stats1, pushed1 = run(tmp_path, provider, tasks(8), progress=Interrupting())
        assert stats1.stopped == "interrupted" and stats1.exit_code() == 130 and not pushed1
        assert json.loads((tmp_path / "state.json").read_text())["batches"][0]["id"].startswith("batch_")
        stats2, pushed2 = run(tmp_path, provider, tasks(8))
        emulator = provider.batches
    assert emulator.uploads == 1  # collected, not submitted again
    assert sorted(i["task"] for i in pushed2) == list(range(8)) and stats2.exit_code() == 0
    assert not (tmp_path / "state.json").exists()


def test_answers_collected_after_the_examples_changed_are_treated_as_the_requests_that_were_sent(tmp_path) -> None:
    """Bug: collection rendered each prompt again with the current examples and shortlist, so the answer
    was cached under a key never sent and validated against another spec. Here the shortlist (2 of 3
    labels) is [positive, neutral] when the batch starts; reviewed "negative" examples arriving while it
    runs make a re-rendered prompt hold few-shot examples and the shortlist [positive, negative]."""

    def last_listed_label(body: dict) -> Reply:
        enum = body["response_format"]["json_schema"]["schema"]["properties"]["sentiment"]["enum"]
        return Reply(content=json.dumps({"sentiment": enum[-1]}))

    class Interrupting(Progress):
        def update(self, n: int = 1) -> None:
            raise KeyboardInterrupt

    todo = tasks(6)
    with ScriptedProvider(last_listed_label) as provider:
        settings = make_settings(tmp_path, provider.base_url, llm_model="gpt-4o-mini", label_shortlist_threshold=2,
                                 label_shortlist_size=2, selection_refresh_seconds=0)
        stats1, _ = run(tmp_path, provider, todo, progress=Interrupting(), settings=settings)
        assert stats1.stopped == "interrupted"  # the batch is started and left running

        model = build_model(settings)
        try:
            plan = model.predictor.plan(SENT)
            sent = {t["id"]: model.predictor.prompt(plan, {"text": t["data"]["text"]}, "7") for t in todo}
            assert all(p.spec.controls[0].display_labels() == ["positive", "neutral"] for p in sent.values())
            for aid in range(100, 104):  # reviewers label similar reviews while the batch runs
                event = annotation_event("ANNOTATION_CREATED", SENT, aid, aid, f"review number {aid}",
                                         [choice("negative")], 1_790_000_000.0)
                model.fit(event["action"], event)
            model.worker.drain()
            now = model.predictor.prompt(plan, {"text": "review number 1"}, "7")
            assert now.spec.controls[0].display_labels() == ["positive", "negative"]  # a re-render differs
            assert now.messages != sent[1].messages
        finally:
            model.close()

        stats2, pushed = run(tmp_path, provider, todo, settings=settings)  # collects the running batch
        assert provider.batches.uploads == 1 and stats2.exit_code() == 0

        # validated against the spec it was asked with: "neutral" was on the task's shortlist
        answered = {i["task"]: [r["value"]["choices"] for r in i["result"]] for i in pushed}
        assert answered == {t: [["neutral"]] for t in range(6)}
        for item in pushed:
            assert_valid(SENT, {"text": f"review number {item['task']}"}, {"result": item["result"]})

        # cached under the key that was sent: a live call of the original request is a cache hit
        model = build_model(settings)
        try:
            options = model.predictor.call_options(plan)
            for prompt in sent.values():
                answer = model.predictor.llm.complete(prompt.messages, prompt.schema, options)
                assert answer.cached and json.loads(answer.content) == {"sentiment": "neutral"}
            assert len(provider.requests) == 0  # no live call reached the provider
        finally:
            model.close()


def test_a_batch_started_by_an_older_version_is_still_collected(tmp_path) -> None:
    """State files written before the requests were kept hold only each task's data: collecting them
    must not fail (the batch is paid for); their answers are matched to a prompt rendered again."""

    class Interrupting(Progress):
        def update(self, n: int = 1) -> None:
            raise KeyboardInterrupt

    with ScriptedProvider(answer) as provider:
        run(tmp_path, provider, tasks(4), progress=Interrupting())
        state = json.loads((tmp_path / "state.json").read_text())
        for entry in state["batches"]:
            entry["tasks"] = {tid: sent["data"] for tid, sent in entry.pop("requests").items()}
        (tmp_path / "state.json").write_text(json.dumps(state))
        stats, pushed = run(tmp_path, provider, tasks(4))
    assert sorted(i["task"] for i in pushed) == list(range(4)) and stats.exit_code() == 0
    assert not (tmp_path / "state.json").exists()
