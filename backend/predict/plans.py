"""Label config + extra_params -> ProjectPlan: what every task of a project is predicted with.

A plan is built once per (config, extra_params) and cached, as is the JSON schema of each label
shortlist (shortlists repeat across tasks). Callers only read what they get.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from label_studio_sdk.label_interface import LabelInterface

from backend.settings import Settings
from converters.output_schema import output_json_schema
from converters.task_spec import ControlSpec, TaskSpec, build_task_spec


@dataclass(frozen=True)
class ProjectPlan:
    """Everything needed to predict for one label config + extra_params, built once and cached."""

    spec: TaskSpec
    interface: LabelInterface
    schema: dict[str, Any]
    model: str
    temperature: float
    project_id: str | None = None


class PlanBook:
    """Builds and caches plans and shortlist schemas."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._plan = lru_cache(maxsize=64)(self._build)
        self._schema = lru_cache(maxsize=512)(lambda controls: output_json_schema(TaskSpec(controls, ())))

    def plan(self, label_config: str, extra_params: Mapping[str, Any] | None = None) -> ProjectPlan:
        """Raises UnsupportedConfig / ValueError for configs that cannot be predicted."""
        return self._plan(label_config, json.dumps(dict(extra_params or {}), sort_keys=True, default=str))

    def schema_for(self, plan: ProjectPlan, controls: tuple[ControlSpec, ...]) -> dict[str, Any]:
        """The answer schema for a task whose controls may be narrowed to a label shortlist."""
        return plan.schema if controls == plan.spec.controls else self._schema(controls)

    def _build(self, label_config: str, extra_json: str) -> ProjectPlan:
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
