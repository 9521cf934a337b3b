"""Refreshed predictions (issue 13): when a project's version moves, its un-annotated tasks are predicted
again least confident first and pushed with the new model_version, within the limits (tasks per
version, cost per day, unpriced models), skipping tasks annotated meanwhile, debounced, claimed in the
store (one process per refresh, resumed after a crash), never two predictions of one version per task.
Label Studio is a fake TaskSource + Sender; the store is real SQLite."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from conftest import wait_for
from sqlalchemy import update

from backend.labelstudio.push import PushDelivery
from backend.llm.pricing import PriceTable
from backend.metrics import Metrics
from backend.predict.pipeline import TaskResult
from backend.runs.refresh import Refresher, RefreshLimits, current_score, refresh_candidates
from backend.store.db import make_engine, migrate, projects
from backend.store.jobs_store import JobsStore
from backend.store.project_store import ProjectStore

PROJECT = "7"
CONFIG = '<View><Text name="text" value="$text"/><Choices name="c" toName="text"><Choice value="a"/></Choices></View>'


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeLabelStudio:
    """Tasks with predictions and annotations; the sender stores predictions like import/predictions."""

    def __init__(self, scores: dict[int, float | None]) -> None:
        self.tasks: dict[int, dict[str, Any]] = {}
        self.next_prediction = 1000
        for task_id, score in scores.items():
            preds = [] if score is None else [{"id": task_id, "model_version": "v-e0", "score": score}]
            self.tasks[task_id] = {"id": task_id, "data": {"text": f"t{task_id}"}, "total_annotations": 0,
                                   "cancelled_annotations": 0, "predictions": preds}
        self.annotate_on_recheck: set[int] = set()
        self.pushes: list[list[dict[str, Any]]] = []
        self.fail_push = False
        self._lock = threading.Lock()

    def annotate(self, task_id: int) -> None:
        self.tasks[task_id]["total_annotations"] = 1

    # TaskSource
    def tasks_of(self, url: str, token: str, project_id: str) -> list[dict[str, Any]]:
        return [dict(t, predictions=list(t["predictions"])) for t in self.tasks.values()]

    def annotated(self, url: str, token: str, project_id: str, task_ids: Sequence[int]) -> set[int]:
        for task_id in self.annotate_on_recheck & set(task_ids):
            self.annotate(task_id)  # a reviewer saved it while the model was predicting
        return {t for t in task_ids if self.tasks[t]["total_annotations"]}

    # Sender
    def send(self, url: str, token: str, project_id: str, items: list[dict[str, Any]]) -> None:
        if self.fail_push:
            raise ConnectionError("Label Studio is down")
        with self._lock:
            self.pushes.append(items)
            for item in items:
                self.next_prediction += 1
                self.tasks[item["task"]]["predictions"].append(
                    {"id": self.next_prediction, "model_version": item["model_version"], "score": item["score"]})

    def versions_per_task(self) -> dict[int, list[str]]:
        return {t: [p["model_version"] for p in task["predictions"]] for t, task in self.tasks.items()}


class Source:
    def __init__(self, ls: FakeLabelStudio) -> None:
        self.ls = ls

    def tasks(self, url: str, token: str, project_id: str) -> list[dict[str, Any]]:
        return self.ls.tasks_of(url, token, project_id)

    def annotated(self, url: str, token: str, project_id: str, task_ids: Sequence[int]) -> set[int]:
        return self.ls.annotated(url, token, project_id, task_ids)


class Predictor:
    """Answers each task with score 0.9; 1000 prompt + 100 completion tokens unless `cached`."""

    def __init__(self, cached: frozenset[int] = frozenset(), on_task: Any = None) -> None:
        self.order: list[int] = []
        self.cached = cached
        self.on_task = on_task

    def predict_stream(
        self, plan: Any, tasks: Sequence[Mapping[str, Any]], model_version: str, project_id: str | None = None
    ) -> Iterator[tuple[Mapping[str, Any], TaskResult]]:
        for task in tasks:
            self.order.append(int(task["id"]))
            if self.on_task is not None:
                self.on_task(int(task["id"]))
            item = {"result": [{"from_name": "c", "to_name": "text", "type": "choices", "value": {"choices": ["a"]}}],
                    "score": 0.9, "model_version": model_version}
            cached = int(task["id"]) in self.cached
            yield task, TaskResult(item, cached=cached, prompt_tokens=0 if cached else 1000,
                                   completion_tokens=0 if cached else 100)


class World:
    def __init__(self, tmp_path: Path, scores: dict[int, float | None], model: str = "gpt-4o-mini",
                 predictor: Predictor | None = None, **limits: Any) -> None:
        self.clock = Clock()
        self.engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
        migrate(self.engine)
        self.projects = ProjectStore(self.engine)
        self.projects.save(PROJECT, CONFIG, {}, None, None)  # credentials are passed in
        self.jobs = JobsStore(self.engine, clock=self.clock, stale_seconds=60)
        self.ls = FakeLabelStudio(scores)
        self.predictor = predictor or Predictor()
        self.push = PushDelivery(self.engine, self.predictor, Metrics(), sender=self.ls.send)
        self.model = model
        self.set_version(1)
        defaults = {"debounce_seconds": 0.0, "min_interval_seconds": 0.0, "batch_size": 4}
        self.refresher = self.make_refresher(RefreshLimits(**{**defaults, **limits}))

    def make_refresher(self, limits: RefreshLimits) -> Refresher:
        return Refresher(
            self.engine, self.projects, self.jobs, self.predictor,
            lambda config, extra: SimpleNamespace(model=self.model),
            lambda plan, project_id: f"v-e{self.version}",
            lambda project_id: ("http://ls.example", "token-123"),
            self.push, self.ls.send, PriceTable.from_setting(None), limits, source=Source(self.ls), clock=self.clock,
        )

    def set_version(self, version: int) -> None:
        self.version = version
        with self.engine.begin() as conn:
            conn.execute(update(projects).where(projects.c.project_id == PROJECT).values(examples_version=version))


def test_candidates_are_unannotated_tasks_without_the_version_least_confident_first() -> None:
    tasks = [
        {"id": 1, "predictions": [{"id": 1, "model_version": "v0", "score": 0.8}]},
        {"id": 2, "predictions": [{"id": 2, "model_version": "v0", "score": 0.2}]},
        {"id": 3, "predictions": []},  # never predicted: first
        {"id": 4, "total_annotations": 1, "predictions": [{"id": 4, "model_version": "v0", "score": 0.1}]},
        {"id": 5, "predictions": [{"id": 5, "model_version": "v1", "score": 0.1}]},  # has the new version
        {"id": 6, "cancelled_annotations": 1, "predictions": []},  # skipped by a reviewer
        {"id": 7, "predictions": [{"id": 7, "model_version": "v0", "score": 0.1},
                                  {"id": 9, "model_version": "v0b", "score": 0.95}]},  # the latest counts
    ]
    assert [t["id"] for t in refresh_candidates(tasks, "v1", 10)] == [3, 2, 1, 7]
    assert [t["id"] for t in refresh_candidates(tasks, "v1", 2)] == [3, 2]
    assert current_score(tasks[6]) == 0.95


def test_a_refresh_pushes_the_new_version_least_confident_first_and_counts_cost(tmp_path) -> None:
    scores = {1: 0.9, 2: 0.1, 3: 0.5, 4: 0.3, 5: 0.7, 6: 0.2}
    world = World(tmp_path, scores, predictor=Predictor(cached=frozenset({5})))
    world.ls.annotate(6)
    [job_id] = world.refresher.poll_once()
    assert world.predictor.order == [2, 4, 3, 5, 1]  # ascending score; 6 is annotated
    versions = world.ls.versions_per_task()
    assert all(versions[t] == ["v-e0", "v-e1"] for t in (1, 2, 3, 4, 5)) and versions[6] == ["v-e0"]
    job = world.jobs.get(job_id)
    assert job is not None
    assert (job.kind, job.status, job.total, job.done, job.failed, job.skipped) == ("refresh", "done", 5, 5, 0, 0)
    assert job.llm_calls == 4  # the cached answer made no call
    assert abs(job.cost_usd - 4 * (1000 * 0.15 + 100 * 0.60) / 1e6) < 1e-12  # gpt-4o-mini list price
    assert world.refresher.poll_once() == []  # this version is refreshed: never again


def test_a_task_annotated_while_predicted_is_not_pushed(tmp_path) -> None:
    world = World(tmp_path, {1: 0.1, 2: 0.2, 3: 0.3})
    world.ls.annotate_on_recheck = {2}
    [job_id] = world.refresher.poll_once()
    assert world.ls.versions_per_task() == {1: ["v-e0", "v-e1"], 2: ["v-e0"], 3: ["v-e0", "v-e1"]}
    job = world.jobs.get(job_id)
    assert job is not None and (job.done, job.skipped) == (2, 1)


def test_at_most_max_tasks_per_version(tmp_path) -> None:
    world = World(tmp_path, {i: i / 10 for i in range(1, 8)}, max_tasks=3)
    world.refresher.poll_once()
    assert world.predictor.order == [1, 2, 3]


def test_a_task_claimed_by_a_pushed_retrieve_is_not_predicted_twice(tmp_path) -> None:
    world = World(tmp_path, {1: 0.1, 2: 0.2})
    assert world.push.claim(PROJECT, "v-e1", [2]) == {2}  # a retrieve of the same version has it in flight
    [job_id] = world.refresher.poll_once()
    assert world.predictor.order == [1]
    assert world.jobs.get(job_id).skipped == 1  # type: ignore[union-attr]


def test_an_unpriced_model_refreshes_only_when_allowed(tmp_path) -> None:
    world = World(tmp_path, {1: 0.1}, model="my-private-model")
    assert world.refresher.poll_once() == []
    assert world.predictor.order == []
    world.refresher = world.make_refresher(RefreshLimits(debounce_seconds=0, min_interval_seconds=0,
                                                         unpriced_allowed=True))
    assert len(world.refresher.poll_once()) == 1 and world.predictor.order == [1]


def test_the_embedded_model_costs_nothing(tmp_path) -> None:
    world = World(tmp_path, {1: 0.1, 2: 0.2}, model="smollm2-135m-instruct", max_cost_usd=0.0)
    # a budget of 0 still stops a refresh: nothing can be spent, not even 0 (a day's spending >= 0)
    assert world.refresher.poll_once() == []
    world.refresher = world.make_refresher(RefreshLimits(debounce_seconds=0, min_interval_seconds=0,
                                                         max_cost_usd=0.01))
    [job_id] = world.refresher.poll_once()
    assert world.jobs.get(job_id).cost_usd == 0.0  # type: ignore[union-attr]


def test_the_daily_budget_stops_a_refresh_between_batches(tmp_path) -> None:
    one_call = (1000 * 0.15 + 100 * 0.60) / 1e6
    world = World(tmp_path, {i: i / 100 for i in range(1, 21)}, max_cost_usd=one_call * 5, batch_size=4)
    [job_id] = world.refresher.poll_once()
    job = world.jobs.get(job_id)
    assert job is not None and job.status == "budget"
    assert job.done == 8 and job.skipped == 12  # two batches of 4 reached the budget; the rest left
    world.set_version(2)
    assert world.refresher.poll_once() == []  # spent for today: no new refresh either
    world.clock.now += 86_400  # the next UTC day
    assert len(world.refresher.poll_once()) == 1


def test_a_burst_of_versions_is_one_refresh_after_the_debounce(tmp_path) -> None:
    world = World(tmp_path, {1: 0.1}, debounce_seconds=30, min_interval_seconds=100)
    assert world.refresher.poll_once() == []  # v1 just seen
    world.clock.now += 20
    world.set_version(2)  # a review moved it again
    assert world.refresher.poll_once() == []
    world.clock.now += 20
    world.set_version(3)
    assert world.refresher.poll_once() == []
    world.clock.now += 31  # quiet for the debounce
    assert len(world.refresher.poll_once()) == 1
    assert world.ls.versions_per_task()[1] == ["v-e0", "v-e3"]  # one refresh, for the last version
    world.set_version(4)
    world.clock.now += 31
    assert world.refresher.poll_once() == []  # debounced, but within the minimum interval
    world.clock.now += 70
    assert len(world.refresher.poll_once()) == 1


def test_a_version_that_moves_during_a_refresh_supersedes_it(tmp_path) -> None:
    world = World(tmp_path, {i: i / 10 for i in range(1, 9)}, batch_size=4)
    world.predictor.on_task = lambda task_id: world.set_version(2) if task_id == 4 else None
    [job_id] = world.refresher.poll_once()
    job = world.jobs.get(job_id)
    assert job is not None and job.status == "superseded" and (job.done, job.skipped) == (4, 4)


def test_a_cancelled_refresh_stops(tmp_path) -> None:
    world = World(tmp_path, {i: i / 10 for i in range(1, 9)}, batch_size=4)
    world.predictor.on_task = lambda task_id: world.jobs.cancel(PROJECT, 1) if task_id == 1 else None
    [job_id] = world.refresher.poll_once()
    job = world.jobs.get(job_id)
    assert job is not None and job.status == "cancelled" and (job.done, job.skipped) == (4, 4)


def test_a_failed_push_releases_the_tasks_and_counts_them_failed(tmp_path) -> None:
    world = World(tmp_path, {1: 0.1, 2: 0.2})
    world.ls.fail_push = True
    world.refresher.push_retries = 0
    [job_id] = world.refresher.poll_once()
    assert world.jobs.get(job_id).failed == 2  # type: ignore[union-attr]
    assert world.push.claim(PROJECT, "v-e1", [1, 2]) == {1, 2}  # released: a retrieve may push them


def test_a_refresh_of_a_dead_process_is_resumed_without_a_second_prediction(tmp_path) -> None:
    world = World(tmp_path, {i: i / 10 for i in range(1, 9)}, batch_size=4)

    class Died(BaseException):
        pass

    def die(task_id: int) -> None:
        if task_id == 5:
            raise Died  # the process is killed in the middle of the second batch

    world.predictor.on_task = die
    release = world.push.release
    world.push.release = lambda *args: None  # type: ignore[method-assign]  # a killed process releases nothing
    try:
        world.refresher.poll_once()
    except Died:
        pass
    world.push.release = release  # type: ignore[method-assign]
    [job] = world.jobs.list(PROJECT)
    assert job.status == "running" and job.done == 4
    other = world.make_refresher(RefreshLimits(debounce_seconds=0, min_interval_seconds=0, batch_size=4))
    world.predictor.on_task = None
    assert other.poll_once() == []  # its heartbeat is fresh: not taken over
    world.clock.now += 61
    assert world.jobs.list(PROJECT)[0].status == "stale"
    assert other.poll_once() == [job.id]
    resumed = world.jobs.get(job.id)
    assert resumed is not None and resumed.status == "done" and resumed.done == 8
    assert all(versions.count("v-e1") == 1 for versions in world.ls.versions_per_task().values())


def test_a_student_training_past_the_stale_limit_keeps_its_refresh(tmp_path) -> None:
    """Bug (session 11's active-learning run): the refresh waited for its new student without a
    heartbeat; the wait passed JOB_STALE_SECONDS, a second worker took the job over as if its process
    had died, both ran it, and the job counted 200 done and 200 skipped of 200."""
    world = World(tmp_path, {1: 0.1, 2: 0.2, 3: 0.3})
    world.jobs.beat_seconds = 0.01
    other = world.make_refresher(RefreshLimits(debounce_seconds=0, min_interval_seconds=0, batch_size=4))
    taken: list[int] = []

    def training(project_id: str, plan: Any) -> None:
        world.clock.now += 61  # the student trains for longer than the stale limit (60 s here)
        [job] = world.jobs.list(PROJECT)
        wait_for(lambda: world.jobs.get(job.id).updated_at >= world.clock.now, 5, 0.01)  # type: ignore[union-attr]
        taken.extend(other.poll_once())  # another worker polls meanwhile

    world.refresher.prepare = training
    [job_id] = world.refresher.poll_once()
    assert taken == []  # not taken for a dead process's job
    job = world.jobs.get(job_id)
    assert job is not None and (job.status, job.total, job.done, job.skipped) == ("done", 3, 3, 0)
    assert world.predictor.order == [1, 2, 3]  # each task predicted once


def test_a_refresh_first_brings_the_students_up_to_its_example_set(tmp_path) -> None:
    world = World(tmp_path, {1: 0.1, 2: 0.2})
    prepared: list[tuple[str, int]] = []
    world.refresher.prepare = lambda project_id, plan: prepared.append((project_id, len(world.predictor.order)))
    world.refresher.poll_once()
    assert prepared == [(PROJECT, 0)]  # once, before the first task was predicted
    assert world.predictor.order == [1, 2]

    def broken(project_id: str, plan: Any) -> None:
        raise TimeoutError("student training still running")

    world.set_version(2)
    world.refresher.prepare = broken
    [job_id] = world.refresher.poll_once()  # a student that is not ready does not stop the refresh
    job = world.jobs.get(job_id)
    assert job is not None and job.status == "done" and job.done == 2
