"""Comparing arms: SMDs against hand-computed values, Kaplan-Meier, medians and Cox hazard
ratios against lifelines directly on known data, and reading arms from files."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter, KaplanMeierFitter

from learned.arms import (
    Arm,
    compare_arms,
    cox_hazard_ratio,
    km_max_gap,
    km_summary,
    read_real_arm,
    smd_categorical,
    smd_continuous,
)
from modules.errors import ConfigError, DataError


def exp_arm(name: str, n: int, mean: float, seed: int, horizon: float = 365.0) -> Arm:
    rng = np.random.default_rng(seed)
    t = rng.exponential(mean, n)
    cov = pd.DataFrame({"age": rng.normal(40, 10, n), "sex": rng.choice(["M", "F"], n)})
    return Arm(name, np.minimum(t, horizon), (t <= horizon).astype(float), cov)


def test_smd_by_hand():
    a = np.array([1.0, 2.0, 3.0, 4.0])
    b = np.array([2.0, 3.0, 4.0, 5.0, np.nan])
    assert smd_continuous(a, b) == pytest.approx(-1.0 / math.sqrt(np.var(a, ddof=1)))
    # binary: |p - q| / sqrt((p(1-p) + q(1-q)) / 2)
    p, q = 0.3, 0.5
    x = ["y"] * 3 + ["n"] * 7
    y = ["y"] * 5 + ["n"] * 5
    assert smd_categorical(x, y) == pytest.approx(abs(p - q) / math.sqrt((p * (1 - p) + q * (1 - q)) / 2))
    assert smd_categorical(x, list(reversed(x))) == 0.0
    # three levels: the multinomial SMD grows with the imbalance and is 0 when equal
    even = ["a", "b", "c"] * 20
    assert smd_categorical(even, even) == 0.0
    assert smd_categorical(even, ["a"] * 40 + ["b"] * 10 + ["c"] * 10) > \
        smd_categorical(even, ["a"] * 25 + ["b"] * 20 + ["c"] * 15) > 0


def test_kaplan_meier_and_median_match_lifelines():
    arm = exp_arm("x", 150, 200.0, 1)
    s = km_summary(arm)
    kmf = KaplanMeierFitter().fit(arm.time, arm.event)
    assert np.allclose(s.survival, kmf.survival_function_.iloc[:, 0])
    assert np.allclose(s.low, kmf.confidence_interval_.iloc[:, 0])
    assert s.median == pytest.approx(kmf.median_survival_time_)
    assert s.median_low <= s.median <= s.median_high
    assert s.events == int(arm.event.sum())


def test_cox_hazard_ratio_matches_lifelines():
    a = exp_arm("a", 200, 150.0, 2)
    b = exp_arm("b", 180, 300.0, 3)
    hr = cox_hazard_ratio(a, b)
    frame = pd.DataFrame({"t": np.r_[a.time, b.time], "e": np.r_[a.event, b.event],
                          "g": np.r_[np.ones(a.n), np.zeros(b.n)]})
    cph = CoxPHFitter().fit(frame, "t", "e")
    assert hr.hr == pytest.approx(math.exp(cph.params_["g"]))
    lo, hi = np.exp(cph.confidence_intervals_.loc["g"])
    assert hr.low == pytest.approx(lo, rel=1e-4) and hr.high == pytest.approx(hi, rel=1e-4)
    assert hr.p == pytest.approx(cph.summary.loc["g", "p"], rel=1e-6)
    assert not hr.ci_contains_1 and hr.hr > 1


def test_km_max_gap_is_the_sup_of_the_difference():
    a = km_summary(Arm("a", np.array([1.0, 2.0, 3.0, 4.0]), np.ones(4)))
    b = km_summary(Arm("b", np.array([2.0, 4.0, 6.0, 8.0]), np.ones(4)))
    # at t=3: S_a = 0.25, S_b = 0.75
    assert km_max_gap(a, b, 10.0) == pytest.approx(0.5)
    assert km_max_gap(a, b, 1.5) == pytest.approx(0.25)
    assert km_max_gap(a, a, 10.0) == 0.0


def test_same_law_arms_compare_as_equal():
    """Arms drawn from one law: over 12 replications the hazard ratio's CI contains 1 in
    most (95% nominal; fewer than 9 of 12 has probability below 0.3%)."""
    contains = 0
    gaps = []
    for k in range(12):
        c = compare_arms(exp_arm("synthetic control", 150, 300.0, 100 + k),
                         exp_arm("real control", 150, 300.0, 200 + k))
        contains += c.synthetic_vs_real.ci_contains_1
        gaps.append(c.km_max_gap)
        assert c.max_abs_smd is not None
    assert contains >= 9
    # Kolmogorov-Smirnov-type gap of two samples of 150: typically about 1/sqrt(75) / 1.3
    assert np.median(gaps) < 0.15


def test_treatment_effect_against_both_controls():
    c = compare_arms(exp_arm("synthetic control", 300, 300.0, 5),
                     exp_arm("real control", 300, 300.0, 6),
                     exp_arm("real treatment", 300, 600.0, 7))
    assert c.treatment_vs_real is not None and c.treatment_vs_synthetic is not None
    for hr in (c.treatment_vs_real, c.treatment_vs_synthetic):
        assert hr.low < 0.5 < hr.high
    assert [s.arm for s in c.survival] == ["synthetic control", "real control", "real treatment"]
    assert [r.variable for r in c.table][:2] == ["N", "age"]
    assert {r.level for r in c.table if r.variable == "sex"} == {"F", "M"}


def test_reading_a_real_arm_reports_every_problem(tmp_path):
    path = tmp_path / "real.csv"
    path.write_text("days,status,age\n10,1,40\n-3,1,50\nabc,2,60\n")
    with pytest.raises(DataError) as info:
        read_real_arm(path, "real", time="days", event="status")
    text = str(info.value)
    assert "line 3, column 'days': '-3' is not a time >= 0" in text
    assert "line 4, column 'days'" in text
    assert "line 4, column 'status': '2' is not 1 (event) or 0 (censored)" in text
    with pytest.raises(DataError, match="column 'time'.*--time"):
        read_real_arm(path, "real")
    path.write_text("time,event,age\n2,1,40\n1,0,50\n")
    arm = read_real_arm(path, "real", time_unit="weeks")
    assert list(arm.time) == [14.0, 7.0] and list(arm.covariates.columns) == ["age"]


def test_a_separated_cox_model_is_a_clear_error():
    events = Arm("a", np.array([1.0, 2.0, 3.0]), np.ones(3))
    none = Arm("b", np.array([10.0, 20.0, 30.0]), np.zeros(3))
    with pytest.raises(ConfigError, match="a against b has no finite estimate"):
        cox_hazard_ratio(events, none)
