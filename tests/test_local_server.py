"""The embedded model server's supervision: readiness that proves decoding, a crash loop that shows in
/health, /metrics and one log line, a cause of death that survives gunicorn's reaping, and a server that
dies with its parent.

Most tests use a fake server (a few lines of http.server run through the same wrapper as the real one),
because a crash on demand is a fault the real component cannot produce; the SIGKILL test also runs with
the real llama_cpp.server.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from backend.llm.local_server import (
    LocalModelError,
    LocalModelServer,
    settings_for_local,
)
from backend.llm.local_status import CRASH_LOOP, READY, read_status
from backend.service.app import create_app
from backend.settings import Settings

ROOT = Path(__file__).resolve().parent.parent

if importlib.util.find_spec("llama_cpp") is None:  # pragma: no cover - make install always has it
    pytest.skip("llama-cpp-python is not installed (the [local] extra)", allow_module_level=True)

# An OpenAI-compatible server in miniature: /v1/models answers; /v1/completions answers text ("ok") or
# HTTP 500 ("no-decode", a server whose port answers but which cannot decode).
FAKE_SERVER = r"""
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

port, mode = int(sys.argv[1]), sys.argv[2]

class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _send(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._send(200, {"object": "list", "data": [{"id": "fake"}]})

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if mode == "no-decode":
            self._send(500, {"error": "decode failed"})
        else:
            self._send(200, {"choices": [{"text": " Paris"}]})

HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""
# what the native llama.cpp build does on an AMX machine at the first multi-token prompt
SEGFAULT = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"


def fake(mode: str) -> Callable[[int], list[str]]:
    if mode == "segfault":
        return lambda port: ["-c", SEGFAULT]
    return lambda port: ["-c", FAKE_SERVER, str(port), mode]


def settings(tmp_path: Path, **extra: object) -> Settings:
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")  # never read: the fake server does not load it
    return Settings.model_validate({"data_dir": tmp_path / "data", "local_model_path": model, **extra})


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds:.0f} s: {what}")
        time.sleep(0.05)


