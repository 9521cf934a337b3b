"""The CPU floor of one provider call from Python: N chat-completion requests from T threads against the
scripted server (its own process), sent with the openai SDK's `client.post` (what the backend uses) and
with the SDK's bare transport client (`openai.DefaultHttpxClient`: httpx2 from openai 3, httpx before), nothing else.

    .venv/bin/python benchmarks/http_floor.py [--n 640] [--threads 16] [--latency 0.05]

Prints CPU milliseconds per call for each: the part of the backend's CPU per task that is the HTTP
client alone.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from openai import DefaultHttpxClient, OpenAI

ROOT = Path(__file__).resolve().parent.parent
BODY = {"model": "m", "messages": [{"role": "system", "content": "Label the sentiment. " * 20},
                                   {"role": "user", "content": "a fine film, well acted and often funny"}],
        "max_tokens": 20}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=640)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--latency", type=float, default=0.05)
    args = parser.parse_args()
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as answers:
        json.dump({}, answers)
    server = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "scripted_server.py"), "--latency",
                               str(args.latency), "--cap", "1000", "--answers", answers.name],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    url = server.stdout.readline().strip()
    sdk = OpenAI(base_url=url, api_key="x", max_retries=0)
    bare = DefaultHttpxClient(base_url=url, timeout=30)
    senders = {
        "openai SDK client.post": lambda: json.loads(sdk.post("/chat/completions", cast_to=str, body=BODY)),
        "bare transport client": lambda: bare.post("/chat/completions", json=BODY).json(),
    }
    try:
        with ThreadPoolExecutor(args.threads) as pool:
            for name, send in senders.items():
                list(pool.map(lambda _, send=send: send(), range(args.threads * 2)))  # connections open, warm
                cpu, wall = time.process_time(), time.perf_counter()
                list(pool.map(lambda _, send=send: send(), range(args.n)))
                cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
                print(f"{name:24s} {1000 * cpu / args.n:.2f} ms CPU per call ({args.n} calls, "
                      f"{args.threads} threads, {wall:.1f} s)", flush=True)
    finally:
        server.stdin.close()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
