"""Model answer -> Label Studio regions with exact offsets, then validation before anything leaves.

`answer_to_prediction` is a pure function: spec + task data + parsed answer (+ token probabilities)
in, a prediction dict and counters out; each control's regions (and their scores, from the control's
own tokens) come from its handler (converters.controls). `check_prediction` applies label-studio-sdk's
own `validate_prediction`, the offset rule `data[start:end] == value.text` that Label Studio never
checks, and each handler's rules on its regions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from label_studio_sdk.label_interface import LabelInterface

from converters.confidence import TokenProbs, combine, member_at
from converters.controls import AnswerPart, handler_for, single_choice_controls
from converters.controls.base import label_lookup, norm_label, region_id
from converters.spec import ControlSpec, TaskSpec

__all__ = ["Prediction", "answer_to_prediction", "check_prediction", "label_lookup", "offset_errors", "region_id"]


@dataclass
class Prediction:
    result: list[dict[str, Any]]
    score: float | None
    dropped: Counter = field(default_factory=Counter)  # reason -> count
    # single-choice control -> every label's probability where the model wrote its label (stored values;
    # TokenProbs.distribution): what a student blends with (backend.learning.blend); never sent to Label Studio
    votes: dict[str, dict[str, float]] = field(default_factory=dict)

    def as_ls(self, model_version: str) -> dict[str, Any]:
        item: dict[str, Any] = {"result": self.result, "model_version": model_version}
        if self.score is not None:  # no logprobs: no score, rather than an invented one
            item["score"] = self.score
        return item


def _answer_key(spec: TaskSpec, control: ControlSpec, answer: Mapping[str, Any]) -> str | None:
    """The key of the answer that holds this control's value: its name, its name in another case, one
    of the kind's usual names when it is the only control of its kind, or the only key of the answer
    when there is only one control."""
    if control.name in answer:
        return control.name
    folded = {str(k).casefold(): k for k in answer}
    if control.name.casefold() in folded:
        return folded[control.name.casefold()]
    same_kind = [c for c in spec.controls if c.kind == control.kind]
    if len(same_kind) == 1:
        for alias in handler_for(control).answer_aliases:
            if alias in folded:
                return folded[alias]
    if len(spec.controls) == 1 and len(answer) == 1:
        return next(iter(answer))
    return None


def answer_to_prediction(
    spec: TaskSpec,
    data: Mapping[str, Any],
    answer: Mapping[str, Any],
    probs: TokenProbs | None = None,
) -> Prediction:
    """Turn a parsed model answer into Label Studio regions; what cannot be placed is counted."""
    dropped: Counter = Counter()
    result: list[dict[str, Any]] = []
    votes: dict[str, dict[str, float]] = {}
    root = probs.locate(answer) if probs is not None else None
    single = {c.name for c in single_choice_controls(spec)}
    for control in spec.controls:
        key = _answer_key(spec, control, answer)
        if key is None or answer[key] is None:
            continue
        part = AnswerPart(answer[key], member_at(root, key), probs if root is not None else None)
        result.extend(handler_for(control).regions(control, data, part, dropped))
        if control.name in single and part.probs is not None:
            vote = _vote(control, part)
            if vote:
                votes[control.name] = vote
    score = combine([r.get("score") for r in result])
    if score is None and probs is not None:
        score = probs.mean()
    return Prediction(result=result, score=score, dropped=dropped, votes=votes)


def _vote(control: ControlSpec, part: AnswerPart) -> dict[str, float] | None:
    """Every label's probability (by stored value) where a single-choice answer wrote its label."""
    assert part.probs is not None
    found = part.probs.distribution(part.node, control.display_labels())
    if found is None:
        return None
    stored = label_lookup(control)
    out: dict[str, float] = {}
    for display, p in found.items():
        value = stored[norm_label(display)]
        out[value] = out.get(value, 0.0) + p
    return out


def offset_errors(result: list[dict[str, Any]], data: Mapping[str, Any], spec: TaskSpec) -> list[str]:
    """The rule Label Studio never checks: every span's text is exactly data[start:end]."""
    errors = []
    keys = dict(spec.objects)
    for i, region in enumerate(result):
        value = region.get("value") or {}
        if "start" not in value:
            continue
        text = data.get(keys.get(str(region.get("to_name")), ""), None)
        start, end = value.get("start"), value.get("end")
        if not isinstance(text, str) or not isinstance(start, int) or not isinstance(end, int):
            errors.append(f"region {i}: span without text data or integer offsets")
            continue
        if not 0 <= start < end <= len(text):
            errors.append(f"region {i}: offsets {start}-{end} outside text of length {len(text)}")
        elif isinstance(value.get("text"), list):
            continue  # a perRegion TextArea on a span: its texts take the `text` key, the offsets are checked
        elif text[start:end] != value.get("text"):
            errors.append(f"region {i}: text {value.get('text')!r} != data[{start}:{end}] {text[start:end]!r}")
    return errors


def check_prediction(
    interface: LabelInterface, spec: TaskSpec, data: Mapping[str, Any], prediction: Mapping[str, Any]
) -> list[str]:
    """All reasons Label Studio (with its validation flag on) or a reviewer would reject this."""
    errors = list(interface.validate_prediction(dict(prediction), return_errors=True) or [])
    errors.extend(offset_errors(prediction.get("result") or [], data, spec))
    owners = _controls_by_name(spec)
    for region in prediction.get("result") or []:
        control = owners.get(str(region.get("from_name")))
        if control is not None:
            errors.extend(handler_for(control).region_errors(control, region))
    return errors


def _controls_by_name(spec: TaskSpec) -> dict[str, ControlSpec]:
    """Every predicted control by name, perRegion controls (attributes of spans) included."""
    out: dict[str, ControlSpec] = {}
    for control in spec.controls:
        out.setdefault(control.name, control)
        for child in control.per_region:
            out.setdefault(child.name, child)
    return out
