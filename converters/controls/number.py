"""`<Number>` on `<Text>`: one number for the whole text, within the tag's `min`/`max`, on its `step` grid.

Answer form: a JSON number (an integer when the step and the lower bound are whole numbers, as with
Label Studio's default step of 1). The schema carries the bounds (`minimum`/`maximum`, which OpenAI
strict mode and llama.cpp's grammar both enforce); the answer is then snapped to the step grid
(min + k * step) and dropped, never clamped, when it falls outside the bounds: a number the model did
not give would be an invented one. Also read: a numeric string ("4") and a one-element list. Label
Studio stores `{"number": n}`; its own validation checks the type only, so the bounds and the grid are
this handler's `region_errors`. The score is the probability of the number's own tokens.

`NumberRules` is shared with `<Rating>` (converters.controls.rating), a number from 1 to `maxRating`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field

from converters.controls.base import AnswerPart, IncompleteAnswer, Region, UnlabelledControl, region_id
from converters.spec import ControlSpec

# Values beyond this are not numbers an annotator meant (and lose precision as floats).
_LIMIT = 1e15


@dataclass(frozen=True)
class NumberRules:
    """The bounds and grid of one numeric control."""

    minimum: float | None
    maximum: float | None
    step: float
    integral: bool  # answers are whole numbers (step and lower bound are)

    def snap(self, raw: Any) -> float | int | None:
        """The answer as a number on the grid within the bounds; None when it is not a number or is
        out of bounds (after snapping)."""
        value = to_number(raw)
        if value is None:
            return None
        base = self.minimum if self.minimum is not None else 0.0
        snapped = base + round((value - base) / self.step) * self.step
        snapped = round(snapped, 9)
        if not self.within(snapped):
            return None
        return int(round(snapped)) if self.integral else snapped

    def within(self, value: float) -> bool:
        if self.minimum is not None and value < self.minimum - 1e-9:
            return False
        return not (self.maximum is not None and value > self.maximum + 1e-9)

    def on_grid(self, value: float) -> bool:
        base = self.minimum if self.minimum is not None else 0.0
        k = (value - base) / self.step
        return abs(k - round(k)) < 1e-6

    def describe(self) -> str:
        """"a whole number from 1 to 5" / "a number from 0 to 1 in steps of 0.1"."""
        kind = "a whole number" if self.integral else "a number"
        if self.minimum is not None and self.maximum is not None:
            bounds = f" from {_fmt(self.minimum)} to {_fmt(self.maximum)}"
        elif self.minimum is not None:
            bounds = f" of at least {_fmt(self.minimum)}"
        elif self.maximum is not None:
            bounds = f" of at most {_fmt(self.maximum)}"
        else:
            bounds = ""
        grid = f" in steps of {_fmt(self.step)}" if self.step != 1 else ""
        return kind + bounds + grid

    def answer_type(self) -> Any:
        constraints: dict[str, float | int] = {}
        if self.minimum is not None:
            constraints["ge"] = int(self.minimum) if self.integral else self.minimum
        if self.maximum is not None:
            constraints["le"] = math.floor(self.maximum) if self.integral else self.maximum
        return Annotated[int if self.integral else float, Field(**constraints)]  # type: ignore[call-overload]

    def placeholder(self) -> float | int:
        if self.minimum is not None:
            value = self.minimum
        else:
            value = min(0.0, self.maximum) if self.maximum is not None else 0.0
        return int(value) if self.integral else value

    def errors(self, name: str, value: Any) -> list[str]:
        """Why a stored value is not one of this control's numbers."""
        number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        if number is None or not math.isfinite(number):
            return [f"{name}: {value!r} is not a number"]
        if not self.within(float(number)):
            return [f"{name}: {number} outside {self.describe()}"]
        if not self.on_grid(float(number)):
            return [f"{name}: {number} is not on the grid of {self.describe()}"]
        return []


