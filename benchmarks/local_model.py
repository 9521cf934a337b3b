"""Seconds per task and tokens per second of the embedded local model, for a NER, a sentiment and an
intent config (not a test: it prints what this machine measures).

    .venv/bin/python benchmarks/local_model.py [--n 10] [--datasets ../shared/datasets]

Tasks come from the shared evaluation sets when present (CoNLL-2003, SST-2, Banking77 samples),
otherwise from a few built-in sentences.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backend.service.app import build_model  # noqa: E402
from backend.llm.local_server import LocalModelServer, settings_for_local  # noqa: E402
from backend.settings import Settings  # noqa: E402

FALLBACK = [
    "Angela Merkel met Emmanuel Macron in Berlin on Tuesday.",
    "I really enjoyed the film, the acting was superb.",
    "How do I transfer money to my brother's account?",
]
RUNS = [
    ("ner", "ner_conll2003", ROOT / "examples/configs/ner.xml"),
    ("sentiment", "sentiment_sst2", None),
    ("intent", "intent_banking77", None),
]


def load(datasets: Path, name: str, n: int) -> tuple[list[dict], str | None]:
    sample = datasets / f"{name}_test_sample500.json"
    if not sample.exists():
        return [{"id": i, "data": {"text": t}} for i, t in enumerate(FALLBACK * n)][:n], None
    tasks = json.loads(sample.read_text())[:n]
    config = (datasets / f"{name}_config.xml").read_text()
    return [{"id": i, "data": t["data"]} for i, t in enumerate(tasks)], config


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--datasets", type=Path, default=ROOT.parent / "shared" / "datasets")
    args = parser.parse_args()
    base = Settings.model_validate({"data_dir": ROOT / "benchmarks" / "out"})
    server = LocalModelServer(base)
    started = time.perf_counter()
    settings = settings_for_local(base, server.start())
    print(f"local server ready in {time.perf_counter() - started:.1f} s")
    model = build_model(settings)
    print(f"| config | tasks | s/task | completion tok/s | prompt tok/task | ok |")
    print(f"|---|---|---|---|---|---|")
    try:
        for label, dataset, fallback_config in RUNS:
            tasks, config = load(args.datasets, dataset, args.n)
            config = config or (fallback_config or ROOT / f"examples/configs/{label}.xml").read_text()
            plan = model.predictor.plan(config)
            version = model.version_for(plan)
            model.predictor.predict_tasks(plan, tasks[:1], version)  # warm-up (prompt cache)
            t0 = time.perf_counter()
            results = [model.predictor.predict_task(plan, t, version) for t in tasks]
            seconds = time.perf_counter() - t0
            completion = sum(r.completion_tokens for r in results)
            prompt = sum(r.prompt_tokens for r in results)
            ok = sum(1 for r in results if r.item)
            print(
                f"| {label} ({dataset}) | {len(tasks)} | {seconds / len(tasks):.2f} | "
                f"{completion / seconds:.1f} | {prompt / len(tasks):.0f} | {ok}/{len(tasks)} |"
            )
    finally:
        model.predictor.close()
        server.stop()


if __name__ == "__main__":
    main()
