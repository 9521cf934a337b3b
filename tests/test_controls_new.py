"""Issue 16: TextArea, Number, Rating, Taxonomy and perRegion Choices/TextArea under spans.

Each kind goes config -> spec -> schema/prompt -> answer -> regions (validated as Label Studio and the
backend would) -> reviewed result -> example answer, with its own scores from logprobs. The property
test at the end throws arbitrary model answers at every new control: no exception, no invalid region."""

from __future__ import annotations

import functools
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from label_studio_sdk.label_interface import LabelInterface

from converters.confidence import Token, TokenProbs
from converters.controls.agreement import control_agreement, text_similarity
from converters.examples import result_labels, result_to_answer, unanswered
from converters.group import groupable
from converters.output_schema import output_json_schema
from converters.parse import UnparsableAnswer, parse_answer
from converters.regions import answer_to_prediction, check_prediction
from converters.shortlist import Lexicon, knn_votes, result_fits, shortlist_spec
from converters.task_spec import build_task_spec
from prompts import PromptRenderer

CONFIGS = Path(__file__).resolve().parent.parent / "examples" / "configs"
TEXT = "The Acme phone is great but the Zeta charger broke after a day. It costs $49.50."
NEW_CONFIGS = ("textarea", "number_rating", "taxonomy", "per_region")


def config(name: str) -> str:
    return (CONFIGS / f"{name}.xml").read_text()


def predict(name: str, answer: Any, probs: TokenProbs | None = None, text: str = TEXT) -> tuple[Any, list[str]]:
    """(prediction, every reason Label Studio or the backend would reject it)."""
    label_config = config(name)
    spec = build_task_spec(label_config)
    prediction = answer_to_prediction(spec, {"text": text}, answer, probs)
    return prediction, check_prediction(LabelInterface(label_config), spec, {"text": text}, prediction.as_ls("v"))


def probs_with(content: str, value: str, p: float, alternatives: tuple[tuple[str, float], ...] = ()) -> TokenProbs:
    """Logprobs of `content` where the first occurrence of `value` is one token of probability p."""
    at = content.index(value)
    tokens = [Token(content[:at], -0.01), Token(value, math.log(p), alternatives),
              Token(content[at + len(value):], -0.01)]
    return TokenProbs(content, [t for t in tokens if t.text])


# --- the spec read from each example config ------------------------------------------------------------

def test_each_new_config_gives_its_controls_with_their_attributes() -> None:
    textarea = build_task_spec(config("textarea"))
    assert [(c.name, c.kind) for c in textarea.controls] == [("summary", "textarea"), ("requests", "textarea")]
    assert textarea.control("summary").attr("rows") == "2" and textarea.skipped == ()
    numbers = build_task_spec(config("number_rating"))
    assert [(c.name, c.kind) for c in numbers.controls] == [("stars", "rating"), ("price", "number"),
                                                            ("people", "number")]
    taxonomy = build_task_spec(config("taxonomy")).control("topic")
    # leafsOnly: leaves only, as paths; the alias is what Label Studio stores, the value what the model sees
    assert taxonomy.display_labels() == ["Science / Physics", "Science / Biology / Genetics",
                                         "Science / Biology / Ecology", "Sports / Football", "Sports / Tennis",
                                         "Business / Markets", "Business / Startups"]
    assert json.loads(taxonomy.labels[5].value) == ["biz", "Markets"] and not taxonomy.multiple
    spans = build_task_spec(config("per_region"))
    assert [c.name for c in spans.controls] == ["label"]  # the perRegion controls are attributes of its spans
    assert [(c.name, c.kind) for c in spans.control("label").per_region] == [("sentiment", "choices"),
                                                                              ("reason", "textarea")]


def test_taxonomy_without_leafs_only_offers_inner_nodes_too() -> None:
    tree = config("taxonomy").replace(' leafsOnly="true"', "").replace(' maxUsages="1"', "")
    control = build_task_spec(tree).control("topic")
    assert control.display_labels()[:4] == ["Science", "Science / Physics", "Science / Biology",
                                            "Science / Biology / Genetics"]
    assert control.multiple  # Label Studio's Taxonomy takes several paths unless maxUsages="1"


