"""The referee: who answers the tasks a student is unsure of, measured on the project's own reviews
instead of assumed.

The cascade lets the student answer alone above a threshold of held-out precision (STUDENT_PRECISION)
and sends every other task to the LLM, as if the LLM were always the better judge there. Measured with
the embedded SmolLM2-135M on 200 test tasks with all reviews (`lsllm eval`): TweetEval 0.330 with every
task sent to the LLM, 0.540 with the student answering all; CLINC150 0.760 against 0.780; Banking77 at
1,000 reviews 0.695 against 0.785. A strong provider model may well be the better judge. So after a
student is trained, the referee asks the LLM up to `size` reviewed examples that the student had not
trained on and would not answer alone (its held-out examples below the threshold), each as a new task
would be asked but with neither that example nor the student in the prompt
(`TaskPipeline.held_out`), and records, example by example, whether the LLM and the student were right.
The verdict is a **switch**: the student's probability above which it answers alone, chosen on those
paired examples to get the most of them right when the student answers at or above it and the LLM
below (ties go to the lower switch), and kept only when the LLM's wins there are no coin toss (a
one-sided sign test, p < 0.1): an LLM call must earn its cost. An LLM no better anywhere gets no task;
one better everywhere gets every unsure task.

Two simpler rules failed on measurement. "The student answers when its calibrated probability is at
least the LLM's accuracy": on SST-2 (embedded model) the LLM and the student were both right on 78% of
40 such examples, yet every task the student gave less than 0.78 went to the LLM. "The student
answers everything unless the LLM is better on average": the scripted provider of the active-learning
benchmark was right on 48% of the 40 (the student 20%), and the per-task rule then let a student of 100
examples answer tasks where its calibration (fitted on those few, hardest-first, reviews) was too
hopeful: accuracy after the refresh 0.83, against 0.91 with the LLM answering all. And the switch
without the sign test sent SST-2 tasks below 0.77 to the LLM because it had won a handful more of the
40 examples there: 0.835 on the test tasks, against 0.850 with the student answering all.

A tie (the examples cannot tell them apart) went to the student at any number of reviews, the answer
that costs no call. With 50 reviews it looked like the wrong side (`lsllm eval`, embedded model, 200 test
tasks): on TweetEval the referee saw 38% / 38%, and the student, trained on 24 positive, 20 neutral and
6 negative reviews, said "positive" to 136 tasks of a sample that is half neutral: 0.255, below the
zero-shot LLM's 0.345; on SST-2 it saw 70% / 70%, and the student answering scored 0.595 where the LLM
answering every task had scored 0.670. A student's held-out figures on a few dozen reviews say little
about tasks whose labels are spread differently, while the LLM's few-shot prompt does not learn that
spread. So below `trusted_from` reviewed examples (STUDENT_TRUSTED_FROM) a student is judged as a whole:
the referee samples from all its held-out examples, not only the unsure ones, and the one of the two
that got more of them right answers every task (an equal count: the LLM, which answered every task
before there was a student), with no switch or threshold on the student's probability. Measured (`lsllm
eval`, embedded model, the zero-shot arm below, 200 test tasks): a switch chosen on 40 unsure examples
without the sign test gave SST-2 at 50 reviews 0.700; TweetEval's switch (0.512) passed the test at 50
and gave 0.235, and with the LLM answering every unsure task its threshold still let the student answer
71 tasks: 0.295, both against 0.370 zero-shot; judged as a whole it tied the LLM (52.5% each): the
student answering all gave 0.255, the LLM 0.370. This setting's first form gave every tie to the LLM: at
50 reviews SST-2 0.670 (from 0.595) but Banking77 0.205 (from 0.260, under the 8-NN vote's 0.240), where
the referee had seen the student ahead (33% against 28%), which the count respects.

The same paired examples score the LLM's answers: a logistic regression of "the LLM was right" on the
LLM's own label probability, with the student's probability of the LLM's label (both as log-odds) when
that predicts the held-out examples better (fit_llm_score), so an LLM answer's `score` uses what the
LLM itself was sure of, calibrated on the project's reviews (before, it was the student's probability
alone: after the active-learning benchmark's refresh, the 20% lowest scores held 0.056 of the errors,
below the 0.2 of a random order). The student's probability is read no lower than STUDENT_FLOOR: a
young student's 0.001 for a label it barely knows said "wrong" about the LLM's right answers (the same
benchmark, session 10: 0.167 of the errors in the lowest 20% without the floor, 0.833 with it).

The LLM the student is weighed against is the better of two: each example is asked with the task's
few-shot examples and, when there are any (FEW_SHOT_K > 0), again without them, and the one that got
more of them right is the one the cascade calls (`Verdict.examples`, read by the pipeline through
`Students.examples_help`; a tie keeps the examples). Measured with the embedded SmolLM2-135M at 50
reviews, with the LLM answering every SST-2 task: eight selected examples 0.645, two 0.605, none 0.765;
before this arm the referee never saw the zero-shot LLM. It doubles the referee's calls.

The verdict is kept with the student and measured again when the reviewed examples have doubled since
(so a growing project pays log2(growth) checks of `size` calls).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from backend.learning.blend import STUDENT_FLOOR, BlendRow, choose_blend
from backend.learning.calibration import sign_test
from backend.learning.student import StudentModel
from converters.scoring import choice_of

log = logging.getLogger(__name__)

MIN_VERDICT = 10  # fewer answered examples than this (or than `size`) give no verdict


class Judge(Protocol):
    """The LLM on one reviewed example asked as a new task (backend.predict.pipeline.TaskPipeline.held_out),
    with its few-shot examples or, `examples=False`, without: returns a result with `.item` (a
    prediction, or [] when it failed) and `.reason` ("ok" when answered)."""

    def __call__(self, plan: Any, project_id: str, data: Mapping[str, Any], what: str,
                 examples: bool = True) -> Any: ...


@dataclass(frozen=True)
class Verdict:
    llm_accuracy: float  # share of the asked examples the LLM got right
    student_accuracy: float  # the student's held-out accuracy on the same examples
    n: int  # examples the LLM answered
    at_examples: int  # reviewed examples the student had when this was measured
    switch: float = 0.0  # the student answers alone at or above this top probability (above 1: never)
    score: tuple[float, float, float] | None = None  # llm_score weights (a, b, c); None: not fitted
    zero_shot_accuracy: float | None = None  # the LLM asked the same examples with no examples; None: not asked
    examples: bool = True  # the LLM's prompts carry few-shot examples (False: it was right more often without)
    whole: bool = False  # judged on all its held-out examples: the switch alone decides, the threshold too
    blend: tuple[float, float] | None = None  # the LLM's answers blended with the student (learning.blend)
    blend_accuracy: float | None = None  # the blend's share right on the same examples (each judged held out)

    def as_json(self) -> dict[str, Any]:
        return {"llm_accuracy": round(self.llm_accuracy, 4), "student_accuracy": round(self.student_accuracy, 4),
                "n": self.n, "at_examples": self.at_examples, "switch": self.switch,
                "score": list(self.score) if self.score is not None else None,
                "zero_shot_accuracy": None if self.zero_shot_accuracy is None else round(self.zero_shot_accuracy, 4),
                "examples": self.examples, "whole": self.whole,
                "blend": list(self.blend) if self.blend is not None else None,
                "blend_accuracy": None if self.blend_accuracy is None else round(self.blend_accuracy, 4)}

    @classmethod
    def from_json(cls, data: Any) -> Verdict:
        """Raises ValueError for anything as_json did not write."""
        try:
            score, zero = data.get("score"), data.get("zero_shot_accuracy")  # both absent in older verdicts
            examples, whole = data.get("examples", True), data.get("whole", False)
            blend, blend_accuracy = data.get("blend"), data.get("blend_accuracy")  # absent before the blend
            if not isinstance(examples, bool) or not isinstance(whole, bool):
                raise ValueError("'examples' or 'whole' is not a boolean")
            return cls(float(data["llm_accuracy"]), float(data["student_accuracy"]), int(data["n"]),
                       int(data["at_examples"]), float(data["switch"]),
                       (float(score[0]), float(score[1]), float(score[2])) if score is not None else None,
                       None if zero is None else float(zero), examples, whole,
                       (float(blend[0]), float(blend[1])) if blend is not None else None,
                       None if blend_accuracy is None else float(blend_accuracy))
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise ValueError(f"not a referee verdict: {exc}") from exc


def _logit(p: float | np.ndarray, floor: float = 1e-4) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=np.float64), floor, 1 - floor)
    return np.log(q / (1 - q))


def llm_score(weights: Sequence[float], llm_p: float, student_p: float) -> float:
    """P(the LLM's label is right) from its own label probability and the student's probability of it."""
    a, b, c = weights
    z = a * float(_logit(llm_p)) + b * float(_logit(student_p, STUDENT_FLOOR)) + c
    return float(1.0 / (1.0 + np.exp(-z)))


# which log-odds each candidate score reads: the LLM's own probability, alone or with the student's
SCORE_INPUTS: tuple[tuple[int, ...], ...] = ((0,), (0, 1))


def fit_llm_score(llm_p: Sequence[float], student_p: Sequence[float],
                  right: Sequence[bool]) -> tuple[float, float, float] | None:
    """The weights of llm_score fitted on paired held-out examples; None when they are all right or all
    wrong (nothing to separate).

    Two candidates are fitted (scikit-learn's logistic regression, C = 1): on the LLM's own probability,
    and on it and the student's probability of the LLM's label. A candidate that gives either a negative
    weight (more certain, less often right: a few dozen examples cannot show that) is set aside, and of
    the rest the one with the lowest leave-one-out log loss is kept (a tie: the LLM's own alone). With no
    candidate left the score is the examples' share of right answers. Measured (`lsllm eval`, embedded
    model, 200 test tasks; ECE / AUROC of the scores): SST-2 at 50 reviews 0.040 / 0.731 with the fit of
    both, **0.009 / 0.731** now; at 200 0.038 / 0.737 both times; at 1,000 0.162 / 0.591, **0.159 /
    0.709** now (the LLM's own kept); TweetEval at 50 0.283 / 0.498 both times (both kept, where the
    LLM's own probability had ranked the zero-shot answers at 0.721: 40 examples can point the wrong
    way). A third candidate, the student's probability alone, won the log loss at SST-2 50 and 200 and
    made the score nearly constant there (AUROC 0.565 and 0.723): the LLM's own certainty stays in."""
    y = np.asarray(right, dtype=bool)
    if y.all() or not y.any():
        return None
    x = np.column_stack([_logit(np.asarray(llm_p)), _logit(np.asarray(student_p), STUDENT_FLOOR)])
    best: tuple[float, tuple[float, float, float]] | None = None
    for inputs in SCORE_INPUTS:
        weights = _fit_score(x[:, inputs], y, inputs)
        if min(weights[:2]) < 0:
            continue
        loss = _leave_one_out_loss(x[:, inputs], y)
        if best is None or loss < best[0] - 1e-9:
            best = (loss, weights)
    if best is None:
        return (0.0, 0.0, float(_logit(float(y.mean()))))
    return best[1]


def _fit_score(x: np.ndarray, y: np.ndarray, inputs: Sequence[int]) -> tuple[float, float, float]:
    """(a, b, c) of a logistic regression on the `inputs` columns (0: the LLM's, 1: the student's); `y`
    holds both classes."""
    from sklearn.linear_model import LogisticRegression

    fitted = LogisticRegression(C=1.0).fit(x, y)
    weights = [0.0, 0.0]
    for column, weight in zip(inputs, fitted.coef_[0]):
        weights[column] = float(weight)
    return (weights[0], weights[1], float(fitted.intercept_[0]))


def _leave_one_out_loss(x: np.ndarray, y: np.ndarray) -> float:
    """Mean log loss of each example under a fit on all the others (the base rate when they hold one
    class only)."""
    from sklearn.linear_model import LogisticRegression

    losses = []
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        if y[keep].all() or not y[keep].any():
            p = float(np.clip(y[keep].mean(), 1e-4, 1 - 1e-4))
        else:
            p = float(LogisticRegression(C=1.0).fit(x[keep], y[keep]).predict_proba(x[i:i + 1])[0, 1])
        q = min(max(p if y[i] else 1.0 - p, 1e-12), 1.0)
        losses.append(-math.log(q))
    return float(np.mean(losses))


def best_switch(probs: Sequence[float], student_right: Sequence[bool], llm_right: Sequence[bool],
                alpha: float = 0.1) -> float:
    """The student's probability at or above which it should answer: the lowest that gets the most of
    these paired examples right with the student answering there and the LLM below, provided the LLM's
    wins below it are not chance (one-sided sign test on the examples where only one of them was right,
    p < `alpha`); else 0.0, the student answers every task (the answer that costs no call). 2.0: never
    (the LLM is best on all)."""
    p = np.asarray(probs, dtype=np.float64)
    s = np.asarray(student_right, dtype=bool)
    llm = np.asarray(llm_right, dtype=bool)
    candidates = [0.0, *sorted(set(p.tolist())), 2.0]  # ascending: the first of equals is the cheapest
    right = [int(s[p >= t].sum() + llm[p < t].sum()) for t in candidates]
    best = float(candidates[right.index(max(right))])
    below = p < best
    wins, losses = int((llm & ~s & below).sum()), int((s & ~llm & below).sum())
    return best if best > 0.0 and sign_test(wins, losses) < alpha else 0.0


def count_switch(student_right: Sequence[bool], llm_right: Sequence[bool]) -> float:
    """All or nothing, for a student trained on too few reviews to switch on its probability
    (StudentPolicy.trusted_from): 0.0 (the student answers every task, no call) when it got more of the
    paired examples right than the LLM, else 2.0 (the LLM answers every task, as it did before there was
    a student: a young student takes over only once it is ahead)."""
    return 0.0 if sum(map(bool, student_right)) > sum(map(bool, llm_right)) else 2.0


def deferred_sample(model: StudentModel, size: int, seed: int = 0, whole: bool = False) -> list[int]:
    """Positions in the held-out arrays of up to `size` examples the cascade would not answer alone
    (`whole`: of any held-out example), a seeded random choice."""
    held = model.held_out
    if held is None or size <= 0:
        return []
    unsure = np.arange(len(held.top)) if whole else np.flatnonzero(held.top < model.threshold)
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.permutation(unsure)[:size])


def still_valid(previous: Verdict | None, n_examples: int, trusted_from: int = 0) -> bool:
    """A verdict holds until the reviewed examples have doubled since it was measured, or have reached
    `trusted_from` since (where an undecided referee's answer changes hands)."""
    if previous is None or n_examples >= 2 * previous.at_examples:
        return False
    return not previous.at_examples < trusted_from <= n_examples


@dataclass(frozen=True)
class _Asked:
    """One answer of the LLM to a held-out example."""

    label: str | None  # the label it gave the control (None: no readable answer)
    right: bool
    own: float | None  # its own probability of that label (None: the provider gives none)
    votes: Mapping[str, float] | None = None  # its probability of every label it was shown (None: none)


def _ask(judge: Judge, plan: Any, project_id: str, data: Mapping[str, Any], truth: str, control: str, what: str,
         examples: bool) -> _Asked | None:
    """The LLM's answer to one held-out example; None when the call failed (that says nothing about its
    judgement; an answer that could not be parsed counts: the LLM got that task wrong)."""
    result = judge(plan, project_id, data, what, examples=examples)
    reason = str(getattr(result, "reason", "ok"))
    if reason.startswith("llm_") or reason == "deadline":
        return None
    item = result.item if isinstance(result.item, Mapping) else {}
    label = choice_of(item.get("result"), control)
    votes = (getattr(result, "votes", None) or {}).get(control)
    return _Asked(label, label == truth, _region_score(item.get("result"), control), votes)


def judge_llm(model: StudentModel, datas: Sequence[Mapping[str, Any]], labels: Sequence[str], control: str,
              judge: Judge, plan: Any, project_id: str, size: int, seed: int = 0,
              trusted_from: int = 0, zero_shot: bool = False, blend: bool = False) -> Verdict | None:
    """Ask the LLM the sampled examples (`datas`/`labels` are the student's training rows, in its order)
    and compare with the student; None when too few were answered to say. Below `trusted_from` reviewed
    examples the student is judged as a whole: the examples are sampled from all its held-out ones, and
    the student answers every task when it got more of them right, else the LLM does, the threshold's
    tasks too (count_switch, `whole`).

    With `zero_shot`, each example is also asked with no few-shot examples in the prompt, and the LLM the
    student is weighed against is the one of the two that got more of them right (a tie keeps the
    examples): measured with the embedded SmolLM2-135M, eight selected examples made it worse than none
    (SST-2 at 50 reviews: 0.645 against 0.765 zero-shot), and only the project's own reviews can say
    which holds for its model and its labels. Both cost one call per task, so no test of chance: the
    better one on these examples answers."""
    held = model.held_out
    if held is None:
        return None
    young = model.n_examples < trusted_from
    asked: list[tuple[int, _Asked, _Asked | None]] = []  # (held-out position, with examples, without)
    for i in deferred_sample(model, size, seed, whole=young):
        position = int(held.index[i])
        what = f"referee {control} example {position}"
        few = _ask(judge, plan, project_id, datas[position], labels[position], control, what, True)
        if few is None:
            continue
        bare = None
        if zero_shot:
            bare = _ask(judge, plan, project_id, datas[position], labels[position], control,
                        f"{what} without examples", False)
            if bare is None:  # paired: an example counts only where both were answered
                continue
        asked.append((i, few, bare))
    if len(asked) < min(MIN_VERDICT, size):
        log.info("project %s: referee for %r: %d answers, no verdict", project_id, control, len(asked))
        return None
    few_right = [few.right for _, few, _ in asked]
    zero_right = [bare.right for _, _, bare in asked if bare is not None] if zero_shot else None
    examples = zero_right is None or sum(zero_right) <= sum(few_right)
    chosen = [few if examples or bare is None else bare for _, few, bare in asked]
    student_right = [bool(held.right[i]) for i, _, _ in asked]
    probs = [float(held.top[i]) for i, _, _ in asked]
    rows = [BlendRow(a.votes, _student_probs(model, i), str(labels[int(held.index[i])]))
            for (i, _, _), a in zip(asked, chosen)]
    llm_right = [a.right for a in chosen]
    mixed = choose_blend(rows, llm_right) if blend else None
    if mixed is not None:  # the LLM's answers are blended: what the blend said is what the LLM answers
        chosen = [replace(a, label=label, right=right, own=p) if label is not None else a
                  for a, label, right, p in zip(chosen, mixed.labels, mixed.right, mixed.p)]
        llm_right = mixed.right
    student_p = [_student_probs(model, i).get(a.label, 0.0) if a.label is not None else 0.0
                 for (i, _, _), a in zip(asked, chosen)]
    # the score is for answers with a label (an unreadable answer is never a prediction); a provider
    # without logprobs gives none of its own: the student's score stays
    labelled = [(a.own, q, a.right) for a, q in zip(chosen, student_p) if a.label is not None]
    weights = None
    if labelled and all(p is not None for p, _, _ in labelled):
        weights = fit_llm_score([p or 0.0 for p, _, _ in labelled], [q for _, q, _ in labelled],
                                [r for _, _, r in labelled])
    verdict = Verdict(float(np.mean(few_right)), float(np.mean(student_right)), len(asked), model.n_examples,
                      count_switch(student_right, llm_right) if young else best_switch(probs, student_right, llm_right),
                      weights, None if zero_right is None else float(np.mean(zero_right)), examples, young,
                      mixed.weights if mixed is not None else None,
                      float(np.mean(mixed.right)) if mixed is not None else None)
    log.info("project %s: referee for %r: on %d held-out examples (%s), the LLM was right "
             "%.0f%% of the time with examples, %s without, %s, the student %.0f%%; the LLM is asked %s, and the "
             "student answers alone from probability %.3f", project_id, control, verdict.n,
             "any, a young student judged as a whole" if young else "ones the student was unsure of",
             100 * verdict.llm_accuracy,
             "not asked" if verdict.zero_shot_accuracy is None else f"{100 * verdict.zero_shot_accuracy:.0f}%",
             "not blended" if verdict.blend_accuracy is None else
             f"blended with the student {100 * verdict.blend_accuracy:.0f}%",
             100 * verdict.student_accuracy, "with examples" if examples else "without examples", verdict.switch)
    return verdict


def _student_probs(model: StudentModel, position: int) -> dict[str, float]:
    """label -> the student's held-out probability for the held-out example at `position`."""
    held = model.held_out
    if held is None or held.probs is None:
        return {}
    return {label: float(p) for label, p in zip(model.classes, held.probs[position])}


def _region_score(result: Any, control: str) -> float | None:
    """The LLM's own probability of its label for `control` (the region's score before any rescoring)."""
    for region in result or []:
        if isinstance(region, Mapping) and region.get("from_name") == control:
            score = region.get("score")
            return float(score) if isinstance(score, (int, float)) else None
    return None
