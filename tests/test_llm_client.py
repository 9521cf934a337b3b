"""The LLM client against the scripted HTTP provider: retries, Retry-After, timeouts, fail-fast codes
and the structured-output step-down."""

from __future__ import annotations

import time

import pytest
from conftest import make_settings
from scripted_provider import Reply

from backend.llm.client import CallOptions, LLMClient, LLMError
from backend.settings import ResponseFormat

SCHEMA = {"type": "object", "properties": {"x": {"type": "string"}}, "required": ["x"]}
MESSAGES = [{"role": "user", "content": "hi"}]


def client(tmp_path, provider, **overrides) -> LLMClient:
    return LLMClient(make_settings(tmp_path, provider.base_url, **overrides))


def test_429_with_retry_after_then_success(tmp_path, provider) -> None:
    replies = iter([Reply(status=429, headers={"Retry-After": "1"}), Reply(content='{"x": "ok"}')])
    provider.responder = lambda body: next(replies)
    started = time.monotonic()
    answer = client(tmp_path, provider).complete(MESSAGES, SCHEMA, CallOptions(model="m"))
    assert answer.content == '{"x": "ok"}'
    assert len(provider.requests) == 2
    assert time.monotonic() - started >= 0.9  # waited as Retry-After asked
    assert answer.tokens and answer.tokens[0].text == "{"


def test_5xx_retried_then_given_up(tmp_path, provider) -> None:
    provider.responder = lambda body: Reply(status=503)
    with pytest.raises(LLMError) as err:
        client(tmp_path, provider, llm_max_retries=2).complete(MESSAGES, SCHEMA, CallOptions(model="m"))
    assert err.value.kind == "server"
    assert len(provider.requests) == 3


def test_timeout_is_retried_and_reported(tmp_path, provider) -> None:
    provider.responder = lambda body: Reply(content="{}", delay=1.0)
    with pytest.raises(LLMError) as err:
        client(tmp_path, provider, llm_max_retries=1, llm_timeout=0.3).complete(
            MESSAGES, SCHEMA, CallOptions(model="m")
        )
    assert err.value.kind == "timeout"
    assert len(provider.requests) == 2


@pytest.mark.parametrize("status,kind", [(401, "auth"), (403, "auth"), (400, "bad_request")])
def test_client_errors_fail_fast(tmp_path, provider, status, kind) -> None:
    provider.responder = lambda body: Reply(status=status, error="nope")
    with pytest.raises(LLMError) as err:
        client(tmp_path, provider).complete(MESSAGES, SCHEMA, CallOptions(model="m"))
    assert err.value.kind == kind
    assert len(provider.requests) == 1


def test_steps_down_from_json_schema_when_refused(tmp_path, provider) -> None:
    """llama.cpp's server answers json_schema with a 500 validation error (measured)."""

    def responder(body: dict) -> Reply:
        kind = (body.get("response_format") or {}).get("type")
        if kind == "json_schema":
            return Reply(status=400, error="response_format: Input should be 'text' or 'json_object'")
        return Reply(content='{"x": "fine"}')

    provider.responder = responder
    llm = client(tmp_path, provider)
    assert llm.complete(MESSAGES, SCHEMA, CallOptions(model="m")).content == '{"x": "fine"}'
    assert llm.response_mode is ResponseFormat.json_object
    assert [r.get("response_format", {}).get("type") for r in provider.requests] == ["json_schema", "json_object"]
    llm.complete(MESSAGES, SCHEMA, CallOptions(model="m"))  # remembered: no second refusal
    assert len(provider.requests) == 3


def test_llama_cpp_schema_form_and_logprobs_off(tmp_path, provider) -> None:
    def responder(body: dict) -> Reply:
        if body.get("logprobs"):
            return Reply(status=400, error="logprobs is not supported unless logits_all=True")
        return Reply(content='{"x": "y"}')

    provider.responder = responder
    llm = client(tmp_path, provider, llm_response_format="json_object_schema")
    answer = llm.complete(MESSAGES, SCHEMA, CallOptions(model="m"))
    assert answer.tokens is None and llm.logprobs is False
    assert provider.requests[-1]["response_format"] == {"type": "json_object", "schema": SCHEMA}
