"""The model class, shaped like label_studio_ml's: setup(), predict(tasks, context), fit(event, data).

It owns no HTTP: the Flask routes in `backend.service.app` translate requests into these calls, and the CLI's
file mode uses `predict` directly.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from backend.labelstudio.credentials import CredentialsError, credentials
from backend.labelstudio.push import PushDelivery
from backend.labelstudio.review_tab import ReviewTabs
from backend.labelstudio.webhooks import INSTALLED, WebhookInstaller, check_secret
from backend.learning.intake import HANDLED, BadEvent, intake
from backend.learning.learner import EventWorker
from backend.metrics import Metrics
from backend.predict.predictor import Predictor, ProjectPlan
from backend.runs.refresh import Refresher
from backend.settings import Settings
from backend.store.example_store import ExampleStore
from backend.store.jobs_store import JobsStore
from backend.store.project_id import normalise_project_id
from backend.store.project_store import ProjectStore
from converters.examples import result_errors

log = logging.getLogger(__name__)


class StoreUnavailable(Exception):
    """The store is down and the request lacks what only the store knows (-> 503 with this reason)."""


class WebhookRefused(Exception):
    """A webhook event for a project whose events must carry a secret came without the right one (-> 401)."""


def model_version(settings: Settings, model: str, examples_version: str = "e0") -> str:
    """prompt version + model + example-set version; equal in every worker for equal inputs."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", model).strip("-")[:60] or "model"
    return f"lsllm-{settings.prompt_version}-{slug}-{examples_version}"


