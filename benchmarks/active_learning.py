"""Active learning in the real Label Studio 1.23 (issue 13): a Banking77 project, the review tab, a
scripted reviewer, and the refresh of the predictions of the tasks nobody annotated.

    .venv/bin/python benchmarks/active_learning.py [--tasks 300] [--reviews 100] [--provider scripted|embedded]

1. A project of --tasks Banking77 test texts (seeded sample of intent_banking77_test_sample500.json,
   77 intents); the backend connected; "Retrieve predictions" on every task (a pushed retrieve).
2. The review tab "Review: least confident first" (created by the backend at /setup) lists the
   un-annotated tasks by prediction score ascending: the share of all prediction errors that lie in its
   first 20% is measured (goal >= 0.5).
3. A scripted reviewer annotates --reviews tasks through Label Studio's API in the tab's order (the tab
   re-read every 10 reviews), accepting a right prediction and correcting a wrong one (webhooks fire).
4. The example set moves (EXAMPLES_VERSION_EVERY); the backend refreshes the un-annotated tasks with
   the new model_version. Measured: accuracy of the current (latest) prediction on the tasks still
   un-annotated at the end, before and after; the refresh's wall time and LLM calls; that no task has
   two predictions of one version.

Providers: `scripted` (default) is the test server standing in for an LLM that learns from its few-shot
examples: it answers a task's true intent when an example of that intent is in the prompt, else the
true intent for a fixed 55% of the texts (by hash) and a wrong one otherwise, with a token confidence
that is higher, on average, for right answers (so scores carry signal, as an LLM's do, imperfectly).
`embedded` is the bundled SmolLM2-135M (no LLM_BASE_URL): real, slow, and weak on 77 intents.

Needs `make ls-venv`. Datasets from LSLLM_DATASETS or /work/shared/datasets.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from labelstudio_harness import (  # noqa: E402
    Backend,
    LabelStudio,
    cleanup,
    free_port,
    start_label_studio,
    stop,
    wait_http,
)
from scripted_provider import Reply, ScriptedProvider, last_user_text  # noqa: E402

DATASETS = Path(os.environ.get("LSLLM_DATASETS", ROOT.parent / "shared" / "datasets"))
TITLE = "Review: least confident first"


def load(n: int, seed: int) -> tuple[str, list[tuple[str, str]]]:
    config = (DATASETS / "intent_banking77_config.xml").read_text()
    rows = json.loads((DATASETS / "intent_banking77_test_sample500.json").read_text())
    pairs = [(r["data"]["text"], r["annotations"][0]["result"][0]["value"]["choices"][0]) for r in rows]
    random.Random(seed).shuffle(pairs)
    return config, pairs[:n]


class LearningProvider:
    """The scripted stand-in for an LLM that learns from few-shot examples (see the module docstring)."""

    def __init__(self, gold: dict[str, str], labels: list[str], latency: float) -> None:
        self.gold = gold
        self.labels = labels
        self.calls = 0
        self.server = ScriptedProvider(self.respond, latency=latency, max_concurrency=8)
        # another label that each answer token's top_logprobs also offers: the backend scores a choice by
        # its probability among the allowed labels there, so without a rival label every score is 1.0
        self.alternatives = tuple(labels[:2])

    def respond(self, body: dict) -> Reply:
        self.calls += 1
        text = last_user_text(body).strip()
        truth = self.gold.get(text) or next((g for t, g in self.gold.items() if t in text), self.labels[0])
        shown = set()
        for message in body.get("messages") or []:
            if message.get("role") == "assistant":
                try:
                    shown.add(json.loads(message.get("content") or "{}").get("intent"))
                except (ValueError, AttributeError):
                    pass
        h = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
        rng = random.Random(h)
        if truth in shown or h % 100 < 55:
            return Reply(content=json.dumps({"intent": truth}), logprob=-rng.uniform(0.01, 0.35),
                         alternatives=self.alternatives)
        wrong = self.labels[(self.labels.index(truth) + 1 + h % (len(self.labels) - 1)) % len(self.labels)]
        return Reply(content=json.dumps({"intent": wrong}), logprob=-rng.uniform(0.15, 1.2),
                     alternatives=self.alternatives)


def start_backend(llm_base_url: str | None, **env_extra: str) -> Backend:
    """The backend under gunicorn (2 workers), with a provider or the embedded model (None)."""
    port = free_port()
    data = Path(tempfile.mkdtemp(prefix="lsllm-bench-al-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "BASIC_AUTH", "DATABASE_URL"))}
    env.update({"DATA_DIR": str(data), "SELECTION_REFRESH_SECONDS": "0", **env_extra})
    if llm_base_url:
        env.update({"LLM_BASE_URL": llm_base_url, "LLM_API_KEY": "sk-bench", "LLM_MODEL": "scripted"})
    lsllm = Path(sys.executable).parent / "lsllm"
    proc = subprocess.Popen([str(lsllm), "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
                            env=env, stdout=(data / "backend.log").open("wb"), stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/health", timeout=600, proc=proc)
    return Backend(url, proc, data)


def all_tasks(ls: LabelStudio, project: int, view: int | None = None) -> list[dict[str, Any]]:
    params: dict[str, Any] = {"project": project, "fields": "all", "page_size": 1000}
    if view is not None:
        params["view"] = view
    body = ls.api("GET", "/api/tasks", params=params).json()
    return body["tasks"] if isinstance(body, dict) else body


def latest(task: dict[str, Any]) -> dict[str, Any] | None:
    return max(task.get("predictions") or [], key=lambda p: p["id"], default=None)


def label_of(prediction: dict[str, Any] | None) -> str | None:
    if not prediction:
        return None
    return next((r["value"]["choices"][0] for r in prediction.get("result") or [] if r.get("type") == "choices"), None)


def accuracy(tasks: list[dict[str, Any]], gold: dict[str, str], ids: set[int]) -> float:
    chosen = [t for t in tasks if t["id"] in ids]
    return sum(label_of(latest(t)) == gold[t["data"]["text"]] for t in chosen) / max(1, len(chosen))


def error_share_first(tab: list[dict[str, Any]], gold: dict[str, str], share: float = 0.2) -> float:
    wrong = [label_of(latest(t)) != gold[t["data"]["text"]] for t in tab]
    head = max(1, int(round(len(tab) * share)))
    return sum(wrong[:head]) / max(1, sum(wrong))


def error_share_lowest(tasks: list[dict[str, Any]], gold: dict[str, str], ids: set[int],
                       share: float = 0.2) -> float:
    """The share of the errors among `ids` that the `share` of them with the lowest latest-prediction
    score hold: what the tab shows when it orders by the latest predictions (a check on the tab's order)."""
    chosen = sorted((t for t in tasks if t["id"] in ids), key=lambda t: (latest(t) or {}).get("score") or 0.0)
    return error_share_first(chosen, gold, share)


def jobs(backend: Backend, project: int) -> list[dict[str, Any]]:
    return httpx.get(f"{backend.url}/projects/{project}/jobs", timeout=30).json()["jobs"]


def wait(predicate: Any, timeout: float, interval: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError("timed out")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--reviews", type=int, default=100)
    parser.add_argument("--every", type=int, default=20, help="EXAMPLES_VERSION_EVERY")
    parser.add_argument("--provider", choices=["scripted", "embedded"], default="scripted")
    parser.add_argument("--latency", type=float, default=0.05, help="scripted provider latency, s")
    parser.add_argument("--student", default="off", choices=["off", "hint", "cascade"], help="STUDENT_MODE")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    parser.add_argument("--dump", type=Path, help="write each un-annotated task's latest prediction after the "
                                                  "refresh (score, label, truth, model_version) here, as JSON lines")
    args = parser.parse_args()

    config, pairs = load(args.tasks, args.seed)
    gold = dict(pairs)
    labels = sorted(set(re.findall(r'<Choice value="([^"]+)"', config)))
    provider = LearningProvider(gold, labels, args.latency) if args.provider == "scripted" else None
    ls = start_label_studio()
    if provider is not None:
        provider.server.start()
    # the scripted provider takes 8 calls at once; the embedded server answers one at a time, and the
    # backend's default for it (one call in flight, the rest waiting on our side) must stay: 8 calls
    # queued inside its server time out (LLM_TIMEOUT) while they wait there
    concurrency = {"LLM_MAX_CONCURRENCY": "8"} if provider else {}
    backend = start_backend(
        provider.server.base_url if provider else None, **concurrency,
        PUSH_THRESHOLD="50", STUDENT_MODE=args.student, LOG_LEVEL="INFO",
        EXAMPLES_VERSION_POLICY="count", EXAMPLES_VERSION_EVERY=str(args.every), LABEL_SHORTLIST_THRESHOLD="0",
        REFRESH="on", REFRESH_UNPRICED="allow", REFRESH_DEBOUNCE_SECONDS="15", REFRESH_MIN_INTERVAL_SECONDS="0",
        REFRESH_MAX_TASKS="1000", JOB_STALE_SECONDS="120",
    )
    figures: dict[str, Any] = {"tasks": args.tasks, "reviews": args.reviews, "provider": args.provider,
                               "student": args.student}
    try:
        project = ls.api("POST", "/api/projects", json={"title": "bench active learning",
                                                        "label_config": config}).json()["id"]
        ls.api("POST", f"/api/projects/{project}/import", json=[{"text": t} for t, _ in pairs])
        ls.api("POST", "/api/ml", json={"url": backend.url, "project": project, "title": "lsllm",
                                        "is_interactive": False, "auth_method": "NONE"})
        tab = wait(lambda: next((v for v in ls.api("GET", "/api/dm/views/", params={"project": project}).json()
                                 if v["data"].get("title") == TITLE), None), 120)
        began = time.monotonic()
        ls.api("POST", "/api/dm/actions", params={"id": "retrieve_tasks_predictions", "project": project},
               json={"selectedItems": {"all": True, "excluded": []}})
        wait(lambda: all(t["predictions"] for t in all_tasks(ls, project)), 3600, 2.0)
        figures["retrieve_seconds"] = round(time.monotonic() - began, 1)
        before = all_tasks(ls, project)
        ordered = all_tasks(ls, project, tab["id"])
        figures["errors_in_first_20pct_of_tab_before"] = round(error_share_first(ordered, gold), 3)
        figures["accuracy_all_before"] = round(accuracy(before, gold, {t["id"] for t in before}), 3)

        reviewed: list[int] = []
        accepted = 0
        while len(reviewed) < args.reviews:
            in_tab = [t for t in all_tasks(ls, project, tab["id"]) if t["id"] not in reviewed]
            for task in in_tab[:min(10, args.reviews - len(reviewed))]:
                prediction = latest(task)
                truth = gold[task["data"]["text"]]
                right = label_of(prediction) == truth
                accepted += right
                result = [{"from_name": "intent", "to_name": "text", "type": "choices",
                           "value": {"choices": [truth]}}]
                body = {"result": result, "lead_time": 5.0}
                if prediction is not None:
                    body["parent_prediction"] = prediction["id"]
                response = ls.api("POST", f"/api/tasks/{task['id']}/annotations", json=body)
                assert response.status_code == 201, response.text
                reviewed.append(task["id"])
        reviews_done = time.monotonic()
        figures["accepted_share_of_reviews"] = round(accepted / len(reviewed), 3)
        remaining = {t["id"] for t in before} - set(reviewed)
        figures["accuracy_unannotated_before"] = round(accuracy(before, gold, remaining), 3)

        def refreshed() -> dict[str, Any] | None:
            listed = [j for j in jobs(backend, project) if j["kind"] == "refresh"]
            if not listed or listed[0]["status"] in ("queued", "running", "stale"):
                return None
            return listed[0]

        job = wait(refreshed, 3600, 2.0)
        figures["refresh_jobs"] = [{k: j[k] for k in ("id", "model_version", "status", "total", "done", "failed",
                                                       "skipped", "llm_calls", "cost_usd")}
                                   for j in jobs(backend, project) if j["kind"] == "refresh"]
        figures["refresh_wall_seconds"] = round((job["finished_at"] or 0) - job["created_at"], 1)
        figures["refresh_llm_calls"] = job["llm_calls"]
        figures["seconds_from_last_review_to_refresh_done"] = round(time.monotonic() - reviews_done, 1)
        # the tab orders by the scores of the project's model_version, which the backend moves to the
        # refresh's version in the background after the push (review_tab.follow_version)
        try:
            figures["project_model_version_followed_refresh"] = wait(
                lambda: ls.api("GET", f"/api/projects/{project}").json().get("model_version") == job["model_version"],
                60, 1.0)
        except TimeoutError:
            figures["project_model_version_followed_refresh"] = False
        after = all_tasks(ls, project)
        figures["accuracy_unannotated_after"] = round(accuracy(after, gold, remaining), 3)
        figures["errors_in_lowest_20pct_by_latest_score_after"] = round(error_share_lowest(after, gold, remaining),
                                                                        3)
        if args.dump:
            with args.dump.open("w") as out:
                for t in after:
                    if t["id"] in remaining:
                        p = latest(t) or {}
                        out.write(json.dumps({"task": t["id"], "score": p.get("score"), "label": label_of(p),
                                              "truth": gold[t["data"]["text"]],
                                              "model_version": p.get("model_version"),
                                              "result_scores": [r.get("score") for r in p.get("result") or []]})
                                  + "\n")
        ordered_after = all_tasks(ls, project, tab["id"])
        figures["errors_in_first_20pct_of_tab_after"] = round(error_share_first(ordered_after, gold), 3)
        duplicates = sum(1 for t in after for n in Counter(p["model_version"] for p in t["predictions"]).values()
                         if n > 1)
        figures["tasks_with_two_predictions_of_one_version"] = duplicates
        figures["annotated_tasks_refreshed"] = sum(
            1 for t in after if t["id"] in set(reviewed) and any(p["model_version"] == job["model_version"]
                                                                  for p in t["predictions"]))
        if provider is not None:
            figures["provider_calls_total"] = provider.calls
    finally:
        stop(backend.proc)
        print(f"backend log: {backend.data_dir / 'backend.log'}", file=sys.stderr)
        if provider is not None:
            provider.server.stop()
        stop(ls.proc)
        cleanup(ls.data_dir)
    print(json.dumps(figures, indent=1))
    if args.out:
        args.out.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
