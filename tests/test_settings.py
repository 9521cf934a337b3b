from __future__ import annotations

import pytest

from backend.llm.local_server import child_environment, settings_for_local
from backend.settings import ResponseFormat, Settings
from backend.store.project_id import normalise_project_id


def test_env_names_and_api_key_fallback(monkeypatch) -> None:
    monkeypatch.delenv("LLM_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fallback")
    monkeypatch.setenv("LLM_MAX_CONCURRENCY", "3")
    settings = Settings()
    assert settings.api_key_value() == "sk-fallback"
    assert settings.llm_max_concurrency == 3
    assert "sk-fallback" not in repr(settings)  # secrets are masked in any repr/log


def test_local_mode_defaults_keep_explicit_choices(monkeypatch) -> None:
    monkeypatch.setenv("LLM_TIMEOUT", "7")
    monkeypatch.delenv("LLM_RESPONSE_FORMAT", raising=False)
    settings = Settings().model_copy(update={"port": 9999})  # as `lsllm serve --port` does
    local = settings_for_local(settings, "http://127.0.0.1:1/v1")
    assert local.llm_response_format is ResponseFormat.json_object_schema
    assert local.llm_timeout == 7.0
    assert local.llm_max_concurrency == 1
    monkeypatch.setenv("LLM_RESPONSE_FORMAT", "json_object")
    assert settings_for_local(Settings(), "x").llm_response_format is ResponseFormat.json_object


def test_child_environment_drops_server_settings(monkeypatch) -> None:
    monkeypatch.setenv("PORT", "9090")
    monkeypatch.setenv("API_KEY", "secret")
    env = child_environment()
    assert "PORT" not in env and "API_KEY" not in env and "PATH" in env


@pytest.mark.parametrize(
    "raw,expected", [("12.1732880000", "12"), (12, "12"), ("7", "7"), ({"id": 5}, "5")]
)
def test_project_id_normalisation(raw, expected) -> None:
    assert normalise_project_id(raw) == expected


@pytest.mark.parametrize("raw", [None, True, "abc", "", "x.1"])
def test_project_id_rejects_garbage(raw) -> None:
    with pytest.raises(ValueError):
        normalise_project_id(raw)
