"""Issue 16 end to end: a real Label Studio 1.23 stores each new control's prediction, a reviewer's
annotation of it becomes a live example, and the next prompt shows the reviewer's answer.

One small project per control (two tasks), one scripted model answer per task; the session's Label
Studio and backend (tests/conftest.py) are shared with the other end-to-end modules. The UI check
opens the Taxonomy and perRegion predictions in Label Studio's web editor (Debian's chromium driven by
Playwright, as in test_ui_offsets.py) and keeps the screenshots in $LSLLM_ARTIFACTS."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import config, json_answer, wait_for
from label_studio_sdk.label_interface import LabelInterface
from scripted_provider import last_user_text
from test_e2e_labelstudio import (
    backend_examples,
    connect,
    create_project,
    import_tasks,
    retrieve_predictions,
    tasks_of,
)

from converters.examples import result_to_answer
from converters.regions import check_prediction
from converters.task_spec import build_task_spec

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]

ARTIFACTS = Path(os.environ.get("LSLLM_ARTIFACTS") or tempfile.mkdtemp(prefix="lsllm-ui-"))
REVIEW = "Zeta's charger is awful, the Acme phone is fine. Price: $12."
NEXT = "Another day, another Acme gadget."

# control config -> (the model's answer for REVIEW, what Label Studio must store for it, the reviewer's
# corrected result as Label Studio stores it, the example answer the next prompt must show)
CASES: dict[str, tuple[dict[str, Any], list[tuple[str, str, dict[str, Any]]], list[dict[str, Any]], dict[str, Any]]] = {
    "textarea": (
        {"summary": "Charger bad, phone fine.", "requests": ["a new charger", "a refund"]},
        [("summary", "textarea", {"text": ["Charger bad, phone fine."]}),
         ("requests", "textarea", {"text": ["a new charger", "a refund"]})],
        [{"from_name": "summary", "to_name": "text", "type": "textarea",
          "value": {"text": ["Reviewer's own summary."]}},
         {"from_name": "requests", "to_name": "text", "type": "textarea", "value": {"text": ["replace the charger"]}}],
        {"summary": "Reviewer's own summary.", "requests": ["replace the charger"]},
    ),
    "number_rating": (
        {"stars": 2, "price": 11.9, "people": 0},
        [("stars", "rating", {"rating": 2}), ("price", "number", {"number": 12.0}),
         ("people", "number", {"number": 0})],
        [{"from_name": "stars", "to_name": "text", "type": "rating", "value": {"rating": 3}},
         {"from_name": "price", "to_name": "text", "type": "number", "value": {"number": 12}},
         {"from_name": "people", "to_name": "text", "type": "number", "value": {"number": 1}}],
        {"stars": 3, "price": 12.0, "people": 1},
    ),
    "taxonomy": (
        {"topic": "Business / Markets"},
        [("topic", "taxonomy", {"taxonomy": [["biz", "Markets"]]})],
        [{"from_name": "topic", "to_name": "text", "type": "taxonomy", "value": {"taxonomy": [["Sports", "Tennis"]]}}],
        {"topic": "Sports / Tennis"},
    ),
    "per_region": (
        {"label": [{"text": "Zeta", "label": "Brand", "sentiment": "negative", "reason": None},
                   {"text": "Acme phone", "label": "Product", "sentiment": "positive", "reason": "it is fine"}]},
        [("label", "labels", {"start": 0, "end": 4, "text": "Zeta", "labels": ["Brand"]}),
         ("sentiment", "choices", {"start": 0, "end": 4, "text": "Zeta", "choices": ["negative"]}),
         ("label", "labels", {"start": 29, "end": 39, "text": "Acme phone", "labels": ["Product"]}),
         ("sentiment", "choices", {"start": 29, "end": 39, "text": "Acme phone", "choices": ["positive"]}),
         ("reason", "textarea", {"start": 29, "end": 39, "text": ["it is fine"]})],
        [{"id": "r1", "from_name": "label", "to_name": "text", "type": "labels",
          "value": {"start": 29, "end": 39, "text": "Acme phone", "labels": ["Product"]}},
         {"id": "r1", "from_name": "sentiment", "to_name": "text", "type": "choices",
          "value": {"start": 29, "end": 39, "text": "Acme phone", "choices": ["neutral"]}}],
        {"label": [{"text": "Acme phone", "label": "Product", "sentiment": "neutral", "reason": None}]},
    ),
}


@pytest.fixture
def scripted(e2e_provider):
    """The session provider answering REVIEW/NEXT with the case's answer; records what it was sent."""
    previous = e2e_provider.responder
    state: dict[str, Any] = {"answer": None, "bodies": []}

    def respond(body: dict) -> Any:
        text = last_user_text(body)
        if text in (REVIEW, NEXT):
            state["bodies"].append(body)
            return json_answer(state["answer"])
        return previous(body)

    e2e_provider.responder = respond
    yield state
    e2e_provider.responder = previous


