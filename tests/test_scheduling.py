"""Interactive work goes first: the limiter's urgent callers, the scheduler's two lanes, and an
annotator's /predict while a large pushed retrieve is in flight. (The latency goal itself is measured in
benchmarks/interactive_lane.py; these tests check the order, not the clock.)"""

from __future__ import annotations

import threading
import time
from typing import Any

from conftest import config, json_answer, make_settings
from scripted_provider import Reply, ScriptedProvider, last_user_text

from backend.llm.limiter import AdaptiveLimiter
from backend.service.app import build_model


def _wait_until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def test_an_urgent_waiter_takes_the_next_slot_before_earlier_bulk_waiters() -> None:
    limiter = AdaptiveLimiter(1)
    assert limiter.acquire(timeout=0)  # the one slot is busy
    order: list[str] = []

    def take(name: str, urgent: bool) -> None:
        assert limiter.acquire(timeout=5, urgent=urgent)
        order.append(name)
        limiter.succeeded()

    bulk = [threading.Thread(target=take, args=(f"bulk{i}", False)) for i in range(5)]
    for t in bulk:
        t.start()
    time.sleep(0.05)  # the bulk callers are waiting first
    urgent = threading.Thread(target=take, args=("urgent", True))
    urgent.start()
    _wait_until(lambda: limiter._urgent_waiting == 1)
    limiter.succeeded()  # free the slot
    for t in [*bulk, urgent]:
        t.join(5)
    assert order[0] == "urgent", order
    assert sorted(order[1:]) == [f"bulk{i}" for i in range(5)]
    assert limiter.in_flight == 0


def test_bulk_callers_still_get_every_slot_when_nobody_is_urgent() -> None:
    limiter = AdaptiveLimiter(3)
    assert all(limiter.acquire(timeout=0) for _ in range(3))
    assert not limiter.acquire(timeout=0.05)
    limiter.succeeded()
    assert limiter.acquire(timeout=1)


def test_an_urgent_waiter_that_times_out_does_not_block_bulk_callers() -> None:
    limiter = AdaptiveLimiter(1)
    assert limiter.acquire(timeout=0)
    assert not limiter.acquire(timeout=0.05, urgent=True)
    assert limiter._urgent_waiting == 0
    got = []
    waiter = threading.Thread(target=lambda: got.append(limiter.acquire(timeout=5)))
    waiter.start()
    time.sleep(0.02)
    limiter.succeeded()
    waiter.join(5)
    assert got == [True]


def test_an_annotators_predict_is_answered_while_a_large_push_is_queued(tmp_path: Any) -> None:
    """400 bulk tasks are queued on one provider slot; a single interactive task must be answered next,
    not after them. The provider records the order in which it received the texts."""
    seen: list[str] = []
    release = threading.Event()

    def respond(body: dict[str, Any]) -> Reply:
        text = last_user_text(body)
        seen.append(text)
        if text.startswith("bulk") and not release.is_set():
            release.wait(5)  # hold the first bulk call so everything else queues behind it
        return json_answer({"sentiment": "Positive"})

    with ScriptedProvider(respond) as provider:
        settings = make_settings(tmp_path, provider.base_url, llm_max_concurrency=1, llm_cache=False)
        model = build_model(settings)
        try:
            plan = model.predictor.plan(config("sentiment"))
            bulk = [{"id": i, "data": {"text": f"bulk task {i}"}} for i in range(400)]
            stream = model.predictor.predict_stream(plan, bulk, "v1")
            collector = threading.Thread(target=lambda: list(stream))
            collector.start()
            _wait_until(lambda: len(seen) == 1)  # the first bulk call holds the only slot
            answered: list[Any] = []
            annotator = threading.Thread(target=lambda: answered.extend(model.predictor.predict_tasks(
                plan, [{"id": 9999, "data": {"text": "the annotator's task"}}], "v1", deadline_seconds=30)))
            annotator.start()
            _wait_until(lambda: model.predictor.llm.limiter._urgent_waiting == 1)
            release.set()
            annotator.join(10)
            assert answered and answered[0].item and answered[0].item["result"], answered
            # the provider got the annotator's task right after the bulk call that held the slot
            assert seen[1] == "the annotator's task", seen[:5]
            collector.join(60)
            assert len(seen) == 401
        finally:
            model.close()
