"""Issue 4 done-when, correctness part: concurrent senders into two gunicorn workers, one SIGKILLed
mid-run; the store must end exactly as the event history says. (Latency is measured by
benchmarks/webhook_load.py, not asserted here.)"""

from __future__ import annotations

import pytest
import webhook_load_harness as webhook_load


@pytest.mark.slow
def test_history_is_exact_after_sigkill_of_a_worker() -> None:
    report = webhook_load.run(n_events=600, senders=4, workers=2, kill=True, seed=3)
    assert report["killed_worker"]
    assert report["acknowledged"] == 600
    assert report["stored_live"] == report["expected_live"] > 0
    assert report["exact"], report


def test_expected_state_model_is_not_trivial() -> None:
    events, expected = webhook_load.history(600, seed=3)
    actions = {e["action"] for e in events}
    assert {"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED"} <= actions
    assert 0 < len(expected) < len({e.get("annotation", {}).get("id") for e in events})
