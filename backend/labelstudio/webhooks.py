"""Authenticated webhooks: give the webhook Label Studio created for this backend a secret header.

Connecting an ML backend makes Label Studio create a project webhook to `{backend url}/webhook` with no
headers, and /webhook is outside Basic auth (Label Studio sends webhooks without it). Once the backend
holds credentials for a project, `WebhookInstaller` finds that webhook (the project's ML backend URLs +
"/webhook") and adds the header `X-Lsllm-Webhook-Secret: <the project's secret>` to it with a PATCH:
never a second webhook (two deliver every event twice), and nothing when the header is already right.
From then on /webhook accepts that project's events only with the header (`check_secret`).

The install runs on a background thread: /setup must stay cheap, and Label Studio creates the webhook
only after the first /setup has answered. A missing webhook is looked for again a few times, and on
later /setup calls.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
from label_studio_sdk.core.api_error import ApiError

from backend.labelstudio.api import as_dict, client_for

log = logging.getLogger(__name__)

HEADER = "X-Lsllm-Webhook-Secret"
INSTALLED = "installed"


def check_secret(expected: str, given: str | None) -> bool:
    """Constant-time comparison of the header's value with the expected secret."""
    return hmac.compare_digest(expected.encode(), (given or "").encode())


def install_secret_header(url: str, token: str, project_id: int, secret: str, timeout: float = 10.0) -> int:
    """Add the secret header to the project's webhooks that point at one of its ML backends' /webhook.

    Returns how many such webhooks now carry the header (0: Label Studio has not created it yet).
    Raises ApiError / httpx.HTTPError when Label Studio cannot be used."""
    client = client_for(url, token, timeout)
    targets = {
        str(as_dict(b).get("url") or "").rstrip("/") + "/webhook" for b in client.ml.list(project=int(project_id))
    }
    found = 0
    for hook in client.webhooks.list(project=str(int(project_id))):
        raw = as_dict(hook)
        if str(raw.get("url") or "").rstrip("/") not in targets:
            continue
        raw_headers = raw.get("headers")
        headers: dict[str, object] = raw_headers if isinstance(raw_headers, dict) else {}
        if headers.get(HEADER) != secret:
            client.webhooks.update(id=int(raw["id"]), headers={**headers, HEADER: secret})
        found += 1
    return found


class WebhookInstaller:
    """Installs the header once per project, in the background, idempotently.

    `credentials(project_id) -> (url, token)` (raises when there are none), `secret(project_id)` the
    project's secret, `mark(project_id)` records success in the store. Attempts for a project are at
    least `min_interval` seconds apart; an absent webhook is looked for `retries` times, `delay` apart."""

    def __init__(
        self,
        credentials: Callable[[str], tuple[str, str]],
        secret: Callable[[str], str],
        mark: Callable[[str], None],
        install: Callable[[str, str, int, str], int] = install_secret_header,
        min_interval: float = 30.0,
        retries: int = 5,
        delay: float = 1.0,
    ) -> None:
        self.credentials = credentials
        self.secret = secret
        self.mark = mark
        self.install = install
        self.min_interval = min_interval
        self.retries = retries
        self.delay = delay
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="webhook-auth")
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._closed = threading.Event()

    def request(self, project_id: str) -> bool:
        """Schedule an install for the project unless one ran or is running recently; True if scheduled."""
        now = time.monotonic()
        with self._lock:
            if self._closed.is_set() or now - self._last.get(project_id, -1e9) < self.min_interval:
                return False
            self._last[project_id] = now
        try:
            self._pool.submit(self.run, project_id)
        except RuntimeError:  # shutting down
            return False
        return True

    def run(self, project_id: str) -> bool:
        """One install attempt (with retries while the webhook does not exist yet); True when installed."""
        try:
            url, token = self.credentials(project_id)
        except Exception as exc:  # no credentials for this project: nothing to install with
            log.info("project %s: webhook secret not installed (%s)", project_id, type(exc).__name__)
            return False
        for attempt in range(self.retries):
            if self._closed.is_set():  # a closed model never talks to Label Studio again
                return False
            try:
                found = self.install(url, token, int(project_id), self.secret(project_id))
            except (ApiError, httpx.HTTPError, ValueError) as exc:
                status = getattr(exc, "status_code", None)
                log.warning("project %s: could not install the webhook secret at %s (%s%s)", project_id, url,
                            type(exc).__name__, f" HTTP {status}" if status else "")
                return False
            if found:
                self.mark(project_id)
                log.info("project %s: Label Studio's webhook now carries the secret header; unsigned events "
                         "for this project are refused", project_id)
                return True
            if attempt + 1 < self.retries:
                self._closed.wait(self.delay * (attempt + 1))
        log.info("project %s: no Label Studio webhook to this backend found yet; looked for again on a later "
                 "/setup", project_id)
        return False

    def close(self) -> None:
        """Drop what is queued, wake an attempt waiting to retry, and wait for a call in flight: a closed
        model must not talk to Label Studio afterwards (a test's fake Label Studio had its webhook's
        header rewritten with the secret of a model closed seconds before, by that model's retry)."""
        with self._lock:
            self._closed.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
