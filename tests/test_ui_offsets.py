"""Offsets as the Label Studio web UI sees them, in the real UI (Debian's chromium, headless, driven by
Playwright with the system browser; no browser download):

1. a prediction after emoji and accented characters highlights exactly the entity's characters;
2. a span selected with the mouse after an emoji and submitted reaches the example store with the same
   offsets and text.

Screenshots are kept in $LSLLM_ARTIFACTS (default: a temporary folder printed by the test)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from conftest import config
from test_e2e_labelstudio import (
    backend_examples,
    connect,
    create_project,
    import_tasks,
    retrieve_predictions,
    tasks_of,
    wait_for,
)

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PREDICTED = "🎉🎉 Café, naïve: Ada Lovelace spoke."
SELECTED = "🎉 Zoë met Bob today."
ARTIFACTS = Path(os.environ.get("LSLLM_ARTIFACTS") or tempfile.mkdtemp(prefix="lsllm-ui-"))


@pytest.fixture(scope="module")
def browser():
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is required in CI (make tools)")
        pytest.skip("Debian's chromium is not installed (make tools)")
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )
        yield b
        b.close()


def login(page, ls) -> None:
    page.goto(f"{ls.url}/user/login/")
    page.fill('input[name="email"]', "e2e@example.com")
    page.fill('input[name="password"]', "e2e-password-123")
    page.click('button[type="submit"], input[type="submit"]')
    page.wait_for_load_state("networkidle")


def open_task(page, ls, project: int, task: int, text: str) -> None:
    """Open the labeling view of one task (the data manager's ?task= link, else a click on its row)."""
    page.goto(f"{ls.url}/projects/{project}/data?task={task}")
    submit = page.get_by_role("button", name="Submit")
    try:
        submit.wait_for(state="visible", timeout=20_000)
    except Exception:  # noqa: BLE001 - the link did not open the editor: click the row instead
        page.get_by_text(text[-10:]).first.click()
        submit.wait_for(state="visible", timeout=60_000)
    time.sleep(1.0)


def test_prediction_after_emoji_highlights_exactly_the_entity(label_studio, e2e_backend, e2e_provider, browser) -> None:
    ANSWER = {"label": [{"text": "Ada Lovelace", "label": "PER"}]}
    from conftest import json_answer
    from scripted_provider import last_user_text

    previous = e2e_provider.responder
    e2e_provider.responder = lambda body: json_answer(ANSWER) if last_user_text(body) == PREDICTED else previous(body)
    try:
        cfg = config("ner")
        project = create_project(label_studio, "ui offsets", cfg)
        (task_id,) = import_tasks(label_studio, project, [PREDICTED])
        assert connect(label_studio, project, e2e_backend.url).status_code == 201
        assert retrieve_predictions(label_studio, project).status_code == 200
        prediction = tasks_of(label_studio, project)[0]["predictions"][0]["result"][0]["value"]
        assert PREDICTED[prediction["start"] : prediction["end"]] == "Ada Lovelace"
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        login(page, label_studio)
        open_task(page, label_studio, project, task_id, PREDICTED)
        page.screenshot(path=str(ARTIFACTS / "prediction.png"))
        highlighted = page.eval_on_selector_all(".htx-highlight", "els => els.map(e => e.textContent)")
        print(f"highlighted: {highlighted!r}; screenshot {ARTIFACTS / 'prediction.png'}")
        assert "Ada Lovelace" in [h.strip() for h in highlighted], highlighted
        assert all(h.strip() in ("Ada Lovelace", "") for h in highlighted), highlighted
        page.close()
    finally:
        e2e_provider.responder = previous


def test_mouse_selection_after_emoji_reaches_the_store(label_studio, e2e_backend, browser) -> None:
    cfg = config("ner")
    project = create_project(label_studio, "ui mouse", cfg)
    (task_id,) = import_tasks(label_studio, project, [SELECTED])
    assert connect(label_studio, project, e2e_backend.url).status_code == 201
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    login(page, label_studio)
    open_task(page, label_studio, project, task_id, SELECTED)
    page.screenshot(path=str(ARTIFACTS / "opened.png"))
    page.get_by_text("PER", exact=True).first.click()
    # drag the mouse across "Bob" in the rendered text
    box = page.evaluate(
        """(word) => {
            const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
            let node;
            const inEditorText = (n) => {
                for (let e = n.parentElement; e; e = e.parentElement) {
                    if (typeof e.className === 'string' && e.className.includes('richtext')) return true;
                }
                return false;
            };
            while ((node = walker.nextNode())) {
                const at = node.textContent.indexOf(word);
                // the editor's text, not the task list beside it
                if (at >= 0 && node.textContent.includes('Zoë') && inEditorText(node)) {
                    const range = document.createRange();
                    range.setStart(node, at);
                    range.setEnd(node, at + word.length);
                    const r = range.getBoundingClientRect();
                    return {x: r.left, y: r.top, w: r.width, h: r.height};
                }
            }
            return null;
        }""",
        "Bob",
    )
    assert box, "text not rendered"
    y = box["y"] + box["h"] / 2
    page.mouse.move(box["x"] + 1, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["w"] - 1, y, steps=8)
    page.mouse.up()
    time.sleep(0.5)
    page.screenshot(path=str(ARTIFACTS / "selection.png"))
    page.get_by_role("button", name="Submit").click()
    time.sleep(1.0)
    page.screenshot(path=str(ARTIFACTS / "submitted.png"))
    examples = wait_for(lambda: backend_examples(e2e_backend, project), timeout=10)
    assert examples, "the submitted annotation did not reach the example store"
    (example,) = examples.values()
    region = example["result"][0]["value"]
    start = SELECTED.index("Bob")
    assert (region["start"], region["end"], region["text"]) == (start, start + 3, "Bob"), region
    page.close()
