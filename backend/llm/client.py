"""One chat completion through the `openai` SDK against any OpenAI-compatible server.

Retries are ours, not the SDK's (`max_retries=0`): every attempt holds a slot of an AdaptiveLimiter,
so a 429 lowers the number of calls in flight for the whole process while the refused call waits as
Retry-After asks (the SDK's own retries would hide the 429s and keep hammering at the same
concurrency). 429s are retried up to LLM_RATE_LIMIT_RETRIES times (a refused call cost nothing);
5xx, timeouts and connection errors LLM_MAX_RETRIES times with exponential backoff; 400/401/403/404
fail at once as an LLMError with a kind the caller can count. When a server rejects the
structured-output form or logprobs, the client steps down once (json_schema -> json_object -> text;
logprobs off) and remembers it, logging one line.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import openai
from openai import APIStatusError, OpenAI
from sqlalchemy.exc import SQLAlchemyError

from backend.llm.limiter import AdaptiveLimiter
from backend.llm.response_cache import ResponseCache, cache_key
from backend.settings import ResponseFormat, Settings
from converters.confidence import Token

log = logging.getLogger(__name__)

_DOWNGRADE = {
    ResponseFormat.json_schema: ResponseFormat.json_object,
    ResponseFormat.json_object_schema: ResponseFormat.json_object,
    ResponseFormat.json_object: ResponseFormat.text,
}


class LLMError(Exception):
    """A call that failed for good; `kind` is one of auth, bad_request, rate_limit, timeout, server,
    connection, empty."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class LLMAnswer:
    content: str
    tokens: list[Token] | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str = ""
    seconds: float = 0.0
    cached: bool = False


@dataclass
class CallOptions:
    model: str
    temperature: float = 0.0
    max_tokens: int = 1024
    timeout: float | None = None  # seconds per attempt (default LLM_TIMEOUT)
    deadline: float | None = None  # time.monotonic() after which no attempt starts
    extra: dict[str, Any] = field(default_factory=dict)
    urgent: bool = False  # an annotator is waiting: served before bulk calls (not part of the cache key)


def response_format_for(mode: ResponseFormat, schema: dict[str, Any], name: str) -> dict[str, Any] | None:
    if mode is ResponseFormat.json_schema:
        return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}
    if mode is ResponseFormat.json_object_schema:
        return {"type": "json_object", "schema": schema}
    if mode is ResponseFormat.json_object:
        return {"type": "json_object"}
    return None


def _mentions(exc: Exception, *words: str) -> bool:
    text = str(exc).lower()
    return any(word in text for word in words)


