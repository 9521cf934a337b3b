"""The real embedded model (SmolLM2-135M through llama-cpp-python's server), not a mock: predictions for
a NER, a sentiment and an intent config are valid Label Studio JSON with scores from logprobs."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest

from backend.service.app import build_model, create_app
from backend.llm.local_server import LocalModelError, LocalModelServer, settings_for_local
from backend.settings import Settings
from conftest import assert_valid, config

pytestmark = pytest.mark.local_model

if importlib.util.find_spec("llama_cpp") is None:  # pragma: no cover - make install always has it
    pytest.skip("llama-cpp-python is not installed (the [local] extra)", allow_module_level=True)


@pytest.fixture(scope="module")
def local_app(tmp_path_factory):
    data = tmp_path_factory.mktemp("local")
    base = Settings.model_validate({"data_dir": data})
    server = LocalModelServer(base)
    settings = settings_for_local(base, server.start())
    app = create_app(settings, build_model(settings))
    app.testing = True
    yield app, server
    app.extensions["lsllm_model"].predictor.close()
    server.stop()


@pytest.mark.parametrize(
    "name,texts",
    [
        ("ner", ["Angela Merkel met Emmanuel Macron in Berlin."]),
        ("sentiment", ["I absolutely love this phone, it is wonderful.", "This was the worst film I have seen."]),
        ("intent", ["How much money do I have in my checking account?"]),
    ],
)
def test_real_model_predictions_are_valid_with_scores(local_app, name, texts) -> None:
    app, _ = local_app
    cfg = config(name)
    tasks = [{"id": i, "data": {"text": t}} for i, t in enumerate(texts)]
    response = app.test_client().post("/predict", json={"tasks": tasks, "label_config": cfg, "project": "1.1"})
    assert response.status_code == 200
    results = response.get_json()["results"]
    assert len(results) == len(tasks)
    for task, item in zip(tasks, results):
        assert item != [], "the local model failed to answer"
        assert_valid(cfg, task["data"], item)
        assert isinstance(item.get("score"), float)
        if name != "ner":  # a classification answer always carries its choice, scored
            assert item["result"] and isinstance(item["result"][0].get("score"), float)


def test_dead_server_fails_fast_per_task_and_is_restarted(local_app) -> None:
    app, server = local_app
    server._proc.kill()
    server._proc.wait()
    cfg = config("sentiment")
    response = app.test_client().post(
        "/predict", json={"tasks": [{"id": 1, "data": {"text": "fine"}}], "label_config": cfg}
    )
    assert response.status_code == 200 and len(response.get_json()["results"]) == 1
    for _ in range(180):
        if server.restarts >= 1 and server.healthy():
            break
        time.sleep(0.5)
    assert server.healthy() and server.restarts >= 1, server._last_error()
    # and it serves again
    again = app.test_client().post(
        "/predict", json={"tasks": [{"id": 2, "data": {"text": "great"}}], "label_config": cfg}
    )
    assert again.get_json()["results"][0] != []


def test_missing_model_file_is_one_clear_error(tmp_path: Path) -> None:
    settings = Settings.model_validate({"local_model_path": tmp_path / "nope.gguf", "data_dir": tmp_path})
    with pytest.raises(LocalModelError, match="not found"):
        LocalModelServer(settings).start()


def test_bad_model_file_exits_with_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file")
    settings = Settings.model_validate({"local_model_path": bad, "data_dir": tmp_path, "local_start_timeout": 60})
    with pytest.raises(LocalModelError, match="exited at start-up|did not answer"):
        LocalModelServer(settings).start()
