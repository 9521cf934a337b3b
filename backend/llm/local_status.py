"""The embedded model server's state, shared across processes through one small JSON file.

Under `lsllm serve` the server is supervised by the gunicorn master, while requests are answered by forked
workers whose copy of the supervisor is stale (its threads do not survive the fork). So the supervisor
writes its state to a file (atomically: a temporary file renamed over the old one) and `/health` and
`/metrics` in any worker read it. The file's path travels in `Settings.local_status_file`.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

STARTING = "starting"
READY = "ready"
RESTARTING = "restarting"
CRASH_LOOP = "crash_loop"
STOPPED = "stopped"
STATES = (STARTING, READY, RESTARTING, CRASH_LOOP, STOPPED)


@dataclass(frozen=True)
class LocalModelStatus:
    """One snapshot: the state, why (for a crash loop or a failed start), restarts and deaths so far."""

    state: str
    reason: str | None = None
    restarts: int = 0
    deaths: int = 0
    updated_at: float = 0.0
    pid: int | None = None

    def as_json(self) -> dict[str, object]:
        return asdict(self)


def write_status(path: Path, status: LocalModelStatus) -> None:
    """Replace the file in one rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(status.as_json(), handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_status(path: Path) -> LocalModelStatus | None:
    """The last snapshot, or None when there is none (not written yet, removed at stop, unreadable)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict) or raw.get("state") not in STATES:
        return None
    try:
        return LocalModelStatus(
            state=str(raw["state"]),
            reason=raw.get("reason") if isinstance(raw.get("reason"), str) else None,
            restarts=int(raw.get("restarts") or 0),
            deaths=int(raw.get("deaths") or 0),
            updated_at=float(raw.get("updated_at") or 0.0),
            pid=int(raw["pid"]) if isinstance(raw.get("pid"), int) else None,
        )
    except (TypeError, ValueError):
        return None


def describe_exit(code: int | None) -> str:
    """A return code in words: `killed by SIGSEGV (-11)`, `exit 1`, or `still running`."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name} ({code})"
        except ValueError:
            return f"killed by signal {-code} ({code})"
    return f"exit {code}"


def local_model_metrics(status: LocalModelStatus | None) -> bytes:
    """The embedded model server's restarts and state, from its supervisor's status file (the supervisor
    lives in the gunicorn master, so these cannot be counters in a worker's registry)."""
    current = status.state if status is not None else "unknown"
    lines = [
        "# HELP lsllm_local_model_restarts_total Restarts of the embedded model server after it died",
        "# TYPE lsllm_local_model_restarts_total counter",
        f"lsllm_local_model_restarts_total {status.restarts if status else 0}",
        "# HELP lsllm_local_model_deaths_total Deaths of the embedded model server (crashes, kills, hung starts)",
        "# TYPE lsllm_local_model_deaths_total counter",
        f"lsllm_local_model_deaths_total {status.deaths if status else 0}",
        "# HELP lsllm_local_model_state The embedded model server's state (1 for the current one)",
        "# TYPE lsllm_local_model_state gauge",
    ]
    lines += [f'lsllm_local_model_state{{state="{state}"}} {int(state == current)}' for state in (*STATES, "unknown")]
    return ("\n".join(lines) + "\n").encode()
