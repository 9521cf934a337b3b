"""`lsllm prelabel --batch`: OpenAI's Batch API, half the price, answers within 24 hours.

The run renders every task's request exactly as a live call would send it, uploads them as one JSONL
file per 50,000 tasks (`files.create(purpose="batch")`), starts the batches
(`batches.create(endpoint="/v1/chat/completions", completion_window="24h")`) and polls them. Each
answer goes through the same parse/align/validate step as a live one, lands in the response cache, and
is pushed to Label Studio in batches. Tasks whose request is already cached are answered at once and
never uploaded.

Submitted batches are written to a state file in DATA_DIR before polling starts, so Ctrl-C (or a lost
terminal) leaves them running at the provider: the next run collects them instead of paying again.
The state keeps, per request (`custom_id`), what collection needs to treat the answer exactly as the
request that was sent: the task's data, the response-cache key of the request and, when the task's
label shortlist narrowed the spec, the controls it was asked with. Answers arrive hours later, when
the project's examples (and so the rendered prompt and its shortlist) may have changed: rendering the
prompt again would cache the answer under a key never sent and validate it against another spec.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from backend.labelstudio.api import prediction_versions
from backend.labelstudio.batch_push import BatchPusher, prediction_item
from backend.llm.client import LLMAnswer, LLMError, answer_from_completion
from backend.predict.predictor import ProjectPlan, TaskPrompt, TaskResult, task_texts
from backend.runs.prelabel import Progress, RunBase, RunStats, RunTarget
from converters.output_schema import output_json_schema
from converters.spec import ControlSpec, LabelSpec

log = logging.getLogger(__name__)

BATCH_DISCOUNT = 0.5  # the Batch API's price against live calls
TERMINAL = {"completed", "failed", "expired", "cancelled"}


def controls_to_json(controls: tuple[ControlSpec, ...]) -> list[dict[str, Any]]:
    """A spec's controls as plain JSON (the state file holds no pickles)."""
    return [asdict(control) for control in controls]


def controls_from_json(raw: Any) -> tuple[ControlSpec, ...]:
    """The inverse of controls_to_json; raises ValueError for anything else (a damaged state file)."""
    try:
        return tuple(
            ControlSpec(**{**control, "labels": tuple(LabelSpec(**label) for label in control["labels"])})
            for control in raw
        )
    except (TypeError, KeyError) as exc:
        raise ValueError(f"not a list of controls: {exc}") from None


