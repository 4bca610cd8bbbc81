"""Aggregating grader scores: means with 95 % intervals, win/tie/loss, and the verdict.

``mean_ci(scores)`` picks the interval by the data. Scores that are all 0 or 1 (string checks,
JSON validity, most tool-call matches) are a proportion and get the **Wilson score interval**,
which stays inside [0, 1] and keeps a useful width at 0 % or 100 % (a t-interval collapses to
zero width there, so 20 passes out of 20 would claim certainty). Other scores get the
**Student t-interval** (t quantiles from a table for up to 30 degrees of freedom, the
Cornish–Fisher expansion beyond, accurate to 1e-4), clipped to [0, 1] since every grader
scores in [0, 1]. One score gives the whole [0, 1]; none gives ``None`` bounds.

``verdict(summaries, thresholds)`` checks the operator's thresholds, keyed by grader name::

    {"exact": 0.9}                                   # the mean must be >= 0.9
    {"judge": {"min_mean": 0.9, "min_lower_bound": 0.85, "min_n": 200}}

A bare number bounds the **mean** (what an operator reads in the report); ``min_lower_bound``
bounds the interval's lower end, which also fails a small sample that only got lucky, and
``min_n`` asks for enough applicable items. A grader with no applicable item fails every
threshold set on it. For the pairwise judge, pass ``WinTieLoss.non_loss()`` (wins and ties
count: a student that matches its teacher ties) under the judge grader's name.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypeGuard

from proxy.evals.graders import GraderError

Outcome = Literal["win", "tie", "loss"]
Method = Literal["wilson", "t", "none"]

_Z = 1.959963984540054  # the normal distribution's 97.5 % quantile
# two-sided 95 % quantiles of Student's t, for 1..30 degrees of freedom
_T95 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)  # fmt: skip
_THRESHOLD_KEYS = ("min_mean", "min_lower_bound", "min_n")


@dataclass(frozen=True, slots=True)
class Summary:
    """A grader's mean over the items it applied to, with a 95 % interval (``None`` when
    ``n`` is 0) and the interval's method."""

    mean: float | None
    low: float | None
    high: float | None
    n: int
    method: Method


@dataclass(frozen=True, slots=True)
class WinTieLoss:
    """The student's pairwise-judge outcomes against the teacher."""

    wins: int
    ties: int
    losses: int

    @property
    def n(self) -> int:
        return self.wins + self.ties + self.losses

    def rates(self) -> tuple[float, float, float] | None:
        """(win, tie, loss) shares, or ``None`` without outcomes."""
        if not self.n:
            return None
        return self.wins / self.n, self.ties / self.n, self.losses / self.n

    def non_loss(self) -> Summary:
        """The share of wins and ties, with its Wilson interval."""
        return mean_ci([0.0] * self.losses + [1.0] * (self.wins + self.ties))

    def win(self) -> Summary:
        """The share of wins, with its Wilson interval."""
        return mean_ci([0.0] * (self.ties + self.losses) + [1.0] * self.wins)


@dataclass(frozen=True, slots=True)
class Threshold:
    min_mean: float | None = None
    min_lower_bound: float | None = None
    min_n: int | None = None


def mean_ci(scores: Sequence[float]) -> Summary:
    """The mean of ``scores`` with a 95 % interval (see the module docstring for which)."""
    n = len(scores)
    if n == 0:
        return Summary(None, None, None, 0, "none")
    mean = math.fsum(scores) / n
    if all(score in (0.0, 1.0) for score in scores):
        low, high = _wilson(mean, n)
        return Summary(mean, low, high, n, "wilson")
    if n == 1:
        return Summary(mean, 0.0, 1.0, 1, "t")
    variance = math.fsum((score - mean) ** 2 for score in scores) / (n - 1)
    half = _t95(n - 1) * math.sqrt(variance / n)
    return Summary(mean, max(0.0, mean - half), min(1.0, mean + half), n, "t")


