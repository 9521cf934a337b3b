"""`lsllm eval` end to end: build the model under the eval's DATA_DIR, run every point, write
results.json, results.md and the plots (matplotlib, Agg backend) into the output directory."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from backend.llm.pricing import PriceTable, format_cost
from backend.runs.eval import (
    TEST_ID_BASE,
    EvalOptions,
    Evaluation,
    ServedModel,
    load_tasks,
    score_point,
    selector_of,
    task_kind,
    test_sample,
    train_order,
)
from backend.settings import Settings


def eval_settings(settings: Settings, data_dir: Path) -> Settings:
    """The settings the eval runs with: its own DATA_DIR (store and response cache, reused by a
    re-run), and the selection index refreshed on every task, so a prediction made right after the
    worker applied the examples sees them (production sees them within SELECTION_REFRESH_SECONDS), and
    a student trained without the debounce that groups a burst of reviews (the eval waits for it)."""
    update: dict[str, Any] = {"data_dir": data_dir, "selection_refresh_seconds": 0.0}
    if "student_debounce_seconds" in Settings.model_fields:  # the eval waits for the student itself
        update["student_debounce_seconds"] = 0.0
    return settings.model_copy(update=update)


def run_eval(settings: Settings, build_model: Callable[[Settings], ServedModel], config_path: Path,
             train_path: Path, test_path: Path, options: EvalOptions, out: Path, command: str = "",
             progress: bool = True) -> dict[str, Any]:
    """Run the eval with a provider already chosen in `settings` on the model `build_model` wires (the
    service's composition root); returns what results.json holds."""
    from tqdm import tqdm

    config = Path(config_path).read_text(encoding="utf-8")
    train, test = load_tasks(train_path), load_tasks(test_path)
    order = train_order(train, options.seed)
    ids = test_sample(test, options.n_test, options.seed)
    # the predictor sees the test tasks' data and nothing else
    tasks = [{"id": TEST_ID_BASE + i, "data": dict(test[i]["data"])} for i in ids]
    points = [len(order) if p is None else min(p, len(order)) for p in options.points]
    points = sorted(set(points))
    prices = PriceTable.from_setting(settings.llm_prices)
    out.mkdir(parents=True, exist_ok=True)
    model = build_model(settings)
    started = time.time()
    project_id = int(started * 1000) % 2_000_000_000  # a new, empty project per run
    rows: list[dict[str, Any]] = []
    results: dict[str, Any] = {}
    try:
        evaluation = Evaluation(model, config, project_id, options)
        kind = task_kind(evaluation.plan)
        bar = tqdm(total=len(points) * len(tasks), unit="task", file=sys.stderr, dynamic_ncols=True,
                   disable=not progress, mininterval=0.5)
        for point in points:
            bar.set_description(f"{point} examples")
            run = evaluation.run_point(train, order, point, tasks, lambda: bar.update(1), kind == "classification",
                                       kind == "ner")
            row = score_point(run, evaluation.plan, test, ids, prices, evaluation.plan.model)
            rows.append(row)
            model.predictor.llm.flush()  # the answers are in the cache before the next point
            _write_predictions(out / f"predictions-{point}.json", ids, test, run)
            # written after every point, so an interrupted run keeps the points it finished
            results = {
                "command": command, "config": str(config_path), "train": str(train_path), "test": str(test_path),
                "kind": kind, "model": evaluation.plan.model, "provider": provider_of(settings),
                "seed": options.seed, "n_test": len(ids), "train_size": len(order), "points": points,
                "project_id": project_id, "data_dir": str(settings.data_dir), "knn_k": options.knn_k,
                "embeddings": settings.embeddings_model or "lexical",
                "selection_similarity": getattr(settings, "selection_similarity", "lexical"),
                "vectors": _similarity(selector_of(model).vectors),
                "student_mode": getattr(settings, "student_mode", "off"),
                "student_features": getattr(settings, "student_features", None),
                "student_trusted_from": getattr(settings, "student_trusted_from", None),
                "wall_seconds": round(time.time() - started, 1),
                "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
                "complete": len(rows) == len(points), "results": rows,
            }
            write_results(results, out)
        bar.close()
    finally:
        model.close()
    return results


def _similarity(vectors: Any) -> str:
    """The selection's similarity source: the vector source's embedder class, or lexical."""
    if vectors is None:
        return "lexical"
    embedder = getattr(vectors, "embedder", None)
    return type(embedder).__name__ if embedder is not None else type(vectors).__name__


def write_results(results: dict[str, Any], out: Path) -> None:
    """results.json, results.md and the two plots."""
    (out / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False), encoding="utf-8")
    (out / "results.md").write_text(markdown(results), encoding="utf-8")
    plot(results, out)


