"""Visible jobs (issue 13): every pushed retrieve is a job in the store with per-task counts; jobs are
listed by GET /projects/<id>/jobs (behind Basic auth), /metrics and `lsllm jobs`, can be cancelled,
and a dead process's job is shown stale, then taken over (refresh) or marked interrupted (retrieve).
Also the review tab's creation: once, never a duplicate."""

from __future__ import annotations

import base64
import json
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from test_push import PLAN, PROJECT, VERSION, FakeSender, ScriptedPredictor, tasks

from backend.cli import main as cli_main
from backend.labelstudio.push import PushDelivery
from backend.labelstudio.review_tab import FILTERS, ORDERING, TITLE, ReviewTabs, ensure_review_tab
from backend.metrics import Metrics
from backend.store.db import make_engine, migrate
from backend.store.jobs_store import JobsStore


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def store_at(tmp_path: Path, clock: Clock | None = None, stale: float = 300.0) -> JobsStore:
    engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    migrate(engine)
    return JobsStore(engine, clock=clock or Clock(), stale_seconds=stale)


def delivery(store: JobsStore, predictor: Any, sender: FakeSender) -> PushDelivery:
    return PushDelivery(store.engine, predictor, Metrics(), sender=sender, batch_size=10, jobs=store)


def submit_and_wait(push: PushDelivery, todo: list[dict[str, Any]]) -> None:
    push.claim(PROJECT, VERSION, [t["id"] for t in todo])
    push.submit(PLAN, PROJECT, VERSION, todo, "http://ls.example", "token-123")
    push._pool.shutdown(wait=True)


def test_a_pushed_retrieve_is_a_job_with_per_task_counts(tmp_path) -> None:
    store = store_at(tmp_path)
    sender = FakeSender()
    push = delivery(store, ScriptedPredictor(fail=frozenset({3, 4})), sender)
    submit_and_wait(push, tasks(25))
    [job] = store.list(PROJECT)
    assert (job.kind, job.model_version, job.status) == ("retrieve", VERSION, "done")
    assert (job.total, job.done, job.failed, job.skipped, job.running, job.queued) == (25, 23, 2, 0, 0, 0)
    assert len(sender.delivered) == 23


def test_a_failed_push_counts_its_tasks_failed(tmp_path) -> None:
    store = store_at(tmp_path)
    push = delivery(store, ScriptedPredictor(), FakeSender(fail_calls=-1))
    push.retries = 0
    submit_and_wait(push, tasks(12))
    [job] = store.list(PROJECT)
    assert (job.done, job.failed, job.status) == (0, 12, "done")


class CancellingPredictor(ScriptedPredictor):
    """Requests the job's cancel while predicting its first chunk."""

    def __init__(self, store: JobsStore) -> None:
        super().__init__()
        self.store = store

    def predict_stream(self, plan, tasks, model_version, project_id=None):  # type: ignore[no-untyped-def]
        [job] = self.store.list(PROJECT)
        if job.running and job.done == 0:
            self.store.cancel(PROJECT, job.id)
        yield from super().predict_stream(plan, tasks, model_version, project_id)


def test_cancel_stops_after_the_chunk_in_flight_and_releases_the_rest(tmp_path) -> None:
    store = store_at(tmp_path)
    sender = FakeSender()
    push = delivery(store, CancellingPredictor(store), sender)
    submit_and_wait(push, tasks(PushDelivery.CHUNK + 30))
    [job] = store.list(PROJECT)
    assert job.status == "cancelled"
    assert (job.done, job.skipped, job.failed) == (PushDelivery.CHUNK, 30, 0)
    assert sorted(sender.delivered) == list(range(PushDelivery.CHUNK))
    # the tasks never predicted lost their claims: the next retrieve asks for them again
    assert push.claim(PROJECT, VERSION, [PushDelivery.CHUNK, PushDelivery.CHUNK + 29]) == {
        PushDelivery.CHUNK, PushDelivery.CHUNK + 29}


