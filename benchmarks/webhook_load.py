"""Webhook load: N events from S concurrent senders into `lsllm serve` with W gunicorn workers, one worker
optionally killed with SIGKILL mid-run; prints /webhook latency percentiles and checks that the example
store ends exactly as the event history says (nothing lost, nothing doubled).

    .venv/bin/python benchmarks/webhook_load.py --events 2000 --senders 8 --workers 2 --kill

The run itself lives in tests/webhook_load_harness.py, which the durability test uses too.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
from webhook_load_harness import run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--senders", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--kill", action="store_true", help="SIGKILL one gunicorn worker a third of the way in")
    parser.add_argument("--rate", type=float, default=0.0, help="aggregate events/s (0: as fast as possible)")
    args = parser.parse_args()
    report = run(args.events, args.senders, args.workers, args.kill, rate=args.rate)
    print(json.dumps(report, indent=1))
    sys.exit(0 if report["exact"] else 1)


if __name__ == "__main__":
    main()
