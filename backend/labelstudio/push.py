"""Large "Retrieve predictions" runs are pushed, not pulled.

Label Studio spends about 45 ms per task storing what /predict returns and gives up at 100 s, while
`POST /api/projects/{id}/import/predictions` stores 1,000 predictions in under 2 s (measured). Above
PUSH_THRESHOLD tasks, /predict claims the tasks, answers `[]` for each at once (Label Studio stores
nothing and the count rule holds), and a background thread predicts them in batches and pushes each
batch with the current model_version.

A claim is a row in `push_jobs` keyed by (project, task, model_version), shared by all workers and
replicas, so a task Label Studio asks for again while in flight is not predicted twice. A task whose
prediction or push failed loses its claim, so the next "Retrieve predictions" asks for it again; so
do the tasks a run never reached because it stopped on an unexpected error. A live run keeps its
claims fresh from a heartbeat thread, so only a dead process's claims go stale and are taken over
after `stale_seconds`.

Every run is a job in the store (backend.store.jobs_store) with per-task counts, listed by
GET /projects/<id>/jobs and `lsllm jobs`; a cancelled job stops after the batch in flight and
releases the rest of its tasks (counted skipped).

Predictions reach Label Studio through a `Sender` (label-studio-sdk's import_predictions by default),
passed in so that delivery can be tested, or replaced, without a Label Studio.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from sqlalchemy import and_, delete, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql.expression import ColumnElement, Executable

from backend.labelstudio.api import client_for, import_predictions
from backend.labelstudio.batch_push import BatchPusher, prediction_item
from backend.metrics import Metrics
from backend.predict.predictor import ProjectPlan, TaskResult
from backend.store.db import insert_ignore, push_jobs, write
from backend.store.heartbeat import Heartbeat, beat_interval
from backend.store.jobs_store import JobsStore, process_owner

log = logging.getLogger(__name__)


class Sender(Protocol):
    """Stores one batch of predictions ({"task", "result", "score", "model_version"} each) in a Label
    Studio project; raises on any failure (the pusher retries, then releases the claims)."""

    def __call__(self, url: str, token: str, project_id: str, items: list[dict[str, Any]]) -> None: ...


class StreamPredictor(Protocol):
    """What the push path needs of the Predictor: (task, result) pairs as they finish."""

    def predict_stream(
        self, plan: ProjectPlan, tasks: Sequence[Mapping[str, Any]], model_version: str, project_id: str | None = None
    ) -> Iterator[tuple[Mapping[str, Any], TaskResult]]: ...


def sdk_sender(url: str, token: str, project_id: str, items: list[dict[str, Any]]) -> None:
    """Push predictions with label-studio-sdk's import_predictions."""
    import_predictions(client_for(url, token), int(project_id), items)


IN_CHUNK = 1000  # task ids per statement (PostgreSQL takes at most 65,535 parameters in one)


