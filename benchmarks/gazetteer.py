"""The gazetteer on the NER sets: build time, span P/R/F1 alone, and beside the LLM (not a test: it prints
what this machine measures).

    # gazetteer alone, and its build time, at 200 and at all reviewed examples (seconds)
    .venv/bin/python benchmarks/gazetteer.py build --dataset conll2003 --train 200 14041

    # the embedded model on the first N test sentences, with `train` reviewed examples in the store,
    # STUDENT_MODE off (examples only) or hint (gazetteer candidates in the prompt); one JSON line per task
    .venv/bin/python benchmarks/gazetteer.py llm --dataset conll2003 --train 200 --n-test 100 --mode hint \\
        --out benchmarks/out/conll_200_hint.jsonl

    # span F1 of the LLM alone, the gazetteer alone and the cascade's combination, from those lines
    .venv/bin/python benchmarks/gazetteer.py combine benchmarks/out/conll_200_*.jsonl

Datasets are read from ../shared/datasets (or --datasets / LSLLM_DATASETS), never copied.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backend.learning.gazetteer import GazetteerPolicy, build_gazetteer  # noqa: E402
from backend.learning.span_cascade import CascadePolicy, combine_spans  # noqa: E402
from converters.task_spec import build_task_spec  # noqa: E402
from prompts import SpanCandidate  # noqa: E402

Span = tuple[int, int, str]


def datasets_dir(arg: Path | None) -> Path:
    return arg or Path(os.environ.get("LSLLM_DATASETS", ROOT.parent / "shared" / "datasets"))


def load(datasets: Path, dataset: str, train: int | None) -> tuple[str, list[dict], list[dict]]:
    config = (datasets / f"ner_{dataset}_config.xml").read_text()
    pool = json.loads((datasets / f"ner_{dataset}_train.json").read_text())
    test = json.loads((datasets / f"ner_{dataset}_test_sample500.json").read_text())
    return config, pool[:train] if train else pool, test


def gold_spans(task: Mapping[str, Any]) -> set[Span]:
    return {(r["value"]["start"], r["value"]["end"], r["value"]["labels"][0])
            for r in task["annotations"][0]["result"] if r.get("type") == "labels"}


def region_spans(regions: Iterable[Mapping[str, Any]]) -> set[Span]:
    return {(r["value"]["start"], r["value"]["end"], r["value"]["labels"][0]) for r in regions
            if r.get("type") == "labels"}


def prf(pairs: Iterable[tuple[set[Span], set[Span]]]) -> tuple[float, float, float]:
    tp = fp = fn = 0
    for predicted, gold in pairs:
        tp += len(predicted & gold)
        fp += len(predicted - gold)
        fn += len(gold - predicted)
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def cmd_build(args: argparse.Namespace) -> None:
    print("| dataset | reviewed | entries | build s | P | R | F1 |")
    print("|---|---|---|---|---|---|---|")
    for train in args.train:
        config, pool, test = load(datasets_dir(args.datasets), args.dataset, train)
        control = build_task_spec(config).controls[0]
        started = time.perf_counter()
        gazetteer = build_gazetteer(control, [(t["data"], t["annotations"][0]["result"]) for t in pool],
                                    GazetteerPolicy(min_precision=args.min_precision))
        seconds = time.perf_counter() - started
        p, r, f = prf(({(m.start, m.end, m.label) for m in gazetteer.match(t["data"]["text"])}, gold_spans(t))
                      for t in test[: args.n_test])
        print(f"| {args.dataset} | {len(pool)} | {len(gazetteer)} | {seconds:.2f} | {p:.3f} | {r:.3f} | {f:.3f} |")


def cmd_llm(args: argparse.Namespace) -> None:
    from sqlalchemy import func, select

    from backend.learning.gazetteer_book import GazetteerBook
    from backend.learning.selection import Selector
    from backend.llm.client import LLMClient
    from backend.llm.local_server import LocalModelServer, settings_for_local
    from backend.metrics import Metrics
    from backend.predict.predictor import Predictor
    from backend.settings import Settings
    from backend.store.db import examples as examples_table
    from backend.store.db import make_engine, migrate, write
    from backend.store.example_store import ExampleStore

    config, pool, test = load(datasets_dir(args.datasets), args.dataset, args.train)
    tmp = Path(tempfile.mkdtemp(prefix="lsllm-gaz-"))
    base = Settings.model_validate({"data_dir": tmp, "llm_cache": False, "llm_timeout": args.timeout,
                                    "local_n_threads": args.threads})
    engine = make_engine(base.resolved_database_url())
    migrate(engine)
    store = ExampleStore(engine)
    started = time.perf_counter()
    with write(engine) as conn:
        for i, t in enumerate(pool):
            result = t["annotations"][0]["result"]
            store.upsert(conn, "p1", i + 1, {
                "task_id": i + 1, "data": json.dumps({"text": t["data"]["text"]}), "result": json.dumps(result),
                "labels": json.dumps(sorted({r["value"]["labels"][0] for r in result})), "corrected": None,
                "completed_by": "gold", "updated_at": 1.0, "status": "live"}, seq=1)
    with engine.connect() as conn:
        stored = conn.execute(select(func.count()).select_from(examples_table)).scalar_one()
    print(f"{stored} reviewed examples stored in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    book = GazetteerBook(sync_limit=10**9) if args.mode == "hint" else None
    gaz_book = GazetteerBook(sync_limit=10**9)
    selector = Selector(store, base.few_shot_k, base.few_shot_token_budget, gazetteers=book)
    server = LocalModelServer(base)
    settings = settings_for_local(base, server.start())
    metrics = Metrics()
    predictor = Predictor(settings, LLMClient(settings), metrics, context=selector.context)
    plan = predictor.plan(config)
    done = set()
    if Path(args.out).exists():  # resume: tasks already answered are kept, not asked again
        done = {json.loads(line)["ref_id"] for line in open(args.out, encoding="utf-8") if line.strip()}
    out = open(args.out, "a", encoding="utf-8")
    try:
        started = time.perf_counter()
        for n, t in enumerate(test[: args.n_test]):
            if t["data"].get("ref_id") in done:
                continue
            task = {"id": n, "data": t["data"]}
            texts = {"text": t["data"]["text"]}
            context = selector.context("p1", plan.spec, texts) if book is not None else None
            if context is None:  # off: the gazetteer is still built (offline, not in the prompt) for combine
                rows = [e.example for e in selector.index("p1").entries.values()]
                candidates = gaz_book.candidates("p1", plan.spec, selector.index("p1").seq, rows, texts)
            else:
                candidates = tuple(context.candidates)
            began = time.perf_counter()
            result = predictor.predict_task(plan, task, "bench", project_id="p1")
            seconds = time.perf_counter() - began
            regions = result.item["result"] if result.item else []
            out.write(json.dumps({
                "ref_id": t["data"].get("ref_id"), "mode": args.mode, "train": len(pool), "text": t["data"]["text"],
                "gold": sorted(gold_spans(t)), "llm": regions, "reason": result.reason,
                "seconds": round(seconds, 2), "prompt_tokens": result.prompt_tokens,
                "candidates": [c.__dict__ for c in candidates],
            }, ensure_ascii=False) + "\n")
            out.flush()
            if (n + 1) % 10 == 0:
                print(f"{n + 1} tasks, {(time.perf_counter() - started) / (n + 1):.2f} s/task", file=sys.stderr)
        print(f"{args.n_test} tasks in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    finally:
        out.close()
        predictor.close()
        server.stop()


def task_candidates(gazetteer: Any, control: str, text: str) -> list[SpanCandidate]:
    """What backend.learning.gazetteer_book gives a task: matches, then plain-word runs (no label)."""
    out = [SpanCandidate(control, m.start, m.end, m.text, m.label, m.score) for m in gazetteer.match(text)]
    return out + [SpanCandidate(control, s, e, text[s:e], "", 0.0) for s, e in gazetteer.plain_runs(text)]


def ece(pairs: Sequence[tuple[float, bool]], bins: int = 10) -> float:
    """Expected calibration error of (score, right) pairs over equal-width bins."""
    if not pairs:
        return float("nan")
    total = 0.0
    for b in range(bins):
        inside = [(p, y) for p, y in pairs if min(int(p * bins), bins - 1) == b]
        if inside:
            total += abs(sum(p for p, _ in inside) - sum(y for _, y in inside))
    return total / len(pairs)


def cmd_combine(args: argparse.Namespace) -> None:
    """The gazetteer is rebuilt from the same reviewed examples as the run (its train count), so the
    combination can be re-measured offline from one LLM run."""
    policies = {
        "union": CascadePolicy(trust=0.0, drop_plain=False, llm_min=0.0),
        "cascade, every LLM span (llm_min 0)": CascadePolicy(llm_min=0.0),
        "cascade, llm_min 0.7": CascadePolicy(llm_min=0.7),
        "cascade, llm_min 0.8": CascadePolicy(llm_min=0.8),
        f"cascade (default: trust {CascadePolicy().trust}, llm_min {CascadePolicy().llm_min})": CascadePolicy(),
        "cascade, LLM spans kept on plain words": CascadePolicy(drop_plain=False),
        "cascade, trust 0.7": CascadePolicy(trust=0.7),
    }
    datasets = datasets_dir(args.datasets)
    built: dict[tuple[str, int], Any] = {}
    print("| file | tasks | s/task | source | P | R | F1 | score ECE |")
    print("|---|---|---|---|---|---|---|---|")
    for path in args.files:
        rows = [json.loads(line) for line in open(path, encoding="utf-8")]
        dataset = rows[0]["ref_id"].split("-")[0]
        key = (dataset, rows[0]["train"])
        if key not in built:
            config, pool, _ = load(datasets, dataset, key[1])
            control = build_task_spec(config).controls[0]
            built[key] = (control, build_gazetteer(control, [(t["data"], t["annotations"][0]["result"]) for t in pool]))
        control, gazetteer = built[key]
        results: dict[str, list[tuple[set[Span], set[Span]]]] = {"LLM alone": [], "gazetteer alone": []}
        scored: dict[str, list[tuple[float, bool]]] = {"LLM alone": [], "gazetteer alone": []}
        for row in rows:
            gold = {tuple(s) for s in row["gold"]}
            text = row["text"]
            candidates = task_candidates(gazetteer, control.name, text)
            outputs = {"LLM alone": row["llm"],
                       "gazetteer alone": combine_spans(text, [], candidates, CascadePolicy(trust=0.0), control)}
            outputs.update({name: combine_spans(text, row["llm"], candidates, policy, control)
                            for name, policy in policies.items()})
            for name, regions in outputs.items():
                results.setdefault(name, []).append((region_spans(regions), gold))
                scored.setdefault(name, []).extend(
                    (float(r["score"]), (r["value"]["start"], r["value"]["end"], r["value"]["labels"][0]) in gold)
                    for r in regions if "score" in r)
        seconds = sum(r.get("seconds", 0.0) for r in rows) / len(rows)
        for name, pairs in results.items():
            p, r, f = prf(pairs)
            print(f"| {Path(path).name} | {len(rows)} | {seconds:.1f} | {name} | {p:.3f} | {r:.3f} | {f:.3f} | "
                  f"{ece(scored[name]):.3f} |")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=Path)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build")
    build.add_argument("--dataset", default="conll2003")
    build.add_argument("--train", type=int, nargs="+", default=[200, 0])
    build.add_argument("--n-test", type=int, default=500)
    build.add_argument("--min-precision", type=float, default=GazetteerPolicy().min_precision)
    llm = sub.add_parser("llm")
    llm.add_argument("--dataset", default="conll2003")
    llm.add_argument("--train", type=int, default=200, help="reviewed examples (0: the whole pool)")
    llm.add_argument("--n-test", type=int, default=100)
    llm.add_argument("--mode", choices=["off", "hint"], default="off")
    llm.add_argument("--out", required=True)
    llm.add_argument("--timeout", type=float, default=300.0, help="LLM_TIMEOUT for this run (shared cores)")
    llm.add_argument("--threads", type=int, default=1,
                     help="LOCAL_N_THREADS (1: on oversubscribed shared cores, 2 threads wait on each other)")
    combine = sub.add_parser("combine")
    combine.add_argument("files", nargs="+")
    args = parser.parse_args(argv)
    {"build": cmd_build, "llm": cmd_llm, "combine": cmd_combine}[args.command](args)


if __name__ == "__main__":
    main()
