"""The embedded server's schema grammar writes every JSON string so that the model can answer it exactly
(backend.llm.llama_server). The real server answering such labels is in tests/test_local_model.py."""

from __future__ import annotations

import importlib.util
import json
import re

import pytest

from backend.llm.llama_server import fix_schema_literals, grammar_literal

if importlib.util.find_spec("llama_cpp") is None:  # pragma: no cover - make install always has it
    pytest.skip("llama-cpp-python is not installed (the [local] extra)", allow_module_level=True)

VALUES = ['say "no"', "a\\b", "\U0001F600", "line\nbreak", "carriage\rreturn", "plain", "n\u00e9gatif"]
_UNESCAPE = {"\\": "\\", '"': '"', "n": "\n", "r": "\r"}


def grammar_text(literal: str) -> str:
    """What a GBNF string literal matches (its escapes undone)."""
    assert literal.startswith('"') and literal.endswith('"')
    body = literal[1:-1]
    assert not re.search(r'(?<!\\)(\\\\)*"', body), f"an unescaped quote ends {literal!r} early"
    return re.sub(r"\\(.)", lambda m: _UNESCAPE[m.group(1)], body)


@pytest.mark.parametrize("value", VALUES)
def test_a_grammar_literal_matches_exactly_its_text(value: str) -> None:
    assert grammar_text(grammar_literal(value)) == value
    assert grammar_text(grammar_literal(json.dumps(value))) == json.dumps(value)


def test_the_fixed_converter_constrains_enums_and_keys_to_their_json() -> None:
    from llama_cpp.llama_grammar import SchemaConverter

    class Fixed(SchemaConverter):  # a subclass: the library's class stays as it is in this process
        pass

    fix_schema_literals(Fixed)
    converter = Fixed(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    key = 'the "mood"'
    schema = {"type": "object", "properties": {key: {"type": "string", "enum": VALUES}}, "required": [key]}
    converter.visit(schema, "")
    rules = dict(line.split(" ::= ", 1) for line in converter.format_grammar().strip().splitlines())
    literal = r'"(?:[^"\\]|\\.)*"'
    enum = next(body for body in rules.values() if "|" in body)
    assert [json.loads(grammar_text(lit)) for lit in re.findall(literal, enum)] == VALUES
    key_value = next(body for name, body in rules.items() if name.endswith("-kv"))
    assert grammar_text(re.match(literal, key_value).group(0)) == json.dumps(key)
