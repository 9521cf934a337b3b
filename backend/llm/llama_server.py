"""The embedded model's server: llama-cpp-python's own `llama_cpp.server`, with its JSON-schema grammar
fixed for strings that JSON writes with a backslash.

    python -m backend.llm.llama_server --model ... (the arguments of python -m llama_cpp.server)

The server turns a request's JSON schema into a grammar (llama_cpp.llama_grammar.SchemaConverter). For
an enum value or a property name it writes the value's JSON text into a grammar literal, and
`_format_literal` escapes quotes and line breaks there but not backslashes (llama-cpp-python 0.3.36,
measured). So every string whose JSON text holds a backslash goes wrong:
- a label or control name with a double quote (JSON `\\"`) ends the literal early. llama.cpp cannot
  parse the grammar, and the server dies with SIGSEGV on every call that uses the schema;
- a label with a backslash, or with a character outside the Basic Multilingual Plane (an emoji, JSON
  `\\ud83d\\ude00`), becomes a grammar escape. The model is held to other text and cannot answer the
  label (an emoji-only choice list gave `""`).

`grammar_literal` is the literal as llama.cpp's grammar syntax wants it (backslash, quote, CR and LF
escaped), and the server runs with it in place of `_format_literal`. It is correct whatever the library
does, so a later release that fixes the bug needs no change here.
"""

from __future__ import annotations

import runpy
from typing import Any

_ESCAPES = {"\\": "\\\\", '"': '\\"', "\r": "\\r", "\n": "\\n"}


def grammar_literal(text: str) -> str:
    """`text` as a GBNF string literal that matches exactly `text`."""
    return '"' + "".join(_ESCAPES.get(c, c) for c in text) + '"'


def fix_schema_literals(converter: Any) -> None:
    """Make `converter` (llama_cpp.llama_grammar.SchemaConverter) write its literals with
    grammar_literal."""
    converter._format_literal = lambda self, literal: grammar_literal(literal)


def main() -> None:
    from llama_cpp.llama_grammar import SchemaConverter

    fix_schema_literals(SchemaConverter)
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
