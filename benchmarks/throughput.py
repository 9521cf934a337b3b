"""Throughput at provider limits: N tasks against an OpenAI-compatible server with a fixed latency L and
a hard concurrency cap C (429 past it), for `lsllm predict` and for `/predict` under gunicorn.

    .venv/bin/python benchmarks/throughput.py [--n 1000] [--latency 0.5] [--cap 16] [--concurrency 16]
        [--dataset ../shared/datasets/sentiment_sst2_test.json] [--modes predict,server]

Prints tasks/s, efficiency against the ideal C/L, the backend's CPU per task, its peak memory, the
429s it met, and the provider calls a second identical run makes (the response cache should make it 0).

How each figure is taken:
- `lsllm predict` runs as the installed CLI in its own process. Its wall time and CPU include the
  interpreter start and imports, which do not grow with N, so the same command is also run on 1 task
  and the per-task figures use the difference: rate = (N - 1) / (wall_N - wall_1), CPU per task =
  (cpu_N - cpu_1) / (N - 1). Whole-command figures are printed too.
- `/predict`: `lsllm serve` (2 gunicorn workers, PUSH_THRESHOLD=0 so the call answers synchronously)
  gets one request with all N tasks, as a "Retrieve predictions" sends them; CPU is read from /proc for
  the master and its workers before and after the request.
- The provider runs in a process of its own (benchmarks/scripted_server.py): its CPU is not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DATASETS = Path(os.environ.get("LSLLM_DATASETS", ROOT.parent / "shared" / "datasets"))
sys.path.insert(0, str(ROOT / "tests"))

from labelstudio_harness import free_port, stop, wait_http  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


class Provider:
    def __init__(self, latency: float, cap: int, answers: Path, key: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "benchmarks" / "scripted_server.py"), "--latency", str(latency),
             "--cap", str(cap), "--answers", str(answers), "--key", key],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        self.base_url = self.proc.stdout.readline().strip()

    def finish(self) -> dict[str, int]:
        self.proc.stdin.close()
        counts = json.loads(self.proc.stdout.readline())
        self.proc.wait(timeout=10)
        return counts


def load_tasks(path: Path, n: int) -> tuple[list[dict[str, Any]], dict[str, str], str]:
    rows = json.loads(path.read_text(encoding="utf-8"))
    if len(rows) < n:
        rows = (rows * (n // len(rows) + 1))
    tasks, answers, key = [], {}, "sentiment"
    for i, row in enumerate(rows[:n]):
        text = row["data"]["text"] if len(rows) >= n else f"{row['data']['text']} ({i})"
        tasks.append({"id": i + 1, "data": {"text": text}})
        result = row["annotations"][0]["result"][0]
        key = result["from_name"]
        answers[text] = result["value"]["choices"][0]
    return tasks, answers, key


def env_for(provider: Provider, data_dir: Path, args: argparse.Namespace, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "DATABASE_URL", "PUSH_"))}
    env.update({"LLM_BASE_URL": provider.base_url, "LLM_API_KEY": "sk-bench", "LLM_MODEL": "gpt-4o-mini",
                "LLM_MAX_CONCURRENCY": str(args.concurrency), "DATA_DIR": str(data_dir), "LOG_LEVEL": "WARNING",
                "LLM_TASKS_PER_CALL": str(args.tasks_per_call), **extra})
    return env


def run_cli(args: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(wall s, CPU s, peak RSS KiB) of one CLI process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run([str(BIN / "lsllm"), *args], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"lsllm {args[0]} failed:\n{proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, after.ru_maxrss


def bench_predict(tasks, answers, key, config: Path, args, work: Path) -> dict[str, Any]:
    def once(subset, data_dir: Path) -> tuple[float, float, int, dict[str, int]]:
        tasks_file = work / f"tasks-{len(subset)}.json"
        tasks_file.write_text(json.dumps(subset), encoding="utf-8")
        provider = Provider(args.latency, args.cap, answers_file, key)
        try:
            wall, cpu, rss = run_cli(["predict", "--config", str(config), "--tasks", str(tasks_file), "--out",
                                      str(work / "out.json"), "--concurrency", str(args.concurrency)],
                                     env_for(provider, data_dir, args))
        finally:
            counts = provider.finish()
        return wall, cpu, rss, counts

    answers_file = work / "answers.json"
    answers_file.write_text(json.dumps(answers), encoding="utf-8")
    wall_1, cpu_1, _, _ = once(tasks[:1], work / "data-one")
    wall_n, cpu_n, rss, counts = once(tasks, work / "data-predict")
    out = json.loads((work / "out.json").read_text(encoding="utf-8"))
    predicted = sum(1 for t in out if t.get("predictions"))
    agree = sum(1 for t in out if t.get("predictions")
                and t["predictions"][-1]["result"][0]["value"]["choices"] == [answers[t["data"]["text"]]])
    wall_2, _, _, counts_2 = once(tasks, work / "data-predict")  # identical second run, same store
    n = len(tasks)
    rate = (n - 1) / (wall_n - wall_1)
    return {
        "path": "lsllm predict", "n": n, "predicted": predicted, "agree_with_provider": agree,
        "wall_s": wall_n, "startup_and_one_task_s": wall_1, "tasks_per_s": rate,
        "efficiency": rate / (args.cap / args.latency),
        "cpu_ms_per_task": 1000 * (cpu_n - cpu_1) / (n - 1), "cpu_s_whole_command": cpu_n,
        "peak_rss_mib": rss / 1024, "provider_calls": counts["answered"], "429s": counts["rejected_429"],
        "peak_in_flight": counts["peak_in_flight"], "second_run_calls": counts_2["answered"],
        "second_run_s": wall_2,
    }


def _tree_cpu_and_hwm(pid: int) -> tuple[float, int]:
    """CPU seconds of a process and its children (gunicorn master + workers), and the largest VmHWM."""
    pids = [pid]
    try:
        pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        pass
    cpu, hwm = 0.0, 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / TICK
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    hwm = max(hwm, int(line.split()[1]))
        except OSError:
            continue
    return cpu, hwm


def bench_server(tasks, answers, key, config: Path, args, work: Path) -> dict[str, Any]:
    answers_file = work / "answers.json"
    answers_file.write_text(json.dumps(answers), encoding="utf-8")
    label_config = config.read_text(encoding="utf-8")
    results = []
    data_dir = work / "data-server"
    for _run in range(2):
        provider = Provider(args.latency, args.cap, answers_file, key)
        port = free_port()
        env = env_for(provider, data_dir, args, PUSH_THRESHOLD="0", PREDICT_DEADLINE="95")
        serve = subprocess.Popen([str(BIN / "lsllm"), "serve", "--host", "127.0.0.1", "--port", str(port),
                                  "--workers", "2", "--threads", "8"], env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_http(f"{url}/health", 60, serve)
            # warm both workers (imports, plan, store) so the figures are for the tasks alone
            for _ in range(4):
                httpx.post(f"{url}/predict", json={"tasks": [], "label_config": label_config, "project": "1.1"},
                           timeout=30)
            cpu_before, _ = _tree_cpu_and_hwm(serve.pid)
            started = time.perf_counter()
            response = httpx.post(f"{url}/predict", json={"tasks": tasks, "label_config": label_config,
                                                          "project": "1.1"}, timeout=120)
            wall = time.perf_counter() - started
            cpu_after, hwm = _tree_cpu_and_hwm(serve.pid)
            response.raise_for_status()
            items = response.json()["results"]
        finally:
            stop(serve)
            counts = provider.finish()
        results.append((wall, cpu_after - cpu_before, hwm, counts, items))
    (wall, cpu, hwm, counts, items), (wall_2, _, _, counts_2, _) = results
    n = len(tasks)
    agree = sum(1 for t, item in zip(tasks, items)
                if item and item["result"][0]["value"]["choices"] == [answers[t["data"]["text"]]])
    return {
        "path": "/predict (gunicorn, 2 workers)", "n": n, "predicted": sum(1 for i in items if i),
        "agree_with_provider": agree, "wall_s": wall, "tasks_per_s": n / wall,
        "efficiency": (n / wall) / (args.cap / args.latency), "cpu_ms_per_task": 1000 * cpu / n,
        "peak_rss_mib": hwm / 1024, "provider_calls": counts["answered"], "429s": counts["rejected_429"],
        "peak_in_flight": counts["peak_in_flight"], "second_run_calls": counts_2["answered"],
        "second_run_s": wall_2,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--cap", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=16, help="LLM_MAX_CONCURRENCY of the backend")
    parser.add_argument("--dataset", type=Path, default=DATASETS / "sentiment_sst2_test.json")
    parser.add_argument("--config", type=Path, default=DATASETS / "sentiment_sst2_config.xml")
    parser.add_argument("--modes", default="predict,server")
    parser.add_argument("--tasks-per-call", type=int, default=1, help="LLM_TASKS_PER_CALL of the backend")
    args = parser.parse_args()
    tasks, answers, key = load_tasks(args.dataset, args.n)
    print(f"N={args.n} L={args.latency}s C={args.cap} backend concurrency={args.concurrency} "
          f"tasks per call={args.tasks_per_call}; ideal at one task per call {args.cap / args.latency:.1f} tasks/s; dataset {args.dataset.name}", flush=True)
    with tempfile.TemporaryDirectory(prefix="lsllm-bench-") as tmp:
        work = Path(tmp)
        for mode in args.modes.split(","):
            bench = {"predict": bench_predict, "server": bench_server}[mode]
            row = bench(tasks, answers, key, args.config, args, work)
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)


if __name__ == "__main__":
    main()