def test_a_per_region_control_without_spans_is_skipped_with_the_reason() -> None:
    spec = build_task_spec('<View><Text name="text" value="$text"/><Choices name="s" toName="text" perRegion="true">'
                           '<Choice value="a"/></Choices><Rating name="r" toName="text"/></View>')
    assert [c.name for c in spec.controls] == ["r"]
    assert spec.skipped == ('<Choices name="s" perRegion="true"> without spans (<Labels>) it can describe',)


@pytest.mark.parametrize(("attrs", "problem"),
                         [('min="5" max="1"', "min 5.0 > max 1.0"), ('max="ten"', "max that is not")])
def test_a_number_with_impossible_bounds_is_skipped(attrs: str, problem: str) -> None:
    spec = build_task_spec(f'<View><Text name="text" value="$text"/><Number name="n" toName="text" {attrs}/>'
                           '<Rating name="r" toName="text"/></View>')
    assert [c.name for c in spec.controls] == ["r"] and problem in spec.skipped[0]


# --- schema and prompt ----------------------------------------------------------------------------------

def test_schemas_carry_the_bounds_the_texts_and_the_paths() -> None:
    props = output_json_schema(build_task_spec(config("number_rating")))["properties"]
    assert props["stars"] | {"description": ""} == {"type": "integer", "minimum": 1, "maximum": 5, "title": "Stars",
                                                     "description": ""}
    assert (props["price"]["type"], props["price"]["minimum"], props["price"]["maximum"]) == ("number", 0, 10000)
    assert props["people"]["type"] == "integer"
    props = output_json_schema(build_task_spec(config("textarea")))["properties"]
    assert props["summary"]["type"] == "string" and props["requests"]["type"] == "array"
    props = output_json_schema(build_task_spec(config("taxonomy")))["properties"]
    assert props["topic"]["enum"][0] == "Science / Physics"
    schema = output_json_schema(build_task_spec(config("per_region")))
    item = schema["$defs"]["Entity_label"]
    assert item["required"] == ["text", "label", "sentiment", "reason"] and item["additionalProperties"] is False
    assert item["properties"]["sentiment"]["anyOf"][0]["enum"] == ["positive", "neutral", "negative"]


def test_prompts_say_what_each_control_wants() -> None:
    render = PromptRenderer()
    system = render.system(build_task_spec(config("textarea")), show_format=True)
    assert "(a one-sentence summary). Keep it to about 2 lines." in system
    assert "Give a list of up to 3 separate texts." in system
    system = render.system(build_task_spec(config("number_rating")), show_format=True)
    assert 'Task "stars": rate the text from 1 to 5 stars' in system
    assert 'Task "price": answer with a number from 0 to 10000 in steps of 0.5' in system
    system = render.system(build_task_spec(config("per_region")), show_format=True)
    assert '- "reason": a short text about the entity, or null when there is nothing to say (only for entities ' \
           'labelled Product; null for the others)' in system
    assert '"sentiment": "<label>", "reason": "<text about the entity>"' in system


# --- answer -> regions -> example, per control ------------------------------------------------------------

ROUND_TRIPS = [
    ("textarea", {"summary": "Phone good, charger bad.", "requests": ["a refund", "a new charger"]}),
    ("number_rating", {"stars": 3, "price": 49.5, "people": 0}),
    ("taxonomy", {"topic": "Business / Markets"}),
    ("per_region", {"label": [{"text": "Acme phone", "label": "Product", "sentiment": "positive", "reason": "great"},
                              {"text": "Zeta", "label": "Brand", "sentiment": "negative", "reason": None}]}),
    ("per_region", {"label": []}),
]


@pytest.mark.parametrize(("name", "answer"), ROUND_TRIPS)
def test_answer_to_regions_to_example_answer_round_trips(name: str, answer: dict[str, Any]) -> None:
    prediction, errors = predict(name, answer)
    assert errors == [] and not prediction.dropped
    spec = build_task_spec(config(name))
    assert result_to_answer(spec, prediction.result) == answer
    assert unanswered(spec, prediction.result) == []