def test_a_dead_process_job_shows_stale_then_is_taken_over_or_reaped(tmp_path) -> None:
    clock = Clock()
    store = store_at(tmp_path, clock, stale=60)
    refresh = store.create(PROJECT, "refresh", VERSION, 10, "worker-a", claim_key="refresh:7:v")
    retrieve = store.create(PROJECT, "retrieve", VERSION, 5, "worker-a")
    assert refresh is not None and retrieve is not None
    store.add(refresh, running=4, done=2)
    assert store.create(PROJECT, "refresh", VERSION, 10, "worker-b", claim_key="refresh:7:v") is None  # claimed
    assert store.take_over("refresh:7:v", "worker-b") is None  # alive: not taken over
    clock.now += 61  # worker-a died: no heartbeat for longer than the stale limit
    assert {j.id: j.status for j in store.list(PROJECT)} == {refresh: "stale", retrieve: "stale"}
    assert store.take_over("refresh:7:v", "worker-b") == refresh
    taken = store.get(refresh)
    assert taken is not None and (taken.owner, taken.status, taken.running, taken.done) == ("worker-b", "running", 0, 2)
    assert store.reap(kind="retrieve") == 1
    assert store.get(retrieve).status == "interrupted"  # type: ignore[union-attr]
    assert store.get(refresh).status == "running"  # type: ignore[union-attr]


def test_cancel_of_a_job_whose_process_is_gone_ends_it_at_once(tmp_path) -> None:
    clock = Clock()
    store = store_at(tmp_path, clock, stale=60)
    alive = store.create(PROJECT, "retrieve", VERSION, 5, "a")
    dead = store.create(PROJECT, "retrieve", VERSION, 5, "b")
    assert alive is not None and dead is not None
    clock.now += 61
    store.beat(alive)
    assert store.cancel(PROJECT, dead).status == "cancelled"  # type: ignore[union-attr]
    requested = store.cancel(PROJECT, alive)
    assert requested is not None and requested.status == "running" and requested.cancel_requested
    assert store.cancel("8", alive) is None  # another project's job


def test_jobs_routes_and_metrics(make_app) -> None:
    app = make_app(basic_auth_user="u", basic_auth_pass="p")
    model = app.extensions["lsllm_model"]
    job = model.jobs.create("7", "refresh", "lsllm-v1-x-e2", 40, "w", claim_key="refresh:7:e2")
    model.jobs.add(job, running=5, done=20, failed=1, skipped=2, cost_usd=0.0123, llm_calls=21)
    client = app.test_client()
    assert client.get("/projects/7/jobs").status_code == 401
    auth = {"Authorization": "Basic " + base64.b64encode(b"u:p").decode()}
    answer = client.get("/projects/7.1700000000/jobs", headers=auth).get_json()
    [listed] = answer["jobs"]
    assert answer["project"] == "7"
    assert {k: listed[k] for k in ("id", "kind", "status", "queued", "running", "done", "failed", "skipped")} == {
        "id": job, "kind": "refresh", "status": "running", "queued": 12, "running": 5, "done": 20, "failed": 1,
        "skipped": 2}
    assert listed["cost_usd"] == pytest.approx(0.0123)
    assert client.get("/projects/8/jobs", headers=auth).get_json()["jobs"] == []
    metrics = client.get("/metrics", headers=auth).get_data(as_text=True)
    assert f'lsllm_job_tasks{{project="7",job="{job}",kind="refresh",state="queued"}} 12' in metrics
    assert 'lsllm_jobs{project="7",kind="refresh",status="running"} 1' in metrics
    assert client.delete(f"/projects/8/jobs/{job}", headers=auth).status_code == 404
    cancelled = client.delete(f"/projects/7/jobs/{job}", headers=auth)
    assert cancelled.status_code == 200 and cancelled.get_json()["cancel_requested"] is True
    assert client.delete("/projects/7/jobs/999", headers=auth).status_code == 404


