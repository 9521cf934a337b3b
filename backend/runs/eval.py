"""`lsllm eval`: a learning curve of the backend on a labelled train/test pair, measured the way
production works.

At each point N (nested: the first 50 of a seeded order of TRAIN are inside the first 200), the
reviewed annotations not fed yet go through the webhook path: the served model's `fit` with
ANNOTATION_CREATED payloads shaped like Label Studio's -> the durable event table -> the event worker
(drained synchronously) -> the example store -> the selection index. Then the TEST sample is
predicted with the full pipeline for the project (few-shot selection, shortlists, the configured
model). Test tasks reach the predictor as {"id", "data"} only; their gold is read after predicting,
by `score_point`. Each run uses a new project id, so a re-run starts from an empty project while the
response cache (in the same DATA_DIR) answers every call it has seen before.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from backend.learning.learner import EventWorker
from backend.learning.selection import Selector, lexical_hits
from backend.llm.pricing import PriceTable
from backend.metrics import Metrics
from backend.predict.pipeline import TaskResult, task_texts
from backend.predict.plans import ProjectPlan
from backend.predict.predictor import Predictor
from backend.store.example_store import ExampleStore
from converters import scoring
from converters.controls import single_choice_controls, span_controls
from converters.controls.agreement import control_agreement
from converters.examples import coverage_label
from converters.regions import check_prediction

TEST_ID_BASE = 10_000_000  # test task ids never meet train ids (train task i has id i + 1)
BASE_TIME = 1_700_000_000.0  # annotations' updated_at: fixed, so runs are identical


class ServedModel(Protocol):
    """What the eval drives: the model the composition root builds (backend.service), handed in by the
    CLI, so the eval measures the production wiring without this room importing the service."""

    predictor: Predictor
    worker: EventWorker
    examples: ExampleStore
    metrics: Metrics

    def setup(self, project: Any, label_config: str) -> dict[str, Any]: ...

    def plan_for(self, project: Any, label_config: str | None) -> ProjectPlan: ...

    def fit(self, event: str, data: Mapping[str, Any]) -> dict[str, Any]: ...

    def version_for(self, plan: ProjectPlan | None = None, project_id: str | None = None) -> str: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class EvalOptions:
    points: tuple[int | None, ...] = (0, 50, 200, 1000, None)  # None: all of TRAIN
    n_test: int = 200
    seed: int = 0
    knn_k: int = 8


@dataclass
class PointRun:
    """What one point produced, before scoring (gold is not in here)."""

    examples: int
    results: dict[int, TaskResult] = field(default_factory=dict)  # test task id -> result
    knn: dict[int, str | None] = field(default_factory=dict)  # test task id -> kNN vote
    gazetteer: dict[int, list[scoring.Span]] = field(default_factory=dict)  # test task id -> its spans (NER)
    store: dict[str, int] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)
    feed_seconds: float = 0.0
    predict_seconds: float = 0.0
    removed_regions: float = 0.0  # regions the pipeline dropped as invalid during this point
    student_trained: bool = False  # a student model was trained on this point's examples before predicting
    referee: dict[str, Any] = field(default_factory=dict)  # control -> the referee's verdict (cascade)


def parse_points(text: str) -> tuple[int | None, ...]:
    """"0,50,200,all" -> (0, 50, 200, None), ascending; raises ValueError naming a bad item."""
    out: list[int | None] = []
    for item in text.split(","):
        item = item.strip().lower()
        if item == "all":
            out.append(None)
        elif item.isdigit():
            out.append(int(item))
        else:
            raise ValueError(f"--points: {item!r} is neither a number nor 'all'")
    if not out:
        raise ValueError("--points: no point given")
    numbers = sorted({p for p in out if p is not None})
    return (*numbers, None) if None in out else tuple(numbers)


def load_tasks(path: Path) -> list[dict[str, Any]]:
    """A Label Studio task file with annotations; raises ValueError naming the file and the problem."""
    try:
        tasks = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read tasks from {path}: {exc}") from None
    if not isinstance(tasks, list) or not all(isinstance(t, dict) and isinstance(t.get("data"), dict) for t in tasks):
        raise ValueError(f"{path}: expected a JSON list of Label Studio tasks with 'data'")
    return tasks


def gold_result(task: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The first non-cancelled annotation's result, or None when the task has none."""
    for annotation in task.get("annotations") or []:
        if isinstance(annotation, Mapping) and not annotation.get("was_cancelled"):
            return list(annotation.get("result") or [])
    return None


def train_order(train: Sequence[Mapping[str, Any]], seed: int) -> list[int]:
    """Indices of the annotated train tasks in a seeded order; point N feeds the first N (nested)."""
    usable = [i for i, t in enumerate(train) if gold_result(t) is not None]
    random.Random(seed).shuffle(usable)
    return usable


