"""Refreshed predictions: when a project's example set (and with it its student) moves to a new version,
re-predict the tasks nobody annotated yet and push them with the new model_version.

Predictions would otherwise stay frozen at the first "Retrieve predictions". A refresh:

- starts when a project's model_version has stayed the same for `debounce_seconds` (a burst of reviews
  moves the version several times: one refresh, for the last) and at least `min_interval_seconds` after
  the project's previous refresh; a version that moves during a refresh supersedes it;
- is claimed in the store (`jobs.claim_key` = project + version): one worker or replica runs it, its
  heartbeat beating from start to end (the wait for the student included); a process that dies leaves
  its heartbeat to go stale, and the next poller takes the job over and resumes
  (tasks already holding a prediction of the version are not predicted again);
- lists the project's tasks in Label Studio, keeps those without annotations and without a prediction
  of the new version, least confident first (the score of their latest prediction; none: first), at
  most `max_tasks` per version;
- predicts them on the bulk lane (an annotator's /predict is served first), in batches, checking
  before each batch that it was not cancelled, that the version is still current and that the day's
  refresh spending is under `max_cost_usd` (provider prices from backend.llm.pricing; a model without
  a known price refreshes only with `unpriced_allowed`; cached and student answers cost nothing);
- re-reads each task just before pushing and skips one annotated meanwhile;
- claims each task in `push_jobs` (project, task, version) like a pushed retrieve, so no task gets two
  predictions of one version, whoever pushes it.

Label Studio is reached through `TaskSource` and `Sender`, passed in, so the refresh runs in tests
without a Label Studio.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
from label_studio_sdk.core.api_error import ApiError
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from backend.labelstudio.api import as_dict, client_for, iter_task_pages
from backend.labelstudio.batch_push import prediction_item
from backend.labelstudio.push import PushDelivery, Sender, StreamPredictor
from backend.llm.pricing import PriceTable
from backend.predict.plans import ProjectPlan
from backend.store.db import projects as projects_table
from backend.store.jobs_store import JobsStore, process_owner
from backend.store.project_store import ProjectStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefreshLimits:
    max_tasks: int = 1000  # per project and model_version
    max_cost_usd: float = 1.0  # per UTC day, all refreshes together
    unpriced_allowed: bool = False  # refresh with a model whose price is unknown
    debounce_seconds: float = 30.0
    min_interval_seconds: float = 300.0
    batch_size: int = 20
    poll_seconds: float = 5.0


class TaskSource(Protocol):
    """Label Studio's tasks, as the refresh needs them."""

    def tasks(self, url: str, token: str, project_id: str) -> list[dict[str, Any]]:
        """Every task of the project with `id`, `data`, `total_annotations`, `cancelled_annotations` and
        `predictions` ({model_version, score, id} each)."""
        ...

    def annotated(self, url: str, token: str, project_id: str, task_ids: Sequence[int]) -> set[int]:
        """The ids among `task_ids` that have an annotation (or a skip) now."""
        ...


class SdkTaskSource:
    """TaskSource through label-studio-sdk."""

    def tasks(self, url: str, token: str, project_id: str) -> list[dict[str, Any]]:
        client = client_for(url, token)
        out: list[dict[str, Any]] = []
        for _total, page in iter_task_pages(client, int(project_id), page_size=100):
            out.extend(page)
        return out

    def annotated(self, url: str, token: str, project_id: str, task_ids: Sequence[int]) -> set[int]:
        client = client_for(url, token)
        found = set()
        for task_id in task_ids:
            task = as_dict(client.tasks.get(id=str(int(task_id))))
            if _has_annotation(task):
                found.add(int(task_id))
        return found


def _has_annotation(task: Mapping[str, Any]) -> bool:
    if int(task.get("total_annotations") or 0) or int(task.get("cancelled_annotations") or 0):
        return True
    return bool(task.get("annotations"))


