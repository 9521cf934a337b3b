"""Tasks -> Label Studio prediction items: prompt, LLM call, parse, align, validate, per task.

One task's failure never sinks the batch: it answers `[]`, which Label Studio stores as nothing and
re-asks for later (measured; see the protocol notes). Tasks run concurrently on a pool bounded by
LLM_MAX_CONCURRENCY, shared by all requests of the process, and a batch never outlives its deadline.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor, as_completed, wait
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar

from label_studio_sdk.label_interface import LabelInterface

from backend.llm.client import CallOptions, LLMAnswer, LLMClient, LLMError
from backend.metrics import Metrics
from backend.settings import ResponseFormat, Settings
from converters.confidence import TokenProbs
from converters.group import group_schema, groupable, split_group_answer
from converters.output_schema import output_json_schema
from converters.parse import UnparsableAnswer, parse_answer
from converters.regions import Prediction, answer_to_prediction, check_prediction
from converters.task_spec import TaskSpec, build_task_spec
from prompts import PromptRenderer, TaskContext

log = logging.getLogger(__name__)

T = TypeVar("T")

# What a task's prompt is made of: (project id, spec, task texts) -> the spec for this task (narrowed to
# a label shortlist when the label set is large) and its few-shot examples, most similar last.
ContextSource = Callable[[str | None, TaskSpec, Mapping[str, str]], TaskContext]


@dataclass(frozen=True)
class ProjectPlan:
    """Everything needed to predict for one label config + extra_params, built once and cached."""

    spec: TaskSpec
    interface: LabelInterface
    schema: dict[str, Any]
    model: str
    temperature: float
    project_id: str | None = None


@dataclass(frozen=True)
class TaskPrompt:
    """One task's request: the spec it was asked with, the JSON schema and the messages."""

    spec: TaskSpec
    schema: dict[str, Any]
    messages: list[dict[str, str]]


@dataclass
class TaskResult:
    item: Any  # a prediction dict, or [] when the task should be asked again later
    error: str | None = None
    reason: str = "ok"  # the outcome counted in lsllm_tasks: ok, bad_task, deadline, llm_<kind>, unparsable
    cached: bool = False  # answered from the response cache: no provider call
    prompt_tokens: int = 0
    completion_tokens: int = 0
    messages: list[dict[str, str]] = field(default_factory=list)


def task_texts(spec: TaskSpec, task: Mapping[str, Any]) -> dict[str, str]:
    """The text of every object the spec reads; raises ValueError naming a missing data key."""
    data = task.get("data")
    if not isinstance(data, Mapping):
        raise ValueError("task has no 'data' object")
    texts = {}
    for name, key in spec.objects:
        value = data.get(key)
        if not isinstance(value, str):
            raise ValueError(f"task data has no text field {key!r}")
        texts[name] = value
    return texts


