"""`<Labels>` on `<Text>`: named spans. The model names each entity by its text and label; the text is
aligned to exact offsets (converters.align), and each span is scored from the tokens of its own label.

Answer form: `[{"text": ..., "label": ...}, ...]` in reading order. Also read: items with other key
names ("entity"/"type", ...), `[text, label]` pairs and `{label: [texts]}`. An empty list is a valid
answer (a sentence with no entities), and so is an empty reviewed result.

perRegion controls on the same object (`<Choices perRegion="true">`, `<TextArea perRegion="true">`) are
attributes of each span, answered in the same call: each item gains one key per such control (null
when it does not apply; a `whenLabelValue` control applies only to spans of that label). Label Studio
stores an attribute as its own result item with the span's `id`, the control's `from_name`/`type`, and
the span's start/end in its value: `{"start", "end", "text", "choices": [...]}` for choices, and
`{"start", "end", "text": [texts]}` for a TextArea (whose texts take the `text` key). A chosen
attribute is scored from its own tokens; an unknown one is dropped and the span kept.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import Field, create_model

from converters.align import Mention, align_mentions
from converters.confidence import Node, combine, item_at, key_at, member_at
from converters.controls.base import (
    LABEL_PLACEHOLDER,
    AnswerPart,
    Region,
    Strict,
    display_names,
    label_lookup,
    norm_label,
    pick_choices,
    region_id,
    safe_name,
)
from converters.controls.textarea import ATTRIBUTE_PLACEHOLDER, clean_texts, example_texts
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
            **{f"a{i}_{safe_name(child.name)}": _attribute_field(child) for i, child in enumerate(control.per_region)},
        )
        return list[entity]  # type: ignore[valid-type]

    def answer_description(self, control: ControlSpec) -> str:
        return "every entity mention, in order of appearance"

    def placeholder(self, control: ControlSpec) -> Any:
        item: dict[str, Any] = {"text": "<entity as written>", "label": LABEL_PLACEHOLDER}
        for child in control.per_region:
            item[child.name] = _attribute_placeholder(child)
        return [item]

    def prompt_lines(self, control: ControlSpec) -> tuple[str, ...]:
        return (
            f'Task "{control.name}": find every named entity mention in the text and give each one a label.',
            "Copy each entity exactly as it is written in the text (same spelling, case and punctuation), one item per",
            "mention, in the order the mentions appear; if the same entity is mentioned twice, list it twice.",
            "Do not label anything that is not one of these labels.",
            *_attribute_lines(control),
        )

    def accepts_per_region(self, child: ControlSpec) -> bool:
        return child.kind in _ATTRIBUTE_KINDS and (child.kind != "choices" or bool(child.labels))

    def regions(
        self, control: ControlSpec, data: Mapping[str, Any], part: AnswerPart, dropped: Counter
    ) -> list[Region]:
        text = data.get(control.data_key)
        if not isinstance(text, str):
            return []
        lookup = label_lookup(control)
        allowed = control.display_labels()
        placed: list[Mention] = []
        scores: list[float | None] = []
        origins: list[tuple[Mapping[str, Any] | None, Node | None]] = []
        items = _items(part.value, part.node)
        for index, (surface, label, label_node) in enumerate(mentions(part.value, part.node)):
            stored = lookup.get(norm_label(label))
            if stored is None:
                dropped["unknown_label" if surface else "malformed"] += 1
                continue
            placed.append(Mention(surface, stored))
            scores.append(part.score(label_node, allowed) if surface else None)
            origins.append(items[index] if index < len(items) else (None, None))
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
            item, item_node = origins[span.mention_index]
            if item is not None and control.per_region:
                regions.extend(_attribute_regions(control, region, item, item_node, part, dropped))
        return regions

    def region_errors(self, control: ControlSpec, region: Mapping[str, Any]) -> list[str]:
        return []  # offsets are checked for every span by converters.regions.offset_errors

    def example_answer(self, control: ControlSpec, regions: Sequence[Mapping[str, Any]]) -> Any:
        names = display_names(control)
        items: list[tuple[int, dict[str, Any]]] = []
        for region in regions:
            value = region.get("value") or {}
            labels = value.get("labels") or []
            if region.get("type") == self.kind and region.get("from_name", control.name) == control.name \
                    and labels and "text" in value:
                item: dict[str, Any] = {"text": value["text"], "label": names.get(labels[0], labels[0])}
                for child in control.per_region:
                    item[child.name] = _attribute_answer(child, region, regions)
                items.append((int(value.get("start", 0)), item))
        return [item for _, item in sorted(items, key=lambda pair: pair[0])]

    def region_labels(self, region: Mapping[str, Any]) -> list[str]:
        return [str(label) for label in (region.get("value") or {}).get("labels") or []]

    def coverage_label(self, control: ControlSpec, regions: Sequence[Mapping[str, Any]]) -> str | None:
        return None

    def groupable(self, control: ControlSpec) -> bool:
        return False  # spans need the exact text of their own task


# --- perRegion attributes of spans ---------------------------------------------------------------------
_ATTRIBUTE_KINDS = ("choices", "textarea")


def _attribute_field(child: ControlSpec) -> Any:
    """(type, Field) of one perRegion control's key in each entity item."""
    if child.kind == "choices":
        labels: Any = Literal[tuple(child.display_labels())]  # type: ignore[valid-type]
        if child.multiple:
            return (list[labels], Field(alias=child.name, description="every label that applies (may be empty)"))  # type: ignore[valid-type]
        return (labels | None, Field(alias=child.name, description="the label of this entity, or null"))
    return (str | None, Field(alias=child.name, description="a short text about this entity, or null"))


