"""Several tasks per LLM call against one task per call, on a real model: agreement between the two,
accuracy against the gold labels, seconds and prompt tokens per task.

    .venv/bin/python benchmarks/tasks_per_call.py [--n 60] [--k 4] [--dataset ../shared/datasets/sentiment_sst2]

With no LLM_BASE_URL the embedded local model (SmolLM2-135M) answers, as `make run` would; set
LLM_BASE_URL / LLM_MODEL / LLM_API_KEY to measure a provider's model. The response cache is off, so
each mode pays for its own calls.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backend.cli import provider  # noqa: E402
from backend.service.app import build_model  # noqa: E402
from backend.settings import Settings  # noqa: E402


def label_of(item) -> str | None:
    if not item:
        return None
    return item["result"][0]["value"]["choices"][0] if item["result"] else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=60)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--dataset", default=str(ROOT.parent / "shared" / "datasets" / "sentiment_sst2"))
    args = parser.parse_args()
    rows = json.loads(Path(f"{args.dataset}_test_sample500.json").read_text())[: args.n]
    config = Path(f"{args.dataset}_config.xml").read_text()
    tasks = [{"id": i, "data": {"text": r["data"]["text"]}} for i, r in enumerate(rows)]
    gold = [r["annotations"][0]["result"][0]["value"]["choices"][0] for r in rows]
    base = Settings().model_copy(update={"data_dir": Path(tempfile.mkdtemp(prefix="lsllm-k-")), "llm_cache": False})
    labels: dict[int, list] = {}
    with provider(base) as ready:
        print(f"model {ready.llm_model}, {len(tasks)} tasks of {Path(args.dataset).name}", flush=True)
        print("| tasks per call | s/task | prompt tokens/task | answered | accuracy vs gold |")
        print("|---|---|---|---|---|")
        for k in (1, args.k):
            model = build_model(ready.model_copy(update={"llm_tasks_per_call": k}))
            plan = model.predictor.plan(config)
            started = time.perf_counter()
            results = model.predictor.predict_tasks(plan, tasks, "bench", deadline_seconds=24 * 3600)
            seconds = time.perf_counter() - started
            model.close()
            labels[k] = [label_of(r.item) for r in results]
            answered = sum(1 for x in labels[k] if x)
            correct = sum(1 for x, g in zip(labels[k], gold) if x == g)
            prompt = sum(r.prompt_tokens for r in results) / len(tasks)
            print(f"| {k} | {seconds / len(tasks):.2f} | {prompt:.0f} | {answered}/{len(tasks)} | "
                  f"{correct / len(tasks):.3f} |", flush=True)
    both = [(a, b) for a, b in zip(labels[1], labels[args.k]) if a and b]
    agree = sum(1 for a, b in both if a == b)
    print(f"agreement of {args.k} per call with 1 per call, on tasks both answered: {agree}/{len(both)} "
          f"= {agree / max(1, len(both)):.3f}")


if __name__ == "__main__":
    main()
