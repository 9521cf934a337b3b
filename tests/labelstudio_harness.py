"""Start a real Label Studio 1.23 (its own virtualenv, made by `make ls-venv`) and this backend under
gunicorn, exactly as `make run` starts it, for the end-to-end tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
LS_VENV = Path(os.environ.get("LSLLM_LS_VENV") or Path.home() / ".cache" / "lsllm" / "ls-venv-1.23.2")
TOKEN = "lsllm-e2e-token-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} while waiting for {url}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@dataclass
class LabelStudio:
    url: str
    proc: subprocess.Popen
    data_dir: Path
    log: Path

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Token {TOKEN}"}

    def api(self, method: str, path: str, **kw) -> httpx.Response:
        return httpx.request(method, f"{self.url}{path}", headers=self.headers, timeout=120, **kw)


def start_label_studio() -> LabelStudio:
    binary = LS_VENV / "bin" / "label-studio"
    if not binary.exists():
        raise FileNotFoundError(f"Label Studio is not installed at {LS_VENV} (run `make ls-venv`)")
    port = free_port()
    data = Path(tempfile.mkdtemp(prefix="lsllm-ls-"))
    log = data / "label-studio.log"
    env = {
        "PATH": f"{LS_VENV / 'bin'}:/usr/bin:/bin",
        "HOME": str(data),
        "LABEL_STUDIO_USERNAME": "e2e@example.com",
        "LABEL_STUDIO_PASSWORD": "e2e-password-123",
        "LABEL_STUDIO_USER_TOKEN": TOKEN,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LABEL_STUDIO_ML_BLOCK_LOCAL_IP": "false",
        "LABEL_STUDIO_SSRF_PROTECTION_ENABLED": "false",
        "LABEL_STUDIO_BASE_DATA_DIR": str(data),
        "XDG_CONFIG_HOME": str(data),
        "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
        "LABEL_STUDIO_SENTRY_DSN": "",
        "SENTRY_DSN": "",
        # Label Studio's own prediction validation: a prediction it would reject fails the suite
        "fflag_feat_utc_210_prediction_validation_15082025": "true",
    }
    proc = subprocess.Popen(
        [str(binary), "start", "--no-browser", "--host", f"http://127.0.0.1:{port}", "--internal-host",
         "127.0.0.1", "--port", str(port), "--data-dir", str(data)],
        env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=data,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", timeout=300, proc=proc)
    except Exception:
        stop(proc)
        raise RuntimeError("Label Studio did not start:\n" + log.read_text(errors="replace")[-3000:]) from None
    return LabelStudio(url, proc, data, log)


@dataclass
class Backend:
    url: str
    proc: subprocess.Popen
    data_dir: Path


def start_backend(llm_base_url: str, **env_extra: str) -> Backend:
    port = free_port()
    data = Path(tempfile.mkdtemp(prefix="lsllm-backend-"))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "BASIC_AUTH", "DATABASE_URL"))},
        "LLM_BASE_URL": llm_base_url,
        "LLM_API_KEY": "sk-e2e",
        "LLM_MODEL": "scripted",
        "DATA_DIR": str(data),
        "SELECTION_REFRESH_SECONDS": "0",
        **env_extra,
    }
    lsllm = Path(sys.executable).parent / "lsllm"
    proc = subprocess.Popen(
        [str(lsllm), "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
        env=env, stdout=(data / "backend.log").open("wb"), stderr=subprocess.STDOUT, cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/health", timeout=60, proc=proc)
    return Backend(url, proc, data)


def cleanup(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
