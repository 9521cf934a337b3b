"""Read a prediction back from Label Studio by id, for live agreement.

Label Studio fills a webhook's `annotation.prediction` only when the prediction's model_version
equals the project's `model_version`; with an ML backend connected the project's is the backend's
title (measured on 1.23: `ml/api.py` sets it), so the payload carries `prediction: {}` and only
`parent_prediction: <id>`. The event worker then asks Label Studio for that prediction, before it
opens its write transaction, with the credentials the resync uses.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from backend.labelstudio.api import as_dict, client_for
from backend.labelstudio.credentials import CredentialsError, credentials
from backend.settings import Settings
from backend.store.project_store import ProjectStore

log = logging.getLogger(__name__)


def make_prediction_fetch(
    settings: Settings,
    projects: ProjectStore,
    timeout: float = 5.0,
    keep: int = 256,
    backoff: float = 60.0,
    client_factory: Callable[[str, str, float], Any] = client_for,
    clock: Callable[[], float] = time.monotonic,
) -> Callable[[str, int], dict[str, Any] | None]:
    """A fetcher that asks Label Studio and remembers the last `keep` answers (a prediction does not
    change; an annotation's updates and re-deliveries ask for the same one). After a failure it does
    not ask again for that project for `backoff` seconds: with Label Studio unreachable, a timeout per
    event would hold the worker past its events' lease (30 s) and let another worker apply them too."""
    cache: OrderedDict[tuple[str, int], dict[str, Any]] = OrderedDict()
    failed_until: dict[str, float] = {}

    def fetch(project_id: str, prediction_id: int) -> dict[str, Any] | None:
        key = (project_id, prediction_id)
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        if clock() < failed_until.get(project_id, float("-inf")):
            return None
        try:
            url, token = credentials(settings, projects, project_id)
            raw = as_dict(client_factory(url, token, timeout).predictions.get(id=prediction_id))
        except CredentialsError as exc:
            failed_until[project_id] = clock() + backoff
            log.warning("live agreement: prediction %s not read: %s", prediction_id, exc)
            return None
        except Exception as exc:  # noqa: BLE001 - network or API error: this review goes unscored
            failed_until[project_id] = clock() + backoff
            log.warning("live agreement: prediction %s of project %s not read (%s); not asking again for %.0f s",
                        prediction_id, project_id, type(exc).__name__, backoff)
            return None
        found = prediction_fields(raw)
        if found is not None:
            cache[key] = found
            if len(cache) > keep:
                cache.popitem(last=False)
        return found

    return fetch


def prediction_fields(raw: Any) -> dict[str, Any] | None:
    """The parts of a Label Studio prediction agreement needs; None when it has no result list."""
    if not isinstance(raw, dict) or not isinstance(raw.get("result"), list):
        return None
    out: dict[str, Any] = {"result": [dict(as_dict(r)) for r in raw["result"]]}
    for key in ("id", "score", "model_version"):
        if raw.get(key) is not None:
            out[key] = raw[key]
    return out
