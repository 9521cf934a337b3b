"""Pre-label a whole Label Studio project: tasks in, predictions pushed back in batches.

The run reads tasks page by page (never the whole project into memory), skips those that already hold
a prediction of the current model_version (so a re-run resumes), keeps a bounded number of tasks in
flight on the predictor's pool (the LLM client's adaptive limit decides how many calls actually run),
and hands finished predictions to a BatchPusher. It stops submitting when asked (Ctrl-C), after
`max_consecutive_failures` provider failures in a row, or at the first refused credential; tasks in
flight always finish and what is done is always pushed. A task id is submitted at most once per run.
With LLM_TASKS_PER_CALL, tasks are submitted in groups answered by one call each. `--batch` runs the
same way through OpenAI's Batch API instead (backend.runs.batch_api).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

from backend.labelstudio.api import prediction_versions
from backend.labelstudio.batch_push import BatchPusher, Items, prediction_item
from backend.llm.pricing import PriceTable, format_cost
from backend.predict.predictor import Predictor, ProjectPlan, TaskResult

log = logging.getLogger(__name__)

NO_CALL = {"bad_task", "deadline", "error"}  # outcomes that never reached the provider
# failures that say the provider (not the task) is in trouble: they count toward the stop
PROVIDER_FAILURES = {"llm_auth", "llm_rate_limit", "llm_timeout", "llm_server", "llm_connection", "llm_empty"}


class Progress(Protocol):
    def update(self, n: int = 1) -> Any: ...

    def set_postfix_str(self, s: str, refresh: bool = True) -> Any: ...

    def close(self) -> Any: ...


@dataclass
class PrelabelOptions:
    limit: int | None = None  # tasks to predict in this run (skipped ones do not count)
    in_flight: int = 16  # LLM calls' worth of tasks submitted and not yet finished
    max_consecutive_failures: int = 20
    push_batch: int = 100
    push_backoff: float = 0.5  # seconds before the first retry of a failed push, doubling


@dataclass
class RunStats:
    model_version: str
    seen: int = 0
    skipped: int = 0
    predicted: int = 0
    pushed: int = 0
    not_pushed: int = 0
    failed: Counter = field(default_factory=Counter)
    llm_calls: int = 0
    cache_hits: int = 0
    student_answers: int = 0  # tasks the student answered alone (cascade): LLM calls saved
    llm_answers: int = 0  # tasks the LLM answered (a call or a cache hit)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = 0.0
    throttled: int = 0
    stopped: str | None = None  # why the run ended early: interrupted, provider failures, credentials
    seconds: float = 0.0

    def add_cost(self, cost: float | None) -> None:
        """Add a call's cost; one unpriced call makes the total unknown."""
        self.cost = None if cost is None or self.cost is None else self.cost + cost

    def pushed_batch(self, items: Items, delivered: bool) -> None:
        """BatchPusher's report of one import/predictions call."""
        if delivered:
            self.pushed += len(items)
        else:
            self.not_pushed += len(items)

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())

    def exit_code(self) -> int:
        if self.stopped == "interrupted":
            return 130
        return 0 if not self.failed_total and not self.not_pushed and not self.stopped else 1

    def summary(self) -> str:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.failed.items()))
        rate = self.predicted / self.seconds if self.seconds else 0.0
        lines = [
            f"model_version {self.model_version}",
            f"  done       {self.pushed:>8}  (predictions stored in Label Studio)",
            f"  skipped    {self.skipped:>8}  (already had a prediction of this version)",
            f"  failed     {self.failed_total:>8}"
            + (f"  ({reasons}; a re-run retries them)" if self.failed_total else ""),
        ]
        if self.not_pushed:
            lines.append(f"  not pushed {self.not_pushed:>8}  (Label Studio refused the push; a re-run retries them)")
        lines += [
            f"  tokens     {self.prompt_tokens:,} in / {self.completion_tokens:,} out, cost {format_cost(self.cost)}",
            f"  provider   {self.llm_calls} calls, {self.cache_hits} cache hits, {self.throttled} 429s handled",
            f"  answers    {self.llm_answers} by the LLM, {self.student_answers} by the student "
            f"({self.student_answers} LLM calls saved)",
            f"  time       {self.seconds:.1f} s, {rate:.1f} tasks/s",
        ]
        if self.stopped:
            lines.append(f"  stopped early: {self.stopped}")
        return "\n".join(lines)


@dataclass(frozen=True)
class RunTarget:
    """What a prelabel run predicts with and where the predictions go: the predictor and plan, the
    model_version it writes, the project, `send` (one import/predictions call) and the prices."""

    predictor: Predictor
    plan: ProjectPlan
    version: str
    project_id: str
    send: Callable[[Items], None]
    prices: PriceTable


class RunBase:
    """The fields both kinds of run (live calls, Batch API) read, and their counts."""

    def __init__(self, target: RunTarget, progress: Progress | None = None) -> None:
        self.predictor = target.predictor
        self.plan = target.plan
        self.version = target.version
        self.project_id = target.project_id
        self.send = target.send
        self.prices = target.prices
        self.progress = progress
        self.stats = RunStats(target.version)


