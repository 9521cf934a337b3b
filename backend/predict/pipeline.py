"""One task (or one group of tasks) through the pipeline: prompt -> LLM -> parse -> align -> validate.

A task's failure never raises: it becomes a TaskResult whose item is `[]`, which Label Studio stores as
nothing and asks for again later (measured; see the protocol notes). Where the call runs (which thread,
which lane) is the scheduler's business, not this module's.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

from label_studio_sdk.label_interface import LabelInterface

from backend.llm.client import CallOptions, LLMAnswer, LLMClient, LLMError
from backend.metrics import Metrics
from backend.predict.chunked import DocumentRunner
from backend.predict.plans import PlanBook, ProjectPlan
from backend.settings import ResponseFormat, Settings
from converters.confidence import TokenProbs, combine
from converters.group import group_schema, groupable, split_group_answer
from converters.parse import UnparsableAnswer, parse_answer
from converters.regions import answer_to_prediction, check_prediction
from converters.task_spec import TaskSpec
from prompts import PromptRenderer, SpanCandidate, TaskContext

log = logging.getLogger(__name__)

T = TypeVar("T")

class ContextSource(Protocol):
    """What a task's prompt is made of: (project id, spec, task texts) -> the spec for this task (narrowed
    to a label shortlist when the label set is large) and its few-shot examples, most similar last.
    `held_out`: the task is a reviewed example asked again (`TaskPipeline.held_out`, for the referee in
    backend.learning.referee), so its own example and the student that trained on it stay out (passed
    only when true, so a source without it serves every other task)."""

    def __call__(self, project_id: str | None, spec: TaskSpec, texts: Mapping[str, str], /,
                 held_out: bool = False) -> TaskContext: ...


# The span hook (backend.learning.span_cascade, STUDENT_MODE=cascade): (spec, task data, the LLM's regions,
# the task's gazetteer candidates) -> the regions to send. Runs before validation, like every region.
SpanHook = Callable[[TaskSpec, Mapping[str, Any], list[dict[str, Any]], Sequence[SpanCandidate]], list[dict[str, Any]]]


class StudentHook(Protocol):
    """The <Choices> students beside the LLM (backend.learning.students.Students)."""

    def answer(self, plan: ProjectPlan, project_id: str | None, task: Mapping[str, Any], texts: Mapping[str, str],
               model_version: str) -> dict[str, Any] | None:
        """A ready prediction when the task needs no LLM call (cascade), else None."""

    def rescore(self, plan: ProjectPlan, project_id: str | None, texts: Mapping[str, str],
                item: dict[str, Any], votes: Mapping[str, Mapping[str, float]] | None = None) -> dict[str, Any]:
        """The LLM's prediction with calibrated scores."""

    def examples_help(self, plan: ProjectPlan, project_id: str | None) -> bool:
        """Whether the LLM's prompts carry few-shot examples (False: the referee measured it better without)."""


@dataclass(frozen=True)
class TaskPrompt:
    """One task's request: the spec it was asked with, the JSON schema and the messages."""

    spec: TaskSpec
    schema: dict[str, Any]
    messages: list[dict[str, str]]
    candidates: Sequence[SpanCandidate] = ()  # gazetteer spans offered in the prompt (and to the span hook)


@dataclass
class TaskResult:
    item: Any  # a prediction dict, or [] when the task should be asked again later
    error: str | None = None
    reason: str = "ok"  # the outcome counted in lsllm_tasks: ok, bad_task, deadline, llm_<kind>, unparsable
    cached: bool = False  # answered from the response cache: no provider call
    prompt_tokens: int = 0
    completion_tokens: int = 0
    messages: list[dict[str, str]] = field(default_factory=list)
    student: bool = False  # answered by the student (cascade): no LLM call was made
    # single-choice control -> the LLM's probability of every label it was shown (converters.regions.Prediction)
    votes: dict[str, dict[str, float]] = field(default_factory=dict)


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


