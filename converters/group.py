"""Several classification tasks in one LLM call: the answer form and how it is split back per task.

One call for k tasks pays the instructions and label list once instead of k times and cuts the
per-call HTTP cost (about 1 ms of CPU per call from Python, measured) by k. Only configs whose every
control's handler allows it can be grouped (`<Choices>` does; entity spans need the exact text of their
own task). The model answers `{"items": [{"item": 1, <control>: ...}, ...]}`; each item is matched
to its task by its number (by position when the number is missing), and a task the answer leaves out
gets no prediction rather than a guessed one.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from converters.controls import handler_for
from converters.spec import TaskSpec

ITEM_KEY = "item"


def groupable(spec: TaskSpec) -> bool:
    """Whether tasks of this spec can share one call: every control's handler says so."""
    return bool(spec.controls) and all(handler_for(control).groupable(control) for control in spec.controls)


def group_schema(single: Mapping[str, Any], n: int) -> dict[str, Any]:
    """The JSON schema of an answer for n tasks, built from the schema of a single one (strict-mode
    form: every property required, no extra keys; exactly n items, which grammar-constrained servers
    such as llama.cpp enforce)."""
    item = copy.deepcopy(dict(single))
    defs = item.pop("$defs", None)
    item["properties"] = {ITEM_KEY: {"type": "integer", "description": "the item's number"},
                          **item.get("properties", {})}
    item["required"] = [ITEM_KEY, *item.get("required", [])]
    item.pop("title", None)
    schema: dict[str, Any] = {
        "type": "object",
        "title": "Annotations",
        "properties": {"items": {"type": "array", "description": "one object per item, in order", "items": item,
                                 "minItems": n, "maxItems": n}},
        "required": ["items"],
        "additionalProperties": False,
    }
    if defs:
        schema["$defs"] = defs
    return schema


def split_group_answer(answer: Mapping[str, Any], n: int) -> list[dict[str, Any] | None]:
    """Per task (in order), its answer without the item number, or None when the model left it out."""
    items = answer.get("items")
    if not isinstance(items, list):
        return [None] * n
    out: list[dict[str, Any] | None] = [None] * n
    for position, item in enumerate(items):
        if not isinstance(item, Mapping):
            continue
        number = item.get(ITEM_KEY)
        index = number - 1 if isinstance(number, int) and not isinstance(number, bool) else position
        if 0 <= index < n and out[index] is None:
            out[index] = {k: v for k, v in item.items() if k != ITEM_KEY}
    return out


def group_example(single_example: Mapping[str, Any], n: int) -> dict[str, Any]:
    """The placeholder answer shown in the prompt for a group of n items."""
    return {"items": [{ITEM_KEY: i + 1, **single_example} for i in range(min(n, 2))]}
