"""The LLM and the student deciding together: a weighted product of their label probabilities.

Where the LLM answers a single-choice task, it has read the task and the student has too; choosing one
of them throws the other's view away. The blend picks the label that maximises

    a * log P_llm(label) + b * log P_student(label)

over the labels the LLM was shown (its shortlist), with P_llm read from the answer's tokens
(`converters.confidence.TokenProbs.distribution`) and both floored so that "never seen" reads as
"unlikely", not "impossible". The weights are a conditional logit fitted by maximum likelihood on the
referee's paired held-out reviews (`fit_blend`: two numbers, both at least 0), so the blend's softmax is
also a probability that each label is right. It is kept only when those reviews, each judged by weights
fitted on the others, show it better than the LLM alone: a lower log loss, and more right answers by
more than chance (`choose_blend`). About 0.1-0.3 s of fitting per verdict (40 reviews).

Measured before it existed (embedded SmolLM2-135M, SST-2, 200 test tasks, the zero-shot LLM's answers
from the response cache, the student trained on the first N reviews, weight w on the LLM and 1 - w on
the student, a throwaway script): the LLM alone 0.770, the student 0.595 / 0.655 / 0.710 / 0.850 at 50 /
200 / 1,000 / all reviews, the blend with w = 0.8 0.790 / 0.810 / 0.810 / 0.835 (w = 0.65: 0.750 / 0.790
/ 0.805 / 0.865). On TweetEval, where the 135M model is right on 37%, no weight beat the better of the
two: the fit has to be allowed to say "the LLM adds nothing" (b alone) or "the student adds nothing".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from backend.learning.calibration import sign_test

# the student's probability is read no lower than this (here and in the referee's score): a student of 100
# reviews over 77 labels gives a label it saw once 0.003 and one it never saw 0, which says "unknown", not
# "surely wrong"; read as log-odds down to 1e-4, a score weight fitted on 40 examples put right LLM
# answers at scores of 0.003
STUDENT_FLOOR = 0.01
# the LLM's probability of a label none of its top alternatives reached is not 0 either
VOTE_FLOOR = 1e-3
MAX_WEIGHT = 20.0


@dataclass(frozen=True)
class BlendRow:
    """One paired review: the LLM's label probabilities (None: it gave none), the student's, the truth."""

    votes: Mapping[str, float] | None
    student: Mapping[str, float]
    truth: str


@dataclass(frozen=True)
class BlendChoice:
    """The fitted weights, and what they did on the reviews when each was judged by a fit on the others."""

    weights: tuple[float, float]
    right: list[bool]  # per row: the blend's label (leave-one-out) was the truth
    p: list[float]  # per row: the blend's probability of its label (leave-one-out)
    labels: list[str | None]  # per row: the blend's label (None: no votes, the LLM's answer stands)


def blended(weights: Sequence[float], votes: Mapping[str, float], student: Mapping[str, float]) -> dict[str, float]:
    """label -> the blend's probability, over the labels the LLM was shown (the keys of `votes`)."""
    labels = list(votes)
    z = _inputs(labels, votes, student) @ np.asarray(weights[:2], dtype=np.float64)
    z -= z.max()
    e = np.exp(z)
    return dict(zip(labels, (e / e.sum()).tolist()))


def _inputs(labels: Sequence[str], votes: Mapping[str, float], student: Mapping[str, float]) -> np.ndarray:
    return np.column_stack([
        np.log(np.maximum([votes.get(label, 0.0) for label in labels], VOTE_FLOOR)),
        np.log(np.maximum([student.get(label, 0.0) for label in labels], STUDENT_FLOOR)),
    ])


def _problems(rows: Sequence[BlendRow]) -> list[tuple[np.ndarray, int]]:
    """(inputs, index of the truth) of the rows the blend can learn from: votes, with the truth among
    the labels the LLM was shown."""
    out = []
    for row in rows:
        if row.votes and row.truth in row.votes:
            labels = list(row.votes)
            out.append((_inputs(labels, row.votes, row.student), labels.index(row.truth)))
    return out


