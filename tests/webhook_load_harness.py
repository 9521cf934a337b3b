"""The webhook load run, shared by tests/test_webhook_durability.py and benchmarks/webhook_load.py: N
events from S concurrent senders into `lsllm serve` (a subprocess) with W gunicorn workers, one worker
optionally killed with SIGKILL mid-run; returns /webhook latency percentiles and whether the example
store ends exactly as the event history says (nothing lost, nothing doubled).

The history mixes creations, newer and older (late) updates, duplicate deliveries, skips and
deletions over a few hundred annotations, shuffled in small windows so deliveries arrive out of order.
A sender whose connection drops (the killed worker) sends the event again, as a duplicate is harmless.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from labelstudio_harness import free_port
from webhook_payloads import annotation_event, choice, deleted_event

from backend.learning.intake import parse_time

ROOT = Path(__file__).resolve().parent.parent
CONFIG = (ROOT / "examples" / "configs" / "sentiment.xml").read_text()
LABELS = ["positive", "neutral", "negative"]


def history(n_events: int, seed: int = 0) -> tuple[list[dict[str, Any]], dict[int, str]]:
    """Events and the expected final state {annotation_id: label} of live examples."""
    rng = random.Random(seed)
    annotations = max(10, n_events // 5)
    events: list[dict[str, Any]] = []
    state: dict[int, tuple[float, str | None]] = {}  # id -> (updated_at, label or None for skipped)
    deleted: set[int] = set()
    clock = 1_790_000_000.0
    while len(events) < n_events:
        aid = 10_000 + rng.randrange(annotations)
        roll = rng.random()
        clock += 1.0
        if roll < 0.06:
            events.append(deleted_event(CONFIG, [aid]))
            deleted.add(aid)
            continue
        if roll < 0.10:
            ev = annotation_event("ANNOTATION_CREATED", CONFIG, aid, aid, f"text {aid}", [], clock, cancelled=True)
            label = None
        else:
            label = rng.choice(LABELS)
            action = "ANNOTATION_CREATED" if aid not in state else "ANNOTATION_UPDATED"
            ev = annotation_event(action, CONFIG, aid, aid, f"text about {aid} number {rng.randrange(99)}", [choice(label)], clock)
        events.append(ev)
        if aid not in state or state[aid][0] <= clock:
            state[aid] = (clock, label)
        if rng.random() < 0.1:
            events.append(ev)  # duplicate delivery
    events = events[:n_events]
    # deliveries out of order: shuffle within windows of 8
    for start in range(0, len(events), 8):
        window = events[start : start + 8]
        rng.shuffle(window)
        events[start : start + 8] = window
    # recompute the expected state from exactly the events kept
    final: dict[int, tuple[float, str | None]] = {}
    gone: set[int] = set()
    for ev in events:
        if ev["action"] == "ANNOTATIONS_DELETED":
            gone.update(a["id"] for a in ev["annotations"])
            continue
        ann = ev["annotation"]
        ts = parse_time(ann["updated_at"])
        label = None if ann["was_cancelled"] else ann["result"][0]["value"]["choices"][0]
        if ann["id"] not in final or final[ann["id"]][0] <= ts:
            # equal timestamps only come from the same event (duplicates)
            final[ann["id"]] = (ts, label)
    expected = {aid: label for aid, (_, label) in final.items() if aid not in gone and label is not None}
    return events, expected


def start_server(port: int, data_dir: str, workers: int, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "BASIC_AUTH", "DATABASE_URL"))},
        "LLM_BASE_URL": "http://127.0.0.1:9/v1",  # never called: this run only posts webhooks
        "DATA_DIR": data_dir,
        "LOG_LEVEL": "WARNING",
        "EXAMPLES_VERSION_POLICY": "training",
        **(extra_env or {}),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "backend.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--workers", str(workers), "--threads", "8"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=(Path(data_dir) / "server.log").open("wb"),
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("backend did not start: " + (Path(data_dir) / "server.log").read_text(errors="replace")[-2000:])


def worker_pids(master: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(master)], check=False, capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def get_json(port: int, path: str) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)
    return json.loads(conn.getresponse().read())


def server_histogram(metrics: str, route: str) -> dict[str, float]:
    """Cumulative counts of the backend's own /webhook latency histogram (this process's view of
    all workers when PROMETHEUS_MULTIPROC_DIR is in use)."""
    out: dict[str, float] = {}
    for line in metrics.splitlines():
        if line.startswith("lsllm_http_request_seconds_bucket") and f'route="{route}"' in line:
            le = line.split('le="')[1].split('"')[0]
            out[le] = out.get(le, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def run(
    n_events: int, senders: int, workers: int, kill: bool, seed: int = 0, rate: float = 0.0
) -> dict[str, Any]:
    events, expected = history(n_events, seed)
    port = free_port()
    data_dir = tempfile.mkdtemp(prefix="lsllm-load-")
    server = start_server(port, data_dir, workers)
    latencies: list[float] = []
    failures = 0
    retried = 0
    lock = threading.Lock()
    queue = [json.dumps(event).encode() for event in events]  # serialised up front
    interval = senders / rate if rate else 0.0
    killed: list[int] = []

    def sender() -> None:
        nonlocal failures, retried
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        while True:
            with lock:
                if not queue:
                    return
                body = queue.pop(0)
            if interval:
                time.sleep(interval)  # open loop: each sender posts at rate/senders per second
            for _attempt in range(20):
                try:
                    started = time.perf_counter()
                    conn.request("POST", "/webhook", body, {"Content-Type": "application/json"})
                    response = conn.getresponse()
                    response.read()
                    elapsed = time.perf_counter() - started
                    if response.status == 200:
                        with lock:
                            latencies.append(elapsed)
                        break
                    with lock:
                        failures += 1
                except (OSError, http.client.HTTPException):
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                    with lock:
                        retried += 1
                    time.sleep(0.05)

    def killer() -> None:
        while len(latencies) < n_events // 3:
            time.sleep(0.01)
        pids = worker_pids(server.pid)
        if pids:
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    threads = [threading.Thread(target=sender) for _ in range(senders)]
    if kill:
        threads.append(threading.Thread(target=killer))
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    # wait until every stored event is applied
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        metrics = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        metrics.request("GET", "/metrics")
        text = metrics.getresponse().read().decode()
        if 'lsllm_events{outcome="pending"}' not in text:
            break
        time.sleep(0.2)
    stored: dict[int, str] = {}
    page = 1
    while True:
        body = get_json(port, f"/projects/7/examples?page={page}&page_size=1000")
        for ex in body["examples"]:
            stored[ex["annotation_id"]] = ex["result"][0]["value"]["choices"][0]
        if page * 1000 >= body["total"]:
            break
        page += 1
    server_side = server_histogram(text, "/webhook")
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 if latencies else float("nan")

    return {
        "events": n_events,
        "senders": senders,
        "rate_limit_per_s": rate or "none (as fast as possible)",
        "workers": workers,
        "killed_worker": bool(killed),
        "acknowledged": len(latencies),
        "non_200": failures,
        "connection_retries": retried,
        "p50_ms": round(pct(0.50), 2),
        "p99_ms": round(pct(0.99), 2),
        "max_ms": round(latencies[-1] * 1000, 2) if latencies else None,
        "events_per_s": round(len(latencies) / wall, 1),
        "server_side_le_ms": server_side,
        "expected_live": len(expected),
        "stored_live": len(stored),
        "exact": stored == expected,
    }
