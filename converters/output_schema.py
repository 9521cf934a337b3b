"""TaskSpec -> the JSON shape the model must answer with, as pydantic models with the labels as enums.

The generated JSON schema is strict-mode compatible (every property required, no extra keys), so it can
be sent as OpenAI `json_schema` with `strict: true`, and llama.cpp turns the same schema into a grammar.
A spec narrowed to a label shortlist (converters.shortlist) gives a schema whose enums are the shortlist,
so structured output cannot answer a label the prompt did not show.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from converters.task_spec import ControlSpec, TaskSpec

SCHEMA_NAME = "annotation"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _enum(values: list[str]) -> Any:
    return Literal[tuple(values)]  # type: ignore[valid-type]


def _field_type(control: ControlSpec) -> Any:
    labels = _enum(control.display_labels())
    if control.kind == "labels":
        entity = create_model(
            f"Entity_{_safe(control.name)}",
            __base__=_Strict,
            text=(str, Field(description="the entity exactly as written in the text")),
            label=(labels, Field(description="one of the allowed labels")),
        )
        return list[entity]  # type: ignore[valid-type]
    if control.multiple:
        return list[labels]  # type: ignore[valid-type]
    return labels


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name)


def output_model(spec: TaskSpec) -> type[BaseModel]:
    """A pydantic model with one field per predicted control, named like the control."""
    fields: dict[str, Any] = {}
    for control in spec.controls:
        description = (
            "every entity mention, in order of appearance"
            if control.kind == "labels"
            else ("all labels that apply" if control.multiple else "the single best label")
        )
        # Control names can be any string; pydantic field names must be identifiers, so alias them.
        fields[f"f{len(fields)}_{_safe(control.name)}"] = (
            _field_type(control),
            Field(alias=control.name, description=description),
        )
    return create_model("Annotation", __base__=_Strict, **fields)


def output_json_schema(spec: TaskSpec) -> dict[str, Any]:
    return output_model(spec).model_json_schema(by_alias=True)


def example_output(spec: TaskSpec) -> dict[str, Any]:
    """A small, schema-valid answer shown in the prompt so models without schema support see the form."""
    out: dict[str, Any] = {}
    for control in spec.controls:
        first = control.display_labels()[0]
        if control.kind == "labels":
            out[control.name] = [{"text": "<entity as written>", "label": first}]
        elif control.multiple:
            out[control.name] = [first]
        else:
            out[control.name] = first
    return out
