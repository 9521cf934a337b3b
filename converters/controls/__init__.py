"""One handler per Label Studio control kind, behind one Protocol (`ControlHandler`).

Each kind is one module: its answer's JSON-schema fragment, its prompt lines, answer -> regions with its
own scores, reviewed result -> example answer, the checks on its regions, and whether tasks can share a
call. `ControlSpec.kind` (the result type Label Studio stores) names the handler; everything else loops
over the spec's controls and asks `handler_for(control)`. A new control kind is a new module listed in
`HANDLERS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from converters.controls.base import AnswerPart, ControlHandler, IncompleteAnswer, Region
from converters.controls.choices import ChoicesHandler
from converters.controls.labels import LabelsHandler
from converters.controls.number import NumberHandler
from converters.controls.rating import RatingHandler
from converters.controls.taxonomy import TaxonomyHandler
from converters.controls.textarea import TextAreaHandler
from converters.spec import ControlSpec, TaskSpec

__all__ = [
    "HANDLERS",
    "AnswerPart",
    "ControlHandler",
    "IncompleteAnswer",
    "Region",
    "handler_for",
    "handler_for_region",
    "handler_for_tag",
]

# The kinds this backend predicts, in no particular order. Handlers are stateless constants.
HANDLERS: tuple[ControlHandler, ...] = (
    LabelsHandler(),
    ChoicesHandler(),
    TextAreaHandler(),
    NumberHandler(),
    RatingHandler(),
    TaxonomyHandler(),
)

_BY_KIND: Mapping[str, ControlHandler] = MappingProxyType({handler.kind: handler for handler in HANDLERS})
_BY_TAG: Mapping[str, ControlHandler] = MappingProxyType({handler.tag.casefold(): handler for handler in HANDLERS})


def handler_for(control: ControlSpec) -> ControlHandler:
    """The handler of a control's kind; KeyError names a kind no handler implements."""
    try:
        return _BY_KIND[control.kind]
    except KeyError:
        raise KeyError(f"no handler for control kind {control.kind!r} (control {control.name!r})") from None


def handler_for_tag(tag: str) -> ControlHandler | None:
    """The handler that predicts a config tag such as "Labels" (None: this backend does not)."""
    return _BY_TAG.get(tag.casefold())


def handler_for_region(region: Mapping[str, Any]) -> ControlHandler | None:
    """The handler of a Label Studio result region, by its `type` (None: not a kind handled here)."""
    return _BY_KIND.get(str(region.get("type")))


def span_controls(spec: TaskSpec) -> list[ControlSpec]:
    """The controls that name spans in a text (`<Labels>`): what a gazetteer, chunking and span F1 serve."""
    return [c for c in spec.controls if isinstance(handler_for(c), LabelsHandler)]


def single_choice_controls(spec: TaskSpec) -> list[ControlSpec]:
    """The single-choice classification controls (`<Choices>` without choice="multiple"): what a student
    learns and what accuracy scores."""
    return [c for c in spec.controls if isinstance(handler_for(c), ChoicesHandler) and not c.multiple]
