"""Long documents and private data: one task as several calls (chunks), each masked when asked.

`DocumentRunner.handles(plan, texts)` says whether a task needs this path: a text over the budget, or
PII masking on for this provider. `predict` then
1. cuts the text into chunks (converters.chunking: sentence boundaries, a small overlap) — or, for a
   <Choices>-only config with LONG_CHOICES=select, keeps a bounded selection of it (head, tail, the
   sentences nearest the labels) for one call;
2. for each chunk, chooses its few-shot examples and shortlist (the context source reads the chunk),
   masks the chunk and the examples (converters.masking), renders and sends the prompt through the
   pipeline's own call (same limiter, same response cache, which keys on the masked prompt, and the
   masked prompt is what DEBUG logs), a few chunks at once;
3. aligns each answer inside its masked chunk, maps the spans back to the original chunk and then to
   document offsets, drops duplicates from the overlaps (converters.chunking.merge_spans), combines
   <Choices> answers of several chunks by their scores, and validates the whole prediction against the
   original task data (drop_invalid_regions), as for any task.
A chunk that fails fails the task (`[]`, asked again later; the chunks already answered are cached).
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from backend.settings import ResponseFormat, Settings
from converters.chunking import Chunk, ChunkSpan, merge_spans, select_for_classification, split_text
from converters.confidence import TokenProbs, combine
from converters.controls import span_controls
from converters.controls.base import region_id
from converters.masking import MaskedText, Masker, PiiDetector, parse_kinds
from converters.parse import UnparsableAnswer, parse_answer
from converters.regions import answer_to_prediction
from converters.spec import TaskSpec
from prompts import Example

if TYPE_CHECKING:
    from backend.predict.pipeline import TaskPipeline, TaskResult
    from backend.predict.plans import ProjectPlan

log = logging.getLogger(__name__)

# Budget arithmetic (characters per token is deliberately low, so a chunk fits whatever the tokenizer)
CHARS_PER_TOKEN = 3.0
PROMPT_OVERHEAD_TOKENS = 600  # system message, label list, answer format
# An NER answer costs about 12 tokens per entity and news text holds about one entity per 100
# characters (CoNLL-2003): 0.12 answer tokens per character; twice that leaves room for dense text.
NER_ANSWER_TOKENS_PER_CHAR = 0.25


def is_embedded(settings: Settings) -> bool:
    """The embedded llama.cpp model (the CLI sets its status file), not a hosted provider."""
    return settings.local_status_file is not None


def masking_applies(settings: Settings) -> bool:
    """PII_MASKING=on masks calls to a hosted provider; =always also those to the embedded model."""
    return settings.pii_masking == "always" or (settings.pii_masking == "on" and not is_embedded(settings))


def context_tokens(settings: Settings) -> int:
    return settings.local_n_ctx if is_embedded(settings) else settings.llm_context_tokens


def ner_budget(settings: Settings) -> int:
    """Characters of text one span-labelling call is given: CHUNK_CHARS, or what the answer cap
    (LLM_MAX_TOKENS) and the context (LOCAL_N_CTX or LLM_CONTEXT_TOKENS, less the answer, the examples and
    the instructions) both allow."""
    if settings.chunk_chars:
        return settings.chunk_chars
    by_answer = settings.llm_max_tokens / NER_ANSWER_TOKENS_PER_CHAR
    return max(500, int(min(by_answer, _context_chars(settings))))


def choices_budget(settings: Settings) -> int:
    """Characters of text one classification call is given: the context less the rest of the prompt
    (CHUNK_CHARS does not bind it: a classification answer is a few tokens whatever the length)."""
    return max(500, int(_context_chars(settings)))


def _context_chars(settings: Settings) -> float:
    free = (context_tokens(settings) - settings.llm_max_tokens - settings.few_shot_token_budget
            - PROMPT_OVERHEAD_TOKENS)
    return max(0, free) * CHARS_PER_TOKEN


def has_spans(spec: TaskSpec) -> bool:
    return bool(span_controls(spec))


@dataclass(frozen=True)
class Cut:
    """How one task is sent: the chunks (of the one text object that is cut), or one call."""

    name: str | None  # the object whose text is cut (None: the task goes whole)
    chunks: tuple[Chunk, ...]
    selected: bool = False  # chunks[0] is a selection of the text, not a piece of it: no spans

    @property
    def calls(self) -> int:
        return max(1, len(self.chunks))


def plan_cut(settings: Settings, spec: TaskSpec, texts: Mapping[str, str]) -> Cut:
    """Where a task is cut (pure: used by the runner and by `lsllm plan`)."""
    if len(spec.objects) != 1:  # several text objects: sent whole (one prompt shows them side by side)
        return Cut(None, ())
    name = spec.objects[0][0]
    text = texts.get(name, "")
    if has_spans(spec):
        budget = ner_budget(settings)
        if len(text) <= budget:
            return Cut(None, ())
        return Cut(name, tuple(split_text(text, budget, settings.chunk_overlap_chars)))
    budget = choices_budget(settings)
    if len(text) <= budget:
        return Cut(None, ())
    if settings.long_choices == "vote":
        return Cut(name, tuple(split_text(text, budget, settings.chunk_overlap_chars)))
    labels = [f"{label.display} {label.description}" for c in spec.controls for label in c.labels]
    query = " ".join([spec.instructions, *labels])
    selected = select_for_classification(text, budget, query)
    return Cut(name, (Chunk(0, len(text), selected, 0, len(text)),), selected=True)


@dataclass
class _ChunkAnswer:
    regions: list[dict[str, Any]]
    dropped: dict[str, int]
    result: TaskResult
    chunk: Chunk | None = None  # the piece of the document it answers (None: the task's whole texts)


class DocumentRunner:
    """The chunked and masked path of TaskPipeline.predict_task (see the module docstring)."""

    def __init__(self, settings: Settings, detector: PiiDetector | None = None) -> None:
        self.settings = settings
        self.masking = masking_applies(settings)
        if self.masking and detector is None:
            detector = PiiDetector(parse_kinds(settings.pii_entities))
        self.detector = detector if self.masking else None

    def warm(self) -> None:
        if self.detector is not None:
            self.detector.warm()

    def handles(self, plan: ProjectPlan, texts: Mapping[str, str]) -> bool:
        return self.masking or plan_cut(self.settings, plan.spec, texts).name is not None

    def predict(
        self,
        pipeline: TaskPipeline,
        plan: ProjectPlan,
        task: Mapping[str, Any],
        texts: Mapping[str, str],
        model_version: str,
        deadline: float | None,
        project_id: str | None,
        urgent: bool,
    ) -> TaskResult:
        from backend.predict.pipeline import TaskResult, drop_invalid_regions

        cut = plan_cut(self.settings, plan.spec, texts)
        pieces: list[tuple[Chunk | None, dict[str, str]]]
        if cut.name is None:
            pieces = [(None, dict(texts))]
        else:
            pieces = [(chunk, {**texts, cut.name: chunk.text}) for chunk in cut.chunks]
        what = f"task {task.get('id')}"

        def run(k: int) -> list[_ChunkAnswer | TaskResult]:
            label = what if len(pieces) == 1 else f"{what} chunk {k + 1}/{len(pieces)}"
            splittable = cut.name is not None and not cut.selected and has_spans(plan.spec)
            return self._answer(pipeline, plan, texts, cut.name if splittable else None, pieces[k][0],
                                pieces[k][1], deadline, project_id, urgent, label)

        workers = min(len(pieces), self.settings.llm_max_concurrency)
        if workers <= 1:
            answers = [a for k in range(len(pieces)) for a in run(k)]
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="llm-chunk") as pool:
                answers = [a for found in pool.map(run, range(len(pieces))) for a in found]
        done = [a for a in answers if isinstance(a, _ChunkAnswer)]
        tokens_in = sum(a.result.prompt_tokens if isinstance(a, _ChunkAnswer) else a.prompt_tokens for a in answers)
        tokens_out = sum(a.result.completion_tokens if isinstance(a, _ChunkAnswer) else a.completion_tokens
                         for a in answers)
        failed = [a for a in answers if not isinstance(a, _ChunkAnswer)]
        if failed:
            first = failed[0]
            pipeline.metrics.tasks.labels(first.reason).inc()
            return TaskResult([], error=f"{len(failed)} of {len(answers)} calls failed: {first.error}",
                              reason=first.reason, prompt_tokens=tokens_in, completion_tokens=tokens_out,
                              messages=first.messages)
        result = self._merge(plan.spec, texts, cut, done)
        for reason, count in _sum_dropped(done).items():
            pipeline.metrics.dropped_entities.labels(reason).inc(count)
        item: dict[str, Any] = {"result": result, "model_version": model_version}
        score = combine([r.get("score") for r in result])
        if score is not None:
            item["score"] = score
        item, errors = drop_invalid_regions(plan.interface, plan.spec, task["data"], item)
        if errors:
            pipeline.metrics.invalid_predictions.inc(len(errors))
            log.error("%s: invalid region removed (bug): %s", what, errors[:3])
        pipeline.metrics.tasks.labels("ok").inc()
        return TaskResult(item, prompt_tokens=tokens_in, completion_tokens=tokens_out,
                          cached=all(a.result.cached for a in done), messages=done[0].result.messages)

    # --- one chunk -----------------------------------------------------------------------------
    def _answer(
        self, pipeline: TaskPipeline, plan: ProjectPlan, texts: Mapping[str, str], name: str | None,
        chunk: Chunk | None, chunk_texts: dict[str, str], deadline: float | None, project_id: str | None,
        urgent: bool, what: str, depth: int = 0,
    ) -> list[_ChunkAnswer | TaskResult]:
        """The chunk's answer; when the answer filled the answer cap (cut short: entities lost) and the
        chunk can be cut (`name`), the answers of its two halves instead (at most 3 times deep)."""
        answer = self._one_call(pipeline, plan, chunk_texts, deadline, project_id, urgent, what)
        if isinstance(answer, _ChunkAnswer):
            answer.chunk = chunk
        capped = (answer.result.completion_tokens if isinstance(answer, _ChunkAnswer) else answer.completion_tokens)
        if (name is None or chunk is None or depth >= 3 or len(chunk.text) < 200
                or capped < self.settings.llm_max_tokens - 1):
            return [answer]
        log.info("%s: the answer reached LLM_MAX_TOKENS; asking again in two halves", what)
        halves = split_text(chunk.text, len(chunk.text) // 2 + self.settings.chunk_overlap_chars // 2 + 1,
                            self.settings.chunk_overlap_chars // 2)
        out: list[_ChunkAnswer | TaskResult] = []
        for k, half in enumerate(halves):
            moved = Chunk(chunk.start + half.start, chunk.start + half.end, half.text,
                          max(chunk.own_start, chunk.start + half.own_start),
                          min(chunk.own_end, chunk.start + half.own_end))
            out.extend(self._answer(pipeline, plan, texts, name, moved, {**texts, name: half.text}, deadline,
                                    project_id, urgent, f"{what}.{k + 1}", depth + 1))
        return out

    # --- one call ------------------------------------------------------------------------------
    def _one_call(
        self, pipeline: TaskPipeline, plan: ProjectPlan, texts: dict[str, str], deadline: float | None,
        project_id: str | None, urgent: bool, what: str,
    ) -> _ChunkAnswer | TaskResult:
        from backend.predict.pipeline import TaskResult

        context = pipeline.task_context(plan, texts, project_id)  # examples and shortlist for this chunk
        examples = list(context.examples)
        masked: dict[str, MaskedText] = {}
        sent = dict(texts)
        if self.detector is not None:
            masker = Masker(self.detector)
            for name, text in texts.items():
                masked[name] = masker.mask(text)
                sent[name] = masked[name].masked
            examples = [_mask_example(masker, e) for e in examples]
        mode = pipeline.llm.response_mode
        # gazetteer candidates name spans of the text: shown (for this chunk) only when nothing is masked
        candidates = () if self.detector is not None else tuple(getattr(context, "candidates", ()))
        messages = pipeline.renderer.messages(
            context.spec, sent, examples,
            show_format=mode is not ResponseFormat.json_schema,
            include_schema=mode in (ResponseFormat.json_object, ResponseFormat.text),
            **({"candidates": candidates} if candidates else {}),
        )
        schema = pipeline.plans.schema_for(plan, context.spec.controls)
        answer = pipeline._complete(plan, messages, schema, deadline, what, urgent)
        if isinstance(answer, TaskResult):  # the call failed for good
            return answer
        try:
            parsed = parse_answer(answer.content)
        except UnparsableAnswer as exc:
            log.warning("%s: %s", what, exc)
            return TaskResult([], error=str(exc), reason="unparsable", messages=messages,
                              prompt_tokens=answer.prompt_tokens, completion_tokens=answer.completion_tokens)
        probs = TokenProbs(answer.content, answer.tokens) if answer.tokens else None
        keys = dict(plan.spec.objects)
        data = {keys[name]: text for name, text in sent.items() if name in keys}
        prediction = answer_to_prediction(context.spec, data, parsed, probs)
        regions = [_unmask_region(r, masked, plan.spec) for r in prediction.result]
        return _ChunkAnswer(regions, dict(prediction.dropped),
                            TaskResult(None, prompt_tokens=answer.prompt_tokens,
                                       completion_tokens=answer.completion_tokens, messages=messages,
                                       cached=answer.cached))

    # --- merging -------------------------------------------------------------------------------
    def _merge(
        self, spec: TaskSpec, texts: Mapping[str, str], cut: Cut, done: list[_ChunkAnswer]
    ) -> list[dict[str, Any]]:
        if cut.name is None or cut.selected:
            return [r for r in done[0].regions if not (cut.selected and "start" in (r.get("value") or {}))]
        text = texts[cut.name]
        spans = [[ChunkSpan(r["value"]["start"], r["value"]["end"], str(r.get("from_name")), r)
                  for r in a.regions if "start" in (r.get("value") or {}) and r.get("to_name") == cut.name]
                 for a in done]
        chunks = [a.chunk or Chunk(0, len(text), text, 0, len(text)) for a in done]
        out: list[dict[str, Any]] = []
        for span in merge_spans(chunks, spans):
            region = dict(span.payload)  # type: ignore[call-overload]
            value = {**region["value"], "start": span.start, "end": span.end, "text": text[span.start:span.end]}
            region["value"] = value
            region["id"] = region_id(region["from_name"], span.start, span.end, *value.get("labels", []))
            out.append(region)
        others = [[r for r in a.regions if "start" not in (r.get("value") or {})] for a in done]
        out.extend(combine_choices(spec, others))
        return out


def vote_weight(score: float | None, n_labels: int) -> float:
    """A chunk's vote for a choice: the evidence its score gives over a uniform guess, log(p / ((1-p)/(K-1))),
    never below 0 (a chunk that barely leans adds nearly nothing, so pages of unrelated text do not
    outvote the one passage that carries the answer); 1 when the answer has no score."""
    if score is None:
        return 1.0
    p = min(max(score, 1e-6), 1 - 1e-6)
    return max(0.0, math.log(p * max(1, n_labels - 1) / (1 - p)))


def combine_choices(spec: TaskSpec, answers: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """<Choices> regions of several chunks -> one per control: each chunk's choices vote with the weight
    of their score (vote_weight); a single-choice control takes the heaviest, a multiple one every choice
    with at least half the heaviest's weight."""
    weights: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    scores: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    template: dict[str, dict[str, Any]] = {}
    for regions in answers:
        for region in regions:
            name = str(region.get("from_name"))
            template.setdefault(name, region)
            score = region.get("score")
            known = float(score) if isinstance(score, (int, float)) else None
            try:
                n_labels = len(spec.control(name).labels)
            except KeyError:
                continue
            for choice in (region.get("value") or {}).get("choices") or []:
                weights[name][choice] += vote_weight(known, n_labels) + 1e-9
                if known is not None:
                    scores[name][choice].append(known)
    out = []
    for name, votes in weights.items():
        try:
            multiple = spec.control(name).multiple
        except KeyError:
            continue
        best = max(votes.values())
        chosen = [c for c, w in votes.items() if w >= best / 2] if multiple else [max(votes, key=lambda c: votes[c])]
        region = {k: v for k, v in template[name].items() if k != "score"}
        region["value"] = {**region["value"], "choices": chosen}
        region["id"] = region_id(name, *chosen)
        picked = [s for c in chosen for s in scores[name][c]]
        if picked:
            region["score"] = sum(picked) / len(picked)
        out.append(region)
    return out


def _sum_dropped(done: list[_ChunkAnswer]) -> dict[str, int]:
    total: dict[str, int] = defaultdict(int)
    for a in done:
        for reason, count in a.dropped.items():
            total[reason] += count
    return total


def _mask_example(masker: Masker, example: Example) -> Example:
    texts = {name: masker.mask(text).masked for name, text in example.texts.items()}
    return Example(texts, masker.mask_value(dict(example.answer)))


def _unmask_region(region: dict[str, Any], masked: Mapping[str, MaskedText], spec: TaskSpec) -> dict[str, Any]:
    """A region found in a masked text -> the same region in the original text (offsets and text)."""
    value = region.get("value") or {}
    m = masked.get(str(region.get("to_name")))
    if m is None or "start" not in value:
        return region
    start, end = m.to_original(int(value["start"]), int(value["end"]))
    return {**region, "id": region_id(region.get("from_name"), start, end, *value.get("labels", [])),
            "value": {**value, "start": start, "end": end, "text": m.original[start:end]}}