def _attribute_placeholder(child: ControlSpec) -> Any:
    if child.kind == "choices":
        return [LABEL_PLACEHOLDER] if child.multiple else LABEL_PLACEHOLDER
    return ATTRIBUTE_PLACEHOLDER


def _attribute_lines(control: ControlSpec) -> list[str]:
    if not control.per_region:
        return []
    lines = ["Give each entity item these keys too:"]
    for child in control.per_region:
        when = child.attr("whenLabelValue")
        scope = f" (only for entities labelled {when}; null for the others)" if when else ""
        if child.kind == "choices":
            options = ", ".join(child.display_labels())
            if child.multiple:
                lines.append(f'- "{child.name}": every one of [{options}] that applies to the entity (a list){scope}')
            else:
                lines.append(f'- "{child.name}": one of [{options}] for the entity, or null when none applies{scope}')
        else:
            lines.append(f'- "{child.name}": a short text about the entity, or null when there is nothing to say'
                         + scope)
    return lines


def _applies(child: ControlSpec, stored_label: str, control: ControlSpec) -> bool:
    when = child.attr("whenLabelValue")
    if not when:
        return True
    names = display_names(control)
    return norm_label(when) in (norm_label(stored_label), norm_label(names.get(stored_label, stored_label)))


def _attribute_regions(
    control: ControlSpec, span: Region, item: Mapping[str, Any], item_node: Node | None, part: AnswerPart,
    dropped: Counter,
) -> list[Region]:
    """The perRegion results of one span: same id, the span's offsets, the attribute's value."""
    out: list[Region] = []
    value = span["value"]
    for child in control.per_region:
        raw = _member(item, child.name)
        if raw is None or (isinstance(raw, (list, str)) and not raw):
            continue
        if not _applies(child, value["labels"][0], control):
            dropped["attribute_not_applicable"] += 1
            continue
        node = member_at(item_node, child.name) if part.probs is not None else None
        region: Region = {
            "id": span["id"],
            "from_name": child.name,
            "to_name": child.to_name,
            "type": child.kind,
            "value": {"start": value["start"], "end": value["end"], "text": value["text"]},
        }
        if child.kind == "choices":
            chosen, scores = pick_choices(child, raw, node, part, dropped)
            if not chosen:
                continue
            region["value"]["choices"] = chosen
            score = combine(scores)
            if score is not None:
                region["score"] = score
        else:
            texts = clean_texts(child, raw, dropped)
            if not texts:
                continue
            region["value"]["text"] = texts
        out.append(region)
    return out


def _attribute_answer(child: ControlSpec, span: Mapping[str, Any], regions: Sequence[Mapping[str, Any]]) -> Any:
    """What the reviewer gave this span for one perRegion control (its answer form; null/[] if nothing)."""
    span_value = span.get("value") or {}
    found: list[Mapping[str, Any]] = []
    for region in regions:
        if region.get("from_name") != child.name:
            continue
        value = region.get("value") or {}
        same_id = span.get("id") is not None and region.get("id") == span.get("id")
        same_place = value.get("start") == span_value.get("start") and value.get("end") == span_value.get("end")
        if same_id or same_place:
            found.append(value)
    if child.kind == "choices":
        names = display_names(child)
        chosen: list[str] = []
        for value in found:
            for choice in value.get("choices") or []:
                if names.get(choice, choice) not in chosen:
                    chosen.append(names.get(choice, choice))
        return chosen if child.multiple else (chosen[0] if chosen else None)
    texts: list[str] = []
    for value in found:
        stored = value.get("text")
        texts.extend(t for t in (stored if isinstance(stored, list) else []) if isinstance(t, str) and t.strip())
    return example_texts(child, texts) if texts else None


def _member(item: Mapping[str, Any], name: str) -> Any:
    if name in item:
        return item[name]
    folded = {str(k).casefold(): k for k in item}
    key = folded.get(name.casefold())
    return item[key] if key is not None else None


def _items(raw: Any, node: Node | None) -> list[tuple[Mapping[str, Any] | None, Node | None]]:
    """(the item object, its node) for each entry `mentions` gives, in the same order: only list items
    that are objects can carry perRegion attributes."""
    if not isinstance(raw, list):
        return []
    return [(item if isinstance(item, Mapping) else None, item_at(node, i)) for i, item in enumerate(raw)]


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
