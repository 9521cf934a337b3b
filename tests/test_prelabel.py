"""The prelabel run against the scripted provider (real HTTP, real openai SDK): what gets skipped,
sent, pushed and counted, and how it stops. `send` collects the pushed batches here; the run against
a real Label Studio is in test_e2e_prelabel.py."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import assert_valid, config, make_settings
from scripted_provider import Reply, ScriptedProvider, last_user_text

from backend.llm.pricing import PriceTable
from backend.runs.prelabel import Prelabeler, PrelabelOptions, RunTarget
from backend.service.app import build_model

SENTIMENT = config("sentiment")
LABELS = ("positive", "negative", "neutral")


def tasks(n: int, start: int = 1) -> list[dict[str, Any]]:
    return [{"id": i, "data": {"text": f"review number {i}"}, "predictions": []} for i in range(start, start + n)]


def answer(body: dict) -> Reply:
    number = int(last_user_text(body).rsplit(" ", 1)[-1])
    return Reply(content=json.dumps({"sentiment": LABELS[number % 3]}))


class Run:
    def __init__(self, tmp_path, provider: ScriptedProvider, concurrency: int = 8, fail_push: bool = False,
                 **options: Any) -> None:
        self.settings = make_settings(tmp_path, provider.base_url, llm_max_concurrency=concurrency,
                                      llm_model="gpt-4o-mini")
        self.model = build_model(self.settings)
        self.plan = self.model.predictor.plan(SENTIMENT)
        self.version = self.model.version_for(self.plan, "7")
        self.pushed: list[list[dict[str, Any]]] = []
        self.fail_push = fail_push
        target = RunTarget(self.model.predictor, self.plan, self.version, "7", self.send, PriceTable.from_setting(None))
        self.runner = Prelabeler(target, PrelabelOptions(in_flight=concurrency * 2, **options))

    def send(self, items: list[dict[str, Any]]) -> None:
        if self.fail_push:
            raise ConnectionError("Label Studio is down")
        self.pushed.append(items)

    def items(self) -> list[dict[str, Any]]:
        return [item for batch in self.pushed for item in batch]

    def close(self) -> None:
        self.model.close()


def test_skips_predicted_sends_each_task_once_and_pushes_all(tmp_path) -> None:
    with ScriptedProvider(answer, latency=0.02, max_concurrency=4, retry_after=0.02) as provider:
        run = Run(tmp_path, provider, concurrency=12)
        todo = tasks(300)
        for task in todo[:20]:  # done by an earlier run: same version
            task["predictions"] = [{"model_version": run.version, "result": []}]
        todo[20]["predictions"] = [{"model_version": "lsllm-v1-other-e0", "result": []}]  # older version
        stream = todo + todo[50:60]  # a task listed twice (pages shifted) is still sent once
        stats = run.runner.run(iter(stream))
        run.close()
    assert stats.skipped == 20 and stats.predicted == 280 and stats.pushed == 280
    assert not stats.failed and stats.exit_code() == 0 and stats.stopped is None
    items = run.items()
    assert sorted(i["task"] for i in items) == list(range(21, 301))
    for item in items:
        assert item["model_version"] == run.version
        number = item["task"]
        assert item["result"][0]["value"]["choices"] == [LABELS[number % 3]]
        assert_valid(SENTIMENT, {"text": f"review number {number}"}, {k: item[k] for k in ("result", "score")})
    sent = Counter(last_user_text(b) for b in provider.requests)
    assert provider.rejected_429 > 0 and stats.throttled == provider.rejected_429
    # every task reached the model once: its request count is 1 plus the 429s it met
    assert sum(sent.values()) == 280 + provider.rejected_429
    assert set(sent) == {f"review number {i}" for i in range(21, 301)}
    assert stats.llm_calls == 280 and stats.cache_hits == 0
    assert stats.prompt_tokens > 0 and stats.cost is not None and stats.cost > 0


def test_second_run_pays_nothing(tmp_path) -> None:
    with ScriptedProvider(answer) as provider:
        first = Run(tmp_path, provider)
        first.runner.run(iter(tasks(40)))
        first.close()
        calls = len(provider.requests)
        second = Run(tmp_path, provider)  # Label Studio lost the predictions: all asked again
        stats = second.runner.run(iter(tasks(40)))
        second.close()
    assert calls == 40 and len(provider.requests) == 40
    assert stats.cache_hits == 40 and stats.llm_calls == 0 and stats.pushed == 40 and stats.cost == 0


@pytest.mark.slow  # retries with backoff against a failing provider
def test_outage_stops_after_bounded_failures_and_keeps_what_is_done(tmp_path) -> None:
    served = Counter()

    def flaky(body: dict) -> Reply:
        served["n"] += 1
        return answer(body) if served["n"] <= 30 else Reply(status=503)

    with ScriptedProvider(flaky) as provider:
        run = Run(tmp_path, provider, concurrency=2, max_consecutive_failures=5)
        stats = run.runner.run(iter(tasks(500)))
        run.close()
    assert stats.pushed == 30 and stats.predicted == 30
    assert stats.stopped and "in a row" in stats.stopped and stats.exit_code() == 1
    # the run stopped soon: at most the streak plus what was in flight failed
    assert 5 <= stats.failed["llm_server"] <= 5 + 2 * 2
    assert stats.seen < 60


def test_interrupt_finishes_in_flight_and_pushes(tmp_path) -> None:
    def interrupted_after(n: int) -> Iterator[dict[str, Any]]:
        for i, task in enumerate(tasks(200)):
            if i == n:
                raise KeyboardInterrupt
            yield task

    with ScriptedProvider(answer, latency=0.05) as provider:
        run = Run(tmp_path, provider, concurrency=4)
        stats = run.runner.run(interrupted_after(37))
        run.close()
    assert stats.stopped == "interrupted" and stats.exit_code() == 130
    assert stats.predicted == stats.pushed == 37  # everything submitted finished and reached the store
    assert len(provider.requests) == 37


def test_limit_counts_only_tasks_sent(tmp_path) -> None:
    with ScriptedProvider(answer) as provider:
        run = Run(tmp_path, provider, limit=10)
        todo = tasks(50)
        for task in todo[:5]:
            task["predictions"] = [{"model_version": run.version}]
        stats = run.runner.run(iter(todo))
        run.close()
    assert stats.skipped == 5 and stats.predicted == 10 and len(provider.requests) == 10


def test_push_failure_is_reported_not_lost(tmp_path) -> None:
    with ScriptedProvider(answer) as provider:
        run = Run(tmp_path, provider, fail_push=True, push_batch=10, push_backoff=0.01)
        stats = run.runner.run(iter(tasks(20)))
        run.close()
    assert stats.predicted == 20 and stats.pushed == 0 and stats.not_pushed == 20 and stats.exit_code() == 1


@pytest.mark.parametrize("bad", ['{"m": [1]}', "[1, 2]", '{"m": [-1, 2]}', "/nonexistent/prices.json", "{nope"])
def test_bad_price_table_is_refused_with_a_reason(bad: str) -> None:
    with pytest.raises(ValueError, match="LLM_PRICES"):
        PriceTable.from_setting(bad)


def test_prices_match_by_longest_prefix_and_unknown_stays_unknown() -> None:
    table = PriceTable.from_setting('{"my-model": [1, 2]}')
    assert table.cost("gpt-4o-mini-2024-07-18", 1_000_000, 1_000_000) == pytest.approx(0.75)
    assert table.cost("gpt-4o-2024-08-06", 1_000_000, 0) == pytest.approx(2.5)
    assert table.cost("my-model", 500_000, 500_000) == pytest.approx(1.5)
    assert table.cost("mystery-7b", 10, 10) is None


def test_plan_for_files_measures_tokens_and_latency(tmp_path, monkeypatch, capsys) -> None:
    from backend.cli import main

    tasks_file = tmp_path / "tasks.json"
    tasks_file.write_text(json.dumps([{"text": f"review number {i}"} for i in range(200)]))
    config_file = tmp_path / "config.xml"
    config_file.write_text(SENTIMENT)
    with ScriptedProvider(answer, latency=0.2) as provider:
        for key, value in {"LLM_BASE_URL": provider.base_url, "LLM_API_KEY": "sk-x", "LLM_MODEL": "gpt-4o-mini",
                           "DATA_DIR": str(tmp_path / "data")}.items():
            monkeypatch.setenv(key, value)
        code = main(["plan", "--config", str(config_file), "--tasks", str(tasks_file), "--sample", "20",
                     "--calls", "2", "--concurrency", "10"])
        usage = [sum(len(m["content"]) for m in body["messages"]) // 4 for body in provider.requests]
    out = capsys.readouterr().out
    assert code == 0 and len(usage) == 2
    assert "200 (prompts rendered for 20)" in out and "measured on 2 calls" in out
    # gpt-4o-mini at $0.15 / $0.60 per million tokens, from the provider's own usage
    per_task = float(out.split("prompt tokens")[1].split("per task")[0].strip().replace(",", ""))
    assert abs(per_task - sum(usage) / 2) <= 2
    seconds = float(out.split("s per call")[0].rsplit("(", 1)[1])
    assert 0.2 <= seconds < 0.6
    shown = int(out.split(" s at concurrency 10")[0].rsplit(" ", 1)[1])
    assert abs(shown - 200 * seconds / 10) <= 0.6  # every task, C calls at a time (seconds shown rounded)
    completion = int(out.split("completion tokens")[1].split("per task")[0].strip())
    expected = (200 * per_task * 0.15 + 200 * completion * 0.60) / 1e6
    cost = float(out.split("cost")[1].split("$")[1].split()[0])
    assert abs(cost - expected) <= 0.00006, (cost, expected)


def test_plan_without_calls_leaves_completion_and_time_unknown(tmp_path, monkeypatch, capsys) -> None:
    from backend.cli import main

    tasks_file = tmp_path / "tasks.json"
    tasks_file.write_text(json.dumps([{"text": "a short review"}] * 10))
    config_file = tmp_path / "config.xml"
    config_file.write_text(SENTIMENT)
    monkeypatch.setenv("LLM_BASE_URL", "http://127.0.0.1:9/v1")  # never called
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    assert main(["plan", "--config", str(config_file), "--tasks", str(tasks_file), "--calls", "0"]) == 0
    out = capsys.readouterr().out
    assert "assumed 4 chars/token" in out and out.count("unknown (use --calls)") == 2
