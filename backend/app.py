"""The HTTP service: Label Studio's ML protocol on Flask 3 (application factory, no import-time state).

Routes: GET /health, POST /setup, POST /predict, POST /webhook, GET /versions, GET /metrics.
Basic auth (when configured) guards every route except /health and /webhook: Label Studio sends
webhooks without the backend's credentials (measured), so a guarded /webhook would never learn.
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import Any

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from backend.llm_client import LLMClient
from backend.metrics import Metrics
from backend.model import LLMBackendModel
from backend.predictor import Predictor
from backend.project_store import ProjectStore, make_engine
from backend.settings import Settings
from converters.task_spec import UnsupportedConfig

log = logging.getLogger(__name__)

OPEN_ROUTES = {"/health", "/webhook"}


def build_model(settings: Settings, llm_base_url: str | None = None) -> LLMBackendModel:
    """Wire the model from settings: metrics, LLM client, predictor and the project store."""
    metrics = Metrics()

    def on_call(outcome: str, answer: Any) -> None:
        metrics.llm_calls.labels(outcome).inc()
        if answer is not None:
            metrics.llm_seconds.observe(answer.seconds)
            metrics.llm_tokens.labels("prompt").inc(answer.prompt_tokens)
            metrics.llm_tokens.labels("completion").inc(answer.completion_tokens)

    llm = LLMClient(settings, base_url=llm_base_url, on_call=on_call)
    predictor = Predictor(settings, llm, metrics)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    projects = ProjectStore(make_engine(settings.resolved_database_url()))
    return LLMBackendModel(settings, predictor, projects, metrics)


def _error(status: int, message: str) -> tuple[Response, int]:
    return jsonify({"status": "error", "error": message}), status


def _json_body() -> dict[str, Any]:
    body = request.get_json(force=True, silent=True)
    if not isinstance(body, dict):
        raise _BadRequest("request body must be a JSON object")
    return body


class _BadRequest(Exception):
    pass


def _authorised(settings: Settings) -> bool:
    auth = request.authorization
    if auth is None or auth.type != "basic":
        return False
    user_ok = hmac.compare_digest((auth.username or "").encode(), (settings.basic_auth_user or "").encode())
    secret = settings.basic_auth_pass.get_secret_value() if settings.basic_auth_pass else ""
    pass_ok = hmac.compare_digest((auth.password or "").encode(), secret.encode())
    return user_ok and pass_ok


def create_app(settings: Settings, model: LLMBackendModel | None = None) -> Flask:
    app = Flask("lsllm")
    app.config["MAX_CONTENT_LENGTH"] = int(settings.max_body_mb * 1024 * 1024)
    model = model or build_model(settings)
    metrics = model.metrics
    app.extensions["lsllm_model"] = model

    @app.before_request
    def _start() -> Any:
        g.started = time.perf_counter()
        if settings.auth_enabled() and request.path not in OPEN_ROUTES and not _authorised(settings):
            return Response(
                '{"status": "error", "error": "authentication required"}',
                401,
                {"WWW-Authenticate": 'Basic realm="lsllm"', "Content-Type": "application/json"},
            )
        return None

    @app.after_request
    def _count(response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule else "unmatched"
        metrics.requests.labels(route, str(response.status_code)).inc()
        if "started" in g:
            metrics.latency.labels(route).observe(time.perf_counter() - g.started)
        return response

    @app.errorhandler(_BadRequest)
    def _bad_request(exc: _BadRequest) -> Any:
        return _error(400, str(exc))

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Any:
        return _error(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Any:
        log.exception("unexpected error on %s", request.path)
        return _error(500, "internal error")

    @app.get("/")
    @app.get("/health")
    def health() -> Any:
        return jsonify({"status": "UP", "model_class": "LLMBackendModel"})

    @app.post("/setup")
    def setup() -> Any:
        body = _json_body()
        schema = body.get("schema") or body.get("label_config")
        if not isinstance(schema, str) or not schema.strip():
            raise _BadRequest("'schema' (the label config) is required")
        extra = body.get("extra_params")
        if extra is not None and not isinstance(extra, dict):
            raise _BadRequest("'extra_params' must be an object")
        try:
            answer = model.setup(
                body.get("project"), schema, extra, body.get("hostname"), body.get("access_token")
            )
        except (UnsupportedConfig, ValueError) as exc:
            return _error(400, str(exc))
        return jsonify(answer)

    @app.post("/predict")
    def predict() -> Any:
        body = _json_body()
        tasks = body.get("tasks")
        if not isinstance(tasks, list):
            raise _BadRequest("'tasks' must be a list of Label Studio tasks")
        label_config = body.get("label_config")
        if label_config is not None and not isinstance(label_config, str):
            raise _BadRequest("'label_config' must be a string")
        params = body.get("params") if isinstance(body.get("params"), dict) else {}
        try:
            plan = model.plan_for(body.get("project"), label_config)
        except (UnsupportedConfig, ValueError) as exc:
            return _error(400, str(exc))
        version = model.version_for(plan)
        results = model.predictor.predict_tasks(plan, tasks, version)
        del params  # interactive context is not used for text yet
        return jsonify({"results": [r.item for r in results], "model_version": version})

    @app.post("/webhook")
    def webhook() -> Any:
        body = _json_body()
        action = body.get("action")
        if not isinstance(action, str) or not action:
            raise _BadRequest("'action' is required")
        return jsonify(model.fit(action, body)), 200

    @app.get("/versions")
    def versions() -> Any:
        return jsonify({"versions": [model.version_for()], "model_dir": str(settings.data_dir)})

    @app.get("/metrics")
    def metrics_route() -> Any:
        return Response(metrics.exposition(), mimetype="text/plain; version=0.0.4")

    return app
