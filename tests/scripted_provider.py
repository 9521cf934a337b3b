"""A real HTTP server that plays an OpenAI-compatible provider with scripted answers.

Used by the tests and the benchmarks: the backend talks to it through the real `openai` SDK over
loopback, so retries, timeouts, Retry-After and logprobs go through the same code as in production.
`POST /v1/embeddings` answers deterministic vectors (a hashed bag of words by default, or the test's
own `embed` function), as floats or base64 like the real API.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from scripted_batches import BatchEmulator

from prompts import unmark_data


@dataclass
class Reply:
    content: str | None = None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    error: str = "scripted error"
    logprob: float = -0.05  # per token, when the request asks for logprobs
    # tokens that every token's top_logprobs also offers, sharing the rest of the probability mass (the
    # first one that differs from the token): with them a label's score is exp(logprob), not 1.0
    alternatives: tuple[str, ...] = ()


Responder = Callable[[dict[str, Any]], Reply]

_TOKEN = re.compile(r"\w+|\s+|[^\w\s]", re.UNICODE)


def tokens_of(content: str, logprob: float, alternatives: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    def top(token: str) -> list[dict[str, Any]]:
        other = next((a for a in alternatives if a != token), None)
        if other is None or logprob >= 0:
            return []
        rest = math.log(max(1e-12, 1.0 - math.exp(logprob)))
        return [{"token": token, "logprob": logprob, "bytes": list(token.encode())},
                {"token": other, "logprob": rest, "bytes": list(other.encode())}]

    return [
        {"token": t, "logprob": logprob, "bytes": list(t.encode()), "top_logprobs": top(t)}
        for t in _TOKEN.findall(content)
    ]


def hashed_bag_of_words(text: str, dims: int = 256) -> list[float]:
    """A deterministic unit vector: each lower-cased word adds 1 to the dimension its hash picks."""
    vector = [0.0] * dims
    for word in re.findall(r"\w+", text.casefold()):
        vector[int(hashlib.sha1(word.encode()).hexdigest(), 16) % dims] += 1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


def embeddings_payload(body: dict[str, Any], embed: Callable[[str], list[float]]) -> dict[str, Any]:
    inputs = body.get("input")
    texts = [inputs] if isinstance(inputs, str) else list(inputs or [])
    data = []
    for i, text in enumerate(texts):
        vector = embed(str(text))
        if body.get("encoding_format") == "base64":
            encoded: Any = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        else:
            encoded = vector
        data.append({"object": "embedding", "index": i, "embedding": encoded})
    tokens = sum(len(str(t).split()) for t in texts)
    return {"object": "list", "data": data, "model": body.get("model") or "scripted",
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


_ITEM = re.compile(r"\[item (\d+)\]\n(.*?)(?=\n\n\[item \d+\]|\Z)", re.S)


def group_items(text: str) -> list[tuple[int, str]]:
    """The numbered task texts of a grouped request (prompts' group template), [] for a single task."""
    return [(int(n), unmark_data(t.strip())) for n, t in _ITEM.findall(text)]


def last_user_text(body: dict[str, Any]) -> str:
    """The last user message with its data markers taken out (the task's text as it was)."""
    for message in reversed(body.get("messages") or []):
        if message.get("role") == "user":
            return unmark_data(str(message.get("content") or ""))
    return ""


class ScriptedProvider:
    """`responder(request_body) -> Reply`; optional fixed latency and a hard concurrency cap (429)."""

    def __init__(
        self,
        responder: Responder,
        latency: float = 0.0,
        max_concurrency: int | None = None,
        retry_after: float = 0.05,
    ) -> None:
        self.responder = responder
        self.latency = latency
        self.max_concurrency = max_concurrency
        self.retry_after = retry_after
        self.requests: list[dict[str, Any]] = []
        # POST /v1/embeddings: its own request log, a status to play an outage, the vector function
        self.embedding_requests: list[dict[str, Any]] = []
        self.embeddings_status = 200
        self.embed: Callable[[str], list[float]] = hashed_bag_of_words
        # the Batch API (tests/scripted_batches.py): the same responder answers each request line
        self.batches = BatchEmulator(self._answer_line)
        self.rejected_429 = 0
        self.in_flight = 0
        self.peak_in_flight = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def _answer_line(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        reply = self.responder(body)
        if reply.status != 200:
            return reply.status, {"error": {"message": reply.error}}
        return 200, completion(body, reply)

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def start(self) -> str:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out as separate writes: no 40 ms stalls

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def _embeddings(self, body: dict[str, Any]) -> None:
                with provider._lock:
                    provider.embedding_requests.append(body)
                    status = provider.embeddings_status
                if status != 200:
                    self._send(status, {"error": {"message": "scripted embeddings outage"}})
                    return
                self._send(200, embeddings_payload(body, provider.embed))

            def do_GET(self) -> None:
                parts = self.path.rstrip("/").split("/")
                if len(parts) >= 2 and parts[-2] == "batches":
                    batch = provider.batches.retrieve(parts[-1])
                    self._send(200, batch) if batch else self._send(404, {"error": {"message": "no such batch"}})
                    return
                if parts[-1] == "content" and parts[-3] == "files":
                    content = provider.batches.content(parts[-2])
                    if content is None:
                        self._send(404, {"error": {"message": "no such file"}})
                        return
                    self.send_response(200)
                    self.send_header("Content-Type", "application/octet-stream")
                    self.send_header("Content-Length", str(len(content)))
                    self.end_headers()
                    self.wfile.write(content)
                    return
                self._send(200, {"object": "list", "data": [{"id": "scripted", "object": "model"}]})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if self.path.rstrip("/").endswith("/files"):
                    self._send(200, provider.batches.upload(self.headers.get("Content-Type", ""), raw))
                    return
                body = json.loads(raw or b"{}")
                if self.path.rstrip("/").endswith("/batches"):
                    self._send(200, provider.batches.create(body))
                    return
                if self.path.rstrip("/").endswith("/embeddings"):
                    self._embeddings(body)
                    return
                with provider._lock:
                    provider.requests.append(body)
                    if provider.max_concurrency is not None and provider.in_flight >= provider.max_concurrency:
                        provider.rejected_429 += 1
                        over = True
                    else:
                        over = False
                        provider.in_flight += 1
                        provider.peak_in_flight = max(provider.peak_in_flight, provider.in_flight)
                if over:
                    self._send(
                        429,
                        {"error": {"message": "rate limited", "type": "rate_limit"}},
                        {"Retry-After": str(provider.retry_after)},
                    )
                    return
                try:
                    reply = provider.responder(body)
                    time.sleep(provider.latency + reply.delay)
                    if reply.status != 200:
                        self._send(reply.status, {"error": {"message": reply.error}}, reply.headers)
                        return
                    self._send(200, completion(body, reply), reply.headers)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    with provider._lock:
                        provider.in_flight -= 1

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self.base_url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> ScriptedProvider:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def completion(body: dict[str, Any], reply: Reply) -> dict[str, Any]:
    content = reply.content or ""
    choice: dict[str, Any] = {
        "index": 0,
        "message": {"role": "assistant", "content": content},
        "finish_reason": "stop",
        "logprobs": None,
    }
    if body.get("logprobs"):
        choice["logprobs"] = {"content": tokens_of(content, reply.logprob, reply.alternatives)}
    prompt_chars = sum(len(str(m.get("content") or "")) for m in body.get("messages") or [])
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model") or "scripted",
        "choices": [choice],
        "usage": {
            "prompt_tokens": prompt_chars // 4,
            "completion_tokens": len(content) // 4,
            "total_tokens": prompt_chars // 4 + len(content) // 4,
        },
    }