def test_sample(test: Sequence[Mapping[str, Any]], n: int, seed: int) -> list[int]:
    """Indices of a seeded sample of the annotated test tasks (all of them when fewer than n)."""
    usable = [i for i, t in enumerate(test) if gold_result(t) is not None]
    rng = random.Random(seed + 1)
    return sorted(rng.sample(usable, min(n, len(usable))))


def annotation_payload(project_id: int, config: str, task_id: int, data: Mapping[str, Any],
                       result: list[dict[str, Any]], updated: float) -> dict[str, Any]:
    """An ANNOTATION_CREATED webhook body in Label Studio 1.23's shape (see docs/label-studio-protocol)."""
    iso = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(updated))
    return {
        "action": "ANNOTATION_CREATED",
        "project": {"id": project_id, "title": f"eval {project_id}", "label_config": config},
        "task": {"id": task_id, "data": dict(data), "project": project_id, "is_labeled": True, "meta": {}},
        "annotation": {
            "id": task_id, "result": result, "was_cancelled": False, "ground_truth": False, "lead_time": 1.0,
            "prediction": {}, "parent_prediction": None, "task": task_id, "project": project_id,
            "completed_by": 1, "created_at": iso, "updated_at": iso,
        },
    }


def selector_of(model: ServedModel) -> Selector:
    """The selector whose index and similarity the model's predictor uses for few-shot selection."""
    selector = getattr(model.predictor.pipeline.context, "__self__", None)
    if not isinstance(selector, Selector):
        raise TypeError("the model's predictor does not select examples through a Selector")
    return selector


def nearest(selector: Selector, project_id: str, text: str, n: int) -> list[tuple[float, Any]]:
    """The n nearest live examples (similarity, StoredExample), best first, by the similarity the
    selector uses for this task: embeddings when configured and reachable, else lexical."""
    index = selector.index(project_id)
    if not index.entries:
        return []
    hits = None
    if selector.vectors is not None:
        try:
            hits = selector.vectors.candidates(project_id, index, text, n).hits
        except selector.vectors.unavailable:
            hits = None
    if hits is None:
        hits = lexical_hits(index, text, n)
    return [(score, index.entries[a].example) for score, a in hits[:n]]


