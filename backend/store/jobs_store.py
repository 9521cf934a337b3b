"""Prediction jobs in the shared store: every pushed retrieve and every refresh, with per-task counts.

A job is one row of `jobs`; all workers and replicas (and the CLI) read the same rows, so
`GET /projects/<id>/jobs`, `/metrics` and `lsllm jobs` agree. The process running a job writes its
counts as tasks settle, and a heartbeat (`updated_at`, from a thread: `heartbeat`) for as long as it
runs, through waits that settle nothing (a student still training, a queue ahead of it); a job whose
heartbeat is older than the stale limit belongs to a dead process: `take_over` lets another process
resume it (refresh), `reap` marks it interrupted (a pushed retrieve, whose tasks Label Studio asks for
again). A refresh is claimed by its `claim_key` (unique), so only one process runs a project's refresh
of one model_version.

Counts: `queued` is derived (total minus the others); `running` is what is in flight now.
"""

from __future__ import annotations

import datetime as dt
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import and_, func, select, update
from sqlalchemy.engine import Engine

from backend.store.db import insert_ignore, jobs, review_tabs, write
from backend.store.heartbeat import Heartbeat, beat_interval

ACTIVE = ("queued", "running")
FINISHED = ("done", "failed", "cancelled", "interrupted", "superseded", "budget")


def process_owner() -> str:
    """An id for this process (host-independent enough for a claim: pid plus a random suffix)."""
    return f"{os.getpid()}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Job:
    id: int
    project_id: str
    kind: str  # retrieve | refresh
    model_version: str
    status: str  # queued, running, done, failed, cancelled, interrupted, superseded, budget
    total: int
    running: int
    done: int
    failed: int
    skipped: int
    cost_usd: float
    llm_calls: int
    cancel_requested: bool
    owner: str | None
    created_at: float
    updated_at: float
    finished_at: float | None
    detail: str | None

    @property
    def queued(self) -> int:
        if self.status not in ACTIVE:
            return 0
        return max(0, self.total - self.running - self.done - self.failed - self.skipped)

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["queued"] = self.queued
        out["cost_usd"] = round(self.cost_usd, 6)
        return out


