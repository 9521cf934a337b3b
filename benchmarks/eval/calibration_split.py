"""Where an `lsllm eval` point's miscalibration comes from: ECE, accuracy and mean score of the tasks
whose gold label is LABEL against all the others.

    .venv/bin/python benchmarks/eval/calibration_split.py --results OUT/clinc150 --point 15100 --label oos

A test sample can carry a label far more often than the reviews do (CLINC150's `oos` is 18% of its test
sample and 0.7% of its train set); a score calibrated on the reviews cannot know that, and this shows
how much of the ECE those tasks make. Reads the point's predictions-N.json and the run's test file;
the gold is read here, after scoring, as in the eval.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from backend.learning.calibration import expected_calibration_error  # noqa: E402


def split(predictions: list[dict], gold: dict[str, str], label: str) -> dict[str, dict[str, float]]:
    """{"label": {...}, "others": {...}, "all": {...}}: tasks, accuracy, mean score, ECE of each part
    (single-choice predictions; a task without a prediction or score is left out)."""
    rows = []
    for task in predictions:
        prediction = (task.get("predictions") or [None])[0]
        if not prediction or prediction.get("score") is None or not prediction.get("result"):
            continue
        answer = prediction["result"][0]["value"]["choices"][0]
        truth = gold[task["data"]["text"]]
        rows.append((float(prediction["score"]), answer == truth, truth == label))
    score = np.array([r[0] for r in rows])
    right = np.array([r[1] for r in rows], dtype=bool)
    mine = np.array([r[2] for r in rows], dtype=bool)
    out = {}
    for name, mask in (("label", mine), ("others", ~mine), ("all", np.ones_like(mine))):
        out[name] = {"tasks": int(mask.sum()),
                     "accuracy": round(float(right[mask].mean()), 3) if mask.any() else None,
                     "mean_score": round(float(score[mask].mean()), 3) if mask.any() else None,
                     "ece": round(expected_calibration_error(score[mask], right[mask]), 3) if mask.any() else None}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, required=True, help="an `lsllm eval --out` folder")
    p.add_argument("--point", type=int, required=True, help="examples fed (a point of that run)")
    p.add_argument("--label", required=True, help="the gold label to set apart")
    args = p.parse_args()
    results = json.loads((args.results / "results.json").read_text())
    test = json.loads(Path(results["test"]).read_text())
    gold = {t["data"]["text"]: t["annotations"][0]["result"][0]["value"]["choices"][0] for t in test}
    predictions = json.loads((args.results / f"predictions-{args.point}.json").read_text())
    print(json.dumps(split(predictions, gold, args.label), indent=1))


if __name__ == "__main__":
    main()
