"""`lsllm eval` against the scripted provider: files written, figures right on answers the test controls,
examples taken in through the event table, and no test gold ever sent to the provider."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import scripted_provider
from conftest import make_settings
from scripted_provider import Reply, ScriptedProvider, last_user_text

from backend.cli import main
from backend.runs.eval import EvalOptions, parse_points
from backend.runs.eval_report import eval_settings, run_eval
from backend.service.app import build_model

CONFIG = """<View>
  <Text name="text" value="$text"/>
  <Choices name="weather" toName="text" choice="single">
    <Choice value="alpha"/>
    <Choice value="bravo"/>
  </Choices>
</View>"""
LABELS = ("alpha", "bravo")
CANARY = "LEAKCANARY"


def _task(text: str, label: str, ref: str) -> dict[str, Any]:
    return {"data": {"text": text, "ref_id": ref}, "annotations": [{"result": [
        {"id": f"{CANARY}-{ref}", "from_name": "weather", "to_name": "text", "type": "choices",
         "value": {"choices": [label]}}]}]}


# train: "sunny" texts are alpha, "rainy" ones bravo (each text has its own other words)
TRAIN = [_task(f"sunny morning number{i} tr{i}", "alpha", f"tr{i}") for i in range(6)] + [
    _task(f"rainy evening number{i} tr{i + 6}", "bravo", f"tr{i + 6}") for i in range(6)]
# test: gold follows the same rule; the scripted model answers the first 4 right (confidently) and the
# last 2 wrong (unsure)
TEST = [
    _task("sunny day qa", "alpha", "te0"), _task("rainy day qb", "bravo", "te1"),
    _task("sunny noon qc", "alpha", "te2"), _task("rainy noon qd", "bravo", "te3"),
    _task("sunny dusk qe", "alpha", "te4"), _task("rainy dusk qf", "bravo", "te5"),
]
GOLD = {t["data"]["text"]: t["annotations"][0]["result"][0]["value"]["choices"][0] for t in TEST}
WRONG = {"sunny dusk qe", "rainy dusk qf"}
TRAIN_TEXTS = {t["data"]["text"] for t in TRAIN}


def responder(body: dict[str, Any]) -> Reply:
    text = last_user_text(body)
    for test_text, gold in GOLD.items():
        if test_text in text:
            if test_text in WRONG:
                other = next(label for label in LABELS if label != gold)
                return Reply(content=json.dumps({"weather": other}), logprob=math.log(0.5))
            return Reply(content=json.dumps({"weather": gold}), logprob=math.log(0.95))
    return Reply(content=json.dumps({"weather": "alpha"}))


@pytest.fixture(autouse=True)
def label_alternatives(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give the label token a top_logprobs list (the label at its own probability p, the other label at
    1 - p), so a choice's score is exactly p = exp(Reply.logprob): scores the test controls."""
    original = scripted_provider.completion

    def completion(body: dict[str, Any], reply: Reply) -> dict[str, Any]:
        answer = original(body, reply)
        for token in (answer["choices"][0].get("logprobs") or {}).get("content") or []:
            if token["token"] in LABELS:
                p = math.exp(token["logprob"])
                other = next(label for label in LABELS if label != token["token"])
                token["top_logprobs"] = [{"token": token["token"], "logprob": token["logprob"]},
                                         {"token": other, "logprob": math.log(1 - p)}]
        return answer

    monkeypatch.setattr(scripted_provider, "completion", completion)


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path, Path]:
    paths = tmp_path / "config.xml", tmp_path / "train.json", tmp_path / "test.json"
    paths[0].write_text(CONFIG)
    paths[1].write_text(json.dumps(TRAIN))
    paths[2].write_text(json.dumps(TEST))
    return paths


def test_parse_points() -> None:
    assert parse_points("200, 0,all,50") == (0, 50, 200, None)
    assert parse_points("5,5") == (5,)
    with pytest.raises(ValueError, match="'x'"):
        parse_points("0,x")


