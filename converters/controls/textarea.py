"""`<TextArea>` on `<Text>`: a free-text answer (a summary, a rationale, a normalised value).

Answer form: one string; a list of strings when the tag's `maxSubmissions` allows more than one text
(at most that many are kept). `rows` (the box's height) becomes a length hint in the prompt. Label
Studio stores `{"text": [texts]}`. Texts are stripped, empty ones dropped, and each is cut at
`MAX_CHARS` characters (a runaway generation must not become a megabyte annotation; counted in
`dropped["truncated"]`). The few-shot examples are the reviewers' own texts.

The prompt's example of the answer form writes a text as `TEXT_PLACEHOLDER` (`ATTRIBUTE_PLACEHOLDER` for
a perRegion TextArea), and a small model copies it: the embedded model answered a TextArea `"<text>"`.
A copied placeholder is not an answer, so it is dropped (`dropped["placeholder"]`), never stored.

Score: none. A free text has no alternatives to renormalise over, and the mean token probability of a
sentence measures how fluent it is, not whether it is right; the task's score then falls back to the
answer's mean token probability (converters.regions), as for any answer without a scored decision.
The same functions answer a perRegion TextArea under spans (converters.controls.labels).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from converters.controls.base import AnswerPart, IncompleteAnswer, Region, UnlabelledControl, region_id
from converters.spec import ControlSpec

MAX_CHARS = 4000
TEXT_PLACEHOLDER = "<text>"
ATTRIBUTE_PLACEHOLDER = "<text about the entity>"
_PLACEHOLDERS = frozenset({TEXT_PLACEHOLDER, ATTRIBUTE_PLACEHOLDER})


def max_texts(control: ControlSpec) -> int | None:
    """How many texts the control takes (`maxSubmissions`); None when unlimited."""
    raw = control.attr("maxSubmissions")
    try:
        value = int(str(raw))
    except ValueError:
        return None
    return value if value > 0 else None


def several(control: ControlSpec) -> bool:
    """The answer is a list of texts (maxSubmissions > 1); otherwise one string."""
    limit = max_texts(control)
    return limit is not None and limit > 1


def clean_texts(control: ControlSpec, raw: Any, dropped: Counter) -> list[str]:
    """The texts to store from what a model wrote: strings (numbers read as text), stripped, non-empty,
    not the prompt's placeholder, cut at MAX_CHARS, at most maxSubmissions (one when the answer form is a
    single string)."""
    values = raw if isinstance(raw, list) else [raw]
    texts: list[str] = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            dropped["malformed"] += 1
            continue
        text = str(value).strip()
        if not text:
            continue
        if text in _PLACEHOLDERS:
            dropped["placeholder"] += 1
            continue
        if len(text) > MAX_CHARS:
            dropped["truncated"] += 1
            text = text[:MAX_CHARS].rstrip()
        texts.append(text)
    limit = max_texts(control) if several(control) else 1
    if limit is not None and len(texts) > limit:
        dropped["too_many_texts"] += len(texts) - limit
        texts = texts[:limit]
    return texts


def text_errors(control: ControlSpec, texts: Any) -> list[str]:
    """Why a stored `text` list is not one this control takes."""
    if not isinstance(texts, list) or not all(isinstance(t, str) and t.strip() for t in texts) or not texts:
        return [f"{control.name}: text must be a list of non-empty strings"]
    limit = max_texts(control)
    if limit is not None and len(texts) > limit:
        return [f"{control.name}: {len(texts)} texts for maxSubmissions={limit}"]
    if any(len(t) > MAX_CHARS for t in texts):
        return [f"{control.name}: a text longer than {MAX_CHARS} characters"]
    return []


def example_texts(control: ControlSpec, texts: list[str]) -> Any:
    """The answer form of reviewed texts: the first text, or the list (up to maxSubmissions)."""
    if several(control):
        return texts[: max_texts(control)]
    return texts[0] if texts else None


def length_hint(control: ControlSpec) -> str:
    rows = control.attr("rows")
    try:
        count = int(str(rows))
    except ValueError:
        return ""
    return f" Keep it to about {count} line{'s' if count != 1 else ''}." if count > 0 else ""


class TextAreaHandler(UnlabelledControl):
    kind = "textarea"
    tag = "TextArea"
    object_tags: tuple[str, ...] = ("Text", "HyperText")
    answer_aliases: tuple[str, ...] = ("text", "textarea", "answer", "summary")

    def multiple(self, attrs: Mapping[str, str]) -> bool:
        return False  # several texts are `several(control)`, from maxSubmissions

    def spec_problem(self, control: ControlSpec) -> str | None:
        return None

    def answer_type(self, control: ControlSpec) -> Any:
        return list[str] if several(control) else str

    def answer_description(self, control: ControlSpec) -> str:
        if several(control):
            return f"up to {max_texts(control)} texts"
        return "the text to write"

    def placeholder(self, control: ControlSpec) -> Any:
        return [TEXT_PLACEHOLDER] if several(control) else TEXT_PLACEHOLDER

    def prompt_lines(self, control: ControlSpec) -> tuple[str, ...]:
        what = control.attr("placeholder") or control.attr("hint") or ""
        lead = f'Task "{control.name}": write a short free-text answer about the text'
        lead += f" ({what})." if what else "."
        lead += length_hint(control)
        if several(control):
            return (lead, f"Give a list of up to {max_texts(control)} separate texts.")
        return (lead,)

    def regions(
        self, control: ControlSpec, data: Mapping[str, Any], part: AnswerPart, dropped: Counter
    ) -> list[Region]:
        texts = clean_texts(control, part.value, dropped)
        if not texts:
            return []
        return [{
            "id": region_id(control.name, *texts),
            "from_name": control.name,
            "to_name": control.to_name,
            "type": self.kind,
            "value": {"text": texts},
        }]

    def region_errors(self, control: ControlSpec, region: Mapping[str, Any]) -> list[str]:
        if region.get("type") != self.kind:
            return []
        return text_errors(control, (region.get("value") or {}).get("text"))

    def example_answer(self, control: ControlSpec, regions: Sequence[Mapping[str, Any]]) -> Any:
        texts: list[str] = []
        for region in regions:
            if region.get("type") != self.kind:
                continue
            stored = (region.get("value") or {}).get("text") or []
            stored = stored if isinstance(stored, list) else [stored]
            texts.extend(t for t in stored if isinstance(t, str) and t.strip())
        answer = example_texts(control, texts)
        if not texts:
            raise IncompleteAnswer(f"no text for control {control.name!r}")
        return answer