class JobsStore:
    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time, stale_seconds: float = 300.0) -> None:
        self.engine = engine
        self.clock = clock
        self.stale_seconds = stale_seconds
        self.beat_seconds = beat_interval(stale_seconds)

    # --- writing --------------------------------------------------------------------------------
    def create(
        self, project_id: str, kind: str, model_version: str, total: int, owner: str,
        claim_key: str | None = None, status: str = "running",
    ) -> int | None:
        """A new job; None when `claim_key` is already taken (another process runs it, or ran it)."""
        now = self.clock()
        row = {"project_id": project_id, "kind": kind, "model_version": model_version, "status": status,
               "total": int(total), "running": 0, "done": 0, "failed": 0, "skipped": 0, "cost_usd": 0.0,
               "llm_calls": 0, "cancel_requested": 0, "owner": owner, "claim_key": claim_key,
               "created_at": now, "updated_at": now}
        with write(self.engine) as conn:
            if claim_key is not None:
                if not insert_ignore(conn, jobs, row):
                    return None
                return int(conn.execute(select(jobs.c.id).where(jobs.c.claim_key == claim_key)).scalar_one())
            inserted = conn.execute(jobs.insert().values(**row)).inserted_primary_key
            assert inserted is not None
            return int(inserted[0])

    def take_over(self, claim_key: str, owner: str) -> int | None:
        """The job of `claim_key` when it is active and its heartbeat is stale (its process died): now
        owned by `owner`, its in-flight tasks back in the queue. None otherwise."""
        now = self.clock()
        with write(self.engine) as conn:
            changed = conn.execute(
                update(jobs)
                .where(and_(jobs.c.claim_key == claim_key, jobs.c.status.in_(ACTIVE),
                            jobs.c.cancel_requested == 0, jobs.c.updated_at < now - self.stale_seconds))
                .values(owner=owner, updated_at=now, running=0, status="running")
            ).rowcount
            if not changed:
                return None
            return int(conn.execute(select(jobs.c.id).where(jobs.c.claim_key == claim_key)).scalar_one())

    def add(
        self, job_id: int, *, total: int = 0, running: int = 0, done: int = 0, failed: int = 0, skipped: int = 0,
        cost_usd: float = 0.0, llm_calls: int = 0,
    ) -> None:
        """Move counts (deltas; `running` may go down) and beat the heartbeat."""
        with write(self.engine) as conn:
            conn.execute(
                update(jobs).where(jobs.c.id == job_id).values(
                    total=jobs.c.total + total, running=jobs.c.running + running, done=jobs.c.done + done,
                    failed=jobs.c.failed + failed, skipped=jobs.c.skipped + skipped,
                    cost_usd=jobs.c.cost_usd + cost_usd, llm_calls=jobs.c.llm_calls + llm_calls,
                    updated_at=self.clock(),
                )
            )

    def set_total(self, job_id: int, total: int) -> None:
        with write(self.engine) as conn:
            conn.execute(update(jobs).where(jobs.c.id == job_id).values(total=int(total), updated_at=self.clock()))

    def set_status(self, job_id: int, status: str) -> None:
        with write(self.engine) as conn:
            conn.execute(update(jobs).where(jobs.c.id == job_id).values(status=status, updated_at=self.clock()))

    def beat(self, job_id: int) -> None:
        with write(self.engine) as conn:
            conn.execute(update(jobs).where(jobs.c.id == job_id).values(updated_at=self.clock()))

    def heartbeat(self, job_id: int) -> Heartbeat:
        """A heartbeat (not started) that beats `job_id` every `beat_seconds`: `with jobs.heartbeat(id):`."""
        return Heartbeat(lambda: self.beat(job_id), self.beat_seconds, f"job {job_id}")

    def finish(self, job_id: int, status: str, detail: str | None = None) -> None:
        """End a job (nothing in flight any more); a cancelled job stays cancelled."""
        now = self.clock()
        with write(self.engine) as conn:
            current = conn.execute(select(jobs.c.status, jobs.c.cancel_requested).where(jobs.c.id == job_id)).first()
            if current is None:
                return
            final = "cancelled" if current.cancel_requested and status != "done" else status
            conn.execute(update(jobs).where(jobs.c.id == job_id).values(
                status=final, running=0, finished_at=now, updated_at=now, detail=detail))

    def cancel(self, project_id: str, job_id: int) -> Job | None:
        """Ask the job's process to stop (it releases what is left); a job whose process is gone is
        ended here at once. None: no such job in this project."""
        now = self.clock()
        with write(self.engine) as conn:
            row = conn.execute(select(jobs).where(and_(jobs.c.id == job_id, jobs.c.project_id == project_id))).first()
            if row is None:
                return None
            if row.status in ACTIVE:
                values: dict[str, Any] = {"cancel_requested": 1}
                if row.updated_at < now - self.stale_seconds:  # nobody is running it: end it here
                    values.update(status="cancelled", running=0, finished_at=now, updated_at=now)
                conn.execute(update(jobs).where(jobs.c.id == job_id).values(**values))
        return self.get(job_id)

    def reap(self, kind: str | None = None) -> int:
        """Mark active jobs with a stale heartbeat interrupted (their process died); returns how many."""
        now = self.clock()
        where = and_(jobs.c.status.in_(ACTIVE), jobs.c.updated_at < now - self.stale_seconds)
        if kind is not None:
            where = and_(where, jobs.c.kind == kind)
        with write(self.engine) as conn:
            return conn.execute(update(jobs).where(where).values(
                status="interrupted", running=0, finished_at=now, detail="its process stopped")).rowcount

    # --- reading --------------------------------------------------------------------------------
    def get(self, job_id: int) -> Job | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
        return _job(row) if row is not None else None

    def cancel_requested(self, job_id: int) -> bool:
        with self.engine.connect() as conn:
            return bool(conn.execute(select(jobs.c.cancel_requested).where(jobs.c.id == job_id)).scalar())

    def by_claim(self, claim_key: str) -> Job | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(jobs).where(jobs.c.claim_key == claim_key)).first()
        return _job(row) if row is not None else None

    def list(self, project_id: str | None = None, limit: int = 50) -> list[Job]:
        """Newest first; a job whose process died shows as interrupted (not as running forever)."""
        query = select(jobs).order_by(jobs.c.id.desc()).limit(limit)
        if project_id is not None:
            query = query.where(jobs.c.project_id == project_id)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [self._as_seen(_job(row)) for row in rows]

    def _as_seen(self, job: Job) -> Job:
        if job.status in ACTIVE and job.updated_at < self.clock() - self.stale_seconds:
            return Job(**{**asdict(job), "status": "stale", "running": 0})
        return job

    def last_started(self, project_id: str, kind: str) -> float | None:
        with self.engine.connect() as conn:
            value = conn.execute(select(func.max(jobs.c.created_at)).where(
                and_(jobs.c.project_id == project_id, jobs.c.kind == kind))).scalar()
        return float(value) if value is not None else None

    def cost_since(self, since: float, kind: str = "refresh") -> float:
        """USD spent by jobs of `kind` created since `since` (all projects)."""
        with self.engine.connect() as conn:
            value = conn.execute(select(func.sum(jobs.c.cost_usd)).where(
                and_(jobs.c.kind == kind, jobs.c.created_at >= since))).scalar()
        return float(value or 0.0)

    def cost_today(self, kind: str = "refresh") -> float:
        return self.cost_since(day_start(self.clock()), kind)

    # --- the review tab's record ----------------------------------------------------------------
    def review_tab(self, project_id: str) -> tuple[int | None, float] | None:
        """(view id or None while being created, claimed_at) of the project's review tab, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(select(review_tabs.c.view_id, review_tabs.c.claimed_at)
                               .where(review_tabs.c.project_id == project_id)).first()
        return (row.view_id, float(row.claimed_at)) if row is not None else None

    def claim_review_tab(self, project_id: str, stale_seconds: float = 60.0) -> bool:
        """True when this process should create (or look up) the tab: nobody recorded one, and nobody
        is creating one (or the one who was has been silent for `stale_seconds`)."""
        now = self.clock()
        with write(self.engine) as conn:
            if insert_ignore(conn, review_tabs, {"project_id": project_id, "view_id": None, "claimed_at": now}):
                return True
            return bool(conn.execute(
                update(review_tabs)
                .where(and_(review_tabs.c.project_id == project_id, review_tabs.c.view_id.is_(None),
                            review_tabs.c.claimed_at < now - stale_seconds))
                .values(claimed_at=now)
            ).rowcount)

    def record_review_tab(self, project_id: str, view_id: int | None) -> None:
        """The tab's view id (None: give the claim up, so the next /setup tries again)."""
        with write(self.engine) as conn:
            if view_id is None:
                conn.execute(review_tabs.delete().where(review_tabs.c.project_id == project_id))
            else:
                conn.execute(update(review_tabs).where(review_tabs.c.project_id == project_id)
                             .values(view_id=int(view_id), claimed_at=self.clock()))