class Evaluation:
    """Feeds and predicts one project through `model`; `points` yields a PointRun per point."""

    def __init__(self, model: ServedModel, config: str, project_id: int, options: EvalOptions) -> None:
        self.model = model
        self.config = config
        self.project_id = project_id
        self.pid = str(project_id)
        self.options = options
        model.setup(project_id, config)  # what Label Studio does when the backend is connected
        self.plan: ProjectPlan = model.plan_for(project_id, None)
        self.fed = 0

    def feed(self, train: Sequence[Mapping[str, Any]], order: Sequence[int], upto: int) -> int:
        """Send the annotations order[fed:upto] through fit() and apply them; returns how many were sent."""
        sent = 0
        for position in range(self.fed, upto):
            i = order[position]
            payload = annotation_payload(self.project_id, self.config, i + 1, train[i]["data"],
                                         gold_result(train[i]) or [], BASE_TIME + position)
            self.model.fit("ANNOTATION_CREATED", payload)
            sent += 1
            if sent % 500 == 0:
                self.model.worker.drain()
        self.model.worker.drain()
        self.fed = upto
        return sent

    def settle_students(self, timeout: float = 3600.0) -> bool:
        """With a student model configured (STUDENT_MODE, backend.learning.students): ask for the students
        of the examples now in the store and wait until they are trained, so every test task of the point
        meets the same student (in production the first tasks after a burst of reviews still meet the
        previous one). Returns whether a student was waited for."""
        students = getattr(self.model.predictor.pipeline, "student", None)
        if students is None or not hasattr(students, "settle"):
            return False
        return bool(students.settle(self.pid, self.plan, timeout))

    def verdicts(self) -> dict[str, Any]:
        """control -> the referee's verdict on the current students (what the LLM got right where they
        were unsure; its calls are not in the point's token counts)."""
        students = getattr(self.model.predictor.pipeline, "student", None)
        if students is None:
            return {}
        out = {}
        for control in single_choice_controls(self.plan.spec):
            model = students.student(self.pid, self.plan.spec, control)
            if model is not None and model.referee:
                out[control.name] = model.referee
        return out

    def warm_selection(self) -> None:
        """Bring the selection index (and the example vectors, with embeddings) up to the store now, on
        this thread: otherwise concurrent tasks that find another thread embedding thousands of new
        examples wait `sync_wait` s and then select from the previous point's vectors. The same for
        the gazetteers (a large example set is otherwise rebuilt in the background while the first
        tasks use the previous point's)."""
        selector = selector_of(self.model)
        if self.fed:
            nearest(selector, self.pid, "warm-up", 1)
            if selector.gazetteers is not None:
                index = selector.index(self.pid)
                selector.gazetteers.build_now(self.pid, self.plan.spec, index.seq,
                                              [e.example for e in index.entries.values()])

    def gazetteer(self, tasks: Sequence[Mapping[str, Any]]) -> dict[int, list[scoring.Span]]:
        """The gazetteer alone (the NER baseline): its labelled matches in each task, for the first span
        control; {} without gazetteers (STUDENT_MODE=off)."""
        selector = selector_of(self.model)
        if selector.gazetteers is None:
            return {}
        control = span_controls(self.plan.spec)[0]
        index = selector.index(self.pid)
        rows = [e.example for e in index.entries.values()]
        out: dict[int, list[scoring.Span]] = {}
        for task in tasks:
            found = selector.gazetteers.candidates(self.pid, self.plan.spec, index.seq, rows,
                                                   task_texts(self.plan.spec, task))
            out[int(task["id"])] = [(c.start, c.end, c.label) for c in found if c.label and c.control == control.name]
        return out

    def predict(self, tasks: Sequence[Mapping[str, Any]], on_done: Callable[[], None]) -> dict[int, TaskResult]:
        """Predict {"id", "data"} tasks for the project; results by task id."""
        version = self.model.version_for(self.plan, self.pid)
        out: dict[int, TaskResult] = {}
        for task, result in self.model.predictor.predict_stream(self.plan, tasks, version, self.pid):
            out[int(task["id"])] = result
            on_done()
        return out

    def knn(self, tasks: Sequence[Mapping[str, Any]]) -> dict[int, str | None]:
        """The k-nearest-neighbour vote of the fed examples for each task (first single-choice control)."""
        selector = selector_of(self.model)
        out = {}
        for task in tasks:
            text = " ".join(task_texts(self.plan.spec, task).values())
            neighbours = nearest(selector, self.pid, text, self.options.knn_k)
            votes = [(score, coverage_label(self.plan.spec, ex.result)) for score, ex in neighbours]
            out[int(task["id"])] = scoring.knn_vote(votes)
        return out

    def run_point(self, train: Sequence[Mapping[str, Any]], order: Sequence[int], upto: int,
                  tasks: Sequence[Mapping[str, Any]], on_done: Callable[[], None], knn: bool,
                  gazetteer: bool = False) -> PointRun:
        run = PointRun(examples=upto)
        started = time.perf_counter()
        self.feed(train, order, upto)
        run.student_trained = self.settle_students()
        run.referee = self.verdicts()
        self.warm_selection()
        run.feed_seconds = time.perf_counter() - started
        run.store = self.model.examples.counts(self.pid)
        run.events = self.model.examples.event_counts(self.pid)
        removed_before = _counter_value(self.model.metrics.invalid_predictions)
        started = time.perf_counter()
        run.results = self.predict(tasks, on_done)
        run.predict_seconds = time.perf_counter() - started
        run.removed_regions = _counter_value(self.model.metrics.invalid_predictions) - removed_before
        if knn and upto > 0:
            run.knn = self.knn(tasks)
        if gazetteer and upto > 0:
            run.gazetteer = self.gazetteer(tasks)
        return run


def _counter_value(counter: Any) -> float:
    return float(sum(s.value for metric in counter.collect() for s in metric.samples if s.name.endswith("_total")))


def invalid_regions(plan: ProjectPlan, data: Mapping[str, Any], item: Any) -> int:
    """Regions of a prediction that Label Studio's validation or the offset rule rejects."""
    if not isinstance(item, Mapping) or not item.get("result"):
        return 0
    return sum(1 for region in item["result"]
               if check_prediction(plan.interface, plan.spec, data, {**item, "result": [region]}))


def task_kind(plan: ProjectPlan) -> str:
    """"ner" when the config has a labels (span) control, "classification" when it has a single-choice
    control, else "controls" (TextArea, Number, Rating, Taxonomy...: scored by per-control agreement)."""
    if span_controls(plan.spec):
        return "ner"
    return "classification" if single_choice_controls(plan.spec) else "controls"


def answered_by(result: TaskResult) -> str:
    """Who answered a task: "student" when the student model answered it without an LLM call
    (TaskResult.student, STUDENT_MODE=cascade), else "llm"."""
    return "student" if getattr(result, "student", False) else "llm"


