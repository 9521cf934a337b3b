"""The real embedded model (SmolLM2-135M through llama-cpp-python's server), not a mock: predictions for
a NER, a sentiment and an intent config are valid Label Studio JSON with scores from logprobs."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from xml.sax.saxutils import quoteattr

import pytest
from conftest import assert_valid, config

from backend.llm.local_server import (
    LocalModelError,
    LocalModelServer,
    settings_for_local,
)
from backend.service.app import build_model, create_app
from backend.settings import Settings

pytestmark = [pytest.mark.local_model, pytest.mark.slow]

if importlib.util.find_spec("llama_cpp") is None:  # pragma: no cover - make install always has it
    pytest.skip("llama-cpp-python is not installed (the [local] extra)", allow_module_level=True)


@pytest.fixture(scope="module")
def local_app(tmp_path_factory):
    data = tmp_path_factory.mktemp("local")
    base = Settings.model_validate({"data_dir": data})
    server = LocalModelServer(base)
    settings = settings_for_local(base, server.start(), server.status_file)
    app = create_app(settings, build_model(settings))
    app.testing = True
    yield app, server
    app.extensions["lsllm_model"].predictor.close()
    server.stop()


def build_info() -> str:
    import llama_cpp

    info = llama_cpp.llama_print_system_info()
    return info.decode("utf-8", "replace") if isinstance(info, bytes) else str(info)


def test_embedded_server_completes_a_multi_token_prompt(local_app) -> None:
    """The smallest real proof that this llama.cpp build decodes on this CPU: a native build on an
    AVX-512/AMX machine segfaulted here (a one-token prompt worked). A failure names the cause."""
    import openai

    _, server = local_app
    client = openai.OpenAI(base_url=server.base_url, api_key="not-needed", timeout=60, max_retries=0)
    try:
        answer = client.completions.create(model=server.settings.local_model_name,
                                           prompt="The capital of France is", max_tokens=8, temperature=0)
        text = answer.choices[0].text
    except openai.APIError as exc:
        time.sleep(0.5)  # let the supervisor's stderr reader catch the server's last lines
        cause = server.death_cause() if not server.alive() else f"server alive, {type(exc).__name__}: {exc}"
        pytest.fail(f"the embedded server did not complete a multi-token prompt: {cause}; "
                    f"llama.cpp build: {build_info()}")
    assert text.strip(), f"empty completion; llama.cpp build: {build_info()}"
    assert answer.usage is not None and answer.usage.prompt_tokens > 1


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


@pytest.mark.parametrize("values", [['"yes"', '"no"'], ["\U0001F600", "\U0001F621"], ["a\\b", "c\\d"]],
                         ids=["quotes", "emoji", "backslashes"])
def test_choices_whose_json_holds_a_backslash_are_answered(local_app, values) -> None:
    """Every label here is written with a backslash in JSON (`\\"`, `\\ud83d…`, `\\\\`). llama-cpp-python's
    schema grammar did not escape it: the quotes killed the server on every call (SIGSEGV), and the
    emoji and backslash labels held the model to other text (backend.llm.llama_server)."""
    app, server = local_app
    deaths = server.deaths
    choices = "".join(f"<Choice value={quoteattr(value)}/>" for value in values)
    cfg = f'<View><Text name="text" value="$text"/><Choices name="mood" toName="text">{choices}</Choices></View>'
    tasks = [{"id": i, "data": {"text": t}} for i, t in enumerate(["I love it.", "I hate it."])]
    response = app.test_client().post("/predict", json={"tasks": tasks, "label_config": cfg, "project": "1.2"})
    assert response.status_code == 200
    for task, item in zip(tasks, response.get_json()["results"], strict=True):
        assert item != [] and item["result"], f"no answer for {values}: {server._last_error()}"
        assert_valid(cfg, task["data"], item)
        assert item["result"][0]["value"]["choices"][0] in values
    assert server.deaths == deaths


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
        if server.restarts >= 1 and server.state == "ready" and server.healthy():
            break  # "ready" only once the restarted server has decoded; its port answers a little earlier
        time.sleep(0.5)
    assert server.healthy() and server.restarts >= 1, server._last_error()
    assert server.state == "ready" and server.deaths >= 1
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
