"""One owner closes everything: LLMBackendModel.close() stops the background work and closes what the
composition root made for it (the embeddings clients, the students' trainer, the store's engine)."""

from __future__ import annotations

from pathlib import Path

from conftest import make_settings
from scripted_provider import ScriptedProvider

from backend.service.app import build_model


def test_close_closes_the_embedder_the_engine_and_the_trainer(tmp_path: Path, provider: ScriptedProvider) -> None:
    settings = make_settings(tmp_path, provider.base_url, embeddings_model="scripted-embed")
    model = build_model(settings)
    selector = model.predictor.pipeline.context.__self__
    embedder = selector.vectors.embedder
    engine = model.examples.engine
    with engine.connect():
        pass  # a pooled connection exists
    assert engine.pool.checkedin() >= 1
    assert not embedder._client.is_closed()
    model.close()
    assert embedder._client.is_closed()
    assert engine.pool.checkedin() == 0  # disposed
    students = model.predictor.pipeline.student
    if students is not None and students.trainer._thread is not None:
        assert not students.trainer._thread.is_alive()


def test_close_runs_every_closer_even_when_one_fails(tmp_path: Path, provider: ScriptedProvider) -> None:
    model = build_model(make_settings(tmp_path, provider.base_url))
    ran = []

    def broken() -> None:
        ran.append("broken")
        raise RuntimeError("boom")

    model.closers = [broken, lambda: ran.append("next"), *model.closers]
    model.close()
    assert ran == ["broken", "next"]
