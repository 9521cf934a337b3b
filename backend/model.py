"""The model class, shaped like label_studio_ml's: setup(), predict(tasks, context), fit(event, data).

It owns no HTTP: the Flask routes in `backend.app` translate requests into these calls, and the CLI's
file mode uses `predict` directly.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Mapping, Sequence

from backend.metrics import Metrics
from backend.predictor import Predictor, ProjectPlan
from backend.project_id import normalise_project_id
from backend.project_store import ProjectStore
from backend.settings import Settings

log = logging.getLogger(__name__)


def model_version(settings: Settings, model: str, examples_version: str = "e0") -> str:
    """prompt version + model + example-set version; equal in every worker for equal inputs."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", model).strip("-")[:60] or "model"
    return f"lsllm-{settings.prompt_version}-{slug}-{examples_version}"


class LLMBackendModel:
    def __init__(
        self, settings: Settings, predictor: Predictor, projects: ProjectStore, metrics: Metrics
    ) -> None:
        self.settings = settings
        self.predictor = predictor
        self.projects = projects
        self.metrics = metrics

    def version_for(self, plan: ProjectPlan | None = None, project_id: str | None = None) -> str:
        model = plan.model if plan is not None else self.settings.llm_model
        return model_version(self.settings, model)

    def setup(
        self,
        project: Any,
        label_config: str,
        extra_params: Mapping[str, Any] | None = None,
        hostname: str | None = None,
        access_token: str | None = None,
    ) -> dict[str, Any]:
        """Validate the config (raises UnsupportedConfig/ValueError), remember the project, answer the
        model_version Label Studio will compare predictions against. Cheap: plans are cached."""
        plan = self.predictor.plan(label_config, extra_params)
        project_id = normalise_project_id(project)
        self.projects.save(project_id, label_config, dict(extra_params or {}), hostname, access_token)
        return {"model_version": self.version_for(plan, project_id)}

    def plan_for(self, project: Any, label_config: str | None) -> ProjectPlan:
        info = None
        project_id = None
        if project is not None:
            try:
                project_id = normalise_project_id(project)
                info = self.projects.get(project_id)
            except ValueError:
                project_id = None
        config = label_config or (info.label_config if info else None)
        if not config:
            raise ValueError("no label_config in the request and none known for this project")
        extra = info.extra_params if info else {}
        return self.predictor.plan(config, extra)

    def predict(
        self,
        tasks: Sequence[Any],
        context: Mapping[str, Any] | None = None,
        project: Any = None,
        label_config: str | None = None,
    ) -> list[Any]:
        """One item per task, in order: a prediction dict, or [] for a task to be asked again later."""
        plan = self.plan_for(project, label_config)
        version = self.version_for(plan)
        results = self.predictor.predict_tasks(plan, tasks, version)
        return [r.item for r in results]

    def fit(self, event: str, data: Mapping[str, Any]) -> dict[str, Any]:
        """Webhook events; the durable learning store takes them (see backend.webhook)."""
        self.metrics.webhook_events.labels(event or "unknown", "ignored").inc()
        return {"status": "ignored", "action": event}