def test_stored_shapes_are_label_studios() -> None:
    prediction, _ = predict("number_rating", {"stars": 4, "price": 12, "people": 2})
    assert [r["value"] for r in prediction.result] == [{"rating": 4}, {"number": 12.0}, {"number": 2}]
    prediction, _ = predict("taxonomy", {"topic": "Science / Biology / Genetics"})
    assert prediction.result[0]["value"] == {"taxonomy": [["Science", "Biology", "Genetics"]]}
    prediction, _ = predict("per_region", ROUND_TRIPS[3][1])
    span, sentiment, reason = prediction.result[:3]
    assert span["id"] == sentiment["id"] == reason["id"]
    assert sentiment == {"id": span["id"], "from_name": "sentiment", "to_name": "text", "type": "choices",
                         "value": {"start": 4, "end": 14, "text": "Acme phone", "choices": ["positive"]}}
    assert reason["type"] == "textarea" and reason["value"] == {"start": 4, "end": 14, "text": ["great"]}


def test_numbers_snap_to_the_step_and_out_of_range_is_dropped_not_clamped() -> None:
    cases = [({"price": 49.4}, [49.5], {}), ({"price": "12"}, [12.0], {}), ({"price": [3.2]}, [3.0], {}),
             ({"price": 10001}, [], {"out_of_range": 1}), ({"price": -1}, [], {"out_of_range": 1}),
             ({"price": True}, [], {"malformed": 1}), ({"price": "cheap"}, [], {"malformed": 1}),
             ({"price": 1e308 * 10}, [], {"malformed": 1}), ({"price": 10 ** 400}, [], {"malformed": 1}),
             ({"people": 2.6}, [3], {}), ({"stars": 3.5}, [], {"out_of_range": 1}),
             ({"stars": 6}, [], {"out_of_range": 1}),
             ({"stars": 0}, [], {"out_of_range": 1}), ({"stars": "4"}, [4], {}), ({"stars": 4.0}, [4], {})]
    for answer, values, dropped in cases:
        prediction, errors = predict("number_rating", answer)
        assert [next(iter(r["value"].values())) for r in prediction.result] == values, answer
        assert dict(prediction.dropped) == dropped and errors == [], answer
    assert isinstance(predict("number_rating", {"people": 2.6})[0].result[0]["value"]["number"], int)


def test_the_backend_rejects_numbers_label_studio_would_store() -> None:
    label_config = config("number_rating")
    spec, interface = build_task_spec(label_config), LabelInterface(label_config)
    def errors(region: dict[str, Any]) -> list[str]:
        return check_prediction(interface, spec, {"text": TEXT}, {"result": [{"to_name": "text", **region}]})
    assert interface.validate_prediction({"result": [{"from_name": "price", "to_name": "text", "type": "number",
                                                      "value": {"number": 20000}}]})  # the SDK lets it through
    assert errors({"from_name": "price", "type": "number", "value": {"number": 20000}}) == [
        "price: 20000 outside a number from 0 to 10000 in steps of 0.5"]
    assert errors({"from_name": "price", "type": "number", "value": {"number": 0.3}}) == [
        "price: 0.3 is not on the grid of a number from 0 to 10000 in steps of 0.5"]
    assert errors({"from_name": "stars", "type": "rating", "value": {"rating": 4}}) == []


def test_taxonomy_answers_are_existing_paths() -> None:
    cases = [("Markets", [["biz", "Markets"]], {}),  # a leaf name alone, when only one path ends with it
             (["Sports", "Tennis"], [["Sports", "Tennis"]], {}),  # a path written as steps
             ("sports/tennis", [["Sports", "Tennis"]], {}),
             ("Science / Biology", [], {"unknown_label": 1}),  # an inner node, with leafsOnly
             ("Sports / Genetics", [], {"unknown_label": 1}), ({"path": "x"}, [], {"malformed": 1}),
             (["Sports / Tennis", "Sports / Football"], [["Sports", "Tennis"]], {"too_many_paths": 1})]
    for answer, paths, dropped in cases:
        prediction, errors = predict("taxonomy", {"topic": answer})
        assert [r["value"]["taxonomy"] for r in prediction.result] == ([paths] if paths else []), answer
        assert dict(prediction.dropped) == dropped and errors == [], answer


