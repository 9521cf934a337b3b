"""Few-shot selection time for one task against a project of N reviewed examples (lexical default).

    .venv/bin/python benchmarks/selection.py [--examples 100000] [--queries 300]

Examples are the shared datasets' training texts (Banking77, CLINC150, SST-2, CoNLL-2003, WNUT-17,
TweetEval), cycled with a suffix until N are reached; queries are Banking77 test texts. Prints p50,
p95 and max milliseconds of `select_examples` (k=8), the index build time, and the time a refresh takes
to build the next snapshot with 1 and 100 new examples.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backend.learning.selection import LexicalIndex, select_examples  # noqa: E402
from backend.store.example_store import StoredExample  # noqa: E402
from converters.task_spec import build_task_spec  # noqa: E402

SOURCES = [
    "intent_banking77_train.json",
    "intent_clinc150_train.json",
    "sentiment_sst2_train.json",
    "ner_conll2003_train.json",
    "ner_wnut17_train.json",
    "sentiment_tweeteval_val.json",
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--datasets", type=Path, default=ROOT.parent / "shared" / "datasets")
    args = parser.parse_args()
    texts: list[tuple[str, str]] = []
    for name in SOURCES:
        for task in json.loads((args.datasets / name).read_text()):
            label = "x"
            result = task["annotations"][0]["result"]
            if result and result[0]["type"] == "choices":
                label = result[0]["value"]["choices"][0]
            texts.append((task["data"]["text"], label))
    config = (args.datasets / "intent_banking77_config.xml").read_text()
    spec = build_task_spec(config)
    rows = []
    for i in range(args.examples):
        text, label = texts[i % len(texts)]
        if i >= len(texts):
            text = f"{text} v{i // len(texts)}"
        result = [{"from_name": "intent", "to_name": "text", "type": "choices", "value": {"choices": [label]}}]
        rows.append(StoredExample(i + 1, i + 1, {"text": text}, result, [label], bool(i % 7 == 0), None, 0.0, "live", i + 1))
    started = time.perf_counter()
    index = LexicalIndex.build(rows)
    build = time.perf_counter() - started
    queries = [t["data"]["text"] for t in json.loads((args.datasets / "intent_banking77_test.json").read_text())]
    timings = []
    for query in queries[: args.queries]:
        t0 = time.perf_counter()
        chosen = select_examples(index, spec, query, k=8, token_budget=1500)
        timings.append((time.perf_counter() - t0) * 1000)
        assert chosen
    timings.sort()
    print(f"examples: {len(index.entries)}, index build: {build:.1f} s, queries: {len(timings)}")
    print(
        f"select_examples ms: p50 {statistics.median(timings):.2f}, "
        f"p95 {timings[int(0.95 * len(timings)) - 1]:.2f}, max {timings[-1]:.2f}"
    )
    # a refresh builds the next immutable snapshot from this one (what a webhook costs each process)
    for changed in (1, 100):
        fresh = [dataclasses.replace(r, annotation_id=len(rows) + 1 + j, seq=len(rows) + 1) for j, r in
                 enumerate(rows[:changed])]
        t0 = time.perf_counter()
        index.updated(fresh)
        print(f"refresh with {changed} new example(s): {(time.perf_counter() - t0) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
