"""Issue 12, item 3: a gazetteer per <Labels> control from reviewed spans, offered to the LLM as candidate
spans (STUDENT_MODE=hint) and combined with its answer (cascade); it follows every review event."""

from __future__ import annotations

import json
import unicodedata
from typing import Any

from conftest import assert_valid, config, json_answer
from webhook_payloads import annotation_event, deleted_event, project, span

from backend.learning.gazetteer import GazetteerPolicy, build_gazetteer, isotonic, token_spans
from backend.learning.span_cascade import CascadePolicy, SpanCascade, combine_spans
from converters.task_spec import build_task_spec
from prompts import PromptRenderer, SpanCandidate

NER = config("ner")
CONTROL = build_task_spec(NER).controls[0]
T0 = 1_790_000_000.0
HEADER = "Known entities from reviewed examples"


def reviewed(text: str, *entities: tuple[str, str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(data, result) of a reviewed sentence; each entity is its first occurrence in the text."""
    return {"text": text}, [span(text, surface, label) for surface, label in entities]


def spans_of(gazetteer: Any, text: str) -> list[tuple[str, str]]:
    matches = gazetteer.match(text)
    for m in matches:
        assert text[m.start:m.end] == m.text  # exact offsets, always
    return [(m.text, m.label) for m in matches]


def many(*rows: tuple[dict[str, Any], list[dict[str, Any]]], times: int = 3) -> list[Any]:
    """Every reviewed sentence several times (distinct examples), so cross-validation sees each surface."""
    return [row for _ in range(times) for row in rows]


# --- matching ---------------------------------------------------------------------------------------

def test_longest_match_wins_and_matches_never_overlap() -> None:
    gazetteer = build_gazetteer(CONTROL, many(
        reviewed("He works for Bank of America now .", ("Bank of America", "ORG")),
        reviewed("She flew to America on Monday .", ("America", "LOC")),
        reviewed("Shares of York Stock Exchange members fell .", ("York Stock Exchange", "ORG")),
        reviewed("New York was cold .", ("New York", "LOC")),
    ))
    assert spans_of(gazetteer, "Bank of America opened an office in America .") == [
        ("Bank of America", "ORG"), ("America", "LOC")]
    # "York Stock Exchange" (3 tokens) is taken before "New York" (2), which then overlaps and is left out
    assert spans_of(gazetteer, "The New York Stock Exchange rose .") == [("York Stock Exchange", "ORG")]


def test_whole_words_only_and_unicode_boundaries() -> None:
    cafe_nfd = unicodedata.normalize("NFD", "Café Müller")
    gazetteer = build_gazetteer(CONTROL, many(
        reviewed("Paris is big .", ("Paris", "LOC")),
        reviewed("Zürich won .", ("Zürich", "ORG")),
        reviewed(f"We met at {cafe_nfd} .", (cafe_nfd, "LOC")),
        reviewed("Le Monde wrote so .", ("Le Monde", "ORG")),
    ))
    assert spans_of(gazetteer, "A Parisian view of Paris .") == [("Paris", "LOC")]
    assert spans_of(gazetteer, "Zürichsee is a lake ; Zürich is a city .") == [("Zürich", "ORG")]
    # combining marks belong to their word: "Café" in NFD is not cut after "Cafe"
    assert spans_of(gazetteer, f"{cafe_nfd}s is not {cafe_nfd} .") == [(cafe_nfd, "LOC")]
    assert spans_of(gazetteer, "xLe Monde and Le Mondes") == []
    assert token_spans("l'Équipe 2-1") == [(0, 1), (1, 2), (2, 8), (9, 10), (10, 11), (11, 12)]


def test_majority_label_and_unreliable_surfaces_are_left_out() -> None:
    rows = many(
        reviewed("Jordan scored twice .", ("Jordan", "PER")),
        reviewed("Jordan beat Iraq .", ("Jordan", "LOC"), ("Iraq", "LOC")),
        reviewed("Jordan played well .", ("Jordan", "PER")),
    )
    # a reviewer once labelled the common word "May" (a month here) as a person; it is mostly unlabelled
    rows += [reviewed("May Smith resigned in May .", ("May", "PER"))]
    rows += [reviewed(f"Prices rose {i} percent in May .") for i in range(12)]
    gazetteer = build_gazetteer(CONTROL, rows)
    assert gazetteer.entries["Jordan"].label == "PER"
    assert gazetteer.entries["Jordan"].majority == 6 and gazetteer.entries["Jordan"].labelled == 9
    assert "May" in gazetteer.known and "May" not in gazetteer.entries
    assert gazetteer.known["May"].occurrences == 14 and gazetteer.known["May"].score < 0.5
    assert spans_of(gazetteer, "In May , Iraq met Jordan .") == [("Iraq", "LOC"), ("Jordan", "PER")]


def test_scores_are_cross_validated_probabilities() -> None:
    rows = many(reviewed("Reuters reported it .", ("Reuters", "ORG")), times=10)
    rows += many(reviewed("Apple sold more .", ("Apple", "ORG")), reviewed("Apple pie is sweet ."), times=5)
    gazetteer = build_gazetteer(CONTROL, rows)
    reliable, mixed = gazetteer.known["Reuters"], gazetteer.known["Apple"]
    assert 0.0 <= mixed.score <= reliable.score <= 1.0
    assert reliable.score == 1.0  # every held-out "Reuters" was labelled ORG by its reviewer
    xs, ys = isotonic([(0.1, 1.0), (0.2, 0.0), (0.3, 1.0), (0.3, 1.0)])
    assert ys == sorted(ys) and xs == [0.1, 0.3]


def test_held_out_f1_is_what_the_gazetteer_finds_of_reviews_it_was_built_without() -> None:
    known = many(reviewed("Reuters reported it .", ("Reuters", "ORG")), times=10)
    new_names = [reviewed(f"Name{i} spoke .", (f"Name{i}", "PER")) for i in range(10)]  # each seen once
    assert build_gazetteer(CONTROL, known).held_out_f1 == 1.0
    assert build_gazetteer(CONTROL, new_names).held_out_f1 == 0.0  # every held-out name is new to it
    # half the held-out spans found, every match right: precision 1, recall 0.5
    assert build_gazetteer(CONTROL, known + new_names).held_out_f1 == round(2 * 0.5 / 1.5, 4)
    # a surface reviewers mostly leave unlabelled is not kept, so its held-out matches cost nothing
    noisy = known + [reviewed("May Smith resigned in May .", ("May", "PER"))]
    noisy += [reviewed(f"Prices rose {i} percent in May .") for i in range(12)]
    assert build_gazetteer(CONTROL, noisy).held_out_f1 == round(2 * 10 / 11 / (1 + 10 / 11), 4)


def test_plain_words_are_the_ones_reviewers_never_labelled() -> None:
    gazetteer = build_gazetteer(CONTROL, many(
        reviewed("The minister met Kohl on Tuesday .", ("Kohl", "PER")),
        reviewed("The Kohl government fell on Tuesday .", ("Kohl", "PER")),
    ))
    assert {"The", "minister", "on", "Tuesday", "government", "fell", "."} <= gazetteer.plain
    assert "Kohl" not in gazetteer.plain and "met" in gazetteer.plain  # "met": three times, never labelled
    text = "On Tuesday the minister met Ann ."
    assert [text[s:e] for s, e in gazetteer.plain_runs(text)] == ["Tuesday", "minister met", "."]


def test_no_spans_no_entries() -> None:
    assert len(build_gazetteer(CONTROL, [reviewed("Nothing to see here .")])) == 0
    assert build_gazetteer(CONTROL, [], GazetteerPolicy()).match("Paris") == []


# --- the cascade's combination ----------------------------------------------------------------------

def llm_region(text: str, surface: str, label: str, score: float = 0.6) -> dict[str, Any]:
    region = span(text, surface, label)
    return {**region, "score": score}


def test_combination_keeps_exact_offsets_and_lets_a_reliable_gazetteer_span_win() -> None:
    text = "Bank of America hired Ann Lee in Paris on Monday ."
    regions = [llm_region(text, "America", "LOC"), llm_region(text, "Ann Lee", "PER", 0.9),
               llm_region(text, "Paris", "PER"), llm_region(text, "Monday", "MISC", 0.4)]  # unsure: dropped
    candidates = [SpanCandidate("label", 0, 15, "Bank of America", "ORG", 0.9),
                  SpanCandidate("label", 33, 38, "Paris", "LOC", 0.8),
                  SpanCandidate("label", 22, 25, "Ann", "PER", 0.2)]  # unreliable: the LLM's span stays
    out = combine_spans(text, regions, candidates, CascadePolicy(trust=0.5), CONTROL)
    assert [(r["value"]["text"], r["value"]["labels"][0]) for r in out] == [
        ("Bank of America", "ORG"), ("Ann Lee", "PER"), ("Paris", "LOC")]
    for region in out:
        value = region["value"]
        assert text[value["start"]:value["end"]] == value["text"] and 0.0 <= region["score"] <= 1.0
    assert_valid(NER, {"text": text}, {"result": out, "model_version": "x"})
    # a candidate whose text is not at its offsets (a stale one) is never emitted
    stale = [SpanCandidate("label", 1, 16, "Bank of America", "ORG", 0.9)]
    assert combine_spans(text, [], stale, CascadePolicy(), CONTROL) == []


def test_unsure_llm_spans_stay_while_the_gazetteer_finds_little_of_unseen_reviews() -> None:
    text = "Ann Lee met Bob in Paris ."
    regions = [llm_region(text, "Ann Lee", "PER", 0.9), llm_region(text, "Bob", "PER", 0.4)]

    def kept(f1: float | None) -> list[str]:
        candidates = [SpanCandidate("label", 19, 24, "Paris", "LOC", 0.8, gazetteer_f1=f1),
                      SpanCandidate("label", 8, 11, "met", "", 0.0, False, gazetteer_f1=f1)]
        out = combine_spans(text, regions, candidates, CascadePolicy(), CONTROL)
        assert_valid(NER, {"text": text}, {"result": out, "model_version": "x"})
        return [r["value"]["text"] for r in out]

    strong = CascadePolicy().strong_from
    assert kept(0.2) == ["Ann Lee", "Bob", "Paris"]  # a young gazetteer: the LLM's unsure span is kept
    assert kept(strong) == kept(0.9) == ["Ann Lee", "Paris"]  # a reliable one: it costs more than it adds
    assert kept(None) == ["Ann Lee", "Paris"]  # unmeasured: as before the measure existed
    # the reliable gazetteer span still replaces what it overlaps, and plain words still drop LLM spans
    plain = [llm_region(text, "met", "MISC", 0.9), llm_region(text, "Paris", "PER", 0.9)]
    candidates = [SpanCandidate("label", 19, 24, "Paris", "LOC", 0.8, gazetteer_f1=0.1),
                  SpanCandidate("label", 8, 11, "met", "", 0.0, False, gazetteer_f1=0.1)]
    out = combine_spans(text, plain, candidates, CascadePolicy(), CONTROL)
    assert [(r["value"]["text"], r["value"]["labels"][0]) for r in out] == [("Paris", "LOC")]


def test_span_cascade_passes_other_controls_through() -> None:
    spec = build_task_spec(NER)
    text = "Reuters said so ."
    other = {"id": "c", "from_name": "other", "to_name": "text", "type": "choices", "value": {"choices": ["x"]}}
    out = SpanCascade()(spec, {"text": text}, [other], [SpanCandidate("label", 0, 7, "Reuters", "ORG", 0.9)])
    assert other in out and any(r.get("from_name") == "label" for r in out)


# --- through the service: webhooks in, prompts out --------------------------------------------------

def feed(client: Any, app: Any, events: list[dict[str, Any]]) -> None:
    for event in events:
        assert client.post("/webhook", json=event).status_code == 200
    app.extensions["lsllm_model"].worker.drain()


def predict(client: Any, text: str, label_config: str = NER) -> dict[str, Any]:
    response = client.post("/predict", json={"tasks": [{"id": 1, "data": {"text": text}}], "project": "7.1",
                                             "label_config": label_config})
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()["results"][0]


REUTERS = [("Reuters reported that Bonn agreed .", [("Reuters", "ORG"), ("Bonn", "LOC")]),
           ("Bonn said Reuters was wrong .", [("Bonn", "LOC"), ("Reuters", "ORG")]),
           ("Reuters and Bonn again .", [("Reuters", "ORG"), ("Bonn", "LOC")])]


def reuters_events(start: int = 0, repeat: int = 2) -> list[dict[str, Any]]:
    events = []
    for i in range(repeat * len(REUTERS)):
        text, entities = REUTERS[i % len(REUTERS)]
        result = [span(text, s, label) for s, label in entities]
        events.append(annotation_event("ANNOTATION_CREATED", NER, 100 + start + i, 200 + start + i, text, result,
                                       T0 + i))
    return events


def bare(text: str) -> str:
    """The task's user message with no candidates, as the renderer writes it (whatever the template)."""
    return PromptRenderer().user(build_task_spec(NER), {"text": text})


def hint_block(provider: Any) -> str | None:
    content = provider.requests[-1]["messages"][-1]["content"]
    return content.split(HEADER, 1)[1] if HEADER in content else None


def test_hint_mode_learns_from_webhooks_and_forgets_on_update_and_delete(make_app, provider) -> None:
    app = make_app(student_mode="hint", student_min_examples=2, selection_refresh_seconds=0, llm_cache=False)
    client = app.test_client()
    provider.responder = lambda body: json_answer({"label": []})
    task = "Officials in Bonn denied the Reuters story ."
    predict(client, task)
    assert hint_block(provider) is None  # nothing reviewed yet: the prompt is the task text alone

    feed(client, app, reuters_events())
    plain_only = "It was wrong again ."  # no known entity, only plain words: no block, same prompt
    predict(client, plain_only)
    assert provider.requests[-1]["messages"][-1]["content"] == bare(plain_only)
    predict(client, task)
    block = hint_block(provider)
    assert block is not None, provider.requests[-1]["messages"][-1]
    assert '{"text": "Bonn", "label": "LOC"}' in block and '{"text": "Reuters", "label": "ORG"}' in block

    # reviewers correct every "Reuters" span away (updated annotations): it leaves the gazetteer
    updates = []
    for i in range(2 * len(REUTERS)):
        text, entities = REUTERS[i % len(REUTERS)]
        result = [span(text, s, label) for s, label in entities if s != "Reuters"]
        updates.append(annotation_event("ANNOTATION_UPDATED", NER, 100 + i, 200 + i, text, result, T0 + 100 + i))
    feed(client, app, updates)
    predict(client, task)
    block = hint_block(provider)
    assert block is not None and "Reuters" not in block and '"Bonn"' in block

    # every annotation deleted: no gazetteer, and the prompt is unchanged again
    feed(client, app, [deleted_event(NER, [100 + i for i in range(2 * len(REUTERS))])])
    predict(client, task)
    assert hint_block(provider) is None
    assert provider.requests[-1]["messages"][-1]["content"] == bare(task)


def test_deleted_tasks_and_config_changes_rebuild(make_app, provider) -> None:
    app = make_app(student_mode="hint", student_min_examples=2, selection_refresh_seconds=0, llm_cache=False)
    client = app.test_client()
    provider.responder = lambda body: json_answer({"label": []})
    feed(client, app, reuters_events())
    task = "Reuters in Bonn ."
    predict(client, task)
    assert '"Reuters"' in (hint_block(provider) or "")

    # the ORG label leaves the config: examples with ORG spans are set aside, ORG candidates disappear
    no_org = NER.replace('<Label value="ORG"', '<Label value="NOPE"') if '<Label value="ORG"' in NER else None
    assert no_org is not None, NER
    feed(client, app, [{"action": "PROJECT_UPDATED", "project": project(7, no_org)}])
    predict(client, task, no_org)
    assert "Reuters" not in (hint_block(provider) or "")

    feed(client, app, [{"action": "PROJECT_UPDATED", "project": project(7, NER)}])
    predict(client, task)
    assert '"Reuters"' in (hint_block(provider) or "")
    feed(client, app, [{"action": "TASKS_DELETED", "tasks": [{"id": 200 + i} for i in range(6)],
                        "project": project(7, NER)}])
    predict(client, task)
    assert hint_block(provider) is None


def test_off_mode_and_choices_prompts_are_unchanged(make_app, provider) -> None:
    app = make_app(student_mode="off", student_min_examples=2, selection_refresh_seconds=0, llm_cache=False)
    client = app.test_client()
    provider.responder = lambda body: json_answer({"label": []})
    feed(client, app, reuters_events())
    predict(client, "Reuters in Bonn .")
    assert hint_block(provider) is None


def test_cascade_answers_with_valid_regions_at_exact_offsets(make_app, provider) -> None:
    app = make_app(student_mode="cascade", student_min_examples=2, selection_refresh_seconds=0, llm_cache=False)
    client = app.test_client()
    feed(client, app, reuters_events(repeat=3))
    task = "Reuters quoted Ann Lee in Bonn ; Reuters again ."
    # the model finds a person the gazetteer never saw, mislabels Bonn, and labels "again", a word the
    # reviewers left unlabelled every time
    provider.responder = lambda body: json_answer({"label": [
        {"text": "Ann Lee", "label": "PER"}, {"text": "Bonn", "label": "ORG"}, {"text": "again", "label": "MISC"}]})
    result = predict(client, task)
    # the cascade's LLM call is the plain one (what was measured); its spans are combined afterwards
    assert provider.requests[-1]["messages"][-1]["content"] == bare(task)
    assert_valid(NER, {"text": task}, result)
    got = sorted((r["value"]["start"], r["value"]["text"], r["value"]["labels"][0]) for r in result["result"])
    assert got == [(0, "Reuters", "ORG"), (15, "Ann Lee", "PER"), (26, "Bonn", "LOC"), (33, "Reuters", "ORG")]
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'lsllm_spans_total{source="gazetteer"} 3.0' in metrics
    assert 'lsllm_spans_total{source="llm"} 1.0' in metrics
    assert json.loads(provider.requests[-1]["messages"][-2]["content"])  # a few-shot answer precedes the task


def test_large_example_sets_build_in_the_background_and_tasks_use_the_previous_gazetteer() -> None:
    import time

    from backend.learning.gazetteer_book import GazetteerBook
    from backend.store.example_store import StoredExample

    def rows(n: int, surface: str) -> list[StoredExample]:
        text = f"{surface} said so ."
        return [StoredExample(i, i, {"text": text}, [span(text, surface, "ORG")], ["ORG"], None, None, 0.0,
                              "live", i) for i in range(n)]

    spec = build_task_spec(NER)
    book = GazetteerBook(min_examples=2, sync_limit=3)

    def wait_for(seq: int, examples: list[StoredExample], text: str) -> list[str]:
        for _ in range(200):
            found = [c.text for c in book.candidates("p", spec, seq, examples, {"text": text}) if c.label]
            if found != ["Reuters"]:  # the new example set's gazetteer has replaced the old one
                return found
            time.sleep(0.01)
        return []

    assert book.candidates("p", spec, 1, rows(1, "Reuters"), {"text": "Reuters"}) == ()  # below min_examples
    small = rows(3, "Reuters")
    found = book.candidates("p", spec, 1, small, {"text": "Reuters and Bayer"})
    assert [c.text for c in found if c.label] == ["Reuters"]  # small: built on the caller's thread
    # every candidate says how well its gazetteer did on reviews it was built without (the cascade reads it)
    assert {c.gazetteer_f1 for c in found} == {1.0}
    large = rows(10, "Bayer")
    first = [c.text for c in book.candidates("p", spec, 2, large, {"text": "Reuters and Bayer"}) if c.label]
    assert first in (["Reuters"], ["Bayer"])  # the previous gazetteer while the next one builds (or done)
    assert wait_for(2, large, "Reuters and Bayer") == ["Bayer"]
