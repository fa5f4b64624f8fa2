"""The statistics behind the report's marks: paired t intervals over seeds, the jackknife over leave-one-out member
combinations (ensembles, MultiSWAG), and the chance gate.

* A method's difference from MAP is paired by training seed: d_i = metric(method, seed i) - metric(MAP, seed i).  Its
  95% interval is  mean(d) +- t_{0.975, n-1} * sd(d) / sqrt(n)  (Student's t with n - 1 degrees of freedom); a
  difference is marked only when that interval excludes 0 (the two-sided paired t-test at 5%).  With 3 seeds the
  interval is mean +- 4.30 s.e.; with 5 seeds, +- 2.78 s.e.
* An ensemble of n seeds is one number, with no spread.  Its rows are the n leave-one-out ensembles (n - 1 members
  each), each paired with the mean MAP of its own members; the standard error of their mean difference is the
  jackknife's,  sqrt((n - 1) / n * sum_i (d_i - mean(d))^2),  and the interval again uses t with n - 1 degrees of
  freedom.  It estimates the difference an (n - 1)-member ensemble makes, and how much it depends on which seeds
  it is built from.
* A split's method comparison is shown only when MAP is above chance there: its mean accuracy over seeds must exceed
  the 95% quantile of the accuracy that a chance predictor (always the most frequent label) reaches on the split's N
  rows, Binomial(N, p0) / N.  On a model at chance the best-calibrated predictive is the uniform one, so every
  calibration "gain" there is flattening, not knowledge of what the model does not know.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A mean difference with its standard error, 95% interval, two-sided p-value, count and how the spread was
    estimated ("paired t", "jackknife", or "none" for a single value)."""
    mean: float
    se: float
    lo: float
    hi: float
    p: float
    n: int
    kind: str

    @property
    def excludes_zero(self) -> bool:
        return self.n > 1 and not math.isnan(self.lo) and (self.lo > 0 or self.hi < 0)


def t_quantile(df: int, level: float = LEVEL) -> float:
    from scipy.stats import t
    return float(t.ppf(0.5 + level / 2, df))


def _interval(mean: float, se: float, n: int, kind: str) -> Interval:
    from scipy.stats import t
    if n < 2 or math.isnan(se):
        return Interval(mean, math.nan, math.nan, math.nan, math.nan, n, "none")
    half = t_quantile(n - 1) * se
    p = 1.0 if se == 0 and mean == 0 else 0.0 if se == 0 else float(2 * t.sf(abs(mean) / se, n - 1))
    return Interval(mean, se, mean - half, mean + half, p, n, kind)


def paired_interval(diffs) -> Interval:
    """The paired t interval of per-seed differences (NaN entries dropped)."""
    d = np.asarray(diffs, float)
    d = d[~np.isnan(d)]
    if len(d) == 0:
        return Interval(math.nan, math.nan, math.nan, math.nan, math.nan, 0, "none")
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else math.nan
    return _interval(float(d.mean()), se, len(d), "paired t")


def jackknife_interval(leave_one_out) -> Interval:
    """The jackknife interval of a statistic from its n leave-one-out values (NaN entries dropped)."""
    d = np.asarray(leave_one_out, float)
    d = d[~np.isnan(d)]
    n = len(d)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, math.nan, math.nan, 0, "none")
    se = float(math.sqrt((n - 1) / n * np.sum((d - d.mean()) ** 2))) if n > 1 else math.nan
    return _interval(float(d.mean()), se, n, "jackknife")


def mean_se(values) -> tuple[float, float, int]:
    """(mean, standard error, count) over the non-NaN entries; the s.e. is NaN for fewer than 2."""
    v = np.asarray(values, float)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else math.nan, len(v)


@dataclass(frozen=True)
class Gate:
    """Whether MAP is above chance on a split: its mean accuracy against the 95% quantile of a chance predictor's."""
    accuracy: float
    chance: float
    bound: float
    rows: int

    @property
    def passed(self) -> bool:
        return self.accuracy > self.bound

    def message(self, split: str) -> str:
        verdict = "above" if self.passed else "NOT above"
        return (f"{split}: MAP accuracy {self.accuracy:.4f} is {verdict} chance {self.chance:.4f} (the most frequent label; "
                f"binomial 95% bound {self.bound:.4f} for {self.rows} rows)"
                + ("" if self.passed else ": no method comparison is shown for this split"))


def chance_gate(accuracy: float, chance: float, rows: int) -> Gate:
    """The 95% quantile of Binomial(rows, chance) / rows: the accuracy a chance predictor exceeds 5% of the time."""
    from scipy.stats import binom
    bound = float(binom.ppf(LEVEL, rows, chance)) / rows if rows else math.nan
    return Gate(float(accuracy), float(chance), bound, int(rows))


def majority_rate(labels) -> float:
    """The accuracy of always predicting the most frequent label."""
    labels = np.asarray(labels, dtype=np.int64)
    return float(np.bincount(labels).max() / len(labels)) if len(labels) else math.nan
