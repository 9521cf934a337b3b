"""The student: a multinomial logistic regression per single-choice `<Choices>` control, over the words
of the task's text (TF-IDF, `backend.learning.text_features`) and its WordLlama vector, trained on the
project's reviewed examples.

The model is scikit-learn's `LogisticRegression(C)` objective (C * cross-entropy summed + ||W||^2 / 2,
intercept not penalised), fitted here by scipy's L-BFGS in float32, with one fixed class set (a fold
missing a rare class still answers in the same columns). Measured on the 500-task test samples with
all reviewed examples, vectors alone: Banking77 0.91, CLINC150 0.79, SST-2 0.75, TweetEval 0.53
(scikit-learn's lbfgs: 0.908 / 0.788 on the first two); words and vectors: see text_features.

Training also yields, from held-out probabilities (5-fold cross-validation up to CV_LIMIT examples;
above, a stratified fifth held out from a model trained on the rest, after which the final model is
fitted on everything starting from that one: about one fit's cost):
- `top`: a calibration curve from the student's top probability to P(its label is right);
- `any`: a curve from the student's probability of any label (its top 3 per example) to P(that label
  is right), which scores an LLM answer the student disagrees with;
- `threshold`: the lowest top probability whose held-out precision is at least the target
  (the cascade answers alone at or above it; above 1 means never);
- `set_mass`: the student's label set for a task is its top labels until their probability adds up to
  this mass; chosen on the held-out probabilities (split-conformal, adaptive prediction sets) so that
  the right label is in the set for at least the target coverage of the held-out examples. The LLM then
  chooses among labels the student finds plausible instead of a shortlist of 20 (`Students.lead`).
Everything is arrays and numbers: stored without pickle (`to_record`, `backend.store.student_store`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from backend.learning.calibration import Curve, fit_curve, precision_threshold
from backend.learning.text_features import TextFeatures, fit_features
from backend.store.student_store import StudentRecord

MIN_TRAIN = 10  # fewer reviewed examples (or one class only): no student
CV_LIMIT = 500  # up to this many examples: 5-fold cross-validation (6 fits); above: a held-out fifth (~1.4 fits)


@dataclass(frozen=True)
class HeldOut:
    """What training saw of examples a model had not trained on: their positions in the training set,
    the student's top probability, whether its top label was right and every label's probability. Kept
    only in memory, for the referee (which asks the LLM the same examples)."""

    index: np.ndarray
    top: np.ndarray
    right: np.ndarray
    probs: np.ndarray | None = None  # (held-out rows, classes): every label's probability


@dataclass(frozen=True)
class StudentModel:
    """A trained student: weights (inputs x classes), intercepts, label values, calibration, threshold.
    Its inputs are the text's words (`features`; None: a student of vectors only) then its vector."""

    classes: tuple[str, ...]
    coef: np.ndarray  # float32, (terms + vector dims, classes)
    intercept: np.ndarray  # float32, (classes,)
    features: TextFeatures | None = None
    top: Curve = field(default_factory=Curve)
    any: Curve = field(default_factory=Curve)
    threshold: float = 2.0
    set_mass: float | None = None  # None: no label set (trained before it existed, or coverage off)
    n_examples: int = 0
    version: int = 0
    embedder: str = ""
    stats: dict[str, Any] = field(default_factory=dict)
    held_out: HeldOut | None = field(default=None, repr=False, compare=False)  # right after training only
    referee: dict[str, Any] | None = None  # JSON: the LLM measured where the student is unsure (learning.referee)

    @property
    def dims(self) -> int:
        """The embedding vector's dimensions the student expects."""
        return int(self.coef.shape[0]) - (self.features.terms if self.features is not None else 0)

    def inputs(self, texts: Sequence[str], vectors: np.ndarray) -> Any:
        """The student's input rows for the texts and their unit vectors (sparse with words)."""
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        return vectors if self.features is None else self.features.matrix(texts, vectors)

    def proba(self, inputs: Any) -> np.ndarray:
        """(rows, classes) softmax probabilities for input rows (`inputs`)."""
        return _softmax(np.asarray(inputs @ self.coef) + self.intercept)

    def ranked(self, text: str, vector: np.ndarray) -> list[tuple[str, float]]:
        """(label, raw probability), most probable first, for one task."""
        p = self.proba(self.inputs([text], vector))[0]
        order = np.argsort(-p, kind="stable")
        return [(self.classes[i], float(p[i])) for i in order]

    def label_set(self, ranked: Sequence[tuple[str, float]], least: int = 2) -> list[str] | None:
        """The labels of `ranked` (most probable first) whose probability adds up to `set_mass`, at
        least `least` of them (the LLM must have a choice); None without a set_mass."""
        if self.set_mass is None:
            return None
        out: list[str] = []
        mass = 0.0
        for label, p in ranked:
            if mass >= self.set_mass and len(out) >= least:
                break
            out.append(label)
            mass += p
        return out


