"""The students at work: which one a task uses, when they are retrained, and what they do to a task.

`Students` is the pipeline's student hook (`backend.predict.pipeline.StudentHook`) and the selector's
shortlist hint. Per single-choice `<Choices>` control of a project it keeps the newest ready student
from the store (looked up at most every `refresh_seconds`), and when the project's example-set version
has moved past it, asks the `Trainer` for a new one. Training runs on the trainer's own thread, one
at a time, `debounce` seconds after the first request (requests meanwhile only raise the version to
train), and only in the process whose claim row lands (`StudentStore.claim`): /predict never waits
for it and reads the previous student meanwhile.

STUDENT_MODE:
- `cascade`: when every control of the config is a single-choice `<Choices>` whose student has at
  least `min_examples` reviewed examples and whose top probability reaches its cross-validated
  threshold, or the referee's switch (the probability above which the student got more of the held-out
  examples it was unsure of right than the LLM did; backend.learning.referee), the task is answered by
  the students with no LLM call; otherwise as `hint`. Below `trusted_from` reviewed examples the
  referee's verdict on the student as a whole alone decides (all tasks or none; `Verdict.whole`), and
  its verdict also says whether the LLM is asked with few-shot examples (`examples_help`);
- `hint`: the student's top labels lead the label shortlist, the LLM decides; once the student has
  `min_examples`, its label set (the top labels that held the right one for STUDENT_SET_COVERAGE of
  the held-out examples) is the whole shortlist of a large label set;
- `off`: no student (the pipeline and the selector get None).

Scores (what "calibrated" means here). A student's answer scores its top-probability calibration
curve (isotonic, fitted on out-of-fold probabilities of the reviewed examples). An LLM answer scores,
once the referee has measured the LLM (cascade), its logistic fit of "the LLM was right" on the LLM's
own label probability and the student's probability of that label; before that, and in hint mode,
the student's calibrated probability of the LLM's label: the `top` curve when they agree, the `any`
curve (fitted on the out-of-fold probabilities of each example's top 3 labels) when they disagree.
That uses only what the reviewed examples give for free (no LLM calls on them); it ignores what the
LLM's agreement adds, so agreeing answers are if anything under-scored. With several scored controls
the item's score is the product (all right, taken as independent). Never a raw logprob.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
from sqlalchemy.exc import SQLAlchemyError

from backend.learning.blend import blended
from backend.learning.referee import Judge, Verdict, judge_llm, llm_score, still_valid
from backend.learning.student import StudentModel, from_record, to_record, train_student
from backend.store.example_store import ExampleStore
from backend.store.heartbeat import Heartbeat, beat_interval
from backend.store.student_store import StudentStore
from converters.controls import single_choice_controls
from converters.controls.base import region_id
from converters.shortlist import Lead, result_labels_of
from converters.spec import ControlSpec, TaskSpec

log = logging.getLogger(__name__)


class TextEmbedder(Protocol):
    model: str

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


class VersionSource(Protocol):
    def examples_version(self, project_id: str, fresh: bool = False) -> int: ...


class StudentMetrics(Protocol):
    """The four counters /metrics shows (backend.metrics.Metrics has them)."""

    student_answers: Any
    llm_answers: Any
    llm_calls_saved: Any
    blend_changes: Any


@dataclass(frozen=True)
class StudentPolicy:
    mode: str = "cascade"  # cascade | hint | off
    min_examples: int = 50
    precision: float = 0.95
    c: float = 10.0
    debounce: float = 5.0
    hint_labels: int = 5
    set_coverage: float = 0.95  # the label set the LLM chooses from (0: the top hint_labels lead instead)
    reads: str | None = "words"  # how the student reads the text beside its vector, None: it does not
    referee_sample: int = 40  # held-out examples the referee asks the LLM (0: the threshold alone decides)
    trusted_from: int = 1000  # reviewed examples from which the referee switches on the student's probability
    zero_shot: bool = True  # the referee also asks the LLM without few-shot examples (off when FEW_SHOT_K=0)
    blend: bool = True  # the LLM's answers may be blended with the student's view (learning.blend)
    refresh_seconds: float = 2.0


def student_controls(spec: TaskSpec) -> list[ControlSpec]:
    """The controls a student can learn: single-choice classification of the whole text."""
    return single_choice_controls(spec)


def all_student_controls(spec: TaskSpec) -> list[ControlSpec]:
    """The config's controls when every one is a student control (the cascade and the examples verdict
    act on the whole task only then), else []."""
    controls = student_controls(spec)
    return controls if len(controls) == len(spec.controls) else []


def task_text(spec: TaskSpec, data: Mapping[str, Any]) -> str | None:
    """The text a student reads: the config's text objects joined, as the selector does; None when one
    is missing."""
    parts = []
    for _, key in spec.objects:
        value = data.get(key)
        if not isinstance(value, str):
            return None
        parts.append(value)
    return " ".join(parts)


def training_rows(spec: TaskSpec, control: ControlSpec,
                  rows: Sequence[Any]) -> tuple[list[str], list[str], list[Mapping[str, Any]]]:
    """(texts, labels, task data) of the live reviewed examples that give `control` exactly one of its
    labels (the data is what the referee asks the LLM)."""
    allowed = {label.value for label in control.labels}
    texts, labels, datas = [], [], []
    for row in rows:
        chosen = result_labels_of(control, row.result)
        text = task_text(spec, row.data)
        if text is None or not chosen or chosen[0] not in allowed:
            continue
        texts.append(text)
        labels.append(chosen[0])
        datas.append(row.data)
    return texts, labels, datas


@dataclass
class _Wanted:
    spec: TaskSpec
    version: int
    due: float
    plan: Any = None  # the project's plan, for the referee's LLM calls (None: no referee this time)


@dataclass
class _Known:
    """One (project, control)'s student as this process last saw it."""

    model: StudentModel | None = None
    checked: float | None = None
    asked: int = -1  # the newest version this process asked the trainer for


