"""The scripted OpenAI-compatible provider as a process of its own, so that its CPU is not counted as
the backend's: fixed latency, a hard concurrency cap answered with 429, answers looked up by task text.

    python benchmarks/scripted_server.py --latency 0.5 --cap 16 --answers answers.json --key sentiment

Prints its base URL on the first line of stdout, serves until stdin closes, then prints one JSON line
of counts: requests, rejected_429, answered, peak_in_flight.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from scripted_provider import Reply, ScriptedProvider, group_items, last_user_text  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--cap", type=int, default=16)
    parser.add_argument("--retry-after", type=float, default=0.1)
    parser.add_argument("--answers", required=True, help="JSON {task text: label}")
    parser.add_argument("--key", default="sentiment", help="the control name the answer uses")
    parser.add_argument("--default", default="positive")
    args = parser.parse_args()
    answers = json.loads(Path(args.answers).read_text(encoding="utf-8"))
    answered = [0]

    def respond(body: dict) -> Reply:
        answered[0] += 1
        text = last_user_text(body)
        items = group_items(text)
        if items:  # several tasks in one call (LLM_TASKS_PER_CALL)
            return Reply(content=json.dumps({"items": [{"item": n, args.key: answers.get(t, args.default)}
                                                       for n, t in items]}), logprob=-0.02)
        return Reply(content=json.dumps({args.key: answers.get(text, args.default)}), logprob=-0.02)

    provider = ScriptedProvider(respond, latency=args.latency, max_concurrency=args.cap,
                                retry_after=args.retry_after)
    print(provider.start(), flush=True)
    sys.stdin.read()
    provider.stop()
    print(json.dumps({"requests": len(provider.requests), "rejected_429": provider.rejected_429,
                      "answered": answered[0], "peak_in_flight": provider.peak_in_flight}), flush=True)


if __name__ == "__main__":
    main()
