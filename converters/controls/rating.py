"""`<Rating>` on `<Text>`: a whole number of stars from 1 to `maxRating` (5 by default, as in Label Studio).

Answer form: an integer; the schema bounds it (1..maxRating), a numeric string or a float on a whole
number is read as that number, anything else or out of range is dropped (not clamped). Label Studio
stores `{"rating": n}`; label-studio-sdk's RatingTag checks 0 <= n <= maxRating, and 0 (no stars) is
not an answer here. The score is the probability of the number's own token(s).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from converters.controls.base import AnswerPart, IncompleteAnswer, Region, UnlabelledControl
from converters.controls.number import NumberRules, number_region, parse_bound, stored_number, to_number
from converters.spec import ControlSpec

DEFAULT_MAX_RATING = 5


def rating_rules(control: ControlSpec) -> NumberRules:
    top = parse_bound(control.attr("maxRating"))
    maximum = float(int(top)) if top is not None and top >= 1 else float(DEFAULT_MAX_RATING)
    return NumberRules(minimum=1.0, maximum=maximum, step=1.0, integral=True)


class RatingHandler(UnlabelledControl):
    kind = "rating"
    tag = "Rating"
    object_tags: tuple[str, ...] = ("Text", "HyperText")
    answer_aliases: tuple[str, ...] = ("rating", "stars", "score")

    def multiple(self, attrs: Mapping[str, str]) -> bool:
        return False

    def spec_problem(self, control: ControlSpec) -> str | None:
        top = control.attr("maxRating")
        if top is not None and (parse_bound(top) is None or (parse_bound(top) or 0) < 1):
            return f"with maxRating {top!r} (not a number of at least 1)"
        return None

    def answer_type(self, control: ControlSpec) -> Any:
        return rating_rules(control).answer_type()

    def answer_description(self, control: ControlSpec) -> str:
        return f"the number of stars, {rating_rules(control).describe()}"

    def placeholder(self, control: ControlSpec) -> Any:
        return rating_rules(control).placeholder()

    def prompt_lines(self, control: ControlSpec) -> tuple[str, ...]:
        top = int(rating_rules(control).maximum or DEFAULT_MAX_RATING)
        lines = (f'Task "{control.name}": rate the text from 1 to {top} stars ({top} is best); '
                 "answer with the number.",)
        hint = control.attr("hint")
        return (*lines, hint) if hint else lines

    def regions(
        self, control: ControlSpec, data: Mapping[str, Any], part: AnswerPart, dropped: Counter
    ) -> list[Region]:
        number = to_number(part.value)
        if number is None:
            dropped["malformed"] += 1
            return []
        if not number.is_integer():  # 3.5 stars is not a rating; do not round it into one
            dropped["out_of_range"] += 1
            return []
        value = rating_rules(control).snap(number)
        if value is None:
            dropped["out_of_range"] += 1
            return []
        return [number_region(self.kind, "rating", control, value, part)]

    def region_errors(self, control: ControlSpec, region: Mapping[str, Any]) -> list[str]:
        if region.get("type") != self.kind:
            return []
        return rating_rules(control).errors(control.name, (region.get("value") or {}).get("rating"))

    def example_answer(self, control: ControlSpec, regions: Sequence[Mapping[str, Any]]) -> Any:
        value = rating_rules(control).snap(stored_number(regions, self.kind, "rating"))
        if value is None:
            raise IncompleteAnswer(f"no rating for control {control.name!r}")
        return value