# what must be equal for two runs' points to belong on one curve: a point is the same measurement in
# every run that shares these (nested seeded examples, one seeded test sample, one model and settings)
SAME_CURVE = ("config", "train", "test", "kind", "model", "provider", "seed", "n_test", "train_size", "knn_k",
              "embeddings", "selection_similarity", "vectors", "student_mode", "student_features",
              "student_trusted_from")


def merge_results(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One curve from several runs of the same setup that measured different points (an interrupted
    grid resumed with the missing points, say): every point once (the first run's where two measured
    it), in order; the commands joined so that running them all reproduces it; wall times added.
    Raises ValueError for runs whose points are not the same measurement (SAME_CURVE differs)."""
    if not runs:
        raise ValueError("nothing to merge")
    first = runs[0]
    for run in runs[1:]:
        differs = [key for key in SAME_CURVE if run.get(key) != first.get(key)]
        if differs:
            raise ValueError(f"runs differ in {', '.join(differs)}: not one curve")
    points: dict[Any, dict[str, Any]] = {}
    for run in runs:
        for row in run["results"]:
            points.setdefault(row["examples"], row)
    rows = [points[k] for k in sorted(points)]
    return {**first, "command": " && ".join(run["command"] for run in runs),
            "points": [row["examples"] for row in rows], "results": rows,
            "wall_seconds": round(sum(float(run["wall_seconds"]) for run in runs), 1),
            "complete": all(run.get("complete", True) for run in runs)}


def _write_predictions(path: Path, ids: Sequence[int], test: Sequence[dict[str, Any]], run: Any) -> None:
    """The predictions of one point as Label Studio tasks (data + prediction), for an independent check."""
    out = []
    for i in ids:
        result = run.results.get(TEST_ID_BASE + i)
        item = result.item if result is not None else []
        out.append({"id": TEST_ID_BASE + i, "data": test[i]["data"], "predictions": [item] if item else []})
    path.write_text(json.dumps(out, ensure_ascii=False), encoding="utf-8")


def provider_of(settings: Settings) -> str:
    """"embedded" for the bundled model (its URL is a port of this run, useless to a later one), else
    the provider's URL."""
    return "embedded" if settings.local_status_file is not None else str(settings.llm_base_url)


def _f(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown(results: dict[str, Any]) -> str:
    """The results as one Markdown table (one row per point) and the command that made them."""
    classification = results["kind"] == "classification"
    controls = results["kind"] == "controls"
    head = (["examples", "accuracy", "macro-F1", "answered", "kNN-8 acc", "kNN-8 F1"] if classification
            else ["examples", "agreement", "answered"] if controls
            else ["examples", "precision", "recall", "F1", "answered", "gazetteer P/R/F1"])
    head += ["ECE", "AUROC", "errors in low 20%", "invalid", "tokens in/out", "cost", "s/task", "LLM/student"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results["results"]:
        cal = r["calibration"]
        cells = [str(r["examples"])]
        if classification:
            knn = r.get("knn") or {}
            cells += [_f(r["accuracy"]), _f(r["macro_f1"]), _f(r["answered_rate"], 2),
                      _f(knn.get("accuracy")), _f(knn.get("macro_f1"))]
        elif controls:
            cells += [_f(r["agreement_mean"]), _f(r["answered_rate"], 2)]
        else:
            alone = r.get("gazetteer")
            cells += [_f(r["precision"]), _f(r["recall"]), _f(r["f1"]), _f(r["answered_rate"], 2),
                      "/".join(_f(alone[k]) for k in ("precision", "recall", "f1")) if alone else "–"]
        by = r.get("answered_by") or {}
        cells += [_f(cal["ece"]), _f(cal["auroc"]), _f(cal["errors_in_lowest_20pct"], 2), str(r["invalid_regions"]),
                  f"{r['prompt_tokens']:,}/{r['completion_tokens']:,}",
                  format_cost(r["cost_usd"]).replace(" (set LLM_PRICES)", ""), _f(r["seconds_per_task"], 2),
                  f"{by.get('llm', 0)}/{by.get('student', 0)}"]
        lines.append("| " + " | ".join(cells) + " |")
    partial = "" if results.get("complete", True) else " (interrupted: not every point was run)"
    meta = (f"{results['kind']}, model {results['model']} ({results['provider']}), selection "
            f"{results.get('vectors', results['embeddings'])}, student {results.get('student_mode', 'off')}, "
            f"{results['n_test']} test tasks, train {results['train_size']}, "
            f"seed {results['seed']}, wall time {results['wall_seconds']:.0f} s{partial}")
    return f"{meta}\n\n" + "\n".join(lines) + f"\n\n`{results['command']}`\n"


def plot(results: dict[str, Any], out: Path) -> list[Path]:
    """learning_curve.png (metric vs examples, with the zero-shot line and the kNN baseline) and
    reliability.png (accuracy vs score per bin, one line per point)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["results"]
    classification = results["kind"] == "classification"
    metric, label = (("accuracy", "accuracy") if classification
                     else ("agreement_mean", "agreement") if results["kind"] == "controls"
                     else ("f1", "strict span F1"))
    xs = [max(r["examples"], 1) for r in rows]  # log axis: point 0 drawn at 1
    fig, ax = plt.subplots(figsize=(6, 4))
    mode = results.get("student_mode", "off")
    ax.plot(xs, [r[metric] for r in rows], "o-", label=f"backend ({results['model']}, student {mode})")
    if rows and rows[0]["examples"] == 0:
        ax.axhline(rows[0][metric], ls="--", color="grey", label="zero-shot")
    knn = [(x, r["knn"]["accuracy"]) for x, r in zip(xs, rows) if r.get("knn")]
    if knn:
        ax.plot([x for x, _ in knn], [y for _, y in knn], "s-", label=f"{results['knn_k']}-NN vote")
    alone = [(x, r["gazetteer"]["f1"]) for x, r in zip(xs, rows) if r.get("gazetteer")]
    if alone:
        ax.plot([x for x, _ in alone], [y for _, y in alone], "s-", label="gazetteer alone")
    ax.set_xscale("log")
    ax.set_xlabel("reviewed examples (0 drawn at 1)")
    ax.set_ylabel(label)
    ax.set_ylim(0, 1)
    ax.set_title(Path(results["test"]).name)
    ax.legend(fontsize=8)
    fig.tight_layout()
    curve = out / "learning_curve.png"
    fig.savefig(curve, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    for r in rows:
        bins = r["calibration"]["bins"]
        if bins:
            ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-",
                    label=f"{r['examples']} examples (ECE {_f(r['calibration']['ece'], 2)})")
    ax.set_xlabel("score (mean per bin)")
    ax.set_ylabel("share right")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title("reliability: " + Path(results["test"]).name)
    ax.legend(fontsize=7)
    fig.tight_layout()
    reliability = out / "reliability.png"
    fig.savefig(reliability, dpi=110)
    plt.close(fig)
    return [curve, reliability]
