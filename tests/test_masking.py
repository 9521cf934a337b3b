"""PII masking: what the detector finds on a set of planted e-mails, phones, IBANs, card numbers and
names; that the provider (the scripted server's request log) never receives any of them, few-shot
examples included; and that predictions made on placeholders point at the original text."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
from conftest import assert_valid
from pii_samples import samples
from scripted_provider import Reply, last_user_text

from backend.predict.chunked import masking_applies
from backend.settings import Settings
from converters.masking import KINDS, Masker, PiiDetector, parse_kinds
from prompts import Example, TaskContext

CONFIG = """<View>
  <Text name="text" value="$text"/>
  <Labels name="label" toName="text">
    <Label value="Person"/><Label value="Contact"/><Label value="Payment"/><Label value="Org"/>
  </Labels>
</View>"""
LABEL_OF = {"PERSON": "Person", "EMAIL": "Contact", "PHONE": "Contact", "IBAN": "Payment", "CARD": "Payment"}
PLACEHOLDER = re.compile(r"<(PERSON|EMAIL|PHONE|IBAN|CARD)_\d+>")


@pytest.fixture(scope="module")
def detector() -> PiiDetector:
    d = PiiDetector(parse_kinds("EMAIL,PHONE,IBAN,CREDIT_CARD,IP,PERSON"))
    d.warm()
    return d


def test_detector_recall_on_the_planted_set(detector) -> None:
    found, planted = Counter(), Counter()
    for text, values in samples():
        spans = [(f.start, f.end) for f in detector.find(text)]
        for value, kind in values:
            start = text.index(value)
            planted[kind] += 1
            found[kind] += any(a <= start and start + len(value) <= b for a, b in spans)
    recall = {kind: found[kind] / planted[kind] for kind in planted}
    print("detector recall:", recall, dict(planted))
    assert set(planted) == {"PERSON", "EMAIL", "PHONE", "IBAN", "CREDIT_CARD"}
    assert all(r == 1.0 for r in recall.values()), recall


def test_known_misses_and_common_words_are_what_the_readme_says(detector) -> None:
    def kinds(text: str) -> list[tuple[str, str]]:
        return [(text[f.start:f.end], f.kind) for f in detector.find(text)]

    assert kinds("May I help? The CEO will call.") == []  # first names that are common words are not names
    assert kinds("Satya Nadella said") == [("Satya Nadella", "PERSON")]
    assert kinds("ask nguyen van an") == []  # a lower-case name is missed (no NLP model)
    assert kinds("card 4111-1111-1111-1112") == []  # a number failing the Luhn check is no card


def test_placeholders_are_stable_within_a_request_and_map_back(detector) -> None:
    masker = Masker(detector)
    text = "John Smith (john@example.com) met Maria Garcia. John Smith paid."
    masked = masker.mask(text)
    assert masked.masked == "<PERSON_1> (<EMAIL_1>) met <PERSON_2>. <PERSON_1> paid."
    for r in masked.replacements:
        assert masked.to_original(r.masked_start, r.masked_end) == (r.start, r.end)
    start = masked.masked.index("met")
    assert masked.to_original(start, start + 3) == (text.index("met"), text.index("met") + 3)
    # a span touching a placeholder takes the whole original value
    assert masked.to_original(0, 3) == (0, len("John Smith"))
    assert masker.mask_value({"label": [{"text": "Maria Garcia"}]}) == {"label": [{"text": "<PERSON_2>"}]}
    with pytest.raises(ValueError, match="SSN"):
        parse_kinds("EMAIL,SSN")
    assert set(KINDS) >= set(parse_kinds("EMAIL,PHONE,IBAN,CREDIT_CARD,IP,PERSON"))


def test_the_embedded_model_is_not_masked_unless_asked(tmp_path) -> None:
    hosted = Settings.model_validate({"llm_base_url": "http://x", "pii_masking": "on"})
    local = hosted.model_copy(update={"local_status_file": tmp_path / "status"})
    assert masking_applies(hosted) and not masking_applies(local)
    assert masking_applies(local.model_copy(update={"pii_masking": "always"}))
    assert not masking_applies(hosted.model_copy(update={"pii_masking": "off"}))


def placeholder_answers(body: dict) -> Reply:
    """Labels every placeholder the model is shown (and "Acme Corp"), in reading order."""
    text = last_user_text(body)
    items = [(m.start(), {"text": m.group(), "label": LABEL_OF[m.group(1)]}) for m in PLACEHOLDER.finditer(text)]
    items += [(m.start(), {"text": "Acme Corp", "label": "Org"}) for m in re.finditer("Acme Corp", text)]
    return Reply(content=json.dumps({"label": [item for _, item in sorted(items, key=lambda p: p[0])]}))


EXAMPLE = Example({"text": "Write to Bob Jones at bob.jones@example.com or +44 20 7946 0111."},
                  {"label": [{"text": "Bob Jones", "label": "Person"},
                             {"text": "bob.jones@example.com", "label": "Contact"}]})


@pytest.mark.parametrize("chunk_chars", [0, 150])
def test_predict_sends_no_personal_data_and_maps_answers_back(make_app, provider, chunk_chars) -> None:
    provider.responder = placeholder_answers
    app = make_app(pii_masking="on", llm_logprobs=False, chunk_chars=chunk_chars)
    # a few-shot example with personal data of its own, chosen for every task (and every chunk)
    app.extensions["lsllm_model"].predictor.pipeline.context = lambda pid, spec, texts: TaskContext(spec, [EXAMPLE])
    cases = samples()
    if chunk_chars:  # one long document: chunks, each masked on its own
        cases = [("\n".join(t for t, _ in cases), [v for _, vs in cases for v in vs])]
    tasks = [{"id": i, "data": {"text": text}} for i, (text, _) in enumerate(cases)]
    body = app.test_client().post("/predict", json={"tasks": tasks, "label_config": CONFIG}).get_json()

    sent = json.dumps(provider.requests, ensure_ascii=False)
    assert provider.requests
    leaked = [v for _, values in cases for v, _ in values if v in sent]
    leaked += [v for v in ("Bob Jones", "bob.jones@example.com", "7946 0111") if v in sent]
    assert leaked == []
    assert "<EMAIL_1>" in sent and "<PERSON_1>" in sent
    if chunk_chars:
        assert len(provider.requests) > 1
    for task, (text, values), item in zip(tasks, cases, body["results"]):
        assert_valid(CONFIG, task["data"], item)
        got = {(r["value"]["text"], r["value"]["labels"][0]) for r in item["result"]}
        for value, kind in values:
            assert (value, LABEL_OF["CARD" if kind == "CREDIT_CARD" else kind]) in got, (value, got)
        for region in item["result"]:
            v = region["value"]
            assert text[v["start"]:v["end"]] == v["text"]
        if "Acme Corp" in text:
            assert ("Acme Corp", "Org") in got


def test_the_response_cache_keys_on_the_masked_prompt(make_app, provider) -> None:
    provider.responder = placeholder_answers
    app = make_app(pii_masking="on", llm_logprobs=False)
    client = app.test_client()
    one = {"id": 1, "data": {"text": "Please write to anna.lee@example.com today."}}
    two = {"id": 2, "data": {"text": "Please write to tom.king@example.org today."}}
    first = client.post("/predict", json={"tasks": [one], "label_config": CONFIG}).get_json()["results"][0]
    calls = len(provider.requests)
    second = client.post("/predict", json={"tasks": [two], "label_config": CONFIG}).get_json()["results"][0]
    assert len(provider.requests) == calls  # the same masked prompt: answered from the cache
    assert first["result"][0]["value"]["text"] == "anna.lee@example.com"
    assert second["result"][0]["value"]["text"] == "tom.king@example.org"


def test_batch_mode_sends_masked_tasks_live_never_in_an_upload(tmp_path) -> None:
    """`lsllm prelabel --batch` uploads raw requests: a masked task must not be one of them."""
    from conftest import make_settings
    from scripted_provider import ScriptedProvider

    from backend.llm.pricing import PriceTable
    from backend.runs.batch_api import BatchOptions, BatchRun
    from backend.runs.prelabel import RunTarget
    from backend.service.app import build_model

    cases = samples()[:4]
    with ScriptedProvider(placeholder_answers) as provider:
        model = build_model(make_settings(tmp_path, provider.base_url, llm_model="gpt-4o-mini", pii_masking="on",
                                          llm_logprobs=False))
        try:
            plan = model.predictor.plan(CONFIG)
            pushed: list[dict] = []
            target = RunTarget(model.predictor, plan, "v-batch", "7", pushed.extend, PriceTable.from_setting(None))
            todo = [{"id": i, "data": {"text": t}, "predictions": []} for i, (t, _) in enumerate(cases)]
            stats = BatchRun(target, BatchOptions(tmp_path / "state.json", poll_seconds=0.01)).run(iter(todo))
        finally:
            model.close()
        assert provider.batches.uploads == 0
        sent = json.dumps(provider.requests, ensure_ascii=False)
    assert len(provider.requests) == len(cases) and stats.predicted == len(cases)
    assert [v for _, values in cases for v, _ in values if v in sent] == []
    for item in pushed:
        text, values = cases[item["task"]]
        got = {(r["value"]["text"], r["value"]["labels"][0]) for r in item["result"]}
        assert all((v, LABEL_OF["CARD" if k == "CREDIT_CARD" else k]) in got for v, k in values)
