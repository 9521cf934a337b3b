"""Label Studio label config -> TaskSpec: what the LLM must produce, read with label-studio-sdk.

The TaskSpec (converters.spec) is the only thing later stages (schema, prompt, region building) know
about a config, so each of them can be tested with a hand-made spec. Which tags are predicted, on which
objects, is asked of the control handlers (converters.controls), so a new control kind needs no change
here.
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from label_studio_sdk.label_interface import LabelInterface

from converters.controls import HANDLERS, handler_for, handler_for_tag
from converters.controls.base import HostsPerRegion, ReadsOwnLabels
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
    per_region: list[tuple[Any, ControlSpec]] = []  # (tag, spec) of perRegion controls, attached below
    elements: dict[str, ET.Element] | None = None
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
        descriptions = _label_descriptions(extra, tag.name)
        if isinstance(handler, ReadsOwnLabels):  # a tree of labels (Taxonomy) the SDK flattens
            if elements is None:
                elements = _control_elements(label_config)
            element = elements.get(tag.name)
            labels = handler.read_labels(element, descriptions) if element is not None else ()
        else:
            labels = _labels(tag, descriptions)
        attrs = tag.attr or {}
        control = ControlSpec(
            name=tag.name,
            kind=handler.kind,
            to_name=target.name,
            data_key=data_key,
            labels=labels,
            multiple=handler.multiple(attrs),
            attrs=tuple((str(k), str(v)) for k, v in attrs.items()),
        )
        problem = handler.spec_problem(control)
        if problem:
            skipped.append(f"<{tag.tag} name=\"{tag.name}\"> {problem}")
            continue
        if attrs.get("perRegion") == "true":
            per_region.append((tag, control))
            continue
        controls.append(control)
        objects[target.name] = data_key
    controls = _attach_per_region(controls, per_region, skipped)

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


def _control_elements(label_config: str) -> dict[str, ET.Element]:
    """Control name -> its XML element (the config already parsed with LabelInterface, so it is XML)."""
    try:
        root = ET.fromstring(label_config)
    except ET.ParseError:
        return {}
    return {str(el.attrib["name"]): el for el in root.iter() if "name" in el.attrib and "toName" in el.attrib}


def _attach_per_region(
    controls: list[ControlSpec], per_region: list[tuple[Any, ControlSpec]], skipped: list[str]
) -> list[ControlSpec]:
    """perRegion controls become attributes of the span controls on the same object (their answers are
    part of each span's item); one with no span control to host it is skipped with the reason."""
    for tag, child in per_region:
        hosts = [i for i, c in enumerate(controls) if c.to_name == child.to_name and _hosts(c, child)]
        if not hosts:
            skipped.append(f"<{tag.tag} name=\"{tag.name}\" perRegion=\"true\"> "
                           "without spans (<Labels>) it can describe")
            continue
        for i in hosts:
            controls[i] = replace(controls[i], per_region=(*controls[i].per_region, child))
    return controls


def _hosts(control: ControlSpec, child: ControlSpec) -> bool:
    handler = handler_for(control)
    return isinstance(handler, HostsPerRegion) and handler.accepts_per_region(child)


def _predicted() -> str:
    """What the handlers predict, for the error message: "<Labels> on <Text> and <Choices> on ..."."""
    parts = [f"<{h.tag}> on " + "/".join(f"<{o}>" for o in h.object_tags) for h in HANDLERS]
    return ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]
