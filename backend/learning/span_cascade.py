"""STUDENT_MODE=cascade for spans: the LLM's entities and the gazetteer's, combined into one answer.

Measured on CoNLL-2003 with the embedded model (benchmarks/gazetteer.py): the gazetteer is precise
where it knows a surface and silent elsewhere; the small LLM finds entities the gazetteer has never
seen but misplaces labels and boundaries. So the combination is the union, where a reliable gazetteer
span (its calibrated probability at least `trust`) replaces every LLM span it overlaps, and an LLM span
is kept where the gazetteer says nothing when it is confident (its label probability at least
`llm_min`; unscored spans, with no logprobs, are kept) and not made only of plain words (words
reviewers left unlabelled every time they met them).

`llm_min` applies only once the gazetteer is good: its span F1 on reviews it was built without
(`Gazetteer.held_out_f1`, cross-validated) at least `strong_from`. Adding spans of precision p to an
answer of F1 F raises F1 only while p > F/2, so a young gazetteer's answer gains from the LLM's unsure
spans and a mature one's loses. Measured with the embedded SmolLM2-135M (`lsllm eval`, 100 test
sentences) at 50 / 200 / 1,000 / all reviews: CoNLL-2003, the gazetteer's held-out F1 0.07 / 0.28 /
0.51 / 0.80; span F1 with `llm_min` everywhere 0.154 / 0.351 / 0.462 / 0.682, with it nowhere
0.266 / 0.351 / 0.517 / 0.655, with this rule 0.266 / 0.351 / 0.517 / 0.682. WNUT-17 (test entities
new by design): held-out F1 0 / 0.07 / 0.23 / 0.33, so the rule never drops a span there (0.019 /
0.036 / 0.083 / 0.106, against 0.020 / 0.038 / 0.084 / 0.087 with `llm_min` everywhere).
`strong_from` 0.6 was chosen between the held-out F1 where dropping hurt (0.51) and where it helped
(0.80), so it is fitted to that one curve.

Every region keeps exact offsets: gazetteer spans are substrings of the task's text by construction,
LLM regions come aligned from the pipeline, and the pipeline validates everything afterwards anyway.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from backend.learning.gazetteer_book import GazetteerBook
from backend.metrics import Metrics
from backend.settings import Settings
from converters.controls import span_controls
from converters.controls.base import region_id
from converters.spec import ControlSpec, TaskSpec
from prompts import SpanCandidate


@dataclass(frozen=True)
class CascadePolicy:
    trust: float = 0.5  # a gazetteer span at least this probable replaces the LLM spans it overlaps
    drop_plain: bool = True  # drop LLM spans made only of words reviewers never labelled
    llm_min: float = 0.6  # an LLM span the gazetteer does not cover needs this label probability (when scored)
    strong_from: float = 0.6  # ... once the gazetteer's held-out span F1 is at least this (unmeasured: always)


def _overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def candidate_region(control: ControlSpec, candidate: SpanCandidate) -> dict[str, Any]:
    """A Label Studio region for a gazetteer span (scored by its calibrated probability)."""
    return {
        "id": region_id(control.name, candidate.start, candidate.end, candidate.label),
        "from_name": control.name,
        "to_name": control.to_name,
        "type": control.kind,
        "value": {"start": candidate.start, "end": candidate.end, "text": candidate.text,
                  "labels": [candidate.label]},
        "score": round(candidate.score, 4),
    }


def combine_spans(
    text: str,
    regions: Sequence[Mapping[str, Any]],
    candidates: Sequence[SpanCandidate],
    policy: CascadePolicy,
    control: ControlSpec,
) -> list[dict[str, Any]]:
    """One control's regions: reliable gazetteer spans, plus the LLM's spans that overlap none of them.

    `regions` are the LLM's regions of this control; a candidate whose text is not at its offsets (a
    stale candidate for another text) is ignored."""
    current = [c for c in candidates if text[c.start:c.end] == c.text]
    trusted = [c for c in current if c.label and c.score >= policy.trust]
    measured = [c.gazetteer_f1 for c in current if c.gazetteer_f1 is not None]
    picky = not measured or max(measured) >= policy.strong_from  # unsure LLM spans now cost more than they add
    plain = [(c.start, c.end) for c in current if not c.label]
    out: list[dict[str, Any]] = []
    for region in regions:
        value = region.get("value") or {}
        span = (int(value.get("start", 0)), int(value.get("end", 0)))
        if any(_overlaps(span, (c.start, c.end)) for c in trusted):
            continue
        if policy.drop_plain and any(s <= span[0] and span[1] <= e for s, e in plain):
            continue  # only words reviewers never labelled
        score = region.get("score")
        if picky and isinstance(score, (int, float)) and score < policy.llm_min:
            continue  # an unsure LLM span costs more precision than it adds recall
        out.append(dict(region))
    out += [candidate_region(control, c) for c in trusted]
    out.sort(key=lambda r: (r["value"]["start"], r["value"]["end"]))
    return out


class SpanCascade:
    """The pipeline's span hook: `combine_spans` for every span control that has candidates (cascade;
    hint only counts: the LLM decided with the candidates in its prompt); regions of other controls pass
    through unchanged. `count(source, n)` is told how many spans each source gave (metrics)."""

    def __init__(
        self, policy: CascadePolicy | None = None, combine: bool = True,
        count: Callable[[str, int], None] | None = None,
    ) -> None:
        self.policy = policy or CascadePolicy()
        self.combine = combine
        self.count = count

    def __call__(
        self, spec: TaskSpec, data: Mapping[str, Any], regions: list[dict[str, Any]],
        candidates: Sequence[SpanCandidate],
    ) -> list[dict[str, Any]]:
        out = list(regions)
        for control in span_controls(spec):
            mine = [c for c in candidates if c.control == control.name]
            text = data.get(control.data_key)
            if not mine or not isinstance(text, str):
                continue
            own = [r for r in out if r.get("from_name") == control.name]
            if not self.combine:
                self._count("llm", len(own))
                continue
            rest = [r for r in out if r.get("from_name") != control.name]
            combined = combine_spans(text, own, mine, self.policy, control)
            from_gazetteer = sum(1 for r in combined if r.get("id") in {id_of(control, c) for c in mine}
                                 and r not in own)
            self._count("gazetteer", from_gazetteer)
            self._count("llm", len(combined) - from_gazetteer)
            out = rest + combined
        return out

    def _count(self, source: str, n: int) -> None:
        if self.count is not None and n:
            self.count(source, n)


def id_of(control: ControlSpec, candidate: SpanCandidate) -> str:
    return region_id(control.name, candidate.start, candidate.end, candidate.label)


def gazetteer_book(settings: Settings) -> GazetteerBook | None:
    """The composition root's gazetteers: none with STUDENT_MODE=off; a control gets one from
    STUDENT_MIN_EXAMPLES reviewed examples on. Its matches are shown to the LLM in hint mode only: the
    cascade was measured with the LLM's own answer (no candidates in its prompt), combined afterwards."""
    if settings.student_mode == "off":
        return None
    return GazetteerBook(min_examples=settings.student_min_examples, show=settings.student_mode == "hint")


def span_hook(settings: Settings, metrics: Metrics) -> SpanCascade | None:
    """The pipeline's span hook for STUDENT_MODE (cascade: combine; hint: count only; off: none)."""
    if settings.student_mode == "off":
        return None
    return SpanCascade(combine=settings.student_mode == "cascade",
                       count=lambda source, n: metrics.spans.labels(source).inc(n))
