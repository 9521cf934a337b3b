"""`lsllm prelabel --batch`: OpenAI's Batch API, half the price, answers within 24 hours.

The run renders every task's request exactly as a live call would send it, uploads them as one JSONL
file per 50,000 tasks (`files.create(purpose="batch")`), starts the batches
(`batches.create(endpoint="/v1/chat/completions", completion_window="24h")`) and polls them. Each
answer goes through the same parse/align/validate step as a live one, lands in the response cache, and
is pushed to Label Studio in batches. Tasks whose request is already cached are answered at once and
never uploaded.

Submitted batches are written to a state file in DATA_DIR before polling starts, so Ctrl-C (or a lost
terminal) leaves them running at the provider: the next run collects them instead of paying again.
"""

from __future__ import annotations

import io
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from backend.labelstudio.batch_push import BatchPusher, prediction_item
from backend.llm.client import LLMError, answer_from_completion
from backend.labelstudio.api import prediction_versions
from backend.predict.predictor import TaskPrompt, TaskResult, task_texts
from backend.runs.prelabel import Progress, RunBase, RunTarget

log = logging.getLogger(__name__)

BATCH_DISCOUNT = 0.5  # the Batch API's price against live calls
TERMINAL = {"completed", "failed", "expired", "cancelled"}


@dataclass
class BatchOptions:
    state_file: Path
    poll_seconds: float = 60.0
    max_requests: int = 50_000  # per batch file (the API's limit)
    limit: int | None = None


