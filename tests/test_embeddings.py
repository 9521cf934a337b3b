"""Embeddings similarity (issue 4, EMBEDDINGS_MODEL): the real `openai` SDK against the scripted
provider's POST /v1/embeddings. Examples are chosen by embeddings with the same coverage/MMR/order code
as the lexical path, embedded once and kept in the store (a restart does not pay again), an outage
falls back to lexical with one warning line, label shortlists use embeddings too, and a schema-4 store
migrates on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from conftest import DATASETS, config, json_answer
from scripted_provider import hashed_bag_of_words
from sqlalchemy import inspect, select, text
from test_shortlist import listed
from webhook_payloads import annotation_event, choice

from backend.llm.embeddings import Embedder, EmbeddingsConfig, EmbeddingsUnavailable, embeddings_config
from backend.settings import Settings
from backend.store.db import SCHEMA_VERSION, examples, make_engine, meta, metadata, migrate, schema_version
from backend.store.embedding_store import EmbeddingStore, text_hash
from prompts import unmark_data  # the texts inside the prompts' data markers

SENT = config("sentiment")
T0 = 1_790_000_000.0
TOPICS = {  # a toy "semantic" model: words of one topic share a direction
    "car": "vehicle", "automobile": "vehicle", "engine": "vehicle",
    "rain": "weather", "sunny": "weather", "forecast": "weather",
}


def topical(text_: str) -> list[float]:
    words = [TOPICS.get(w, w) for w in text_.casefold().split()]
    return hashed_bag_of_words(" ".join(w for w in words if w in TOPICS.values()) or text_)


def post_examples(app, cfg: str, rows: list[tuple[int, str, str]], from_name: str = "sentiment") -> None:
    client = app.test_client()
    for aid, example, label in rows:
        event = annotation_event("ANNOTATION_CREATED", cfg, aid, aid, example, [choice(label, from_name)], T0)
        assert client.post("/webhook", json=event).status_code == 200
    app.extensions["lsllm_model"].worker.drain()


def shots(body: dict) -> list[str]:
    return [unmark_data(m["content"]) for m in body["messages"][1:-1:2]]


def predict(app, cfg: str, tid: int, text_: str) -> dict:
    response = app.test_client().post(
        "/predict", json={"tasks": [{"id": tid, "data": {"text": text_}}], "project": "7.1", "label_config": cfg}
    )
    assert response.status_code == 200
    return response.get_json()["results"][0]


def embedded_texts(provider) -> list[str]:
    return [t for body in provider.embedding_requests for t in body["input"]]


def test_scripted_endpoint_through_the_sdk(provider) -> None:
    embedder = Embedder(EmbeddingsConfig("emb-1", provider.base_url, "sk-emb", 5.0, 0))
    rows = embedder.embed(["the red car", "the red car", "sunny weather", ""])
    assert rows.shape == (4, 256) and rows.dtype == np.float32
    assert np.allclose(np.linalg.norm(rows[:3], axis=1), 1.0)
    assert np.allclose(rows[0], rows[1]) and float(rows[0] @ rows[2]) < 0.5
    assert np.allclose(rows[0], np.asarray(hashed_bag_of_words("the red car"), dtype=np.float32), atol=1e-6)
    body = provider.embedding_requests[-1]
    assert body["model"] == "emb-1" and body["encoding_format"] == "base64" and body["input"][3] == " "
    assert provider.requests == []  # chat requests are logged apart


def test_embeddings_choose_the_examples(make_app, provider) -> None:
    reviewed = [(2001, "my car engine died on the highway", "negative"),
                (2002, "will it rain tomorrow, I will not go out", "neutral"),
                (2003, "what a lovely day at the beach", "positive")]
    task = "my automobile will not start"
    provider.embed = topical
    provider.responder = lambda body: json_answer({"sentiment": "negative"})
    lexical = make_app(few_shot_k=1, selection_refresh_seconds=0, selection_similarity="lexical")
    post_examples(lexical, SENT, reviewed)
    predict(lexical, SENT, 1, task)
    assert shots(provider.requests[-1]) == [reviewed[1][1]]  # word overlap: "will", "not"
    assert provider.embedding_requests == []
    semantic = make_app(few_shot_k=1, selection_refresh_seconds=0, embeddings_model="emb-1")
    predict(semantic, SENT, 2, task)
    assert shots(provider.requests[-1]) == [reviewed[0][1]]  # same topic: vehicles
    assert provider.embedding_requests[0]["model"] == "emb-1"


def test_example_embeddings_are_computed_once_and_stored(make_app, provider) -> None:
    reviewed = [(2101, "the battery died after an hour", "negative"),
                (2102, "great screen and fast delivery", "positive"),
                (2103, "it arrived on Tuesday", "neutral")]
    provider.responder = lambda body: json_answer({"sentiment": "neutral"})
    app = make_app(selection_refresh_seconds=0, embeddings_model="emb-1")
    post_examples(app, SENT, reviewed)
    predict(app, SENT, 1, "battery died")
    assert sorted(embedded_texts(provider)) == sorted(["battery died"] + [r[1] for r in reviewed])
    predict(app, SENT, 2, "screen is great")
    assert embedded_texts(provider)[-1] == "screen is great" and len(embedded_texts(provider)) == 5
    assert set(shots(provider.requests[-1])) == {r[1] for r in reviewed}
    store = EmbeddingStore(make_engine(app.extensions["lsllm_model"].settings.resolved_database_url()))
    assert store.count("7", "emb-1") == 3
    stored = store.load("7", "emb-1", [2101])[2101]
    assert stored[0] == text_hash(reviewed[0][1])
    assert np.allclose(stored[1], np.asarray(hashed_bag_of_words(reviewed[0][1])), atol=1e-6)

    restarted = make_app(selection_refresh_seconds=0, embeddings_model="emb-1")  # same DATA_DIR
    before = len(embedded_texts(provider))
    predict(restarted, SENT, 3, "delivery was fast")
    assert embedded_texts(provider)[before:] == ["delivery was fast"]  # the examples came from the store
    other_model = make_app(selection_refresh_seconds=0, embeddings_model="emb-2")
    before = len(embedded_texts(provider))
    predict(other_model, SENT, 4, "delivery was fast")
    assert len(embedded_texts(provider)[before:]) == 4  # keyed by model: another model embeds anew


def test_a_model_answering_another_length_is_embedded_anew(make_app, provider) -> None:
    """A redeployed model under the same name (other vector length): the running worker and a restarted
    one both re-embed instead of failing, and the store ends with the new vectors."""
    reviewed = [(2151, "the battery died after an hour", "negative"), (2152, "great screen", "positive")]
    provider.responder = lambda body: json_answer({"sentiment": "neutral"})
    app = make_app(few_shot_k=1, selection_refresh_seconds=0, embeddings_model="emb-1")
    post_examples(app, SENT, reviewed)
    predict(app, SENT, 1, "battery died")
    provider.embed = lambda text_: hashed_bag_of_words(text_, dims=64)
    before = len(embedded_texts(provider))
    predict(app, SENT, 2, "screen is great")
    assert shots(provider.requests[-1]) == [reviewed[1][1]]
    assert sorted(embedded_texts(provider)[before:]) == sorted(["screen is great"] + [r[1] for r in reviewed])
    restarted = make_app(few_shot_k=1, selection_refresh_seconds=0, embeddings_model="emb-1")
    before = len(embedded_texts(provider))
    predict(restarted, SENT, 3, "the battery")
    assert shots(provider.requests[-1]) == [reviewed[0][1]]
    assert embedded_texts(provider)[before:] == ["the battery"]  # the store already holds the new vectors
    store = EmbeddingStore(make_engine(app.extensions["lsllm_model"].settings.resolved_database_url()))
    assert {v.shape for _, v in store.load("7", "emb-1", [2151, 2152]).values()} == {(64,)}


def test_outage_falls_back_to_lexical_with_one_warning(make_app, provider, caplog) -> None:
    reviewed = [(2201, "the battery life of this phone is terrible", "negative"),
                (2202, "what a wonderful sunny day at the beach", "positive")]
    provider.responder = lambda body: json_answer({"sentiment": "negative"})
    provider.embeddings_status = 503
    app = make_app(few_shot_k=1, selection_refresh_seconds=0, embeddings_model="emb-1",
                   embeddings_api_key="sk-embeddings-secret-456", llm_max_retries=0)
    post_examples(app, SENT, reviewed)
    caplog.set_level(logging.INFO)
    items = [predict(app, SENT, i, "my phone battery is terrible") for i in range(3)]
    assert all(item["result"][0]["value"]["choices"] == ["negative"] for item in items)
    assert shots(provider.requests[-1]) == [reviewed[0][1]]  # lexical selection still found it
    warnings = [r for r in caplog.records if r.name == "backend.llm.embeddings" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "HTTP 503" in warnings[0].getMessage()
    assert len(provider.embedding_requests) == 1  # later tasks skip the endpoint while it cools down
    assert "sk-embeddings-secret-456" not in caplog.text and "sk-test-secret-key-123" not in caplog.text


def test_outage_then_recovery(provider, caplog) -> None:
    now = [0.0]
    embedder = Embedder(EmbeddingsConfig("emb-1", provider.base_url, "sk-emb", 5.0, 0), cooldown=30.0,
                        clock=lambda: now[0])
    provider.embeddings_status = 500
    caplog.set_level(logging.INFO, logger="backend.llm.embeddings")
    for _ in range(2):
        with pytest.raises(EmbeddingsUnavailable):
            embedder.embed(["a"])
    assert len(provider.embedding_requests) == 1
    now[0] = 31.0
    with pytest.raises(EmbeddingsUnavailable):  # still down after the cooldown: tried again, not logged again
        embedder.embed(["a"])
    provider.embeddings_status = 200
    now[0] = 62.0
    assert embedder.embed(["a"]).shape == (1, 256)
    levels = [r.levelname for r in caplog.records]
    assert levels == ["WARNING", "INFO"] and len(provider.embedding_requests) == 3


def test_embeddings_keep_label_coverage(make_app, provider) -> None:
    provider.responder = lambda body: json_answer({"sentiment": "negative"})
    app = make_app(few_shot_k=4, selection_refresh_seconds=0, embeddings_model="emb-1")
    rows = [(2300 + i, f"phone review number {i}", "negative") for i in range(8)] + [(2400, "great phone", "positive")]
    post_examples(app, SENT, rows)
    predict(app, SENT, 1, "phone review")
    answers = [json.loads(m["content"])["sentiment"] for m in provider.requests[-1]["messages"] if m["role"] == "assistant"]
    assert len(answers) == 4 and "positive" in answers and answers.count("negative") <= 3
    assert len(embedded_texts(provider)) == 10  # nine examples and the task: the embeddings path ran


def test_label_shortlist_uses_embeddings(make_app, provider) -> None:
    path = DATASETS / "intent_banking77_config.xml"
    if not path.exists():
        pytest.skip(f"shared dataset not found at {path}")
    banking = path.read_text()
    task = "the shop gave my money back days ago"
    refund_words = {"refund", "money", "back"}  # the toy model knows a refund is money coming back

    def embed(text_: str) -> list[float]:
        words = set(text_.casefold().replace("_", " ").replace(":", " ").split())
        return hashed_bag_of_words("refund" if words & refund_words else text_)

    provider.embed = embed
    provider.responder = lambda body: json_answer({"intent": listed(body)[0]})
    predict(make_app(selection_similarity="lexical"), banking, 1, task)
    lexical = listed(provider.requests[-1])
    predict(make_app(embeddings_model="emb-1"), banking, 2, task)
    semantic = listed(provider.requests[-1])
    refund_labels = {"Refund_not_showing_up", "request_refund"}
    assert not refund_labels & set(lexical) and refund_labels <= set(semantic) and len(semantic) == 20


def test_settings_default_to_the_llm_endpoint_and_hide_the_key(monkeypatch) -> None:
    monkeypatch.setenv("LLM_BASE_URL", "http://llm.example/v1")
    monkeypatch.setenv("LLM_API_KEY", "sk-llm-secret")
    monkeypatch.delenv("EMBEDDINGS_MODEL", raising=False)
    assert embeddings_config(Settings()) is None  # unset: lexical selection
    monkeypatch.setenv("EMBEDDINGS_MODEL", "text-embedding-3-small")
    settings = Settings()
    cfg = embeddings_config(settings)
    assert (cfg.base_url, cfg.api_key) == ("http://llm.example/v1", "sk-llm-secret")
    monkeypatch.setenv("EMBEDDINGS_BASE_URL", "http://emb.example/v1")
    monkeypatch.setenv("EMBEDDINGS_API_KEY", "sk-emb-secret")
    settings = Settings()
    cfg = embeddings_config(settings)
    assert (cfg.model, cfg.base_url, cfg.api_key) == ("text-embedding-3-small", "http://emb.example/v1", "sk-emb-secret")
    assert "sk-emb-secret" not in repr(settings) and "sk-emb-secret" not in repr(cfg)
    assert (settings.label_shortlist_threshold, settings.label_shortlist_size) == (40, 20)


def _schema_4_store(url: str) -> None:
    """A store as the previous release (schema 4) left it: every table but example_embeddings."""
    engine = make_engine(url)
    metadata.create_all(engine, tables=[t for t in metadata.sorted_tables if t.name != "example_embeddings"])
    with engine.begin() as conn:
        conn.execute(meta.insert().values(key="schema_version", value="4"))
        conn.execute(examples.insert().values(
            project_id="7", annotation_id=1, task_id=1, data='{"text": "kept"}', result="[]", labels="[]",
            updated_at=1.0, status="live", seq=1, stored_at=1.0))
    engine.dispose()


def _check_migrated(url: str) -> None:
    engine = make_engine(url)
    assert "example_embeddings" not in inspect(engine).get_table_names()
    assert migrate(engine) == SCHEMA_VERSION
    assert migrate(engine) == SCHEMA_VERSION  # idempotent
    with engine.connect() as conn:
        assert schema_version(conn) == SCHEMA_VERSION
        assert conn.execute(select(examples.c.data)).scalar_one() == '{"text": "kept"}'
    store = EmbeddingStore(engine)
    store.save("7", "emb-1", [(1, "h1", np.array([0.6, 0.8], dtype=np.float32))])
    store.save("7", "emb-1", [(1, "h2", np.array([1.0, 0.0], dtype=np.float32))])  # changed text replaces
    digest, vector = store.load("7", "emb-1", [1])[1]
    assert digest == "h2" and vector.tolist() == [1.0, 0.0] and store.count("7", "emb-1") == 1
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM example_embeddings")).scalar_one() == 1
    engine.dispose()


def test_schema_4_store_migrates(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'v4.sqlite3'}"
    _schema_4_store(url)
    _check_migrated(url)


@pytest.mark.postgres
def test_schema_4_store_migrates_on_postgres(pg_url) -> None:
    _schema_4_store(pg_url)
    _check_migrated(pg_url)
