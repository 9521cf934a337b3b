"""Long documents: the pure splitting and merging (converters.chunking), and whole documents through
/predict against a scripted provider that answers only what fits its context and answer cap."""

from __future__ import annotations

import re

import pytest
from conftest import assert_valid
from long_docs_provider import CONLL, CONLL_CONFIG, GoldProvider, conll_sentences, join_document

from backend.predict.chunked import choices_budget, combine_choices, ner_budget, plan_cut
from backend.settings import Settings
from converters.chunking import Chunk, ChunkSpan, merge_spans, select_for_classification, split_text
from converters.spec import ControlSpec, LabelSpec, TaskSpec

needs_conll = pytest.mark.skipif(not CONLL.exists(), reason="CoNLL-2003 test split not in LSLLM_DATASETS")

TEXT = "\n\n".join(
    " ".join(f"Sentence {p}.{s} mentions Paris and Ada Lovelace." for s in range(8)) for p in range(6)
)


def test_a_short_text_is_one_chunk() -> None:
    assert split_text("Short text.", 100, 20) == [Chunk(0, 11, "Short text.", 0, 11)]


def test_chunks_cover_the_text_on_sentence_boundaries_with_overlap() -> None:
    chunks = split_text(TEXT, 400, 100)
    assert len(chunks) > 3
    assert all(TEXT[c.start:c.end] == c.text and len(c.text) <= 400 for c in chunks)
    assert chunks[0].start == 0 and chunks[-1].end == len(TEXT)
    for a, b in zip(chunks, chunks[1:]):
        assert b.start < a.end  # overlap
        assert b.start > a.start  # progress
        assert TEXT[b.start - 1] in " \n"  # a chunk starts after a boundary, never mid-word
        assert a.own_end == b.own_start  # own parts tile the text
    assert chunks[0].own_start == 0 and chunks[-1].own_end == len(TEXT)


def test_a_sentence_longer_than_the_budget_is_cut_between_words() -> None:
    text = "word " * 500
    chunks = split_text(text, 120, 30)
    assert all(len(c.text) <= 120 for c in chunks)
    assert all(not c.text.startswith("ord") for c in chunks)
    with pytest.raises(ValueError):
        split_text(text, 0)


def test_spans_seen_twice_in_an_overlap_are_kept_once_at_document_offsets() -> None:
    chunks = split_text(TEXT, 400, 100)
    found = []
    for chunk in chunks:
        spans = []
        position = chunk.text.find("Paris")
        while position != -1:
            spans.append(ChunkSpan(position, position + 5, "LOC"))
            position = chunk.text.find("Paris", position + 1)
        found.append(spans)
    merged = merge_spans(chunks, found)
    assert [(s.start, s.end) for s in merged] == [(i, i + 5) for i in _all(TEXT, "Paris")]
    assert all(TEXT[s.start:s.end] == "Paris" for s in merged)


def test_colliding_spans_from_two_chunks_keep_one() -> None:
    chunks = [Chunk(0, 20, "a" * 20, 0, 10), Chunk(5, 25, "a" * 20, 10, 25)]
    merged = merge_spans(chunks, [[ChunkSpan(8, 14, "X")], [ChunkSpan(3, 7, "Y")]])  # doc 8-14 and 8-12
    assert [(s.start, s.end, s.label) for s in merged] == [(8, 14, "X")]


def test_a_selection_for_classification_is_bounded_and_keeps_head_tail_and_relevant_sentences() -> None:
    filler = " ".join(f"Filler sentence number {i} about the weather." for i in range(300))
    text = "The film opens in Rome. " + filler + " I hated this dreadful film. " + filler + " The end credits roll."
    selected = select_for_classification(text, 1500, "negative dreadful hated positive")
    assert len(selected) <= 1500
    assert selected.startswith("The film opens in Rome.")
    assert "I hated this dreadful film." in selected
    assert selected.rstrip().endswith("The end credits roll.")
    assert select_for_classification("short", 100) == "short"


def _all(text: str, needle: str) -> list[int]:
    out, i = [], text.find(needle)
    while i != -1:
        out.append(i)
        i = text.find(needle, i + 1)
    return out


def test_budgets_follow_the_answer_cap_the_context_and_chunk_chars(tmp_path) -> None:
    provider = Settings.model_validate({"llm_base_url": "http://x", "llm_max_tokens": 1024})
    assert ner_budget(provider) == 4096  # the answer cap binds a provider
    local = provider.model_copy(update={"local_status_file": tmp_path / "s", "local_n_ctx": 4096})
    assert ner_budget(local) < 4096 and choices_budget(local) == ner_budget(local)  # the context binds
    assert ner_budget(provider.model_copy(update={"chunk_chars": 900})) == 900
    assert choices_budget(provider) > 50_000


