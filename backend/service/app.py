"""The HTTP service: Label Studio's ML protocol on Flask 3 (application factory, no import-time state).

Routes: GET /health, POST /setup, POST /predict, POST /webhook, GET /versions, GET /metrics.
Basic auth (when configured) guards every route except /health and /webhook: Label Studio sends
webhooks without the backend's credentials (measured), so a guarded /webhook would never learn. /webhook
is authenticated instead by a secret header (WEBHOOK_SECRET, or the per-project secret the backend
installs on Label Studio's webhook: backend.labelstudio.webhooks).

Bodies are parsed here, defensively: not JSON, not UTF-8, nested deeper than MAX_JSON_DEPTH -> 400;
a /webhook body over MAX_WEBHOOK_MB, a /predict of more than MAX_PREDICT_TASKS tasks, any body over
MAX_BODY_MB -> 413 with the reason.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from typing import Any

from flask import Flask, Response, g, jsonify, request
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException

from backend.labelstudio.credentials import credentials
from backend.labelstudio.prediction_fetch import make_prediction_fetch
from backend.labelstudio.push import PushDelivery, sdk_sender
from backend.labelstudio.resync import make_resync
from backend.labelstudio.review_tab import ReviewTabs
from backend.labelstudio.webhooks import HEADER as WEBHOOK_HEADER
from backend.labelstudio.webhooks import INSTALLED, WebhookInstaller
from backend.learning.agreement import headline, quality_report, summarise
from backend.learning.intake import BadEvent
from backend.learning.learner import EventWorker, Learner, VersionPolicy
from backend.learning.selection import Selector, ShortlistPolicy
from backend.learning.span_cascade import gazetteer_book, span_hook
from backend.learning.students import build_students
from backend.learning.vector_index import vector_source
from backend.llm.client import LLMClient
from backend.llm.embeddings import embeddings_config
from backend.llm.local_embeddings import LocalEmbedder
from backend.llm.local_status import CRASH_LOOP, local_model_metrics, read_status
from backend.llm.pricing import PriceTable
from backend.llm.response_cache import ResponseCache
from backend.metrics import Metrics
from backend.predict.predictor import Predictor
from backend.runs.refresh import Refresher, RefreshLimits
from backend.service.model import LLMBackendModel, StoreUnavailable, WebhookRefused
from backend.settings import Settings
from backend.store.db import make_engine, migrate
from backend.store.embedding_store import EmbeddingStore
from backend.store.example_store import ExampleStore
from backend.store.jobs_store import JobsStore, job_gauges
from backend.store.project_id import normalise_project_id
from backend.store.project_store import ProjectStore
from backend.store.quality_store import QualityStore
from backend.store.secrets import Secrets
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

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url())
    migrate(engine)
    cache = ResponseCache(engine, settings.llm_cache_max_entries) if settings.llm_cache else None
    llm = LLMClient(settings, base_url=llm_base_url, on_call=on_call, cache=cache)
    secrets = Secrets.from_settings(
        settings.secret_key.get_secret_value() if settings.secret_key else None, settings.data_dir
    )
    projects = ProjectStore(engine, secrets=secrets)
    projects.encrypt_clear_tokens()  # rows an older version stored in clear text
    examples = ExampleStore(engine)
    embeddings = embeddings_config(settings, llm_base_url)
    local_embedder = LocalEmbedder()  # bundled WordLlama: selection without EMBEDDINGS_MODEL, and the students
    students = build_students(settings, examples, projects, local_embedder, metrics)
    vectors = vector_source(settings.selection_similarity, embeddings, local_embedder, EmbeddingStore(engine))
    selector = Selector(
        examples,
        settings.few_shot_k,
        settings.few_shot_token_budget,
        settings.selection_refresh_seconds,
        ShortlistPolicy(settings.label_shortlist_threshold, settings.label_shortlist_size),
        vectors,
        gazetteers=gazetteer_book(settings),
        lead=students.lead if students is not None else None,
    )
    predictor = Predictor(settings, llm, metrics, context=selector.context)
    predictor.pipeline.spans = span_hook(settings, metrics)  # gazetteer spans beside the LLM's (cascade)
    predictor.pipeline.student = students  # <Choices> students: cascade, hint, calibrated scores
    if students is not None:
        students.trainer.judge = predictor.pipeline.held_out  # the referee asks the LLM through the pipeline
    learner = Learner(
        engine,
        examples,
        projects,
        metrics,
        VersionPolicy(settings.examples_version_policy, settings.examples_version_every),
        resync=make_resync(settings, projects),
        fetch_prediction=make_prediction_fetch(settings, projects),
    )
    jobs = JobsStore(engine, stale_seconds=settings.job_stale_seconds)
    push = PushDelivery(engine, predictor, metrics, batch_size=settings.push_batch_size, sender=sdk_sender,
                        jobs=jobs)
    webhooks = WebhookInstaller(
        lambda project_id: credentials(settings, projects, project_id),
        secrets.webhook_secret,
        lambda project_id: projects.mark_webhook_auth(project_id, INSTALLED),
    )
    tabs = ReviewTabs(jobs, lambda project_id: credentials(settings, projects, project_id))
    model = LLMBackendModel(settings, predictor, projects, metrics, examples, EventWorker(learner), push,
                            webhooks=webhooks, jobs=jobs, review_tabs=tabs)
    model.refresher = build_refresher(settings, model, engine, push)
    if model.refresher is not None and students is not None:  # refresh with the new version's student
        model.refresher.prepare = lambda project_id, plan: students.settle(project_id, plan, timeout=900.0)
    # the model is the one owner: close() stops these too, after the work that uses them
    embedder_close = getattr(getattr(vectors, "embedder", None), "close", None)
    model.closers = [c for c in (students.close if students is not None else None, embedder_close,
                                 local_embedder.close, engine.dispose) if c is not None]
    if settings.review_tab == "on":  # the tab orders by the scores of the project's model_version: keep it ours
        push.on_pushed = tabs.follow
        if model.refresher is not None:
            model.refresher.on_pushed = tabs.follow
    return model


def build_refresher(settings: Settings, model: LLMBackendModel, engine: Any, push: PushDelivery) -> Refresher | None:
    """The refresh of predictions when a project's version moves (REFRESH=on), or None."""
    if settings.refresh != "on" or model.jobs is None:
        return None
    try:
        prices = PriceTable.from_setting(settings.llm_prices)
    except ValueError as exc:
        log.warning("refreshed predictions are off: %s", exc)
        return None
    limits = RefreshLimits(
        max_tasks=settings.refresh_max_tasks, max_cost_usd=settings.refresh_max_cost_usd,
        unpriced_allowed=settings.refresh_unpriced == "allow", debounce_seconds=settings.refresh_debounce_seconds,
        min_interval_seconds=settings.refresh_min_interval_seconds, poll_seconds=settings.refresh_poll_seconds,
    )
    return Refresher(
        engine, model.projects, model.jobs, model.predictor, model.predictor.plan,
        lambda plan, project_id: model.version_for(plan, project_id),
        lambda project_id: credentials(settings, model.projects, project_id), push, sdk_sender, prices, limits,
    )


