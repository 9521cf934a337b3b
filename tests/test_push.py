"""PushDelivery (large "Retrieve predictions" runs, pushed to Label Studio) with a fake sender and a
scripted predictor, on a real SQLite store: claims, batching, counting, and that every claimed task
ends either pushed or released (so the next retrieve asks for it again), whatever fails."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from conftest import wait_for
from sqlalchemy import func, select

from backend.labelstudio.push import PushDelivery
from backend.metrics import Metrics
from backend.predict.predictor import ProjectPlan, TaskResult
from backend.store.db import make_engine, migrate, push_jobs

VERSION = "v-push"
PROJECT = "7"
PLAN: Any = None  # the scripted predictor never reads the plan


class FakeSender:
    """Records every call; fails the first `fail_calls` calls (all of them with fail_calls=-1)."""

    def __init__(self, fail_calls: int = 0) -> None:
        self.calls: list[tuple[str, str, str, list[dict[str, Any]]]] = []
        self.failures = 0
        self.fail_calls = fail_calls
        self._lock = threading.Lock()

    def __call__(self, url: str, token: str, project_id: str, items: list[dict[str, Any]]) -> None:
        with self._lock:
            if self.fail_calls < 0 or self.failures < self.fail_calls:
                self.failures += 1
                raise ConnectionError("scripted push failure")
            self.calls.append((url, token, project_id, list(items)))

    @property
    def delivered(self) -> list[int]:
        return [item["task"] for *_, items in self.calls for item in items]


class ScriptedPredictor:
    """predict_stream answers a prediction per task, [] for the ids in `fail`, and raises
    RuntimeError instead of the task at position `crash_at` (None: never)."""

    def __init__(self, fail: frozenset[int] = frozenset(), crash_at: int | None = None,
                 on_task: Callable[[int], None] | None = None) -> None:
        self.fail = fail
        self.crash_at = crash_at
        self.on_task = on_task  # called with each task's position before it is answered

    def predict_stream(
        self, plan: ProjectPlan, tasks: Sequence[Mapping[str, Any]], model_version: str, project_id: str | None = None
    ) -> Iterator[tuple[Mapping[str, Any], TaskResult]]:
        for n, task in enumerate(tasks):
            if n == self.crash_at:
                raise RuntimeError("scripted bug in the predictor")
            if self.on_task is not None:
                self.on_task(n)
            if task["id"] in self.fail:
                yield task, TaskResult([], error="scripted", reason="llm_server")
                continue
            item = {"result": [{"from_name": "sentiment", "to_name": "text", "type": "choices",
                                "value": {"choices": ["positive"]}}], "score": 0.9, "model_version": model_version}
            yield task, TaskResult(item)


def tasks(n: int) -> list[dict[str, Any]]:
    return [{"id": i, "data": {"text": f"review {i}"}} for i in range(n)]


def delivery(tmp_path: Path, predictor: ScriptedPredictor, sender: FakeSender, **kw: Any) -> PushDelivery:
    engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    migrate(engine)
    return PushDelivery(engine, predictor, Metrics(), sender=sender, **kw)


def counted(push: PushDelivery, outcome: str) -> float:
    return push.metrics.registry.get_sample_value("lsllm_tasks_total", {"outcome": outcome}) or 0.0


def claim_and_run(push: PushDelivery, n: int) -> None:
    todo = tasks(n)
    assert push.claim(PROJECT, VERSION, [t["id"] for t in todo]) == set(range(n))
    push.run(PLAN, PROJECT, VERSION, todo, "http://ls.example", "token-123")


def test_every_task_is_pushed_in_batches_and_counted(tmp_path) -> None:
    sender = FakeSender()
    push = delivery(tmp_path, ScriptedPredictor(), sender, batch_size=10, max_push=25)
    claim_and_run(push, 57)
    assert sorted(sender.delivered) == list(range(57))  # each task once
    assert all(len(items) <= 25 for *_, items in sender.calls)  # no call above max_push
    assert len(sender.calls) >= 3  # 57 items need at least three calls of 25
    assert {(url, token, project) for url, token, project, _ in sender.calls} == {
        ("http://ls.example", "token-123", PROJECT)}
    assert all(item["model_version"] == VERSION and item["score"] == 0.9 for *_, items in sender.calls
               for item in items)
    assert push.status(PROJECT, VERSION) == {"pushed": 57}
    assert counted(push, "pushed") == 57 and counted(push, "push_failed") == 0
    assert push.claim(PROJECT, VERSION, [0, 1]) == set()  # pushed: never claimed again for this version


def test_a_failed_push_releases_its_claims(tmp_path) -> None:
    sender = FakeSender(fail_calls=-1)
    push = delivery(tmp_path, ScriptedPredictor(), sender, batch_size=4, retries=0)
    claim_and_run(push, 10)
    assert sender.calls == [] and sender.failures >= 1
    assert push.status(PROJECT, VERSION) == {}  # released: the next retrieve asks for them again
    assert sorted(push.undelivered) == list(range(10))
    assert counted(push, "push_failed") == 10 and counted(push, "pushed") == 0
    assert push.claim(PROJECT, VERSION, list(range(10))) == set(range(10))


def test_a_push_that_fails_once_is_retried(tmp_path) -> None:
    sender = FakeSender(fail_calls=1)
    push = delivery(tmp_path, ScriptedPredictor(), sender, batch_size=100, retries=1)
    claim_and_run(push, 5)
    assert sender.failures == 1 and sorted(sender.delivered) == list(range(5))
    assert push.status(PROJECT, VERSION) == {"pushed": 5} and not push.undelivered


def test_a_failed_prediction_releases_only_its_task(tmp_path) -> None:
    sender = FakeSender()
    push = delivery(tmp_path, ScriptedPredictor(fail=frozenset({3, 7})), sender, batch_size=4)
    claim_and_run(push, 10)
    assert sorted(sender.delivered) == [0, 1, 2, 4, 5, 6, 8, 9]
    assert push.status(PROJECT, VERSION) == {"pushed": 8}
    assert push.claim(PROJECT, VERSION, [3, 7, 8]) == {3, 7}  # asked again: predicted again


def test_an_error_in_the_run_releases_every_claim_not_settled(tmp_path) -> None:
    """Bug: an exception in the run was logged and its remaining claims stayed queued for
    stale_seconds (900 s), so the next retrieves skipped those tasks for a quarter of an hour."""
    sender = FakeSender()
    push = delivery(tmp_path, ScriptedPredictor(crash_at=6), sender, batch_size=4)
    claim_and_run(push, 10)
    assert sorted(sender.delivered) == list(range(6))  # what was predicted before the error is pushed
    assert push.status(PROJECT, VERSION) == {"pushed": 6}  # nothing left queued
    assert push.claim(PROJECT, VERSION, list(range(10))) == set(range(6, 10))


def test_a_claim_is_taken_over_only_when_stale(tmp_path) -> None:
    push = delivery(tmp_path, ScriptedPredictor(), FakeSender(), stale_seconds=900.0)
    assert push.claim(PROJECT, VERSION, [1, 2]) == {1, 2}
    assert push.claim(PROJECT, VERSION, [1, 2, 3]) == {3}  # in flight elsewhere
    assert push.claim(PROJECT, "another-version", [1]) == {1}  # claims are per model_version
    push.stale_seconds = -1.0  # every queued claim is now older than the limit (its process died)
    assert push.claim(PROJECT, VERSION, [1, 2]) == {1, 2}


def test_a_slow_run_keeps_its_claims_from_a_second_retrieve(tmp_path) -> None:
    """Bug: a run touched nothing while it predicted, so a claim queued for longer than stale_seconds
    was taken for a dead process's while its run was alive and only slow. A 1,000-task run on the
    embedded model (about 3 s a task) still holds its last claims after the 15 minutes; a second
    "Retrieve predictions" then predicted and pushed them again: two predictions of one version."""
    clock = Clock()
    sender = FakeSender()
    again: list[set[int]] = []

    def slow(position: int) -> None:
        if position == 2:
            clock.now += 901  # the run has spent longer than stale_seconds on its first tasks
            wait_for(lambda: oldest_queued_claim(push) >= clock.now, 5, 0.01)  # a heartbeat, if there is one
            again.append(push.claim(PROJECT, VERSION, [t["id"] for t in tasks(10)]))  # Label Studio asks again

    push = delivery(tmp_path, ScriptedPredictor(on_task=slow), sender, stale_seconds=900.0, clock=clock)
    push.beat_seconds = 0.01
    claim_and_run(push, 10)
    assert again == [set()]  # every task is still this run's
    assert sorted(sender.delivered) == list(range(10))  # each pushed once
    assert push.status(PROJECT, VERSION) == {"pushed": 10}


def test_a_run_queued_behind_a_slow_one_keeps_its_claims(tmp_path) -> None:
    """Runs go one at a time; a run's claims must stay fresh while it waits for the one ahead, or a
    second "Retrieve predictions" of its tasks takes them over and both runs push them."""
    clock = Clock()
    sender = FakeSender()
    hold = threading.Event()
    push = delivery(tmp_path, ScriptedPredictor(on_task=lambda position: hold.wait(10)), sender,
                    stale_seconds=900.0, clock=clock)
    push.beat_seconds = 0.01
    first, second = tasks(2), [{"id": i, "data": {"text": f"review {i}"}} for i in (10, 11)]
    assert push.claim(PROJECT, VERSION, [0, 1, 10, 11]) == {0, 1, 10, 11}
    push.submit(PLAN, PROJECT, VERSION, first, "http://ls.example", "token-123")  # holds the one thread
    push.submit(PLAN, PROJECT, VERSION, second, "http://ls.example", "token-123")  # waits behind it
    clock.now += 901
    wait_for(lambda: oldest_queued_claim(push) >= clock.now, 5, 0.01)
    again = push.claim(PROJECT, VERSION, [10, 11])
    hold.set()
    assert wait_for(lambda: push.status(PROJECT, VERSION) == {"pushed": 4}, 10, 0.01)
    push.close()
    assert again == set()
    assert sorted(sender.delivered) == [0, 1, 10, 11]


def test_a_queued_run_cancelled_by_close_stops_beating(tmp_path) -> None:
    """close() cancels the runs still queued; their heartbeats must end with them, or their claims stay
    fresh for as long as the process lives and no other process ever takes them over."""
    hold = threading.Event()
    push = delivery(tmp_path, ScriptedPredictor(on_task=lambda position: hold.wait(10)), FakeSender())
    push.beat_seconds = 0.01
    first, second = tasks(1), [{"id": 10, "data": {"text": "review 10"}}]
    push.claim(PROJECT, VERSION, [0, 10])
    before = set(threading.enumerate())  # only this test's heartbeats count
    push.submit(PLAN, PROJECT, VERSION, first, "http://ls.example", "token-123")
    push.submit(PLAN, PROJECT, VERSION, second, "http://ls.example", "token-123")
    beating = [t for t in set(threading.enumerate()) - before if t.name == f"push {PROJECT} heartbeat"]
    assert len(beating) == 2  # the running run's and the queued one's
    push.close()
    hold.set()
    assert wait_for(lambda: not any(t.is_alive() for t in beating), 5, 0.01)
    assert push.status(PROJECT, VERSION) == {"pushed": 1, "queued": 1}  # the cancelled run's claim, left to expire


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def oldest_queued_claim(push: PushDelivery) -> float:
    with push.engine.connect() as conn:
        oldest = conn.execute(select(func.min(push_jobs.c.updated_at)).where(push_jobs.c.status == "queued"))
        return float(oldest.scalar_one() or 0.0)


def test_submit_after_close_releases_the_claims(tmp_path) -> None:
    sender = FakeSender()
    push = delivery(tmp_path, ScriptedPredictor(), sender)
    todo = tasks(3)
    push.claim(PROJECT, VERSION, [t["id"] for t in todo])
    push.close()
    push.submit(PLAN, PROJECT, VERSION, todo, "http://ls.example", "token-123")
    assert push.status(PROJECT, VERSION) == {} and sender.calls == []


def test_submit_runs_in_the_background(tmp_path) -> None:
    sender = FakeSender()
    push = delivery(tmp_path, ScriptedPredictor(), sender, batch_size=3)
    todo = tasks(7)
    push.claim(PROJECT, VERSION, [t["id"] for t in todo])
    push.submit(PLAN, PROJECT, VERSION, todo, "http://ls.example", "token-123")
    push._pool.shutdown(wait=True)  # the run is done when its thread is
    assert sorted(sender.delivered) == list(range(7)) and push.status(PROJECT, VERSION) == {"pushed": 7}
