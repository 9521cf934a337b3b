"""Scores for `lsllm eval`: predictions against gold annotations, as plain data in and figures out.

Pure functions, no I/O. Conventions (stated here once, used in the README tables):
- Classification: a task's answer is the first choice of the first single-choice control; a task
  without one is unanswered. Accuracy counts unanswered tasks as wrong (over all tasks); macro-F1 is
  the mean F1 over the labels that occur in gold or in an answer (an unanswered task is a false
  negative for its gold label, not a false positive for any label).
- NER: strict spans: a predicted (start, end, label) counts only if the gold holds exactly that span.
  Spans are multisets: a region predicted twice is one hit and one false positive (a reviewer has to
  delete the copy). A partial overlap is a miss and a false positive.
- Calibration: a task is "right" when its answer equals the gold (classification) or when its set of
  spans equals the gold set exactly (NER, per task). Only answered tasks that carry a score count.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Span = tuple[int, int, str]


# --- reading results ---------------------------------------------------------------------------------
def choice_of(result: Sequence[Mapping[str, Any]] | None, from_name: str | None = None) -> str | None:
    """The first chosen value of a choices region (of `from_name` when given), or None."""
    for region in result or []:
        if region.get("type") != "choices" or (from_name and region.get("from_name") != from_name):
            continue
        choices = (region.get("value") or {}).get("choices") or []
        if choices:
            return str(choices[0])
    return None


def spans_of(result: Sequence[Mapping[str, Any]] | None, from_name: str | None = None) -> list[Span]:
    """Every (start, end, label) of the labels regions (one per label of a multi-label region)."""
    out: list[Span] = []
    for region in result or []:
        if region.get("type") != "labels" or (from_name and region.get("from_name") != from_name):
            continue
        value = region.get("value") or {}
        for label in value.get("labels") or []:
            out.append((int(value["start"]), int(value["end"]), str(label)))
    return out


# --- classification ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClassificationScores:
    n: int
    accuracy: float
    macro_f1: float
    answered_rate: float
    per_label: dict[str, dict[str, float]]


def classification_scores(gold: Sequence[str], predicted: Sequence[str | None]) -> ClassificationScores:
    """Accuracy (unanswered = wrong), macro-F1 and answered rate of `predicted` against `gold`."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold labels but {len(predicted)} predictions")
    n = len(gold)
    if n == 0:
        return ClassificationScores(0, 0.0, 0.0, 0.0, {})
    labels = sorted(set(gold) | {p for p in predicted if p is not None})
    per_label: dict[str, dict[str, float]] = {}
    for label in labels:
        tp = sum(1 for g, p in zip(gold, predicted) if g == label and p == label)
        fp = sum(1 for g, p in zip(gold, predicted) if g != label and p == label)
        fn = sum(1 for g, p in zip(gold, predicted) if g == label and p != label)
        per_label[label] = prf(tp, fp, fn)
    correct = sum(1 for g, p in zip(gold, predicted) if g == p)
    answered = sum(1 for p in predicted if p is not None)
    macro = sum(s["f1"] for s in per_label.values()) / len(per_label)
    return ClassificationScores(n, correct / n, macro, answered / n, per_label)


def prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    """precision, recall, F1 and the counts; 0 (not NaN) where a denominator is 0."""
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


# --- NER ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SpanScores:
    overall: dict[str, float]
    per_label: dict[str, dict[str, float]]
    answered_rate: float


def span_scores(gold: Sequence[Iterable[Span]], predicted: Sequence[Iterable[Span] | None]) -> SpanScores:
    """Strict span precision/recall/F1, micro over all tasks and per label. A task predicted None
    (no answer) contributes its gold spans as misses."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold tasks but {len(predicted)} predictions")
    counts: dict[str, Counter[str]] = {}
    for g_spans, p_spans in zip(gold, predicted):
        g = Counter(g_spans)
        p = Counter(p_spans or [])
        hit = g & p
        for (_, _, label), c in hit.items():
            counts.setdefault(label, Counter())["tp"] += c
        for (_, _, label), c in (p - hit).items():
            counts.setdefault(label, Counter())["fp"] += c
        for (_, _, label), c in (g - hit).items():
            counts.setdefault(label, Counter())["fn"] += c
    per_label = {label: prf(c["tp"], c["fp"], c["fn"]) for label, c in sorted(counts.items())}
    total: Counter[str] = Counter()
    for label_counts in counts.values():
        total.update(label_counts)
    answered = sum(1 for p in predicted if p is not None)
    return SpanScores(prf(total["tp"], total["fp"], total["fn"]), per_label, answered / len(gold) if gold else 0.0)


# --- calibration -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Calibration:
    n: int  # answered tasks with a score
    ece: float | None
    auroc: float | None
    errors_in_lowest_20: float | None  # share of the errors among the 20% lowest-scored tasks
    bins: list[dict[str, float]]  # reliability diagram: per non-empty bin its mean score, accuracy, count


def calibration(scores: Sequence[float], right: Sequence[bool], n_bins: int = 10) -> Calibration:
    """ECE over `n_bins` equal-width bins, AUROC of score for "right", and the share of all errors
    a reviewer finds by reviewing the 20% lowest-scored tasks first (ties broken by input order)."""
    if len(scores) != len(right):
        raise ValueError(f"{len(scores)} scores but {len(right)} outcomes")
    n = len(scores)
    if n == 0:
        return Calibration(0, None, None, None, [])
    bins = []
    ece = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        members = [i for i, s in enumerate(scores) if lo <= s < hi or (b == n_bins - 1 and s == hi)]
        if not members:
            continue
        conf = sum(scores[i] for i in members) / len(members)
        acc = sum(1 for i in members if right[i]) / len(members)
        ece += len(members) / n * abs(conf - acc)
        bins.append({"lo": lo, "hi": hi, "confidence": conf, "accuracy": acc, "count": len(members)})
    errors = sum(1 for r in right if not r)
    found = None
    if errors:
        k = math.ceil(0.2 * n)
        lowest = sorted(range(n), key=lambda i: (scores[i], i))[:k]
        found = sum(1 for i in lowest if not right[i]) / errors
    return Calibration(n, ece, auroc(scores, right), found, bins)


def auroc(scores: Sequence[float], positive: Sequence[bool]) -> float | None:
    """Probability that a random positive scores above a random negative (ties count half);
    None when either class is empty."""
    pos = [s for s, p in zip(scores, positive) if p]
    neg = [s for s, p in zip(scores, positive) if not p]
    if not pos or not neg:
        return None
    # rank-sum (Mann-Whitney U) with average ranks for ties
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    rank_sum = sum(r for r, p in zip(ranks, positive) if p)
    u = rank_sum - len(pos) * (len(pos) + 1) / 2
    return u / (len(pos) * len(neg))


# --- baselines ---------------------------------------------------------------------------------------
def knn_vote(neighbours: Sequence[tuple[float, str | None]]) -> str | None:
    """The label most of the neighbours (best first) give; ties go to the larger summed similarity,
    then to the label of the nearer neighbour. None without any labelled neighbour."""
    votes: Counter = Counter()
    weight: dict[str, float] = {}
    first: dict[str, int] = {}
    for rank, (similarity, label) in enumerate(neighbours):
        if label is None:
            continue
        votes[label] += 1
        weight[label] = weight.get(label, 0.0) + similarity
        first.setdefault(label, rank)
    if not votes:
        return None
    return max(votes, key=lambda label: (votes[label], weight[label], -first[label]))
