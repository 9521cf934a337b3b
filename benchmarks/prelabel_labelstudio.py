"""`lsllm prelabel` on a real Label Studio 1.23 project: a full run, an interrupted run resumed, and a
re-run with nothing left, against the scripted provider (fixed latency L, hard cap C with 429).

    .venv/bin/python benchmarks/prelabel_labelstudio.py [--n 1000] [--latency 0.5] [--cap 16] [--concurrency 32]

Needs `make ls-venv`. Tasks are SST-2 sentences from ../shared/datasets (read in place). For each run it
prints the wall time of the command, the provider calls it answered and refused, what Label Studio
holds afterwards, and the rate against the ideal C/L.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from labelstudio_harness import TOKEN, cleanup, start_label_studio, stop  # noqa: E402
from throughput import DATASETS, Provider, load_tasks  # noqa: E402

LSLLM = Path(sys.executable).parent / "lsllm"


def count_predictions(ls, project: int) -> tuple[int, int]:
    """(tasks with at least one prediction, predictions in all)."""
    with_any = total = 0
    page = 1
    while True:
        body = ls.api("GET", "/api/tasks", params={"project": project, "fields": "all", "page_size": 500,
                                                   "page": page}).json()
        for task in body["tasks"]:
            total += len(task["predictions"])
            with_any += bool(task["predictions"])
        if page * 500 >= body["total"]:
            return with_any, total
        page += 1


def run(ls, project: int, args, answers: Path, key: str, data_dir: Path, interrupt_after: int | None = None):
    provider = Provider(args.latency, args.cap, answers, key)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "LABEL_STUDIO_", "DATABASE_URL"))}
    env.update({"LLM_BASE_URL": provider.base_url, "LLM_API_KEY": "sk-bench", "LLM_MODEL": "gpt-4o-mini",
                "DATA_DIR": str(data_dir), "LOG_LEVEL": "WARNING"})
    started = time.perf_counter()
    proc = subprocess.Popen([str(LSLLM), "prelabel", "--url", ls.url, "--api-key", TOKEN, "--project",
                             str(project), "--concurrency", str(args.concurrency), "--no-progress"],
                            env=env, stderr=subprocess.PIPE, text=True)
    if interrupt_after is not None:
        time.sleep(interrupt_after)
        proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=1800)
    wall = time.perf_counter() - started
    counts = provider.finish()
    done = int(re.search(r"^\s+done\s+(\d+)", err, re.M).group(1))
    skipped = int(re.search(r"^\s+skipped\s+(\d+)", err, re.M).group(1))
    return {"exit": proc.returncode, "wall_s": round(wall, 1), "done": done, "skipped": skipped,
            "calls": counts["answered"], "429s": counts["rejected_429"], "peak_in_flight": counts["peak_in_flight"],
            "tasks_per_s": round(done / wall, 1) if done else 0.0,
            "efficiency": round(done / wall / (args.cap / args.latency), 3) if done else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--cap", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--dataset", type=Path, default=DATASETS / "sentiment_sst2_test.json")
    parser.add_argument("--config", type=Path, default=DATASETS / "sentiment_sst2_config.xml")
    args = parser.parse_args()
    tasks, answers, key = load_tasks(args.dataset, args.n)
    work = Path(tempfile.mkdtemp(prefix="lsllm-prelabel-bench-"))
    answers_file = work / "answers.json"
    answers_file.write_text(json.dumps(answers), encoding="utf-8")
    ls = start_label_studio()
    try:
        def project(title: str) -> int:
            pid = ls.api("POST", "/api/projects", json={"title": title,
                                                       "label_config": args.config.read_text()}).json()["id"]
            ls.api("POST", f"/api/projects/{pid}/import", json=[t["data"] for t in tasks])
            return int(pid)

        print(f"N={args.n} L={args.latency}s C={args.cap} --concurrency {args.concurrency}; "
              f"ideal {args.cap / args.latency:.0f} tasks/s", flush=True)
        full = project("full run")
        row = run(ls, full, args, answers_file, key, work / "data-full")
        print(json.dumps({"run": "full", **row, "stored": count_predictions(ls, full)}), flush=True)
        row = run(ls, full, args, answers_file, key, work / "data-full")
        print(json.dumps({"run": "again, nothing left", **row}), flush=True)
        resumed = project("interrupted")
        half = args.n / (args.cap / args.latency) / 2
        row = run(ls, resumed, args, answers_file, key, work / "data-resume", interrupt_after=half)
        print(json.dumps({"run": f"SIGINT after {half:.0f} s", **row, "stored": count_predictions(ls, resumed)}),
              flush=True)
        row = run(ls, resumed, args, answers_file, key, work / "data-resume")
        print(json.dumps({"run": "resumed", **row, "stored": count_predictions(ls, resumed)}), flush=True)
    finally:
        stop(ls.proc)
        cleanup(ls.data_dir)
        cleanup(work)


if __name__ == "__main__":
    main()
