"""TaskSpec -> the JSON shape the model must answer with, as pydantic models with the labels as enums.

The generated JSON schema is strict-mode compatible (every property required, no extra keys), so it can
be sent as OpenAI `json_schema` with `strict: true`, and llama.cpp turns the same schema into a grammar.
A spec narrowed to a label shortlist (converters.shortlist) gives a schema whose enums are the shortlist,
so structured output cannot answer a label the prompt did not show. Each control's fragment (its type,
description and placeholder) comes from its handler (converters.controls).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, create_model

from converters.controls import handler_for
from converters.controls.base import Strict, safe_name
from converters.spec import TaskSpec

SCHEMA_NAME = "annotation"


def output_model(spec: TaskSpec) -> type[BaseModel]:
    """A pydantic model with one field per predicted control, named like the control."""
    fields: dict[str, Any] = {}
    for control in spec.controls:
        handler = handler_for(control)
        # Control names can be any string; pydantic field names must be identifiers, so alias them.
        fields[f"f{len(fields)}_{safe_name(control.name)}"] = (
            handler.answer_type(control),
            Field(alias=control.name, description=handler.answer_description(control)),
        )
    return create_model("Annotation", __base__=Strict, **fields)


def output_json_schema(spec: TaskSpec) -> dict[str, Any]:
    return output_model(spec).model_json_schema(by_alias=True)


def example_output(spec: TaskSpec) -> dict[str, Any]:
    """The answer's form, shown in the prompt so models without schema support see it: its shape, with
    placeholders for labels and texts (converters.controls.base.LABEL_PLACEHOLDER: a model copies a
    real label shown here)."""
    return {control.name: handler_for(control).placeholder(control) for control in spec.controls}