def test_cli_lists_and_cancels_from_the_same_store(tmp_path, monkeypatch, capsys) -> None:
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setenv("DATA_DIR", str(data))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    engine = make_engine(f"sqlite:///{(data / 'lsllm.sqlite3').resolve()}")
    migrate(engine)
    store = JobsStore(engine)
    job = store.create("7", "retrieve", "v9", 30, "w")
    assert job is not None
    store.add(job, running=10, done=15)
    assert cli_main(["jobs", "--project", "7", "--json"]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert (listed["id"], listed["queued"], listed["running"], listed["done"]) == (job, 5, 10, 15)
    assert cli_main(["jobs", "cancel", "--project", "7", str(job)]) == 0
    assert store.cancel_requested(job)
    assert cli_main(["jobs", "cancel", "--project", "7", "12345"]) == 1
    assert cli_main(["jobs", "--project", "7"]) == 0
    assert "retrieve" in capsys.readouterr().out


class FakeViews:
    """Label Studio's Data Manager views API, in memory; `slow` delays create (a race window)."""

    def __init__(self, slow: threading.Event | None = None) -> None:
        self.views: list[dict[str, Any]] = []
        self.slow = slow
        self.fail = False

    def list(self, project: int) -> list[dict[str, Any]]:
        return [v for v in self.views if v["project"] == project]

    def create(self, project: int, data: dict[str, Any]) -> dict[str, Any]:
        if self.fail:
            raise ConnectionError("Label Studio is down")
        if self.slow is not None:
            self.slow.wait(2)
        view = {"id": len(self.views) + 1, "project": project, "data": data}
        self.views.append(view)
        return view


class FakeClient:
    def __init__(self, views: FakeViews) -> None:
        self.views = views


def test_review_tab_is_created_once_with_the_filter_and_ordering(tmp_path) -> None:
    store = store_at(tmp_path)
    views = FakeViews()
    first = ensure_review_tab(FakeClient(views), "7", store)
    again = ensure_review_tab(FakeClient(views), "7", store)
    assert first == again == 1 and len(views.views) == 1
    data = views.views[0]["data"]
    assert data["title"] == TITLE and data["filters"] == FILTERS and data["ordering"] == ORDERING == [
        "tasks:predictions_score"]
    assert FILTERS["items"][0]["filter"] == "filter:tasks:total_annotations"


def test_review_tab_of_another_replica_is_found_by_title_not_duplicated(tmp_path) -> None:
    views = FakeViews()
    views.views.append({"id": 41, "project": 7, "data": {"title": TITLE}})  # made before this store existed
    store = store_at(tmp_path)
    assert ensure_review_tab(FakeClient(views), "7", store) == 41
    assert len(views.views) == 1
    assert store.review_tab("7")[0] == 41  # type: ignore[index]


def test_two_processes_racing_create_one_tab(tmp_path) -> None:
    release = threading.Event()
    views = FakeViews(slow=release)
    a, b = store_at(tmp_path), store_at(tmp_path)  # two processes' stores on one database
    results: list[Any] = []
    racer = threading.Thread(target=lambda: results.append(ensure_review_tab(FakeClient(views), "7", a)))
    racer.start()
    while a.review_tab("7") is None:
        pass
    assert ensure_review_tab(FakeClient(views), "7", b) is None  # a is creating it: b does not
    release.set()
    racer.join()
    assert results == [1] and len(views.views) == 1
    assert ensure_review_tab(FakeClient(views), "7", b) == 1


def test_a_failed_creation_gives_the_claim_up_for_the_next_setup(tmp_path) -> None:
    store = store_at(tmp_path)
    views = FakeViews()
    views.fail = True
    with pytest.raises(ConnectionError):
        ensure_review_tab(FakeClient(views), "7", store)
    assert store.review_tab("7") is None
    views.fail = False
    assert ensure_review_tab(FakeClient(views), "7", store) == 1


def test_review_tabs_without_credentials_does_nothing(tmp_path) -> None:
    store = store_at(tmp_path)

    def no_credentials(project_id: str) -> tuple[str, str]:
        raise RuntimeError("no credentials")

    tabs = ReviewTabs(store, no_credentials)
    assert tabs.run("7") is None
    assert store.review_tab("7") is None
    tabs.close()


class FakeProjects:
    def __init__(self, model_version: str) -> None:
        self.model_version = model_version
        self.updates: list[str] = []

    def get(self, id: int) -> dict[str, Any]:
        return {"id": id, "model_version": self.model_version}

    def update(self, id: int, model_version: str) -> None:
        self.updates.append(model_version)
        self.model_version = model_version


class FakeMl:
    def list(self, project: int) -> list[dict[str, Any]]:
        return [{"id": 1, "title": "lsllm"}]


@pytest.mark.parametrize(("current", "moved"), [
    ("lsllm", True),  # the backend's title, as Label Studio sets it on connecting: no prediction carries it
    ("", True),
    ("lsllm-v1-scripted-e0", True),  # an earlier version of this backend
    ("lsllm-v1-scripted-e3", False),  # already the pushed one
    ("my-offline-model-2", False),  # a user's choice of other predictions stays
])
def test_the_projects_model_version_follows_the_pushed_predictions(current: str, moved: bool) -> None:
    from backend.labelstudio.review_tab import follow_version

    client = SimpleNamespace(projects=FakeProjects(current), ml=FakeMl())
    assert follow_version(client, 7, "lsllm-v1-scripted-e3") is moved
    assert client.projects.updates == (["lsllm-v1-scripted-e3"] if moved else [])
