"""`lsllm plan`: tokens, cost and time of a run, estimated before it starts.

The estimate renders the real prompts (instructions, labels, the few-shot examples selection would
pick, the task text) for a sample of tasks and counts their characters. A few of them (`calls`) are
sent to the provider for real: its `usage` gives the tokens per character of this model's tokenizer
and the completion length, and the wall time gives the latency. Those answers land in the response
cache, so the run that follows does not pay for them again. With no calls, 4 characters per token is
assumed and the completion and time are left unknown rather than guessed.

A task whose text is over the budget is sent in chunks (backend.predict.chunked): its prompt is counted
chunk by chunk, and the table says how many tasks that is and how many calls it adds, and whether PII
masking is on for this provider.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from backend.llm.pricing import PriceTable, format_cost
from backend.predict.chunked import masking_applies, plan_cut
from backend.predict.predictor import Predictor, ProjectPlan, task_texts

DEFAULT_CHARS_PER_TOKEN = 4.0


@dataclass
class Estimate:
    model: str
    tasks: int
    sampled: int
    prompt_chars_mean: float
    prompt_chars_p95: float
    calls: int
    tokens_per_char: float
    measured_tokens: bool
    completion_tokens_mean: float | None
    seconds_per_call: float | None
    concurrency: int
    cost_per_task: float | None
    chunked_share: float = 0.0  # of the sampled tasks, the share sent in several calls
    calls_per_task: float = 1.0  # LLM calls per task, chunks counted (no retries)
    masking: bool = False  # PII_MASKING applies to this provider

    @property
    def chunked_tasks(self) -> int:
        return round(self.chunked_share * self.tasks)

    @property
    def extra_calls(self) -> int:
        """Calls the chunks add over one per task."""
        return round((self.calls_per_task - 1.0) * self.tasks)

    @property
    def prompt_tokens_mean(self) -> float:
        return self.prompt_chars_mean * self.tokens_per_char

    @property
    def total_prompt_tokens(self) -> int:
        return math.ceil(self.prompt_tokens_mean * self.tasks)

    @property
    def total_completion_tokens(self) -> int | None:
        if self.completion_tokens_mean is None:
            return None
        return math.ceil(self.completion_tokens_mean * self.tasks)

    @property
    def total_cost(self) -> float | None:
        return None if self.cost_per_task is None else self.cost_per_task * self.tasks

    @property
    def seconds(self) -> float | None:
        if self.seconds_per_call is None:
            return None
        return self.tasks * self.calls_per_task * self.seconds_per_call / self.concurrency

    def table(self) -> str:
        how = f"measured on {self.calls} calls" if self.measured_tokens else "assumed 4 chars/token"
        completion = "unknown (use --calls)" if self.completion_tokens_mean is None else (
            f"{self.completion_tokens_mean:,.0f} per task, {self.total_completion_tokens:,} in all")
        if self.seconds is None:
            duration = "unknown (use --calls)"
        else:
            duration = (f"{_duration(self.seconds)} at concurrency {self.concurrency} "
                        f"({self.seconds_per_call:.2f} s per call)")
        rows = [
            ("model", self.model),
            ("tasks", f"{self.tasks:,} (prompts rendered for {self.sampled})"),
            ("prompt tokens", f"{self.prompt_tokens_mean:,.0f} per task "
                              f"(p95 {self.prompt_chars_p95 * self.tokens_per_char:,.0f}), "
                              f"{self.total_prompt_tokens:,} in all ({how})"),
            ("completion tokens", completion),
            ("cost", format_cost(self.total_cost) + (" for the prompts alone" if self.total_cost is not None
                                                     and self.completion_tokens_mean is None else "")),
            ("time", duration),
            ("long texts", f"{self.chunked_tasks:,} tasks sent in chunks, {self.extra_calls:,} more calls"
                           if self.chunked_tasks else "none over the budget: one call per task"),
            ("PII masking", "on (placeholders replace personal data before the provider)" if self.masking
                            else "off"),
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _p95(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)] if ordered else 0.0


def estimate(
    predictor: Predictor,
    plan: ProjectPlan,
    sample: Sequence[Mapping[str, Any]],
    total_tasks: int,
    prices: PriceTable,
    calls: int = 3,
    concurrency: int = 8,
    project_id: str | None = None,
    model_version: str = "plan",
) -> Estimate:
    """Raises ValueError when no sampled task can be rendered."""
    chars: list[float] = []
    calls_per_task: list[int] = []
    renderable: list[tuple[Mapping[str, Any], int]] = []
    for task in sample:
        try:
            texts = task_texts(plan.spec, task)
        except ValueError:
            continue
        cut = plan_cut(predictor.settings, plan.spec, texts)
        parts = [texts] if cut.name is None else [{**texts, cut.name: c.text} for c in cut.chunks]
        n = sum(len(m["content"]) for part in parts for m in predictor.messages(plan, part, project_id))
        chars.append(n)
        calls_per_task.append(cut.calls)
        renderable.append((task, n))
    if not chars:
        raise ValueError("none of the sampled tasks has the text fields the label config reads")
    measured: list[tuple[Any, int, float]] = []
    for task, n in renderable[: max(0, calls)]:
        started = time.perf_counter()
        result = predictor.predict_task(plan, task, model_version, None, project_id)
        measured.append((result, n, time.perf_counter() - started))
    answered = [(r, n, s) for r, n, s in measured if r.prompt_tokens > 0]
    tokens_per_char = 1.0 / DEFAULT_CHARS_PER_TOKEN
    completion = None
    if answered:
        tokens_per_char = sum(r.prompt_tokens for r, _, _ in answered) / max(1, sum(n for _, n, _ in answered))
        completion = sum(r.completion_tokens for r, _, _ in answered) / len(answered)
    live = [s for r, _, s in measured if r.prompt_tokens > 0 and not r.cached]
    prompt_mean = sum(chars) / len(chars) * tokens_per_char
    cost_per_task = prices.cost(plan.model, round(prompt_mean), round(completion or 0))
    return Estimate(
        model=plan.model,
        tasks=total_tasks,
        sampled=len(chars),
        prompt_chars_mean=sum(chars) / len(chars),
        prompt_chars_p95=_p95(chars),
        calls=len(answered),
        tokens_per_char=tokens_per_char,
        measured_tokens=bool(answered),
        completion_tokens_mean=completion,
        seconds_per_call=(sum(live) / len(live)) if live else None,
        concurrency=concurrency,
        cost_per_task=cost_per_task,
        chunked_share=sum(1 for c in calls_per_task if c > 1) / len(calls_per_task),
        calls_per_task=sum(calls_per_task) / len(calls_per_task),
        masking=masking_applies(predictor.settings),
    )
