"""Live agreement: how reviewers judged the predictions they started from, as plain data.

Pure functions, no I/O. A review is one annotation made from one prediction (Label Studio's
`annotation.prediction`, or the prediction `parent_prediction` points to). `review_outcome` turns the
pair into a compact `ReviewOutcome` (what the model said and what the reviewer kept, per control);
the store keeps one per annotation, so a re-delivered, updated or deleted annotation replaces or
removes its own outcome and every figure is recomputed from the outcomes (`summarise`): counters
could not be made idempotent, and AUROC and ECE need the individual scores anyway.

The scoring conventions are those of `lsllm eval` (converters.scoring), with the reviewer's
result as the gold:
- choices (per control): the first chosen value; a review that leaves the control empty is not
  counted for it; a prediction that leaves it empty is wrong (unanswered).
- labels (per control): strict (start, end, label) spans, micro-averaged, and per label.
- "right" (for calibration): every choices and labels control of the prediction equals the review;
  with no such control, right means accepted unchanged.
- accepted: the review's result equals the prediction's (region ids, scores and order aside).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from backend.store.quality_store import ReviewOutcome
from converters.examples import reviewer_changed
from converters.scoring import calibration, choice_of, prf, span_scores, spans_of

SCORED_TYPES = ("choices", "labels")
# reviews are grouped by how many live examples the project had when they arrived (report, /quality)
EXAMPLE_BUCKETS = (0, 10, 50, 200, 1000, 5000)


class NoPrediction(ValueError):
    """The annotation did not start from a prediction whose result is known."""


def _controls(*results: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """from_name -> type for every choices/labels control named in any of the results, in order."""
    out: dict[str, str] = {}
    for result in results:
        for region in result:
            kind = region.get("type")
            name = region.get("from_name")
            if kind in SCORED_TYPES and isinstance(name, str):
                out.setdefault(name, str(kind))
    return out


def _side(kind: str, result: Sequence[Mapping[str, Any]], name: str) -> dict[str, Any]:
    if kind == "choices":
        return {"type": kind, "choice": choice_of(result, name)}
    return {"type": kind, "spans": sorted([list(s) for s in spans_of(result, name)])}


def _same(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    if a["type"] == "choices":
        return bool(a["choice"] == b["choice"])
    return Counter(map(tuple, a["spans"])) == Counter(map(tuple, b["spans"]))


def review_outcome(annotation: Mapping[str, Any], prediction: Mapping[str, Any] | None) -> ReviewOutcome:
    """The outcome of one review. Raises NoPrediction when the prediction (or its result) is unknown,
    ValueError for a cancelled (skipped) annotation or regions that cannot be read (e.g. a span
    without integer offsets)."""
    if not isinstance(prediction, Mapping) or not isinstance(prediction.get("result"), list):
        raise NoPrediction("the annotation carries no prediction result")
    if annotation.get("was_cancelled"):
        raise ValueError("a skipped task is no review of its prediction")
    predicted_result = [r for r in prediction["result"] if isinstance(r, Mapping)]
    reviewed_result = [r for r in annotation.get("result") or [] if isinstance(r, Mapping)]
    try:
        controls = _controls(predicted_result, reviewed_result)
        predicted = {name: _side(kind, predicted_result, name) for name, kind in controls.items()}
        reviewed = {name: _side(kind, reviewed_result, name) for name, kind in controls.items()}
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"unreadable region: {type(exc).__name__}: {exc}") from None
    accepted = reviewer_changed(reviewed_result, {"result": predicted_result}) is False
    right = all(_same(predicted[n], reviewed[n]) for n in controls) if controls else accepted
    raw_score = prediction.get("score")
    score = None
    if isinstance(raw_score, (int, float)) and not isinstance(raw_score, bool) and math.isfinite(raw_score):
        score = float(raw_score)
    pid = prediction.get("id")
    return ReviewOutcome(
        model_version=str(prediction.get("model_version") or ""),
        score=score,
        accepted=accepted,
        right=right,
        predicted=predicted,
        reviewed=reviewed,
        prediction_id=int(pid) if isinstance(pid, int) and not isinstance(pid, bool) else None,
    )


def summarise(outcomes: Sequence[ReviewOutcome]) -> dict[str, Any]:
    """Every figure for a group of reviews (a model version, or all): accepted share, per control
    accuracy/macro-F1/per-label P/R (choices) or span P/R/F1 (labels), and calibration of the score."""
    n = len(outcomes)
    accepted = sum(1 for o in outcomes if o.accepted)
    controls: dict[str, dict[str, Any]] = {}
    kinds: dict[str, str] = {}
    for o in outcomes:
        for name, side in o.reviewed.items():
            kinds.setdefault(name, side["type"])
    for name, kind in kinds.items():
        pairs = [(o.predicted.get(name), o.reviewed.get(name)) for o in outcomes if name in o.reviewed]
        if kind == "choices":
            pairs = [(p, r) for p, r in pairs if r is not None and r.get("choice") is not None]
            gold = [str(r["choice"]) for _, r in pairs if r is not None]
            guess = [p.get("choice") if p else None for p, _ in pairs]
            controls[name] = {"type": kind, **choice_scores(gold, guess)}
        else:
            gold_spans = [[tuple(s) for s in r["spans"]] for _, r in pairs if r is not None]
            guess_spans = [[tuple(s) for s in p["spans"]] if p else [] for p, _ in pairs]
            s = span_scores(gold_spans, guess_spans)
            controls[name] = {"type": kind, "reviews": len(pairs), **_overall(s.overall), "per_label": s.per_label}
    scored = [o for o in outcomes if o.score is not None]
    cal = calibration([o.score for o in scored if o.score is not None], [o.right for o in scored])
    return {
        "reviews": n,
        "accepted": accepted,
        "accepted_share": accepted / n if n else None,
        "right": sum(1 for o in outcomes if o.right),
        "controls": controls,
        "calibration": {"scored": cal.n, "ece": cal.ece, "auroc": cal.auroc,
                        "errors_in_lowest_20": cal.errors_in_lowest_20, "bins": cal.bins},
    }


def choice_scores(gold: Sequence[str], guess: Sequence[str | None]) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-label P/R/F1 of `guess` against `gold`, with the conventions of
    converters.scoring.classification_scores (unanswered = wrong, labels seen in either) in one pass:
    that one walks all reviews once per label, 1.0 s of a 3,000-review /quality with 77 labels."""
    counts: dict[str, Counter[str]] = {}
    correct = 0
    for g, p in zip(gold, guess, strict=True):
        counts.setdefault(g, Counter())
        if p is not None:
            counts.setdefault(p, Counter())
        if g == p:
            correct += 1
            counts[g]["tp"] += 1
        else:
            counts[g]["fn"] += 1
            if p is not None:
                counts[p]["fp"] += 1
    per_label = {label: prf(c["tp"], c["fp"], c["fn"]) for label, c in sorted(counts.items())}
    n = len(gold)
    return {
        "reviews": n,
        "accuracy": correct / n if n else None,
        "macro_f1": sum(s["f1"] for s in per_label.values()) / len(per_label) if per_label else None,
        "per_label": per_label,
    }