class LLMClient:
    def __init__(
        self,
        settings: Settings,
        base_url: str | None = None,
        on_call: Callable[[str, LLMAnswer | None], None] | None = None,
        cache: ResponseCache | None = None,
    ) -> None:
        self.settings = settings
        self.mode = settings.llm_response_format
        self.logprobs = settings.llm_logprobs
        self._lock = threading.Lock()
        self._on_call = on_call or (lambda outcome, answer: None)
        self.cache = cache
        self.limiter = AdaptiveLimiter(settings.llm_max_concurrency)
        self._client = OpenAI(
            base_url=base_url or settings.llm_base_url,
            api_key=settings.api_key_value(),
            timeout=settings.llm_timeout,
            max_retries=0,  # retried below, through the limiter
        )

    @property
    def response_mode(self) -> ResponseFormat:
        return self.mode

    def flush(self) -> None:
        """Write the response cache's pending answers (end of a CLI run)."""
        if self.cache is None:
            return
        try:
            self.cache.flush()
        except SQLAlchemyError:
            log.warning("response cache unavailable: the last answers were not cached")

    def close(self) -> None:
        self.flush()
        self._client.close()

    def complete(
        self, messages: Sequence[dict[str, str]], schema: dict[str, Any], options: CallOptions
    ) -> LLMAnswer:
        """Run one completion (or take it from the response cache); raise LLMError when it failed."""
        hit = self.cached(messages, schema, options)
        if hit is not None:
            self._on_call("cache_hit", None)
            return hit
        answer = self._complete(messages, schema, options)
        self.remember(messages, schema, options, answer)
        return answer

    def _cache_key(self, messages: Sequence[dict[str, str]], schema: dict[str, Any], options: CallOptions) -> str:
        params = {"temperature": options.temperature, "max_tokens": options.max_tokens,
                  "logprobs": self.logprobs, "top_logprobs": self.settings.llm_top_logprobs, "extra": options.extra}
        return cache_key(options.model, messages, schema, self.mode.value, params)

    def cached(
        self, messages: Sequence[dict[str, str]], schema: dict[str, Any], options: CallOptions
    ) -> LLMAnswer | None:
        """The cached answer for this request, without calling the provider (None: not cached)."""
        if self.cache is None:
            return None
        try:
            hit = self.cache.get(self._cache_key(messages, schema, options))
        except SQLAlchemyError:
            return None
        if hit is None:
            return None
        return LLMAnswer(hit["content"], hit["tokens"], hit["prompt_tokens"], hit["completion_tokens"],
                         options.model, 0.0, cached=True)

    def remember(
        self, messages: Sequence[dict[str, str]], schema: dict[str, Any], options: CallOptions, answer: LLMAnswer
    ) -> None:
        """Cache an answer obtained elsewhere (the Batch API) under the key complete() would use."""
        if self.cache is None:
            return
        try:
            self.cache.put(self._cache_key(messages, schema, options), answer.content, answer.tokens,
                           answer.prompt_tokens, answer.completion_tokens)
        except SQLAlchemyError:
            log.warning("response cache unavailable: answer not cached")

    @property
    def openai(self) -> OpenAI:
        """The SDK client (files and batches for the Batch API)."""
        return self._client

    def _complete(
        self, messages: Sequence[dict[str, str]], schema: dict[str, Any], options: CallOptions
    ) -> LLMAnswer:
        errors = throttles = step_downs = 0
        while True:
            mode, logprobs = self.mode, self.logprobs
            remaining = None if options.deadline is None else options.deadline - time.monotonic()
            if remaining is not None and remaining <= 0.05:
                raise LLMError("timeout", "the deadline passed before the LLM call")
            if not self.limiter.acquire(timeout=remaining, urgent=options.urgent):
                self._on_call("timeout", None)
                raise LLMError("timeout", "no free provider slot before the deadline")
            timeout = min(x for x in (options.timeout, remaining, self.settings.llm_timeout) if x is not None)
            try:
                answer = self._call(messages, schema, options, mode, logprobs, timeout)
            except openai.RateLimitError as exc:
                retry_after = _retry_after(exc)
                self.limiter.throttled(retry_after)
                self._on_call("throttled", None)
                if throttles >= self.settings.llm_rate_limit_retries:
                    raise self._fail(exc) from None
                throttles += 1
                self._sleep(retry_after if retry_after is not None else _backoff(throttles), options.deadline)
                continue
            except openai.APIStatusError as exc:
                self.limiter.failed()
                if exc.status_code in (400, 422, 500) and step_downs < 3 and self._step_down(exc, mode, logprobs):
                    step_downs += 1
                    continue
                if _retryable(exc.status_code) and errors < self.settings.llm_max_retries:
                    errors += 1
                    self._sleep(_retry_after(exc) or _backoff(errors), options.deadline)
                    continue
                raise self._fail(exc) from None
            except (openai.APITimeoutError, openai.APIConnectionError) as exc:
                self.limiter.failed()
                if errors < self.settings.llm_max_retries:
                    errors += 1
                    self._sleep(_backoff(errors), options.deadline)
                    continue
                if isinstance(exc, openai.APITimeoutError):
                    self._on_call("timeout", None)
                    raise LLMError("timeout", "the LLM call timed out") from None
                self._on_call("connection", None)
                raise LLMError("connection", f"cannot reach the LLM server: {type(exc).__name__}") from None
            except BaseException:
                self.limiter.failed()
                raise
            self.limiter.succeeded()
            return answer

    @staticmethod
    def _sleep(seconds: float, deadline: float | None) -> None:
        if deadline is not None:
            seconds = min(seconds, max(0.0, deadline - time.monotonic()))
        time.sleep(max(0.0, seconds))

    def _step_down(self, exc: APIStatusError, mode: ResponseFormat, logprobs: bool) -> bool:
        with self._lock:
            if logprobs and self.logprobs and _mentions(exc, "logprob", "logits_all"):
                self.logprobs = False
                log.warning("LLM server refuses logprobs (HTTP %s); scores will be empty", exc.status_code)
                return True
            if mode is self.mode and mode in _DOWNGRADE and _mentions(
                exc, "response_format", "json_schema", "schema", "json_object", "input should be"
            ):
                self.mode = _DOWNGRADE[mode]
                log.warning(
                    "LLM server refuses response_format %s (HTTP %s); using %s from now on",
                    mode.value,
                    exc.status_code,
                    self.mode.value,
                )
                return True
            # another thread already stepped down: just try again with the new settings
            return mode is not self.mode or logprobs != self.logprobs

    def _fail(self, exc: APIStatusError) -> LLMError:
        status = exc.status_code
        if status in (401, 403):
            kind = "auth"
            log.error("LLM provider refused the credentials (HTTP %s): check LLM_API_KEY", status)
        elif status == 429:
            kind = "rate_limit"
        elif status >= 500:
            kind = "server"
        else:
            kind = "bad_request"
            log.error("LLM provider rejected the request (HTTP %s): %s", status, _short(exc))
        self._on_call(kind, None)
        return LLMError(kind, f"LLM call failed with HTTP {status}")

    def request_body(
        self,
        messages: Sequence[dict[str, str]],
        schema: dict[str, Any],
        options: CallOptions,
        mode: ResponseFormat | None = None,
        logprobs: bool | None = None,
    ) -> dict[str, Any]:
        """The /chat/completions body for this request (current mode and logprobs unless given)."""
        mode = self.mode if mode is None else mode
        logprobs = self.logprobs if logprobs is None else logprobs
        kwargs: dict[str, Any] = {
            "model": options.model,
            "messages": list(messages),
            "temperature": options.temperature,
            "max_tokens": options.max_tokens,
        }
        response_format = response_format_for(mode, schema, "annotation")
        if response_format is not None:
            kwargs["response_format"] = response_format
        if logprobs:
            kwargs["logprobs"] = True
            kwargs["top_logprobs"] = self.settings.llm_top_logprobs
        if options.extra:
            kwargs.update(options.extra)
        return kwargs

    def _call(
        self,
        messages: Sequence[dict[str, str]],
        schema: dict[str, Any],
        options: CallOptions,
        mode: ResponseFormat,
        logprobs: bool,
        timeout: float,
    ) -> LLMAnswer:
        kwargs = self.request_body(messages, schema, options, mode, logprobs)
        started = time.perf_counter()
        # The SDK's documented route for raw requests: same auth, base URL and error mapping as
        # chat.completions.create, without its recursive TypedDict transform of the request (which walks
        # the whole JSON schema on every call: about 1 ms of CPU per task, measured) or building pydantic
        # models for the response.
        # cast_to=str: the body as text, whichever HTTP library this SDK version is built on (httpx, or
        # httpx2 from openai 3) — this module imports neither.
        body = self._client.post("/chat/completions", cast_to=str, body=kwargs, options={"timeout": timeout})
        seconds = time.perf_counter() - started
        try:
            completion = json.loads(body)
        except ValueError:
            completion = None
        try:
            answer = answer_from_completion(completion, options.model, seconds)
        except LLMError:
            self._on_call("empty", None)
            raise
        self._on_call("ok", answer)
        return answer


