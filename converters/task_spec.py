"""Label Studio label config -> TaskSpec: what the LLM must produce, read with label-studio-sdk.

The TaskSpec (converters.spec) is the only thing later stages (schema, prompt, region building) know
about a config, so each of them can be tested with a hand-made spec. Which tags are predicted, on which
objects, is asked of the control handlers (converters.controls), so a new control kind needs no change
here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from label_studio_sdk.label_interface import LabelInterface

from converters.controls import HANDLERS, handler_for_tag
from converters.spec import ControlSpec, LabelSpec, TaskSpec

__all__ = ["ControlSpec", "LabelSpec", "TaskSpec", "UnsupportedConfig", "build_task_spec", "config_hash"]


class UnsupportedConfig(ValueError):
    """The config has nothing this backend can predict; the message names the tags."""


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
        handler = handler_for_tag(tag.tag)
        if handler is None:
            skipped.append(f"<{tag.tag} name=\"{tag.name}\">")
            continue
        targets = [obj for obj in (tag.objects or []) if obj.tag in handler.object_tags]
        if not targets:
            on = ", ".join(f"<{obj.tag}>" for obj in (tag.objects or [])) or "nothing"
            skipped.append(f"<{tag.tag} name=\"{tag.name}\"> on {on}")
            continue
        target = targets[0]
        data_key = (target.value or "").lstrip("$")
        if not data_key:
            skipped.append(f"<{target.tag} name=\"{target.name}\"> without a $value")
            continue
        control = ControlSpec(
            name=tag.name,
            kind=handler.kind,
            to_name=target.name,
            data_key=data_key,
            labels=_labels(tag, _label_descriptions(extra, tag.name)),
            multiple=handler.multiple(tag.attr or {}),
        )
        problem = handler.spec_problem(control)
        if problem:
            skipped.append(f"<{tag.tag} name=\"{tag.name}\"> {problem}")
            continue
        controls.append(control)
        objects[target.name] = data_key

    if not controls:
        found = ", ".join(skipped) or ", ".join(f"<{obj.tag}>" for obj in interface.objects) or "no tags"
        raise UnsupportedConfig(f"unsupported label config: nothing to predict. This backend predicts {_predicted()}; "
                                f"found {found}")
    return TaskSpec(
        controls=tuple(controls),
        objects=tuple(objects.items()),
        instructions=str(extra.get("instructions") or ""),
        skipped=tuple(skipped),
        config_hash=config_hash(label_config),
        extra=extra,
    )


def _predicted() -> str:
    """What the handlers predict, for the error message: "<Labels> on <Text> and <Choices> on ..."."""
    parts = [f"<{h.tag}> on " + "/".join(f"<{o}>" for o in h.object_tags) for h in HANDLERS]
    return ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]
