"""The <Choices> student on the shared datasets, fed the way production is: reviews as ANNOTATION_CREATED
webhooks -> the durable event table -> the event worker -> the example store -> the background trainer
(which claims, trains and stores the student), then the stored student is loaded as any worker would.

For each dataset and number of reviewed examples it prints: the student's accuracy on the test sample,
the AUROC and ECE of its calibrated score (P(its label is right)), the share of tasks the cascade would
answer without an LLM call and the accuracy there, and the training time (background thread, measured
by the trainer; the machine's load average is printed with it, since 2 shared cores under other work
are several times slower than an idle machine).

    .venv/bin/python benchmarks/student.py                       # all four datasets, all reviews
    .venv/bin/python benchmarks/student.py --sets banking77 --points 1000,all
    .venv/bin/python benchmarks/student.py --direct              # same student, trained in-process from the
                                                                 # files (no webhooks/store): minutes faster
    .venv/bin/python benchmarks/student.py --direct --features vectors   # a STUDENT_FEATURES value

No LLM is called (STUDENT_MODE=cascade, the provider URL points nowhere): this measures the student
alone. `lsllm eval` measures the whole backend (student and LLM together).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend.learning.calibration import auroc, expected_calibration_error  # noqa: E402
from backend.learning.students import student_controls, task_text  # noqa: E402
from backend.service.app import build_model  # noqa: E402
from backend.settings import Settings  # noqa: E402
from converters.task_spec import build_task_spec  # noqa: E402

DATASETS = Path(os.environ.get("LSLLM_DATASETS", Path(__file__).resolve().parent.parent.parent / "shared" / "datasets"))
SETS = {
    "banking77": ("intent_banking77_config.xml", "intent_banking77_train.json", "intent_banking77_test_sample500.json"),
    "clinc150": ("intent_clinc150_config.xml", "intent_clinc150_train.json", "intent_clinc150_test_sample500.json"),
    "sst2": ("sentiment_sst2_config.xml", "sentiment_sst2_train.json", "sentiment_sst2_test_sample500.json"),
    "tweeteval": ("sentiment_tweeteval_config.xml", "sentiment_tweeteval_val.json",
                  "sentiment_tweeteval_test_sample500.json"),
}


def payload(pid: int, config: str, task_id: int, data: dict[str, Any], result: list[dict[str, Any]]) -> dict[str, Any]:
    iso = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(1_700_000_000 + task_id))
    return {
        "action": "ANNOTATION_CREATED",
        "project": {"id": pid, "label_config": config},
        "task": {"id": task_id, "data": data, "project": pid},
        "annotation": {"id": task_id, "task": task_id, "project": pid, "result": result, "was_cancelled": False,
                       "completed_by": 1, "created_at": iso, "updated_at": iso},
    }


def gold(task: dict[str, Any], control: str) -> str | None:
    for annotation in task.get("annotations") or []:
        for region in annotation.get("result") or []:
            if region.get("from_name") == control:
                choices = (region.get("value") or {}).get("choices") or []
                return str(choices[0]) if choices else None
    return None


def measure(name: str, upto: int, student: Any, texts: list[str], truth: np.ndarray, embed: Any,
            extra: dict[str, Any]) -> dict[str, Any]:
    """The student's figures on the test texts, as one JSON-able row."""
    probs = student.proba(student.inputs(texts, embed(texts)))
    labels = np.array(student.classes)[probs.argmax(axis=1)]
    p_top = probs.max(axis=1)
    right = labels == truth
    score = student.top(p_top)
    cascade = p_top >= student.threshold
    area = auroc(score, right)
    row = {
        "set": name, "reviewed": upto, "accuracy": round(float(right.mean()), 3),
        "auroc": None if area is None else round(area, 3),
        "ece": round(expected_calibration_error(score, right), 3),
        "ece_raw_prob": round(expected_calibration_error(p_top, right), 3),
        "cascade_share": round(float(cascade.mean()), 3),
        "cascade_accuracy": round(float(right[cascade].mean()), 3) if cascade.any() else None,
        "threshold": round(student.threshold, 3), "trainer_seconds": student.stats.get("seconds"),
        "cv": student.stats.get("cv"), "reads": student.stats.get("reads"),
        **extra, "load_average": round(os.getloadavg()[0], 1),
    }
    print(json.dumps(row), flush=True)
    return row