def test_the_backend_rejects_a_path_whose_steps_exist_elsewhere_in_the_tree() -> None:
    label_config = config("taxonomy")
    spec, interface = build_task_spec(label_config), LabelInterface(label_config)
    wrong = {"result": [{"from_name": "topic", "to_name": "text", "type": "taxonomy",
                         "value": {"taxonomy": [["Sports", "Genetics"]]}}]}
    assert interface.validate_prediction(wrong)  # every step is some node: the SDK accepts it
    assert check_prediction(interface, spec, {"text": TEXT}, wrong) == [
        "topic: ['Sports', 'Genetics'] is not a selectable path of the taxonomy"]


def test_textarea_keeps_max_submissions_and_cuts_runaway_texts() -> None:
    prediction, errors = predict("textarea", {"summary": ["first", "second"], "requests": ["a", "", "b", "c", "d", 7]})
    assert [r["value"]["text"] for r in prediction.result] == [["first"], ["a", "b", "c"]]
    assert dict(prediction.dropped) == {"too_many_texts": 3} and errors == []
    prediction, errors = predict("textarea", {"summary": "x" * 100_000, "requests": [{"no": 1}]})
    assert len(prediction.result[0]["value"]["text"][0]) == 4000 and errors == []
    assert dict(prediction.dropped) == {"truncated": 1, "malformed": 1}


def test_a_copied_placeholder_is_not_stored_as_a_text() -> None:
    """The prompt's example of the form writes texts as placeholders; the embedded model copied one as its
    TextArea answer. It is dropped, and a real text beside it is kept."""
    prediction, errors = predict("textarea", {"summary": "<text>", "requests": ["<text>", "call me"]})
    assert [r["value"]["text"] for r in prediction.result] == [["call me"]] and errors == []
    assert dict(prediction.dropped) == {"placeholder": 2}
    answer = {"label": [{"text": "Acme phone", "label": "Product", "sentiment": None,
                         "reason": "<text about the entity>"}]}
    prediction, errors = predict("per_region", answer)
    assert [r["from_name"] for r in prediction.result] == ["label"] and errors == []
    assert dict(prediction.dropped) == {"placeholder": 1}


def test_per_region_attributes_follow_their_span_and_its_label() -> None:
    answer = {"label": [{"text": "Acme phone", "label": "Product", "sentiment": "great!", "reason": "  "},
                        {"text": "Zeta", "label": "Brand", "sentiment": "negative", "reason": "not a product"},
                        {"text": "Nowhere", "label": "Brand", "sentiment": "negative", "reason": None}]}
    prediction, errors = predict("per_region", answer)
    assert errors == []
    assert [(r["from_name"], r["value"].get("labels") or r["value"].get("choices")) for r in prediction.result] == [
        ("label", ["Product"]), ("label", ["Brand"]), ("sentiment", ["negative"])]
    # the unknown sentiment is dropped (the span kept), the reason is not for Brands, the missing span takes its
    # attributes with it
    assert prediction.dropped == Counter({"unknown_label": 1, "attribute_not_applicable": 1, "not_found": 1})


def test_a_reviewed_per_region_result_becomes_an_example() -> None:
    spec = build_task_spec(config("per_region"))
    # As Label Studio stores it: the attribute carries the span's id (a reviewer's own region ids)
    result = [
        {"id": "Xy1", "from_name": "label", "to_name": "text", "type": "labels",
         "value": {"start": 32, "end": 36, "text": "Zeta", "labels": ["Brand"]}},
        {"id": "Xy1", "from_name": "sentiment", "to_name": "text", "type": "choices",
         "value": {"start": 32, "end": 36, "text": "Zeta", "choices": ["negative"]}},
        {"id": "Ab2", "from_name": "label", "to_name": "text", "type": "labels",
         "value": {"start": 4, "end": 14, "text": "Acme phone", "labels": ["Product"]}},
        {"id": "Ab2", "from_name": "reason", "to_name": "text", "type": "textarea",
         "value": {"start": 4, "end": 14, "text": ["works well"]}},
    ]
    assert result_to_answer(spec, result) == {"label": [
        {"text": "Acme phone", "label": "Product", "sentiment": None, "reason": "works well"},
        {"text": "Zeta", "label": "Brand", "sentiment": "negative", "reason": None}]}
    assert result_labels(result) == ["Brand", "Product"]  # attributes are not labels of the example
    label_config = config("per_region")
    assert check_prediction(LabelInterface(label_config), spec, {"text": TEXT}, {"result": result}) == []


