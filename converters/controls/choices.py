"""`<Choices>` on `<Text>`/`<HyperText>`: classification of the whole text. The answer is one label, or a
list of labels for `choice="multiple"`; each chosen label is scored from its own tokens.

A reviewed result with nothing chosen: for a multiple-choice control that is the answer "none of these
apply" (`[]`, which the schema allows) and a valid example. A single-choice answer must name a label
(the schema's enum has no "none"), so a submitted result with nothing chosen is incomplete: showing it
would teach the model to leave the key out, so it is not made into an example (IncompleteAnswer).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from converters.confidence import combine
from converters.controls.base import (
    LABEL_PLACEHOLDER,
    AnswerPart,
    IncompleteAnswer,
    Region,
    display_names,
    pick_choices,
    region_id,
)
from converters.spec import ControlSpec


class ChoicesHandler:
    kind = "choices"
    tag = "Choices"
    object_tags: tuple[str, ...] = ("Text", "HyperText")
    answer_aliases: tuple[str, ...] = (
        "choice", "choices", "label", "labels", "sentiment", "intent", "class", "category",
    )

    def multiple(self, attrs: Mapping[str, str]) -> bool:
        return attrs.get("choice") == "multiple"

    def spec_problem(self, control: ControlSpec) -> str | None:
        return None if control.labels else "without labels"

    def answer_type(self, control: ControlSpec) -> Any:
        labels: Any = Literal[tuple(control.display_labels())]  # type: ignore[valid-type]
        if control.multiple:
            return list[labels]  # type: ignore[valid-type]
        return labels

    def answer_description(self, control: ControlSpec) -> str:
        return "all labels that apply" if control.multiple else "the single best label"

    def placeholder(self, control: ControlSpec) -> Any:
        return [LABEL_PLACEHOLDER] if control.multiple else LABEL_PLACEHOLDER

    def prompt_lines(self, control: ControlSpec) -> tuple[str, ...]:
        if control.multiple:
            return (f'Task "{control.name}": choose every label that applies to the text (one or more).',)
        return (f'Task "{control.name}": choose the single label that fits the text best.',)

    def regions(
        self, control: ControlSpec, data: Mapping[str, Any], part: AnswerPart, dropped: Counter
    ) -> list[Region]:
        chosen, scores = pick_choices(control, part.value, part.node, part, dropped)
        if not chosen:
            return []
        region: Region = {
            "id": region_id(control.name, *chosen),
            "from_name": control.name,
            "to_name": control.to_name,
            "type": self.kind,
            "value": {"choices": chosen},
        }
        score = combine(scores)
        if score is not None:
            region["score"] = score
        return [region]

    def region_errors(self, control: ControlSpec, region: Mapping[str, Any]) -> list[str]:
        if region.get("type") != self.kind:
            return []
        if not control.multiple and len((region.get("value") or {}).get("choices") or []) > 1:
            return [f"several choices for single-choice control {control.name!r}"]
        return []

    def example_answer(self, control: ControlSpec, regions: Sequence[Mapping[str, Any]]) -> Any:
        names = display_names(control)
        chosen: list[str] = []
        for region in regions:
            if region.get("type") != self.kind:
                continue
            for value in (region.get("value") or {}).get("choices") or []:
                name = names.get(value, value)
                if name not in chosen:
                    chosen.append(name)
        if control.multiple:
            return chosen
        if not chosen:
            raise IncompleteAnswer(f"nothing chosen for single-choice control {control.name!r}")
        return chosen[0]

    def region_labels(self, region: Mapping[str, Any]) -> list[str]:
        return [str(label) for label in (region.get("value") or {}).get("choices") or []]

    def coverage_label(self, control: ControlSpec, regions: Sequence[Mapping[str, Any]]) -> str | None:
        if control.multiple:
            return None
        for region in regions:
            choices = (region.get("value") or {}).get("choices") or []
            if choices:
                return str(choices[0])
        return None

    def groupable(self, control: ControlSpec) -> bool:
        return True
