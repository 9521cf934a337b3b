"""Prompt templates as versioned Jinja2 files: `templates/annotate.<version>.{system,user}.jinja`.

Message order is fixed for providers' prefix caching: the system message (instructions, labels, answer
form) and the few-shot turns come first and stay identical across tasks of a project; the task's text
is always the last message.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import jinja2

from converters.controls import handler_for
from converters.group import group_example, group_schema
from converters.output_schema import example_output, output_json_schema
from converters.spec import TaskSpec


@dataclass(frozen=True)
class Example:
    """One reviewed task in the form the model answers with."""

    texts: Mapping[str, str]  # object name -> text
    answer: Mapping[str, Any]


@dataclass(frozen=True)
class SpanCandidate:
    """A span of the task's text that a reviewed-example gazetteer proposes (backend.learning.gazetteer):
    exact offsets into the control's text, its label (stored value) and the probability it is right.
    A candidate without a label marks words reviewers never labelled; it is not shown in prompts."""

    control: str
    start: int
    end: int
    text: str
    label: str
    score: float
    shown: bool = True  # offered to the model in the prompt (hint); False: only for the cascade's combination
    gazetteer_f1: float | None = None  # held-out span F1 of the gazetteer that proposed it (None: unmeasured)


@dataclass(frozen=True)
class TaskContext:
    """What one task's prompt is made of besides its text: the spec (the project's, or narrowed to a
    label shortlist for this task), the few-shot examples, most similar last, and candidate spans from
    reviewed examples (shown to the model after the task's text; none: the prompt is unchanged)."""

    spec: TaskSpec
    examples: Sequence[Example] = ()
    candidates: Sequence[SpanCandidate] = ()


# Task and example texts are untrusted: between these markers they are data to label, never instructions
# (the system prompt says so). A marker written inside a text is escaped, so a text cannot close its block.
DATA_OPEN, DATA_CLOSE = "<task_data>", "</task_data>"
_MARKER = re.compile(r"<(/?)(task_data\s*)>", re.IGNORECASE)


def mark_data(text: str) -> str:
    """A text as a data block: the markers around it, any marker inside it escaped (`&lt;task_data>`)."""
    return f"{DATA_OPEN}\n{_MARKER.sub(lambda m: '&lt;' + m.group(1) + m.group(2) + '>', text)}\n{DATA_CLOSE}"


def unmark_data(content: str) -> str:
    """A rendered message with its data markers taken out and escapes undone (the text as it was); for
    tests and tools that look at prompts."""
    out = content.replace(f"{DATA_OPEN}\n", "").replace(f"\n{DATA_CLOSE}", "")
    return re.sub(r"&lt;(/?)(task_data\s*)>", r"<\1\2>", out, flags=re.IGNORECASE)


class PromptRenderer:
    """Renders chat messages from one template version; the version is part of model_version."""

    def __init__(self, version: str = "v1") -> None:
        self.version = version
        root = resources.files("prompts") / "templates"
        self._env = jinja2.Environment(
            loader=jinja2.FunctionLoader(lambda name: (root / name).read_text(encoding="utf-8")),
            autoescape=False,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=False,
            undefined=jinja2.StrictUndefined,
        )
        self._env.filters["data"] = mark_data
        try:
            self._system = self._env.get_template(f"annotate.{version}.system.jinja")
            self._user = self._env.get_template(f"annotate.{version}.user.jinja")
            self._group = self._env.get_template(f"annotate.{version}.group.jinja")
        except (FileNotFoundError, jinja2.TemplateNotFound) as exc:
            raise ValueError(f"no prompt templates for version {version!r}") from exc

    def system(self, spec: TaskSpec, show_format: bool, include_schema: bool = False) -> str:
        return self._system.render(
            instructions=spec.instructions,
            controls=spec.controls,
            # each control's own lines (converters.controls), then its label list
            tasks=[(control, handler_for(control).prompt_lines(control)) for control in spec.controls],
            show_format=show_format,
            example_json=json.dumps(example_output(spec), ensure_ascii=False),
            schema_json=json.dumps(output_json_schema(spec), ensure_ascii=False) if include_schema else "",
        ).strip()

    def user(self, spec: TaskSpec, texts: Mapping[str, str], candidates: Sequence[SpanCandidate] = ()) -> str:
        """The task's text; candidate spans, when there are any, follow it in the answer's own form."""
        ordered = [(name, texts.get(name, "")) for name, _ in spec.objects]
        return self._user.render(texts=ordered, candidates=_candidate_lines(spec, candidates)).strip("\n")

    def messages(
        self,
        spec: TaskSpec,
        texts: Mapping[str, str],
        examples: Sequence[Example] = (),
        show_format: bool = True,
        include_schema: bool = False,
        candidates: Sequence[SpanCandidate] = (),
    ) -> list[dict[str, str]]:
        """System, few-shot user/assistant turns, then the task text last (with its candidate spans)."""
        messages = [{"role": "system", "content": self.system(spec, show_format, include_schema)}]
        for example in examples:
            messages.append({"role": "user", "content": self.user(spec, example.texts)})
            messages.append(
                {"role": "assistant", "content": json.dumps(dict(example.answer), ensure_ascii=False)}
            )
        messages.append({"role": "user", "content": self.user(spec, texts, candidates)})
        return messages

    def group_messages(
        self,
        spec: TaskSpec,
        texts: Sequence[Mapping[str, str]],
        examples: Sequence[Example] = (),
        show_format: bool = True,
        include_schema: bool = False,
    ) -> list[dict[str, str]]:
        """Like `messages`, for several tasks answered in one call (converters.group): the numbered
        task texts are the last message."""
        messages = self.messages(spec, {}, examples, show_format=False, include_schema=False)[:-1]
        if include_schema:
            schema = group_schema(output_json_schema(spec), len(texts))
            messages[0] = {"role": "system", "content": self.system(spec, False) + "\n\nJSON schema the answer "
                           "must follow:\n" + json.dumps(schema, ensure_ascii=False)}
        items = [(i + 1, [(name, t.get(name, "")) for name, _ in spec.objects]) for i, t in enumerate(texts)]
        content = self._group.render(
            items=items,
            show_format=show_format,
            example_json=json.dumps(group_example(example_output(spec), len(texts)), ensure_ascii=False),
        ).strip("\n")
        messages.append({"role": "user", "content": content})
        return messages


def _candidate_lines(spec: TaskSpec, candidates: Sequence[SpanCandidate]) -> list[str]:
    """One line per control with candidates: the control's name and its candidates as answer items
    ({"text", "label"} with the label the model answers with), in text order."""
    lines = []
    for control in spec.controls:
        mine = sorted((c for c in candidates if c.control == control.name and c.label and c.shown),
                      key=lambda c: (c.start, c.end))
        if not mine:
            continue
        display = {label.value: label.display for label in control.labels}
        items = [{"text": c.text, "label": display.get(c.label, c.label)} for c in mine]
        lines.append(f'"{control.name}": {json.dumps(items, ensure_ascii=False)}')
    return lines