def current_score(task: Mapping[str, Any]) -> float:
    """The score of the task's latest prediction; -1 when it has none (never predicted: first in line)."""
    latest = None
    for prediction in task.get("predictions") or []:
        raw = as_dict(prediction) if not isinstance(prediction, dict) else prediction
        if latest is None or int(raw.get("id") or 0) > int(latest.get("id") or 0):
            latest = raw
    if latest is None or latest.get("score") is None:
        return -1.0
    return float(latest["score"])


def refresh_candidates(tasks: Sequence[Mapping[str, Any]], version: str, limit: int) -> list[dict[str, Any]]:
    """Tasks without annotations and without a prediction of `version`, least confident first (ties by
    id), at most `limit`; each as {"id", "data"} (what the predictor needs)."""
    chosen = []
    for task in tasks:
        if _has_annotation(task):
            continue
        versions = {str((p if isinstance(p, dict) else as_dict(p)).get("model_version") or "")
                    for p in task.get("predictions") or []}
        if version in versions:
            continue
        chosen.append((current_score(task), int(task["id"]), {"id": int(task["id"]), "data": task.get("data") or {}}))
    chosen.sort(key=lambda c: (c[0], c[1]))
    return [c[2] for c in chosen[:max(0, limit)]]


def claim_tag(job_id: int) -> str:
    """The push_jobs status of the claims a refresh job holds while it predicts them."""
    return f"refresh:{job_id}"


