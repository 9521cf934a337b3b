"""How far a prediction agrees with the reviewed result, control by control (for `lsllm eval`).

A pure function over two Label Studio results of the same task and its TaskSpec:
- Number, Rating, Choices, Taxonomy: exact match (1.0 or 0.0) of the stored value (a number, or the
  set of choices / paths);
- TextArea: a similarity in [0, 1], the token F1 of the predicted and the reviewed texts (words
  casefolded, punctuation ignored; the SQuAD answer metric), so "The phone is great." and "the phone
  is GREAT" score 1.0 and a paraphrase scores its word overlap;
- Labels: the F1 of the (start, end, label) spans (an empty reviewed result against an empty prediction
  is 1.0: "no entities" is an answer);
- a perRegion control: the mean, over the reviewed spans that carry it, of the exact match (choices) or
  the similarity (texts) of the predicted span at the same offsets (0 when the span was not predicted).
A control the reviewer left without a value (and that cannot mean "nothing", as a Labels result can)
is not scored: None.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from converters.spec import ControlSpec, TaskSpec

Result = Sequence[Mapping[str, Any]]

_WORD = re.compile(r"[^\W_]+", re.UNICODE)


def text_similarity(predicted: Sequence[str], reviewed: Sequence[str]) -> float:
    """Token F1 of two lists of texts (each list read as one text); 1.0 when both are empty."""
    pred = [w.casefold() for text in predicted for w in _WORD.findall(text)]
    gold = [w.casefold() for text in reviewed for w in _WORD.findall(text)]
    if not pred and not gold:
        return 1.0
    if not pred or not gold:
        return 0.0
    remaining = list(gold)
    common = 0
    for word in pred:
        if word in remaining:
            remaining.remove(word)
            common += 1
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def _of(result: Result, name: str) -> list[Mapping[str, Any]]:
    return [r for r in result if isinstance(r, Mapping) and r.get("from_name") == name]


def _values(regions: Sequence[Mapping[str, Any]], key: str) -> list[Any]:
    out: list[Any] = []
    for region in regions:
        value = (region.get("value") or {}).get(key)
        for item in value if isinstance(value, list) else [value]:
            if item is not None and item not in out:
                out.append(item)
    return out


def _same_set(key: str) -> Callable[[ControlSpec, Result, Result], float | None]:
    def score(control: ControlSpec, predicted: Result, reviewed: Result) -> float | None:
        gold = _values(_of(reviewed, control.name), key)
        if not gold:
            return None
        pred = _values(_of(predicted, control.name), key)
        canon = (lambda v: tuple(v) if isinstance(v, list) else v)  # noqa: E731 - paths are lists
        return 1.0 if {canon(v) for v in pred} == {canon(v) for v in gold} else 0.0
    return score


def _number(key: str) -> Callable[[ControlSpec, Result, Result], float | None]:
    def score(control: ControlSpec, predicted: Result, reviewed: Result) -> float | None:
        gold = _values(_of(reviewed, control.name), key)
        if not gold:
            return None
        pred = _values(_of(predicted, control.name), key)
        try:
            return 1.0 if len(pred) == 1 and abs(float(pred[0]) - float(gold[0])) < 1e-9 else 0.0
        except (TypeError, ValueError):
            return 0.0
    return score


def _texts(control: ControlSpec, predicted: Result, reviewed: Result) -> float | None:
    gold = [t for t in _values(_of(reviewed, control.name), "text") if isinstance(t, str)]
    if not gold:
        return None
    return text_similarity([t for t in _values(_of(predicted, control.name), "text") if isinstance(t, str)], gold)


def _spans(control: ControlSpec, predicted: Result, reviewed: Result) -> float | None:
    def spans(result: Result) -> set[tuple[Any, Any, Any]]:
        return {(v.get("start"), v.get("end"), label) for r in _of(result, control.name)
                for v in [r.get("value") or {}] for label in v.get("labels") or []}
    pred, gold = spans(predicted), spans(reviewed)
    if not pred and not gold:
        return 1.0
    common = len(pred & gold)
    return 0.0 if common == 0 else 2 * common / (len(pred) + len(gold))


def _attribute(child: ControlSpec, predicted: Result, reviewed: Result) -> float | None:
    def by_place(result: Result) -> dict[tuple[Any, Any], Mapping[str, Any]]:
        return {((r.get("value") or {}).get("start"), (r.get("value") or {}).get("end")): r.get("value") or {}
                for r in _of(result, child.name)}
    gold, pred = by_place(reviewed), by_place(predicted)
    if not gold:
        return None
    scores = []
    for place, value in gold.items():
        other = pred.get(place)
        if other is None:
            scores.append(0.0)
        elif "choices" in value:
            scores.append(1.0 if set(other.get("choices") or []) == set(value.get("choices") or []) else 0.0)
        else:
            mine_raw, theirs_raw = other.get("text"), value.get("text")
            mine = [str(t) for t in mine_raw] if isinstance(mine_raw, list) else []
            theirs = [str(t) for t in theirs_raw] if isinstance(theirs_raw, list) else []
            scores.append(text_similarity(mine, theirs))
    return sum(scores) / len(scores)


_BY_KIND: dict[str, Callable[[ControlSpec, Result, Result], float | None]] = {
    "choices": _same_set("choices"),
    "taxonomy": _same_set("taxonomy"),
    "number": _number("number"),
    "rating": _number("rating"),
    "textarea": _texts,
    "labels": _spans,
}


def control_agreement(spec: TaskSpec, predicted: Result, reviewed: Result) -> dict[str, float | None]:
    """Control name -> agreement in [0, 1] of the prediction with the reviewed result (None: the
    reviewer gave this control nothing to compare with, or no metric is defined for its kind)."""
    out: dict[str, float | None] = {}
    for control in spec.controls:
        metric = _BY_KIND.get(control.kind)
        out[control.name] = metric(control, predicted, reviewed) if metric else None
        for child in control.per_region:
            out[child.name] = _attribute(child, predicted, reviewed)
    return out
