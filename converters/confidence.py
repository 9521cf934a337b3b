"""Scores from token logprobs: the probability the model gave to the tokens that carry each decision.

A choice's score is the probability of the chosen label among the allowed labels at the position where
the model wrote it (top_logprobs renormalised over label starts); an entity's score is the same for its
label. Each decision is found by its place in the answer, not by searching the text for its spelling:
the answer's JSON is read again with the character span of every value (`Node`), so a label is scored
from its own tokens whatever the answer's shape ({"text", "label"} items in either key order, [text,
label] pairs, or {label: [texts]}), and a value that cannot be placed gets None, never a neighbour's
number. Without logprobs every score is None, and the prediction score falls back to None rather than a
made-up number.
"""

from __future__ import annotations

import bisect
import json
import json.scanner
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Token:
    text: str
    logprob: float
    alternatives: tuple[tuple[str, float], ...] = ()  # top_logprobs at this position


@dataclass(frozen=True)
class Node:
    """One JSON value of the answer and where it is written: content[start:end] (a string with its
    quotes). Arrays keep their elements, objects their (key, value) pairs in writing order."""

    start: int
    end: int
    value: Any
    items: tuple[Node, ...] = ()
    members: tuple[tuple[Node, Node], ...] = ()


def item_at(node: Node | None, index: int) -> Node | None:
    """The index-th element of an array node (None when there is no such node)."""
    if node is None or not 0 <= index < len(node.items):
        return None
    return node.items[index]


def member_at(node: Node | None, key: str) -> Node | None:
    """The value written under `key` in an object node (the last one, as JSON parsers keep)."""
    pair = _pair(node, key)
    return pair[1] if pair else None


def key_at(node: Node | None, key: str) -> Node | None:
    """The key string itself in an object node: where a {label: [texts]} answer wrote its label."""
    pair = _pair(node, key)
    return pair[0] if pair else None


def _pair(node: Node | None, key: str) -> tuple[Node, Node] | None:
    if node is None:
        return None
    for pair in reversed(node.members):
        if pair[0].value == key:
            return pair
    return None


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

    def locate(self, answer: Mapping[str, Any]) -> Node | None:
        """The JSON object in the content that parses to `answer`, with the place of every value.

        The content may carry fences or prose around the object (converters.parse reads through them),
        so every '{' is tried in order; None when no object there equals the answer."""
        if not self.usable:
            return None
        position = self.content.find("{")
        while position != -1:
            try:
                node, _ = _read(self.content, position)
            except (ValueError, IndexError, RecursionError):
                node = None
            if node is not None and node.value == answer:
                return node
            position = self.content.find("{", position + 1)
        return None

    def _covering(self, position: int) -> int | None:
        """The index of the token that writes the character at `position` (None: no such token)."""
        first = bisect.bisect_right(self.starts, position) - 1
        while first < len(self.tokens) and self.starts[first] + len(self.tokens[first].text) <= position:
            first += 1  # skip empty tokens that start at the same place
        return first if 0 <= first < len(self.tokens) else None

    def probability(self, node: Node | None, allowed: Sequence[str] = ()) -> float | None:
        """Probability of the tokens that wrote the value at `node` (None when it cannot be placed).

        With `allowed` (the label names), the first token's probability is renormalised over the
        top alternatives that could start an allowed label: P(this label | some label). That is the
        honest number under grammar-constrained decoding, where raw logprobs come from the
        unconstrained distribution."""
        if node is None or not self.usable or isinstance(node.value, (dict, list)) or node.value is None:
            return None
        start, end = (node.start + 1, node.end - 1) if isinstance(node.value, str) else (node.start, node.end)
        if start >= end or end > len(self.content):
            return None
        first = self._covering(start)
        if first is None:
            return None
        covering = [self.tokens[first]]
        index = first + 1
        while index < len(self.tokens) and self.starts[index] < end:
            covering.append(self.tokens[index])
            index += 1
        if allowed:
            return _renormalised(covering[0], start - self.starts[first], allowed)
        return _clamp(math.exp(sum(t.logprob for t in covering)))

    def distribution(self, node: Node | None, allowed: Sequence[str]) -> dict[str, float] | None:
        """P(each allowed label | some allowed label) at the place of the string value at `node`: what
        the model would have written there, read from the tokens it wrote and their top alternatives.

        The answer's path is followed token by token; at each token, the alternatives that could still
        spell some allowed label are renormalised (as `probability` does for the first token, the honest
        reading under grammar-constrained decoding), and an alternative that leaves the path hands its
        share to the labels only it can spell (equally among them: nothing shows how it would go on).
        Labels none of the top alternatives reach get 0. None when the value cannot be placed or the
        written path spells no allowed label."""
        if node is None or not self.usable or not isinstance(node.value, str) or not allowed:
            return None
        spelled = {label: _spellings(label) for label in allowed}

        def spells(written: str) -> list[str]:
            return [label for label, forms in spelled.items()
                    if any(form.startswith(written) or written.startswith(form) for form in forms)]

        start = node.start + 1  # after the opening quote; the closing one (at node.end - 1) ends the label
        first = self._covering(start)
        if first is None:
            return None
        mass = dict.fromkeys(allowed, 0.0)
        path, written, index = 1.0, "", first
        while index < len(self.tokens) and self.starts[index] < node.end:
            token = self.tokens[index]
            head = token.text[:start - self.starts[index]] if index == first else ""
            here = written + token.text[len(head):]
            on_path = set(spells(here))
            if not on_path:
                return None
            chosen_p = math.exp(token.logprob)
            total, stay, leaving = chosen_p, chosen_p, []
            seen = {token.text}
            for text, logprob in token.alternatives:
                if text in seen or not text.startswith(head) or len(text) == len(head):
                    continue
                seen.add(text)
                reach = spells(written + text[len(head):])
                if not reach:
                    continue
                p = math.exp(logprob)
                total += p
                own = [label for label in reach if label not in on_path]
                if own:
                    leaving.append((p, own))
                else:
                    stay += p  # another spelling of the same labels: the path's own mass
            for p, own in leaving:
                for label in own:
                    mass[label] += path * p / total / len(own)
            path *= stay / total
            written = here
            index += 1
        ends = spells(written)
        for label in ends:
            mass[label] += path / len(ends)
        total_mass = sum(mass.values())
        if total_mass <= 0:
            return None
        return {label: _clamp(p / total_mass) for label, p in mass.items()}

    def mean(self) -> float | None:
        """Geometric-mean token probability of the whole answer."""
        if not self.usable:
            return None
        return _clamp(math.exp(sum(t.logprob for t in self.tokens) / len(self.tokens)))


