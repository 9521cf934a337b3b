"""`lsllm prelabel` and `lsllm plan` as a user runs them (the installed CLI, in its own process)
against a real Label Studio 1.23 and the scripted provider: a 1,000-task project, interrupted with
SIGINT and resumed without duplicates; wrong URL, key or project stopping before any LLM call."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import assert_valid, config
from labelstudio_harness import TOKEN, LabelStudio, free_port
from scripted_provider import Reply, ScriptedProvider, last_user_text

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]

SENTIMENT = config("sentiment")
LABELS = ("positive", "negative", "neutral")
LSLLM = Path(sys.executable).parent / "lsllm"


class CountingProvider:
    """The scripted provider behind a cap of 8 calls at once; counts the calls it answered per text
    (429-refused ones never reach the responder)."""

    def __init__(self, latency: float = 0.03, cap: int = 8) -> None:
        self.answered: Counter = Counter()
        self._lock = threading.Lock()
        self.server = ScriptedProvider(self.respond, latency=latency, max_concurrency=cap, retry_after=0.05)

    def respond(self, body: dict) -> Reply:
        text = last_user_text(body)
        with self._lock:
            self.answered[text] += 1
        number = int(text.rsplit(" ", 1)[-1])
        return Reply(content=json.dumps({"sentiment": LABELS[number % 3]}))


@pytest.fixture(scope="module")
def counting() -> Iterator[CountingProvider]:
    provider = CountingProvider()
    provider.server.start()
    yield provider
    provider.server.stop()


def env_for(provider: CountingProvider, data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "LABEL_STUDIO_", "DATABASE_URL"))}
    env.update({"LLM_BASE_URL": provider.server.base_url, "LLM_API_KEY": "sk-e2e", "LLM_MODEL": "gpt-4o-mini",
                "DATA_DIR": str(data_dir), "LOG_LEVEL": "WARNING"})
    return env


def prelabel(ls: LabelStudio, project: int, env: dict[str, str], *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [str(LSLLM), "prelabel", "--url", ls.url, "--api-key", TOKEN, "--project", str(project), "--no-progress",
         *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def create_project(ls: LabelStudio, n: int) -> int:
    response = ls.api("POST", "/api/projects", json={"title": f"prelabel {n}", "label_config": SENTIMENT})
    assert response.status_code == 201, response.text
    project = int(response.json()["id"])
    response = ls.api("POST", f"/api/projects/{project}/import",
                      json=[{"text": f"review number {i}"} for i in range(n)])
    assert response.status_code == 201, response.text
    return project


def all_tasks(ls: LabelStudio, project: int) -> list[dict[str, Any]]:
    out, page = [], 1
    while True:
        body = ls.api("GET", "/api/tasks", params={"project": project, "fields": "all", "page_size": 500,
                                                   "page": page}).json()
        out.extend(body["tasks"])
        if len(out) >= body["total"]:
            return out
        page += 1


def summary_count(stderr: str, name: str) -> int:
    match = re.search(rf"^\s+{name}\s+(\d+)", stderr, re.M)
    assert match, stderr
    return int(match.group(1))


def test_thousand_tasks_interrupted_and_resumed_without_duplicates(label_studio, counting, tmp_path) -> None:
    ls = label_studio
    project = create_project(ls, 1000)
    env = env_for(counting, tmp_path / "data")
    before = sum(counting.answered.values())

    first = prelabel(ls, project, env, "--concurrency", "16")
    deadline = time.monotonic() + 120
    while sum(counting.answered.values()) - before < 300 and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.05)
    first.send_signal(signal.SIGINT)
    _, err1 = first.communicate(timeout=120)
    assert first.returncode == 130, err1
    assert "stopped early: interrupted" in err1
    done1 = summary_count(err1, "done")
    assert 300 <= done1 < 1000, err1

    version = re.search(r"model_version ([^\s,]+)", err1).group(1)
    stored = [t for t in all_tasks(ls, project) if t["predictions"]]
    assert len(stored) == done1  # everything predicted before the interrupt reached Label Studio

    second = prelabel(ls, project, env, "--concurrency", "16")
    _, err2 = second.communicate(timeout=300)
    assert second.returncode == 0, err2
    assert summary_count(err2, "skipped") == done1
    assert summary_count(err2, "done") == 1000 - done1
    assert "429s handled" in err2

    tasks = all_tasks(ls, project)
    assert len(tasks) == 1000
    for task in tasks:
        assert [p["model_version"] for p in task["predictions"]] == [version], task["id"]
        prediction = task["predictions"][0]
        number = int(task["data"]["text"].rsplit(" ", 1)[-1])
        assert prediction["result"][0]["value"]["choices"] == [LABELS[number % 3]]
        assert_valid(SENTIMENT, task["data"], {"result": prediction["result"], "score": prediction["score"]})
    texts = {f"review number {i}" for i in range(1000)}
    answered = {t: c for t, c in counting.answered.items() if t in texts}
    assert set(answered) == texts and set(answered.values()) == {1}  # no task ever reached the model twice

    third = prelabel(ls, project, env)  # nothing left: zero calls
    _, err3 = third.communicate(timeout=120)
    assert third.returncode == 0 and summary_count(err3, "skipped") == 1000
    assert sum(counting.answered[t] for t in texts) == 1000


@pytest.mark.parametrize("case", ["url", "key", "project"])
def test_wrong_url_key_or_project_exit_2_before_any_llm_call(label_studio, counting, tmp_path, case) -> None:
    ls = label_studio
    project = create_project(ls, 3)
    url, key, pid = ls.url, TOKEN, project
    if case == "url":
        url = f"http://127.0.0.1:{free_port()}"
    elif case == "key":
        key = "not-the-token"
    else:
        pid = 987654
    before = sum(counting.answered.values()) + counting.server.rejected_429
    proc = subprocess.run(
        [str(LSLLM), "prelabel", "--url", url, "--api-key", key, "--project", str(pid)],
        env=env_for(counting, tmp_path / "data"), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("lsllm prelabel: "), proc.stderr
    assert {"url": "cannot reach", "key": "refused the API key", "project": "does not exist"}[case] in lines[0]
    assert key not in proc.stderr  # the token (right or wrong) is never echoed
    assert sum(counting.answered.values()) + counting.server.rejected_429 == before


def test_plan_for_a_project_measures_tokens_from_usage(label_studio, counting, tmp_path) -> None:
    ls = label_studio
    project = create_project(ls, 120)
    before = sum(counting.answered.values())
    proc = subprocess.run(
        [str(LSLLM), "plan", "--url", ls.url, "--api-key", TOKEN, "--project", str(project), "--sample", "40",
         "--calls", "3", "--concurrency", "8"],
        env=env_for(counting, tmp_path / "data"), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "120 (prompts rendered for 40)" in out
    assert "measured on 3 calls" in out
    assert sum(counting.answered.values()) - before == 3
    # the scripted provider reports chars // 4 prompt tokens; these prompts differ only in the number
    per_task = int(re.search(r"prompt tokens\s+([\d,]+) per task", out).group(1).replace(",", ""))
    usage = [sum(len(m["content"]) for m in body["messages"]) // 4 for body in counting.server.requests[-3:]]
    assert abs(per_task - sum(usage) / 3) <= 2, (per_task, usage)
    assert re.search(r"cost\s+\$\d", out) and "at concurrency 8" in out


def test_view_limits_the_run_to_a_data_manager_tab(label_studio, counting, tmp_path) -> None:
    ls = label_studio
    project = create_project(ls, 30)
    ids = sorted(t["id"] for t in all_tasks(ls, project))
    chosen = ids[:8]
    view = ls.api("POST", "/api/dm/views", json={"project": project, "data": {"filters": {
        "conjunction": "and",
        "items": [{"filter": "filter:tasks:id", "operator": "less_or_equal", "type": "Number", "value": chosen[-1]}],
    }}})
    assert view.status_code == 201, view.text
    proc = prelabel(ls, project, env_for(counting, tmp_path / "data"), "--view", str(view.json()["id"]))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    predicted = sorted(t["id"] for t in all_tasks(ls, project) if t["predictions"])
    assert predicted == chosen


def test_prelabel_prompts_with_the_ml_backend_extra_params(label_studio, counting, e2e_backend, tmp_path) -> None:
    """The project's "Connect Model" Extra params (instructions...) reach prelabel's prompts, as they
    reach /predict's."""
    ls = label_studio
    project = create_project(ls, 4)
    connected = ls.api("POST", "/api/ml", json={
        "url": e2e_backend.url, "project": project, "title": "lsllm", "is_interactive": False,
        "auth_method": "NONE", "extra_params": {"instructions": "Reviews of kitchen appliances (XYZZY)."},
    })
    assert connected.status_code == 201, connected.text
    proc = prelabel(ls, project, env_for(counting, tmp_path / "data"))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    systems = [b["messages"][0]["content"] for b in counting.server.requests[-4:]]
    assert all("Reviews of kitchen appliances (XYZZY)." in s for s in systems), systems[0]


def test_batch_mode_against_label_studio(label_studio, counting, tmp_path) -> None:
    ls = label_studio
    project = create_project(ls, 50)
    texts = {f"review number {i}" for i in range(50)}
    before = {t: counting.answered[t] for t in texts}
    live_calls = len(counting.server.requests)
    proc = prelabel(ls, project, env_for(counting, tmp_path / "data"), "--batch", "--poll-seconds", "0.05")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert len(counting.server.requests) == live_calls  # no live call: everything went through the batch
    assert all(counting.answered[t] == before[t] + 1 for t in texts)
    tasks = all_tasks(ls, project)
    assert all(len(t["predictions"]) == 1 for t in tasks)
    for task in tasks:
        prediction = task["predictions"][0]
        assert_valid(SENTIMENT, task["data"], {"result": prediction["result"], "score": prediction["score"]})
    assert summary_count(err, "done") == 50


def test_batch_mode_needs_a_provider(label_studio, tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_")}
    proc = subprocess.run([str(LSLLM), "prelabel", "--url", label_studio.url, "--api-key", TOKEN, "--project", "1",
                           "--batch"], env={**env, "DATA_DIR": str(tmp_path)}, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "needs a provider with OpenAI's Batch API" in proc.stderr
