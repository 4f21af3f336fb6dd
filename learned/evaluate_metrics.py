"""The measurements behind ``carecourse evaluate``: pure functions over arrays and frames.

- **Marginals**: total-variation distance (TVD) of binned columns, one at a time and in
  pairs (the measure of the NIST CRC and of McKenna et al., "Winning the NIST Contest",
  J Priv Confid 2021), and the two-sample Kolmogorov-Smirnov statistic for numbers.
- **Associations**: Pearson correlation of numeric columns and Cramér's V of binned ones
  (Cramér, *Mathematical Methods of Statistics*, 1946).
- **Time to event**: Kaplan-Meier curves with Greenwood confidence bands and the log-rank
  test (lifelines), and the largest vertical gap between two curves.
- **AUC** with a percentile bootstrap interval (Efron and Tibshirani, *An Introduction to
  the Bootstrap*, 1993).
- **Distance to closest record** in Gower's distance for mixed data (Gower, Biometrics
  1971;27:857-871), and the distance-based membership-inference attack: the closer a
  record is to a synthetic one, the likelier it was a training member (Yeom et al., "Privacy
  risk in machine learning", IEEE CSF 2018, define the advantage as TPR - FPR; Chen et al.,
  "GAN-Leaks", ACM CCS 2020, the distance attack on generative models).

>>> tvd(np.array([5, 5]), np.array([5, 5]))
0.0
>>> tvd(np.array([10, 0]), np.array([0, 10]))
1.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = [
    "MISSING",
    "Discretizer",
    "tvd",
    "ks",
    "cramers_v_matrix",
    "correlation_matrix",
    "KMCurve",
    "KMComparison",
    "kaplan_meier",
    "km_compare",
    "AUC",
    "auc_with_ci",
    "advantage",
    "GowerEncoder",
    "closest_distances",
]

#: The bin that missing values fall into.
MISSING = "(missing)"


# --- binning -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Discretizer:
    """Bins for every column, fitted on a reference frame (the real data) and applied the
    same way to every frame compared with it.

    A numeric column with at most ``bins`` distinct reference values gets one bin per
    value (edges half-way between them); otherwise its edges are the reference's
    quantiles (at most ``bins`` bins, fewer when quantiles coincide). A categorical
    column's bins are the levels seen in any of the frames. Missing values have a bin of
    their own.
    """

    edges: dict[str, np.ndarray]
    levels: dict[str, tuple[str, ...]]
    labels: dict[str, tuple[str, ...]]

    @classmethod
    def fit(cls, reference: pd.DataFrame, others: Sequence[pd.DataFrame] = (),
            bins: int = 10) -> Discretizer:
        edges: dict[str, np.ndarray] = {}
        levels: dict[str, tuple[str, ...]] = {}
        labels: dict[str, tuple[str, ...]] = {}
        for c in reference.columns:
            col = reference[c]
            if isinstance(col.dtype, pd.CategoricalDtype):
                seen: list[str] = []
                for frame in (reference, *others):
                    seen += [str(v) for v in pd.unique(frame[c].dropna().astype(str))]
                levels[c] = tuple(sorted(set(seen), key=_level_order))
                labels[c] = (*levels[c], MISSING)
                continue
            values = col.dropna().to_numpy(dtype=float)
            distinct = np.unique(values)
            if len(distinct) <= bins:
                e = (distinct[1:] + distinct[:-1]) / 2
                names = tuple(f"{v:g}" for v in distinct) or ("(all)",)
            else:
                e = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1]))
                bounds = [-math.inf, *e.tolist(), math.inf]
                names = tuple(_interval(a, b) for a, b in zip(bounds[:-1], bounds[1:],
                                                               strict=True))
            edges[c] = e
            labels[c] = (*names, MISSING)
        return cls(edges, levels, labels)

    @property
    def columns(self) -> list[str]:
        return list(self.labels)

    def size(self, column: str) -> int:
        return len(self.labels[column])

    def codes(self, frame: pd.DataFrame) -> np.ndarray:
        """[rows, columns] bin numbers (0 .. size-1; the last is the missing bin)."""
        out = np.zeros((len(frame), len(self.labels)), dtype=np.int64)
        for j, c in enumerate(self.labels):
            col = frame[c]
            missing = col.isna().to_numpy()
            if c in self.levels:
                index = {v: i for i, v in enumerate(self.levels[c])}
                text = col.astype(object).where(~missing, None)
                # A level that only this frame has is counted as missing rather than
                # dropped; fit() sees every frame, so that happens only to other frames.
                out[:, j] = [index.get(str(v), len(index)) if v is not None else len(index)
                             for v in text]
            else:
                values = col.to_numpy(dtype=float)
                b = np.searchsorted(self.edges[c], np.nan_to_num(values), side="right")
                out[:, j] = np.where(missing, len(self.edges[c]) + 1, b)
        return out


def _level_order(level: str) -> tuple[int, float, str]:
    """Levels that are numbers ("70", "100") in numeric order, then the others."""
    try:
        return (0, float(level), level)
    except ValueError:
        return (1, 0.0, level)


def _interval(a: float, b: float) -> str:
    if math.isinf(a):
        return f"< {b:.4g}"
    if math.isinf(b):
        return f">= {a:.4g}"
    return f"[{a:.4g}, {b:.4g})"


def counts(codes: np.ndarray, size: int) -> np.ndarray:
    return np.bincount(codes, minlength=size).astype(float)


def joint_counts(a: np.ndarray, b: np.ndarray, size_a: int, size_b: int) -> np.ndarray:
    return np.bincount(a * size_b + b, minlength=size_a * size_b).astype(float)


def tvd(p: np.ndarray, q: np.ndarray) -> float:
    """Total-variation distance of two histograms over the same bins (counts or shares):
    half the L1 distance of their shares, 0 for the same distribution, 1 for disjoint
    ones."""
    p = np.asarray(p, dtype=float)
    q = np.asarray(q, dtype=float)
    if p.sum() <= 0 or q.sum() <= 0:
        return math.nan
    return float(0.5 * np.abs(p / p.sum() - q / q.sum()).sum())


def ks(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic and p-value of the non-missing values."""
    from scipy.stats import ks_2samp

    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    if not len(a) or not len(b):
        return math.nan, math.nan
    r = ks_2samp(a, b)
    return float(r.statistic), float(r.pvalue)


