"""Durations and GMF 2 distributions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulator.timing import compile_distribution, compile_duration, legacy_days


def uniforms(seed: int):
    rng = np.random.default_rng(seed)
    return lambda: float(rng.random())


@pytest.mark.parametrize("q, unit, days", [
    (2, "years", 730.0), (10, "years", 3652.0), (2, "months", 60.0), (2, "weeks", 14.0),
    (2, "days", 2.0), (2, "hours", 2 / 24), (2, "minutes", 2 / 1440), (2, "seconds", 2 / 86400),
])
def test_legacy_amounts_convert_and_truncate_like_synthea(q, unit, days):
    assert legacy_days(q, unit) == pytest.approx(days)


def test_gmf2_exact_year_is_365_days():
    d = compile_duration({"distribution": {"kind": "EXACT", "parameters": {"value": 2}},
                          "unit": "years"})
    assert d(uniforms(0)) == 730.0


@given(low=st.floats(0, 100), width=st.floats(0, 100), seed=st.integers(0, 2**32 - 1))
def test_uniform_stays_in_bounds(low, width, seed):
    f = compile_distribution({"kind": "UNIFORM", "parameters": {"low": low, "high": low + width}})
    u = uniforms(seed)
    for _ in range(20):
        x = f(u)
        assert low <= x <= low + width + 1e-9


@pytest.mark.parametrize("spec, mean, sd", [
    ({"kind": "GAUSSIAN", "parameters": {"mean": 10, "standardDeviation": 3}}, 10, 3),
    ({"kind": "EXPONENTIAL", "parameters": {"mean": 4}}, 4, 4),
    ({"kind": "TRIANGULAR", "parameters": {"min": 0, "mode": 3, "max": 6}}, 3, math.sqrt(1.5)),
    ({"kind": "UNIFORM", "parameters": {"low": 2, "high": 8}}, 5, math.sqrt(3)),
])
def test_distribution_means_within_five_standard_errors(spec, mean, sd):
    f = compile_distribution(spec)
    n = 20000
    for seed in (1, 2, 3):
        u = uniforms(seed)
        xs = np.array([f(u) for _ in range(n)])
        assert abs(xs.mean() - mean) < 5 * sd / math.sqrt(n)


def test_gaussian_bounds_and_rounding():
    f = compile_distribution({"kind": "GAUSSIAN", "round": True,
                              "parameters": {"mean": 1, "standardDeviation": 15, "min": 0, "max": 5}})
    u = uniforms(4)
    xs = [f(u) for _ in range(500)]
    assert all(0 <= x <= 5 and float(x).is_integer() for x in xs)


def test_negative_delays_are_clamped_to_zero():
    d = compile_duration({"distribution": {"kind": "GAUSSIAN",
                                           "parameters": {"mean": 1, "standardDeviation": 15}},
                          "unit": "seconds"})
    u = uniforms(5)
    assert min(d(u) for _ in range(300)) == 0.0
