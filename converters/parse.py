"""Tolerant reading of a model's answer: the JSON object inside fences, prose or trailing chatter."""

from __future__ import annotations

import json
import re
from typing import Any

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)


class UnparsableAnswer(ValueError):
    """No JSON object could be found in the model's answer."""


def _first_object(text: str) -> dict[str, Any] | None:
    decoder = json.JSONDecoder()
    position = text.find("{")
    while position != -1:
        try:
            value, _ = decoder.raw_decode(text, position)
        except json.JSONDecodeError:
            position = text.find("{", position + 1)
            continue
        if isinstance(value, dict):
            return value
        position = text.find("{", position + 1)
    return None


def parse_answer(content: str | None) -> dict[str, Any]:
    """Return the first JSON object in `content`, looking inside ``` fences first."""
    if not content or not content.strip():
        raise UnparsableAnswer("empty answer")
    text = content.strip()
    try:
        value = json.loads(text)
        if isinstance(value, dict):
            return value
    except json.JSONDecodeError:
        pass
    for block in _FENCE.findall(text):
        found = _first_object(block)
        if found is not None:
            return found
    found = _first_object(text)
    if found is None:
        raise UnparsableAnswer(f"no JSON object in answer ({len(text)} chars)")
    return found
