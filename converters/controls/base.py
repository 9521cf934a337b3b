"""The one Protocol every control kind implements, and the small pieces the kinds share.

A handler is stateless: each method takes the `ControlSpec` (the data read from the config) and returns
data. The rest of the code finds the handler with `converters.controls.handler_for(control)` and never
asks which kind a control is.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from converters.confidence import Node, TokenProbs, item_at
from converters.spec import ControlSpec, LabelSpec

Region = dict[str, Any]

# The answer form's example (converters.output_schema.example_output) names a label with this, never
# with a real label: the embedded model copied the example's label, the first one of the config, into
# its answers (TweetEval zero-shot: "negative", the first label, for 194 of 200 tweets). Structured
# output cannot answer it, and a model without structured output that copies it answers an unknown label
# (dropped), not a wrong one.
LABEL_PLACEHOLDER = "<label>"


class IncompleteAnswer(ValueError):
    """A reviewed result leaves a control without an answer its answer form requires (a single-choice
    control with nothing chosen): the result cannot be shown to the model as an example."""


@dataclass(frozen=True)
class AnswerPart:
    """One control's part of a parsed model answer, and where it is written (for scores).

    `node` is the same value located in the answer's text (converters.confidence.Node); it and `probs`
    are None when there are no usable logprobs or the value cannot be placed, and then every score is
    None."""

    value: Any
    node: Node | None = None
    probs: TokenProbs | None = None

    def score(self, node: Node | None, allowed: Sequence[str]) -> float | None:
        """P(the label written at `node` | some allowed label), from that label's own tokens."""
        if self.probs is None or node is None:
            return None
        return self.probs.probability(node, allowed=allowed)


class ControlHandler(Protocol):
    """What the backend does for one Label Studio control kind. One module per kind implements it
    (converters.controls.labels, converters.controls.choices); adding a kind is adding a module and
    listing it in converters.controls.HANDLERS."""

    kind: str  # the result `type` Label Studio stores for this control; also ControlSpec.kind
    tag: str  # the config tag it predicts, e.g. "Labels"
    object_tags: tuple[str, ...]  # object tags whose text it can read, e.g. ("Text",)
    answer_aliases: tuple[str, ...]  # keys a model uses instead of the control name (one control of the kind)

    def multiple(self, attrs: Mapping[str, str]) -> bool:
        """Whether the tag's attributes allow several values at once."""
        ...

    def spec_problem(self, control: ControlSpec) -> str | None:
        """Why a control read from the config cannot be predicted (e.g. no labels); None when it can."""
        ...

    def answer_type(self, control: ControlSpec) -> Any:
        """The pydantic type of this control's field in the answer (its JSON-schema fragment)."""
        ...

    def answer_description(self, control: ControlSpec) -> str:
        """The schema description of this control's field."""
        ...

    def placeholder(self, control: ControlSpec) -> Any:
        """A small value shown in the prompt as the form of the answer: the answer's shape, with
        placeholders where a label or a text goes (LABEL_PLACEHOLDER, never a real label)."""
        ...

    def prompt_lines(self, control: ControlSpec) -> tuple[str, ...]:
        """The lines the system prompt shows for this control, before its label list."""
        ...

    def regions(
        self, control: ControlSpec, data: Mapping[str, Any], part: AnswerPart, dropped: Counter
    ) -> list[Region]:
        """Label Studio regions for the model's answer to this control, each scored from its own
        tokens; what cannot be placed is counted in `dropped` by reason."""
        ...

    def region_errors(self, control: ControlSpec, region: Mapping[str, Any]) -> list[str]:
        """This kind's rules on one of its regions that Label Studio's own validation misses."""
        ...

    def example_answer(self, control: ControlSpec, regions: Sequence[Mapping[str, Any]]) -> Any:
        """The answer the model should have given, from this control's reviewed regions (possibly
        none). Raises IncompleteAnswer when no valid answer can be formed."""
        ...

    def region_labels(self, region: Mapping[str, Any]) -> list[str]:
        """The label values one of its regions carries (stored values)."""
        ...

    def coverage_label(self, control: ControlSpec, regions: Sequence[Mapping[str, Any]]) -> str | None:
        """The one label a reviewed example stands for, when few-shot selection should balance
        examples across labels (None: not balanced by this control)."""
        ...

    def groupable(self, control: ControlSpec) -> bool:
        """Whether several tasks can be answered in one call for this control."""
        ...