def drop_invalid_regions(
    interface: LabelInterface, spec: TaskSpec, data: Mapping[str, Any], item: dict[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """(the item keeping only the regions that validate as Label Studio would, one error line per region
    removed).

    A region that fails is a bug upstream (alignment, a handler), so it is removed rather than sent:
    Label Studio would store it and show a broken span."""
    if not check_prediction(interface, spec, data, item):
        return item, []
    kept, removed = [], []
    for region in item["result"]:
        region_errors = check_prediction(interface, spec, data, {**item, "result": [region]})
        if region_errors:
            removed.append("; ".join(region_errors))
        else:
            kept.append(region)
    return {**item, "result": kept}, removed


class TaskPipeline:
    """Prompt, call, parse, align, score and validate, for one task or one group of tasks."""

    def __init__(
        self,
        settings: Settings,
        llm: LLMClient,
        metrics: Metrics,
        plans: PlanBook,
        renderer: PromptRenderer,
        context: ContextSource,
        spans: SpanHook | None = None,
        student: StudentHook | None = None,
    ) -> None:
        self.spans = spans  # set by the composition root in STUDENT_MODE=cascade
        self.student = student  # <Choices> students (backend.learning.students); None: STUDENT_MODE=off
        self.settings = settings
        self.llm = llm
        self.metrics = metrics
        self.plans = plans
        self.renderer = renderer
        self.context = context
        self.documents = DocumentRunner(settings)  # long texts in chunks, PII masking

    # --- one task ------------------------------------------------------------------------------
    def task_context(self, plan: ProjectPlan, texts: Mapping[str, str], project_id: str | None = None,
                     held_out: bool = False, examples: bool | None = None) -> TaskContext:
        """What a task's prompt is made of (the context source's), without its few-shot examples when
        `examples` is False, or, when it is None, when the students' referee measured the LLM better
        without them (StudentHook.examples_help); the shortlist stays either way."""
        if held_out:
            context = self.context(project_id, plan.spec, texts, held_out=True)
        else:
            context = self.context(project_id, plan.spec, texts)
        if not context.examples:
            return context
        if examples is None:
            examples = self.student is None or self.student.examples_help(plan, project_id)
        return context if examples else replace(context, examples=())

    def prompt(self, plan: ProjectPlan, texts: Mapping[str, str], project_id: str | None = None,
               held_out: bool = False, examples: bool | None = None) -> TaskPrompt:
        """The request for one task: its context (shortlisted spec, examples), schema and messages."""
        mode = self.llm.response_mode
        context = self.task_context(plan, texts, project_id, held_out, examples)
        messages = self.renderer.messages(
            context.spec,
            texts,
            context.examples,
            show_format=mode is not ResponseFormat.json_schema,
            include_schema=mode in (ResponseFormat.json_object, ResponseFormat.text),
            candidates=context.candidates,
        )
        schema = self.plans.schema_for(plan, context.spec.controls)
        return TaskPrompt(context.spec, schema, messages, tuple(context.candidates))

    def call_options(
        self, plan: ProjectPlan, timeout: float | None = None, deadline: float | None = None, urgent: bool = False
    ) -> CallOptions:
        return CallOptions(model=plan.model, temperature=plan.temperature, max_tokens=self.settings.llm_max_tokens,
                           timeout=timeout, deadline=deadline, urgent=urgent)

    def predict_task(
        self,
        plan: ProjectPlan,
        task: Mapping[str, Any],
        model_version: str,
        deadline: float | None = None,
        project_id: str | None = None,
        urgent: bool = False,
    ) -> TaskResult:
        task_id = task.get("id") if isinstance(task, Mapping) else None
        try:
            texts = task_texts(plan.spec, task)
        except ValueError as exc:
            self.metrics.tasks.labels("bad_task").inc()
            log.warning("task %s: %s", task_id, exc)
            return TaskResult([], error=str(exc), reason="bad_task")
        if self.documents.handles(plan, texts):  # a long text, or masking on: backend.predict.chunked
            return self.documents.predict(self, plan, task, texts, model_version, deadline, project_id, urgent)
        if self.student is not None:  # cascade: a confident student answers without an LLM call
            ready = self.student.answer(plan, project_id, task, texts, model_version)
            if ready is not None:
                self.metrics.tasks.labels("ok").inc()
                return TaskResult(ready, student=True)
        prompt = self.prompt(plan, texts, project_id)
        answer = self._complete(plan, prompt.messages, prompt.schema, deadline, f"task {task_id}", urgent)
        if isinstance(answer, TaskResult):  # the call failed for good
            self.metrics.tasks.labels(answer.reason).inc()
            return answer
        result = self.finish(plan, task, prompt, answer, model_version)
        if self.student is not None and result.item:  # the label and score: with the student's view
            result.item = self.student.rescore(plan, project_id, texts, result.item, result.votes)
        return result

    def held_out(self, plan: ProjectPlan, project_id: str, data: Mapping[str, Any], what: str,
                 examples: bool = True) -> TaskResult:
        """The LLM's prediction for a reviewed example, asked as a new task would be, but with neither
        that example nor the student (which trained on it) in its prompt: how the LLM does on tasks it
        has not seen answered (backend.learning.referee), with few-shot examples or without. Never the
        cascade, never urgent."""
        task = {"id": None, "data": dict(data)}
        try:
            texts = task_texts(plan.spec, task)
        except ValueError as exc:
            return TaskResult([], error=str(exc), reason="bad_task")
        prompt = self.prompt(plan, texts, project_id, held_out=True, examples=examples)
        answer = self._complete(plan, prompt.messages, prompt.schema, None, what, urgent=False)
        if isinstance(answer, TaskResult):
            return answer
        return self.finish(plan, task, prompt, answer, "held-out")

    def finish(
        self, plan: ProjectPlan, task: Mapping[str, Any], prompt: TaskPrompt, answer: LLMAnswer, model_version: str
    ) -> TaskResult:
        """A task's answer -> its validated prediction: parse, align, score, validate (also for answers
        that came from the Batch API)."""
        try:
            parsed = parse_answer(answer.content)
        except UnparsableAnswer as exc:
            self.metrics.tasks.labels("unparsable").inc()
            log.warning("task %s: %s", task.get("id"), exc)
            return TaskResult([], error=str(exc), reason="unparsable", messages=prompt.messages,
                              prompt_tokens=answer.prompt_tokens, completion_tokens=answer.completion_tokens,
                              cached=answer.cached)
        probs = TokenProbs(answer.content, answer.tokens) if answer.tokens else None
        # the task's own spec: an answer outside its shortlist is dropped, scores renormalise over it
        item, votes = self._item(plan, prompt.spec, task, parsed, probs, model_version, prompt.candidates)
        return TaskResult(item, prompt_tokens=answer.prompt_tokens, completion_tokens=answer.completion_tokens,
                          messages=prompt.messages, cached=answer.cached, votes=votes)

    # --- several tasks in one call ------------------------------------------------------------
    def group_size(self, plan: ProjectPlan) -> int:
        """Tasks per LLM call for this plan: LLM_TASKS_PER_CALL when every control can share a call and
        none is shortlisted (a shortlist is per task), else 1."""
        k = self.settings.llm_tasks_per_call
        threshold = self.settings.label_shortlist_threshold
        if k <= 1 or not groupable(plan.spec) or self.documents.masking:  # masking is per task
            return 1
        if threshold and any(len(c.labels) > threshold for c in plan.spec.controls):
            return 1
        return k

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
        urgent: bool = False,
    ) -> list[TaskResult]:
        if len(unit) == 1:
            return [self.predict_task(plan, unit[0], model_version, deadline, project_id, urgent)]
        return self.predict_group(plan, unit, model_version, deadline, project_id, urgent)

    def predict_group(
        self,
        plan: ProjectPlan,
        tasks: Sequence[Mapping[str, Any]],
        model_version: str,
        deadline: float | None = None,
        project_id: str | None = None,
        urgent: bool = False,
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
            results[i] = self.predict_task(plan, task, model_version, deadline, project_id, urgent)
        elif valid:
            answered = self._predict_valid_group(plan, valid, model_version, deadline, project_id, urgent)
            for (i, _, _), result in zip(valid, answered):
                results[i] = result
        return [r if r is not None else TaskResult([], error="internal error", reason="error") for r in results]

    def _predict_valid_group(
        self,
        plan: ProjectPlan,
        valid: list[tuple[int, Mapping[str, Any], dict[str, str]]],
        model_version: str,
        deadline: float | None,
        project_id: str | None,
        urgent: bool,
    ) -> list[TaskResult]:
        n = len(valid)
        mode = self.llm.response_mode
        examples = self.task_context(plan, valid[0][2], project_id).examples
        messages = self.renderer.group_messages(
            plan.spec, [texts for _, _, texts in valid], examples,
            show_format=mode is not ResponseFormat.json_schema,
            include_schema=mode in (ResponseFormat.json_object, ResponseFormat.text),
        )
        answer = self._complete(plan, messages, group_schema(plan.schema, n), deadline,
                                f"group of {n} (task {valid[0][1].get('id')}...)", urgent)
        if isinstance(answer, TaskResult):  # the call failed for good
            self.metrics.tasks.labels(answer.reason).inc(n)
            return [answer] * n
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
            item, _ = self._item(plan, plan.spec, task, part, None, model_version)
            out.append(TaskResult(item, prompt_tokens=share_in, completion_tokens=share_out, cached=answer.cached))
        return out

    # --- shared steps ---------------------------------------------------------------------------
    def _complete(
        self, plan: ProjectPlan, messages: list[dict[str, str]], schema: dict[str, Any], deadline: float | None,
        what: str, urgent: bool,
    ) -> LLMAnswer | TaskResult:
        """The answer, or the failed task's result when the call failed for good."""
        timeout = self.settings.llm_timeout
        if deadline is not None:
            timeout = min(timeout, deadline - time.monotonic())
            if timeout <= 0.2:
                return TaskResult([], error="deadline reached before the LLM call", reason="deadline")
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s prompt: %s", what, json.dumps(messages, ensure_ascii=False))
        try:
            return self.llm.complete(messages, schema, self.call_options(plan, timeout, deadline, urgent))
        except LLMError as exc:
            log.warning("%s: %s", what, exc)
            return TaskResult([], error=str(exc), reason=f"llm_{exc.kind}", messages=messages)

    def _item(
        self, plan: ProjectPlan, spec: TaskSpec, task: Mapping[str, Any], parsed: Mapping[str, Any],
        probs: TokenProbs | None, version: str, candidates: Sequence[SpanCandidate] = (),
    ) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
        """One task's parsed answer -> its validated Label Studio prediction (what cannot be placed or
        does not validate is dropped and counted), and the LLM's label probabilities (Prediction.votes)."""
        prediction = answer_to_prediction(spec, task["data"], parsed, probs)
        for reason, count in prediction.dropped.items():
            self.metrics.dropped_entities.labels(reason).inc(count)
        item = prediction.as_ls(version)
        if self.spans is not None and candidates:
            result = self.spans(spec, task["data"], list(item["result"]), candidates)
            item = {**item, "result": result}
            score = combine([region.get("score") for region in result])
            if score is not None:  # the task's score follows its regions' (calibrated) scores
                item["score"] = score
        item, errors = drop_invalid_regions(plan.interface, plan.spec, task["data"], item)
        if errors:
            self.metrics.invalid_predictions.inc(len(errors))
            log.error("task %s: invalid region removed (bug): %s", task.get("id"), errors[:3])
        self.metrics.tasks.labels("ok").inc()
        return item, prediction.votes