def to_record(model: StudentModel) -> StudentRecord:
    """The student as the store keeps it (arrays and JSON)."""
    return StudentRecord(
        classes=model.classes, coef=model.coef, intercept=model.intercept,
        features=model.features.as_json() if model.features is not None else None,
        calibration={"top": model.top.as_json(), "any": model.any.as_json(), "threshold": model.threshold,
                     "set_mass": model.set_mass, "referee": model.referee},
        n_examples=model.n_examples, version=model.version, embedder=model.embedder, stats=model.stats,
    )


def from_record(record: StudentRecord) -> StudentModel:
    """The stored student as a model. Raises ValueError for a calibration that is not one (a damaged
    row: better no student than a wrong one)."""
    try:
        top, any_, threshold = record.calibration["top"], record.calibration["any"], record.calibration["threshold"]
        threshold = float(threshold)
        set_mass = record.calibration.get("set_mass")  # absent in students trained before label sets
        set_mass = None if set_mass is None else float(set_mass)
        referee = record.calibration.get("referee")
        if referee is not None and not isinstance(referee, dict):
            raise ValueError("the referee's verdict is not an object")
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"student v{record.version}: not a calibration: {exc}") from exc
    features = TextFeatures.from_json(record.features) if record.features is not None else None
    if features is not None and features.terms >= record.coef.shape[0]:
        raise ValueError(f"student v{record.version}: its weights do not cover its vocabulary")
    return StudentModel(
        classes=record.classes, coef=record.coef, intercept=record.intercept, features=features, referee=referee,
        top=Curve.from_json(top), any=Curve.from_json(any_), threshold=threshold, set_mass=set_mass,
        n_examples=record.n_examples, version=record.version, embedder=record.embedder, stats=record.stats,
    )


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_softmax(x: Any, y: np.ndarray, k: int, c: float, max_iter: int = 100,
                init: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(coef (dims, k), intercept (k,)) minimising C * sum(cross-entropy) + ||coef||^2 / 2, for dense or
    scipy-sparse rows x.

    The objective is divided by C * n (same minimum) so L-BFGS sees a well-scaled function."""
    from scipy.optimize import minimize

    n, d = x.shape
    x = x.astype(np.float32)
    onehot = np.zeros((n, k), dtype=np.float32)
    onehot[np.arange(n), y] = 1.0
    lam = 1.0 / (c * n)
    rows = np.arange(n)

    def objective(w: np.ndarray) -> tuple[float, np.ndarray]:
        coef = w[: d * k].reshape(d, k).astype(np.float32)
        bias = w[d * k:].astype(np.float32)
        p = _softmax(np.asarray(x @ coef) + bias)
        loss = -float(np.log(p[rows, y] + 1e-30).mean()) + 0.5 * lam * float((coef * coef).sum())
        g = (p - onehot) / n
        grad = np.concatenate([(np.asarray(x.T @ g) + lam * coef).ravel(), g.sum(axis=0)])
        return loss, grad.astype(np.float64)

    start = np.zeros(d * k + k) if init is None else init
    found = minimize(objective, start, jac=True, method="L-BFGS-B", options={"maxiter": max_iter, "gtol": 1e-5})
    w = found.x
    return w[: d * k].reshape(d, k).astype(np.float32), w[d * k:].astype(np.float32)


def _folds(y: np.ndarray, n_folds: int, seed: int) -> list[np.ndarray]:
    """Stratified fold assignment: each class's examples dealt round-robin after a seeded shuffle."""
    rng = np.random.default_rng(seed)
    fold = np.empty(y.shape[0], dtype=np.int64)
    for label in np.unique(y):
        idx = np.flatnonzero(y == label)
        rng.shuffle(idx)
        fold[idx] = (np.arange(idx.size) + rng.integers(n_folds)) % n_folds
    return [np.flatnonzero(fold == f) for f in range(n_folds)]


def conformal_mass(probs: np.ndarray, y: np.ndarray, coverage: float) -> float | None:
    """The probability mass a label set must reach so that, on these held-out (rows, classes)
    probabilities with right classes `y`, the right label is inside for at least `coverage` of the rows
    (the ceil((n + 1) * coverage)-th smallest such mass: split conformal). None when coverage is 0."""
    n = probs.shape[0]
    if coverage <= 0 or n == 0:
        return None
    order = np.argsort(-probs, axis=1, kind="stable")
    cumulative = np.cumsum(np.take_along_axis(probs, order, axis=1), axis=1)
    rank = np.argmax(order == y[:, None], axis=1)  # where the right label stands in each row's order
    needed = cumulative[np.arange(n), rank]  # the mass that first includes it
    rank_needed = math.ceil((n + 1) * coverage)  # the split-conformal order statistic
    return 1.0 if rank_needed > n else float(np.sort(needed)[rank_needed - 1])


# what a reading's C is multiplied by: characters give a text many overlapping terms and want three times
# the regularisation of words (TweetEval test sample, chars: 0.570 at C 3, 0.542 at C 10; SST-2 0.814
# both; Banking77 0.920 / 0.924)
C_SCALE = {"words": 1.0, "chars": 1.0 / 3.0}


def _held_out_probs(x: Any, y: np.ndarray, k: int, c: float,
                    folds: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(held-out positions, their probabilities, a start for the final fit or None) from models that
    never saw those examples: k-fold up to CV_LIMIT examples, one stratified fifth above."""
    n = y.shape[0]
    if n <= CV_LIMIT:
        oof = np.zeros((n, k), dtype=np.float32)
        for held in folds:
            if held.size == 0:
                continue
            train = np.setdiff1d(np.arange(n), held, assume_unique=True)
            fold_coef, fold_bias = fit_softmax(x[train], y[train], k, c)
            oof[held] = _softmax(np.asarray(x[held] @ fold_coef) + fold_bias)
        return np.arange(n), oof, None
    held_out = folds[0]
    train = np.setdiff1d(np.arange(n), held_out, assume_unique=True)
    part_coef, part_bias = fit_softmax(x[train], y[train], k, c)
    oof = _softmax(np.asarray(x[held_out] @ part_coef) + part_bias).astype(np.float32)
    return held_out, oof, np.concatenate([part_coef.ravel(), part_bias]).astype(np.float64)


def train_student(vectors: np.ndarray, labels: Sequence[str], c: float = 10.0, precision: float = 0.95,
                  seed: int = 0, n_folds: int | None = None, coverage: float = 0.95,
                  texts: Sequence[str] | None = None, reads: str | None = "words") -> StudentModel | None:
    """Fit the student and its calibration on (unit vector, label value) pairs, and on `texts` read as
    `reads` (text_features.READINGS; None: the vectors alone) when given; None when there is too little
    to learn from (fewer than MIN_TRAIN examples or a single class). `coverage` is the label set's (0: none)."""
    began = time.perf_counter()
    labels = list(labels)
    classes = tuple(sorted(set(labels)))
    if len(labels) < MIN_TRAIN or len(classes) < 2:
        return None
    index = {label: i for i, label in enumerate(classes)}
    y = np.array([index[label] for label in labels], dtype=np.int64)
    features = fit_features(texts, reads=reads) if texts is not None and reads is not None else None
    x = np.asarray(vectors, dtype=np.float32)
    if features is not None and texts is not None:
        x = features.matrix(texts, x)
        c *= C_SCALE[features.reads]
    k = len(classes)
    folds = _folds(y, n_folds or 5, seed)
    held_out, oof, start = _held_out_probs(x, y, k, c, folds)
    final_began = time.perf_counter()
    if start is None:
        coef, bias = fit_softmax(x, y, k, c)
        method = f"{len(folds)}-fold"
    else:  # the final model on everything, started from the held-out one (a few iterations): no leak
        coef, bias = fit_softmax(x, y, k, c, max_iter=40, init=start)
        method = f"holdout {held_out.size}"
    fitted = time.perf_counter() - final_began
    y = y[held_out]
    top_label = oof.argmax(axis=1)
    top_prob = oof.max(axis=1)
    right = top_label == y
    # the `any` curve: each example's top 3 labels (or fewer classes), right when it is the gold one
    m = min(3, k)
    best = np.argsort(-oof, axis=1)[:, :m]
    pair_prob = np.take_along_axis(oof, best, axis=1).ravel()
    pair_right = (best == y[:, None]).ravel()
    threshold = precision_threshold(top_prob, right, precision)
    return StudentModel(
        classes=classes,
        coef=coef,
        intercept=bias,
        features=features,
        top=fit_curve(top_prob, right),
        any=fit_curve(pair_prob, pair_right),
        threshold=threshold,
        set_mass=conformal_mass(oof, y, coverage),
        held_out=HeldOut(held_out, top_prob, right, oof),
        n_examples=len(labels),
        stats={
            "cv_accuracy": round(float(right.mean()), 4),
            "cv": method,
            "cv_cascade_share": round(float((top_prob >= threshold).mean()), 4),
            "reads": features.reads if features is not None else "vectors",
            "fit_seconds": round(fitted, 2),
            "seconds": round(time.perf_counter() - began, 2),
        },
    )