def _overall(overall: Mapping[str, float]) -> dict[str, float]:
    return {k: overall[k] for k in ("precision", "recall", "f1", "tp", "fp", "fn")}


def headline(summary: Mapping[str, Any]) -> tuple[str, float | None] | None:
    """The one figure a dashboard shows for a summary: the accuracy of the choices control reviewed
    most often (then by name), else that labels control's span F1: (metric name, value); None
    without a scored control."""
    controls = summary.get("controls", {})
    for kind, key, metric in (("choices", "accuracy", "accuracy"), ("labels", "f1", "span_f1")):
        names = [n for n, c in controls.items() if c["type"] == kind]
        names.sort(key=lambda n: (-controls[n]["reviews"], n))
        if names:
            return metric, controls[names[0]].get(key)
    return None


def bucket_of(examples_before: int) -> tuple[int, int | None]:
    """The [lo, hi) EXAMPLE_BUCKETS range a count falls in (hi None: open-ended)."""
    lo = 0
    for edge in EXAMPLE_BUCKETS[1:]:
        if examples_before < edge:
            return lo, edge
        lo = edge
    return lo, None


def quality_report(project_id: str, outcomes: Sequence[ReviewOutcome], versions_order: Sequence[str]) -> dict[str, Any]:
    """The /quality answer: all reviews, each model version (in `versions_order`, oldest first) and
    each examples-count bucket."""
    by_version: dict[str, list[ReviewOutcome]] = {v: [] for v in versions_order}
    by_bucket: dict[tuple[int, int | None], list[ReviewOutcome]] = {}
    for o in outcomes:
        by_version.setdefault(o.model_version, []).append(o)
        by_bucket.setdefault(bucket_of(o.examples_before), []).append(o)
    return {
        "project": project_id,
        "overall": summarise(outcomes),
        "model_versions": [{"model_version": v, **summarise(rows)} for v, rows in by_version.items() if rows],
        "by_examples": [
            {"examples_from": lo, "examples_to": hi, **summarise(by_bucket[(lo, hi)])}
            for lo, hi in sorted(by_bucket)
        ],
    }