def cramers_v_matrix(codes: np.ndarray, sizes: Sequence[int]) -> np.ndarray:
    """Cramér's V of every pair of binned columns (1 on the diagonal; NaN where a column
    has a single bin in use)."""
    from scipy.stats.contingency import association

    k = codes.shape[1]
    out = np.eye(k)
    for i in range(k):
        for j in range(i + 1, k):
            table = joint_counts(codes[:, i], codes[:, j], sizes[i], sizes[j])
            table = table.reshape(sizes[i], sizes[j])
            table = table[table.sum(axis=1) > 0][:, table.sum(axis=0) > 0]
            v = math.nan
            if table.shape[0] > 1 and table.shape[1] > 1:
                v = float(association(table.astype(np.int64), method="cramer"))
            out[i, j] = out[j, i] = v
    return out


def correlation_matrix(frame: pd.DataFrame) -> np.ndarray:
    """Pearson correlations of a frame's columns over the rows where both are present
    (NaN for a constant column)."""
    return frame.astype(float).corr(method="pearson").to_numpy()


# --- Kaplan-Meier ----------------------------------------------------------------------------

@dataclass(frozen=True)
class KMCurve:
    """A Kaplan-Meier estimate: survival (no event yet) at each time, with its 95%
    confidence band (Greenwood's variance, exponential transform, as lifelines gives it)."""

    label: str
    times: np.ndarray
    survival: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    patients: int
    events: int

    def at(self, t: np.ndarray) -> np.ndarray:
        """Survival at times ``t`` (the curve is a right-continuous step function)."""
        i = np.searchsorted(self.times, t, side="right") - 1
        return np.where(i >= 0, self.survival[np.clip(i, 0, None)], 1.0)

    def median(self) -> float:
        """The first time survival falls to 0.5 or below (inf when it never does)."""
        below = np.flatnonzero(self.survival <= 0.5)
        return float(self.times[below[0]]) if len(below) else math.inf


