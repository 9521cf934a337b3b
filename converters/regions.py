"""Model answer -> Label Studio regions with exact offsets, then validation before anything leaves.

`answer_to_prediction` is a pure function: spec + task data + parsed answer (+ token probabilities)
in, a prediction dict and counters out. `check_prediction` applies label-studio-sdk's own
`validate_prediction` plus the offset rule `data[start:end] == value.text` that Label Studio never checks.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping

from label_studio_sdk.label_interface import LabelInterface

from converters.align import Mention, align_mentions
from converters.confidence import TokenProbs, combine
from converters.task_spec import ControlSpec, TaskSpec

_TEXT_KEYS = ("text", "entity", "span", "value", "mention", "name")
_LABEL_KEYS = ("label", "type", "entity_type", "category", "tag", "labels")


@dataclass
class Prediction:
    result: list[dict[str, Any]]
    score: float | None
    dropped: Counter = field(default_factory=Counter)  # reason -> count

    def as_ls(self, model_version: str) -> dict[str, Any]:
        item: dict[str, Any] = {"result": self.result, "model_version": model_version}
        if self.score is not None:  # no logprobs: no score, rather than an invented one
            item["score"] = self.score
        return item


def _norm_label(value: str) -> str:
    return re.sub(r"[\s_\-]+", "", str(value)).casefold()


def label_lookup(control: ControlSpec) -> dict[str, str]:
    """Normalised display name / stored value -> the value Label Studio stores."""
    table: dict[str, str] = {}
    for label in control.labels:
        table.setdefault(_norm_label(label.display), label.value)
        table.setdefault(_norm_label(label.value), label.value)
    return table


def _control_value(spec: TaskSpec, control: ControlSpec, answer: Mapping[str, Any]) -> Any:
    if control.name in answer:
        return answer[control.name]
    folded = {str(k).casefold(): v for k, v in answer.items()}
    if control.name.casefold() in folded:
        return folded[control.name.casefold()]
    same_kind = [c for c in spec.controls if c.kind == control.kind]
    if len(same_kind) == 1:
        aliases = ("entities", "ner", "spans") if control.kind == "labels" else ("choice", "choices", "label", "labels", "sentiment", "intent", "class", "category")
        for alias in aliases:
            if alias in folded:
                return folded[alias]
    if len(spec.controls) == 1 and len(answer) == 1:
        return next(iter(answer.values()))
    return None


def _first_present(item: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        if key in item and item[key] not in (None, ""):
            value = item[key]
            if isinstance(value, list):
                value = value[0] if value else None
            return value
    return None


def _mentions(raw: Any) -> list[tuple[str, str]]:
    """Entity items in any of the shapes models produce: dicts, pairs, or {label: [texts]}."""
    if isinstance(raw, Mapping):
        pairs = []
        for label, texts in raw.items():
            for text in texts if isinstance(texts, list) else [texts]:
                pairs.append((str(text), str(label)))
        return pairs
    if not isinstance(raw, list):
        return []
    out = []
    for item in raw:
        if isinstance(item, Mapping):
            text = _first_present(item, _TEXT_KEYS)
            label = _first_present(item, _LABEL_KEYS)
            if text is not None and label is not None:
                out.append((str(text), str(label)))
            else:
                out.append(("", ""))
        elif isinstance(item, (list, tuple)) and len(item) == 2:
            out.append((str(item[0]), str(item[1])))
        else:
            out.append(("", ""))
    return out


def region_id(*parts: Any) -> str:
    digest = hashlib.sha1("|".join(str(p) for p in parts).encode("utf-8")).hexdigest()
    return digest[:10]


def _span_regions(
    control: ControlSpec, text: str, raw: Any, probs: TokenProbs | None, dropped: Counter
) -> list[dict[str, Any]]:
    lookup = label_lookup(control)
    mentions: list[Mention] = []
    scores: list[float | None] = []
    for surface, label in _mentions(raw):
        stored = lookup.get(_norm_label(label))
        score = None
        if probs is not None and surface and label:
            probs.skip_to(surface)
            score = probs.probability(label, allowed=control.display_labels())
        if stored is None:
            dropped["unknown_label" if surface else "malformed"] += 1
            continue
        mentions.append(Mention(surface, stored))
        scores.append(score)
    spans, misses = align_mentions(text, mentions)
    for miss in misses:
        dropped[miss.reason] += 1
    regions = []
    for span in spans:
        region: dict[str, Any] = {
            "id": region_id(control.name, span.start, span.end, span.label),
            "from_name": control.name,
            "to_name": control.to_name,
            "type": "labels",
            "value": {"start": span.start, "end": span.end, "text": span.text, "labels": [span.label]},
        }
        if scores[span.mention_index] is not None:
            region["score"] = scores[span.mention_index]
        regions.append(region)
    return regions


def _choice_region(
    control: ControlSpec, raw: Any, probs: TokenProbs | None, dropped: Counter
) -> dict[str, Any] | None:
    lookup = label_lookup(control)
    values = raw if isinstance(raw, list) else [raw]
    chosen: list[str] = []
    scores: list[float | None] = []
    if probs is not None:
        probs.skip_to(control.name)
    for value in values:
        if not isinstance(value, (str, int, float)):
            dropped["malformed"] += 1
            continue
        stored = lookup.get(_norm_label(str(value)))
        score = probs.probability(str(value), allowed=control.display_labels()) if probs is not None else None
        if stored is None:
            dropped["unknown_label"] += 1
            continue
        if stored in chosen:
            continue
        chosen.append(stored)
        scores.append(score)
        if not control.multiple:
            break
    if not chosen:
        return None
    region: dict[str, Any] = {
        "id": region_id(control.name, *chosen),
        "from_name": control.name,
        "to_name": control.to_name,
        "type": "choices",
        "value": {"choices": chosen},
    }
    score = combine(scores)
    if score is not None:
        region["score"] = score
    return region


def answer_to_prediction(
    spec: TaskSpec,
    data: Mapping[str, Any],
    answer: Mapping[str, Any],
    probs: TokenProbs | None = None,
) -> Prediction:
    """Turn a parsed model answer into Label Studio regions; what cannot be placed is counted."""
    dropped: Counter = Counter()
    result: list[dict[str, Any]] = []
    for control in spec.controls:
        raw = _control_value(spec, control, answer)
        if raw is None:
            continue
        if control.kind == "labels":
            text = data.get(control.data_key)
            if not isinstance(text, str):
                continue
            result.extend(_span_regions(control, text, raw, probs, dropped))
        else:
            region = _choice_region(control, raw, probs, dropped)
            if region is not None:
                result.append(region)
    region_scores = [r.get("score") for r in result]
    score = combine(region_scores)
    if score is None and probs is not None:
        score = probs.mean()
    return Prediction(result=result, score=score, dropped=dropped)


def offset_errors(result: list[dict[str, Any]], data: Mapping[str, Any], spec: TaskSpec) -> list[str]:
    """The rule Label Studio never checks: every span's text is exactly data[start:end]."""
    errors = []
    keys = dict(spec.objects)
    for i, region in enumerate(result):
        value = region.get("value") or {}
        if "start" not in value:
            continue
        text = data.get(keys.get(region.get("to_name"), ""), None)
        start, end = value.get("start"), value.get("end")
        if not isinstance(text, str) or not isinstance(start, int) or not isinstance(end, int):
            errors.append(f"region {i}: span without text data or integer offsets")
            continue
        if not 0 <= start < end <= len(text):
            errors.append(f"region {i}: offsets {start}-{end} outside text of length {len(text)}")
        elif text[start:end] != value.get("text"):
            errors.append(f"region {i}: text {value.get('text')!r} != data[{start}:{end}] {text[start:end]!r}")
    return errors


def check_prediction(
    interface: LabelInterface, spec: TaskSpec, data: Mapping[str, Any], prediction: Mapping[str, Any]
) -> list[str]:
    """All reasons Label Studio (with its validation flag on) or a reviewer would reject this."""
    errors = list(interface.validate_prediction(dict(prediction), return_errors=True) or [])
    errors.extend(offset_errors(prediction.get("result") or [], data, spec))
    for region in prediction.get("result") or []:
        if region.get("type") == "choices":
            try:
                control = spec.control(region["from_name"])
            except KeyError:
                continue
            if not control.multiple and len(region["value"].get("choices", [])) > 1:
                errors.append(f"several choices for single-choice control {control.name!r}")
    return errors
