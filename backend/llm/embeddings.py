"""Text embeddings through the `openai` SDK (`client.embeddings.create`) against any OpenAI-compatible
`/v1/embeddings` endpoint (OpenAI, Azure, vLLM, Ollama, llama.cpp server, TEI).

Used for few-shot selection and label shortlists when EMBEDDINGS_MODEL is set. An embeddings outage must
never fail a prediction: a failed call raises EmbeddingsUnavailable (callers fall back to lexical
similarity) and opens a short circuit of `cooldown` seconds during which calls fail at once, so tasks do
not each wait out a timeout. The outage is logged as one warning line naming the error's kind, never the
key or the request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import openai
from openai import OpenAI

from backend.settings import Settings

log = logging.getLogger(__name__)


class EmbeddingsUnavailable(RuntimeError):
    """The embeddings endpoint cannot answer now; the message is the error's kind (no secrets)."""


@dataclass(frozen=True)
class EmbeddingsConfig:
    model: str
    base_url: str | None
    api_key: str
    timeout: float
    max_retries: int

    def __repr__(self) -> str:  # the key never reaches a log line or a traceback
        return f"EmbeddingsConfig(model={self.model!r}, base_url={self.base_url!r})"


def embeddings_config(settings: Settings, llm_base_url: str | None = None) -> EmbeddingsConfig | None:
    """None when EMBEDDINGS_MODEL is unset (lexical selection); otherwise the endpoint to use:
    EMBEDDINGS_BASE_URL, else the LLM's base URL; EMBEDDINGS_API_KEY, else the LLM's key."""
    if not settings.embeddings_model:
        return None
    key = settings.embeddings_api_key.get_secret_value() if settings.embeddings_api_key is not None else ""
    return EmbeddingsConfig(
        model=settings.embeddings_model,
        base_url=settings.embeddings_base_url or llm_base_url or settings.llm_base_url,
        api_key=key or settings.api_key_value(),
        timeout=settings.llm_timeout,
        max_retries=settings.llm_max_retries,
    )


def _kind(exc: Exception) -> str:
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code}"
    return type(exc).__name__


def unit_rows(vectors: Sequence[Sequence[float]]) -> np.ndarray:
    """float32 matrix with every row scaled to length 1 (a zero row stays zero)."""
    matrix = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms > 0, norms, 1.0)


class Embedder:
    """One embeddings model behind one endpoint; thread-safe."""

    def __init__(
        self,
        config: EmbeddingsConfig,
        batch_size: int = 128,
        cooldown: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model = config.model
        self.batch_size = batch_size
        self.cooldown = cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._outage = False
        self._client = OpenAI(
            base_url=config.base_url,
            api_key=config.api_key,
            timeout=config.timeout,
            max_retries=config.max_retries,
        )

    def close(self) -> None:
        self._client.close()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One unit-length float32 row per text, in order; raises EmbeddingsUnavailable."""
        with self._lock:
            if self._clock() < self._down_until:
                raise EmbeddingsUnavailable("cooling down after an embeddings failure")
        try:
            rows: list[list[float]] = []
            for start in range(0, len(texts), self.batch_size):
                batch = [t if t.strip() else " " for t in texts[start : start + self.batch_size]]
                response = self._client.embeddings.create(model=self.model, input=batch)
                data = sorted(response.data, key=lambda item: item.index)
                if len(data) != len(batch):
                    raise ValueError(f"{len(data)} embeddings for {len(batch)} inputs")
                rows.extend(list(item.embedding) for item in data)
            matrix = unit_rows(rows) if rows else np.zeros((0, 0), dtype=np.float32)
        except (openai.APIError, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise self._failed(_kind(exc)) from None
        with self._lock:
            if self._outage:
                self._outage = False
                log.info("embeddings model %s answers again", self.model)
        return matrix

    def _failed(self, kind: str) -> EmbeddingsUnavailable:
        with self._lock:
            first = not self._outage
            self._outage = True
            self._down_until = self._clock() + self.cooldown
        if first:
            log.warning(
                "embeddings model %s unavailable (%s): lexical selection until it answers (next try in %.0f s)",
                self.model,
                kind,
                self.cooldown,
            )
        return EmbeddingsUnavailable(kind)