@dataclass(frozen=True)
class KMComparison:
    """Two Kaplan-Meier curves of the same event, censored at a common horizon."""

    a: KMCurve
    b: KMCurve
    horizon: float
    #: The largest vertical distance between the curves before the horizon, and where.
    gap: float
    gap_time: float
    logrank_statistic: float
    logrank_p: float


def kaplan_meier(durations: np.ndarray, observed: np.ndarray, label: str) -> KMCurve:
    """The Kaplan-Meier curve of ``durations`` (time to the event or to censoring) with
    ``observed`` (1: the event happened then; 0: censored)."""
    from lifelines import KaplanMeierFitter

    durations = np.asarray(durations, dtype=float)
    observed = np.asarray(observed, dtype=bool)
    if not len(durations):
        raise ValueError("a Kaplan-Meier curve needs at least one patient")
    kmf = KaplanMeierFitter(label=label).fit(durations, observed)
    sf = kmf.survival_function_.iloc[:, 0]
    ci = kmf.confidence_interval_survival_function_
    return KMCurve(label, sf.index.to_numpy(dtype=float), sf.to_numpy(dtype=float),
                   ci.iloc[:, 0].to_numpy(dtype=float), ci.iloc[:, 1].to_numpy(dtype=float),
                   len(durations), int(observed.sum()))


def km_compare(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], *,
               labels: tuple[str, str] = ("real", "synthetic"),
               horizon: float | None = None) -> KMComparison:
    """Compare the times to one event in two groups, each given as (durations,
    observed). Both are censored at ``horizon`` (default: the shorter of the two longest
    follow-ups, so that neither curve is extrapolated), then compared by the largest gap
    between their Kaplan-Meier curves and the log-rank test.

    >>> t = np.array([1.0, 2.0, 3.0, 4.0]); e = np.array([1, 0, 1, 1])
    >>> km_compare((t, e), (t, e)).gap
    0.0
    """
    from lifelines.statistics import logrank_test

    (ta, ea), (tb, eb) = ((np.asarray(t, dtype=float), np.asarray(e, dtype=bool))
                          for t, e in (a, b))
    if not len(ta) or not len(tb):
        raise ValueError("both groups need at least one patient")
    h = float(min(ta.max(), tb.max()) if horizon is None else horizon)
    ea, eb = ea & (ta <= h), eb & (tb <= h)
    ta, tb = np.minimum(ta, h), np.minimum(tb, h)
    ca, cb = kaplan_meier(ta, ea, labels[0]), kaplan_meier(tb, eb, labels[1])
    grid = np.union1d(ca.times, cb.times)
    grid = grid[grid <= h]
    diff = np.abs(ca.at(grid) - cb.at(grid))
    k = int(np.argmax(diff)) if len(diff) else 0
    gap = float(diff[k]) if len(diff) else 0.0
    if ea.any() or eb.any():
        test = logrank_test(ta, tb, event_observed_A=ea, event_observed_B=eb)
        stat, p = float(test.test_statistic), float(test.p_value)
    else:
        stat, p = 0.0, 1.0  # no events on either side: nothing tells the groups apart
    return KMComparison(ca, cb, h, gap, float(grid[k]) if len(grid) else 0.0, stat, p)


# --- AUC ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AUC:
    """Area under the ROC curve with a 95% percentile-bootstrap interval."""

    value: float
    low: float
    high: float
    n: int
    positives: int


