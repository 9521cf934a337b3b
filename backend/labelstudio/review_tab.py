"""The review tab: a Data Manager view "Review: least confident first" in each project.

Every prediction's `score` is the calibrated probability that it is right, so tasks without annotations
ordered by prediction score ascending put the likely errors first. The tab is created once per project,
after a /setup with usable credentials, on a background thread (/setup must stay cheap):

- the store records the project's tab (`review_tabs`): a process first claims the row, so two workers or
  replicas answering /setup at the same moment do not both create one;
- the claimer looks the tab up by title in Label Studio before creating it (a store that was reset, or
  a tab made by hand with the same title, is reused, never duplicated);
- a recorded tab is never created again, even when a user deletes it (their choice stands).

Filter and ordering are Label Studio 1.23's Data Manager names (`filter:tasks:total_annotations`, Number,
`equal` 0; ordering `tasks:predictions_score`, ascending), checked against the real server in
tests/test_e2e_active_learning.py. Label Studio averages the scores of the predictions of the project's
current model_version (managers.annotate_predictions_score).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from label_studio_sdk.core.api_error import ApiError
from sqlalchemy.exc import SQLAlchemyError

from backend.labelstudio.api import as_dict, client_for
from backend.store.jobs_store import JobsStore

log = logging.getLogger(__name__)

TITLE = "Review: least confident first"
FILTERS: dict[str, Any] = {
    "conjunction": "and",
    "items": [{"filter": "filter:tasks:total_annotations", "operator": "equal", "type": "Number", "value": 0}],
}
ORDERING = ["tasks:predictions_score"]


def review_tab_data(title: str = TITLE) -> dict[str, Any]:
    """The view's `data`: tasks without annotations, lowest prediction score first."""
    return {"title": title, "filters": FILTERS, "ordering": list(ORDERING)}


def find_view(client: Any, project_id: int, title: str = TITLE) -> int | None:
    """The id of the project's first Data Manager view with this title, or None."""
    for view in client.views.list(project=int(project_id)):
        raw = as_dict(view)
        raw_data = raw.get("data")
        data: dict[str, Any] = raw_data if isinstance(raw_data, dict) else {}
        if data.get("title") == title:
            return int(raw["id"])
    return None


def create_view(client: Any, project_id: int, title: str = TITLE) -> int:
    view = client.views.create(project=int(project_id), data=review_tab_data(title))
    return int(as_dict(view)["id"])


def ensure_review_tab(client: Any, project_id: str, store: JobsStore, title: str = TITLE) -> int | None:
    """The tab's view id, created at most once; None when another process is creating it now.
    Raises ApiError / httpx.HTTPError (the claim is given up, so a later /setup tries again)."""
    known = store.review_tab(project_id)
    if known is not None and known[0] is not None:
        return known[0]
    if not store.claim_review_tab(project_id):
        return None
    try:
        view_id = find_view(client, int(project_id), title)
        if view_id is None:
            view_id = create_view(client, int(project_id), title)
            log.info("project %s: Data Manager tab %r created (view %d)", project_id, title, view_id)
    except BaseException:
        store.record_review_tab(project_id, None)
        raise
    store.record_review_tab(project_id, view_id)
    return view_id


def follow_version(client: Any, project_id: int, version: str) -> bool:
    """Point the project's model_version at `version` (the predictions just pushed) when it is the backend's
    (empty, an ML backend's title, or an earlier lsllm- version), never over a version a user chose for
    other predictions; True when changed.

    Why: Label Studio 1.23 computes a task's `predictions_score` (the tab's ordering) over the predictions
    of the project's model_version only, and connecting an ML backend sets that to the backend's *title*,
    which no stored prediction carries: every score is then empty and the tab is in id order (measured)."""
    project = as_dict(client.projects.get(id=int(project_id)))
    current = str(project.get("model_version") or "")
    if current == version:
        return False
    titles = {str(as_dict(b).get("title") or "") for b in client.ml.list(project=int(project_id))}
    if current and current not in titles and not current.startswith("lsllm-"):
        return False
    client.projects.update(id=int(project_id), model_version=version)
    log.info("project %s: model_version %r -> %r (the review tab orders by its scores)", project_id, current,
             version)
    return True


class ReviewTabs:
    """Creates the review tab of a project in the background, once; `credentials(project_id) -> (url,
    token)` raises when the project has none (then nothing happens until a later /setup)."""

    def __init__(self, store: JobsStore, credentials: Callable[[str], tuple[str, str]], title: str = TITLE) -> None:
        self.store = store
        self.credentials = credentials
        self.title = title
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="review-tab")
        self._lock = threading.Lock()
        self._done: set[str] = set()  # projects whose tab this process saw recorded
        self._pending: set[str] = set()

    def request(self, project_id: str) -> bool:
        """Schedule the tab's creation unless this process knows it exists or is on it; True if scheduled."""
        with self._lock:
            if project_id in self._done or project_id in self._pending:
                return False
            self._pending.add(project_id)
        try:
            self._pool.submit(self.run, project_id)
        except RuntimeError:  # shutting down
            with self._lock:
                self._pending.discard(project_id)
            return False
        return True

    def run(self, project_id: str) -> int | None:
        try:
            try:
                url, token = self.credentials(project_id)
            except Exception as exc:  # noqa: BLE001 - no credentials: nothing to create the tab with
                log.info("project %s: no review tab yet (%s)", project_id, type(exc).__name__)
                return None
            view_id = ensure_review_tab(client_for(url, token, 15.0), project_id, self.store, self.title)
            if view_id is not None:
                with self._lock:
                    self._done.add(project_id)
            return view_id
        except (ApiError, httpx.HTTPError, ValueError, SQLAlchemyError) as exc:
            status = getattr(exc, "status_code", None)
            log.warning("project %s: could not create the review tab (%s%s)", project_id, type(exc).__name__,
                        f" HTTP {status}" if status else "")
            return None
        finally:
            with self._lock:
                self._pending.discard(project_id)

    def follow(self, project_id: str, version: str) -> None:
        """After predictions of `version` were pushed: make it the project's model_version (follow_version),
        in the background."""
        try:
            self._pool.submit(self._follow, project_id, version)
        except RuntimeError:  # shutting down
            pass

    def _follow(self, project_id: str, version: str) -> None:
        try:
            url, token = self.credentials(project_id)
            follow_version(client_for(url, token, 15.0), int(project_id), version)
        except Exception as exc:  # noqa: BLE001 - no credentials, or Label Studio unreachable: the tab stays as is
            log.warning("project %s: model_version not moved to %s (%s)", project_id, version, type(exc).__name__)

    def close(self) -> None:
        """Drop what is queued and wait for the call in flight (15 s timeout): a closed model must not
        talk to Label Studio afterwards (a test's fake Label Studio saw the token of a model closed before)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
