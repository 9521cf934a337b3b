from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from label_studio_sdk.label_interface import LabelInterface

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from scripted_provider import Reply, ScriptedProvider  # noqa: E402

from backend.service.app import build_model, create_app  # noqa: E402
from backend.settings import Settings  # noqa: E402
from converters.regions import offset_errors  # noqa: E402
from converters.task_spec import build_task_spec  # noqa: E402

CONFIGS = ROOT / "examples" / "configs"
DATASETS = Path(os.environ.get("LSLLM_DATASETS", ROOT.parent / "shared" / "datasets"))


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.1) -> Any:
    """The first truthy value of `predicate` within `timeout` seconds, else its last value."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return value


def config(name: str) -> str:
    return (CONFIGS / f"{name}.xml").read_text()


def assert_valid(label_config: str, data: dict[str, Any], item: Any) -> None:
    """Every prediction a test sees must pass Label Studio's validation and the offset rule."""
    if item == []:
        return
    assert isinstance(item, dict), item
    errors = LabelInterface(label_config).validate_prediction(dict(item), return_errors=True)
    assert not errors, errors
    assert not offset_errors(item["result"], data, build_task_spec(label_config)), item
    if "score" in item:
        assert isinstance(item["score"], float) and 0.0 <= item["score"] <= 1.0


def make_settings(tmp_path: Path, base_url: str, **overrides: Any) -> Settings:
    values = {
        "llm_base_url": base_url,
        "llm_api_key": "sk-test-secret-key-123",
        "llm_model": "scripted-model",
        "llm_max_retries": 2,
        "llm_timeout": 5.0,
        "data_dir": tmp_path / "data",
    }
    values.update(overrides)
    return Settings.model_validate(values)


@pytest.fixture
def provider() -> Iterator[ScriptedProvider]:
    """A provider whose answers the test sets with `provider.responder = ...`."""
    p = ScriptedProvider(lambda body: Reply(content="{}"))
    p.start()
    yield p
    p.stop()


@pytest.fixture
def make_app(tmp_path: Path, provider: ScriptedProvider) -> Callable[..., Any]:
    made = []

    def factory(**overrides: Any) -> Any:
        settings = make_settings(tmp_path, provider.base_url, **overrides)
        app = create_app(settings, build_model(settings))
        app.testing = True
        made.append(app)
        return app

    yield factory
    for app in made:
        app.extensions["lsllm_model"].close()


def json_answer(obj: Any) -> Reply:
    return Reply(content=json.dumps(obj, ensure_ascii=False))


PG_ADMIN_URL = os.environ.get("LSLLM_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test. Skips visibly when no server answers on a user's
    machine; in CI (CI=true) a missing server fails the test instead."""
    import uuid

    from sqlalchemy import create_engine, text

    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any connection failure
        admin.dispose()
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is required in CI but not reachable at {PG_ADMIN_URL}: {exc}")
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL} (set LSLLM_TEST_PG): {type(exc).__name__}")
    name = f"lsllm_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# --- a real Label Studio and this backend under gunicorn, shared by the end-to-end modules ---------
from e2e_answers import ANSWERS  # noqa: E402
from labelstudio_harness import LS_VENV, Backend, LabelStudio, cleanup, start_backend, start_label_studio, stop  # noqa: E402
from scripted_provider import last_user_text  # noqa: E402


@pytest.fixture(scope="session")
def label_studio() -> Iterator[LabelStudio]:
    if not (LS_VENV / "bin" / "label-studio").exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"Label Studio must be installed for CI at {LS_VENV} (make ls-venv)")
        pytest.skip(f"Label Studio not installed at {LS_VENV}: run `make ls-venv`")
    ls = start_label_studio()
    yield ls
    stop(ls.proc)
    cleanup(ls.data_dir)


@pytest.fixture(scope="session")
def e2e_provider() -> Iterator[ScriptedProvider]:
    def respond(body: dict) -> Any:
        text = last_user_text(body)
        if text in ANSWERS:
            return json_answer(ANSWERS[text])
        return json_answer({"sentiment": "neutral"})

    with ScriptedProvider(respond) as p:
        yield p


@pytest.fixture(scope="session")
def e2e_backend(e2e_provider) -> Iterator[Backend]:
    b = start_backend(e2e_provider.base_url)
    yield b
    stop(b.proc)
    cleanup(b.data_dir)


