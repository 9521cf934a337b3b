"""`<Labels>` on `<Text>`: named spans. The model names each entity by its text and label; the text is
aligned to exact offsets (converters.align), and each span is scored from the tokens of its own label.

Answer form: `[{"text": ..., "label": ...}, ...]` in reading order. Also read: items with other key
names ("entity"/"type", ...), `[text, label]` pairs and `{label: [texts]}`. An empty list is a valid
answer (a sentence with no entities), and so is an empty reviewed result.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import Field, create_model

from converters.align import Mention, align_mentions
from converters.confidence import Node, item_at, key_at, member_at
from converters.controls.base import (
    AnswerPart,
    Region,
    Strict,
    display_names,
    label_lookup,
    norm_label,
    region_id,
    safe_name,
)
from converters.spec import ControlSpec

_TEXT_KEYS = ("text", "entity", "span", "value", "mention", "name")
_LABEL_KEYS = ("label", "type", "entity_type", "category", "tag", "labels")


class LabelsHandler:
    kind = "labels"
    tag = "Labels"
    object_tags: tuple[str, ...] = ("Text",)
    answer_aliases: tuple[str, ...] = ("entities", "ner", "spans")

    def multiple(self, attrs: Mapping[str, str]) -> bool:
        return False

    def spec_problem(self, control: ControlSpec) -> str | None:
        return None if control.labels else "without labels"

    def answer_type(self, control: ControlSpec) -> Any:
        labels: Any = Literal[tuple(control.display_labels())]  # type: ignore[valid-type]
        entity = create_model(
            f"Entity_{safe_name(control.name)}",
            __base__=Strict,
            text=(str, Field(description="the entity exactly as written in the text")),
            label=(labels, Field(description="one of the allowed labels")),
        )
        return list[entity]  # type: ignore[valid-type]

    def answer_description(self, control: ControlSpec) -> str:
        return "every entity mention, in order of appearance"

    def placeholder(self, control: ControlSpec) -> Any:
        return [{"text": "<entity as written>", "label": control.display_labels()[0]}]

    def prompt_lines(self, control: ControlSpec) -> tuple[str, ...]:
        return (
            f'Task "{control.name}": find every named entity mention in the text and give each one a label.',
            "Copy each entity exactly as it is written in the text (same spelling, case and punctuation), one item per",
            "mention, in the order the mentions appear; if the same entity is mentioned twice, list it twice.",
            "Do not label anything that is not one of these labels.",
        )

    def regions(self, control: ControlSpec, data: Mapping[str, Any], part: AnswerPart, dropped: Counter) -> list[Region]:
        text = data.get(control.data_key)
        if not isinstance(text, str):
            return []
        lookup = label_lookup(control)
        allowed = control.display_labels()
        placed: list[Mention] = []
        scores: list[float | None] = []
        for surface, label, label_node in mentions(part.value, part.node):
            stored = lookup.get(norm_label(label))
            if stored is None:
                dropped["unknown_label" if surface else "malformed"] += 1
                continue
            placed.append(Mention(surface, stored))
            scores.append(part.score(label_node, allowed) if surface else None)
        spans, misses = align_mentions(text, placed)
        for miss in misses:
            dropped[miss.reason] += 1
        regions = []
        for span in spans:
            region: Region = {
                "id": region_id(control.name, span.start, span.end, span.label),
                "from_name": control.name,
                "to_name": control.to_name,
                "type": self.kind,
                "value": {"start": span.start, "end": span.end, "text": span.text, "labels": [span.label]},
            }
            score = scores[span.mention_index]
            if score is not None:
                region["score"] = score
            regions.append(region)
        return regions

    def region_errors(self, control: ControlSpec, region: Mapping[str, Any]) -> list[str]:
        return []  # offsets are checked for every span by converters.regions.offset_errors

    def example_answer(self, control: ControlSpec, regions: Sequence[Mapping[str, Any]]) -> Any:
        names = display_names(control)
        items: list[tuple[int, dict[str, str]]] = []
        for region in regions:
            value = region.get("value") or {}
            labels = value.get("labels") or []
            if region.get("type") == self.kind and labels and "text" in value:
                items.append((int(value.get("start", 0)), {"text": value["text"], "label": names.get(labels[0], labels[0])}))
        return [item for _, item in sorted(items, key=lambda pair: pair[0])]

    def region_labels(self, region: Mapping[str, Any]) -> list[str]:
        return [str(label) for label in (region.get("value") or {}).get("labels") or []]

    def coverage_label(self, control: ControlSpec, regions: Sequence[Mapping[str, Any]]) -> str | None:
        return None

    def groupable(self, control: ControlSpec) -> bool:
        return False  # spans need the exact text of their own task


def _first_present(item: Mapping[str, Any], keys: tuple[str, ...]) -> tuple[str, Any] | None:
    """(key, value) of the first key present with a value; a list value stands for its first element."""
    for key in keys:
        if key in item and item[key] not in (None, ""):
            return key, item[key]
    return None


def mentions(raw: Any, node: Node | None = None) -> list[tuple[str, str, Node | None]]:
    """(text, label, where the label is written) for every entity item, in any of the shapes models
    produce: dicts, [text, label] pairs, or {label: [texts]}. A malformed item gives ("", "", None);
    the place is None when `node` is (no logprobs)."""
    if isinstance(raw, Mapping):
        out = []
        for label, texts in raw.items():
            where = key_at(node, label)  # every text under a label shares that label's tokens
            for text in texts if isinstance(texts, list) else [texts]:
                out.append((str(text), str(label), where))
        return out
    if not isinstance(raw, list):
        return []
    found: list[tuple[str, str, Node | None]] = []
    for index, item in enumerate(raw):
        item_node = item_at(node, index)
        if isinstance(item, Mapping):
            text = _first_present(item, _TEXT_KEYS)
            label = _first_present(item, _LABEL_KEYS)
            if text is None or label is None:
                found.append(("", "", None))
                continue
            label_node = member_at(item_node, label[0])
            text_value, label_value = _first_of(text[1]), _first_of(label[1])
            if isinstance(label[1], list):
                label_node = item_at(label_node, 0)
            if text_value is None or label_value is None:
                found.append(("", "", None))
            else:
                found.append((str(text_value), str(label_value), label_node))
        elif isinstance(item, (list, tuple)) and len(item) == 2:
            found.append((str(item[0]), str(item[1]), item_at(item_node, 1)))
        else:
            found.append(("", "", None))
    return found


def _first_of(value: Any) -> Any:
    if isinstance(value, list):
        return value[0] if value else None
    return value
