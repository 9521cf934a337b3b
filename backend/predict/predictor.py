"""Tasks -> Label Studio prediction items: the plans, the per-task pipeline and the scheduler, composed.

`Predictor` is the one object the service, the push path and the whole-project runs hold; each of its
three parts lives in its own module and is testable alone:
- `plans` (label config -> ProjectPlan, cached),
- `pipeline` (one task: prompt, call, parse, align, validate; failures become `[]`, never exceptions),
- `scheduler` (an interactive lane for annotators, a bulk lane for pushes and prelabel runs).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

from backend.llm.client import CallOptions, LLMAnswer, LLMClient
from backend.metrics import Metrics
from backend.predict.pipeline import ContextSource, TaskPipeline, TaskPrompt, TaskResult, task_texts
from backend.predict.plans import PlanBook, ProjectPlan
from backend.predict.scheduler import Scheduler
from backend.settings import Settings
from prompts import PromptRenderer, TaskContext

__all__ = ["ContextSource", "Predictor", "ProjectPlan", "TaskPrompt", "TaskResult", "task_texts"]

T = TypeVar("T")


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
        self.plans = PlanBook(settings)
        self.pipeline = TaskPipeline(
            settings, llm, metrics, self.plans,
            renderer or PromptRenderer(settings.prompt_version),
            context or (lambda project_id, spec, texts, held_out=False: TaskContext(spec)),
        )
        self.scheduler = Scheduler(self.pipeline, metrics, settings.llm_max_concurrency, settings.predict_deadline)

    def close(self) -> None:
        self.scheduler.close()

    # plans
    def plan(self, label_config: str, extra_params: Mapping[str, Any] | None = None) -> ProjectPlan:
        """Raises UnsupportedConfig / ValueError for configs that cannot be predicted."""
        return self.plans.plan(label_config, extra_params)

    # the pipeline
    def prompt(self, plan: ProjectPlan, texts: Mapping[str, str], project_id: str | None = None) -> TaskPrompt:
        return self.pipeline.prompt(plan, texts, project_id)

    def messages(
        self, plan: ProjectPlan, texts: Mapping[str, str], project_id: str | None = None
    ) -> list[dict[str, str]]:
        return self.pipeline.prompt(plan, texts, project_id).messages

    def call_options(
        self, plan: ProjectPlan, timeout: float | None = None, deadline: float | None = None
    ) -> CallOptions:
        return self.pipeline.call_options(plan, timeout, deadline)

    def predict_task(
        self, plan: ProjectPlan, task: Mapping[str, Any], model_version: str, deadline: float | None = None,
        project_id: str | None = None,
    ) -> TaskResult:
        return self.pipeline.predict_task(plan, task, model_version, deadline, project_id)

    def finish(
        self, plan: ProjectPlan, task: Mapping[str, Any], prompt: TaskPrompt, answer: LLMAnswer, model_version: str
    ) -> TaskResult:
        return self.pipeline.finish(plan, task, prompt, answer, model_version)

    def group_size(self, plan: ProjectPlan) -> int:
        return self.pipeline.group_size(plan)

    def units(self, plan: ProjectPlan, items: Sequence[T]) -> list[list[T]]:
        return self.pipeline.units(plan, items)

    # scheduling
    def submit(
        self, plan: ProjectPlan, unit: Sequence[Mapping[str, Any]], model_version: str, project_id: str | None = None
    ) -> Future[list[TaskResult]]:
        return self.scheduler.submit(plan, unit, model_version, project_id)

    def predict_stream(
        self, plan: ProjectPlan, tasks: Sequence[Mapping[str, Any]], model_version: str, project_id: str | None = None
    ) -> Iterator[tuple[Mapping[str, Any], TaskResult]]:
        return self.scheduler.predict_stream(plan, tasks, model_version, project_id)

    def predict_tasks(
        self, plan: ProjectPlan, tasks: Sequence[Any], model_version: str, deadline_seconds: float | None = None,
        project_id: str | None = None,
    ) -> list[TaskResult]:
        return self.scheduler.predict_tasks(plan, tasks, model_version, deadline_seconds, project_id)