def score_point(run: PointRun, plan: ProjectPlan, test: Sequence[Mapping[str, Any]], ids: Sequence[int],
                prices: PriceTable, model: str) -> dict[str, Any]:
    """All figures of one point; the first and only place the test gold is read."""
    kind = task_kind(plan)
    results = [run.results.get(TEST_ID_BASE + i) or TaskResult([], reason="missing") for i in ids]
    items = [r.item if isinstance(r.item, Mapping) else None for r in results]
    golds = [gold_result(test[i]) or [] for i in ids]
    span_list, choice_list = span_controls(plan.spec), single_choice_controls(plan.spec)
    control = span_list[0] if kind == "ner" else choice_list[0] if kind == "classification" else None
    prompt_tokens = sum(r.prompt_tokens for r in results)
    completion_tokens = sum(r.completion_tokens for r in results)
    cost = prices.cost(model, prompt_tokens, completion_tokens)
    n = len(ids)
    out: dict[str, Any] = {
        "examples": run.examples, "n_test": n, "store": run.store, "events": run.events,
        "feed_seconds": round(run.feed_seconds, 3), "predict_seconds": round(run.predict_seconds, 3),
        "seconds_per_task": run.predict_seconds / n if n else None,
        "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "cost_usd": cost,
        "cached_tasks": sum(1 for r in results if r.cached),
        "invalid_regions": sum(invalid_regions(plan, test[i]["data"], item) for i, item in zip(ids, items)),
        "removed_invalid_regions": run.removed_regions, "student_trained": run.student_trained,
        "outcomes": _count(r.reason for r in results), "referee": run.referee,
        "answered_by": _count(answered_by(r) for r, it in zip(results, items) if it is not None),
    }
    scores = [it.get("score") if it is not None else None for it in items]
    # every control, whatever its kind: exact match (choices, number, rating, taxonomy), token F1 (textarea),
    # span F1 (labels), per-span attributes (converters.controls.agreement)
    per_task = [control_agreement(plan.spec, (it or {}).get("result") or [], g) for it, g in zip(items, golds)]
    by_control: dict[str, list[float]] = {}
    for found in per_task:
        for name, value in found.items():
            if value is not None:
                by_control.setdefault(name, []).append(value)
    out["agreement"] = {name: sum(v) / len(v) for name, v in by_control.items()}
    if control is None:  # only controls without a classification or span metric
        values = [v for vs in by_control.values() for v in vs]
        out.update(agreement_mean=sum(values) / len(values) if values else None,
                   answered_rate=sum(1 for it in items if it is not None) / n if n else 0.0)
        right = [it is not None and all(v == 1.0 for v in found.values() if v is not None)
                 for it, found in zip(items, per_task)]
    elif kind == "classification":
        gold = [scoring.choice_of(g, control.name) or "" for g in golds]
        predicted = [scoring.choice_of(it.get("result"), control.name) if it else None for it in items]
        cls = scoring.classification_scores(gold, predicted)
        out.update(accuracy=cls.accuracy, macro_f1=cls.macro_f1, answered_rate=cls.answered_rate)
        right = [p is not None and p == g for p, g in zip(predicted, gold)]
        if run.knn:
            knn_pred = [run.knn.get(TEST_ID_BASE + i) for i in ids]
            knn = scoring.classification_scores(gold, knn_pred)
            out["knn"] = {"accuracy": knn.accuracy, "macro_f1": knn.macro_f1, "answered_rate": knn.answered_rate}
    else:
        gold_spans = [scoring.spans_of(g, control.name) for g in golds]
        pred_spans = [scoring.spans_of(it.get("result"), control.name) if it else None for it in items]
        spans = scoring.span_scores(gold_spans, pred_spans)
        out.update(precision=spans.overall["precision"], recall=spans.overall["recall"], f1=spans.overall["f1"],
                   per_label=spans.per_label, answered_rate=spans.answered_rate)
        right = [p is not None and sorted(p) == sorted(g) for p, g in zip(pred_spans, gold_spans)]
        if run.gazetteer:
            alone = scoring.span_scores(gold_spans, [run.gazetteer.get(TEST_ID_BASE + i, []) for i in ids])
            out["gazetteer"] = {k: alone.overall[k] for k in ("precision", "recall", "f1")}
    pairs = [(float(s), r) for s, r, it in zip(scores, right, items) if it is not None and isinstance(s, (int, float))]
    cal = scoring.calibration([s for s, _ in pairs], [r for _, r in pairs])
    out["calibration"] = {"scored_tasks": cal.n, "ece": cal.ece, "auroc": cal.auroc,
                          "errors_in_lowest_20pct": cal.errors_in_lowest_20, "bins": cal.bins}
    return out


def _count(values: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return counts
