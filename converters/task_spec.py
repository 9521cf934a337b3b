"""Label Studio label config -> TaskSpec: what the LLM must produce, read with label-studio-sdk.

The TaskSpec is the only thing later stages (schema, prompt, region building) know about a config,
so each of them can be tested with a hand-made spec.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Mapping

from label_studio_sdk.label_interface import LabelInterface
from label_studio_sdk.label_interface.control_tags import ChoicesTag, LabelsTag

# Object tags whose task data is plain text that spans can be aligned in.
SPAN_OBJECTS = {"Text"}
# Object tags whose content can be shown to the model for classification.
TEXT_OBJECTS = {"Text", "HyperText"}


class UnsupportedConfig(ValueError):
    """The config has nothing this backend can predict; the message names the tags."""


@dataclass(frozen=True)
class LabelSpec:
    value: str  # what Label Studio stores in the result (the alias when one is set)
    display: str  # what the model sees and answers with (the Label's `value`)
    description: str = ""


@dataclass(frozen=True)
class ControlSpec:
    name: str
    kind: str  # "labels" (spans) or "choices"
    to_name: str
    data_key: str
    labels: tuple[LabelSpec, ...]
    multiple: bool = False

    def display_labels(self) -> list[str]:
        return [label.display for label in self.labels]


@dataclass(frozen=True)
class TaskSpec:
    controls: tuple[ControlSpec, ...]
    objects: tuple[tuple[str, str], ...]  # (object name, data key) of every text object used
    instructions: str = ""
    skipped: tuple[str, ...] = ()  # control tags present but not predicted (e.g. TextArea)
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


def config_hash(label_config: str) -> str:
    return hashlib.sha256(label_config.encode("utf-8")).hexdigest()[:16]


def _label_descriptions(extra: Mapping[str, Any], control: str) -> dict[str, str]:
    """extra_params.label_descriptions: {label: text} or {control_name: {label: text}}."""
    raw = extra.get("label_descriptions") or {}
    if not isinstance(raw, Mapping):
        return {}
    nested = raw.get(control)
    if isinstance(nested, Mapping):
        return {str(k): str(v) for k, v in nested.items()}
    return {str(k): str(v) for k, v in raw.items() if isinstance(v, str)}


def _labels(tag: Any, descriptions: Mapping[str, str]) -> tuple[LabelSpec, ...]:
    out = []
    for stored, label_tag in (tag.labels_attrs or {}).items():
        attrs = label_tag.attr or {}
        display = attrs.get("value") or stored
        description = descriptions.get(display) or descriptions.get(stored) or attrs.get("hint") or ""
        out.append(LabelSpec(value=stored, display=display, description=description))
    return tuple(out)


def build_task_spec(label_config: str, extra_params: Mapping[str, Any] | None = None) -> TaskSpec:
    """Parse `label_config` with LabelInterface and keep the controls this backend can predict.

    Raises UnsupportedConfig (naming the tags) when nothing is predictable, and ValueError when the
    XML itself does not parse.
    """
    extra = dict(extra_params or {})
    try:
        interface = LabelInterface(label_config)
    except Exception as exc:  # the SDK raises several XML/pydantic error types
        raise ValueError(f"label config does not parse: {exc}") from exc

    controls: list[ControlSpec] = []
    skipped: list[str] = []
    objects: dict[str, str] = {}
    for tag in interface.controls:
        targets = [obj for obj in (tag.objects or []) if obj.tag in TEXT_OBJECTS]
        if isinstance(tag, LabelsTag) and tag.tag == "Labels":
            targets = [obj for obj in targets if obj.tag in SPAN_OBJECTS]
            kind = "labels"
        elif isinstance(tag, ChoicesTag):
            kind = "choices"
        else:
            skipped.append(f"<{tag.tag} name=\"{tag.name}\">")
            continue
        if not targets:
            on = ", ".join(f"<{obj.tag}>" for obj in (tag.objects or [])) or "nothing"
            skipped.append(f"<{tag.tag} name=\"{tag.name}\"> on {on}")
            continue
        target = targets[0]
        data_key = (target.value or "").lstrip("$")
        if not data_key:
            skipped.append(f"<{target.tag} name=\"{target.name}\"> without a $value")
            continue
        labels = _labels(tag, _label_descriptions(extra, tag.name))
        if not labels:
            skipped.append(f"<{tag.tag} name=\"{tag.name}\"> without labels")
            continue
        multiple = kind == "choices" and (tag.attr or {}).get("choice") == "multiple"
        controls.append(
            ControlSpec(
                name=tag.name,
                kind=kind,
                to_name=target.name,
                data_key=data_key,
                labels=labels,
                multiple=multiple,
            )
        )
        objects[target.name] = data_key

    if not controls:
        found = ", ".join(skipped) or ", ".join(f"<{obj.tag}>" for obj in interface.objects) or "no tags"
        raise UnsupportedConfig(
            "unsupported label config: nothing to predict. This backend predicts <Labels> on <Text> and "
            f"<Choices> on <Text>/<HyperText>; found {found}"
        )
    return TaskSpec(
        controls=tuple(controls),
        objects=tuple(objects.items()),
        instructions=str(extra.get("instructions") or ""),
        skipped=tuple(skipped),
        config_hash=config_hash(label_config),
        extra=extra,
    )