@pytest.mark.parametrize(("name", "missing"), [("number_rating", "no rating for control 'stars'"),
                                               ("textarea", "no text for control 'summary'"),
                                               ("taxonomy", "no path chosen for taxonomy 'topic'")])
def test_an_unanswered_control_makes_no_example(name: str, missing: str) -> None:
    assert missing in unanswered(build_task_spec(config(name)), [])


def test_new_whole_text_controls_can_share_a_call() -> None:
    for name in ("textarea", "number_rating", "taxonomy"):
        assert groupable(build_task_spec(config(name)))
    assert not groupable(build_task_spec(config("per_region")))


# --- scores ---------------------------------------------------------------------------------------------------

def test_scores_come_from_each_decisions_own_tokens() -> None:
    content = '{"stars": 4, "price": 12.5, "people": 1}'
    prediction, _ = predict("number_rating", json.loads(content), probs_with(content, "12.5", 0.7))
    assert [r.get("score") for r in prediction.result] == [pytest.approx(math.exp(-0.01)), pytest.approx(0.7),
                                                           pytest.approx(math.exp(-0.01))]
    content = '{"topic": "Sports / Tennis"}'
    alternatives = (("Sports / Tennis", math.log(0.6)), ("Sports / Football", math.log(0.3)), ("Sc", math.log(0.1)))
    prediction, _ = predict("taxonomy", json.loads(content), probs_with(content, "Sports / Tennis", 0.6, alternatives))
    assert prediction.result[0]["score"] == pytest.approx(0.6)
    content = json.dumps(ROUND_TRIPS[3][1])
    prediction, _ = predict("per_region", ROUND_TRIPS[3][1], probs_with(content, "negative", 0.5,
                                                                        (("neutral", math.log(0.5)),)))
    sentiment = [r for r in prediction.result if r["from_name"] == "sentiment"]
    # "positive" had no alternative label in its token's top_logprobs: 1.0 among the labels; "negative" 0.5
    assert [r.get("score") for r in sentiment] == [1.0, pytest.approx(0.5)]
    content = '{"summary": "ok", "requests": []}'
    prediction, _ = predict("textarea", json.loads(content), probs_with(content, "ok", 0.9))
    assert "score" not in prediction.result[0]  # free text: no per-region score (see converters.controls.textarea)


# --- a taxonomy with thousands of leaves: the shortlist applies to paths -------------------------------------

def big_taxonomy(branches: int = 40, leaves: int = 50) -> str:
    def leaf(b: int, i: int) -> str:
        return f'<Choice value="Topic {b}-{i}{" quantum" if (b, i) == (7, 3) else ""}"/>'
    body = "".join(f'<Choice value="Area {b}">' + "".join(leaf(b, i) for i in range(leaves)) + "</Choice>"
                   for b in range(branches))
    return ('<View><Text name="text" value="$text"/>'
            f'<Taxonomy name="t" toName="text" leafsOnly="true">{body}</Taxonomy></View>')


def test_a_large_taxonomy_is_narrowed_to_a_shortlist_of_leaf_paths() -> None:
    spec = build_task_spec(big_taxonomy())
    control = spec.control("t")
    assert len(control.labels) == 2000
    reviewed = [{"from_name": "t", "to_name": "text", "type": "taxonomy",
                 "value": {"taxonomy": [["Area 3", "Topic 3-9"]]}}]
    votes = knn_votes(control, [(0.9, reviewed)])
    lexicon = Lexicon(control)
    narrowed = shortlist_spec(spec, 50, 10, lambda c: votes, lambda c: lexicon.similarity("a quantum leap"))
    shown = narrowed.control("t").display_labels()
    assert len(shown) == 10 and "Area 3 / Topic 3-9" in shown and "Area 7 / Topic 7-3 quantum" in shown
    assert result_fits(narrowed, reviewed)
    # the schema and the answer follow the shortlist: a path outside it is dropped, one inside is stored
    assert len(output_json_schema(narrowed)["properties"]["t"]["items"]["enum"]) == 10
    inside = answer_to_prediction(narrowed, {"text": "x"}, {"t": ["Area 3 / Topic 3-9"]})
    outside = answer_to_prediction(narrowed, {"text": "x"}, {"t": ["Area 9 / Topic 9-9"]})
    assert inside.result[0]["value"] == {"taxonomy": [["Area 3", "Topic 3-9"]]} and outside.result == []