def test_votes_weigh_chunks_by_the_evidence_of_their_scores() -> None:
    spec = TaskSpec((ControlSpec("s", "choices", "t", "text", (LabelSpec("pos", "pos"), LabelSpec("neg", "neg"))),),
                    (("t", "text"),))
    region = {"from_name": "s", "to_name": "t", "type": "choices"}

    def vote(choice: str, score: float | None = None) -> list[dict]:
        return [{**region, "value": {"choices": [choice]}, **({"score": score} if score is not None else {})}]

    # pages that barely lean one way do not outvote the one passage that is sure
    (combined,) = combine_choices(spec, [vote("pos", 0.6), vote("pos", 0.55), vote("pos", 0.5), vote("neg", 0.97), []])
    assert combined["value"]["choices"] == ["neg"]
    assert combined["score"] == pytest.approx(0.97)
    # several sure chunks outweigh one
    (combined,) = combine_choices(spec, [vote("pos", 0.95), vote("pos", 0.9), vote("neg", 0.97)])
    assert combined["value"]["choices"] == ["pos"]
    # no scores: a majority vote
    (combined,) = combine_choices(spec, [vote("neg"), vote("pos"), vote("neg")])
    assert combined["value"]["choices"] == ["neg"] and "score" not in combined


# --- whole documents through /predict ----------------------------------------------------------------
@needs_conll
def test_a_long_document_is_answered_whole_through_predict(make_app, provider) -> None:
    sentences = conll_sentences()[:150]
    text, gold = join_document(sentences)
    gold_provider = GoldProvider(sentences, context_tokens=4096)
    provider.responder = gold_provider
    config = CONLL_CONFIG.read_text()
    tasks = [{"id": 1, "data": {"text": text}}]

    # before: one call for the whole text, which the provider cuts at its answer cap (or refuses)
    app = make_app(llm_logprobs=False, chunk_chars=10**6)
    body = app.test_client().post("/predict", json={"tasks": tasks, "label_config": config}).get_json()
    before = body["results"][0]["result"] if body["results"] and body["results"][0] else []
    assert len(before) < len(gold) / 2

    app = make_app(llm_logprobs=False, chunk_chars=3000)
    calls = len(provider.requests)
    body = app.test_client().post("/predict", json={"tasks": tasks, "label_config": config}).get_json()
    item = body["results"][0]
    assert_valid(config, tasks[0]["data"], item)
    found = {(r["value"]["start"], r["value"]["end"], r["value"]["labels"][0]) for r in item["result"]}
    recall = len(found & set(gold)) / len(gold)
    assert recall >= 0.99, recall
    assert len(found) == len(item["result"])  # no duplicates from the overlaps
    # one call per chunk, and two more for each chunk whose answer reached the cap (dense sports tables)
    assert len(provider.requests) - calls >= len(split_text(text, 3000, 200))
    assert gold_provider.refused == 0


def test_plan_cut_sends_a_short_or_several_object_task_whole() -> None:
    settings = Settings.model_validate({"llm_base_url": "http://x", "chunk_chars": 50})
    ner = TaskSpec((ControlSpec("l", "labels", "t", "text", (LabelSpec("A", "A"),)),), (("t", "text"),))
    assert plan_cut(settings, ner, {"t": "short"}).name is None
    assert plan_cut(settings, ner, {"t": "A long sentence. " * 10}).calls > 1
    two = TaskSpec(ner.controls, (("t", "text"), ("u", "other")))
    assert plan_cut(settings, two, {"t": "A long sentence. " * 10, "u": "x"}).name is None


def test_lsllm_plan_shows_chunked_tasks_the_calls_they_add_and_masking(tmp_path, monkeypatch, capsys) -> None:
    import json

    from backend.cli import main

    long_text = "Ada Lovelace met Charles Babbage in London. " * 60  # 2,640 characters: 3 chunks of <= 1,000
    tasks = [{"text": long_text}] * 4 + [{"text": "A short one."}] * 6
    (tmp_path / "tasks.json").write_text(json.dumps(tasks))
    (tmp_path / "config.xml").write_text(CONLL_CONFIG.read_text() if CONLL_CONFIG.exists() else NER_CONFIG)
    for key, value in {"LLM_BASE_URL": "http://127.0.0.1:9/v1", "DATA_DIR": str(tmp_path / "data"),
                       "CHUNK_CHARS": "1000", "PII_MASKING": "on"}.items():
        monkeypatch.setenv(key, value)
    assert main(["plan", "--config", str(tmp_path / "config.xml"), "--tasks", str(tmp_path / "tasks.json"),
                 "--calls", "0"]) == 0
    out = capsys.readouterr().out
    extra = 4 * (len(split_text(long_text, 1000, 200)) - 1)
    assert extra >= 8
    assert f"4 tasks sent in chunks, {extra} more calls" in out
    assert re.search(r"^PII masking +on ", out, re.M)

    monkeypatch.setenv("PII_MASKING", "off")
    monkeypatch.setenv("CHUNK_CHARS", "0")
    assert main(["plan", "--config", str(tmp_path / "config.xml"), "--tasks", str(tmp_path / "tasks.json"),
                 "--calls", "0"]) == 0
    out = capsys.readouterr().out
    assert "none over the budget: one call per task" in out
    assert re.search(r"^PII masking +off$", out, re.M)


NER_CONFIG = """<View><Labels name="label" toName="text"><Label value="PER"/><Label value="LOC"/></Labels>
<Text name="text" value="$text"/></View>"""
