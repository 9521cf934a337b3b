"""prelabel --batch against the scripted provider's Batch API (files, batches, polling, output file)
through the real openai SDK: every task answered, validated and pushed, half the price, cached tasks
never uploaded, and an interrupted run's batch collected by the next run without paying again."""

from __future__ import annotations

import json
from typing import Any

import pytest

from backend.service.app import build_model
from backend.runs.batch_api import BatchOptions, BatchRun
from backend.runs.prelabel import RunTarget
from backend.llm.pricing import PriceTable
from conftest import assert_valid, config, make_settings
from scripted_provider import Reply, ScriptedProvider, last_user_text

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


def run(tmp_path, provider, todo, progress=None, **options) -> tuple[Any, list[dict[str, Any]]]:
    settings = make_settings(tmp_path, provider.base_url, llm_model="gpt-4o-mini")
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
        stats, pushed = run(tmp_path, provider, tasks(10))  # Label Studio lost them: all asked again
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