class Trainer:
    """Trains students on a thread of its own, debounced; at most one training at a time per process."""

    def __init__(self, examples: ExampleStore, store: StudentStore, embedder: TextEmbedder, policy: StudentPolicy,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.examples = examples
        self.store = store
        self.embedder = embedder
        self.policy = policy
        self.clock = clock
        self._wanted: dict[str, _Wanted] = {}  # project -> what to train next
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.trained = 0  # trainings this process ran (tests, benchmarks)
        self.busy = False
        self.judge: Judge | None = None  # the LLM on a held-out example (set by the composition root)

    def want(self, project_id: str, spec: TaskSpec, version: int, plan: Any = None) -> None:
        """Ask for the project's students at `version`: trained `debounce` s after the first request of a
        burst (later requests raise the version, not the delay). Never blocks."""
        with self._cond:
            current = self._wanted.get(project_id)
            if current is None:
                self._wanted[project_id] = _Wanted(spec, version, self.clock() + self.policy.debounce, plan)
            elif version > current.version:
                current.version, current.spec = version, spec
            if current is not None and plan is not None:
                current.plan = plan
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="lsllm-student-trainer", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def pending(self) -> int:
        with self._cond:
            return len(self._wanted) + int(self.busy)

    def wait_idle(self, timeout: float) -> bool:
        """True once nothing is wanted or training (tests and benchmarks; never the request path)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if not self.pending():
                return True
            time.sleep(0.02)
        return False

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping:
                    due = min((w.due for w in self._wanted.values()), default=None)
                    if due is not None and due <= self.clock():
                        break
                    self._cond.wait(timeout=0.05 if due is None else min(0.05, max(0.0, due - self.clock())))
                if self._stopping:
                    return
                project_id, wanted = min(self._wanted.items(), key=lambda item: item[1].due)
                del self._wanted[project_id]
                self.busy = True
            try:
                self.train(project_id, wanted.spec, wanted.version, wanted.plan)
            except Exception:  # noqa: BLE001 - a failed training must not stop the thread
                log.exception("project %s: student training failed", project_id)
            finally:
                with self._cond:
                    self.busy = False

    def train(self, project_id: str, spec: TaskSpec, version: int, plan: Any = None) -> dict[str, StudentModel | None]:
        """Train every student control of `spec` this process can claim at `version`, have the referee
        measure the LLM where it is unsure (cascade, with a plan), store each (ready, empty or failed)
        and return what was trained. Runs on the caller's thread."""
        claimed = [c for c in student_controls(spec) if self.store.claim(project_id, c.name, version)]
        if not claimed:
            return {}
        out: dict[str, StudentModel | None] = {}

        def beat() -> None:  # every claim fresh until finished: the referee may ask the LLM for minutes
            for control in claimed:
                self.store.beat(project_id, control.name, version)

        heartbeat = Heartbeat(beat, beat_interval(self.store.stale_seconds), f"students {project_id} v{version}")
        heartbeat.start()
        try:
            with self.examples.engine.connect() as conn:
                rows = self.examples.all_rows(conn, project_id, ["live"])
            for control in claimed:
                began = time.perf_counter()
                texts, labels, datas = training_rows(spec, control, rows)
                model = None
                if len(texts) >= 2:
                    vectors = self._vectors(texts)
                    model = train_student(vectors, labels, self.policy.c, self.policy.precision,
                                          coverage=self.policy.set_coverage,
                                          texts=texts, reads=self.policy.reads)
                if model is not None:
                    model = replace(model, version=version, embedder=self.embedder.model)
                    model = replace(model, referee=self._verdict(project_id, control, model, datas, labels, plan))
                self.store.finish(project_id, control.name, version, to_record(model) if model else None)
                self.trained += 1
                out[control.name] = model
                log.info("project %s: student %r v%d: %s in %.1f s", project_id, control.name, version,
                         f"{model.n_examples} examples, cv accuracy {model.stats.get('cv_accuracy')}, "
                         f"cascade above {model.threshold:.3f}" if model else f"too few examples ({len(texts)})",
                         time.perf_counter() - began)
        except Exception:
            for control in claimed:
                if control.name not in out:
                    try:
                        self.store.finish(project_id, control.name, version, None, status="failed")
                    except SQLAlchemyError:
                        pass
            raise
        finally:
            heartbeat.stop()
        return out

    def _verdict(self, project_id: str, control: ControlSpec, model: StudentModel, datas: Sequence[Mapping[str, Any]],
                 labels: Sequence[str], plan: Any) -> dict[str, Any] | None:
        """The referee's verdict for this student: the previous student's while it holds, else measured
        now (cascade only, once the student may answer alone, with a judge and a plan)."""
        if (self.policy.mode != "cascade" or self.judge is None or self.policy.referee_sample <= 0
                or model.n_examples < self.policy.min_examples):
            return None
        previous = None
        try:
            newest = self.store.newest_version(project_id, control.name, model.version - 1)
            calibration = self.store.calibration(project_id, control.name, newest) if newest is not None else None
            if calibration and calibration.get("referee"):
                previous = Verdict.from_json(calibration["referee"])
        except (SQLAlchemyError, ValueError):
            previous = None
        if still_valid(previous, model.n_examples, self.policy.trusted_from):
            return previous.as_json() if previous is not None else None
        if plan is None:
            return None
        verdict = judge_llm(model, datas, labels, control.name, self.judge, plan, project_id,
                            self.policy.referee_sample, trusted_from=self.policy.trusted_from,
                            zero_shot=self.policy.zero_shot, blend=self.policy.blend)
        return verdict.as_json() if verdict is not None else None

    def _vectors(self, texts: list[str]) -> np.ndarray:
        """The texts' vectors: each text embedded once (a repeated text is one row of work)."""
        unique = list(dict.fromkeys(texts))
        matrix = self.embedder.embed(unique)
        row = {t: i for i, t in enumerate(unique)}
        return matrix[[row[t] for t in texts]]


@dataclass
class _Scored:
    control: ControlSpec
    model: StudentModel
    ranked: list[tuple[str, float]] = field(default_factory=list)


class Students:
    """The pipeline's student hook and the selector's hint, over the students in the store."""

    def __init__(self, store: StudentStore, versions: VersionSource, trainer: Trainer, embedder: TextEmbedder,
                 policy: StudentPolicy, metrics: StudentMetrics | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.versions = versions
        self.trainer = trainer
        self.embedder = embedder
        self.policy = policy
        self.metrics = metrics
        self.clock = clock
        self._known: dict[tuple[str, str], _Known] = {}
        self._lock = threading.Lock()  # guards _known; never held across the store
        self._warned = False

    def close(self) -> None:
        self.trainer.close()

    # --- which student -------------------------------------------------------------------------
    def student(self, project_id: str, spec: TaskSpec, control: ControlSpec, plan: Any = None) -> StudentModel | None:
        """The control's newest ready student (looked up at most every refresh_seconds); asks for a
        new one when the example-set version has moved past it. Never trains on this thread."""
        key = (project_id, control.name)
        with self._lock:
            known = self._known.setdefault(key, _Known())
            if known.checked is not None and self.clock() - known.checked < self.policy.refresh_seconds:
                return known.model
            known.checked = self.clock()
        version = self.versions.examples_version(project_id)
        newest = self.store.newest_version(project_id, control.name, version)
        model = known.model
        if newest is not None and (model is None or model.version != newest):
            record = self.store.load(project_id, control.name, newest)
            model = from_record(record) if record is not None else None
        if (newest is None or newest < version) and known.asked < version:
            state = self.store.state(project_id, control.name, version)
            if state is None or (state.status == "training" and time.time() - state.claimed_at
                                 > self.store.stale_seconds):
                self.trainer.want(project_id, spec, version, plan)
            known.asked = version
        with self._lock:
            known.model = model
        return model

    def settle(self, project_id: str, plan: Any, timeout: float) -> bool:
        """Ask for the students of the project's current example set and wait until they are trained
        (and judged by the referee), so that many tasks predicted next for one version meet them: a
        refresh, `lsllm eval`. Never on the request path. True when the config has student controls;
        raises TimeoutError when training takes longer than `timeout` s."""
        controls = student_controls(plan.spec) if self.policy.mode != "off" else []
        self._forget(project_id, controls)  # a lookup seconds old would hide a newer example set
        if controls:
            self.versions.examples_version(project_id, fresh=True)  # and so would the version's
        for control in controls:
            self.student(project_id, plan.spec, control, plan)  # asks the trainer for the current version
        if controls and not self.trainer.wait_idle(timeout):
            raise TimeoutError(f"student training still running after {timeout:.0f} s")
        self._forget(project_id, controls)  # look the new students up now, not after refresh_seconds
        return bool(controls)

    def _forget(self, project_id: str, controls: Sequence[ControlSpec]) -> None:
        with self._lock:
            for control in controls:
                self._known.pop((project_id, control.name), None)

    def _scored(self, project_id: str | None, spec: TaskSpec, text: str, plan: Any = None) -> list[_Scored]:
        if project_id is None or self.policy.mode == "off":
            return []
        found = [(c, self.student(project_id, spec, c, plan)) for c in student_controls(spec)]
        ready = [(c, m) for c, m in found if m is not None]
        if not ready:
            return []
        vector = self.embedder.embed([text])[0]
        out = []
        for control, model in ready:
            if model.dims != vector.shape[0]:
                continue
            allowed = {label.value for label in control.labels}
            ranked = [(label, p) for label, p in model.ranked(text, vector) if label in allowed]
            if ranked:
                out.append(_Scored(control, model, ranked))
        return out

    def _guard(self, what: str, fn: Callable[[], Any], default: Any) -> Any:
        """Run a student step; any failure (store, embedder, a damaged row) leaves the task to the LLM."""
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - /predict never fails because of the student
            if not self._warned:
                self._warned = True
                log.warning("student %s failed (%s: %s); the LLM answers alone until it works again",
                            what, type(exc).__name__, exc)
            return default

    # --- the pipeline's hook ---------------------------------------------------------------------
    def answer(self, plan: Any, project_id: str | None, task: Mapping[str, Any], texts: Mapping[str, str],
               model_version: str) -> dict[str, Any] | None:
        """A ready Label Studio prediction when the cascade may answer without the LLM, else None."""
        if self.policy.mode != "cascade":
            return None
        return self._guard("answer", lambda: self._answer(plan, project_id, texts, model_version), None)

    def _answer(self, plan: Any, project_id: str | None, texts: Mapping[str, str],
                model_version: str) -> dict[str, Any] | None:
        spec = plan.spec
        controls = all_student_controls(spec)
        if not controls:
            return None
        scored = self._scored(project_id, spec, " ".join(texts.values()), plan)
        if len(scored) != len(controls):
            return None
        result, score = [], 1.0
        for s in scored:
            label, p = s.ranked[0]
            if s.model.n_examples < self.policy.min_examples or not _answers(s.model, p):
                return None
            calibrated = float(s.model.top(p))
            score *= calibrated
            result.append({
                "id": region_id(s.control.name, label),
                "from_name": s.control.name,
                "to_name": s.control.to_name,
                "type": "choices",
                "value": {"choices": [label]},
                "score": calibrated,
            })
        if self.metrics is not None:
            self.metrics.student_answers.inc()
            self.metrics.llm_calls_saved.inc()
        return {"result": result, "score": score, "model_version": model_version}

    def examples_help(self, plan: Any, project_id: str | None) -> bool:
        """Whether the LLM's prompts for this project carry few-shot examples: False only in cascade
        mode when every control of the config is a student control whose referee found the LLM right
        more often without them (learning.referee, `Verdict.examples`)."""
        if self.policy.mode != "cascade" or project_id is None:
            return True
        return self._guard("examples", lambda: self._examples_help(plan, project_id), True)

    def _examples_help(self, plan: Any, project_id: str) -> bool:
        spec = plan.spec
        controls = all_student_controls(spec)
        if not controls:
            return True
        for control in controls:
            model = self.student(project_id, spec, control, plan)
            if model is None or (model.referee or {}).get("examples", True) is not False:
                return True
        return False

    def rescore(self, plan: Any, project_id: str | None, texts: Mapping[str, str],
                item: dict[str, Any], votes: Mapping[str, Mapping[str, float]] | None = None) -> dict[str, Any]:
        """The LLM's prediction with each student control's region scored by the student's calibrated
        probability of the LLM's label (and the item's score their product when all controls are so
        scored); where the referee kept a blend (learning.blend) and the LLM's label probabilities are
        known (`votes`, per control), the region's label is the blend's. Unchanged without students."""
        if self.policy.mode == "off" or not item or not item.get("result"):
            return item
        return self._guard("rescore", lambda: self._rescore(plan.spec, project_id, texts, item, votes or {}), item)

    def _rescore(self, spec: TaskSpec, project_id: str | None, texts: Mapping[str, str],
                 item: dict[str, Any], votes: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
        scored = {s.control.name: s for s in self._scored(project_id, spec, " ".join(texts.values()))}
        if not scored:
            return item
        if self.metrics is not None:
            self.metrics.llm_answers.inc()
        regions, product, covered = [], 1.0, 0
        for region in item["result"]:
            s = scored.get(region.get("from_name"))
            chosen = (region.get("value") or {}).get("choices") or []
            if s is None or len(chosen) != 1:
                regions.append(region)
                continue
            probs = dict(s.ranked)
            verdict = s.model.referee or {}
            own = region.get("score")
            mix, vote = verdict.get("blend"), votes.get(s.control.name)
            if mix and vote:
                region, own = self._blended(s.control, region, chosen[0], blended(mix, vote, probs))
            label = region["value"]["choices"][0]
            p = probs.get(label, 0.0)
            weights = verdict.get("score")
            if weights and isinstance(own, (int, float)):  # the referee's fit: the LLM's and the student's view
                calibrated = llm_score(weights, float(own), p)
            else:
                curve = s.model.top if label == s.ranked[0][0] else s.model.any
                calibrated = float(curve(p))
            regions.append({**region, "score": calibrated})
            product *= calibrated
            covered += 1
        out = {**item, "result": regions}
        if covered and covered == len(spec.controls):
            out["score"] = product
        elif "score" in out and covered:
            out["score"] = min(float(out["score"]), product)
        return out

    def _blended(self, control: ControlSpec, region: dict[str, Any], answered: str,
                 mixed: Mapping[str, float]) -> tuple[dict[str, Any], float]:
        """(the region with the blend's label, the blend's probability of it)."""
        label = max(mixed, key=lambda k: mixed[k])
        if label != answered:
            region = {**region, "id": region_id(control.name, label), "value": {**region["value"], "choices": [label]}}
            if self.metrics is not None:
                self.metrics.blend_changes.inc()
        return region, float(mixed[label])

    # --- the selector's hint -----------------------------------------------------------------------
    def lead(self, project_id: str | None, spec: TaskSpec, text: str) -> Callable[[ControlSpec], Lead]:
        """control -> what leads its shortlist for this task (hint and cascade): the student's label
        set as the whole shortlist once the student has `min_examples` reviewed examples and a set
        (`StudentModel.label_set`), else its top `hint_labels` labels ahead of the neighbours' vote."""
        if self.policy.mode == "off":
            return lambda control: Lead()
        scored = self._guard("hint", lambda: self._scored(project_id, spec, text), [])
        leads = {s.control.name: self._lead(s) for s in scored}
        return lambda control: leads.get(control.name, Lead())

    def _lead(self, s: _Scored) -> Lead:
        if s.model.n_examples >= self.policy.min_examples:
            labels = s.model.label_set(s.ranked)
            if labels:
                return Lead(tuple(labels), only=True)
        return Lead(tuple(label for label, _ in s.ranked[: self.policy.hint_labels]))



def _likelier_than_llm(model: StudentModel, p: float) -> bool:
    """Whether the student should answer a task it is unsure of (top probability `p`), by the referee's
    switch (learning.referee); False without a verdict."""
    switch = (model.referee or {}).get("switch")
    return switch is not None and p >= float(switch)


def _answers(model: StudentModel, p: float) -> bool:
    """Whether the cascade lets the student answer a task alone: above its threshold or the referee's
    switch, or by the switch alone when the referee judged the student as a whole (a young student)."""
    if (model.referee or {}).get("whole") is True:
        return _likelier_than_llm(model, p)
    return p >= model.threshold or _likelier_than_llm(model, p)


# STUDENT_FEATURES -> how the student reads the text beside its vector (text_features.READINGS)
FEATURE_READINGS: dict[str, str | None] = {"words+vectors": "words", "chars+vectors": "chars", "vectors": None}


def build_students(settings: Any, examples: ExampleStore, versions: VersionSource, embedder: TextEmbedder,
                   metrics: StudentMetrics | None = None) -> Students | None:
    """The students for a service from its settings (None with STUDENT_MODE=off)."""
    if settings.student_mode == "off":
        return None
    policy = StudentPolicy(
        mode=settings.student_mode,
        min_examples=settings.student_min_examples,
        precision=settings.student_precision,
        c=settings.student_c,
        debounce=settings.student_debounce_seconds,
        hint_labels=settings.student_hint_labels,
        set_coverage=settings.student_set_coverage,
        reads=FEATURE_READINGS[settings.student_features],
        referee_sample=settings.student_referee_sample,
        trusted_from=settings.student_trusted_from,
        zero_shot=settings.few_shot_k > 0,
        blend=settings.student_blend,
    )
    store = StudentStore(examples.engine)
    trainer = Trainer(examples, store, embedder, policy)
    return Students(store, versions, trainer, embedder, policy, metrics)