def run_direct(name: str, points: list[int | None], seed: int,
               features: str = "words+vectors") -> list[dict[str, Any]]:
    """The same student, trained in-process from the dataset files (no webhooks, no store)."""
    from backend.learning.student import train_student
    from backend.learning.students import FEATURE_READINGS
    from backend.llm.local_embeddings import LocalEmbedder

    config_file, train_file, test_file = SETS[name]
    plan_spec = build_task_spec((DATASETS / config_file).read_text())
    control = student_controls(plan_spec)[0]
    train = json.loads((DATASETS / train_file).read_text())
    test = json.loads((DATASETS / test_file).read_text())
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    embedder = LocalEmbedder()
    texts = [task_text(plan_spec, t["data"]) or "" for t in test]
    truth = np.array([gold(t, control.name) for t in test])
    out = []
    for n_point in points:
        upto = len(order) if n_point is None else min(n_point, len(order))
        rows = [train[i] for i in order[:upto]]
        began = time.perf_counter()
        row_texts = [task_text(plan_spec, r["data"]) or "" for r in rows]
        student = train_student(embedder.embed(row_texts), [gold(r, control.name) or "" for r in rows],
                                texts=row_texts, reads=FEATURE_READINGS[features])
        seconds = round(time.perf_counter() - began, 1)
        out.append(measure(name, upto, student, texts, truth, embedder.embed, {"embed_and_train_seconds": seconds}))
    return out


def run_set(name: str, points: list[int | None], seed: int) -> list[dict[str, Any]]:
    config_file, train_file, test_file = SETS[name]
    config = (DATASETS / config_file).read_text()
    train = json.loads((DATASETS / train_file).read_text())
    test = json.loads((DATASETS / test_file).read_text())
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.model_validate({
            "llm_base_url": "http://127.0.0.1:9/v1", "data_dir": Path(tmp), "examples_version_policy": "every",
            "student_debounce_seconds": 0.0,
        })
        model = build_model(settings)
        students = model.predictor.pipeline.student
        plan = model.predictor.plan(config)
        control = student_controls(plan.spec)[0]
        fed = 0
        try:
            for n_point in points:
                upto = len(order) if n_point is None else min(n_point, len(order))
                began = time.perf_counter()
                for i in order[fed:upto]:
                    model.fit("ANNOTATION_CREATED", payload(1, config, i + 1, train[i]["data"],
                                                            train[i]["annotations"][0]["result"]))
                fed = upto
                model.worker.drain(timeout=3600)
                feed_seconds = time.perf_counter() - began
                version = model.projects.examples_version("1")
                students._known.clear()
                began = time.perf_counter()
                students.student("1", plan.spec, control)  # asks the trainer (a background thread)
                students.trainer.wait_idle(3600)
                train_seconds = time.perf_counter() - began
                students._known.clear()
                student = students.student("1", plan.spec, control)  # loaded from the store, as a worker does
                assert student is not None and student.version == version, "no student trained"
                texts = [task_text(plan.spec, t["data"]) or "" for t in test]
                truth = np.array([gold(t, control.name) for t in test])
                row = measure(name, upto, student, texts, truth, students.embedder.embed,
                              {"train_seconds": round(train_seconds, 1), "feed_seconds": round(feed_seconds, 1)})
                out.append(row)
        finally:
            model.close()
            students.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default=",".join(SETS), help="comma-separated: " + ", ".join(SETS))
    parser.add_argument("--points", default="all", help="reviewed examples, e.g. 1000,all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--direct", action="store_true", help="train in-process from the files (no webhooks)")
    parser.add_argument("--features", default="words+vectors", choices=["words+vectors", "chars+vectors", "vectors"],
                        help="with --direct: what the student reads (STUDENT_FEATURES; the service's setting "
                        "decides otherwise)")
    args = parser.parse_args()
    points: list[int | None] = [None if p == "all" else int(p) for p in args.points.split(",")]
    for name in args.sets.split(","):
        if args.direct:
            run_direct(name.strip(), points, args.seed, features=args.features)
        else:
            run_set(name.strip(), points, args.seed)


if __name__ == "__main__":
    main()