# --- eval scoring -------------------------------------------------------------------------------------------

def test_agreement_is_exact_for_numbers_and_paths_and_a_similarity_for_texts() -> None:
    spec = build_task_spec(config("number_rating"))
    reviewed = answer_to_prediction(spec, {"text": TEXT}, {"stars": 4, "price": 12, "people": 1}).result
    predicted = answer_to_prediction(spec, {"text": TEXT}, {"stars": 4, "price": 12.5, "people": 1}).result
    assert control_agreement(spec, predicted, reviewed) == {"stars": 1.0, "price": 0.0, "people": 1.0}
    assert control_agreement(spec, [], reviewed)["stars"] == 0.0
    assert control_agreement(spec, [], [])["stars"] is None  # nothing reviewed: not scored
    taxonomy = build_task_spec(config("taxonomy"))
    a = answer_to_prediction(taxonomy, {"text": TEXT}, {"topic": "Sports / Tennis"}).result
    b = answer_to_prediction(taxonomy, {"text": TEXT}, {"topic": "Sports / Football"}).result
    assert control_agreement(taxonomy, a, a) == {"topic": 1.0} and control_agreement(taxonomy, a, b) == {"topic": 0.0}
    texts = build_task_spec(config("textarea"))
    reviewed = answer_to_prediction(texts, {"text": TEXT}, {"summary": "The phone is great.", "requests": []}).result
    predicted = answer_to_prediction(texts, {"text": TEXT}, {"summary": "the phone is GREAT", "requests": []}).result
    assert control_agreement(texts, predicted, reviewed) == {"summary": 1.0, "requests": None}
    assert text_similarity(["the charger broke"], ["the phone broke"]) == pytest.approx(2 / 3)
    assert text_similarity([], ["x"]) == 0.0 and text_similarity([], []) == 1.0
    spans = build_task_spec(config("per_region"))
    reviewed = answer_to_prediction(spans, {"text": TEXT}, ROUND_TRIPS[3][1]).result
    changed = json.loads(json.dumps(ROUND_TRIPS[3][1]).replace('"negative"', '"neutral"'))
    predicted = answer_to_prediction(spans, {"text": TEXT}, changed).result
    scores = control_agreement(spans, predicted, reviewed)
    assert scores["sentiment"] == 0.5 and scores["reason"] == 1.0 and scores["label"] == 1.0


# --- property test: any model answer, no exception and no invalid region -------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10 ** 30), max_value=10 ** 30) | st.floats(allow_nan=True)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=25,
)
NEAR = st.sampled_from([
    "Business / Markets", "Markets", "Sports/Tennis", "Science / Biology", "x" * 50_000, "", "0", "4", "-3", "1e999",
    "positive", "NEGATIVE", "Acme phone", "Zeta", "Product", "Brand", 3, 4.5, 6, 0, -1, 49.4, 10 ** 400, True, None,
    ["Sports", "Tennis"], ["a refund"] * 10,
])
VALUE = NEAR | JSON | st.lists(NEAR, max_size=6)
ENTITY = st.fixed_dictionaries(
    {"text": st.sampled_from(["Acme phone", "Zeta", "phone", "missing", "", "Acme phone is great"])
     | st.text(max_size=8),
     "label": st.sampled_from(["Product", "Brand", "Person"]) | JSON},
    optional={"sentiment": VALUE, "reason": VALUE, "extra": JSON},
)
ATTRIBUTE = st.sampled_from(["positive", "negative", "Neutral", "great", None, "", "x" * 50_000,
                             ["positive", "negative"], 3, {"a": 1}, ["why", "why not"]]) | JSON
