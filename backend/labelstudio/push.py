"""Large "Retrieve predictions" runs are pushed, not pulled.

Label Studio spends about 45 ms per task storing what /predict returns and gives up at 100 s, while
`POST /api/projects/{id}/import/predictions` stores 1,000 predictions in under 2 s (measured). Above
PUSH_THRESHOLD tasks, /predict claims the tasks, answers `[]` for each at once (Label Studio stores
nothing and the count rule holds), and a background thread predicts them in batches and pushes each
batch with the current model_version.

A claim is a row in `push_jobs` keyed by (project, task, model_version), shared by all workers and
replicas, so a task Label Studio asks for again while in flight is not predicted twice. A task whose
prediction or push failed loses its claim, so the next "Retrieve predictions" asks for it again.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Mapping, Sequence

from sqlalchemy import and_, delete, select, update
from sqlalchemy.engine import Engine

from backend.labelstudio.batch_push import BatchPusher, prediction_item
from backend.store.db import insert_ignore, push_jobs, write
from backend.labelstudio.api import client_for, import_predictions
from backend.metrics import Metrics
from backend.predict.predictor import Predictor, ProjectPlan

log = logging.getLogger(__name__)

# (url, token, project_id, [{"task", "result", "score", "model_version"}]) -> None; raises on failure
Sender = Callable[[str, str, str, list[dict[str, Any]]], None]


def sdk_sender(url: str, token: str, project_id: str, items: list[dict[str, Any]]) -> None:
    """Push predictions with label-studio-sdk's import_predictions."""
    import_predictions(client_for(url, token), int(project_id), items)


class PushDelivery:
    def __init__(
        self,
        engine: Engine,
        predictor: Predictor,
        metrics: Metrics,
        batch_size: int = 50,
        stale_seconds: float = 900.0,
        sender: Sender = sdk_sender,
        retries: int = 3,
        max_push: int = 1000,
    ) -> None:
        self.engine = engine
        self.predictor = predictor
        self.metrics = metrics
        self.batch_size = batch_size
        self.stale_seconds = stale_seconds
        self.sender = sender
        self.retries = retries
        self.max_push = max_push
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="push-predict")
        self.undelivered: list[int] = []  # task ids given up on in this process, for reports
        self._lock = threading.Lock()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def claim(self, project_id: str, version: str, task_ids: Sequence[int]) -> set[int]:
        """Task ids this call now owns; ids queued or pushed for this version elsewhere are skipped,
        except a claim left queued for longer than `stale_seconds` (its process died)."""
        now = time.time()
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

    def _release(self, project_id: str, version: str, task_ids: Sequence[int]) -> None:
        if not task_ids:
            return
        with write(self.engine) as conn:
            conn.execute(
                delete(push_jobs).where(and_(push_jobs.c.project_id == project_id,
                                             push_jobs.c.model_version == version,
                                             push_jobs.c.task_id.in_(list(task_ids))))
            )

    def _mark_pushed(self, project_id: str, version: str, task_ids: Sequence[int]) -> None:
        with write(self.engine) as conn:
            conn.execute(
                update(push_jobs)
                .where(and_(push_jobs.c.project_id == project_id, push_jobs.c.model_version == version,
                            push_jobs.c.task_id.in_(list(task_ids))))
                .values(status="pushed", updated_at=time.time())
            )

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
        self._pool.submit(self._run, plan, project_id, version, list(tasks), url, token)

    def _run(
        self, plan: ProjectPlan, project_id: str, version: str, tasks: list[Mapping[str, Any]], url: str, token: str
    ) -> None:
        """Predict batch after batch; the pusher sends whatever is ready in one call, so while a push is
        in flight the next results gather."""
        began = time.perf_counter()

        def delivered(items: list[dict[str, Any]], ok: bool) -> None:
            self._delivered(project_id, version, items, ok, began)

        pusher = BatchPusher(lambda items: self.sender(url, token, project_id, items), delivered,
                             max_batch=self.max_push, retries=self.retries)
        items: list[dict[str, Any]] = []
        try:
            for task, result in self.predictor.predict_stream(plan, tasks, version, project_id):
                if not result.item:
                    self._release(project_id, version, [int(task["id"])])  # asked again next retrieve
                    continue
                items.append(prediction_item(task["id"], result.item, version))
                if len(items) >= self.batch_size:
                    pusher.put(items)
                    items = []
        except Exception:  # noqa: BLE001 - never lose the claims silently
            log.exception("push: predictions stopped")
        finally:
            pusher.put(items)
            pusher.close()

    def _delivered(
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
