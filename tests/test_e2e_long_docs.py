"""`lsllm prelabel` (the installed CLI, in its own process) against a real Label Studio 1.23: a long
CoNLL document pre-annotated whole in chunks, and texts with personal data masked before the scripted
provider, whose request log must hold none of it. Lean: two small projects, one run each."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import assert_valid
from labelstudio_harness import TOKEN, LabelStudio
from long_docs_provider import CONLL, CONLL_CONFIG, GoldProvider, conll_sentences, join_document
from pii_samples import samples
from scripted_provider import ScriptedProvider
from test_masking import CONFIG as PII_CONFIG
from test_masking import LABEL_OF, placeholder_answers

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow,
              pytest.mark.skipif(not CONLL.exists(), reason="CoNLL-2003 test split not in LSLLM_DATASETS")]

LSLLM = Path(sys.executable).parent / "lsllm"


@pytest.fixture(scope="module")
def document() -> tuple[list[Any], str, list[tuple[int, int, str]]]:
    sentences = conll_sentences()[200:330]
    text, gold = join_document(sentences)
    return sentences, text, gold


@pytest.fixture(scope="module")
def server(document) -> Iterator[ScriptedProvider]:
    gold = GoldProvider(document[0], context_tokens=4096)

    def respond(body: dict) -> Any:
        return placeholder_answers(body) if "Person" in json.dumps(body.get("messages")) else gold(body)

    with ScriptedProvider(respond) as provider:
        yield provider


def run_prelabel(ls: LabelStudio, project: int, provider: ScriptedProvider, data_dir: Path, **env: str) -> str:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "LABEL_STUDIO_", "DATABASE_URL",
                                                                      "PII_", "CHUNK_"))}
    base.update({"LLM_BASE_URL": provider.base_url, "LLM_API_KEY": "sk-e2e", "LLM_MODEL": "gpt-4o-mini",
                 "LLM_LOGPROBS": "false", "DATA_DIR": str(data_dir), "LOG_LEVEL": "WARNING", **env})
    proc = subprocess.run([str(LSLLM), "prelabel", "--url", ls.url, "--api-key", TOKEN, "--project", str(project),
                           "--no-progress"], env=base, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def project_with(ls: LabelStudio, title: str, config: str, texts: list[str]) -> int:
    response = ls.api("POST", "/api/projects", json={"title": title, "label_config": config})
    assert response.status_code == 201, response.text
    project = int(response.json()["id"])
    response = ls.api("POST", f"/api/projects/{project}/import", json=[{"text": t} for t in texts])
    assert response.status_code == 201, response.text
    return project


def stored(ls: LabelStudio, project: int) -> list[dict[str, Any]]:
    body = ls.api("GET", "/api/tasks", params={"project": project, "fields": "all", "page_size": 100}).json()
    return sorted(body["tasks"], key=lambda t: t["id"])


def test_prelabel_answers_a_long_document_whole(label_studio, server, document, tmp_path) -> None:
    _, text, gold = document
    config = CONLL_CONFIG.read_text()
    project = project_with(label_studio, "long document", config, [text])
    calls = len(server.requests)
    run_prelabel(label_studio, project, server, tmp_path / "data", CHUNK_CHARS="2500")
    assert len(server.requests) - calls > 3  # in chunks
    (task,) = stored(label_studio, project)
    (prediction,) = task["predictions"]
    assert_valid(config, task["data"], {"result": prediction["result"]})
    found = {(r["value"]["start"], r["value"]["end"], r["value"]["labels"][0]) for r in prediction["result"]}
    assert len(found & set(gold)) / len(gold) >= 0.99
    assert len(found) == len(prediction["result"])


def test_prelabel_masks_personal_data_before_the_provider(label_studio, server, tmp_path) -> None:
    cases = samples()[:5]
    project = project_with(label_studio, "pii", PII_CONFIG, [t for t, _ in cases])
    calls = len(server.requests)
    run_prelabel(label_studio, project, server, tmp_path / "data", PII_MASKING="on")
    sent = json.dumps(server.requests[calls:], ensure_ascii=False)
    assert len(server.requests) - calls == len(cases)
    assert [v for _, values in cases for v, _ in values if v in sent] == []
    tasks = stored(label_studio, project)
    assert len(tasks) == len(cases)
    for task in tasks:
        (prediction,) = task["predictions"]
        assert_valid(PII_CONFIG, task["data"], {"result": prediction["result"]})
        values = next(v for t, v in cases if t == task["data"]["text"])
        got = {(r["value"]["text"], r["value"]["labels"][0]) for r in prediction["result"]}
        for value, kind in values:
            assert (value, LABEL_OF["CARD" if kind == "CREDIT_CARD" else kind]) in got
