"""Scores from token logprobs: the probability the model gave to the tokens that carry each decision.

A choice's score is the probability of the chosen label among the allowed labels at the position where
the model wrote it (top_logprobs renormalised over label starts); an entity's score is the same for its
label. Without logprobs every
score is None, and the prediction score falls back to None rather than a made-up number.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Token:
    text: str
    logprob: float
    alternatives: tuple[tuple[str, float], ...] = ()  # top_logprobs at this position


class TokenProbs:
    """Token logprobs laid over the answer's characters."""

    def __init__(self, content: str, tokens: Sequence[Token]) -> None:
        self.content = content
        self.tokens = list(tokens)
        self.starts: list[int] = []
        position = 0
        for token in self.tokens:
            self.starts.append(position)
            position += len(token.text)
        # Some servers send byte-level tokens whose text does not rebuild the answer: no scores then.
        self.usable = bool(self.tokens) and "".join(t.text for t in self.tokens) == content
        self.cursor = 0

    def _tokens_in(self, start: int, end: int) -> list[Token]:
        return [
            token
            for token, token_start in zip(self.tokens, self.starts)
            if token_start < end and token_start + len(token.text) > start
        ]

    def _find(self, value: str) -> tuple[int, int] | None:
        needle = json.dumps(value, ensure_ascii=False)[1:-1]
        if not needle:
            return None
        at = self.content.find(needle, self.cursor)
        if at == -1:
            return None
        self.cursor = at + len(needle)
        return at, at + len(needle)

    def probability(
        self, value: str, allowed: Sequence[str] = ()
    ) -> float | None:
        """Probability of the tokens spelling `value`, searched after the previous match.

        With `allowed` (the label names), the first token's probability is renormalised over the
        top alternatives that could start an allowed label: P(this label | some label). That is the
        honest number under grammar-constrained decoding, where raw logprobs come from the
        unconstrained distribution."""
        if not self.usable:
            return None
        found = self._find(value)
        if found is None:
            return None
        tokens = self._tokens_in(*found)
        if not tokens:
            return None
        if allowed:
            return _renormalised(tokens[0], value, found[0] - self.starts[self.tokens.index(tokens[0])], allowed)
        return _clamp(math.exp(sum(t.logprob for t in tokens)))

    def skip_to(self, value: str) -> None:
        """Move the cursor past the next occurrence of a key such as a control name."""
        if self.usable:
            self._find(value)

    def mean(self) -> float | None:
        """Geometric-mean token probability of the whole answer."""
        if not self.usable:
            return None
        return _clamp(math.exp(sum(t.logprob for t in self.tokens) / len(self.tokens)))


def _renormalised(token: Token, value: str, offset: int, allowed: Sequence[str]) -> float:
    """P(token) / sum of P(alternatives that begin some allowed label at this position).

    `offset` is how far into the token the value starts (a token like ':"pos' carries JSON before it)."""
    prefix = token.text[:offset] if offset > 0 else ""
    chosen_p = math.exp(token.logprob)
    total = chosen_p
    seen = {token.text}
    for text, logprob in token.alternatives:
        if text in seen:
            continue
        seen.add(text)
        if prefix and not text.startswith(prefix):
            continue
        piece = text[len(prefix):] if prefix else text
        piece = piece.lstrip(' "')
        if piece and any(label.startswith(piece) or piece.startswith(label) for label in allowed):
            total += math.exp(logprob)
    if total <= 0:
        return 0.0
    return _clamp(chosen_p / total)


def _clamp(value: float) -> float:
    if math.isnan(value):
        return 0.0
    return max(0.0, min(1.0, value))


def combine(scores: Sequence[float | None]) -> float | None:
    known = [s for s in scores if s is not None]
    if not known:
        return None
    return _clamp(sum(known) / len(known))
