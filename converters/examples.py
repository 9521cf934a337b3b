"""Reviewed annotations -> few-shot examples in the model's own answer form, and the checks on them.

The inverse of `converters.regions`: a Label Studio result (stored label values, offsets) becomes the
JSON the model is asked to produce (display label names, entity texts in reading order).
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

from label_studio_sdk.label_interface import LabelInterface

from converters.regions import offset_errors
from converters.task_spec import TaskSpec


def _display(spec: TaskSpec, control_name: str) -> dict[str, str]:
    control = spec.control(control_name)
    return {label.value: label.display for label in control.labels}


def result_to_answer(spec: TaskSpec, result: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The answer the model should have given for this reviewed result."""
    answer: dict[str, Any] = {}
    spans: dict[str, list[tuple[int, dict[str, str]]]] = {}
    for control in spec.controls:
        if control.kind == "labels":
            spans[control.name] = []
    for region in result:
        name = region.get("from_name")
        value = region.get("value") or {}
        try:
            control = spec.control(str(name))
        except KeyError:
            continue
        names = _display(spec, control.name)
        if control.kind == "labels" and region.get("type") == "labels":
            labels = value.get("labels") or []
            if labels and "text" in value:
                spans[control.name].append(
                    (int(value.get("start", 0)), {"text": value["text"], "label": names.get(labels[0], labels[0])})
                )
        elif control.kind == "choices" and region.get("type") == "choices":
            chosen = [names.get(c, c) for c in value.get("choices") or []]
            if chosen:
                answer[control.name] = chosen if control.multiple else chosen[0]
    for name, items in spans.items():
        answer[name] = [item for _, item in sorted(items, key=lambda pair: pair[0])]
    return {c.name: answer[c.name] for c in spec.controls if c.name in answer}


def result_labels(result: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every label value in a result (for label coverage and for setting aside vanished labels)."""
    out: list[str] = []
    for region in result:
        value = region.get("value") or {}
        for key in ("labels", "choices"):
            for label in value.get(key) or []:
                if label not in out:
                    out.append(str(label))
    return out


def result_errors(
    interface: LabelInterface, spec: TaskSpec, data: Mapping[str, Any], result: Sequence[Mapping[str, Any]]
) -> list[str]:
    """Why a reviewed result does not fit the project's config (empty when it fits)."""
    if not isinstance(result, list) or not all(isinstance(r, Mapping) for r in result):
        return ["result is not a list of regions"]
    relevant = [dict(r) for r in result if r.get("from_name") in {c.name for c in spec.controls}]
    errors = list(interface.validate_prediction({"result": relevant}, return_errors=True) or [])
    errors.extend(offset_errors(relevant, data, spec))
    return errors


def _comparable(result: Sequence[Mapping[str, Any]] | None) -> list[str]:
    out = []
    for region in result or []:
        value = dict(region.get("value") or {})
        out.append(json.dumps([region.get("from_name"), region.get("type"), value], sort_keys=True))
    return sorted(out)


def reviewer_changed(result: Sequence[Mapping[str, Any]], prediction: Mapping[str, Any] | None) -> bool | None:
    """True when the reviewer changed the model's prediction, False when accepted as is, None when the
    annotation did not start from a prediction."""
    if not prediction or not isinstance(prediction, Mapping) or "result" not in prediction:
        return None
    return _comparable(result) != _comparable(prediction.get("result"))
