"""Long documents built from CoNLL-2003 sentences, and a scripted provider that behaves like a real one
with limits: it answers the gold entities of the text it is given, cut at its answer cap (`max_tokens`,
4 characters a token, as the scripted server counts usage: the JSON is cut mid-way, as a real provider's
is), and refuses (HTTP 400) a prompt over its context. Used by tests/test_chunking.py and
benchmarks/long_docs.py.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scripted_provider import Reply, last_user_text

DATASETS = Path(os.environ.get("LSLLM_DATASETS", "/work/shared/datasets"))
CONLL = DATASETS / "ner_conll2003_test.json"
CONLL_CONFIG = DATASETS / "ner_conll2003_config.xml"


@dataclass(frozen=True)
class Sentence:
    text: str
    entities: tuple[tuple[int, int, str], ...]  # (start, end, label) in the sentence


def conll_sentences(path: Path = CONLL) -> list[Sentence]:
    """The test split's sentences with their gold spans (sentences without text skipped)."""
    out = []
    for row in json.loads(path.read_text(encoding="utf-8")):
        text = row["data"]["text"]
        spans = []
        for annotation in row.get("annotations") or []:
            for region in annotation.get("result") or []:
                v = region["value"]
                spans.append((v["start"], v["end"], v["labels"][0]))
        if text.strip():
            out.append(Sentence(text, tuple(sorted(spans))))
    return out


def join_document(sentences: Sequence[Sentence], per_paragraph: int = 12) -> tuple[str, list[tuple[int, int, str]]]:
    """Sentences joined one per line, a blank line every `per_paragraph`: (text, gold spans in it)."""
    parts: list[str] = []
    gold: list[tuple[int, int, str]] = []
    position = 0
    for i, sentence in enumerate(sentences):
        if i:
            sep = "\n\n" if i % per_paragraph == 0 else "\n"
            parts.append(sep)
            position += len(sep)
        parts.append(sentence.text)
        gold.extend((position + s, position + e, label) for s, e, label in sentence.entities)
        position += len(sentence.text)
    return "".join(parts), gold


class GoldProvider:
    """responder(body) -> Reply: the gold entities of every known sentence in the task's text (one per
    line), in reading order, cut at the answer cap; HTTP 400 for a prompt over `context_tokens`."""

    def __init__(self, sentences: Sequence[Sentence], context_tokens: int = 8192, control: str = "label") -> None:
        self.gold = {s.text: [{"text": s.text[a:b], "label": label} for a, b, label in s.entities] for s in sentences}
        self.context_tokens = context_tokens
        self.control = control
        self.refused = 0
        self.truncated = 0

    def __call__(self, body: dict[str, Any]) -> Reply:
        prompt_chars = sum(len(str(m.get("content") or "")) for m in body.get("messages") or [])
        if prompt_chars // 4 > self.context_tokens:
            self.refused += 1
            return Reply(status=400, error=f"This model's maximum context length is {self.context_tokens} tokens")
        entities: list[dict[str, str]] = []
        for line in last_user_text(body).split("\n"):
            entities.extend(self.gold.get(line.strip(), []))
        content = json.dumps({self.control: entities})
        cap = int(body.get("max_tokens") or 1024) * 4
        if len(content) > cap:
            self.truncated += 1
            content = content[:cap]
        return Reply(content=content)