@runtime_checkable
class ReadsOwnLabels(Protocol):
    """A kind whose labels are a tree the SDK flattens (Taxonomy): it reads them from the tag's XML."""

    def read_labels(self, element: Any, descriptions: Mapping[str, str]) -> tuple[LabelSpec, ...]:
        """The control's labels from its XML element (an xml.etree Element)."""
        ...


@runtime_checkable
class HostsPerRegion(Protocol):
    """A span kind (Labels) whose spans carry the answers of perRegion controls on the same object."""

    def accepts_per_region(self, child: ControlSpec) -> bool:
        """Whether a perRegion control of this kind can be answered as an attribute of each span."""
        ...


class Strict(BaseModel):
    """Base of the answer models: no extra keys (strict-mode JSON schema)."""

    model_config = ConfigDict(extra="forbid")


def safe_name(name: str) -> str:
    """A control name as part of a Python identifier (pydantic model and field names)."""
    return "".join(ch if ch.isalnum() else "_" for ch in name)


def norm_label(value: str) -> str:
    """A label as compared with what the model wrote: no spaces, dashes, underscores; casefolded."""
    return re.sub(r"[\s_\-]+", "", str(value)).casefold()


def label_lookup(control: ControlSpec) -> dict[str, str]:
    """Normalised display name / stored value -> the value Label Studio stores."""
    table: dict[str, str] = {}
    for label in control.labels:
        table.setdefault(norm_label(label.display), label.value)
        table.setdefault(norm_label(label.value), label.value)
    return table


def display_names(control: ControlSpec) -> dict[str, str]:
    """Stored value -> display name (what the model answers with)."""
    return {label.value: label.display for label in control.labels}


def region_id(*parts: Any) -> str:
    """A stable region id from what the region is (same answer, same id)."""
    digest = hashlib.sha1("|".join(str(p) for p in parts).encode("utf-8")).hexdigest()
    return digest[:10]


class UnlabelledControl:
    """Protocol defaults for a control kind without a label set (a number, a rating, a free text): its
    regions carry no labels, it adds no label coverage to few-shot selection, and tasks can share a call."""

    def region_labels(self, region: Mapping[str, Any]) -> list[str]:
        return []

    def coverage_label(self, control: ControlSpec, regions: Sequence[Mapping[str, Any]]) -> str | None:
        return None

    def groupable(self, control: ControlSpec) -> bool:
        return True


def pick_choices(
    child: ControlSpec, raw: Any, node: Node | None, part: AnswerPart, dropped: Counter
) -> tuple[list[str], list[float | None]]:
    """The labels of `control` an answer value names (a label or a list of them), in order, without
    repeats or unknown labels (counted in `dropped`), each with its own score; one for a single choice.
    Shared by <Choices> and per-region choices under spans."""
    lookup = label_lookup(child)
    values = raw if isinstance(raw, list) else [raw]
    chosen: list[str] = []
    scores: list[float | None] = []
    for index, value in enumerate(values):
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            dropped["malformed"] += 1
            continue
        stored = lookup.get(norm_label(str(value)))
        if stored is None:
            dropped["unknown_label"] += 1
            continue
        if stored in chosen:
            continue
        chosen.append(stored)
        scores.append(part.score(item_at(node, index) if isinstance(raw, list) else node, child.display_labels()))
        if not child.multiple:
            break
    return chosen, scores
