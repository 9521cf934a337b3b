"""Embedded text embeddings: WordLlama's `l2_supercat` 256-d vectors, bundled inside the `wordllama` wheel.

No network and no download: `WordLlama.load()` of wordllama 0.4.0.post1 looks for the bundled tokenizer
under `tokenizer/` while the wheel ships it under `tokenizers/`, and then tries to download it, which
fails offline. So the two bundled files are loaded here directly: the tokenizer config (with the
`tokenizers` package) and the `embedding.weight` tensor (with `safetensors`), and handed to
`WordLlamaInference`. About 10,000 short texts a second on 2 cores.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

MODEL_NAME = "wordllama-l2_supercat-256"
_WEIGHTS = ("weights", "l2_supercat_256.safetensors")
_TOKENIZER = ("tokenizers", "l2_supercat_tokenizer_config.json")


class LocalEmbeddingsMissing(RuntimeError):
    """The wordllama wheel (or one of its bundled files) is not installed."""


def bundled_files() -> tuple[Path, Path]:
    """(weights, tokenizer config) inside the installed wordllama package."""
    spec = importlib.util.find_spec("wordllama")
    roots = list(spec.submodule_search_locations or []) if spec else []
    if not roots:
        raise LocalEmbeddingsMissing("the wordllama package is not installed: run `make install`")
    root = Path(roots[0])
    weights, tokenizer = root.joinpath(*_WEIGHTS), root.joinpath(*_TOKENIZER)
    for path in (weights, tokenizer):
        if not path.is_file():
            raise LocalEmbeddingsMissing(f"wordllama's bundled file is missing: {path}")
    return weights, tokenizer


class LocalEmbedder:
    """Same interface as the provider `Embedder`: `model`, `embed(texts)`, `close()`. Loaded on first use
    (about 0.1 s), thread-safe, never raises for a text."""

    model = MODEL_NAME

    def __init__(self, batch_size: int = 512) -> None:
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self._inference = None

    def _load(self):  # type: ignore[no-untyped-def]
        with self._lock:
            if self._inference is None:
                from safetensors.numpy import load_file
                from tokenizers import Tokenizer
                from wordllama import WordLlamaInference

                weights, tokenizer_path = bundled_files()
                embedding = load_file(str(weights))["embedding.weight"].astype(np.float32)
                tokenizer = Tokenizer.from_file(str(tokenizer_path))
                self._inference = WordLlamaInference(embedding, tokenizer, binary=False)
            return self._inference

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One unit-length float32 row of 256 per text, in order."""
        if not texts:
            return np.zeros((0, 256), dtype=np.float32)
        inference = self._load()
        rows = [inference.embed([t if t.strip() else " " for t in texts[i:i + self.batch_size]], norm=True)
                for i in range(0, len(texts), self.batch_size)]
        return np.asarray(np.vstack(rows), dtype=np.float32)

    def close(self) -> None:
        self._inference = None