def gone(pid: int) -> bool:
    """No such process, or only a zombie waiting for a reaper."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return True
    return fields[0] in ("Z", "X")


def test_ready_only_when_the_server_decodes(tmp_path: Path) -> None:
    # the port answers /v1/models, but every completion fails: start-up must not call that ready
    server = LocalModelServer(settings(tmp_path, local_start_timeout=3), target=fake("no-decode"))
    with pytest.raises(LocalModelError, match="test completion") as raised:
        server.start()
    message = str(raised.value)
    assert "HTTP 500" in message and "LOCAL_MODEL_PATH" in message and "LLAMA_CMAKE_ARGS" in message
    assert not server.alive()


def test_a_decoding_server_is_ready_and_its_status_is_written(tmp_path: Path) -> None:
    server = LocalModelServer(settings(tmp_path), target=fake("ok"))
    try:
        server.start()
        status = read_status(server.status_file)
        assert status is not None and status.state == READY and status.restarts == 0
    finally:
        server.stop()
    assert not server.status_file.exists()


@pytest.mark.slow  # restarts a dying server until the loop is declared (about 5 s)
def test_a_forked_worker_that_exits_leaves_the_server_and_its_status_alone(tmp_path: Path) -> None:
    # gunicorn forks its workers inside `with provider(...)`: a worker's exit runs provider's finally
    server = LocalModelServer(settings(tmp_path), target=fake("ok"))
    server.start()
    try:
        pid = os.fork()
        if pid == 0:  # the "worker"
            try:
                server.stop()
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        assert server.status_file.exists(), "a worker's exit removed the master's status file"
        assert server.alive() and server.healthy()
    finally:
        server.stop()


def test_crash_loop_shows_in_health_metrics_and_one_log_line(tmp_path: Path, caplog) -> None:
    targets = [fake("ok")]  # the first start works; every later start segfaults until told otherwise
    base = settings(tmp_path, local_crash_loop_deaths=3, local_crash_loop_seconds=60, local_restart_backoff_max=0.2)
    server = LocalModelServer(base, target=lambda port: targets[-1](port))
    caplog.set_level(logging.DEBUG, logger="backend.llm.local_server")
    url = server.start()
    app = create_app(settings_for_local(base, url, server.status_file), start_worker=False)
    client = app.test_client()
    try:
        health = client.get("/health")
        assert health.status_code == 200 and health.get_json()["local_model"]["state"] == READY

        targets.append(fake("segfault"))
        assert server._proc is not None
        server._proc.kill()
        wait_for(lambda: server.state == CRASH_LOOP, 30, "a crash loop after 3 deaths")

        health = client.get("/health")
        assert health.status_code == 503, health.get_json()
        answer = health.get_json()
        assert answer["status"] != "UP"
        assert "SIGSEGV" in answer["error"] and "Segmentation fault" in answer["error"], answer
        assert answer["local_model"]["state"] == CRASH_LOOP

        metrics = client.get("/metrics").get_data(as_text=True)
        restarts = next(line for line in metrics.splitlines() if line.startswith("lsllm_local_model_restarts_total"))
        assert int(float(restarts.split()[-1])) >= 2
        assert 'lsllm_local_model_state{state="crash_loop"} 1' in metrics

        # a transient fault heals: restarts go on (slowly) and the next good start clears the state
        targets.append(fake("ok"))
        wait_for(lambda: server.state == READY, 30, "recovery once the server starts again")
        assert client.get("/health").status_code == 200
    finally:
        server.stop()
        app.extensions["lsllm_model"].predictor.close()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    line = errors[0].getMessage()
    assert "LOCAL_MODEL_PATH" in line and "LLM_BASE_URL" in line and "make clean install" in line
    assert "SIGSEGV" in line


def test_serve_keeps_running_when_the_server_crashes_at_start(tmp_path: Path, caplog) -> None:
    # `lsllm serve` (keep_trying): the crashing build must not stop the backend; /health says why
    base = settings(tmp_path, local_restart_backoff_max=0.2)
    server = LocalModelServer(base, target=fake("segfault"))
    caplog.set_level(logging.INFO, logger="backend.llm.local_server")
    try:
        server.start(keep_trying=True)
        wait_for(lambda: server.state == CRASH_LOOP, 30, "a crash loop")
        status = read_status(server.status_file)
        assert status is not None and status.state == CRASH_LOOP and "SIGSEGV" in (status.reason or "")
    finally:
        server.stop()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "Remedy" in errors[0], errors


def test_the_cause_of_death_survives_a_reaper(tmp_path: Path) -> None:
    # gunicorn's master reaps every child (waitpid(-1)); Popen then reports a segfaulted server as "exit 0"
    server = LocalModelServer(settings(tmp_path), target=fake("segfault"))
    server._spawn(tmp_path / "model.gguf")
    assert server._proc is not None
    _, status = os.waitpid(server._proc.pid, 0)  # what gunicorn's SIGCHLD handler does
    assert os.WTERMSIG(status) == signal.SIGSEGV
    wait_for(lambda: any("Segmentation fault" in line for line in server._stderr), 10, "faulthandler's line")
    assert server._proc.poll() == 0  # the exit code is lost...
    assert "Segmentation fault" in server.death_cause()  # ...the cause is not


PARENT = r"""
import sys, time
from backend.llm.local_server import LocalModelServer
from backend.settings import Settings

data, model, fake_server = sys.argv[1:4]
target = (lambda port: ["-c", fake_server, str(port), "ok"]) if fake_server else None
settings = Settings.model_validate({"data_dir": data, "local_model_path": model or None})
server = LocalModelServer(settings, target=target)
server.start()
print(server._proc.pid, flush=True)
time.sleep(600)
"""


def start_parent(tmp_path: Path, model: str, fake_server: str) -> tuple[subprocess.Popen[str], int]:
    """A parent process that starts a LocalModelServer and prints the server's pid once it is ready."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path / "data"), model, fake_server],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert parent.stdout is not None
    line = parent.stdout.readline()  # the server's pid once it is ready (start() has its own timeout)
    if not line.strip():
        parent.kill()
        raise AssertionError(f"the parent did not start its server (exit {parent.wait()})")
    return parent, int(line)


@pytest.mark.parametrize("mode", ["fake", pytest.param("real", marks=[pytest.mark.local_model, pytest.mark.slow])])
def test_server_dies_when_its_parent_is_killed(tmp_path: Path, mode: str) -> None:
    if mode == "fake":
        model = tmp_path / "model.gguf"
        model.write_bytes(b"GGUF")
        parent, child = start_parent(tmp_path, str(model), FAKE_SERVER)
    else:  # the real llama_cpp.server with the bundled model
        parent, child = start_parent(tmp_path, "", "")
    try:
        assert not gone(child)
        assert os.getsid(child) != os.getsid(parent.pid)  # its own session: Ctrl-C does not reach it
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        wait_for(lambda: gone(child), 5, f"the server (pid {child}) ending after its parent was SIGKILLed")
    finally:
        parent.kill()
        if not gone(child):
            os.kill(child, signal.SIGKILL)