def _error(status: int, message: str) -> tuple[Response, int]:
    return jsonify({"status": "error", "error": message}), status


def _json_body(max_depth: int = 64) -> dict[str, Any]:
    """The request's JSON object, whatever the content type; 400 for anything else. Parsed from the raw
    bytes: Flask's own parser let a 5,000-deep array through as a RecursionError (HTTP 500)."""
    raw = request.get_data(cache=True)
    try:
        body = json.loads(raw)
    except RecursionError:
        raise _BadRequest(f"JSON nested more than {max_depth} levels deep") from None
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        raise _BadRequest("request body must be a JSON object (UTF-8)") from None
    if not isinstance(body, dict):
        raise _BadRequest("request body must be a JSON object")
    if _depth_over(body, max_depth):
        raise _BadRequest(f"JSON nested more than {max_depth} levels deep")
    return body


def _depth_over(value: Any, limit: int) -> bool:
    """True when containers nest deeper than `limit` (iterative: no recursion on hostile input)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values() if isinstance(v, (dict, list)))
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item if isinstance(v, (dict, list)))
    return False


class _TooLarge(Exception):
    pass


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


def create_app(settings: Settings, model: LLMBackendModel | None = None, start_worker: bool = True) -> Flask:
    app = Flask("lsllm")
    app.config["MAX_CONTENT_LENGTH"] = int(settings.max_body_mb * 1024 * 1024)
    model = model or build_model(settings)
    metrics = model.metrics
    app.extensions["lsllm_model"] = model
    if start_worker:
        model.worker.start()
        if model.refresher is not None:
            model.refresher.start()

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

    @app.errorhandler(_TooLarge)
    def _too_large(exc: _TooLarge) -> Any:
        return _error(413, str(exc))

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
        answer: dict[str, Any] = {"status": "UP", "model_class": "LLMBackendModel"}
        if settings.local_status_file is None:  # a provider, not the embedded model
            return jsonify(answer)
        local = read_status(settings.local_status_file)
        answer["local_model"] = local.as_json() if local else {"state": "unknown"}
        if local is not None and local.state == CRASH_LOOP:
            # Label Studio marks the backend as broken; the reason says why and what to do
            return jsonify({**answer, "status": "DOWN", "error": local.reason}), 503
        return jsonify(answer)

    @app.post("/setup")
    def setup() -> Any:
        body = _json_body(settings.max_json_depth)
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
        except SQLAlchemyError:
            log.error("/setup: the store is unavailable")
            return _error(503, "the backend's store is unavailable")
        return jsonify(answer)

    @app.post("/predict")
    def predict() -> Any:
        body = _json_body(settings.max_json_depth)
        tasks = body.get("tasks")
        if not isinstance(tasks, list):
            raise _BadRequest("'tasks' must be a list of Label Studio tasks")
        if len(tasks) > settings.max_predict_tasks:
            raise _TooLarge(f"{len(tasks)} tasks in one /predict; at most MAX_PREDICT_TASKS="
                            f"{settings.max_predict_tasks} (select fewer tasks, or raise the setting)")
        label_config = body.get("label_config")
        if label_config is not None and not isinstance(label_config, str):
            raise _BadRequest("'label_config' must be a string")
        raw_params = body.get("params")
        params = raw_params if isinstance(raw_params, dict) else {}
        try:
            items, version = model.predict(tasks, params.get("context"), body.get("project"), label_config)
        except (UnsupportedConfig, ValueError) as exc:
            return _error(400, str(exc))
        except StoreUnavailable as exc:  # down and no label_config in the request (logged by the model)
            return _error(503, str(exc))
        except SQLAlchemyError as exc:  # a store read the model does not fall back from: not a 500 either
            log.error("/predict: the store is unavailable (%s)", type(exc).__name__)
            return _error(503, "the backend's store is unavailable")
        return jsonify({"results": items, "model_version": version})

    @app.post("/webhook")
    def webhook() -> Any:
        limit = int(settings.max_webhook_mb * 1024 * 1024)
        if (request.content_length or 0) > limit or len(request.get_data(cache=True)) > limit:
            raise _TooLarge(f"webhook body over MAX_WEBHOOK_MB={settings.max_webhook_mb:g} MB")
        body = _json_body(settings.max_json_depth)
        action = body.get("action")
        if not isinstance(action, str) or not action:
            raise _BadRequest("'action' is required")
        try:
            answer = model.fit(action, body, request.headers.get(WEBHOOK_HEADER),
                               _authorised(settings) if settings.auth_enabled() else None)
        except WebhookRefused as exc:
            log.warning("webhook %s refused: %s", action[:40], exc)
            return _error(401, str(exc))
        except BadEvent as exc:
            metrics.webhook_events.labels(action, "rejected").inc()
            log.warning("webhook %s rejected: %s", action, exc)
            return _error(422, str(exc))
        except SQLAlchemyError as exc:
            metrics.webhook_events.labels(action, "unavailable").inc()
            log.error("webhook %s: the store is unavailable (%s); Label Studio will not retry, "
                      "use Start Training to resync", action, type(exc).__name__)
            return _error(503, "the backend's store is unavailable")
        return jsonify(answer), 200

    @app.get("/projects/<project>/examples")
    def list_examples(project: str) -> Any:
        try:
            project_id = normalise_project_id(project)
            page = min(10**9, max(1, int(request.args.get("page", 1))))  # a huge page overflowed SQLite (500)
            size = min(1000, max(1, int(request.args.get("page_size", 100))))
        except ValueError as exc:
            return _error(400, str(exc))
        status = request.args.get("status", "live")
        total, rows = model.examples.page(project_id, (page - 1) * size, size, status)
        return jsonify(
            {
                "project": project_id,
                "status": status,
                "total": total,
                "page": page,
                "page_size": size,
                "examples_version": model.projects.examples_version(project_id),
                "examples": [row.as_json() for row in rows],
            }
        )

    quality = QualityStore(model.examples.engine)

    @app.get("/projects/<project>/quality")
    def project_quality(project: str) -> Any:
        """Live agreement of reviews with the predictions they started from (backend.learning.agreement)."""
        try:
            project_id = normalise_project_id(project)
        except ValueError as exc:
            return _error(400, str(exc))
        try:
            outcomes, order = quality.outcomes(project_id)
        except SQLAlchemyError:
            return _error(503, "the backend's store is unavailable")
        return jsonify(quality_report(project_id, outcomes, order))

    @app.get("/projects/<project>/jobs")
    def project_jobs(project: str) -> Any:
        """The project's pushed retrieves and refreshes, newest first, with per-task counts and cost."""
        try:
            project_id = normalise_project_id(project)
            limit = min(500, max(1, int(request.args.get("limit", 50))))
        except ValueError as exc:
            return _error(400, str(exc))
        if model.jobs is None:
            return jsonify({"project": project_id, "jobs": []})
        try:
            listed = model.jobs.list(project_id, limit)
        except SQLAlchemyError:
            return _error(503, "the backend's store is unavailable")
        return jsonify({"project": project_id, "jobs": [job.as_json() for job in listed]})

    @app.delete("/projects/<project>/jobs/<int:job_id>")
    def cancel_job(project: str, job_id: int) -> Any:
        """Cancel a job: its process stops after the batch in flight and releases the rest."""
        try:
            project_id = normalise_project_id(project)
        except ValueError as exc:
            return _error(400, str(exc))
        if model.jobs is None:
            return _error(404, f"no job {job_id} in project {project_id}")
        try:
            job = model.jobs.cancel(project_id, job_id)
        except SQLAlchemyError:
            return _error(503, "the backend's store is unavailable")
        if job is None:
            return _error(404, f"no job {job_id} in project {project_id}")
        return jsonify(job.as_json())

    @app.get("/versions")
    def versions() -> Any:
        return jsonify({"versions": [model.version_for()], "model_dir": str(settings.data_dir)})

    gauges_cache: dict[str, Any] = {}

    def quality_gauges() -> bytes:
        """quality_metrics reads and summarises every review (seconds at 10,000): recomputed only when the
        review outcomes changed since the last scrape of this process."""
        try:
            key = quality.fingerprint()
        except SQLAlchemyError:
            return quality_metrics(quality)  # says the store is unavailable
        if gauges_cache.get("key") != key:
            gauges_cache.update(key=key, body=quality_metrics(quality))
        return bytes(gauges_cache["body"])

    @app.get("/metrics")
    def metrics_route() -> Any:
        body = metrics.exposition() + store_metrics(model) + quality_gauges() + jobs_metrics(model.jobs)
        if settings.local_status_file is not None:
            body += local_model_metrics(read_status(settings.local_status_file))
        return Response(body, mimetype="text/plain; version=0.0.4")

    return app