class LLMBackendModel:
    def __init__(
        self,
        settings: Settings,
        predictor: Predictor,
        projects: ProjectStore,
        metrics: Metrics,
        examples: ExampleStore,
        worker: EventWorker,
        push: PushDelivery | None = None,
        webhooks: WebhookInstaller | None = None,
        jobs: JobsStore | None = None,
        review_tabs: ReviewTabs | None = None,
        refresher: Refresher | None = None,
    ) -> None:
        self.settings = settings
        self.predictor = predictor
        self.projects = projects
        self.metrics = metrics
        self.examples = examples
        self.worker = worker
        self.push = push
        self.webhooks = webhooks  # installs per-project webhook secrets in Label Studio (None: never)
        self.jobs = jobs  # pushed retrieves and refreshes (None: not recorded)
        self.review_tabs = review_tabs  # creates each project's review tab once (None: never)
        self.refresher = refresher  # refreshes predictions when a project's version moves (None: never)
        self.closers: list[Callable[[], None]] = []  # closed last by close(), in order
        self._store_outage = False  # a /predict read failed and none has succeeded since (logged once)
        self._store_failures = 0

    def close(self) -> None:
        """Stop the background work and write what is pending; the CLI commands end with this."""
        self.predictor.close()
        self.predictor.llm.close()
        self.worker.stop()
        if self.push is not None:
            self.push.close()
        if self.webhooks is not None:
            self.webhooks.close()
        if self.review_tabs is not None:
            self.review_tabs.close()
        if self.refresher is not None:
            self.refresher.stop()
        for close in self.closers:  # what the composition root made for them: students, embedders, the engine
            try:
                close()
            except Exception as exc:  # noqa: BLE001 - one failed close must not keep the rest open
                log.warning("closing %s failed: %s", getattr(close, "__qualname__", close), type(exc).__name__)

    def version_for(self, plan: ProjectPlan | None = None, project_id: str | None = None) -> str:
        model = plan.model if plan is not None else self.settings.llm_model
        examples = self.projects.examples_version(project_id) if project_id else 0
        return model_version(self.settings, model, f"e{examples}")

    @staticmethod
    def project_key(project: Any) -> str | None:
        try:
            return normalise_project_id(project)
        except ValueError:
            return None

    def setup(
        self,
        project: Any,
        label_config: str,
        extra_params: Mapping[str, Any] | None = None,
        hostname: str | None = None,
        access_token: str | None = None,
    ) -> dict[str, Any]:
        """Validate the config (raises UnsupportedConfig/ValueError), remember the project, answer the
        model_version Label Studio will compare predictions against. Cheap: plans are cached."""
        plan = self.predictor.plan(label_config, extra_params)
        project_id = normalise_project_id(project)
        info = self.projects.save(project_id, label_config, dict(extra_params or {}), hostname, access_token)
        if self.webhooks is not None and self.settings.webhook_secret is None and info.webhook_auth != INSTALLED:
            self.webhooks.request(project_id)  # background, at most once per interval; no-op without credentials
        if self.review_tabs is not None and self.settings.review_tab == "on":
            self.review_tabs.request(project_id)  # background, once per project; no-op without credentials
        return {"model_version": self.version_for(plan, project_id)}

    def expected_webhook_secret(self, project_id: str) -> str | None:
        """The secret a project's events must carry: WEBHOOK_SECRET when set, else the project's own once it
        is installed in Label Studio; None: accepted without one (as before authenticated webhooks)."""
        if self.settings.webhook_secret is not None:
            return self.settings.webhook_secret.get_secret_value()
        info = self.projects.get(project_id)
        if info is not None and info.webhook_auth == INSTALLED:
            return self.projects.secrets.webhook_secret(project_id)
        return None

    def plan_for(self, project: Any, label_config: str | None) -> ProjectPlan:
        """The plan for a request: its own label_config, else the one /setup stored for the project
        (with the project's extra_params). With the store down, the request's label_config alone
        (zero-shot, default extra_params); none in the request: StoreUnavailable (-> 503)."""
        info = None
        project_id = None
        if project is not None:
            try:
                project_id = normalise_project_id(project)
            except ValueError:
                project_id = None
        if project_id is not None:
            try:
                info = self.projects.get(project_id)
            except SQLAlchemyError as exc:
                self._store_down(exc)
                if not label_config:
                    raise StoreUnavailable(
                        "the backend's store is unavailable and the request has no label_config to predict with"
                    ) from exc
        config = label_config or (info.label_config if info else None)
        if not config:
            raise ValueError("no label_config in the request and none known for this project")
        extra = info.extra_params if info else {}
        return self.predictor.plan(config, extra)

    def predict(
        self,
        tasks: Sequence[Any],
        context: Mapping[str, Any] | None = None,
        project: Any = None,
        label_config: str | None = None,
    ) -> tuple[list[Any], str]:
        """(one item per task in order, model_version). An item is a prediction dict, or [] for a task
        Label Studio should ask for again (failed, or delivered later by the push path).

        Raises UnsupportedConfig/ValueError for a config that cannot be predicted, StoreUnavailable when
        the store is down and the request has no label_config. With the store down and a label_config
        in the request, the tasks are predicted zero-shot (one warning line per outage). `context` (the
        interactive annotator's partial result) is not used for text yet."""
        failures = self._store_failures
        plan = self.plan_for(project, label_config)
        project_id = self.project_key(project)
        try:
            version = self.version_for(plan, project_id)
        except SQLAlchemyError as exc:  # the store is down: predict zero-shot rather than fail
            self._store_down(exc)
            version, project_id = self.version_for(plan), None
        try:
            pushed = self.try_push(plan, project_id, version, tasks)
        except SQLAlchemyError as exc:  # the store is down: answer synchronously instead
            self._store_down(exc)
            pushed = False
        if pushed:
            # stored by the push; [] per task makes Label Studio store nothing now (measured)
            return [[] for _ in tasks], version
        results = self.predictor.predict_tasks(plan, tasks, version, project_id=project_id)
        self.predictor.llm.flush()  # the answers are in the store before Label Studio asks again
        if self._store_outage and self._store_failures == failures and project_id is not None:
            self._store_outage = False  # a whole /predict without a store error: the outage is over
            log.info("the store answers again: /predict uses the projects' settings and examples")
        return [r.item for r in results], version

    def _store_down(self, exc: Exception) -> None:
        """Log one line per outage (not one per request)."""
        self._store_failures += 1
        if not self._store_outage:
            self._store_outage = True
            log.warning(
                "the store is unavailable (%s): /predict answers zero-shot with the request's label_config "
                "(no examples, no project extra_params), or 503 without one, until it answers",
                type(exc).__name__,
            )

    def try_push(
        self, plan: ProjectPlan, project_id: str | None, version: str, tasks: Sequence[Any]
    ) -> bool:
        """Hand a large batch to the push path; False when it should be answered synchronously."""
        threshold = self.settings.push_threshold
        if self.push is None or not threshold or len(tasks) <= threshold or project_id is None:
            return False
        try:
            url, token = credentials(self.settings, self.projects, project_id)
        except CredentialsError:
            return False
        valid = [t for t in tasks if isinstance(t, Mapping) and isinstance(t.get("id"), int)]
        claimed = self.push.claim(project_id, version, [t["id"] for t in valid])
        mine = [t for t in valid if t["id"] in claimed]
        if mine:
            self.push.submit(plan, project_id, version, mine, url, token)
        log.info("project %s: %d tasks pushed in the background (%d already in flight or done)",
                 project_id, len(mine), len(valid) - len(mine))
        return True

    def fit(
        self, event: str, data: Mapping[str, Any], secret: str | None = None, basic_auth: bool | None = None
    ) -> dict[str, Any]:
        """Take a webhook event: check it, write it to the durable event table, return at once.

        The event worker applies it in the background. Raises BadEvent (-> 4xx) for a payload of the
        wrong shape or whose result does not fit the project's config, WebhookRefused (-> 401) for an
        event of a project that needs a secret (`expected_webhook_secret`) without the right `secret`;
        database errors propagate (-> 503). START_TRAINING carries no data and Label Studio sends it
        without webhook headers: it passes without the secret unless Basic auth is configured and
        `basic_auth` (the request's credentials were right) is False."""
        accepted = intake({**data, "action": event})
        if accepted is None:
            # any string can arrive here: a metric label per unknown action would grow without bound, and
            # a lone surrogate in one made every later /metrics answer 500
            self.metrics.webhook_events.labels(event if event in HANDLED else "other", "ignored").inc()
            return {"status": "ignored", "action": event}
        expected = self.expected_webhook_secret(accepted.project_id)
        if expected is not None and not check_secret(expected, secret):
            if accepted.action != "START_TRAINING" or basic_auth is False:
                self.metrics.webhook_events.labels(accepted.action, "unauthorised").inc()
                raise WebhookRefused(f"project {accepted.project_id} accepts webhook events only with its secret")
        self._check_results(accepted.project_id, accepted.payload)
        self.worker.note_intake()  # before the event exists, so the worker never takes it mid-burst
        event_id = self.examples.append_event(accepted.project_id, accepted.action, accepted.payload)
        self.metrics.webhook_events.labels(accepted.action, "stored").inc()
        return {"status": "ok", "action": accepted.action, "event_id": event_id}

    def _check_results(self, project_id: str, payload: Mapping[str, Any]) -> None:
        annotations = [a for a in payload.get("annotations") or [] if not a.get("was_cancelled")]
        if not annotations:
            return
        config = payload.get("label_config")
        if not config:
            info = self.projects.get(project_id)
            config = info.label_config if info else None
        if not config:
            return
        try:
            plan = self.predictor.plan(config)
        except ValueError:
            return  # a config this backend does not predict: nothing to learn, the worker ignores it
        tasks = {t["id"]: t for t in payload.get("tasks") or []}
        for annotation in annotations:
            task = tasks.get(annotation["task_id"]) or {}
            errors = result_errors(plan.interface, plan.spec, task.get("data") or {}, annotation["result"])
            if errors:
                raise BadEvent(f"annotation {annotation['id']} does not fit the project's config: {errors[0]}")