class BatchRun(RunBase):
    def __init__(self, target: RunTarget, options: BatchOptions, progress: Progress | None = None) -> None:
        super().__init__(target, progress)
        self.options = options
        self.client = target.predictor.llm.openai

    # --- state: the batches this project+version has running at the provider ------------------------
    def _load(self) -> list[dict[str, Any]]:
        try:
            return list(json.loads(self.options.state_file.read_text(encoding="utf-8"))["batches"])
        except (OSError, ValueError, KeyError, TypeError):
            return []

    def _save(self, batches: list[dict[str, Any]]) -> None:
        path = self.options.state_file
        if not batches:
            path.unlink(missing_ok=True)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"batches": batches}), encoding="utf-8")
        tmp.replace(path)

    # --- the run -------------------------------------------------------------------------------------
    def run(self, tasks: Iterable[Mapping[str, Any]]) -> RunStats:
        began = time.monotonic()
        pusher = BatchPusher(self.send, self.stats.pushed_batch)
        running = self._load()
        try:
            if running:
                log.warning("collecting %d batch(es) started by an earlier run", len(running))
            else:
                running = self._submit_all(tasks, pusher)
            self._wait_and_collect(running, pusher)
        except KeyboardInterrupt:
            self.stats.stopped = "interrupted"
            log.warning("interrupted: the batches keep running at the provider; run again to collect them")
        finally:
            pusher.close()
            self.stats.seconds = time.monotonic() - began
        return self.stats

    def _submit_all(self, tasks: Iterable[Mapping[str, Any]], pusher: BatchPusher) -> list[dict[str, Any]]:
        running: list[dict[str, Any]] = []
        lines: list[str] = []
        pending: dict[str, Any] = {}
        seen: set[int] = set()
        for task in tasks:
            task_id = int(task["id"])
            if task_id in seen:
                continue
            if self.options.limit is not None and self.stats.seen - self.stats.skipped >= self.options.limit:
                break
            seen.add(task_id)
            self.stats.seen += 1
            if self.version in prediction_versions(dict(task)):
                self.stats.skipped += 1
                continue
            line = self._request_line(task, pusher)
            if line is None:
                continue
            lines.append(line)
            pending[str(task_id)] = task.get("data")
            if len(lines) >= self.options.max_requests:
                running.append(self._start(lines, pending))
                self._save(running)  # at once: a started batch is paid for
                lines, pending = [], {}
        if lines:
            running.append(self._start(lines, pending))
            self._save(running)
        return running

    def _request_line(self, task: Mapping[str, Any], pusher: BatchPusher) -> str | None:
        """The task's JSONL request line, or None when it was settled without the Batch API (cached or
        unusable)."""
        try:
            texts = task_texts(self.plan.spec, task)
        except ValueError:
            self.stats.failed["bad_task"] += 1
            return None
        prompt = self.predictor.prompt(self.plan, texts, self.project_id)
        options = self.predictor.call_options(self.plan)
        hit = self.predictor.llm.cached(prompt.messages, prompt.schema, options)
        if hit is not None:
            self._finish(task, prompt, hit, pusher)
            return None
        body = self.predictor.llm.request_body(prompt.messages, prompt.schema, options)
        return json.dumps({"custom_id": f"task-{task['id']}", "method": "POST", "url": "/v1/chat/completions",
                           "body": body}, ensure_ascii=False)

    def _start(self, lines: list[str], tasks: dict[str, Any]) -> dict[str, Any]:
        data = ("\n".join(lines) + "\n").encode("utf-8")
        uploaded = self.client.files.create(file=("requests.jsonl", io.BytesIO(data)), purpose="batch")
        batch = self.client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h",
            metadata={"lsllm_project": self.project_id, "model_version": self.version[:500]},
        )
        log.info("batch %s started with %d requests", batch.id, len(lines))
        return {"id": batch.id, "tasks": tasks}

    def _wait_and_collect(self, running: list[dict[str, Any]], pusher: BatchPusher) -> None:
        counted: dict[str, int] = {}
        while running:
            for entry in list(running):
                batch = self.client.batches.retrieve(entry["id"])
                done = (batch.request_counts.completed + batch.request_counts.failed) if batch.request_counts else 0
                if self.progress is not None and done > counted.get(entry["id"], 0):
                    self.progress.update(done - counted.get(entry["id"], 0))
                counted[entry["id"]] = done
                if batch.status in TERMINAL:
                    self._collect(batch, entry["tasks"], pusher)
                    running.remove(entry)
                    self._save(running)
            if running:
                time.sleep(self.options.poll_seconds)

    def _collect(self, batch: Any, tasks: dict[str, Any], pusher: BatchPusher) -> None:
        answered: set[str] = set()
        if batch.output_file_id:
            text = self.client.files.content(batch.output_file_id).text
            for raw in text.splitlines():
                if not raw.strip():
                    continue
                line = json.loads(raw)
                task_id = str(line.get("custom_id", "")).removeprefix("task-")
                if task_id not in tasks:
                    continue
                answered.add(task_id)
                self.stats.llm_calls += 1
                response = line.get("response") or {}
                if response.get("status_code") != 200:
                    self.stats.failed[f"batch_http_{response.get('status_code')}"] += 1
                    continue
                task = {"id": int(task_id), "data": tasks[task_id]}
                try:
                    answer = answer_from_completion(response.get("body"), self.plan.model)
                except LLMError:
                    self.stats.failed["llm_empty"] += 1
                    continue
                prompt = self.predictor.prompt(self.plan, task_texts(self.plan.spec, task), self.project_id)
                self.predictor.llm.remember(prompt.messages, prompt.schema, self.predictor.call_options(self.plan),
                                            answer)
                self._finish(task, prompt, answer, pusher)
        missing = len(tasks) - len(answered)
        if missing:
            self.stats.failed[f"batch_{batch.status}"] += missing
        log.info("batch %s %s: %d answered, %d without an answer", batch.id, batch.status, len(answered), missing)

    def _finish(self, task: Mapping[str, Any], prompt: TaskPrompt, answer: Any, pusher: BatchPusher) -> None:
        result: TaskResult = self.predictor.finish(self.plan, task, prompt, answer, self.version)
        stats = self.stats
        if answer.cached:
            stats.cache_hits += 1
        else:
            stats.prompt_tokens += answer.prompt_tokens
            stats.completion_tokens += answer.completion_tokens
            cost = self.prices.cost(self.plan.model, answer.prompt_tokens, answer.completion_tokens)
            stats.add_cost(None if cost is None else cost * BATCH_DISCOUNT)
        if not result.item:
            stats.failed[result.reason] += 1
            return
        stats.predicted += 1
        pusher.put([prediction_item(task["id"], result.item, self.version)])