@dataclass(frozen=True)
class SentRequest:
    """What one request of a started batch was, kept in the state file under its task id: the task's
    data, the response-cache key the request was sent under, and the controls it was asked with when
    a label shortlist narrowed the plan's (None: the plan's own)."""

    data: Any
    cache_key: str | None  # None: a batch started by a version that did not keep it (render again)
    controls: tuple[ControlSpec, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        out = {"data": self.data, "cache_key": self.cache_key}
        if self.controls is not None:
            out["controls"] = controls_to_json(self.controls)
        return out

    @classmethod
    def from_json(cls, raw: Any) -> SentRequest:
        """Raises ValueError for an entry of the wrong shape (a damaged state file)."""
        if not isinstance(raw, Mapping) or not isinstance(raw.get("cache_key"), str) or "data" not in raw:
            raise ValueError(f"not a sent request: {str(raw)[:200]}")
        controls = raw.get("controls")
        return cls(raw["data"], raw["cache_key"], None if controls is None else controls_from_json(controls))

    def prompt(self, plan: ProjectPlan) -> TaskPrompt:
        """The task's prompt as far as parsing and validating its answer go: the spec it was asked
        with (messages are not kept; they would only be reported)."""
        if self.controls is None:
            return TaskPrompt(plan.spec, plan.schema, [])
        spec = replace(plan.spec, controls=self.controls)
        return TaskPrompt(spec, output_json_schema(spec), [])


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
            request = self._request_line(task, pusher)
            if request is None:
                continue
            line, sent = request
            lines.append(line)
            pending[str(task_id)] = sent.to_json()
            if len(lines) >= self.options.max_requests:
                running.append(self._start(lines, pending))
                self._save(running)  # at once: a started batch is paid for
                lines, pending = [], {}
        if lines:
            running.append(self._start(lines, pending))
            self._save(running)
        return running

    def _request_line(self, task: Mapping[str, Any], pusher: BatchPusher) -> tuple[str, SentRequest] | None:
        """The task's JSONL request line and what collecting its answer needs, or None when it was
        settled without the Batch API (cached or unusable)."""
        try:
            texts = task_texts(self.plan.spec, task)
        except ValueError:
            self.stats.failed["bad_task"] += 1
            return None
        if self.predictor.pipeline.documents.handles(self.plan, texts):  # chunks or PII masking: not one request
            self._live(task, pusher)
            return None
        prompt = self.predictor.prompt(self.plan, texts, self.project_id)
        options = self.predictor.call_options(self.plan)
        hit = self.predictor.llm.cached(prompt.messages, prompt.schema, options)
        if hit is not None:
            self._finish(task, prompt, hit, pusher)
            return None
        body = self.predictor.llm.request_body(prompt.messages, prompt.schema, options)
        line = json.dumps({"custom_id": f"task-{task['id']}", "method": "POST", "url": "/v1/chat/completions",
                           "body": body}, ensure_ascii=False)
        # the key complete() would look this very request up under (LLMClient has no public name for it)
        key = self.predictor.llm._cache_key(prompt.messages, prompt.schema, options)
        narrowed = None if prompt.spec.controls == self.plan.spec.controls else prompt.spec.controls
        return line, SentRequest(task.get("data"), key, narrowed)

    def _start(self, lines: list[str], tasks: dict[str, Any]) -> dict[str, Any]:
        data = ("\n".join(lines) + "\n").encode("utf-8")
        uploaded = self.client.files.create(file=("requests.jsonl", io.BytesIO(data)), purpose="batch")
        batch = self.client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h",
            metadata={"lsllm_project": self.project_id, "model_version": self.version[:500]},
        )
        log.info("batch %s started with %d requests", batch.id, len(lines))
        return {"id": batch.id, "requests": tasks}

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
                    self._collect(batch, self._requests(entry), pusher)
                    running.remove(entry)
                    self._save(running)
            if running:
                time.sleep(self.options.poll_seconds)

    def _requests(self, entry: Mapping[str, Any]) -> dict[str, SentRequest]:
        """Task id -> what was sent, from a state entry. An entry written before the requests were
        kept holds only each task's data: its answers are matched to a prompt rendered again, as
        those versions did (the best that can be done for a batch already paid for)."""
        if "requests" not in entry:
            log.warning("batch %s was started by an older version: its answers are matched to prompts "
                        "rendered again with the current examples", entry.get("id"))
            return {task_id: SentRequest(data, None) for task_id, data in (entry.get("tasks") or {}).items()}
        return {task_id: SentRequest.from_json(raw) for task_id, raw in entry["requests"].items()}

    def _collect(self, batch: Any, tasks: dict[str, SentRequest], pusher: BatchPusher) -> None:
        """Every answer of a finished batch: cached under the key its request was sent under, then
        parsed and validated against the spec it was asked with, and pushed."""
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
                sent = tasks[task_id]
                task = {"id": int(task_id), "data": sent.data}
                try:
                    answer = answer_from_completion(response.get("body"), self.plan.model)
                except LLMError:
                    self.stats.failed["llm_empty"] += 1
                    continue
                if sent.cache_key is None:
                    prompt = self.predictor.prompt(self.plan, task_texts(self.plan.spec, task), self.project_id)
                    self.predictor.llm.remember(prompt.messages, prompt.schema,
                                                self.predictor.call_options(self.plan), answer)
                else:
                    prompt = sent.prompt(self.plan)
                    self._remember(sent.cache_key, answer)
                self._finish(task, prompt, answer, pusher)
        missing = len(tasks) - len(answered)
        if missing:
            self.stats.failed[f"batch_{batch.status}"] += missing
        log.info("batch %s %s: %d answered, %d without an answer", batch.id, batch.status, len(answered), missing)

    def _remember(self, key: str, answer: LLMAnswer) -> None:
        """Cache a batch answer under the key its request was sent under, so a live call of the same
        request later is a cache hit."""
        cache = self.predictor.llm.cache
        if cache is None:
            return
        try:
            cache.put(key, answer.content, answer.tokens, answer.prompt_tokens, answer.completion_tokens)
        except SQLAlchemyError:
            log.warning("response cache unavailable: batch answer not cached")

    def _live(self, task: Mapping[str, Any], pusher: BatchPusher) -> None:
        """A task the Batch API cannot carry as one raw request (a long text sent in chunks, or PII masking
        on): answered now by the live pipeline (backend.predict.chunked), at the live price."""
        result = self.predictor.predict_task(self.plan, task, self.version, None, self.project_id)
        self.stats.prompt_tokens += result.prompt_tokens
        self.stats.completion_tokens += result.completion_tokens
        self.stats.add_cost(self.prices.cost(self.plan.model, result.prompt_tokens, result.completion_tokens))
        if not result.item:
            self.stats.failed[result.reason] += 1
            return
        self.stats.predicted += 1
        pusher.put([prediction_item(task["id"], result.item, self.version)])

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
