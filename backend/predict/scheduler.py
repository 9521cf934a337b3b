"""Where predictions run: two lanes, so an annotator never waits behind a bulk run.

- The interactive lane serves `/predict` calls answered synchronously (an annotator opened a task, a
  small "Retrieve predictions"): its own threads, a deadline, and urgent provider slots (the LLM
  client's limiter serves urgent callers first).
- The bulk lane serves pushed retrieves and `lsllm prelabel`: its own threads, no deadline.

Both lanes share one provider limit, so together they never exceed what the provider allows; a bulk run
of 400 tasks delays an interactive call by at most one provider round trip (benchmarks/interactive_lane.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed, wait
from typing import Any

from backend.metrics import Metrics
from backend.predict.pipeline import TaskPipeline, TaskResult
from backend.predict.plans import ProjectPlan

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(self, pipeline: TaskPipeline, metrics: Metrics, threads: int, predict_deadline: float) -> None:
        self.pipeline = pipeline
        self.metrics = metrics
        self.predict_deadline = predict_deadline
        self._interactive = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="llm-interactive")
        self._bulk = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="llm-bulk")

    def close(self) -> None:
        for pool in (self._interactive, self._bulk):
            pool.shutdown(wait=False, cancel_futures=True)

    def submit(
        self, plan: ProjectPlan, unit: Sequence[Mapping[str, Any]], model_version: str, project_id: str | None = None
    ) -> Future[list[TaskResult]]:
        """One unit on the bulk lane, with no deadline."""
        return self._bulk.submit(self.pipeline.predict_unit, plan, list(unit), model_version, None, project_id)

    def predict_stream(
        self, plan: ProjectPlan, tasks: Sequence[Mapping[str, Any]], model_version: str, project_id: str | None = None
    ) -> Iterator[tuple[Mapping[str, Any], TaskResult]]:
        """(task, result) pairs as they finish, all tasks in flight on the bulk lane (no deadline)."""
        futures = {self.submit(plan, unit, model_version, project_id): unit
                   for unit in self.pipeline.units(plan, tasks)}
        for future in as_completed(futures):
            unit = futures[future]
            try:
                yield from zip(unit, future.result())
            except Exception as exc:  # noqa: BLE001 - one task's bug must not end the stream
                log.error("tasks %s failed unexpectedly: %r", [t.get("id") for t in unit], exc)
                for task in unit:
                    yield task, TaskResult([], error="internal error", reason="error")

    def predict_tasks(
        self,
        plan: ProjectPlan,
        tasks: Sequence[Any],
        model_version: str,
        deadline_seconds: float | None = None,
        project_id: str | None = None,
    ) -> list[TaskResult]:
        """One result per task, in order, on the interactive lane; unfinished tasks at the deadline
        answer []."""
        deadline = time.monotonic() + (deadline_seconds or self.predict_deadline)
        results: list[TaskResult | None] = [None] * len(tasks)
        valid = []
        for i, task in enumerate(tasks):
            if isinstance(task, Mapping):
                valid.append(i)
            else:
                self.metrics.tasks.labels("bad_task").inc()
                results[i] = TaskResult([], error="task is not an object", reason="bad_task")
        units = self.pipeline.units(plan, valid)  # units of positions
        futures = [
            self._interactive.submit(self.pipeline.predict_unit, plan, [tasks[i] for i in unit], model_version,
                                     deadline, project_id, True)
            for unit in units
        ]
        wait(futures, timeout=max(0.0, deadline - time.monotonic()))
        for unit, future in zip(units, futures):
            if future.done() and not future.cancelled() and future.exception() is None:
                for i, result in zip(unit, future.result()):
                    results[i] = result
                continue
            if not future.done():
                future.cancel()
                self.metrics.tasks.labels("deadline").inc(len(unit))
                failed = TaskResult([], error="deadline reached", reason="deadline")
            else:
                log.error("tasks failed unexpectedly: %r", future.exception())
                self.metrics.tasks.labels("error").inc(len(unit))
                failed = TaskResult([], error="internal error", reason="error")
            for i in unit:
                results[i] = failed
        return [r if r is not None else TaskResult([], error="internal error", reason="error") for r in results]