def project_with_prediction(label_studio, e2e_backend, name: str, title: str) -> tuple[int, dict[str, Any]]:
    """A project of this config with REVIEW as its one task, predicted; (project id, the task)."""
    project = create_project(label_studio, title, config(name))
    import_tasks(label_studio, project, [REVIEW])
    connected = connect(label_studio, project, e2e_backend.url)
    assert connected.status_code == 201, connected.text
    assert retrieve_predictions(label_studio, project).status_code == 200
    (task,) = tasks_of(label_studio, project)
    return project, task


@pytest.mark.parametrize("name", list(CASES))
def test_label_studio_stores_each_controls_prediction_and_learns_the_review(
    label_studio, e2e_backend, scripted, name: str
) -> None:
    answer, stored, reviewed, example = CASES[name]
    scripted["answer"] = answer
    project, task = project_with_prediction(label_studio, e2e_backend, name, f"e2e {name}")
    label_config = config(name)
    (prediction,) = task["predictions"]
    result = prediction["result"]
    assert [(r["from_name"], r["type"], r["value"]) for r in result] == stored
    spec = build_task_spec(label_config)
    item = {"result": result, "score": prediction["score"], "model_version": prediction["model_version"]}
    assert check_prediction(LabelInterface(label_config), spec, task["data"], item) == []
    if name == "per_region":  # each attribute is stored under its span's id
        spans = {r["id"]: r["value"]["start"] for r in result if r["type"] == "labels"}
        assert all(spans[r["id"]] == r["value"]["start"] for r in result)

    # the reviewer's correction becomes a live example, in the model's answer form ...
    created = label_studio.api("POST", f"/api/tasks/{task['id']}/annotations", json={"result": reviewed})
    assert created.status_code == 201, created.text
    examples = wait_for(lambda: backend_examples(e2e_backend, project), timeout=10)
    assert examples, "the annotation did not become a live example"
    (stored_example,) = examples.values()
    assert result_to_answer(spec, stored_example["result"]) == example

    # ... that the next task's prompt shows
    scripted["bodies"].clear()
    import_tasks(label_studio, project, [NEXT])
    assert retrieve_predictions(label_studio, project).status_code == 200
    prompts = [json.dumps(body["messages"], ensure_ascii=False) for body in scripted["bodies"]]
    assert any(json.dumps(json.dumps(example, ensure_ascii=False), ensure_ascii=False)[1:-1] in p for p in prompts), \
        prompts


# --- the web editor shows the Taxonomy and the perRegion predictions ------------------------------------------

@pytest.fixture(scope="module")
def browser():
    from test_ui_offsets import CHROMIUM

    playwright_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is required in CI (make tools)")
        pytest.skip("Debian's chromium is not installed (make tools)")
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
                                    "--disable-background-networking", "--disable-component-update"])
        yield b
        b.close()


def test_the_editor_shows_taxonomy_and_per_region_predictions(label_studio, e2e_backend, scripted, browser) -> None:
    from test_ui_offsets import login, open_task

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    login(page, label_studio)

    scripted["answer"] = CASES["taxonomy"][0]
    project, task = project_with_prediction(label_studio, e2e_backend, "taxonomy", "ui taxonomy")
    open_task(page, label_studio, project, task["id"], REVIEW)
    page.screenshot(path=str(ARTIFACTS / "taxonomy.png"))
    shown = page.inner_text("body")
    print(f"screenshot {ARTIFACTS / 'taxonomy.png'}")
    assert "Markets" in shown, shown[-2000:]

    scripted["answer"] = CASES["per_region"][0]
    project, task = project_with_prediction(label_studio, e2e_backend, "per_region", "ui per region")
    open_task(page, label_studio, project, task["id"], REVIEW)
    highlighted = page.eval_on_selector_all(".htx-highlight", "els => els.map(e => e.textContent.trim())")
    assert "Acme phone" in highlighted and "Zeta" in highlighted, highlighted
    page.locator(".htx-highlight", has_text="Acme phone").first.click()  # select the span: its attributes show
    time.sleep(1.0)
    page.screenshot(path=str(ARTIFACTS / "per_region.png"))
    print(f"screenshot {ARTIFACTS / 'per_region.png'}")
    checked = page.eval_on_selector_all(
        "input[type=radio]:checked, input[type=checkbox]:checked",
        "els => els.map(e => (e.closest('label') || e.parentElement).textContent.trim())",
    )
    # a choice's label carries its hotkey ("positive[3]"); the span's sentiment alone is checked
    sentiments = [c for c in checked if c.startswith(("positive", "neutral", "negative"))]
    assert [c.split("[")[0] for c in sentiments] == ["positive"], checked
    assert page.get_by_text("it is fine").count() > 0
    page.close()
