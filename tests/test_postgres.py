"""The example store on PostgreSQL (DATABASE_URL), the choice for several replicas: the same flows as on
SQLite, plus two apps (two replicas) sharing one database."""

from __future__ import annotations

import pytest
import test_learning as flows

from backend.store.db import SCHEMA_VERSION, make_engine, migrate

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_app(make_app, pg_url):
    def factory(**overrides):
        return make_app(database_url=pg_url, **overrides)

    return factory


def test_migrate_on_postgres(pg_url) -> None:
    engine = make_engine(pg_url)
    assert migrate(engine) == SCHEMA_VERSION
    assert migrate(engine) == SCHEMA_VERSION
    engine.dispose()


@pytest.mark.parametrize(
    "flow",
    [
        flows.test_create_update_duplicate_out_of_order_delete,
        flows.test_delete_before_create_and_skip,
        flows.test_bulk_create_task_import_and_task_delete,
        flows.test_project_updated_sets_aside_vanished_labels,
        flows.test_bad_payloads_get_4xx_never_500,
    ],
    ids=lambda f: f.__name__.removeprefix("test_"),
)
def test_flows_on_postgres(pg_app, flow, caplog) -> None:
    if "caplog" in flow.__code__.co_varnames[: flow.__code__.co_argcount]:
        flow(pg_app, caplog)
    else:
        flow(pg_app)


def test_two_replicas_share_one_store(pg_app) -> None:
    first, second = pg_app(), pg_app()
    a, b = first.test_client(), second.test_client()
    created = flows.annotation_event("ANNOTATION_CREATED", flows.SENT, 1, 1, "good", [flows.choice("positive")], flows.T0)
    updated = flows.annotation_event("ANNOTATION_UPDATED", flows.SENT, 1, 1, "good", [flows.choice("neutral")], flows.T0 + 1)
    assert flows.post(a, updated).status_code == 200
    assert flows.post(b, created).status_code == 200  # older, through the other replica
    flows.drain(first)
    flows.drain(second)
    for client in (a, b):
        examples = flows.live(client)
        assert examples[1]["result"][0]["value"]["choices"] == ["neutral"]


def test_response_cache_shared_by_two_replicas(pg_url) -> None:
    from backend.llm.response_cache import ResponseCache

    one, two = make_engine(pg_url), make_engine(pg_url)
    migrate(one)
    first, second = ResponseCache(one), ResponseCache(two, sync_seconds=0)
    first.put("a" * 64, "x", None, 3, 2)
    first.put("a" * 64, "x", None, 3, 2)
    assert first.flush() == 1
    first.put("a" * 64, "changed", None, 1, 1)  # a key is written once: the first answer stays
    first.flush()
    assert second.get("a" * 64) == {"content": "x", "tokens": None, "prompt_tokens": 3, "completion_tokens": 2}
    assert second.get("b" * 64) is None
    one.dispose()
    two.dispose()


def test_the_claims_of_a_whole_project_run_on_postgres(pg_url) -> None:
    """Label Studio sends a whole project's "Retrieve predictions" as one request, so one run can hold
    70,000 claims; PostgreSQL takes at most 65,535 parameters in one statement, and one IN list of them
    could neither keep them fresh, mark, tag nor release them."""
    from sqlalchemy import func, select

    from backend.labelstudio.push import PushDelivery
    from backend.metrics import Metrics
    from backend.store.db import push_jobs

    engine = make_engine(pg_url)
    migrate(engine)
    ids = list(range(1, 70_001))
    with engine.begin() as conn:
        conn.execute(push_jobs.insert(), [{"project_id": "7", "task_id": i, "model_version": "v", "status": "queued",
                                           "updated_at": 0.0} for i in ids])
    push = PushDelivery(engine, predictor=None, metrics=Metrics(), clock=lambda: 5.0)  # type: ignore[arg-type]
    push.touch("7", "v", ids)
    with engine.connect() as conn:
        assert conn.execute(select(func.min(push_jobs.c.updated_at))).scalar_one() == 5.0
    push.mark_pushed("7", "v", ids[:66_000])
    assert push.status("7", "v") == {"pushed": 66_000, "queued": 4_000}
    push.tag("7", "v", ids, "refresh:1")  # only the queued ones
    assert push.status("7", "v") == {"pushed": 66_000, "refresh:1": 4_000}
    push.release("7", "v", ids)
    assert push.status("7", "v") == {}
    push.close()