def auc_with_ci(y: np.ndarray, score: np.ndarray, *, rng: np.random.Generator,
                resamples: int = 1000, level: float = 0.95) -> AUC | None:
    """The AUC of ``score`` for the 0/1 labels ``y``, with a percentile bootstrap interval
    over ``resamples`` resamples of the rows (a resample with a single class has no AUC
    and is left out). None when ``y`` has a single class: the AUC is not defined."""
    y = np.asarray(y, dtype=bool)
    score = np.asarray(score, dtype=float)
    pos = int(y.sum())
    if pos == 0 or pos == len(y):
        return None
    value = float(_auc(y[None, :], score[None, :])[0])
    n = len(y)
    stats = []
    # Resamples in blocks, so that memory stays at about 4 million values whatever n.
    block = max(1, min(resamples, 4_000_000 // n))
    for start in range(0, resamples, block):
        i = rng.integers(0, n, (min(block, resamples - start), n))
        stats.append(_auc(y[i], score[i]))
    boot = np.concatenate(stats)
    boot = boot[~np.isnan(boot)]
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return AUC(value, float(lo), float(hi), n, pos)


def _auc(y: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Row-wise AUC by the Mann-Whitney U statistic (ties count one half): [rows];
    NaN for a row with a single class."""
    from scipy.stats import rankdata

    ranks = rankdata(score, axis=1)
    n1 = y.sum(axis=1).astype(float)
    n0 = y.shape[1] - n1
    u = (ranks * y).sum(axis=1) - n1 * (n1 + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n1 > 0) & (n0 > 0), u / (n1 * n0), np.nan)


def advantage(y: np.ndarray, score: np.ndarray) -> float:
    """The membership advantage of a threshold attack: the largest TPR - FPR over all
    thresholds on ``score`` (0: no better than guessing, 1: perfect)."""
    from sklearn.metrics import roc_curve

    y = np.asarray(y, dtype=int)
    if y.min() == y.max():
        return math.nan
    fpr, tpr, _ = roc_curve(y, score)
    return float(np.max(tpr - fpr))


# --- distances -----------------------------------------------------------------------------

@dataclass(frozen=True)
class GowerEncoder:
    """Encodes mixed records so that the L1 distance between two encodings, divided by
    the number of columns, is Gower's distance: per column, |difference| / range for
    numbers (the range of the reference frame) and 0/1 for categories (missing is a
    category of its own; a missing number is at least 1 away from any present one)."""

    numeric: tuple[str, ...]
    categorical: dict[str, tuple[str, ...]]
    low: tuple[float, ...]
    span: tuple[float, ...]

    @classmethod
    def fit(cls, reference: pd.DataFrame, others: Sequence[pd.DataFrame] = ()
            ) -> GowerEncoder:
        numeric, low, span = [], [], []
        cats: dict[str, tuple[str, ...]] = {}
        for c in reference.columns:
            col = reference[c]
            if isinstance(col.dtype, pd.CategoricalDtype):
                seen = set()
                for frame in (reference, *others):
                    seen |= {str(v) for v in frame[c].dropna().astype(str).unique()}
                cats[c] = tuple(sorted(seen))
            else:
                v = col.to_numpy(dtype=float)
                lo, hi = (np.nanmin(v), np.nanmax(v)) if np.isfinite(v).any() else (0.0, 0.0)
                numeric.append(c)
                low.append(float(lo))
                span.append(float(hi - lo) if hi > lo else 1.0)
        return cls(tuple(numeric), cats, tuple(low), tuple(span))

    @property
    def width(self) -> int:
        """The number of columns (the divisor that makes L1 distances Gower's)."""
        return len(self.numeric) + len(self.categorical)

    def encode(self, frame: pd.DataFrame) -> np.ndarray:
        parts = []
        for c, lo, sp in zip(self.numeric, self.low, self.span, strict=True):
            v = frame[c].to_numpy(dtype=float)
            miss = np.isnan(v)
            # A missing number sits in a dimension of its own: at least 1 away from any
            # present value.
            parts.append(np.where(miss, 0.0, (v - lo) / sp)[:, None])
            parts.append(miss.astype(float)[:, None])
        for c, levels in self.categorical.items():
            index = {v: i for i, v in enumerate(levels)}
            col = frame[c]
            k = np.array([index.get(str(v), len(levels)) if pd.notna(v) else len(levels)
                          for v in col], dtype=np.int64)
            # One-hot halves: two different categories are 0.5 + 0.5 = 1 apart in L1.
            onehot = np.zeros((len(frame), len(levels) + 1))
            onehot[np.arange(len(frame)), k] = 0.5
            parts.append(onehot)
        if not parts:
            return np.zeros((len(frame), 0))
        return np.hstack(parts)


def closest_distances(query: np.ndarray, reference: np.ndarray, width: int) -> np.ndarray:
    """Gower distance of each query row to its nearest reference row."""
    from sklearn.neighbors import NearestNeighbors

    if not len(query):
        return np.zeros(0)
    nn = NearestNeighbors(n_neighbors=1, metric="manhattan").fit(reference)
    d, _ = nn.kneighbors(query)
    return d[:, 0] / max(width, 1)
