"""An independent run of one `lsllm eval` point, through the service as Label Studio drives it, scored by
code of its own; prints both figures and whether they agree within sampling noise (issue 11).

    .venv/bin/python benchmarks/eval/independent.py --results /work/eval-grid/sst2 --point 50

What differs from the eval: the backend runs as `lsllm serve` (gunicorn, HTTP); the N reviewed
annotations arrive as HTTP POSTs to /webhook and are applied by the service's own event worker; the
test tasks are predicted by POST /predict (20 per request, as Label Studio batches them); the figures
come from this file's own scoring (accuracy; strict span precision/recall/F1), not converters.scoring.
What is shared, so that the two runs measure the same thing: the datasets, the seeded train order
(`train_order`) and the eval's test sample (read from its predictions-N.json), and the response cache:
the service starts on a copy of the eval's DATA_DIR, so a prompt the eval already sent is answered as
the model answered it then, and any prompt that differs costs a real call.

The service applies reviews and trains the student in the background; this script waits for the
event table to drain (`lsllm_events` in /metrics) and for the student's training line in the log.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from labelstudio_harness import free_port, stop, wait_http  # noqa: E402

from backend.runs.eval import TEST_ID_BASE, train_order  # noqa: E402  (the data's sampling, not its path)

PROJECT = 4242
BATCH = 20


def copy_store(source: Path, target: Path) -> None:
    """A consistent copy of the eval's SQLite store (response cache included), WAL and all."""
    target.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(source / "lsllm.sqlite3") as src, sqlite3.connect(target / "lsllm.sqlite3") as dst:
        src.backup(dst)
    key = source / "secret.key"  # tokens at rest in the copy stay readable, and private
    if key.exists():
        (target / key.name).touch(mode=0o600)
        (target / key.name).write_bytes(key.read_bytes())


def first_annotation(task: dict[str, Any]) -> list[dict[str, Any]] | None:
    for annotation in task.get("annotations") or []:
        if not annotation.get("was_cancelled"):
            return list(annotation.get("result") or [])
    return None


