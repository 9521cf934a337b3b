"""Run the embedded model server so that it dies with the backend and says how it died.

    python -m backend.llm.local_child --parent-pid N -- -m backend.llm.llama_server --model ... (or -- -c CODE ...)

The server runs in its own session (Ctrl-C on `lsllm prelabel` must not kill it mid-run), so no signal
from the terminal reaches it, and a backend killed with SIGKILL (or by the OOM killer) used to leave it
running. A watchdog thread here ends this process as soon as the parent is gone (its pid is no longer
our parent: we were re-parented). PR_SET_PDEATHSIG is not used: it fires when the *thread* that forked
us ends, and restarts are spawned from a supervisor thread.

It also leaves the cause of death on stderr, where the supervisor reads it: faulthandler prints "Fatal
Python error: Segmentation fault" (and where) for a crash inside llama.cpp, and a normal end prints
"local_child: exit N". The exit code alone is not reliable under gunicorn, whose master reaps every child
(os.waitpid(-1)), so that Popen sees the crashed server as "exit 0".
"""

from __future__ import annotations

import faulthandler
import os
import runpy
import sys
import threading
import time

EXIT_MARK = "local_child: exit"
ORPHAN_MARK = "local_child: the backend (parent) is gone; exiting"


def watch_parent(parent_pid: int, interval: float = 0.25) -> None:
    """End this process (at once, no clean-up to wait for) when `parent_pid` is no longer our parent."""
    while True:
        if os.getppid() != parent_pid:
            try:
                sys.stderr.write(ORPHAN_MARK + "\n")
                sys.stderr.flush()
            except (OSError, ValueError):
                pass  # stderr was a pipe to the parent, now closed (EPIPE): nothing must stop the exit
            finally:
                os._exit(0)
        time.sleep(interval)


def parse(argv: list[str]) -> tuple[int, list[str]]:
    """(parent pid, the target after `--`: `-m module args...` or `-c code args...`)."""
    if len(argv) < 5 or argv[0] != "--parent-pid" or argv[2] != "--" or argv[3] not in ("-m", "-c"):
        raise SystemExit("usage: python -m backend.llm.local_child --parent-pid N -- (-m MODULE | -c CODE) ARGS...")
    return int(argv[1]), argv[3:]


def run(target: list[str]) -> None:
    """Run the target in this process as `python -m`/`python -c` would, with its arguments in sys.argv."""
    kind, name, args = target[0], target[1], target[2:]
    if kind == "-m":
        sys.argv = [name, *args]
        runpy.run_module(name, run_name="__main__", alter_sys=True)
    else:
        sys.argv = ["-c", *args]
        # the target comes from our own supervisor (tests use it for fake servers), as `python -c` would
        exec(compile(name, "<local_child>", "exec"), {"__name__": "__main__"})  # noqa: S102


def main(argv: list[str]) -> int:
    parent_pid, target = parse(argv)
    faulthandler.enable(all_threads=True)
    threading.Thread(target=watch_parent, args=(parent_pid,), daemon=True, name="parent-watchdog").start()
    code = 0
    try:
        run(target)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except Exception:  # noqa: BLE001 - printed, and the exit code says it failed
        import traceback

        traceback.print_exc()
        code = 1
    sys.stderr.write(f"{EXIT_MARK} {code}\n")
    sys.stderr.flush()
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