def test_eval_writes_files_and_scores_what_the_provider_answered(
    tmp_path: Path, files: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    config, train, test = files
    out = tmp_path / "out"
    with ScriptedProvider(responder) as provider:
        monkeypatch.setenv("LLM_BASE_URL", provider.base_url)
        monkeypatch.setenv("LLM_MODEL", "gpt-4o-mini")  # a priced model: the cost is known
        monkeypatch.setenv("LLM_API_KEY", "sk-test")
        code = main(["eval", "--config", str(config), "--train", str(train), "--test", str(test),
                     "--points", "0,4,all", "--n-test", "6", "--out", str(out), "--no-progress"])
        assert code == 0
        calls = len(provider.requests)
        results = json.loads((out / "results.json").read_text())
        for name in ("results.md", "learning_curve.png", "reliability.png", "predictions-0.json"):
            assert (out / name).stat().st_size > 0, name
        # a re-run in the same directory is answered from the response cache: no new provider call
        assert main(["eval", "--config", str(config), "--train", str(train), "--test", str(test),
                     "--points", "0,4,all", "--n-test", "6", "--out", str(out), "--no-progress"]) == 0
        assert len(provider.requests) == calls
        again = json.loads((out / "results.json").read_text())
    assert [r["accuracy"] for r in again["results"]] == [r["accuracy"] for r in results["results"]]
    assert all(r["cached_tasks"] == 6 for r in again["results"])

    assert results["points"] == [0, 4, 12]
    assert results["seed"] == 0 and results["n_test"] == 6 and results["wall_seconds"] >= 0
    assert results["command"].startswith(f"lsllm eval --config {config} --train {train}")
    rows = results["results"]
    for row in rows:
        assert row["accuracy"] == pytest.approx(4 / 6)
        assert row["answered_rate"] == 1.0
        # alpha: tp 2 fp 1 fn 1 -> F1 2/3, bravo the same
        assert row["macro_f1"] == pytest.approx(2 / 3)
        assert row["invalid_regions"] == 0
        assert row["calibration"]["scored_tasks"] == 6
        # 4 right at 0.95 (bin 0.9-1.0, all right), 2 wrong at 0.5 (bin 0.5-0.6, none right)
        assert row["calibration"]["ece"] == pytest.approx(4 / 6 * 0.05 + 2 / 6 * 0.5)
        assert row["calibration"]["auroc"] == 1.0  # the wrong answers have the lowest scores
        assert row["calibration"]["errors_in_lowest_20pct"] == 1.0  # ceil(1.2) = 2 lowest hold both errors
        assert row["prompt_tokens"] > 0 and row["cost_usd"] > 0
        assert row["answered_by"] == {"llm": 6}
    # the examples went through the event table into the store
    assert [r["store"].get("live", 0) for r in rows] == [0, 4, 12]
    assert [r["events"].get("applied", 0) for r in rows] == [0, 4, 12]
    # the kNN vote of the 12 examples (sunny -> alpha, rainy -> bravo) gets every test task right
    assert "knn" not in rows[0]
    assert rows[2]["knn"]["accuracy"] == 1.0
    table = (out / "results.md").read_text()
    assert "| 12 | 0.667 | 0.667 | 1.00 | 1.000 |" in table


def test_examples_are_in_the_store_and_test_gold_never_reaches_the_provider(
    tmp_path: Path, files: tuple[Path, Path, Path]
) -> None:
    config, train, test = files
    with ScriptedProvider(responder) as provider:
        settings = eval_settings(make_settings(tmp_path, provider.base_url), tmp_path / "data")
        results = run_eval(settings, build_model, config, train, test, EvalOptions(points=(0, 4, None), n_test=6),
                           tmp_path / "out", progress=False)
        requests = list(provider.requests)
    # the store holds exactly the 12 train annotations, all applied from events
    model = build_model(settings)
    try:
        pid = str(results["project_id"])
        assert model.examples.counts(pid) == {"live": 12}
        assert model.examples.event_counts(pid).get("applied") == 12
        texts = {row.data["text"] for row in model.examples.page(pid, 0, 100)[1]}
    finally:
        model.close()
    assert texts == TRAIN_TEXTS

    test_texts = set(GOLD)
    dumped = json.dumps(requests)
    assert CANARY not in dumped  # no part of a test (or train) annotation beyond its answer is sent
    systems = {json.dumps(r["messages"][0]) for r in requests}
    assert len(systems) == 1  # the same system prompt for every task: it cannot depend on a task's gold
    with_examples = 0
    for body in requests:
        last = last_user_text(body)
        assert any(t in last for t in test_texts)  # only test tasks are predicted
        for label in LABELS:
            assert label not in last.replace("sunny", "").replace("rainy", "")  # the task turn carries no label
        turns = body["messages"][1:-1]
        for turn in turns:
            if turn["role"] == "user":
                # a few-shot example is always a train task, never a test task with its gold
                assert any(t in turn["content"] for t in TRAIN_TEXTS), turn
                assert not any(t in turn["content"] for t in test_texts), turn
        with_examples += bool(turns)
    assert with_examples > 0  # the check above is not vacuous: examples were shown


def test_answered_by_reads_the_student_flag_of_a_result() -> None:
    from types import SimpleNamespace

    from backend.runs.eval import answered_by

    assert answered_by(SimpleNamespace(student=True, item={"result": []})) == "student"  # type: ignore[arg-type]
    assert answered_by(SimpleNamespace(student=False, item={"result": []})) == "llm"  # type: ignore[arg-type]
    assert answered_by(SimpleNamespace(item={"result": []})) == "llm"  # type: ignore[arg-type]  # no student field


NUMBER_CONFIG = """<View>
  <Text name="text" value="$text"/>
  <Rating name="stars" toName="text" maxRating="5"/>
  <Number name="count" toName="text" min="0" max="10"/>
  <TextArea name="summary" toName="text"/>
</View>"""


def _rated(text: str, stars: int, count: int, summary: str) -> dict[str, Any]:
    return {"data": {"text": text}, "annotations": [{"result": [
        {"id": "a", "from_name": "stars", "to_name": "text", "type": "rating", "value": {"rating": stars}},
        {"id": "b", "from_name": "count", "to_name": "text", "type": "number", "value": {"number": count}},
        {"id": "c", "from_name": "summary", "to_name": "text", "type": "textarea",
         "value": {"text": [summary]}}]}]}


def test_eval_scores_rating_number_and_textarea_by_agreement(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Controls without accuracy or span F1 are scored per control: exact match for Rating and Number,
    token F1 for TextArea (converters.controls.agreement)."""
    train = [_rated(f"review {i}", 4, i, f"fine thing {i}") for i in range(4)]
    test = [_rated("great product", 5, 3, "a great product"), _rated("bad product", 1, 7, "a bad product")]

    def respond(body: dict[str, Any]) -> Reply:
        if "great product" in last_user_text(body):  # right on every control
            return Reply(content=json.dumps({"stars": 5, "count": 3, "summary": "a great product"}))
        # wrong stars, right count, half the summary's words
        return Reply(content=json.dumps({"stars": 2, "count": 7, "summary": "bad"}))

    paths = tmp_path / "c.xml", tmp_path / "train.json", tmp_path / "test.json"
    paths[0].write_text(NUMBER_CONFIG)
    paths[1].write_text(json.dumps(train))
    paths[2].write_text(json.dumps(test))
    out = tmp_path / "out"
    with ScriptedProvider(respond) as provider:
        monkeypatch.setenv("LLM_BASE_URL", provider.base_url)
        monkeypatch.setenv("LLM_API_KEY", "sk-test")
        assert main(["eval", "--config", str(paths[0]), "--train", str(paths[1]), "--test", str(paths[2]),
                     "--points", "0", "--n-test", "2", "--out", str(out), "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["kind"] == "controls"
    row = results["results"][0]
    assert row["agreement"]["stars"] == pytest.approx(0.5)
    assert row["agreement"]["count"] == pytest.approx(1.0)
    # "bad" vs "a bad product": precision 1, recall 1/3 -> F1 0.5; the other summary is exact
    assert row["agreement"]["summary"] == pytest.approx((1.0 + 0.5) / 2)
    assert row["answered_rate"] == 1.0 and row["invalid_regions"] == 0
    assert "| 0 |" in (out / "results.md").read_text()


def test_results_name_the_embedded_model_not_its_port(tmp_path) -> None:
    """A run on the bundled model records "embedded" (its server's URL dies with the run); a provider
    run records the provider's URL, so an independent run can reach the same one."""
    from backend.runs.eval_report import provider_of

    provider = make_settings(tmp_path, "http://provider.example/v1")
    local = provider.model_copy(update={"llm_base_url": "http://127.0.0.1:41234/v1",
                                        "local_status_file": tmp_path / "local.json"})
    assert provider_of(provider) == "http://provider.example/v1"
    assert provider_of(local) == "embedded"


def test_ner_eval_reports_the_gazetteer_alone_beside_the_llm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import config as config_named
    from webhook_payloads import span

    sentences = [("Reuters reported that Bonn agreed .", [("Reuters", "ORG"), ("Bonn", "LOC")]),
                 ("Bonn said Reuters was wrong .", [("Bonn", "LOC"), ("Reuters", "ORG")]),
                 ("Reuters and Bonn again .", [("Reuters", "ORG"), ("Bonn", "LOC")])]

    def ner_task(text: str, entities: list[tuple[str, str]], ref: str) -> dict[str, Any]:
        return {"data": {"text": text, "ref_id": ref},
                "annotations": [{"result": [span(text, s, label) for s, label in entities]}]}

    train = [ner_task(t, e, f"tr{i}") for i, (t, e) in enumerate(sentences * 4)]
    test = [ner_task("Later Reuters quoted Bonn officials .", [("Reuters", "ORG"), ("Bonn", "LOC")], "te0"),
            ner_task("Bonn has nothing for Reuters today .", [("Bonn", "LOC"), ("Reuters", "ORG")], "te1")]
    paths = tmp_path / "ner.xml", tmp_path / "train.json", tmp_path / "test.json"
    paths[0].write_text(config_named("ner"))
    paths[1].write_text(json.dumps(train))
    paths[2].write_text(json.dumps(test))
    out = tmp_path / "out"
    with ScriptedProvider(lambda body: Reply(content=json.dumps({"label": []}))) as provider:
        monkeypatch.setenv("LLM_BASE_URL", provider.base_url)
        monkeypatch.setenv("LLM_API_KEY", "sk-test")
        monkeypatch.setenv("STUDENT_MIN_EXAMPLES", "5")
        assert main(["eval", "--config", str(paths[0]), "--train", str(paths[1]), "--test", str(paths[2]),
                     "--points", "0,all", "--out", str(out), "--no-progress"]) == 0
    rows = json.loads((out / "results.json").read_text())["results"]
    assert "gazetteer" not in rows[0]  # no reviews, no gazetteer
    assert rows[1]["gazetteer"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0}  # it knows both surfaces
    assert rows[0]["f1"] == 0.0  # the LLM alone found nothing
    assert "| 1.000/1.000/1.000 |" in (out / "results.md").read_text()


def test_runs_of_different_points_merge_into_the_curve_of_one_run(
    tmp_path: Path, files: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A point is the same measurement in every run of one setup (nested seeded examples, one test
    sample), so a grid resumed with the missing points draws the curve one run would have."""
    from backend.runs.eval_report import merge_results

    config, train, test = files

    def run(points: str, out: Path) -> dict[str, Any]:
        assert main(["eval", "--config", str(config), "--train", str(train), "--test", str(test),
                     "--points", points, "--n-test", "6", "--out", str(out), "--no-progress"]) == 0
        return json.loads((out / "results.json").read_text())

    with ScriptedProvider(responder) as provider:
        monkeypatch.setenv("LLM_BASE_URL", provider.base_url)
        monkeypatch.setenv("LLM_API_KEY", "sk-test")
        whole = run("0,4,all", tmp_path / "whole")
        early, late = run("0,4", tmp_path / "early"), run("4,all", tmp_path / "late")
    merged = merge_results([late, early])
    assert merged["points"] == [0, 4, 12] and merged["complete"]
    keys = ("examples", "accuracy", "macro_f1", "knn", "calibration", "store")
    assert [{k: r.get(k) for k in keys} for r in merged["results"]] == \
        [{k: r.get(k) for k in keys} for r in whole["results"]]
    assert merged["results"][1] is late["results"][0]  # the first run's where both measured a point
    assert merged["command"] == f"{late['command']} && {early['command']}"
    assert merged["wall_seconds"] == pytest.approx(late["wall_seconds"] + early["wall_seconds"], abs=0.1)
    with pytest.raises(ValueError, match="n_test"):
        merge_results([early, {**late, "n_test": 5}])
