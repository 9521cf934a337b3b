"""Issue 11, live agreement end to end: a scripted review session in a real Label Studio 1.23.

Predictions are retrieved from this backend, then tasks are annotated through Label Studio's API the
way its editor saves them (the prediction's result, or a changed one, with `parent_prediction` set);
Label Studio fires its webhooks as in real use, and /projects/<id>/quality and `lsllm report` must
show exactly the figures worked out here from what was sent (plain counting, not the module's code).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import httpx
import pytest
from conftest import config, wait_for
from e2e_answers import TEXTS
from test_e2e_labelstudio import connect, create_project, import_tasks, retrieve_predictions, tasks_of

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]

NER_SENT = config("ner_sentiment")


def sentiment_of(result: list[dict[str, Any]]) -> str | None:
    return next((r["value"]["choices"][0] for r in result if r["from_name"] == "sentiment"), None)


def spans(result: list[dict[str, Any]]) -> set[tuple[int, int, str]]:
    return {(r["value"]["start"], r["value"]["end"], r["value"]["labels"][0]) for r in result if r["type"] == "labels"}


def annotate(ls: Any, task_id: int, result: list[dict[str, Any]], parent: int | None) -> int:
    body: dict[str, Any] = {"result": result, "lead_time": 4.0}
    if parent is not None:
        body["parent_prediction"] = parent
    response = ls.api("POST", f"/api/tasks/{task_id}/annotations", json=body)
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def test_quality_matches_a_review_session(label_studio, e2e_backend, tmp_path, monkeypatch) -> None:
    project = create_project(label_studio, "e2e quality", NER_SENT)
    import_tasks(label_studio, project, TEXTS)
    assert connect(label_studio, project, e2e_backend.url).status_code == 201
    assert retrieve_predictions(label_studio, project).status_code == 200
    tasks = sorted(tasks_of(label_studio, project), key=lambda t: TEXTS.index(t["data"]["text"]))
    predictions = [t["predictions"][0] for t in tasks]
    assert all(p["result"] for p in predictions)

    def quality() -> dict[str, Any]:
        response = httpx.get(f"{e2e_backend.url}/projects/{project}/quality", timeout=10)
        assert response.status_code == 200, response.text
        return response.json()

    def settled(reviews: int, accepted: int) -> dict[str, Any] | None:
        """The quality answer once the worker has applied the session's webhooks, else None."""
        body = quality()
        return body if (body["overall"]["reviews"], body["overall"]["accepted"]) == (reviews, accepted) else None

    # the session: (task index, the result the reviewer saves); accepted = the prediction unchanged
    kept: dict[int, list[dict[str, Any]]] = {}
    kept[0] = copy.deepcopy(predictions[0]["result"])  # accepted
    kept[1] = copy.deepcopy(predictions[1]["result"])  # accepted
    kept[2] = copy.deepcopy(predictions[2]["result"])  # sentiment corrected, spans kept
    for region in kept[2]:
        if region["from_name"] == "sentiment":
            region["value"]["choices"] = ["negative" if region["value"]["choices"] != ["negative"] else "positive"]
    kept[3] = copy.deepcopy(predictions[3]["result"])  # one span dropped, another relabelled
    labelled = [r for r in kept[3] if r["type"] == "labels"]
    kept[3].remove(labelled[0])
    # another label the config allows (the predictions' own label values: Label Studio validates aliases)
    others = sorted({label for p in predictions for r in p["result"] if r["type"] == "labels"
                     for label in r["value"]["labels"]} - set(labelled[1]["value"]["labels"]))
    labelled[1]["value"]["labels"] = [others[0]]
    made = {i: annotate(label_studio, tasks[i]["id"], result, predictions[i]["id"]) for i, result in kept.items()}
    annotate(label_studio, tasks[4]["id"], copy.deepcopy(predictions[4]["result"]), None)  # not from a prediction

    def expected() -> dict[str, Any]:
        """The figures, by plain counting over what the reviewers saved."""
        reviewed = sorted(kept)
        accepted = [i for i in reviewed if kept[i] == predictions[i]["result"]]
        hits = [i for i in reviewed if sentiment_of(kept[i]) == sentiment_of(predictions[i]["result"])]
        tp = sum(len(spans(kept[i]) & spans(predictions[i]["result"])) for i in reviewed)
        fp = sum(len(spans(predictions[i]["result"]) - spans(kept[i])) for i in reviewed)
        fn = sum(len(spans(kept[i]) - spans(predictions[i]["result"])) for i in reviewed)
        # right: every choices and labels control as reviewed (topics are never changed here)
        right = {i: i in hits and spans(kept[i]) == spans(predictions[i]["result"]) for i in reviewed}
        scores = {i: predictions[i]["score"] for i in reviewed}
        pos = [scores[i] for i in reviewed if right[i] and scores[i] is not None]
        neg = [scores[i] for i in reviewed if not right[i] and scores[i] is not None]
        pairs = [(p > n) + 0.5 * (p == n) for p in pos for n in neg]
        return {"reviews": len(reviewed), "accepted": len(accepted), "accuracy": len(hits) / len(reviewed),
                "tp": tp, "fp": fp, "fn": fn, "right": sum(right.values()),
                "auroc": sum(pairs) / len(pairs) if pairs else None}

    def check(body: dict[str, Any], want: dict[str, Any]) -> None:
        overall = body["overall"]
        assert (overall["reviews"], overall["accepted"], overall["right"]) == (
            want["reviews"], want["accepted"], want["right"])
        assert math.isclose(overall["controls"]["sentiment"]["accuracy"], want["accuracy"])
        label = overall["controls"]["label"]
        assert (label["tp"], label["fp"], label["fn"]) == (want["tp"], want["fp"], want["fn"])
        if want["auroc"] is None:
            assert overall["calibration"]["auroc"] is None
        else:
            assert math.isclose(overall["calibration"]["auroc"], want["auroc"])
        assert [v["model_version"] for v in body["model_versions"]] == [predictions[0]["model_version"]]

    want = expected()
    assert (want["reviews"], want["accepted"]) == (4, 2) and want["fp"] >= 2 and want["fn"] >= 1
    body = wait_for(lambda: settled(4, 2), timeout=60, interval=0.5)
    assert body, quality()
    check(body, want)

    # a reviewer changes an accepted annotation, another is deleted: the figures follow
    kept[1] = copy.deepcopy(kept[1])
    for region in kept[1]:
        if region["from_name"] == "sentiment":
            region["value"]["choices"] = ["negative" if region["value"]["choices"] != ["negative"] else "positive"]
    patched = label_studio.api("PATCH", f"/api/annotations/{made[1]}", json={"result": kept[1]})
    assert patched.status_code == 200, patched.text
    assert label_studio.api("DELETE", f"/api/annotations/{made[3]}").status_code == 204
    del kept[3]
    want = expected()
    assert (want["reviews"], want["accepted"]) == (3, 1)
    body = wait_for(lambda: settled(3, 1), timeout=60, interval=0.5)
    assert body, quality()
    check(body, want)

    # the report reads the same store
    from backend.cli import main

    monkeypatch.setenv("DATA_DIR", str(e2e_backend.data_dir))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    out = tmp_path / "report.html"
    assert main(["report", "--project", str(project), "--out", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    cells = f'<td class="l">all reviews</td><td class="">3</td><td class="">{1 / 3:.3f}</td>'
    assert cells + f'<td class="">{want["accuracy"]:.3f}</td>' in page