class Refresher:
    """Polls the store for projects whose model_version moved, and refreshes them (one thread per
    process; the store's claims keep replicas from doing the same work twice)."""

    def __init__(
        self,
        engine: Engine,
        projects: ProjectStore,
        jobs: JobsStore,
        predictor: StreamPredictor,
        plan_for: Callable[[str, Mapping[str, Any]], ProjectPlan],
        version_for: Callable[[ProjectPlan, str], str],
        credentials: Callable[[str], tuple[str, str]],
        push: PushDelivery,
        sender: Sender,
        prices: PriceTable,
        limits: RefreshLimits,
        source: TaskSource | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.projects = projects
        self.jobs = jobs
        self.predictor = predictor
        self.plan_for = plan_for
        self.version_for = version_for
        self.credentials = credentials
        self.push = push
        self.sender = sender
        self.prices = prices
        self.limits = limits
        self.source = source or SdkTaskSource()
        self.clock = clock
        self.owner = process_owner()
        self.push_retries = 2  # a failed import/predictions is tried again this many times
        self.on_pushed: Callable[[str, str], None] | None = None  # (project, version) after a refresh pushed some
        # (project, plan) before a refresh predicts: the students of its example set trained (Students.settle)
        self.prepare: Callable[[str, ProjectPlan], object] | None = None
        self._seen: dict[str, tuple[str, float]] = {}  # project -> (version, first seen by this process)
        self._told: set[tuple[str, str, str]] = set()  # (project, version, why) logged once
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the poller -----------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, daemon=True, name="refresh")
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.limits.poll_seconds):
            try:
                self.poll_once()
            except Exception:  # noqa: BLE001 - a store or Label Studio outage: try again next poll
                log.exception("refresh: poll failed")

    def poll_once(self) -> list[int]:
        """Run the refreshes due now (in this thread); returns the ids of the jobs run."""
        self.jobs.reap(kind="retrieve")  # retrieves of dead processes: Label Studio asks for their tasks again
        ran = []
        with self.engine.connect() as conn:
            rows = conn.execute(select(projects_table.c.project_id, projects_table.c.examples_version)
                                .where(projects_table.c.examples_version > 0)).all()
        for project_id, _version in rows:
            if self._stop.is_set():
                break
            job = self.due(str(project_id))
            if job is not None:
                ran.append(job[0])
                self.run(*job)
        return ran

    def due(self, project_id: str) -> tuple[int, str, str, ProjectPlan, str, str] | None:
        """(job id, project, version, plan, url, token) when the project's refresh should run now, claimed
        (or taken over from a dead process) by this one; None otherwise."""
        info = self.projects.get(project_id)
        if info is None or not info.label_config:
            return None
        try:
            plan = self.plan_for(info.label_config, info.extra_params)
        except ValueError:
            return None
        version = self.version_for(plan, project_id)
        now = self.clock()
        seen = self._seen.get(project_id)
        if seen is None or seen[0] != version:
            self._seen[project_id] = (version, now)
            if self.limits.debounce_seconds > 0:
                return None
        elif now - seen[1] < self.limits.debounce_seconds:
            return None
        key = f"refresh:{project_id}:{version}"
        existing = self.jobs.by_claim(key)
        if existing is not None:
            job_id = self.jobs.take_over(key, self.owner)
            if job_id is None:
                return None  # running elsewhere, or finished
            released = self.push.release_tagged(project_id, version, claim_tag(job_id))
            log.info("project %s: resuming refresh job %d of a stopped process (%d claims it left released)",
                     project_id, job_id, released)
        else:
            last = self.jobs.last_started(project_id, "refresh")
            if last is not None and now - last < self.limits.min_interval_seconds:
                return None
            if not self._affordable(project_id, version, plan):
                return None
            try:
                url, token = self.credentials(project_id)
            except Exception:  # noqa: BLE001 - no credentials yet: nothing to refresh with
                return None
            created = self.jobs.create(project_id, "refresh", version, 0, self.owner, claim_key=key)
            if created is None:
                return None
            return created, project_id, version, plan, url, token
        try:
            url, token = self.credentials(project_id)
        except Exception:  # noqa: BLE001
            self.jobs.finish(job_id, "failed", "no Label Studio credentials")
            return None
        return job_id, project_id, version, plan, url, token

    def _affordable(self, project_id: str, version: str, plan: ProjectPlan) -> bool:
        if self.prices.price(plan.model) is None and not self.limits.unpriced_allowed:
            self._tell(project_id, version, "unpriced",
                       f"project {project_id}: no refresh: model {plan.model!r} has no known price (set LLM_PRICES, "
                       "or REFRESH_UNPRICED=allow)")
            return False
        if self.jobs.cost_today() >= self.limits.max_cost_usd:
            self._tell(project_id, version, "budget",
                       f"project {project_id}: no refresh: today's refreshes reached REFRESH_MAX_COST_USD="
                       f"{self.limits.max_cost_usd:g}")
            return False
        return True

    def _tell(self, project_id: str, version: str, why: str, message: str) -> None:
        if (project_id, version, why) not in self._told:
            self._told.add((project_id, version, why))
            log.info(message)

    # --- one refresh ----------------------------------------------------------------------------
    def run(self, job_id: int, project_id: str, version: str, plan: ProjectPlan, url: str, token: str) -> str:
        """Refresh the project's un-annotated tasks; returns the job's final status."""
        try:
            with self.jobs.heartbeat(job_id):  # alive through the student's training too: not taken over
                status, detail = self._run(job_id, project_id, version, plan, url, token)
        except (ApiError, httpx.HTTPError, SQLAlchemyError, ValueError) as exc:
            status, detail = "failed", f"{type(exc).__name__}"
            log.warning("project %s: refresh job %d failed (%s)", project_id, job_id, detail)
        try:
            self.jobs.finish(job_id, status, detail)
        except SQLAlchemyError:
            log.error("refresh: store unavailable when ending job %d; it goes stale and is resumed", job_id)
        if self.on_pushed is not None:
            try:
                job = self.jobs.get(job_id)
                if job is not None and job.done > 0:
                    self.on_pushed(project_id, version)
            except Exception:  # noqa: BLE001 - a hook must not end the poller
                log.exception("refresh: the after-push hook failed")
        return status

    def _run(
        self, job_id: int, project_id: str, version: str, plan: ProjectPlan, url: str, token: str
    ) -> tuple[str, str | None]:
        job = self.jobs.get(job_id)
        already = job.done if job is not None else 0
        tasks = self.source.tasks(url, token, project_id)
        todo = refresh_candidates(tasks, version, self.limits.max_tasks - already)
        self.jobs.set_total(job_id, already + len(todo) + (job.skipped + job.failed if job else 0))
        began = time.perf_counter()
        if self.prepare is not None and todo:
            try:  # the new version's student (and its referee) first, or the first tasks meet the old one
                self.prepare(project_id, plan)
            except Exception as exc:  # noqa: BLE001 - no student yet: the refresh goes on with what there is
                log.warning("project %s: refresh job %d goes on without the new student (%s)", project_id, job_id,
                            type(exc).__name__)
        log.info("project %s: refreshing %d un-annotated tasks with %s (job %d)", project_id, len(todo), version,
                 job_id)
        for start in range(0, len(todo), self.limits.batch_size):
            batch = todo[start:start + self.limits.batch_size]
            stop = self._should_stop(job_id, project_id, version, plan)
            if stop is not None:
                self.jobs.add(job_id, skipped=len(todo) - start)
                return stop
            self._batch(job_id, project_id, version, plan, url, token, batch)
        log.info("project %s: refresh job %d done in %.1f s", project_id, job_id, time.perf_counter() - began)
        return "done", None

    def _should_stop(self, job_id: int, project_id: str, version: str, plan: ProjectPlan) -> tuple[str, str] | None:
        if self._stop.is_set():
            return "interrupted", "the process is stopping"
        if self.jobs.cancel_requested(job_id):
            return "cancelled", "cancelled by a user"
        if self.version_for(plan, project_id) != version:
            return "superseded", "the project's model_version moved on"
        if self.jobs.cost_today() >= self.limits.max_cost_usd:
            return "budget", f"REFRESH_MAX_COST_USD={self.limits.max_cost_usd:g} reached for today"
        return None

    def _batch(
        self, job_id: int, project_id: str, version: str, plan: ProjectPlan, url: str, token: str,
        batch: list[dict[str, Any]],
    ) -> None:
        claimed = self.push.claim(project_id, version, [t["id"] for t in batch])
        mine = [t for t in batch if t["id"] in claimed]
        self.push.tag(project_id, version, [t["id"] for t in mine], claim_tag(job_id))
        if len(mine) < len(batch):
            self.jobs.add(job_id, skipped=len(batch) - len(mine))  # in flight or pushed by a retrieve
        if not mine:
            return
        self.jobs.add(job_id, running=len(mine))
        items, failed, cost, calls = [], [], 0.0, 0
        try:
            for task, result in self.predictor.predict_stream(plan, mine, version, project_id):
                if not result.cached and not result.student and result.reason != "bad_task":
                    calls += 1
                    cost += self.prices.cost(plan.model, result.prompt_tokens, result.completion_tokens) or 0.0
                if result.item:
                    items.append(prediction_item(int(task["id"]), result.item, version))
                else:
                    failed.append(int(task["id"]))
            annotated = self.source.annotated(url, token, project_id, [i["task"] for i in items]) if items else set()
        except BaseException:
            self.push.release(project_id, version, [t["id"] for t in mine])
            self.jobs.add(job_id, running=-len(mine), failed=len(mine), cost_usd=cost, llm_calls=calls)
            raise
        fresh = [i for i in items if i["task"] not in annotated]
        self.push.release(project_id, version, failed + sorted(annotated))
        delivered = self._send(url, token, project_id, fresh)
        if delivered:
            self.push.mark_pushed(project_id, version, [i["task"] for i in fresh])
        else:
            self.push.release(project_id, version, [i["task"] for i in fresh])
        self.jobs.add(
            job_id, running=-len(mine), done=len(fresh) if delivered else 0,
            failed=len(failed) + (0 if delivered else len(fresh)), skipped=len(annotated), cost_usd=cost,
            llm_calls=calls,
        )

    def _send(self, url: str, token: str, project_id: str, items: list[dict[str, Any]]) -> bool:
        if not items:
            return True
        for attempt in range(self.push_retries + 1):
            try:
                self.sender(url, token, project_id, items)
                return True
            except Exception as exc:  # noqa: BLE001 - any transport or API error: retry, then count failed
                log.warning("refresh: push to Label Studio failed (attempt %d): %s", attempt + 1, type(exc).__name__)
                if attempt < self.push_retries:
                    time.sleep(0.5 * 2**attempt)
        return False
