"""Comparing trial arms: a synthetic control arm against real arm data.

- Table 1 with standardized mean differences (SMD): for a continuous covariate the
  difference in means over the pooled standard deviation, for a categorical one the
  multinomial SMD of Yang and Dalton (SAS Global Forum 2012, paper 335-2012), which is
  the absolute difference in proportions over its pooled SD for a binary covariate.
  Austin (Stat Med 2009;28:3083-3107) gives 0.1 as the threshold of a negligible
  imbalance, which regulators have adopted for baseline comparability.
- Kaplan-Meier curves with pointwise 95% confidence intervals (Greenwood's variance on
  the log(-log) scale, as lifelines computes them), median time to event with its CI
  (Brookmeyer and Crowley 1982, through lifelines), the log-rank test, and the largest
  gap between two curves over a horizon.
- Cox proportional-hazards hazard ratios with Wald 95% CIs (lifelines): synthetic vs real
  control, and, given a real treatment arm, treatment vs synthetic control next to
  treatment vs real control.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from modules.errors import ConfigError, DataError, Problem

__all__ = ["Arm", "TableRow", "SurvivalSummary", "HazardRatio", "Comparison", "smd_continuous",
           "smd_categorical", "table_one", "km_summary", "km_max_gap", "cox_hazard_ratio",
           "compare_arms", "categorical_columns", "read_real_arm", "read_synthetic_arm",
           "fit_cox"]


@dataclass(frozen=True, eq=False)
class Arm:
    """One arm: time to event (days), event indicator (1 event, 0 censored), baseline
    covariates (one row per subject, same order), and optional case weights."""

    name: str
    time: np.ndarray
    event: np.ndarray
    covariates: pd.DataFrame = field(default_factory=pd.DataFrame)
    weights: np.ndarray | None = None

    def __post_init__(self) -> None:
        if len(self.time) != len(self.event):
            raise ValueError("time and event must have the same length")
        if len(self.time) == 0:
            raise ConfigError(f"arm {self.name!r} has no subjects")

    @property
    def n(self) -> int:
        return len(self.time)

    @property
    def events(self) -> int:
        return int(np.sum(self.event))


@dataclass(frozen=True)
class TableRow:
    """A Table 1 row: a covariate (and level, for categorical ones), a summary per arm
    ("mean (SD)" or "n (%)"), and the SMD between the first two arms on the covariate's
    first row (categorical covariates carry one SMD over all their levels)."""

    variable: str
    level: str
    summaries: tuple[str, ...]
    smd: float | None


@dataclass(frozen=True)
class SurvivalSummary:
    arm: str
    n: int
    events: int
    median: float
    median_low: float
    median_high: float
    #: Kaplan-Meier estimate at the times of ``timeline`` with its pointwise 95% CI.
    timeline: np.ndarray
    survival: np.ndarray
    low: np.ndarray
    high: np.ndarray


@dataclass(frozen=True)
class HazardRatio:
    """Hazard ratio of ``arm`` against ``reference`` with its Wald 95% CI."""

    arm: str
    reference: str
    hr: float
    low: float
    high: float
    p: float
    log_hr: float
    se: float

    @property
    def ci_contains_1(self) -> bool:
        return self.low <= 1.0 <= self.high


@dataclass(frozen=True)
class Comparison:
    """Everything ``carecourse trial compare`` reports."""

    table: tuple[TableRow, ...]
    arms: tuple[str, ...]
    max_abs_smd: float | None
    survival: tuple[SurvivalSummary, ...]
    synthetic_vs_real: HazardRatio
    logrank_p: float
    km_max_gap: float
    horizon: float
    treatment_vs_synthetic: HazardRatio | None = None
    treatment_vs_real: HazardRatio | None = None


# --------------------------------------------------------------------------- Table 1

def smd_continuous(a: np.ndarray, b: np.ndarray) -> float:
    """(mean a - mean b) / sqrt((var a + var b) / 2); 0 when both are constant and equal.

    >>> round(smd_continuous(np.array([1.0, 2, 3]), np.array([2.0, 3, 4])), 3)
    -1.0
    """
    a = a[~np.isnan(a)]
    b = b[~np.isnan(b)]
    if not len(a) or not len(b):
        return math.nan
    va = float(np.var(a, ddof=1)) if len(a) > 1 else 0.0
    vb = float(np.var(b, ddof=1)) if len(b) > 1 else 0.0
    pooled = math.sqrt((va + vb) / 2.0)
    diff = float(np.mean(a) - np.mean(b))
    if pooled == 0.0:
        return 0.0 if diff == 0.0 else math.copysign(math.inf, diff)
    return diff / pooled


def smd_categorical(a: Sequence[str], b: Sequence[str]) -> float:
    """Yang and Dalton's multinomial SMD: sqrt((p - q)' S^-1 (p - q)) over the levels but
    the first, with S the mean of the two multinomial covariance matrices; for two
    levels, |p - q| / sqrt((p(1-p) + q(1-q)) / 2).

    >>> round(smd_categorical(["x"] * 6 + ["y"] * 4, ["x"] * 4 + ["y"] * 6), 3)
    0.408
    """
    levels = sorted(set(a) | set(b))
    if len(levels) < 2:
        return 0.0
    pa = np.array([np.mean([v == lv for v in a]) for lv in levels[1:]])
    pb = np.array([np.mean([v == lv for v in b]) for lv in levels[1:]])
    sa = np.diag(pa) - np.outer(pa, pa)
    sb = np.diag(pb) - np.outer(pb, pb)
    s = (sa + sb) / 2.0
    d = pa - pb
    if not np.any(d):
        return 0.0
    inv = np.linalg.pinv(s)
    return float(math.sqrt(max(0.0, float(d @ inv @ d))))


def _text(v: object) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def categorical_columns(frames: Sequence[pd.DataFrame], columns: Sequence[str],
                        forced: Sequence[str] = ()) -> set[str]:
    """Columns treated as categorical: text columns, columns named in ``forced``, and
    numeric columns with at most 6 distinct values over all arms (codes such as sex 1/2
    or a Karnofsky score 70-100)."""
    out = set(forced)
    for c in columns:
        values = pd.concat([f[c] for f in frames if c in f.columns], ignore_index=True)
        if not pd.api.types.is_numeric_dtype(values) or values.dropna().nunique() <= 6:
            out.add(c)
    return out


def table_one(arms: Sequence[Arm], columns: Sequence[str],
              categorical: set[str] | None = None) -> tuple[tuple[TableRow, ...], float | None]:
    """Table 1 over ``columns`` for every arm, with the SMD of the first arm against the
    second; and the largest absolute SMD."""
    frames = [a.covariates for a in arms]
    cats = categorical if categorical is not None else categorical_columns(frames, columns)
    rows: list[TableRow] = []
    worst: float | None = None
    rows.append(TableRow("N", "", tuple(str(a.n) for a in arms), None))
    for col in columns:
        if col in cats:
            vals = [[_text(v) for v in f[col].dropna()] for f in frames]
            smd = smd_categorical(vals[0], vals[1])
            levels = sorted(set().union(*vals), key=_level_key)
            for i, lv in enumerate(levels):
                summ = tuple(f"{sum(v == lv for v in vs)} ({100.0 * _share(vs, lv):.1f}%)"
                             for vs in vals)
                rows.append(TableRow(col, lv, summ, smd if i == 0 else None))
        else:
            nums = [pd.to_numeric(f[col], errors="coerce").to_numpy(dtype=float)
                    for f in frames]
            smd = smd_continuous(nums[0], nums[1])
            summ = tuple(f"{np.nanmean(x):.1f} ({np.nanstd(x, ddof=1):.1f})" if
                         np.sum(~np.isnan(x)) > 1 else "-" for x in nums)
            rows.append(TableRow(col, "mean (SD)", summ, smd))
        if not math.isnan(smd):
            worst = abs(smd) if worst is None else max(worst, abs(smd))
    return tuple(rows), worst


def _share(values: list[str], level: str) -> float:
    return sum(v == level for v in values) / len(values) if values else 0.0


def _level_key(v: str) -> tuple[int, float | str]:
    try:
        return (0, float(v))
    except ValueError:
        return (1, v)


# ------------------------------------------------------------------------- survival

def _kmf(arm: Arm):  # type: ignore[no-untyped-def]
    from lifelines import KaplanMeierFitter

    kmf = KaplanMeierFitter(label=arm.name)
    kmf.fit(arm.time, arm.event, weights=arm.weights)
    return kmf


def km_summary(arm: Arm) -> SurvivalSummary:
    """Kaplan-Meier curve with pointwise 95% CI and the median time with its CI (inf
    when the curve does not reach 0.5)."""
    import warnings

    from lifelines.utils import median_survival_times

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lifelines warns about non-integer weights
        kmf = _kmf(arm)
    ci = kmf.confidence_interval_survival_function_
    med_ci = median_survival_times(ci)
    # A weighted arm (the hybrid control) counts its patients and events by weight.
    n, events = (arm.n, arm.events) if arm.weights is None else (
        int(round(float(np.sum(arm.weights)))),
        int(round(float(np.sum(arm.weights * arm.event)))))
    return SurvivalSummary(
        arm=arm.name, n=n, events=events, median=float(kmf.median_survival_time_),
        median_low=float(med_ci.iloc[0, 0]), median_high=float(med_ci.iloc[0, 1]),
        timeline=kmf.survival_function_.index.to_numpy(dtype=float),
        survival=kmf.survival_function_.iloc[:, 0].to_numpy(dtype=float),
        low=ci.iloc[:, 0].to_numpy(dtype=float), high=ci.iloc[:, 1].to_numpy(dtype=float))


def _step(s: SurvivalSummary, t: np.ndarray) -> np.ndarray:
    idx = np.searchsorted(s.timeline, t, side="right") - 1
    return np.where(idx >= 0, s.survival[np.clip(idx, 0, None)], 1.0)


def km_max_gap(a: SurvivalSummary, b: SurvivalSummary, horizon: float) -> float:
    """The largest |S_a(t) - S_b(t)| for t in [0, horizon] (both curves are step
    functions, so it is attained at one of their jump times)."""
    times = np.union1d(a.timeline, b.timeline)
    times = np.concatenate([[0.0], times[times <= horizon]])
    return float(np.max(np.abs(_step(a, times) - _step(b, times))))


def fit_cox(frame: pd.DataFrame, what: str) -> Any:
    """A lifelines Cox model of ``time`` and ``event`` on the frame's other columns.
    Raises ConfigError, naming ``what``, when the fit does not converge (an arm whose
    events all come before or after the other's, for instance)."""
    import warnings

    from lifelines import CoxPHFitter
    from lifelines.exceptions import ConvergenceError

    fix = "the arms may be separated completely (all events in one) or have too few events"
    try:
        with warnings.catch_warnings():
            # lifelines warns at length about near-separation; the check below decides
            warnings.simplefilter("ignore")
            cph = CoxPHFitter().fit(frame, duration_col="time", event_col="event")
    except ConvergenceError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "no convergence"
        raise ConfigError(f"the Cox model of {what} does not converge ({first}); {fix}") \
            from None
    # A log hazard ratio beyond +-15 (a ratio over 3 million) is a fit that ran off to
    # infinity, not an estimate.
    if not np.all(np.isfinite(cph.params_)) or np.any(np.abs(cph.params_) > 15):
        raise ConfigError(f"the Cox model of {what} has no finite estimate; {fix}")
    return cph


def cox_hazard_ratio(arm: Arm, reference: Arm) -> HazardRatio:
    """The hazard ratio of ``arm`` against ``reference`` from a Cox model with one arm
    indicator (Efron ties, lifelines), with its Wald 95% CI and p-value."""
    frame = pd.DataFrame({
        "time": np.concatenate([arm.time, reference.time]),
        "event": np.concatenate([arm.event, reference.event]),
        "arm": np.concatenate([np.ones(arm.n), np.zeros(reference.n)]),
    })
    if frame["event"].sum() == 0:
        raise ConfigError(f"no events in {arm.name} or {reference.name}: a hazard ratio "
                          "needs at least one")
    cph = fit_cox(frame, f"{arm.name} against {reference.name}")
    b = float(cph.params_["arm"])
    se = float(cph.standard_errors_["arm"])
    p = math.erfc(abs(b / se) / math.sqrt(2.0))  # two-sided Wald test, as lifelines'
    return HazardRatio(arm.name, reference.name, math.exp(b), math.exp(b - 1.959964 * se),
                       math.exp(b + 1.959964 * se), p, b, se)


def compare_arms(synthetic: Arm, real: Arm, treatment: Arm | None = None, *,
                 covariates: Sequence[str] | None = None,
                 categorical: Sequence[str] = (), horizon: float | None = None,
                 extra_curves: Mapping[str, Arm] | None = None) -> Comparison:
    """Compare a synthetic control arm with a real control arm (and a real treatment arm,
    when given) on baseline covariates and on one time-to-event endpoint. ``covariates``
    defaults to the columns both control arms have; ``horizon`` (for the largest gap
    between the curves) to the shorter of the two arms' longest follow-up."""
    from lifelines.statistics import logrank_test

    if covariates is None:
        covariates = [c for c in synthetic.covariates.columns if c in real.covariates.columns]
    missing = [c for c in covariates if c not in synthetic.covariates.columns or
               c not in real.covariates.columns]
    if missing:
        raise ConfigError(f"covariate(s) {', '.join(missing)} are not in both arms")
    arms = [synthetic, real] + ([treatment] if treatment is not None else [])
    frames = [a.covariates for a in arms if all(c in a.covariates.columns for c in covariates)]
    cats = categorical_columns(frames, covariates, categorical)
    table_arms = [a for a in arms if all(c in a.covariates.columns for c in covariates)]
    table, worst = table_one(table_arms, covariates, cats)
    curves = [km_summary(a) for a in arms]
    curves += [km_summary(a) for a in (extra_curves or {}).values()]
    if horizon is None:
        horizon = float(min(np.max(synthetic.time), np.max(real.time)))
    gap = km_max_gap(curves[0], curves[1], horizon)
    lr = logrank_test(synthetic.time, real.time, synthetic.event, real.event)
    hr = cox_hazard_ratio(synthetic, real)
    tvs = tvr = None
    if treatment is not None:
        tvs = cox_hazard_ratio(treatment, synthetic)
        tvr = cox_hazard_ratio(treatment, real)
    return Comparison(table=table, arms=tuple(a.name for a in table_arms), max_abs_smd=worst,
                      survival=tuple(curves), synthetic_vs_real=hr,
                      logrank_p=float(lr.p_value), km_max_gap=gap, horizon=horizon,
                      treatment_vs_synthetic=tvs, treatment_vs_real=tvr)


# ------------------------------------------------------------------------- reading arms

_UNIT_DAYS = {"days": 1.0, "weeks": 7.0, "months": 365.25 / 12, "years": 365.25}


def read_real_arm(path: Path, name: str, *, time: str = "time", event: str = "event",
                  time_unit: str = "days") -> Arm:
    """A real arm from a CSV (or Parquet) table, one row per subject: ``time`` (in
    ``time_unit``) to the event or censoring, ``event`` 1 for an event and 0 for
    censoring, every other column a baseline covariate. Raises DataError listing every
    problem with the file, line and column."""
    try:
        frame = pd.read_parquet(path) if path.suffix.lower() in (".parquet", ".pq") \
            else pd.read_csv(path)
    except FileNotFoundError:
        raise DataError([Problem(str(path), "", "no such file")]) from None
    except (OSError, ValueError) as exc:
        raise DataError([Problem(str(path), "", f"cannot read the table ({exc})")]) from None
    problems = [Problem(str(path), f"column {c!r}", f"missing; the table has "
                                                   f"{', '.join(map(str, frame.columns))}; "
                                                   f"name the column with --{flag}")
                for c, flag in ((time, "time"), (event, "event")) if c not in frame.columns]
    if problems:
        raise DataError(problems)
    t = pd.to_numeric(frame[time], errors="coerce").to_numpy(dtype=float)
    e = frame[event].map(lambda v: {"1": 1.0, "0": 0.0, "true": 1.0, "false": 0.0}.get(
        _text(v).strip().lower(), math.nan)).to_numpy(dtype=float)
    line = 2 if path.suffix.lower() not in (".parquet", ".pq") else 1
    word = "line" if line == 2 else "row"
    for i in np.flatnonzero(~np.isfinite(t) | (t < 0))[:20]:
        problems.append(Problem(str(path), f"{word} {i + line}, column {time!r}",
                                f"{_text(frame[time].iloc[i])!r} is not a time >= 0"))
    for i in np.flatnonzero(np.isnan(e))[:20]:
        problems.append(Problem(str(path), f"{word} {i + line}, column {event!r}",
                                f"{_text(frame[event].iloc[i])!r} is not 1 (event) or 0 "
                                "(censored)"))
    if problems:
        raise DataError(problems)
    if not len(frame):
        raise DataError([Problem(str(path), "", "the table has no rows")])
    return Arm(name, t * _UNIT_DAYS[time_unit], e,
               frame.drop(columns=[time, event]).reset_index(drop=True))


def read_synthetic_arm(folder: Path, endpoint: str | None = None,
                       name: str = "synthetic control") -> tuple[Arm, dict[str, Any], str]:
    """The arm of a ``carecourse trial build`` folder on one time-to-event endpoint (the
    protocol's primary by default): (arm, the build record, the endpoint's PARAMCD)."""
    import json

    record_path = folder / "build.json"
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError([Problem(str(folder), "", "not a trial build (no build.json); give "
                                                  "the --out folder of 'carecourse trial "
                                                  "build'")]) from None
    except (OSError, ValueError) as exc:
        raise DataError([Problem(str(record_path), "", f"damaged ({exc}); build the arm "
                                                       "again")]) from None
    tte = [e["paramcd"] for e in record["endpoints"] if e["type"] == "time_to_event"]
    paramcd = endpoint or (record["primary_endpoint"] if record["primary_endpoint"] in tte
                           else (tte[0] if tte else None))
    if paramcd not in tte:
        raise ConfigError(f"{folder}: --endpoint {paramcd!r} is not a time-to-event endpoint "
                          f"of this arm; it has {', '.join(tte) or 'none'}")
    adtte = pd.read_csv(folder / "adtte.csv")
    rows = adtte[adtte["PARAMCD"] == paramcd]
    base = pd.read_csv(folder / "baseline.csv")
    rows = rows.merge(base, on="USUBJID", how="left", validate="one_to_one")
    cov = rows[[c for c in base.columns if c != "USUBJID"]].reset_index(drop=True)
    return (Arm(name, rows["AVAL"].to_numpy(dtype=float),
                1.0 - rows["CNSR"].to_numpy(dtype=float), cov), record, paramcd)