class PushDelivery:
    CHUNK = 100  # tasks put in flight at once; a cancel takes effect between chunks

    def __init__(
        self,
        engine: Engine,
        predictor: StreamPredictor,
        metrics: Metrics,
        batch_size: int = 50,
        stale_seconds: float = 900.0,
        sender: Sender = sdk_sender,
        retries: int = 3,
        max_push: int = 1000,
        jobs: JobsStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.predictor = predictor
        self.metrics = metrics
        self.batch_size = batch_size
        self.stale_seconds = stale_seconds
        self.beat_seconds = beat_interval(stale_seconds)  # how often a run's claims are touched
        self.clock = clock
        self.sender = sender
        self.retries = retries
        self.max_push = max_push
        self.jobs = jobs  # job accounting (None: runs are not listed)
        self.on_pushed: Callable[[str, str], None] | None = None  # (project, version) after a run pushed some
        self.owner = process_owner()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="push-predict")
        self.undelivered: list[int] = []  # task ids given up on in this process, for reports
        self._lock = threading.Lock()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def claim(self, project_id: str, version: str, task_ids: Sequence[int]) -> set[int]:
        """Task ids this call now owns; ids queued or pushed for this version elsewhere are skipped,
        except a claim left queued for longer than `stale_seconds` (its process died)."""
        now = self.clock()
        claimed: set[int] = set()
        with write(self.engine) as conn:
            for task_id in task_ids:
                row = {"project_id": project_id, "task_id": task_id, "model_version": version,
                       "status": "queued", "updated_at": now}
                if insert_ignore(conn, push_jobs, row):
                    claimed.add(task_id)
                    continue
                stale = conn.execute(
                    update(push_jobs)
                    .where(and_(push_jobs.c.project_id == project_id, push_jobs.c.task_id == task_id,
                                push_jobs.c.model_version == version, push_jobs.c.status == "queued",
                                push_jobs.c.updated_at < now - self.stale_seconds))
                    .values(updated_at=now)
                ).rowcount
                if stale:
                    claimed.add(task_id)
        return claimed

    def _each_chunk(self, project_id: str, version: str, task_ids: Sequence[int],
                    statement: Callable[[ColumnElement[bool]], Executable]) -> None:
        """Run `statement(where)` over the version's claims of `task_ids`, IN_CHUNK ids per statement, in
        one transaction: Label Studio sends a whole project's "Retrieve predictions" as one request, and
        PostgreSQL takes at most 65,535 parameters in one statement."""
        ids = sorted({int(t) for t in task_ids})
        with write(self.engine) as conn:
            for start in range(0, len(ids), IN_CHUNK):
                chunk = ids[start:start + IN_CHUNK]
                conn.execute(statement(and_(
                    push_jobs.c.project_id == project_id, push_jobs.c.model_version == version,
                    push_jobs.c.task_id.between(chunk[0], chunk[-1]),  # an index range even without table stats
                    push_jobs.c.task_id.in_(chunk),
                )))

    def _release(self, project_id: str, version: str, task_ids: Sequence[int]) -> None:
        """Drop the claims, so the next "Retrieve predictions" asks for these tasks again."""
        self._each_chunk(project_id, version, task_ids, lambda where: delete(push_jobs).where(where))

    def touch(self, project_id: str, version: str, task_ids: Sequence[int]) -> None:
        """Keep the claims still queued among `task_ids` fresh: their run is alive, only slow (a
        1,000-task run on a small model holds its last claims for most of an hour)."""
        self._each_chunk(project_id, version, task_ids, lambda where: update(push_jobs).where(
            and_(where, push_jobs.c.status == "queued")).values(updated_at=self.clock()))

    def release(self, project_id: str, version: str, task_ids: Sequence[int]) -> None:
        """Drop claims (public: the refresh shares these claims)."""
        self._release(project_id, version, task_ids)

    def tag(self, project_id: str, version: str, task_ids: Sequence[int], status: str) -> None:
        """Give queued claims another status (a refresh tags its own, so that whoever takes the refresh
        over from a dead process can release exactly them: `release_tagged`)."""
        self._each_chunk(project_id, version, task_ids, lambda where: update(push_jobs).where(
            and_(where, push_jobs.c.status == "queued")).values(status=status, updated_at=self.clock()))

    def release_tagged(self, project_id: str, version: str, status: str) -> int:
        """Drop every claim of the version with this status; returns how many."""
        with write(self.engine) as conn:
            return conn.execute(
                delete(push_jobs).where(and_(push_jobs.c.project_id == project_id,
                                             push_jobs.c.model_version == version, push_jobs.c.status == status))
            ).rowcount

    def mark_pushed(self, project_id: str, version: str, task_ids: Sequence[int]) -> None:
        """Record claims as pushed (public: the refresh shares these claims)."""
        self._mark_pushed(project_id, version, task_ids)

    def _mark_pushed(self, project_id: str, version: str, task_ids: Sequence[int]) -> None:
        self._each_chunk(project_id, version, task_ids, lambda where: update(push_jobs).where(where).values(
            status="pushed", updated_at=self.clock()))

    def status(self, project_id: str, version: str) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(push_jobs.c.status).where(and_(push_jobs.c.project_id == project_id,
                                                      push_jobs.c.model_version == version))
            ).all()
        counts: dict[str, int] = {}
        for (status,) in rows:
            counts[status] = counts.get(status, 0) + 1
        return counts

    def submit(
        self, plan: ProjectPlan, project_id: str, version: str, tasks: Sequence[Mapping[str, Any]],
        url: str, token: str,
    ) -> None:
        """Predict and push the claimed `tasks` in the background (run() on this delivery's thread), as a
        job in the store."""
        job_id = self._job(project_id, version, len(tasks))
        heartbeat = self._heartbeat(project_id, version, tasks, job_id).start()  # queued behind another run too
        try:
            future = self._pool.submit(self.run, plan, project_id, version, list(tasks), url, token, job_id, heartbeat)
            # a run cancelled by close() never starts: its beat stops, and its claims expire as a dead process's
            future.add_done_callback(lambda done: heartbeat.stop() if done.cancelled() else None)
        except RuntimeError:  # closed (shutting down): nothing will predict them
            heartbeat.stop()
            log.warning("push: shutting down; %d tasks released for the next retrieve", len(tasks))
            self._release_quietly(project_id, version, [int(t["id"]) for t in tasks])
            self._count(job_id, skipped=len(tasks))
            self._finish(job_id, "interrupted", "the process is stopping")

    def _job(self, project_id: str, version: str, total: int) -> int | None:
        if self.jobs is None:
            return None
        try:
            return self.jobs.create(project_id, "retrieve", version, total, self.owner, status="queued")
        except SQLAlchemyError:
            log.error("push: store unavailable; this run is not listed as a job")
            return None

    def _count(self, job_id: int | None, **deltas: Any) -> None:
        """Move a job's counts; a store outage must not stop the delivery."""
        if self.jobs is None or job_id is None:
            return
        try:
            self.jobs.add(job_id, **deltas)
        except SQLAlchemyError:
            log.error("push: store unavailable while counting job %s", job_id)

    def _finish(self, job_id: int | None, status: str, detail: str | None = None) -> None:
        if self.jobs is None or job_id is None:
            return
        try:
            self.jobs.finish(job_id, status, detail)
        except SQLAlchemyError:
            log.error("push: store unavailable while ending job %s", job_id)

    def _cancelled(self, job_id: int | None) -> bool:
        if self.jobs is None or job_id is None:
            return False
        try:
            return self.jobs.cancel_requested(job_id)
        except SQLAlchemyError:
            return False

    def _heartbeat(self, project_id: str, version: str, tasks: Sequence[Mapping[str, Any]],
                   job_id: int | None) -> Heartbeat:
        """A heartbeat (not started) for a run's job and its claims not pushed yet: they are taken for a
        dead process's only when this process is gone, never because the run is slow or queued."""
        task_ids = [int(t["id"]) for t in tasks]

        def beat() -> None:
            if self.jobs is not None and job_id is not None:
                self.jobs.beat(job_id)
            self.touch(project_id, version, task_ids)

        every = min(self.beat_seconds, self.jobs.beat_seconds) if self.jobs is not None else self.beat_seconds
        return Heartbeat(beat, every, f"push {project_id}")

    def run(
        self, plan: ProjectPlan, project_id: str, version: str, tasks: list[Mapping[str, Any]], url: str, token: str,
        job_id: int | None = None, heartbeat: Heartbeat | None = None,
    ) -> None:
        """_deliver, beating throughout: `heartbeat` (submit's, started when the run was queued) or a new one."""
        with heartbeat or self._heartbeat(project_id, version, tasks, job_id):
            self._deliver(plan, project_id, version, tasks, url, token, job_id)

    def _deliver(
        self, plan: ProjectPlan, project_id: str, version: str, tasks: list[Mapping[str, Any]], url: str, token: str,
        job_id: int | None,
    ) -> None:
        """Predict batch after batch; the pusher sends whatever is ready in one call, so while a push is
        in flight the next results gather. Every claimed task ends pushed or released: a failed
        prediction or push releases its task, and an unexpected error releases every task not
        settled yet, so the next "Retrieve predictions" asks for them again."""
        began = time.perf_counter()

        def delivered(items: list[dict[str, Any]], ok: bool) -> None:
            self._delivered(project_id, version, items, ok, began)
            self._count(job_id, running=-len(items), **({"done": len(items)} if ok else {"failed": len(items)}))

        pusher = BatchPusher(lambda items: self.sender(url, token, project_id, items), delivered,
                             max_batch=self.max_push, retries=self.retries)
        items: list[dict[str, Any]] = []
        settled: set[int] = set()  # released here, or handed to the pusher (which marks or releases)
        status, detail = "done", None
        if self.jobs is not None and job_id is not None:
            try:
                self.jobs.set_status(job_id, "running")
            except SQLAlchemyError:
                log.error("push: store unavailable while starting job %s", job_id)
        try:
            # chunks, so that a cancel stops the predictions not started yet
            for start in range(0, len(tasks), self.CHUNK):
                chunk = tasks[start:start + self.CHUNK]
                if self._cancelled(job_id):
                    status, detail = "cancelled", "cancelled by a user"
                    break
                self._count(job_id, running=len(chunk))
                for task, result in self.predictor.predict_stream(plan, chunk, version, project_id):
                    task_id = int(task["id"])
                    if not result.item:
                        self._release(project_id, version, [task_id])  # asked again next retrieve
                        settled.add(task_id)
                        self._count(job_id, running=-1, failed=1)
                        continue
                    items.append(prediction_item(task_id, result.item, version))
                    settled.add(task_id)
                    if len(items) >= self.batch_size:
                        pusher.put(items)
                        items = []
        except Exception:  # whatever stopped the run, its claims must not stay queued
            left = [int(t["id"]) for t in tasks if int(t["id"]) not in settled]
            log.exception("push: predictions stopped; %d tasks released for the next retrieve", len(left))
            self._release_quietly(project_id, version, left)
            self._count(job_id, failed=len(left))
            status, detail = "failed", "predictions stopped unexpectedly"
        finally:
            pusher.put(items)
            pusher.close()
            left = [int(t["id"]) for t in tasks if int(t["id"]) not in settled]
            if left and status == "cancelled":
                self._release_quietly(project_id, version, left)
                self._count(job_id, skipped=len(left))
            self._finish(job_id, status, detail)
            if self.on_pushed is not None and len(settled) > 0:
                try:
                    self.on_pushed(project_id, version)
                except Exception:  # noqa: BLE001 - a hook must not break the delivery
                    log.exception("push: the after-push hook failed")

    def _release_quietly(self, project_id: str, version: str, task_ids: Sequence[int]) -> None:
        """_release on a failure path: a store outage there leaves the claims to expire (stale_seconds)."""
        try:
            self._release(project_id, version, task_ids)
        except SQLAlchemyError:
            log.error("push: store unavailable; %d claims expire after %.0f s instead", len(task_ids),
                      self.stale_seconds)

    def _delivered(
        self, project_id: str, version: str, items: list[dict[str, Any]], ok: bool, began: float
    ) -> None:
        """The pusher's report of one call: mark the tasks pushed, or release them. Runs on the pusher's
        thread, which must survive a store outage to send the rest."""
        try:
            self._settle(project_id, version, items, ok, began)
        except SQLAlchemyError:
            log.error("push: store unavailable while recording %d %s predictions", len(items),
                      "delivered" if ok else "undelivered")

    def _settle(
        self, project_id: str, version: str, items: list[dict[str, Any]], ok: bool, began: float
    ) -> None:
        if ok:
            log.info("push: %d predictions delivered, %.2f s into the run", len(items), time.perf_counter() - began)
            self._mark_pushed(project_id, version, [i["task"] for i in items])
            self.metrics.tasks.labels("pushed").inc(len(items))
            return
        lost = [i["task"] for i in items]
        self._release(project_id, version, lost)
        with self._lock:
            self.undelivered.extend(lost)
        self.metrics.tasks.labels("push_failed").inc(len(items))
        log.error("push: %d predictions for project %s could not be delivered; they will be "
                  "predicted again on the next Retrieve predictions", len(items), project_id)
