"""An annotator's task while a large "Retrieve predictions" is being pushed, in a real Label Studio.

    .venv/bin/python benchmarks/interactive_lane.py [--tasks 400] [--latency 0.5] [--concurrency 8] [--probes 5]

A project of --tasks tasks gets one "Retrieve predictions" on all of them (pushed in the background by
the backend, provider latency --latency s). While that push runs, --probes times: one more task is
imported and retrieved alone, as when an annotator opens it (Label Studio calls /predict with that one
task, answered synchronously). Prints each probe's wall time, whether its task then held a prediction,
and how much of the push was still in flight. Goal (issue 10): a prediction in under 3 s.
Needs `make ls-venv`.

Measured here (2 cores, Label Studio 1.23.2, 2 gunicorn workers, defaults otherwise): with one shared
pool (commit 9625a9a) the first annotator's task waited behind the whole push, 25.05 s; with the
interactive lane 0.87-1.32 s for every probe while the push ran (28.9 s for all 400).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from labelstudio_harness import cleanup, start_backend, start_label_studio, stop  # noqa: E402
from scripted_provider import Reply, ScriptedProvider  # noqa: E402

CONFIG = (ROOT / "examples" / "configs" / "sentiment.xml").read_text()


def retrieve(ls, project: int, ids: list[int] | None) -> float:
    selected = {"all": True, "excluded": []} if ids is None else {"all": False, "included": ids}
    started = time.monotonic()
    ls.api("POST", "/api/dm/actions", params={"id": "retrieve_tasks_predictions", "project": project},
           json={"selectedItems": selected}).raise_for_status()
    return time.monotonic() - started


def predictions_stored(ls, project: int) -> int:
    return int(ls.api("GET", f"/api/projects/{project}").json().get("total_predictions_number") or 0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=400)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--probes", type=int, default=5)
    args = parser.parse_args()
    ls = start_label_studio()
    provider = ScriptedProvider(lambda body: Reply(content='{"sentiment": "positive"}'), latency=args.latency)
    provider.start()
    backend = start_backend(provider.base_url, LLM_MAX_CONCURRENCY=str(args.concurrency), LOG_LEVEL="WARNING",
                            LLM_CACHE="false")
    rows = []
    try:
        project = ls.api("POST", "/api/projects", json={"title": "lane", "label_config": CONFIG}).json()["id"]
        ls.api("POST", f"/api/projects/{project}/import", json=[{"text": f"review {i}"} for i in range(args.tasks)])
        ls.api("POST", "/api/ml", json={"url": backend.url, "project": project, "title": "lane",
                                        "is_interactive": False, "auth_method": "NONE"}).raise_for_status()
        pushed_at = time.monotonic()
        retrieve(ls, project, None)
        for probe in range(args.probes):
            time.sleep(1.0)
            task = ls.api("POST", f"/api/projects/{project}/import", params={"return_task_ids": "true"},
                          json=[{"text": f"the annotator opens task {probe}"}]).json()["task_ids"][0]
            before = predictions_stored(ls, project)
            seconds = retrieve(ls, project, [task])
            body = ls.api("GET", f"/api/tasks/{task}").json()
            has = bool(body.get("predictions"))
            rows.append((probe, seconds, has, before))
        while predictions_stored(ls, project) < args.tasks + args.probes and time.monotonic() - pushed_at < 600:
            time.sleep(0.5)
        total = time.monotonic() - pushed_at
    finally:
        stop(backend.proc)
        cleanup(backend.data_dir)
        provider.stop()
        stop(ls.proc)
        cleanup(ls.data_dir)
    print(f"push of {args.tasks} tasks, provider {args.latency * 1000:.0f} ms, LLM_MAX_CONCURRENCY="
          f"{args.concurrency}: all stored after {total:.1f} s")
    print("| probe | single-task retrieve | prediction stored | push predictions stored before it |")
    print("|---|---|---|---|")
    for probe, seconds, has, before in rows:
        print(f"| {probe} | {seconds:.2f} s | {'yes' if has else 'NO'} | {before} of {args.tasks} |")
    worst = max(seconds for _, seconds, _, _ in rows)
    print(f"worst {worst:.2f} s; every probe answered: {all(has for _, _, has, _ in rows)}")


if __name__ == "__main__":
    main()