_SPACE = re.compile(r"[ \t\n\r]*")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)  # decoded (and checked) by json.loads
_CONSTANTS = {"true": True, "false": False, "null": None, "NaN": math.nan, "Infinity": math.inf,
              "-Infinity": -math.inf}


def _read(text: str, at: int) -> tuple[Node, int]:
    """One JSON value starting at `at` (after optional white space): its Node and where it ends.

    Accepts what json.loads accepts; raises ValueError (or IndexError at the end of the text)."""
    at = _SPACE.match(text, at).end()  # type: ignore[union-attr]
    char = text[at]
    if char == '"':
        found = _STRING.match(text, at)
        if found is None:
            raise ValueError(f"unterminated string at {at}")
        return Node(at, found.end(), json.loads(found.group())), found.end()
    if char == "{":
        return _read_object(text, at)
    if char == "[":
        return _read_array(text, at)
    for literal, constant in _CONSTANTS.items():
        if text.startswith(literal, at):
            return Node(at, at + len(literal), constant), at + len(literal)
    number = json.scanner.NUMBER_RE.match(text, at)
    if number is None:
        raise ValueError(f"no JSON value at {at}")
    integer, fraction, exponent = number.groups()
    value = float(integer + (fraction or "") + (exponent or "")) if fraction or exponent else int(integer)
    return Node(at, number.end(), value), number.end()


def _read_object(text: str, at: int) -> tuple[Node, int]:
    members: list[tuple[Node, Node]] = []
    position = _SPACE.match(text, at + 1).end()  # type: ignore[union-attr]
    if text[position] == "}":
        return Node(at, position + 1, {}), position + 1
    while True:
        if text[position] != '"':
            raise ValueError(f"expected a key at {position}")
        key, position = _read(text, position)
        position = _SPACE.match(text, position).end()  # type: ignore[union-attr]
        if text[position] != ":":
            raise ValueError(f"expected ':' at {position}")
        value, position = _read(text, position + 1)
        members.append((key, value))
        position = _SPACE.match(text, position).end()  # type: ignore[union-attr]
        if text[position] == "}":
            plain = {k.value: v.value for k, v in members}
            return Node(at, position + 1, plain, members=tuple(members)), position + 1
        if text[position] != ",":
            raise ValueError(f"expected ',' or '}}' at {position}")
        position = _SPACE.match(text, position + 1).end()  # type: ignore[union-attr]


def _read_array(text: str, at: int) -> tuple[Node, int]:
    items: list[Node] = []
    position = _SPACE.match(text, at + 1).end()  # type: ignore[union-attr]
    if text[position] == "]":
        return Node(at, position + 1, []), position + 1
    while True:
        item, position = _read(text, position)
        items.append(item)
        position = _SPACE.match(text, position).end()  # type: ignore[union-attr]
        if text[position] == "]":
            return Node(at, position + 1, [i.value for i in items], items=tuple(items)), position + 1
        if text[position] != ",":
            raise ValueError(f"expected ',' or ']' at {position}")
        position += 1


def _renormalised(token: Token, offset: int, allowed: Sequence[str]) -> float:
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


def _spellings(label: str) -> set[str]:
    """How a label can be written inside a JSON string, with the closing quote that ends it."""
    return {json.dumps(label)[1:-1] + '"', json.dumps(label, ensure_ascii=False)[1:-1] + '"'}


def _clamp(value: float) -> float:
    if math.isnan(value):
        return 0.0
    return max(0.0, min(1.0, value))


def combine(scores: Sequence[float | None]) -> float | None:
    known = [s for s in scores if s is not None]
    if not known:
        return None
    return _clamp(sum(known) / len(known))
