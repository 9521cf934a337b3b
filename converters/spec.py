"""The data a label config becomes: what the LLM must produce, per control, and nothing else.

Plain frozen dataclasses, so every later stage (schema, prompt, regions, examples) can be tested with a
hand-made spec; `converters.task_spec` builds them from a config, and `converters.controls` holds the
behaviour of each control kind (`handler_for(control)`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class LabelSpec:
    value: str  # what Label Studio stores in the result (the alias when one is set)
    display: str  # what the model sees and answers with (the Label's `value`)
    description: str = ""


@dataclass(frozen=True)
class ControlSpec:
    name: str
    kind: str  # the handler's kind: the result type Label Studio stores ("labels" for spans, "choices")
    to_name: str
    data_key: str
    labels: tuple[LabelSpec, ...]
    multiple: bool = False
    attrs: tuple[tuple[str, str], ...] = ()  # the tag's own attributes (min, max, maxRating, rows, ...)
    per_region: tuple[ControlSpec, ...] = ()  # perRegion controls: attributes of each span of this control

    def __post_init__(self) -> None:
        # Built again from JSON (batch state files): lists of pairs and dicts become the frozen forms.
        object.__setattr__(self, "attrs", tuple((str(k), str(v)) for k, v in self.attrs))
        children = tuple(c if isinstance(c, ControlSpec) else _control_from_dict(c) for c in self.per_region)
        object.__setattr__(self, "per_region", children)

    def display_labels(self) -> list[str]:
        return [label.display for label in self.labels]

    def attr(self, name: str, default: str | None = None) -> str | None:
        """One of the tag's attributes as written in the config (None/default when absent)."""
        return dict(self.attrs).get(name, default)


def _control_from_dict(raw: Mapping[str, Any]) -> ControlSpec:
    labels = tuple(label if isinstance(label, LabelSpec) else LabelSpec(**label) for label in raw.get("labels", ()))
    return ControlSpec(**{**raw, "labels": labels})


@dataclass(frozen=True)
class TaskSpec:
    controls: tuple[ControlSpec, ...]
    objects: tuple[tuple[str, str], ...]  # (object name, data key) of every text object used
    instructions: str = ""
    skipped: tuple[str, ...] = ()  # control tags present but not predicted (e.g. PolygonLabels)
    config_hash: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def control(self, name: str) -> ControlSpec:
        for control in self.controls:
            if control.name == name:
                return control
        raise KeyError(name)

    @property
    def data_keys(self) -> list[str]:
        return [key for _, key in self.objects]
