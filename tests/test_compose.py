"""docker-compose.yml is accepted by `docker compose config` where Compose exists (no Docker engine runs
on these machines), and its wiring is checked structurally everywhere."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml
from conftest import ROOT


def test_compose_wiring() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"label-studio", "backend", "ollama", "postgres"} <= set(services)
    ls_env = services["label-studio"]["environment"]
    assert ls_env["LABEL_STUDIO_ML_BLOCK_LOCAL_IP"] == "false"
    assert ls_env["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"
    backend = services["backend"]
    assert backend["build"] == "." and "9090:9090" in backend["ports"]
    assert any(v.endswith(":/data") for v in backend["volumes"])
    assert services["ollama"]["profiles"] == ["ollama"] and services["postgres"]["profiles"] == ["postgres"]
    assert (ROOT / "Dockerfile").exists()


def test_docker_compose_config_accepts_the_file() -> None:
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) is None:
            continue
        probe = subprocess.run([*command, "version"], capture_output=True, text=True)
        if probe.returncode != 0:
            continue
        run = subprocess.run([*command, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
                             capture_output=True, text=True, cwd=ROOT)
        assert run.returncode == 0, run.stderr
        return
    if os.environ.get("CI") == "true":
        pytest.fail("CI needs docker-compose to check docker-compose.yml (make tools)")
    pytest.skip("neither `docker compose` nor `docker-compose` is installed here (make tools)")