def day_start(now: float) -> float:
    """The start of `now`'s UTC day, as a timestamp (the daily refresh budget resets there)."""
    day = dt.datetime.fromtimestamp(now, dt.timezone.utc).date()
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc).timestamp()


def _job(row: Any) -> Job:
    return Job(
        id=int(row.id), project_id=row.project_id, kind=row.kind, model_version=row.model_version,
        status=row.status, total=int(row.total), running=int(row.running), done=int(row.done),
        failed=int(row.failed), skipped=int(row.skipped), cost_usd=float(row.cost_usd),
        llm_calls=int(row.llm_calls), cancel_requested=bool(row.cancel_requested), owner=row.owner,
        created_at=float(row.created_at), updated_at=float(row.updated_at),
        finished_at=float(row.finished_at) if row.finished_at is not None else None, detail=row.detail,
    )


def job_gauges(store: JobsStore, per_project: int = 200) -> str:
    """Prometheus text: lsllm_jobs{project,kind,status} (jobs among each project's latest `per_project`),
    lsllm_job_tasks{project,job,kind,state} for unfinished jobs, lsllm_job_cost_usd{project,job,kind} for
    unfinished jobs, and lsllm_refresh_cost_usd_today."""
    counts: dict[tuple[str, str, str], int] = {}
    active: list[Job] = []
    for job in store.list(None, limit=per_project * 20):
        key = (job.project_id, job.kind, job.status)
        counts[key] = counts.get(key, 0) + 1
        if job.status in ACTIVE:
            active.append(job)
    lines = ["# HELP lsllm_jobs Pushed retrieves and refreshes by project, kind and status",
             "# TYPE lsllm_jobs gauge"]
    lines += [f'lsllm_jobs{{project="{p}",kind="{k}",status="{s}"}} {n}' for (p, k, s), n in sorted(counts.items())]
    lines += ["# HELP lsllm_job_tasks Tasks of unfinished jobs by state", "# TYPE lsllm_job_tasks gauge"]
    for job in active:
        for state in ("queued", "running", "done", "failed", "skipped"):
            lines.append(f'lsllm_job_tasks{{project="{job.project_id}",job="{job.id}",kind="{job.kind}",'
                         f'state="{state}"}} {getattr(job, state)}')
    lines += ["# HELP lsllm_job_cost_usd Cost so far of unfinished jobs (USD)", "# TYPE lsllm_job_cost_usd gauge"]
    lines += [f'lsllm_job_cost_usd{{project="{job.project_id}",job="{job.id}",kind="{job.kind}"}} {job.cost_usd:.6f}'
              for job in active]
    lines += ["# HELP lsllm_refresh_cost_usd_today USD spent by refreshes since 00:00 UTC",
              "# TYPE lsllm_refresh_cost_usd_today gauge", f"lsllm_refresh_cost_usd_today {store.cost_today():.6f}"]
    return "\n".join(lines) + "\n"