def quality_metrics(quality: QualityStore) -> bytes:
    """Live agreement gauges per project and model_version, from the shared store (same in every worker)."""
    lines = [
        "# HELP lsllm_quality_reviews Reviews of predictions by project and model_version",
        "# TYPE lsllm_quality_reviews gauge",
    ]
    accepted = [
        "# HELP lsllm_quality_accepted_share Share of predictions the reviewers accepted unchanged",
        "# TYPE lsllm_quality_accepted_share gauge",
    ]
    score = [
        "# HELP lsllm_quality_agreement Accuracy (choices) or strict span F1 (labels) against the reviews",
        "# TYPE lsllm_quality_agreement gauge",
    ]
    try:
        for project_id, outcomes in sorted(quality.all_outcomes().items()):
            groups: dict[str, list[Any]] = {}
            for o in outcomes:
                groups.setdefault(o.model_version, []).append(o)
            for version, rows in sorted(groups.items()):
                labels = f'project="{project_id}",model_version="{_label_value(version)}"'
                summary = summarise(rows)
                lines.append(f"lsllm_quality_reviews{{{labels}}} {summary['reviews']}")
                accepted.append(f"lsllm_quality_accepted_share{{{labels}}} {summary['accepted_share']}")
                main = headline(summary)
                if main is not None and main[1] is not None:
                    score.append(f'lsllm_quality_agreement{{{labels},metric="{main[0]}"}} {main[1]}')
    except SQLAlchemyError:
        return b"# quality: store unavailable\n"
    return ("\n".join(lines + accepted + score) + "\n").encode()


def jobs_metrics(store: JobsStore | None) -> bytes:
    """Jobs per project, kind and status, the tasks of unfinished jobs by state, and today's refresh cost,
    from the shared store (the same in every worker)."""
    if store is None:
        return b""
    try:
        return job_gauges(store).encode()
    except SQLAlchemyError:
        return b"# jobs: store unavailable\n"


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def store_metrics(model: LLMBackendModel) -> bytes:
    """Example and event counts straight from the shared store (identical in every worker)."""
    lines = [
        "# HELP lsllm_examples Examples in the store by project and status",
        "# TYPE lsllm_examples gauge",
    ]
    try:
        for project_id, status, n in model.examples.all_counts():
            lines.append(f'lsllm_examples{{project="{project_id}",status="{status}"}} {n}')
        lines += ["# HELP lsllm_events Webhook events in the store by outcome", "# TYPE lsllm_events gauge"]
        for outcome, n in sorted(model.examples.event_counts().items()):
            lines.append(f'lsllm_events{{outcome="{outcome}"}} {n}')
    except SQLAlchemyError:
        lines.append("# store unavailable")
    return ("\n".join(lines) + "\n").encode()