class Predictor:
    def __init__(
        self,
        settings: Settings,
        llm: LLMClient,
        metrics: Metrics,
        renderer: PromptRenderer | None = None,
        context: ContextSource | None = None,
    ) -> None:
        self.settings = settings
        self.llm = llm
        self.metrics = metrics
        self.renderer = renderer or PromptRenderer(settings.prompt_version)
        self.context = context or (lambda project_id, spec, texts: TaskContext(spec))
        self._pool = ThreadPoolExecutor(
            max_workers=settings.llm_max_concurrency, thread_name_prefix="llm"
        )
        self._plan = lru_cache(maxsize=64)(self._build_plan)
        # one schema per label shortlist, which repeat across tasks; callers only read it
        self._schema = lru_cache(maxsize=512)(lambda controls: output_json_schema(TaskSpec(controls, ())))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- plans ---------------------------------------------------------------------------------
    def plan(self, label_config: str, extra_params: Mapping[str, Any] | None = None) -> ProjectPlan:
        """Raises UnsupportedConfig / ValueError for configs that cannot be predicted."""
        return self._plan(label_config, json.dumps(dict(extra_params or {}), sort_keys=True, default=str))

    def _build_plan(self, label_config: str, extra_json: str) -> ProjectPlan:
        extra = json.loads(extra_json)
        spec = build_task_spec(label_config, extra)
        try:
            temperature = float(extra.get("temperature", self.settings.llm_temperature))
        except (TypeError, ValueError):
            temperature = self.settings.llm_temperature
        return ProjectPlan(
            spec=spec,
            interface=LabelInterface(label_config),
            schema=output_json_schema(spec),
            model=str(extra.get("model") or self.settings.llm_model),
            temperature=temperature,
        )

    # --- one task ------------------------------------------------------------------------------
    def prompt(self, plan: ProjectPlan, texts: Mapping[str, str], project_id: str | None = None) -> TaskPrompt:
        """The request for one task: its context (shortlisted spec, examples), schema and messages."""
        mode = self.llm.response_mode
        context = self.context(project_id, plan.spec, texts)
        schema = plan.schema if context.spec.controls == plan.spec.controls else self._schema(context.spec.controls)
        messages = self.renderer.messages(
            context.spec,
            texts,
            context.examples,
            show_format=mode is not ResponseFormat.json_schema,
            include_schema=mode in (ResponseFormat.json_object, ResponseFormat.text),
        )
        return TaskPrompt(context.spec, schema, messages)

    def messages(
        self, plan: ProjectPlan, texts: Mapping[str, str], project_id: str | None = None
    ) -> list[dict[str, str]]:
        return self.prompt(plan, texts, project_id).messages

    def predict_task(
        self,
        plan: ProjectPlan,
        task: Mapping[str, Any],
        model_version: str,
        deadline: float | None = None,
        project_id: str | None = None,
    ) -> TaskResult:
        task_id = task.get("id") if isinstance(task, Mapping) else None
        try:
            texts = task_texts(plan.spec, task)
        except ValueError as exc:
            self.metrics.tasks.labels("bad_task").inc()
            log.warning("task %s: %s", task_id, exc)
            return TaskResult([], error=str(exc), reason="bad_task")
        prompt = self.prompt(plan, texts, project_id)
        answer, failure = self._complete(plan, prompt.messages, prompt.schema, deadline, f"task {task_id}")
        if answer is None:
            self.metrics.tasks.labels(failure.reason).inc()
            return failure
        return self.finish(plan, task, prompt, answer, model_version)

    def call_options(self, plan: ProjectPlan, timeout: float | None = None, deadline: float | None = None) -> CallOptions:
        return CallOptions(model=plan.model, temperature=plan.temperature, max_tokens=self.settings.llm_max_tokens,
                           timeout=timeout, deadline=deadline)

    def finish(
        self, plan: ProjectPlan, task: Mapping[str, Any], prompt: TaskPrompt, answer: LLMAnswer, model_version: str
    ) -> TaskResult:
        """A task's answer -> its validated prediction: parse, align, score, validate (also for answers
        that came from the Batch API)."""
        task_id = task.get("id")
        messages = prompt.messages
        try:
            parsed = parse_answer(answer.content)
        except UnparsableAnswer as exc:
            self.metrics.tasks.labels("unparsable").inc()
            log.warning("task %s: %s", task_id, exc)
            return TaskResult([], error=str(exc), reason="unparsable", messages=messages,
                              prompt_tokens=answer.prompt_tokens, completion_tokens=answer.completion_tokens,
                              cached=answer.cached)
        probs = TokenProbs(answer.content, answer.tokens) if answer.tokens else None
        # the task's own spec: an answer outside its shortlist is dropped, scores renormalise over it
        item = self._item(plan, prompt.spec, task, parsed, probs, model_version)
        return TaskResult(
            item,
            prompt_tokens=answer.prompt_tokens,
            completion_tokens=answer.completion_tokens,
            messages=messages,
            cached=answer.cached,
        )

    # --- several tasks in one call ------------------------------------------------------------
    def group_size(self, plan: ProjectPlan) -> int:
        """Tasks per LLM call for this plan: LLM_TASKS_PER_CALL when every control is a <Choices> that
        is not shortlisted (a shortlist is per task), else 1."""
        k = self.settings.llm_tasks_per_call
        threshold = self.settings.label_shortlist_threshold
        if k <= 1 or not groupable(plan.spec):
            return 1
        if threshold and any(len(c.labels) > threshold for c in plan.spec.controls):
            return 1
        return k

    def predict_group(
        self,
        plan: ProjectPlan,
        tasks: Sequence[Mapping[str, Any]],
        model_version: str,
        deadline: float | None = None,
        project_id: str | None = None,
    ) -> list[TaskResult]:
        """One result per task, in order, from one LLM call for all of them (converters.group). The
        call's tokens are shared out evenly; the predictions carry no score (the answer's logprobs are
        not split per item). A task the answer leaves out gets [] (reason group_incomplete)."""
        results: list[TaskResult | None] = [None] * len(tasks)
        valid: list[tuple[int, Mapping[str, Any], dict[str, str]]] = []
        for i, task in enumerate(tasks):
            try:
                valid.append((i, task, task_texts(plan.spec, task)))
            except ValueError as exc:
                self.metrics.tasks.labels("bad_task").inc()
                results[i] = TaskResult([], error=str(exc), reason="bad_task")
        if len(valid) == 1:
            i, task, _ = valid[0]
            results[i] = self.predict_task(plan, task, model_version, deadline, project_id)
        elif valid:
            for (i, _, _), result in zip(valid, self._predict_valid_group(plan, valid, model_version, deadline,
                                                                          project_id)):
                results[i] = result
        return [r if r is not None else TaskResult([], error="internal error", reason="error") for r in results]

    def _predict_valid_group(
        self,
        plan: ProjectPlan,
        valid: list[tuple[int, Mapping[str, Any], dict[str, str]]],
        model_version: str,
        deadline: float | None,
        project_id: str | None,
    ) -> list[TaskResult]:
        n = len(valid)
        mode = self.llm.response_mode
        examples = self.context(project_id, plan.spec, valid[0][2]).examples
        messages = self.renderer.group_messages(
            plan.spec, [texts for _, _, texts in valid], examples,
            show_format=mode is not ResponseFormat.json_schema,
            include_schema=mode in (ResponseFormat.json_object, ResponseFormat.text),
        )
        answer, failure = self._complete(plan, messages, group_schema(plan.schema, n), deadline,
                                         f"group of {n} (task {valid[0][1].get('id')}...)")
        if answer is None:
            self.metrics.tasks.labels(failure.reason).inc(n)
            return [failure] * n
        share_in, share_out = answer.prompt_tokens // n, answer.completion_tokens // n
        try:
            parts = split_group_answer(parse_answer(answer.content), n)
        except UnparsableAnswer as exc:
            self.metrics.tasks.labels("unparsable").inc(n)
            return [TaskResult([], error=str(exc), reason="unparsable", prompt_tokens=share_in,
                               completion_tokens=share_out, cached=answer.cached)] * n
        out = []
        for (_, task, _), part in zip(valid, parts):
            if part is None:
                self.metrics.tasks.labels("group_incomplete").inc()
                out.append(TaskResult([], error="left out of the group's answer", reason="group_incomplete",
                                      prompt_tokens=share_in, completion_tokens=share_out, cached=answer.cached))
                continue
            item = self._item(plan, plan.spec, task, part, None, model_version)
            out.append(TaskResult(item, prompt_tokens=share_in, completion_tokens=share_out, cached=answer.cached))
        return out

    def _complete(
        self, plan: ProjectPlan, messages: list[dict[str, str]], schema: dict[str, Any], deadline: float | None,
        what: str,
    ) -> tuple[Any, TaskResult | None]:
        """(answer, None), or (None, the failed result) when the call failed for good."""
        timeout = self.settings.llm_timeout
        if deadline is not None:
            timeout = min(timeout, deadline - time.monotonic())
            if timeout <= 0.2:
                return None, TaskResult([], error="deadline reached before the LLM call", reason="deadline")
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s prompt: %s", what, json.dumps(messages, ensure_ascii=False))
        try:
            return self.llm.complete(messages, schema, self.call_options(plan, timeout, deadline)), None
        except LLMError as exc:
            log.warning("%s: %s", what, exc)
            return None, TaskResult([], error=str(exc), reason=f"llm_{exc.kind}", messages=messages)

    def _item(
        self, plan: ProjectPlan, spec: TaskSpec, task: Mapping[str, Any], parsed: Mapping[str, Any],
        probs: TokenProbs | None, version: str,
    ) -> dict[str, Any]:
        """One task's parsed answer -> its validated Label Studio prediction (what cannot be placed or
        does not validate is dropped and counted)."""
        prediction = answer_to_prediction(spec, task["data"], parsed, probs)
        for reason, count in prediction.dropped.items():
            self.metrics.dropped_entities.labels(reason).inc(count)
        item = self._validated(plan, task["data"], prediction, version, task.get("id"))
        self.metrics.tasks.labels("ok").inc()
        return item

    def _validated(
        self, plan: ProjectPlan, data: Mapping[str, Any], prediction: Prediction, version: str, task_id: Any
    ) -> dict[str, Any]:
        """Check the prediction as Label Studio would; drop (and count) any region that fails."""
        item = prediction.as_ls(version)
        errors = check_prediction(plan.interface, plan.spec, data, item)
        if not errors:
            return item
        kept = []
        for region in item["result"]:
            single = {**item, "result": [region]}
            if check_prediction(plan.interface, plan.spec, data, single):
                self.metrics.invalid_predictions.inc()
                log.error("task %s: invalid region removed (bug): %s", task_id, errors[:3])
            else:
                kept.append(region)
        item["result"] = kept
        return item

    def units(self, plan: ProjectPlan, items: Sequence[T]) -> list[list[T]]:
        """Tasks (or their positions) cut into what one LLM call answers: groups of group_size(plan)."""
        k = self.group_size(plan)
        return [list(items[i:i + k]) for i in range(0, len(items), k)]

    def predict_unit(
        self,
        plan: ProjectPlan,
        unit: Sequence[Mapping[str, Any]],
        model_version: str,
        deadline: float | None = None,
        project_id: str | None = None,
    ) -> list[TaskResult]:
        if len(unit) == 1:
            return [self.predict_task(plan, unit[0], model_version, deadline, project_id)]
        return self.predict_group(plan, unit, model_version, deadline, project_id)

    def submit(
        self, plan: ProjectPlan, unit: Sequence[Mapping[str, Any]], model_version: str, project_id: str | None = None
    ) -> "Future[list[TaskResult]]":
        """predict_unit on the shared pool, with no deadline."""
        return self._pool.submit(self.predict_unit, plan, list(unit), model_version, None, project_id)

    # --- a stream ------------------------------------------------------------------------------
    def predict_stream(
        self, plan: ProjectPlan, tasks: Sequence[Mapping[str, Any]], model_version: str, project_id: str | None = None
    ) -> Iterator[tuple[Mapping[str, Any], TaskResult]]:
        """(task, result) pairs as they finish, all tasks in flight on the shared pool (no deadline)."""
        futures = {self.submit(plan, unit, model_version, project_id): unit for unit in self.units(plan, tasks)}
        for future in as_completed(futures):
            unit = futures[future]
            try:
                yield from zip(unit, future.result())
            except Exception as exc:  # noqa: BLE001 - one task's bug must not end the stream
                log.error("tasks %s failed unexpectedly: %r", [t.get("id") for t in unit], exc)
                for task in unit:
                    yield task, TaskResult([], error="internal error", reason="error")

    # --- a batch -------------------------------------------------------------------------------
    def predict_tasks(
        self,
        plan: ProjectPlan,
        tasks: Sequence[Any],
        model_version: str,
        deadline_seconds: float | None = None,
        project_id: str | None = None,
    ) -> list[TaskResult]:
        """One result per task, in order; unfinished tasks at the deadline answer []."""
        deadline = time.monotonic() + (deadline_seconds or self.settings.predict_deadline)
        results: list[TaskResult | None] = [None] * len(tasks)
        valid = []
        for i, task in enumerate(tasks):
            if isinstance(task, Mapping):
                valid.append(i)
            else:
                self.metrics.tasks.labels("bad_task").inc()
                results[i] = TaskResult([], error="task is not an object", reason="bad_task")
        units = self.units(plan, valid)  # units of positions
        futures = [
            self._pool.submit(self.predict_unit, plan, [tasks[i] for i in unit], model_version, deadline, project_id)
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
