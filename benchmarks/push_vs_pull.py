"""1,000 tasks retrieved in one "Retrieve predictions" action from a real Label Studio: pushed versus
pulled. Prints how long the reviewer's call blocks and when every task holds its prediction.

    .venv/bin/python benchmarks/push_vs_pull.py [--tasks 1000] [--latency 0.05] [--concurrency 8]

Needs `make ls-venv`. The provider is the scripted OpenAI-compatible server answering in --latency s.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from label_studio_sdk.label_interface import LabelInterface  # noqa: E402
from labelstudio_harness import cleanup, start_backend, start_label_studio, stop  # noqa: E402
from scripted_provider import Reply, ScriptedProvider  # noqa: E402

CONFIG = (ROOT / "examples" / "configs" / "sentiment.xml").read_text()


def run_one(ls, backend_url: str, n: int, title: str) -> tuple[float, float]:
    project = ls.api("POST", "/api/projects", json={"title": title, "label_config": CONFIG}).json()["id"]
    ls.api("POST", f"/api/projects/{project}/import", json=[{"text": f"review {i}"} for i in range(n)])
    ls.api("POST", "/api/ml", json={"url": backend_url, "project": project, "title": title,
                                    "is_interactive": False, "auth_method": "NONE"})
    started = time.monotonic()
    ls.api("POST", "/api/dm/actions", params={"id": "retrieve_tasks_predictions", "project": project},
           json={"selectedItems": {"all": True, "excluded": []}})
    blocked = time.monotonic() - started
    while time.monotonic() - started < 600:
        body = ls.api("GET", f"/api/projects/{project}").json()
        if int(body.get("total_predictions_number") or 0) >= n:
            break
        time.sleep(0.5)
    stored = time.monotonic() - started
    # every task holds exactly one prediction, of one model_version, valid for the config
    interface = LabelInterface(CONFIG)
    body = ls.api("GET", "/api/tasks", params={"project": project, "fields": "all", "page_size": n + 10}).json()
    tasks = body["tasks"] if isinstance(body, dict) else body
    counts = [len(t["predictions"]) for t in tasks]
    versions = {p["model_version"] for t in tasks for p in t["predictions"]}
    invalid = sum(
        1 for t in tasks for p in t["predictions"]
        if interface.validate_prediction({"result": p["result"], "model_version": p["model_version"]}, return_errors=True)
    )
    assert len(tasks) == n and counts == [1] * n and len(versions) == 1 and invalid == 0, (
        f"{len(tasks)} tasks, prediction counts {sorted(set(counts))}, versions {versions}, invalid {invalid}"
    )
    return blocked, stored


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    ls = start_label_studio()
    provider = ScriptedProvider(lambda body: Reply(content='{"sentiment": "positive"}'), latency=args.latency)
    provider.start()
    rows = []
    try:
        for mode, threshold in (("pushed", "50"), ("pulled", "0")):
            backend = start_backend(provider.base_url, PUSH_THRESHOLD=threshold,
                                    LLM_MAX_CONCURRENCY=str(args.concurrency), LOG_LEVEL="WARNING")
            try:
                blocked, stored = run_one(ls, backend.url, args.tasks, f"bench {mode}")
                rows.append((mode, blocked, stored))
            finally:
                stop(backend.proc)
                cleanup(backend.data_dir)
    finally:
        provider.stop()
        stop(ls.proc)
        cleanup(ls.data_dir)
    print(f"| {args.tasks} tasks, provider {args.latency * 1000:.0f} ms, {args.concurrency} concurrent | "
          "retrieve call blocks | all stored after |")
    print("|---|---|---|")
    for mode, blocked, stored in rows:
        print(f"| {mode} | {blocked:.1f} s | {stored:.1f} s |")


if __name__ == "__main__":
    main()