def to_number(raw: Any) -> float | None:
    """A finite number from what a model wrote (a number, a numeric string, a one-element list)."""
    if isinstance(raw, list) and len(raw) == 1:
        raw = raw[0]
    if isinstance(raw, bool):
        return None
    if isinstance(raw, str):
        try:
            raw = float(raw.strip())
        except ValueError:
            return None
    if not isinstance(raw, (int, float)):
        return None
    try:
        value = float(raw)
    except OverflowError:
        return None
    if not math.isfinite(value) or abs(value) > _LIMIT:
        return None
    return value


def parse_bound(text: str | None) -> float | None:
    """A min/max/step attribute as a finite float; None when absent or not a number."""
    if text is None or not str(text).strip():
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def number_rules(control: ControlSpec) -> NumberRules:
    """The rules of a `<Number>`: min/max when given, step 1 by default (as Label Studio's input)."""
    minimum, maximum = parse_bound(control.attr("min")), parse_bound(control.attr("max"))
    step = parse_bound(control.attr("step")) or 1.0
    integral = float(step).is_integer() and (minimum is None or float(minimum).is_integer())
    return NumberRules(minimum, maximum, abs(step), integral)


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def number_region(handler_kind: str, key: str, control: ControlSpec, value: float | int, part: AnswerPart) -> Region:
    """The region Label Studio stores for a numeric control, scored from the number's own tokens."""
    region: Region = {
        "id": region_id(control.name, value),
        "from_name": control.name,
        "to_name": control.to_name,
        "type": handler_kind,
        "value": {key: value},
    }
    number_node = part.node
    if part.node is not None and isinstance(part.value, list):
        number_node = part.node.items[0] if part.node.items else None
    score = part.score(number_node, ())
    if score is not None:
        region["score"] = score
    return region


def stored_number(regions: Sequence[Mapping[str, Any]], kind: str, key: str) -> Any:
    """The first stored value of this kind in a control's reviewed regions (None when there is none)."""
    for region in regions:
        if region.get("type") == kind:
            value = (region.get("value") or {}).get(key)
            if value is not None:
                return value
    return None


class NumberHandler(UnlabelledControl):
    kind = "number"
    tag = "Number"
    object_tags: tuple[str, ...] = ("Text", "HyperText")
    answer_aliases: tuple[str, ...] = ("number", "value")

    def multiple(self, attrs: Mapping[str, str]) -> bool:
        return False

    def spec_problem(self, control: ControlSpec) -> str | None:
        for name in ("min", "max", "step"):
            if control.attr(name) is not None and parse_bound(control.attr(name)) is None:
                return f"with a {name} that is not a number ({control.attr(name)!r})"
        rules = number_rules(control)
        if rules.step == 0:
            return "with step 0"
        if rules.minimum is not None and rules.maximum is not None and rules.minimum > rules.maximum:
            return f"with min {rules.minimum} > max {rules.maximum}"
        return None

    def answer_type(self, control: ControlSpec) -> Any:
        return number_rules(control).answer_type()

    def answer_description(self, control: ControlSpec) -> str:
        return number_rules(control).describe()

    def placeholder(self, control: ControlSpec) -> Any:
        return number_rules(control).placeholder()

    def prompt_lines(self, control: ControlSpec) -> tuple[str, ...]:
        hint = control.attr("hint")
        lines = (f'Task "{control.name}": answer with {number_rules(control).describe()} for the text.',)
        return (*lines, hint) if hint else lines

    def regions(
        self, control: ControlSpec, data: Mapping[str, Any], part: AnswerPart, dropped: Counter
    ) -> list[Region]:
        rules = number_rules(control)
        if to_number(part.value) is None:
            dropped["malformed"] += 1
            return []
        value = rules.snap(part.value)
        if value is None:
            dropped["out_of_range"] += 1
            return []
        return [number_region(self.kind, "number", control, value, part)]

    def region_errors(self, control: ControlSpec, region: Mapping[str, Any]) -> list[str]:
        if region.get("type") != self.kind:
            return []
        return number_rules(control).errors(control.name, (region.get("value") or {}).get("number"))

    def example_answer(self, control: ControlSpec, regions: Sequence[Mapping[str, Any]]) -> Any:
        value = number_rules(control).snap(stored_number(regions, self.kind, "number"))
        if value is None:
            raise IncompleteAnswer(f"no number for control {control.name!r}")
        return value