def webhook_body(config: str, task_id: int, data: dict[str, Any], result: list[dict[str, Any]],
                 position: int) -> dict[str, Any]:
    """ANNOTATION_CREATED as Label Studio 1.23 sends it (../shared/docs/label-studio-protocol.md)."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(1_700_000_000 + position))
    return {
        "action": "ANNOTATION_CREATED",
        "project": {"id": PROJECT, "label_config": config},
        "task": {"id": task_id, "data": data, "project": PROJECT},
        "annotation": {"id": task_id, "result": result, "was_cancelled": False, "ground_truth": False,
                       "lead_time": 1.0, "prediction": {}, "parent_prediction": None, "task": task_id,
                       "project": PROJECT, "completed_by": 1, "created_at": stamp, "updated_at": stamp},
    }


def metric(text: str, name: str, labels: str) -> float:
    match = re.search(rf"^{name}\{{{labels}\}} ([0-9.e+-]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def choice_of(result: list[dict[str, Any]]) -> str | None:
    for region in result:
        choices = (region.get("value") or {}).get("choices")
        if region.get("type") == "choices" and choices:
            return str(choices[0])
    return None


def spans_of(result: list[dict[str, Any]]) -> list[tuple[int, int, str]]:
    out = []
    for region in result:
        value = region.get("value") or {}
        if region.get("type") == "labels" and value.get("labels"):
            out.append((int(value["start"]), int(value["end"]), str(value["labels"][0])))
    return out


def score(kind: str, pairs: list[tuple[list[dict[str, Any]], list[dict[str, Any]]]]) -> dict[str, float]:
    """(gold, predicted) results -> accuracy, or strict span P/R/F1 (a span counts once per gold span)."""
    if kind == "classification":
        right = sum(choice_of(p) is not None and choice_of(p) == choice_of(g) for g, p in pairs)
        return {"accuracy": right / len(pairs)}
    hit = predicted = wanted = 0
    for gold, pred in pairs:
        g, p = spans_of(gold), spans_of(pred)
        predicted += len(p)
        wanted += len(g)
        left = list(g)
        for span in p:
            if span in left:
                left.remove(span)
                hit += 1
    precision = hit / predicted if predicted else 0.0
    recall = hit / wanted if wanted else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, required=True, help="an `lsllm eval --out` folder")
    p.add_argument("--point", type=int, required=True, help="examples fed (a point of that run)")
    p.add_argument("--embedded", action="store_true", help="the run used the embedded model (for a results.json\n"
                   "written before it said so: its provider is the URL of that run's server)")
    p.add_argument("--student-wait", type=float, default=900.0, help="seconds to wait for the student")
    args = p.parse_args()
    results = json.loads((args.results / "results.json").read_text())
    row = next((r for r in results["results"] if r["examples"] == args.point), None)
    if row is None:
        p.error(f"{args.results} has no point {args.point}")
    config = Path(results["config"]).read_text(encoding="utf-8")
    train = json.loads(Path(results["train"]).read_text(encoding="utf-8"))
    test = json.loads(Path(results["test"]).read_text(encoding="utf-8"))
    sample = json.loads((args.results / f"predictions-{args.point}.json").read_text())
    order = train_order(train, int(results["seed"]))[:args.point]

    data = Path(tempfile.mkdtemp(prefix="lsllm-independent-"))
    copy_store(Path(results["data_dir"]), data)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "BASIC_AUTH", "DATABASE_URL"))}
    env.update({"DATA_DIR": str(data), "LOG_LEVEL": "INFO", "SELECTION_REFRESH_SECONDS": "0",
                "STUDENT_DEBOUNCE_SECONDS": "0",
                "PREDICT_DEADLINE": "3600", "STUDENT_MODE": results.get("student_mode", "cascade")})
    if results["provider"] != "embedded" and not args.embedded:  # the same provider and model
        # (its key, if any, from LLM_API_KEY)
        env.update({"LLM_BASE_URL": results["provider"], "LLM_MODEL": results["model"]})
        if os.environ.get("LLM_API_KEY"):
            env["LLM_API_KEY"] = os.environ["LLM_API_KEY"]
    port = free_port()
    log_path = data / "backend.log"
    proc = subprocess.Popen([str(Path(sys.executable).parent / "lsllm"), "serve", "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"], env=env, cwd=ROOT,
                            stdout=log_path.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    began = time.time()
    try:
        wait_http(f"{url}/health", timeout=600, proc=proc)
        with httpx.Client(base_url=url, timeout=3600) as http:
            http.post("/setup", json={"project": str(PROJECT), "schema": config}).raise_for_status()
            for position, i in enumerate(order):
                body = webhook_body(config, i + 1, train[i]["data"], first_annotation(train[i]) or [], position)
                http.post("/webhook", json=body).raise_for_status()
            deadline = time.time() + 1800
            while True:  # the service's worker applies them in the background
                text = http.get("/metrics").text
                if metric(text, "lsllm_events", 'outcome="pending"') == 0:
                    break
                if time.time() > deadline:
                    raise TimeoutError("webhook events still pending after 30 min")
                time.sleep(2)
            applied = metric(text, "lsllm_examples", f'project="{PROJECT}",status="live"')
            first = sample[0]
            http.post("/predict", json={"project": f"{PROJECT}.1700000000", "label_config": config,
                                        "tasks": [{"id": first["id"], "data": first["data"]}]}).raise_for_status()
            if results["kind"] == "classification":  # the first predict asks for the student of these
                deadline = time.time() + args.student_wait  # examples: wait for its training (or its refusal)
                while not re.search(rf"project {PROJECT}: student .* v\d+: ", log_path.read_text()):
                    if time.time() > deadline:
                        raise TimeoutError("no student trained")
                    time.sleep(2)
                time.sleep(3)  # the students' lookup cache (2 s) sees the new one
            predicted: dict[int, list[dict[str, Any]]] = {}
            for start in range(0, len(sample), BATCH):
                batch = [{"id": t["id"], "data": t["data"]} for t in sample[start:start + BATCH]]
                answer = http.post("/predict", json={"project": f"{PROJECT}.1700000000", "label_config": config,
                                                     "tasks": batch}).json()
                for task, item in zip(batch, answer["results"], strict=True):
                    predicted[task["id"]] = list(item.get("result") or []) if item else []
    finally:
        stop(proc)
    pairs = [(first_annotation(test[t["id"] - TEST_ID_BASE]) or [], predicted[t["id"]]) for t in sample]
    mine = score(results["kind"], pairs)
    theirs = ({"accuracy": row["accuracy"]} if results["kind"] == "classification"
              else {k: row[k] for k in ("precision", "recall", "f1")})
    key = "accuracy" if results["kind"] == "classification" else "f1"
    n = len(pairs)
    noise = math.sqrt(max(theirs[key] * (1 - theirs[key]), 1e-9) / n)  # one binomial standard error
    report = {"set": args.results.name, "point": args.point, "examples_live": applied, "tasks": n,
              "independent": {k: round(v, 4) for k, v in mine.items()}, "eval": theirs,
              "difference": round(mine[key] - theirs[key], 4), "standard_error": round(noise, 4),
              "within_2_se": abs(mine[key] - theirs[key]) <= 2 * noise, "seconds": round(time.time() - began, 1),
              "backend_log": str(log_path)}
    print(json.dumps(report, indent=1))
    return 0 if report["within_2_se"] else 1


if __name__ == "__main__":
    sys.exit(main())
