"""Property-based fuzzer: label configs x model answers through the real converters and the pipeline's
validation (no HTTP, no LLM).

A case is one (config, task text, model answer). Configs put every control kind a handler exists for
(converters.controls.HANDLERS, whatever is registered when this runs) on <Text>/<HyperText> objects,
with odd names, aliases, hints, Unicode, 1-300 labels and up to four controls. Answers are valid ones,
malformed JSON, wrong types, labels not in the config, huge answers, spans not in the text and Unicode
edge cases. Each answer goes the way /predict takes it: parse_answer -> answer_to_prediction ->
drop_invalid_regions (backend.predict.pipeline), and the prompt is rendered too.

Counted, both must be 0:
- invalid regions: regions in the item /predict would answer that Label Studio's validation
  (LabelInterface, offsets, span text) refuses, or a score outside [0, 1], or a value that is not
  JSON-serialisable (NaN);
- exceptions: anything raised other than the documented refusals (UnsupportedConfig/ValueError for a
  config, UnparsableAnswer for an answer).
Also printed: regions the pipeline's safety net (drop_invalid_regions) had to remove. Those never reach
Label Studio, but each is a handler bug (a region built outside what its control allows).

    .venv/bin/python benchmarks/fuzz.py --cases 10000 [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import quoteattr

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from label_studio_sdk.label_interface import LabelInterface

from backend.predict.pipeline import drop_invalid_regions
from converters.controls import HANDLERS
from converters.output_schema import example_output, output_json_schema
from converters.parse import UnparsableAnswer, parse_answer
from converters.regions import answer_to_prediction, check_prediction
from converters.task_spec import build_task_spec
from prompts import PromptRenderer

# --- text pieces ------------------------------------------------------------------------------------------

EDGE = ["é", "e\u0301", "🎉", "👩‍👩‍👧", "\u200b", "\u202e", "\ufeff", "ß", "İ", "ﬁ", "\t", "\n", " ", "中文", "العربية",
        "&", "<", ">", '"', "'", "]]>", "$", "{{", "}}", "\\", "\x7f", "\u2028", "\ud7ff", "\U0010fffd"]

odd_text = st.lists(
    st.one_of(st.characters(blacklist_categories=("Cs", "Cc")), st.sampled_from(EDGE)), min_size=1, max_size=10
).map("".join).filter(lambda s: s.strip() != "")

odd_name = st.one_of(
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_\-.]{0,20}", fullmatch=True),
    st.text(alphabet=st.characters(whitelist_categories=("Lu", "Ll", "Lo", "Nd")), min_size=1, max_size=12),
)


@dataclass
class Config:
    xml: str
    objects: list[tuple[str, str, str]]  # (tag, name, data key)
    labels: list[str] = field(default_factory=list)  # every label value and alias, for answers


def _children(draw: Any, tag: str, labels: list[str]) -> str:
    """Label/Choice children for a control tag (nested for Taxonomy)."""
    n = draw(st.integers(1, 300)) if draw(st.integers(0, 7)) == 0 else draw(st.integers(1, 6))
    drawn = min(n, 6)
    values = draw(st.lists(odd_text, min_size=drawn, max_size=drawn, unique_by=lambda s: s.strip().casefold()))
    if n > drawn:  # many labels: drawn ones plus numbered variants (cheap to generate, still Unicode)
        stem = draw(odd_text)
        values += [f"{stem}{i}" for i in range(n - drawn)]
    child = "Label" if tag in ("Labels",) or tag.endswith("Labels") else "Choice"
    parts = []
    for value in values:
        labels.append(value)
        attrs = f"value={quoteattr(value)}"
        if draw(st.booleans()) and draw(st.booleans()):
            alias = draw(odd_text)
            labels.append(alias)
            attrs += f" alias={quoteattr(alias)}"
        if draw(st.booleans()) and draw(st.booleans()):
            attrs += f" hint={quoteattr(draw(odd_text))}"
        if child == "Label" and draw(st.booleans()):
            attrs += ' background="#ff0000"'
        if tag == "Taxonomy" and draw(st.booleans()) and draw(st.booleans()):
            sub = draw(odd_text)
            labels.append(sub)
            parts.append(f"<Choice {attrs}><Choice value={quoteattr(sub)}/></Choice>")
        else:
            parts.append(f"<{child} {attrs}/>")
    return "".join(parts)


@st.composite
def configs(draw: Any) -> Config:
    """A <View> with 1-2 objects and 1-4 controls of any registered kind."""
    n_objects = draw(st.integers(1, 2))
    names = draw(st.lists(odd_name, min_size=n_objects + 4, max_size=n_objects + 4, unique_by=str.casefold))
    objects = []
    for i in range(n_objects):
        tag = draw(st.sampled_from(["Text", "HyperText"]))
        objects.append((tag, names[i], draw(st.sampled_from(["text", "html", "body", f"field{i}"])) + str(i)))
    labels: list[str] = []
    controls = []
    for j in range(draw(st.integers(1, 4))):
        handler = draw(st.sampled_from(HANDLERS))
        targets = [o for o in objects if o[0] in handler.object_tags] or objects
        obj = draw(st.sampled_from(targets))
        attrs = f'name={quoteattr(names[n_objects + j])} toName={quoteattr(obj[1])}'
        tag = handler.tag
        if tag in ("Choices", "Taxonomy") and draw(st.booleans()):
            attrs += ' choice="multiple"'
        if tag == "Rating":
            attrs += f' maxRating="{draw(st.integers(1, 10))}"'
        if tag == "Number" and draw(st.booleans()):
            attrs += f' min="{draw(st.integers(-5, 0))}" max="{draw(st.integers(1, 100))}"'
        body = _children(draw, tag, labels) if tag in ("Labels", "Choices", "Taxonomy") else ""
        controls.append(f"<{tag} {attrs}>{body}</{tag}>" if body else f"<{tag} {attrs}/>")
    parts = [f"<{tag} name={quoteattr(name)} value={quoteattr('$' + key)}/>" for tag, name, key in objects]
    header = f"<Header value={quoteattr(draw(odd_text))}/>" if draw(st.booleans()) else ""
    return Config("<View>" + header + "".join(parts + controls) + "</View>", objects, labels)


def task_text(rng: random.Random, labels: list[str]) -> str:
    pieces = [rng.choice([rng.choice(labels or ["x"]), rng.choice(EDGE), _word(rng)])
              for _ in range(rng.randint(1, 12))]
    return " ".join(pieces)


# Answers are drawn with a random.Random seeded by hypothesis: an order of magnitude faster than nested
# strategies, so that 10,000 cases take minutes; hypothesis still drives (and reproduces) every case.

def _word(rng: random.Random) -> str:
    return "".join(rng.choice(EDGE) if rng.random() < 0.2 else chr(rng.choice([rng.randint(0x21, 0x7e),
                   rng.randint(0xa1, 0x2fff), rng.randint(0x1f300, 0x1f6ff)])) for _ in range(rng.randint(1, 8)))


def _leaf(rng: random.Random) -> Any:
    return rng.choice([None, True, False, rng.randint(-10**20, 10**20), rng.random() * 10 ** rng.randint(-3, 30),
                       float("nan"), float("inf"), -0.0, _word(rng), "", "\u0000"])


def _any(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth > 3 or roll < 0.5:
        return _leaf(rng)
    if roll < 0.75:
        return [_any(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {_word(rng): _any(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def _label(rng: random.Random, labels: list[str]) -> Any:
    roll = rng.random()
    if roll < 0.6 and labels:
        value = rng.choice(labels)
        return rng.choice([value, value.upper(), f" {value} ", value[:-1] or value]) if rng.random() < 0.3 else value
    return _word(rng) if roll < 0.85 else _leaf(rng)


def _span(rng: random.Random, labels: list[str], text: str) -> Any:
    a, b = sorted((rng.randint(0, len(text)), rng.randint(0, len(text))))
    surface = rng.choice([text[a:b], text[a:b], _word(rng), _leaf(rng), text[a:b].upper(), text[a:b] + "x"])
    span: dict[str, Any] = {"text": surface, "label": _label(rng, labels)}
    for key in ("start", "end", "score", "extra"):
        if rng.random() < 0.15:
            span[key] = rng.choice([a, b, -1, len(text) + 5, _leaf(rng)])
    return span if rng.random() < 0.9 else _any(rng)


def _value(rng: random.Random, kind: str, placeholder: Any, labels: list[str], text: str) -> Any:
    roll = rng.randint(0, 7)
    if roll == 0:
        return placeholder
    if roll == 1:
        return _any(rng)
    if roll == 2:
        return _label(rng, labels)
    if roll == 3:
        return [_label(rng, labels) for _ in range(rng.randint(0, 5))]
    if roll in (4, 5):
        return [_span(rng, labels, text) for _ in range(rng.randint(0, 8))]
    if roll == 6 and kind in ("number", "rating"):
        return rng.choice([rng.randint(-10**6, 10**6), rng.random() * 100, "3", "", float("nan")])
    return _any(rng)


def answer_content(rng: random.Random, spec: Any, labels: list[str], text: str) -> str:
    """The raw content of a model answer."""
    example = example_output(spec)
    answer: dict[str, Any] = {}
    for control in spec.controls:
        if rng.random() < 0.1:
            continue  # a key missing
        answer[control.name] = _value(rng, control.kind, example.get(control.name), labels, text)
    if rng.random() < 0.15:
        answer[_word(rng)] = _any(rng)  # a key not in the config
    body = json.dumps(answer, ensure_ascii=rng.random() < 0.5)
    how = rng.randint(0, 11)
    if how == 0:
        return body[: rng.randint(0, len(body))]  # truncated
    if how == 1:
        return "```json\n" + body + "\n```"
    if how == 2:
        return _word(rng) + " " + body + " " + _word(rng)
    if how == 3:
        return json.dumps(_any(rng))  # any JSON at all
    if how == 4:  # huge: many spans, or a very long string
        key = spec.controls[0].name
        if rng.random() < 0.5:
            # a model answer is bounded by LLM_MAX_TOKENS (1,024 by default): 400 spans is already beyond it
            return json.dumps({key: [{"text": text[:5], "label": (labels or ["x"])[0]}] * 400})
        return json.dumps({key: "é" * 200_000})
    if how == 5:
        return body.replace('"', "'")
    if how == 6:
        return '{"a": "\\ud800", ' + body[1:] if len(body) > 2 else body  # a lone surrogate escape
    return body


# --- one case -----------------------------------------------------------------------------------------------

@dataclass
class Counts:
    cases: int = 0
    configs: int = 0
    rejected_configs: int = 0
    unparsable: int = 0
    regions: int = 0
    removed_regions: int = 0
    invalid_regions: int = 0
    exceptions: int = 0
    failures: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    def fail(self, what: str) -> None:
        if len(self.failures) < 10:
            self.failures.append(what)


def check_answer(spec: Any, interface: LabelInterface, config: Config, data: dict[str, Any], content: str,
                 counts: Counts) -> None:
    counts.cases += 1
    try:
        try:
            parsed = parse_answer(content)
        except UnparsableAnswer:
            counts.unparsable += 1
            return
        prediction = answer_to_prediction(spec, data, parsed, None)
        raw = prediction.as_ls("fuzz-v1")
        item, removed = drop_invalid_regions(interface, spec, data, raw)
        counts.regions += len(raw["result"])
        counts.removed_regions += len(removed)
        if removed and len(counts.removed) < 10:
            counts.removed.append(f"removed {removed[:2]} config={config.xml[:300]!r} answer={content[:300]!r}")
        left = check_prediction(interface, spec, data, item)
        score = item.get("score")
        if left or (score is not None and not (isinstance(score, float) and 0.0 <= score <= 1.0)):
            counts.invalid_regions += max(1, len(left))
            counts.fail(f"final item invalid {left[:2]} score={score!r} config={config.xml[:300]!r}")
        json.dumps(item, allow_nan=False)  # what Flask sends; NaN would make Label Studio drop the batch
        for region in item["result"]:
            for value in region.get("value", {}).values():
                if isinstance(value, float) and not math.isfinite(value):
                    raise ValueError(f"non-finite value in region {region}")
    except Exception:
        counts.exceptions += 1
        counts.fail(traceback.format_exc(limit=6) + f"\nconfig={config.xml[:300]!r}\nanswer={content[:300]!r}")


def prepare(config: Config, counts: Counts) -> tuple[Any, LabelInterface] | None:
    """(spec, interface), or None when the config is refused as /setup refuses it (400)."""
    counts.configs += 1
    try:
        try:
            spec = build_task_spec(config.xml)
        except ValueError:
            counts.rejected_configs += 1
            return None
        interface = LabelInterface(config.xml)
        renderer = PromptRenderer()
        renderer.messages(spec, {name: "t" for name, _ in spec.objects})
        json.dumps(output_json_schema(spec))
        return spec, interface
    except Exception:
        counts.exceptions += 1
        counts.fail(traceback.format_exc(limit=6) + f"\nconfig={config.xml[:300]!r}")
        return None


ANSWERS_PER_CONFIG = 5


def run(n_cases: int, seed: int = 0, counts: Counts | None = None) -> Counts:
    """Check at least `n_cases` answers, ANSWERS_PER_CONFIG per generated config (refused configs check
    none, so runs repeat with the next seed until the count is reached)."""
    counts = counts or Counts()

    def batch(examples: int, run_seed: int) -> None:
        @hypothesis_seed(run_seed)
        @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(st.data())
        def one(data: Any) -> None:
            config = data.draw(configs())
            ready = prepare(config, counts)
            if ready is None:
                return
            spec, interface = ready
            rng = random.Random(data.draw(st.integers(0, 2**32)))
            for _ in range(ANSWERS_PER_CONFIG):
                text = task_text(rng, config.labels)
                content = answer_content(rng, spec, config.labels, text)
                data_fields = {key: text for _t, _n, key in config.objects}
                check_answer(spec, interface, config, data_fields, content, counts)

        one()

    run_seed = seed
    while counts.cases < n_cases:
        batch(max(1, math.ceil((n_cases - counts.cases) / ANSWERS_PER_CONFIG)), run_seed)
        run_seed += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0, help="hypothesis seed (runs are reproducible)")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    counts = run(args.cases, args.seed)
    seconds = time.perf_counter() - began
    print(f"handlers: {', '.join(h.tag for h in HANDLERS)}")
    print(f"cases (config x answer): {counts.cases}  configs: {counts.configs} "
          f"(refused like /setup: {counts.rejected_configs})  unparsable answers: {counts.unparsable}  "
          f"regions: {counts.regions}  in {seconds:.0f} s")
    print(f"invalid regions: {counts.invalid_regions}")
    print(f"exceptions: {counts.exceptions}")
    print(f"regions removed by the pipeline's safety net (handler bugs; never sent): {counts.removed_regions}")
    for failure in counts.failures[:5] + counts.removed[:3]:
        print("---\n" + failure)
    return 0 if counts.invalid_regions == 0 and counts.exceptions == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
