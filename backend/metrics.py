"""Prometheus metrics for one app, in a registry of its own (nothing is created at import time).

Under several gunicorn workers `lsllm serve` sets PROMETHEUS_MULTIPROC_DIR; prometheus-client then
keeps values in per-process files and `/metrics` aggregates them with MultiProcessCollector.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "lsllm_http_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "lsllm_http_request_seconds",
            "HTTP request latency by route",
            ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 100),
            registry=r,
        )
        self.llm_calls = Counter("lsllm_llm_calls", "LLM calls by outcome", ["outcome"], registry=r)
        self.llm_seconds = Histogram(
            "lsllm_llm_call_seconds",
            "LLM call latency (successful calls)",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
            registry=r,
        )
        self.llm_tokens = Counter("lsllm_llm_tokens", "Tokens reported by the provider", ["kind"], registry=r)
        self.tasks = Counter("lsllm_tasks", "Tasks predicted by outcome", ["outcome"], registry=r)
        self.dropped_entities = Counter(
            "lsllm_dropped_entities", "Entities/labels from the model that were not emitted", ["reason"], registry=r
        )
        self.invalid_predictions = Counter(
            "lsllm_invalid_predictions",
            "Predictions that failed validation before leaving (a bug if ever non-zero)",
            registry=r,
        )
        self.webhook_events = Counter(
            "lsllm_webhook_events", "Webhook events received by action and outcome", ["action", "outcome"], registry=r
        )
        self.student_answers = Counter(
            "lsllm_student_answers", "<Choices> tasks answered by the student alone (cascade)", registry=r
        )
        self.llm_answers = Counter(
            "lsllm_llm_answers", "Tasks with a student that the LLM answered (hint, or cascade below threshold)",
            registry=r,
        )
        self.llm_calls_saved = Counter(
            "lsllm_llm_calls_saved", "LLM calls not made because the student answered (cascade)", registry=r
        )
        self.blend_changes = Counter(
            "lsllm_student_blend_changes", "LLM answers whose label the blend with the student changed (cascade)",
            registry=r,
        )
        self.spans = Counter(
            "lsllm_spans",
            "Spans predicted for <Labels> controls with gazetteer candidates, by source (gazetteer: from reviewed "
            "examples; llm)",
            ["source"],
            registry=r,
        )

    def exposition(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            aggregate = CollectorRegistry()
            multiprocess.MultiProcessCollector(aggregate)
            return generate_latest(aggregate)
        return generate_latest(self.registry)