PLAUSIBLE_ENTITY = st.fixed_dictionaries(
    {"text": st.sampled_from(["Acme phone", "Zeta", "Acme", "charger", "phone"]),
     "label": st.sampled_from(["Product", "Brand", "brand", "Person"])},
    optional={"sentiment": ATTRIBUTE, "reason": ATTRIBUTE, "Sentiment": ATTRIBUTE},
)
NEAR_BY: dict[str, list[Any]] = {
    "number_rating": [1, 3, 5, 2.5, 4.0, "4", " 2 ", 49.4, 49.75, 0, 6, -1, 10_001, 10 ** 400, "1e999", True, None,
                      "x"],
    "taxonomy": ["Business / Markets", "Markets", "sports/tennis", "Science / Biology", ["Sports", "Tennis"],
                 ["biz", "Startups"], "Sports / Genetics", "Genetics", "", None, 3],
    "textarea": ["a summary", "", "  ", "x" * 50_000, 42, None, True, {"text": "nested"}],
}
KEYS = {"textarea": ["summary", "requests"], "number_rating": ["stars", "price", "people"], "taxonomy": ["topic"],
        "per_region": ["label"]}


def answers(name: str) -> st.SearchStrategy[dict[str, Any]]:
    """Answers for one config: its own keys with near-valid values, sometimes in another case, with
    extra keys or junk values."""
    if name == "per_region":
        value: st.SearchStrategy[Any] = st.lists(PLAUSIBLE_ENTITY | PLAUSIBLE_ENTITY | ENTITY, min_size=1, max_size=4)
    else:
        mine = st.sampled_from(NEAR_BY[name])
        value = mine | mine | st.lists(mine, max_size=4) | NEAR
    near = st.fixed_dictionaries({key: value for key in KEYS[name]})
    own = st.fixed_dictionaries({key: value | VALUE for key in KEYS[name]})
    other_keys = st.sampled_from([k.upper() for k in KEYS[name]] + ["other", "label"])
    return st.one_of(near, near, near, own, st.dictionaries(other_keys, value | VALUE, max_size=4))


def raw_forms(answer: dict[str, Any]) -> st.SearchStrategy[str]:
    """The answer as a model may write it: plain JSON, fenced, cut off, or with prose around it."""
    text = json.dumps(answer)
    return st.sampled_from([text, text, text, f"```json\n{text}\n```", text[: max(1, len(text) // 2)],
                            f"Sure! {text} Done."])


@functools.cache
def parsed(name: str) -> tuple[Any, LabelInterface]:
    label_config = config(name)
    return build_task_spec(label_config), LabelInterface(label_config)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(NEW_CONFIGS), data=st.data())
def test_any_answer_gives_only_valid_regions(name: str, data: st.DataObject) -> None:
    spec, interface = parsed(name)
    written = answers(name).flatmap(raw_forms)
    raw = data.draw(st.one_of(written, written, written, st.text(max_size=40)))
    try:
        answer = parse_answer(raw)
    except UnparsableAnswer:
        return  # the pipeline counts it as unparsable; nothing reaches Label Studio
    prediction = answer_to_prediction(spec, {"text": TEXT}, answer)
    event(f"{name}: {len(prediction.result)} regions")
    item = prediction.as_ls("v")
    assert check_prediction(interface, spec, {"text": TEXT}, item) == []
    spans = {r["id"]: r["value"] for r in prediction.result if r["type"] == "labels"}
    for region in prediction.result:
        assert len(json.dumps(region)) < 20_000
        if region["type"] != "labels" and "start" in region["value"]:  # an attribute sits on its own span
            span = spans[region["id"]]
            assert (region["value"]["start"], region["value"]["end"]) == (span["start"], span["end"])
    # a result made from the answer is an example in the answer's own form, or none at all
    back = result_to_answer(spec, prediction.result)
    assert back == {} or set(back) == {c.name for c in spec.controls}


def test_a_spec_with_attributes_and_per_region_controls_survives_json() -> None:
    """The Batch API keeps each request's spec in a JSON state file (backend.runs.batch_api)."""
    from backend.runs.batch_api import controls_from_json, controls_to_json

    for name in NEW_CONFIGS:
        controls = build_task_spec(config(name)).controls
        assert controls_from_json(json.loads(json.dumps(controls_to_json(controls)))) == controls
