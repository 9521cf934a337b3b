"""Probabilities that mean what they say: monotone calibration curves, the cascade's threshold, and the
measures that check them (expected calibration error, AUROC).

A curve is two float arrays (x ascending, y in [0, 1]) fitted by isotonic regression on held-out
(probability, was it right) pairs; applying it is `np.interp`, so it is stored as plain JSON numbers
(no pickle) and read the same in every process.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Curve:
    """A monotone map from a raw probability to the observed rate of being right."""

    x: tuple[float, ...] = (0.0, 1.0)
    y: tuple[float, ...] = (0.0, 1.0)

    def __call__(self, p: float | np.ndarray) -> Any:
        return np.clip(np.interp(p, self.x, self.y), 0.0, 1.0)

    def as_json(self) -> dict[str, list[float]]:
        return {"x": [round(v, 6) for v in self.x], "y": [round(v, 6) for v in self.y]}

    @classmethod
    def from_json(cls, value: Any) -> Curve:
        """Raises ValueError for anything that is not two equally long lists of numbers."""
        try:
            x = tuple(float(v) for v in value["x"])
            y = tuple(float(v) for v in value["y"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a calibration curve: {exc}") from exc
        if len(x) != len(y) or not x:
            raise ValueError("not a calibration curve: x and y differ in length or are empty")
        return cls(x, y)


def fit_curve(probs: Sequence[float] | np.ndarray, right: Sequence[bool] | np.ndarray, prior: int = 2) -> Curve:
    """Isotonic regression of `right` on `probs`, pulled towards the identity by `prior` pseudo-points
    at 0 and 1 (so a handful of examples cannot map a whole range to exactly 0 or 1). Identity when
    there is nothing to fit."""
    from sklearn.isotonic import IsotonicRegression

    p = np.asarray(probs, dtype=np.float64)
    r = np.asarray(right, dtype=np.float64)
    if p.size == 0:
        return Curve()
    p = np.concatenate([p, np.zeros(prior), np.ones(prior)])
    r = np.concatenate([r, np.zeros(prior), np.ones(prior)])
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(p, r)
    xs = np.asarray(iso.X_thresholds_, dtype=np.float64)
    ys = np.asarray(iso.y_thresholds_, dtype=np.float64)
    return Curve(tuple(float(v) for v in xs), tuple(float(v) for v in ys))


def precision_threshold(probs: Sequence[float] | np.ndarray, right: Sequence[bool] | np.ndarray,
                        precision: float, min_support: int = 10) -> float:
    """The lowest probability t such that the held-out answers with probability >= t are right at least
    `precision` of the time (and there are at least `min_support` of them); above 1 (never) when no t
    qualifies. Ties share one t, so the returned t's precision is what was measured."""
    p = np.asarray(probs, dtype=np.float64)
    r = np.asarray(right, dtype=np.float64)
    if p.size == 0:
        return 2.0
    order = np.argsort(-p, kind="stable")
    p, r = p[order], r[order]
    cum = np.cumsum(r) / np.arange(1, p.size + 1)
    best = 2.0
    for i in range(p.size):
        if i + 1 < p.size and p[i + 1] == p[i]:
            continue  # the prefix must end at a change of probability (ties go together)
        if i + 1 >= min_support and cum[i] >= precision:
            best = float(p[i])
    return best


def expected_calibration_error(probs: Sequence[float] | np.ndarray, right: Sequence[bool] | np.ndarray,
                               bins: int = 10) -> float:
    """Sum over equal-width bins of |accuracy - mean probability| weighted by the bin's share."""
    p = np.asarray(probs, dtype=np.float64)
    r = np.asarray(right, dtype=np.float64)
    if p.size == 0:
        return 0.0
    which = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.mean() * abs(r[mask].mean() - p[mask].mean())
    return float(total)


def auroc(probs: Sequence[float] | np.ndarray, right: Sequence[bool] | np.ndarray) -> float | None:
    """How well the probability ranks right answers above wrong ones (None with only one kind)."""
    p = np.asarray(probs, dtype=np.float64)
    r = np.asarray(right, dtype=bool)
    if r.all() or not r.any():
        return None
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(r, p))


def sign_test(wins: int, losses: int) -> float:
    """P(at least `wins` of wins + losses fair coin tosses come up heads): one-sided, for paired
    comparisons where only the examples one side got right and the other wrong count."""
    n = wins + losses
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2 ** n if n else 1.0