class Prelabeler(RunBase):
    def __init__(self, target: RunTarget, options: PrelabelOptions, progress: Progress | None = None) -> None:
        super().__init__(target, progress)
        self.options = options
        self._lock = threading.Lock()
        self._done: queue.Queue[tuple[Mapping[str, Any], TaskResult]] = queue.Queue()
        self._slots = threading.Semaphore(1)  # sized per run: in_flight calls' worth of tasks
        self._in_flight = 0
        self._streak = 0

    def run(self, tasks: Iterable[Mapping[str, Any]]) -> RunStats:
        """Predict and push every task that needs it; returns the counts (also after Ctrl-C)."""
        began = time.monotonic()
        pusher = BatchPusher(self.send, self._pushed, backoff=self.options.push_backoff)
        batch: Items = []
        unit: list[Mapping[str, Any]] = []  # tasks for the next LLM call (several for grouped calls)
        size = self.predictor.group_size(self.plan)
        self._slots = threading.Semaphore(max(1, self.options.in_flight) * size)
        seen: set[int] = set()
        try:
            try:
                for task in tasks:
                    batch = self._collect(batch, pusher)
                    if self.stats.stopped or self._limit_reached():
                        break
                    task_id = int(task["id"])
                    if task_id in seen:
                        continue
                    seen.add(task_id)
                    self.stats.seen += 1
                    if self.version in prediction_versions(dict(task)):
                        self.stats.skipped += 1
                        self._tick()
                        continue
                    while not self._slots.acquire(timeout=0.05):
                        batch = self._collect(batch, pusher)
                    if self.stats.stopped:
                        self._slots.release()
                        self.stats.seen -= 1
                        break
                    unit.append(task)
                    if len(unit) >= size:
                        self._submit(unit)
                        unit = []
                if unit and not self.stats.stopped:
                    self._submit(unit)
                    unit = []
            except KeyboardInterrupt:
                self.stats.stopped = "interrupted"
                log.warning("interrupted: finishing %d tasks in flight and pushing what is done "
                            "(Ctrl-C again to stop waiting)", self._in_flight)
            for _ in unit:  # gathered but never sent: not this run's
                self._slots.release()
                self.stats.seen -= 1
            try:
                while self._in_flight:
                    batch = self._collect(batch, pusher, wait=0.1)
            except KeyboardInterrupt:
                self.stats.stopped = "interrupted"
                log.warning("stopped waiting: %d tasks in flight are left for the next run", self._in_flight)
            pusher.put(batch)
        finally:
            pusher.close()
            self.stats.throttled = self.predictor.llm.limiter.throttles
            self.stats.seconds = time.monotonic() - began
        return self.stats

    def _limit_reached(self) -> bool:
        limit = self.options.limit
        return limit is not None and self.stats.seen - self.stats.skipped >= limit

    def _submit(self, unit: list[Mapping[str, Any]]) -> None:
        with self._lock:
            self._in_flight += len(unit)
        future = self.predictor.submit(self.plan, unit, self.version, self.project_id)

        def finished(f: Future) -> None:
            try:
                results = f.result()
            except Exception as exc:  # noqa: BLE001 - one unit's bug must not end the run
                log.error("tasks %s failed unexpectedly: %r", [t.get("id") for t in unit], exc)
                results = [TaskResult([], error="internal error", reason="error")] * len(unit)
            if any(not r.cached and not r.student and r.reason not in NO_CALL for r in results):
                with self._lock:
                    self.stats.llm_calls += 1  # one call answered the whole unit
            for task, result in zip(unit, results):
                self._done.put((task, result))
                self._slots.release()

        future.add_done_callback(finished)

    def _collect(self, batch: Items, pusher: BatchPusher, wait: float = 0.0) -> Items:
        """Account for every finished task; hand full batches to the pusher."""
        while True:
            try:
                task, result = self._done.get(timeout=wait) if wait else self._done.get_nowait()
            except queue.Empty:
                return batch
            wait = 0.0
            with self._lock:
                self._in_flight -= 1
            self._account(result)
            if result.item:
                batch.append(prediction_item(task["id"], result.item, self.version))
                if len(batch) >= self.options.push_batch:
                    pusher.put(batch)
                    batch = []
            self._tick()

    def _account(self, result: TaskResult) -> None:
        stats = self.stats
        if result.cached:
            stats.cache_hits += 1
        elif result.reason not in NO_CALL:
            stats.prompt_tokens += result.prompt_tokens
            stats.completion_tokens += result.completion_tokens
            stats.add_cost(self.prices.cost(self.plan.model, result.prompt_tokens, result.completion_tokens))
        if result.item:
            stats.predicted += 1
            if result.student:
                stats.student_answers += 1
            else:
                stats.llm_answers += 1
            self._streak = 0
            return
        stats.failed[result.reason] += 1
        if result.reason in PROVIDER_FAILURES:
            self._streak += 1
        if result.reason == "llm_auth" and not stats.stopped:
            stats.stopped = "the provider refused the credentials (check LLM_API_KEY)"
        elif self._streak >= self.options.max_consecutive_failures and not stats.stopped:
            stats.stopped = f"{self._streak} provider failures in a row ({result.reason})"

    def _pushed(self, items: Items, delivered: bool) -> None:
        with self._lock:
            self.stats.pushed_batch(items, delivered)

    def _tick(self) -> None:
        if self.progress is None:
            return
        stats = self.stats
        self.progress.update(1)
        self.progress.set_postfix_str(
            f"done={stats.predicted} skip={stats.skipped} fail={stats.failed_total} "
            f"tok={stats.prompt_tokens + stats.completion_tokens:,} cost={format_cost(stats.cost).split(' ')[0]}",
            refresh=False,
        )