def answer_from_completion(completion: Any, model: str, seconds: float = 0.0) -> LLMAnswer:
    """A chat completion (as JSON) -> LLMAnswer; LLMError("empty") when it holds no answer."""
    choices = completion.get("choices") if isinstance(completion, dict) else None
    if not choices or not isinstance(choices[0], dict):
        raise LLMError("empty", "the LLM answered with no choices")
    choice = choices[0]
    content = (choice.get("message") or {}).get("content") or ""
    return LLMAnswer(
        content=content if isinstance(content, str) else json.dumps(content),
        tokens=_tokens(choice.get("logprobs")),
        prompt_tokens=_int(completion.get("usage"), "prompt_tokens"),
        completion_tokens=_int(completion.get("usage"), "completion_tokens"),
        model=str(completion.get("model") or model),
        seconds=seconds,
    )


def _tokens(logprobs: Any) -> list[Token] | None:
    """Per-token log-probabilities of the answer (with the top alternatives), when the server sent them."""
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not content:
        return None
    return [
        Token(str(t.get("token", "")), float(t.get("logprob", 0.0)),
              tuple((str(a.get("token", "")), float(a.get("logprob", 0.0))) for a in (t.get("top_logprobs") or [])))
        for t in content
    ]


def _int(usage: Any, name: str) -> int:
    value = usage.get(name) if isinstance(usage, dict) else None
    return int(value) if isinstance(value, (int, float)) else 0


def _retryable(status: int) -> bool:
    return status in (408, 409) or status >= 500


def _backoff(attempt: int) -> float:
    """Seconds before retry `attempt` (1, 2, ...): 0.5 s doubling up to 8 s, with jitter."""
    return min(8.0, 0.5 * 2 ** (attempt - 1)) * random.uniform(0.75, 1.0)


def _retry_after(exc: APIStatusError) -> float | None:
    """The provider's Retry-After (OpenAI also sends retry-after-ms), when it is a number of seconds."""
    headers = exc.response.headers
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            continue
        if 0 <= seconds <= 120:
            return seconds
    return None


def _short(exc: Exception, limit: int = 300) -> str:
    text = str(exc).replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "..."