def win_tie_loss(outcomes: Iterable[Outcome | None]) -> WinTieLoss:
    """Count the outcomes; ``None`` (the judge gave no usable verdict) is left out."""
    counts = Counter(outcome for outcome in outcomes if outcome is not None)
    return WinTieLoss(wins=counts["win"], ties=counts["tie"], losses=counts["loss"])


def parse_thresholds(
    obj: object, grader_names: Collection[str] | None = None, *, param: str = "thresholds"
) -> dict[str, Threshold]:
    """The operator's thresholds (see the module docstring); ``GraderError`` when one is bad
    or, given ``grader_names``, names no grader."""
    if not isinstance(obj, Mapping):
        raise GraderError("thresholds must be a JSON object keyed by grader name", param)
    thresholds: dict[str, Threshold] = {}
    for name, spec in obj.items():
        where = f"{param}.{name}"
        if grader_names is not None and name not in grader_names:
            raise GraderError(f"threshold for {name!r}, which is not a grader of this eval", where)
        thresholds[name] = _threshold(
            spec if isinstance(spec, Mapping) else {"min_mean": spec}, where
        )
    return thresholds


def verdict(
    summaries: Mapping[str, Summary], thresholds: Mapping[str, object]
) -> tuple[bool, list[str]]:
    """(passed, one reason per failed check). ``thresholds`` is the operator's JSON (or
    ``parse_thresholds``' result); no thresholds pass. A threshold on a grader missing from
    ``summaries`` fails."""
    reasons: list[str] = []
    for name, spec in thresholds.items():
        threshold = spec if isinstance(spec, Threshold) else parse_thresholds({name: spec})[name]
        summary = summaries.get(name)
        if summary is None or summary.n == 0 or summary.mean is None or summary.low is None:
            reasons.append(f"{name}: no applicable items to score")
            continue
        if threshold.min_n is not None and summary.n < threshold.min_n:
            reasons.append(f"{name}: n {summary.n} < min_n {threshold.min_n}")
        if threshold.min_mean is not None and summary.mean < threshold.min_mean:
            reasons.append(
                f"{name}: mean {summary.mean:.3f} < min_mean {threshold.min_mean:g} (n={summary.n})"
            )
        if threshold.min_lower_bound is not None and summary.low < threshold.min_lower_bound:
            reasons.append(
                f"{name}: 95% CI lower bound {summary.low:.3f} < min_lower_bound "
                f"{threshold.min_lower_bound:g} (mean {summary.mean:.3f}, n={summary.n})"
            )
    return not reasons, reasons


def _threshold(spec: Mapping[str, object], where: str) -> Threshold:
    unknown = [key for key in spec if key not in _THRESHOLD_KEYS]
    if unknown or not spec:
        allowed = ", ".join(_THRESHOLD_KEYS)
        raise GraderError(f"a threshold is a number or an object of {allowed}", where)
    bounds: dict[str, float | None] = {}
    for key in ("min_mean", "min_lower_bound"):
        value = spec.get(key)
        if value is None:
            bounds[key] = None
        elif _is_fraction(value):
            bounds[key] = float(value)
        else:
            raise GraderError(f"{key} must be a number between 0 and 1", f"{where}.{key}")
    min_n = spec.get("min_n")
    if min_n is not None and (isinstance(min_n, bool) or not isinstance(min_n, int) or min_n < 1):
        raise GraderError("min_n must be a positive integer", f"{where}.min_n")
    return Threshold(bounds["min_mean"], bounds["min_lower_bound"], min_n)


def _wilson(share: float, n: int) -> tuple[float, float]:
    z2 = _Z * _Z
    centre = (share + z2 / (2 * n)) / (1 + z2 / n)
    half = _Z * math.sqrt(share * (1 - share) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _t95(df: int) -> float:
    if df <= len(_T95):
        return _T95[df - 1]
    z = _Z  # Cornish–Fisher expansion of the t quantile in powers of 1/df
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    return z + g1 / df + g2 / df**2 + g3 / df**3


def _is_fraction(value: object) -> TypeGuard[float]:
    return not isinstance(value, bool) and isinstance(value, int | float) and 0 <= value <= 1
