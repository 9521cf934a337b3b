"""Reviewed annotations -> few-shot examples in the model's own answer form, and the checks on them.

The inverse of `converters.regions`: a Label Studio result (stored label values, offsets) becomes the
JSON the model is asked to produce (display label names, entity texts in reading order), control by
control through its handler (converters.controls).

An empty submitted result is an answer too: a sentence with no entities is the example `{"label": []}`
that teaches the model not to invent entities. Only a control whose answer form cannot express
"nothing" (a single choice) makes a result incomplete; `unanswered` names those controls.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from label_studio_sdk.label_interface import LabelInterface

from converters.controls import IncompleteAnswer, handler_for, handler_for_region
from converters.controls.base import HostsPerRegion
from converters.regions import offset_errors
from converters.spec import ControlSpec, TaskSpec


def _regions_of(control: ControlSpec, result: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """A control's regions, and those of its perRegion controls (the attributes of its spans)."""
    names = {control.name, *(child.name for child in control.per_region)}
    return [region for region in result if region.get("from_name") in names]


def result_to_answer(spec: TaskSpec, result: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The answer the model should have given for this reviewed result, with every control's key
    (an empty result gives empty answers, e.g. no entities); {} when some control is left without an
    answer its form requires (see `unanswered`), since a partial answer is not one the schema allows."""
    answer: dict[str, Any] = {}
    for control in spec.controls:
        try:
            answer[control.name] = handler_for(control).example_answer(control, _regions_of(control, result))
        except IncompleteAnswer:
            return {}
    return answer


def unanswered(spec: TaskSpec, result: Sequence[Mapping[str, Any]]) -> list[str]:
    """Why this reviewed result cannot be a few-shot example although it fits the config: the controls
    it leaves without an answer their form requires (empty when it can be one). An empty result for
    a Labels control is an answer ("no entities"), not a gap."""
    reasons = []
    for control in spec.controls:
        try:
            handler_for(control).example_answer(control, _regions_of(control, result))
        except IncompleteAnswer as exc:
            reasons.append(str(exc))
    return reasons


def coverage_label(spec: TaskSpec, result: Sequence[Mapping[str, Any]]) -> str | None:
    """The label an example stands for when few-shot selection balances labels: the first one a
    control's handler names (a single-choice control's choice); None when no control balances."""
    for control in spec.controls:
        label = handler_for(control).coverage_label(control, _regions_of(control, result))
        if label is not None:
            return label
    return None


def result_labels(result: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every label value in a result (for label coverage and for setting aside vanished labels).

    A perRegion attribute (a choices/textarea result carrying a span's offsets) is not counted: it is an
    attribute of a span, not a label of the example, and its control is not a top-level control."""
    out: list[str] = []
    for region in result:
        handler = handler_for_region(region)
        if "start" in (region.get("value") or {}) and not isinstance(handler, HostsPerRegion):
            continue
        for label in handler.region_labels(region) if handler is not None else []:
            if label not in out:
                out.append(label)
    return out


def result_errors(
    interface: LabelInterface, spec: TaskSpec, data: Mapping[str, Any], result: Sequence[Mapping[str, Any]]
) -> list[str]:
    """Why a reviewed result does not fit the project's config (empty when it fits)."""
    if not isinstance(result, list) or not all(isinstance(r, Mapping) for r in result):
        return ["result is not a list of regions"]
    names = {name for c in spec.controls for name in (c.name, *(child.name for child in c.per_region))}
    relevant = [dict(r) for r in result if r.get("from_name") in names]
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
