"""Which Label Studio, with which token, for a project: the one place pushes, resyncs, webhook installs,
review tabs and prediction reads get a token.

With LABEL_STUDIO_URL set, requests go only there (with LABEL_STUDIO_API_KEY, else the token /setup sent),
whatever hostname a /setup named; without it, the hostname and access token Label Studio sent to /setup
together (the store forgets a token when a /setup names another host without one).
"""

from __future__ import annotations

from backend.settings import Settings
from backend.store.project_store import ProjectStore


class CredentialsError(RuntimeError):
    """No usable Label Studio credentials for the project."""


def credentials(settings: Settings, projects: ProjectStore, project_id: str) -> tuple[str, str]:
    """(url, token) for the project's Label Studio: the only place pushes, resyncs and webhook installs
    send a token."""
    key = settings.label_studio_api_key.get_secret_value() if settings.label_studio_api_key else ""
    if settings.label_studio_url:
        if key:
            return settings.label_studio_url, key
        info = projects.get(project_id)
        if info and info.access_token:  # the configured host, never the one /setup named
            return settings.label_studio_url, info.access_token
        raise CredentialsError(
            f"no Label Studio token for project {project_id}: set LABEL_STUDIO_API_KEY, or let Label Studio "
            "call /setup first"
        )
    info = projects.get(project_id)
    if info and info.hostname and info.access_token:
        return info.hostname, info.access_token
    raise CredentialsError(
        f"no Label Studio credentials for project {project_id}: set LABEL_STUDIO_URL and "
        "LABEL_STUDIO_API_KEY, or let Label Studio call /setup first"
    )