def _nll(w: np.ndarray, problems: Sequence[tuple[np.ndarray, int]]) -> tuple[float, np.ndarray]:
    loss, grad = 0.0, np.zeros(2)
    for x, y in problems:
        z = x @ w
        top = z.max()
        e = np.exp(z - top)
        total = e.sum()
        loss -= z[y] - top - math.log(total)
        grad += (e / total) @ x - x[y]
    n = max(len(problems), 1)
    return loss / n, grad / n


def fit_blend(rows: Sequence[BlendRow], student: bool = True) -> tuple[float, float] | None:
    """(a, b), both in [0, MAX_WEIGHT], maximising the likelihood of the truths; None with nothing to
    learn from. `student=False` fits the LLM alone (b = 0: only its temperature)."""
    from scipy.optimize import minimize

    problems = _problems(rows)
    if not problems:
        return None
    bounds = [(0.0, MAX_WEIGHT), (0.0, MAX_WEIGHT if student else 0.0)]
    found = minimize(_nll, np.array([1.0, 1.0 if student else 0.0]), args=(problems,), jac=True,
                     method="L-BFGS-B", bounds=bounds)
    return float(found.x[0]), float(found.x[1])


def _held_out(rows: Sequence[BlendRow], student: bool) -> list[tuple[float, float] | None]:
    """Per row: the weights fitted on all the other rows (None for a row without votes, or with nothing
    else to learn from)."""
    return [fit_blend([r for j, r in enumerate(rows) if j != i], student) if row.votes else None
            for i, row in enumerate(rows)]


def _log_loss(rows: Sequence[BlendRow], weights: Sequence[tuple[float, float] | None]) -> float:
    """Mean log loss of the truths of the learnable rows under each row's own weights."""
    losses = [-math.log(max(blended(w, row.votes, row.student)[row.truth], 1e-12))
              for row, w in zip(rows, weights) if w is not None and row.votes and row.truth in row.votes]
    return float(np.mean(losses)) if losses else math.inf


def choose_blend(rows: Sequence[BlendRow], llm_right: Sequence[bool], alpha: float = 0.1) -> BlendChoice | None:
    """The blend fitted on all the rows, when the rows show it better than the LLM alone, each row judged
    by weights fitted on the others: a lower held-out log loss than the LLM with its own fitted
    temperature, and more right answers than the LLM's own (`llm_right`, per row) by more than chance
    (one-sided sign test on the rows where only one of them was right, p < `alpha`). Both weights must be
    positive: with the LLM's at 0 the blend is the student, which answers without a call. None otherwise.

    The test is what keeps a student whose reviews mislead out of the LLM's answers: TweetEval at 50
    reviews (embedded model, 200 test tasks), the blend was right on 23 of the referee's 40 examples
    against the LLM's 21 and had the lower held-out log loss (0.94 against 1.10), and answering with
    it gave 0.250 where the LLM alone gave 0.370 (its reviews are 41% positive, its test tasks 19%)."""
    weights = fit_blend(rows)
    if weights is None or min(weights) <= 0.0:
        return None
    held_out = _held_out(rows, student=True)
    if _log_loss(rows, held_out) >= _log_loss(rows, _held_out(rows, student=False)):
        return None
    right: list[bool] = []
    p: list[float] = []
    labels: list[str | None] = []
    for row, fitted, llm in zip(rows, held_out, llm_right):
        if not row.votes:  # no probabilities: the LLM's answer stands, as it will in production
            right.append(bool(llm))
            p.append(math.nan)
            labels.append(None)
            continue
        probs = blended(fitted or weights, row.votes, row.student)
        label = max(probs, key=lambda k: probs[k])
        right.append(label == row.truth)
        p.append(probs[label])
        labels.append(label)
    wins = sum(b and not a for a, b in zip(map(bool, llm_right), right))
    losses = sum(a and not b for a, b in zip(map(bool, llm_right), right))
    if sign_test(wins, losses) >= alpha:
        return None
    return BlendChoice(weights, right, p, labels)
