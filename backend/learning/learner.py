"""Apply stored webhook events to the example store, one transaction per event.

An event and its "applied" mark are written together, so a worker killed mid-way leaves the event
unapplied and another worker (or the same after restart) applies it again; every write is idempotent.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from label_studio_sdk.label_interface import LabelInterface
from sqlalchemy.engine import Engine

from backend.learning.agreement import NoPrediction, review_outcome
from backend.learning.intake import BadEvent, parse_annotation
from backend.metrics import Metrics
from backend.store.db import write
from backend.store.example_store import ExampleStore, PendingEvent
from backend.store.project_store import ProjectStore, count_changes, next_generation, upsert_project
from backend.store.quality_store import QualityStore
from converters.examples import result_errors, result_labels, reviewer_changed, unanswered
from converters.task_spec import TaskSpec, build_task_spec

log = logging.getLogger(__name__)

# the events that are a reviewer's judgement of a prediction: a bulk "predictions to annotations"
# (ANNOTATIONS_CREATED) or imported annotations (TASKS_CREATED) copy predictions without one
REVIEWS = frozenset({"ANNOTATION_CREATED", "ANNOTATION_UPDATED"})

# project_id -> every task ({"id", "data"}) with its annotations as Label Studio's API returns them
Resync = Callable[[str], list[tuple[dict[str, Any], list[dict[str, Any]]]]]
# (project_id, prediction_id) -> {"id", "result", "score", "model_version"} or None when unavailable
PredictionFetch = Callable[[str, int], "dict[str, Any] | None"]


@dataclass(frozen=True)
class VersionPolicy:
    mode: str = "count"  # every | count | training
    every: int = 20


class Learner:
    def __init__(
        self,
        engine: Engine,
        store: ExampleStore,
        projects: ProjectStore,
        metrics: Metrics,
        policy: VersionPolicy,
        resync: Resync | None = None,
        fetch_prediction: PredictionFetch | None = None,
    ) -> None:
        self.engine = engine
        self.quality = QualityStore(engine)  # live agreement, written with each annotation
        self.fetch_prediction = fetch_prediction
        self.store = store
        self.projects = projects
        self.metrics = metrics
        self.policy = policy
        self.resync = resync
        self._parsed: dict[str, tuple[TaskSpec, LabelInterface] | None] = {}

    def _parse(self, config: str | None) -> tuple[TaskSpec, LabelInterface] | None:
        """Spec and interface for a config, parsed once per process."""
        if not config:
            return None
        if config not in self._parsed:
            try:
                self._parsed[config] = (build_task_spec(config), LabelInterface(config))
            except ValueError:
                self._parsed[config] = None
            if len(self._parsed) > 64:
                self._parsed.pop(next(iter(self._parsed)))
        return self._parsed.get(config)

    def project_config(self, event: PendingEvent) -> str | None:
        config = event.payload.get("label_config")
        if config:
            return config
        info = self.projects.get(event.project_id)
        return info.label_config if info else None

    def apply_batch(self, batch: list[PendingEvent]) -> None:
        """Apply several events in one write transaction (fewer commits, less lock contention);
        if any of them fails, apply them one by one so only the bad one is marked as an error."""
        simple = [e for e in batch if e.action != "START_TRAINING"]
        for event in simple:
            self._resolve_predictions(event)
        try:
            with write(self.engine) as conn:
                for event in simple:
                    changes = self._apply_in(conn, event)
                    if changes:
                        count_changes(conn, event.project_id, changes, self.policy.mode, self.policy.every, False)
                    self.store.mark_applied(conn, event.id, "applied")
            for event in simple:
                self.metrics.webhook_events.labels(event.action, "applied").inc()
        except Exception:  # noqa: BLE001 - isolate the failing event below
            for event in simple:
                self.apply(event)
        for event in batch:
            if event.action == "START_TRAINING":
                self.apply(event)

    def apply(self, event: PendingEvent) -> str:
        """Apply one event; returns its outcome (applied, rejected, error)."""
        try:
            if event.action == "START_TRAINING":
                return self._resync(event)
            self._resolve_predictions(event)
            with write(self.engine) as conn:
                changes = self._apply_in(conn, event)
                force = False
                if changes:
                    count_changes(conn, event.project_id, changes, self.policy.mode, self.policy.every, force)
                self.store.mark_applied(conn, event.id, "applied")
            self.metrics.webhook_events.labels(event.action, "applied").inc()
            return "applied"
        except Exception as exc:  # a bad event must not stop the queue: record why and move on
            log.exception("event %s (%s) failed", event.id, event.action)
            with write(self.engine) as conn:
                self.store.mark_applied(conn, event.id, "error", f"{type(exc).__name__}: {exc}")
            self.metrics.webhook_events.labels(event.action, "error").inc()
            return "error"

    def _apply_in(self, conn: Any, event: PendingEvent) -> int:
        payload = event.payload
        pid = event.project_id
        if event.action == "PROJECT_UPDATED":
            return self._project_updated(conn, pid, payload.get("label_config"))
        seq = next_generation(conn, pid)
        if event.action == "ANNOTATIONS_DELETED":
            self.quality.remove(conn, pid, payload.get("deleted_annotations") or [])
            return self.store.delete(conn, pid, payload.get("deleted_annotations") or [], seq)
        if event.action == "TASKS_DELETED":
            ids = self.store.annotation_ids_for_tasks(conn, pid, payload.get("deleted_tasks") or [])
            self.quality.remove(conn, pid, ids)
            return self.store.delete(conn, pid, ids, seq)
        config = self.project_config(event)
        tasks = {t["id"]: t for t in payload.get("tasks") or []}
        changes = 0
        for annotation in payload.get("annotations") or []:
            task = tasks.get(annotation.get("task_id"))
            if task is None:
                continue
            changes += self._upsert_annotation(conn, pid, config, task, annotation, seq, event.action in REVIEWS)
        return changes

    def _upsert_annotation(
        self, conn: Any, pid: str, config: str | None, task: Mapping[str, Any], annotation: Mapping[str, Any], seq: int,
        review: bool = False,
    ) -> int:
        parsed = self._parse(config)
        data = dict(task.get("data") or {})
        if parsed is not None:
            data = {k: data[k] for k in parsed[0].data_keys if k in data}
        status = "live"
        if annotation.get("was_cancelled"):
            status = "skipped"
        elif parsed is not None and result_errors(parsed[1], parsed[0], data, annotation["result"]):
            status = "set_aside"
        elif parsed is not None and unanswered(parsed[0], annotation["result"]):
            status = "set_aside"  # e.g. a single choice left empty: kept, but no answer to show
        # an empty submitted result is an answer ("no entities"): live; only was_cancelled is skipped
        values = {
            "task_id": task.get("id"),
            "data": json.dumps(data, ensure_ascii=False),
            "result": json.dumps(annotation.get("result") or [], ensure_ascii=False),
            "labels": json.dumps(result_labels(annotation.get("result") or [])),
            "corrected": _as_int(reviewer_changed(annotation.get("result") or [], annotation.get("prediction"))),
            "completed_by": annotation.get("completed_by"),
            "updated_at": float(annotation.get("updated_at") or 0.0),
            "status": status,
        }
        written = self.store.upsert(conn, pid, int(annotation["id"]), values, seq)
        if written and review:  # not stale, not deleted: the review's outcome follows the example
            self._record_agreement(conn, pid, task, annotation)
        return int(written)

    def _resolve_predictions(self, event: PendingEvent) -> None:
        """Fill in the prediction an annotation started from when Label Studio sent only its id
        (`parent_prediction`); network, so before the write transaction. Unreadable: left unknown."""
        if self.fetch_prediction is None:
            return
        for annotation in event.payload.get("annotations") or []:
            parent = annotation.get("parent_prediction")
            if annotation.get("prediction") is None and parent is not None and not annotation.get("was_cancelled"):
                annotation["prediction"] = self.fetch_prediction(event.project_id, int(parent))

    def _record_agreement(self, conn: Any, pid: str, task: Mapping[str, Any], annotation: Mapping[str, Any]) -> None:
        """Keep the review's outcome for live agreement (a skipped task has none); an annotation whose
        prediction is unknown (none, or a resync, which Label Studio's API sends without it) keeps
        whatever outcome an earlier delivery recorded."""
        aid = int(annotation["id"])
        try:
            outcome = review_outcome(annotation, annotation.get("prediction"))
        except NoPrediction:
            return
        except ValueError as exc:  # skipped, or regions agreement cannot read: no outcome for it
            if not annotation.get("was_cancelled"):
                log.warning("live agreement: annotation %s not scored: %s", aid, exc)
            self.quality.remove(conn, pid, [aid])
            return
        self.quality.record(conn, pid, aid, task.get("id"), outcome, float(annotation.get("updated_at") or 0.0))

    def _project_updated(self, conn: Any, pid: str, config: str | None) -> int:
        """A changed label config sets aside examples whose labels vanished (and restores returning ones)."""
        parsed = self._parse(config)
        if parsed is None:
            return 0
        spec = parsed[0]
        upsert_project(conn, pid, {"label_config": config})
        known = {label.value for control in spec.controls for label in control.labels}
        seq = next_generation(conn, pid)
        changes = 0
        for example in self.store.all_rows(conn, pid, ("live", "set_aside")):
            fits = set(example.labels) <= known and not unanswered(spec, example.result)
            wanted = "live" if fits else "set_aside"
            if wanted != example.status:
                self.store.set_status(conn, pid, example.annotation_id, wanted, seq)
                changes += 1
        return changes

    def _resync(self, event: PendingEvent) -> str:
        """START_TRAINING: replace the project's examples with what Label Studio holds now."""
        if self.resync is None:
            with write(self.engine) as conn:
                self.store.mark_applied(conn, event.id, "error", "no Label Studio credentials for a resync")
            return "error"
        fetched = self.resync(event.project_id)  # network first, outside any transaction
        with write(self.engine) as conn:
            config = self.project_config(event)
            seq = next_generation(conn, event.project_id)
            seen: set[int] = set()
            changes = 0
            for task, raw_annotations in fetched:
                for annotation in parsed_annotations(task, raw_annotations):
                    seen.add(int(annotation["id"]))
                    changes += self._upsert_annotation(conn, event.project_id, config, task, annotation, seq)
            present = self.store.all_rows(conn, event.project_id, ("live", "skipped", "set_aside"))
            gone = [e.annotation_id for e in present if e.annotation_id not in seen]
            self.quality.remove(conn, event.project_id, gone)
            changes += self.store.delete(conn, event.project_id, gone, seq)
            count_changes(conn, event.project_id, changes, self.policy.mode, self.policy.every, force=True)
            self.store.mark_applied(conn, event.id, "applied")
        self.metrics.webhook_events.labels(event.action, "applied").inc()
        log.info("resync of project %s: %d annotations, %d removed", event.project_id, len(seen), len(gone))
        return "applied"


def parsed_annotations(task: Mapping[str, Any], raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A resynced task's annotations normalised like webhook annotations; one that does not parse is
    skipped with a warning (the rest of the project still resyncs)."""
    out = []
    for annotation in raw:
        try:
            out.append(parse_annotation(annotation, int(task["id"])))
        except BadEvent as exc:
            log.warning("resync: task %s: skipped an annotation (%s)", task.get("id"), exc)
    return out


def _as_int(value: bool | None) -> int | None:
    return None if value is None else int(value)


class EventWorker:
    """A background thread in each worker process that applies pending events.

    It gives way to intake: while webhooks keep arriving in this process (less than `quiet` seconds
    apart) it applies nothing, for at most `max_lag` seconds of continuous traffic. Applying an event
    costs about twice the CPU of taking it in and holds the store's write lock, which /webhook needs
    too; under a burst from 8 senders on 2 cores that put /webhook's p99 at 100-240 ms (measured). A
    burst is applied right after it; a review team's steady trickle is applied at once. Batches are
    small (5 events) so the write lock is never held long.
    """

    def __init__(
        self, learner: Learner, interval: float = 0.2, batch: int = 5, quiet: float = 0.1, max_lag: float = 5.0
    ) -> None:
        self.learner = learner
        self.interval = interval
        self.batch = batch
        self.quiet = quiet
        self.max_lag = max_lag
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_intake = float("-inf")
        self._busy_since = float("-inf")

    def note_intake(self) -> None:
        """A webhook event was just stored by this process."""
        now = time.monotonic()
        if now - self._last_intake > self.quiet:
            self._busy_since = now
        self._last_intake = now

    def giving_way(self) -> bool:
        now = time.monotonic()
        return now - self._last_intake < self.quiet and now - self._busy_since < self.max_lag

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True, name="event-worker")
            self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def apply_pending(self, give_way: bool = False) -> int:
        """Apply every event this worker can lease now (with `give_way`, stop while intake is busy);
        returns how many it applied."""
        done = 0
        while True:
            if give_way and self.giving_way():
                return done
            pending = self.learner.store.claim(self.batch)
            if not pending:
                return done
            self.learner.apply_batch(pending)
            done += len(pending)

    def drain(self, timeout: float = 60.0) -> int:
        """Apply until no event is pending, also those leased by other workers (tests, shutdown)."""
        done = 0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done += self.apply_pending()
            if self.learner.store.pending_count() == 0:
                return done
            time.sleep(0.02)
        raise TimeoutError("events still pending after drain timeout")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.apply_pending(give_way=True)
            except Exception:  # database outage: keep the thread alive and try again later
                log.exception("event worker: cannot read the event table")
                self._stop.wait(2.0)
            self._wake.wait(min(self.interval, self.quiet) if self.giving_way() else self.interval)
            self._wake.clear()
