"""Loops of "wait a month, then a small chance" are drawn in one go instead of one event per
turn (simulator.engine.LoopSkip). What happens must have the same distribution as turn by
turn: checked with two-sample Kolmogorov-Smirnov tests against the turn-by-turn engine
(which the recording harness still uses) and against the geometric law."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from simulator.engine import ModuleRun, run_module
from tests.conftest import T0, YEAR, make_harness
from tests.unit.simulator.test_engine import library

N = 1500
MONTH = 30.0  # a GMF month, as the engine counts it (modules.gmf.TIME_UNITS_DAYS)

AGE_LOOP = {
    "Initial": {"type": "Initial", "direct_transition": "Wait"},
    "Wait": {"type": "Delay", "exact": {"quantity": 1, "unit": "months"}, "complex_transition": [
        {"condition": {"condition_type": "Age", "operator": "<", "quantity": 3, "unit": "years"},
         "distributions": [{"distribution": 0.03, "transition": "Sick"},
                           {"distribution": 0.01, "transition": "Hurt"},
                           {"distribution": 0.96, "transition": "Wait"}]},
        {"distributions": [{"distribution": 0.004, "transition": "Sick"},
                           {"distribution": 0.996, "transition": "Wait"}]}]},
    "Sick": {"type": "SetAttribute", "attribute": "left", "value": "sick",
             "direct_transition": "Terminal"},
    "Hurt": {"type": "SetAttribute", "attribute": "left", "value": "hurt",
             "direct_transition": "Terminal"},
    "Terminal": {"type": "Terminal"},
}


def leave_times(programs, key: str, *, skip: bool, seed0: int, age: float = 0.0,
                others: tuple[str, ...] = (), horizon: float = 60 * YEAR):
    out = []
    for i in range(N):
        h = make_harness(programs, age_years=age, seed=seed0 + i)
        run = ModuleRun(h.person, h.programs[key], h.programs, None, keep_history=not skip)
        h.env.process(run_module(run))
        for other in others:
            h.env.process(run_module(ModuleRun(h.person, h.programs[other], h.programs, None)))
        h.run_until(T0 + horizon)
        done = run.state_name == "Terminal"
        # the loop was left when Terminal was entered (the states between take no time)
        out.append((run.entered if done else math.inf, h.person.attributes.get("left")))
    return out


def test_an_age_dependent_loop_leaves_as_turn_by_turn(tmp_path):
    programs = library(tmp_path, loop=AGE_LOOP)
    assert programs["loop"].states["Wait"].skip is not None
    fast = leave_times(programs, "loop", skip=True, seed0=0)
    slow = leave_times(programs, "loop", skip=False, seed0=10_000)
    t_fast = [t - T0 for t, _ in fast if t != math.inf]
    t_slow = [t - T0 for t, _ in slow if t != math.inf]
    assert stats.ks_2samp(t_fast, t_slow).pvalue > 1e-3
    # Turns stay on the monthly grid.
    assert all(abs(t / MONTH - round(t / MONTH)) < 1e-6 for t in t_fast)
    # Which exit: before age 3, "hurt" is a quarter of the exits (0.01 of 0.04).
    early = [w for t, w in fast if t - T0 < 3 * YEAR]
    share = sum(w == "hurt" for w in early) / len(early)
    se = math.sqrt(0.25 * 0.75 / len(early))
    assert abs(share - 0.25) < 4 * se
    assert all(w == "sick" for t, w in fast if t - T0 > 3 * YEAR + MONTH and t != math.inf)


def test_a_loop_on_an_attribute_waits_until_another_module_sets_it(tmp_path):
    programs = library(tmp_path, risk_loop={
        "Initial": {"type": "Initial", "direct_transition": "Wait"},
        "Wait": {"type": "Delay", "exact": {"quantity": 1, "unit": "months"},
                 "distributed_transition": [
                     {"transition": "Onset", "distribution": {"attribute": "risk", "default": 0}},
                     {"transition": "Wait", "distribution": 1}]},
        "Onset": {"type": "SetAttribute", "attribute": "left", "value": "onset",
                  "direct_transition": "Terminal"},
        "Terminal": {"type": "Terminal"},
    }, setter={
        "Initial": {"type": "Initial", "direct_transition": "Forty"},
        "Forty": {"type": "Guard", "allow": {"condition_type": "Age", "operator": ">=",
                                             "quantity": 40, "unit": "years"},
                  "direct_transition": "Set"},
        "Set": {"type": "SetAttribute", "attribute": "risk", "value": 0.05,
                "direct_transition": "Terminal"},
        "Terminal": {"type": "Terminal"},
    })
    assert programs["risk_loop"].states["Wait"].skip.reads == {"risk"}
    fast = leave_times(programs, "risk_loop", skip=True, seed0=0, age=30,
                       others=("setter",), horizon=30 * YEAR)
    slow = leave_times(programs, "risk_loop", skip=False, seed0=10_000, age=30,
                       others=("setter",), horizon=30 * YEAR)
    t_fast = np.array([t for t, _ in fast])
    t_slow = np.array([t for t, _ in slow])
    assert np.isfinite(t_fast).all()
    # Nothing before the attribute is set at 40 (ten years after T0).
    assert t_fast.min() > T0 + 10 * YEAR - 1
    assert stats.ks_2samp(t_fast, t_slow).pvalue > 1e-3
    # After 40, the wait is geometric with p = 0.05 per month: mean 20 turns.
    turns = (t_fast - (T0 + 10 * YEAR)) / MONTH
    assert abs(turns.mean() - 20) < 4 * math.sqrt(0.95) / 0.05 / math.sqrt(N)


PRIOR_LOOP = {
    "Initial": {"type": "Initial", "distributed_transition": [
        {"distribution": 0.5, "transition": "Marked"}, {"distribution": 0.5, "transition": "Wait"}]},
    "Marked": {"type": "Simple", "direct_transition": "Wait"},
    "Wait": {"type": "Delay", "exact": {"quantity": 1, "unit": "months"}, "complex_transition": [
        {"condition": {"condition_type": "PriorState", "name": "Marked",
                       "within": {"quantity": 2, "unit": "years"}},
         "distributions": [{"distribution": 0.05, "transition": "Sick"},
                           {"distribution": 0.95, "transition": "Wait"}]},
        {"distributions": [{"distribution": 0.01, "transition": "Sick"},
                           {"distribution": 0.99, "transition": "Wait"}]}]},
    "Sick": {"type": "SetAttribute", "attribute": "left", "value": "sick",
             "direct_transition": "Terminal"},
    "Terminal": {"type": "Terminal"},
}


def test_a_loop_on_an_earlier_state_of_its_module_leaves_as_turn_by_turn(tmp_path):
    # Only the module itself enters its states, so while it turns in the loop a PriorState
    # on another state keeps its answer; its "within" window closes at a known time.
    programs = library(tmp_path, loop=PRIOR_LOOP)
    assert programs["loop"].states["Wait"].skip is not None
    fast = [t - T0 for t, _ in leave_times(programs, "loop", skip=True, seed0=0)]
    slow = [t - T0 for t, _ in leave_times(programs, "loop", skip=False, seed0=10_000)]
    assert stats.ks_2samp(fast, slow).pvalue > 1e-3
    # Half the patients leave at 5% a month for two years, then at 1%: the share gone by
    # two years is 0.5 (1 - 0.95^24) + 0.5 (1 - 0.99^24).
    gone = sum(t <= 2 * YEAR for t in fast) / len(fast)
    expected = 0.5 * (1 - 0.95 ** 24) + 0.5 * (1 - 0.99 ** 24)
    assert abs(gone - expected) < 4 * math.sqrt(expected * (1 - expected) / len(fast))


@pytest.mark.parametrize("spec", [
    {"condition_type": "Active Condition", "codes": [{"system": "SNOMED-CT", "code": "1"}]},
    {"condition_type": "PriorState", "name": "Wait"},
])
def test_loops_that_read_the_record_are_run_turn_by_turn(tmp_path, spec):
    programs = library(tmp_path, loop={
        "Initial": {"type": "Initial", "direct_transition": "Wait"},
        "Wait": {"type": "Delay", "exact": {"quantity": 1, "unit": "months"},
                 "conditional_transition": [{"condition": spec, "transition": "Terminal"},
                                            {"transition": "Wait"}]},
        "Terminal": {"type": "Terminal"},
    })
    assert programs["loop"].states["Wait"].skip is None


def test_a_loop_through_a_dated_lookup_table_leaves_as_turn_by_turn(tmp_path):
    # covid19's shape: wait 4 days, ask a table of daily rates, mostly wait again. Days 100
    # to 160 after T0 have a 2% chance a turn (women only, from a gender column), 5% on days
    # 130 to 160; outside the table's span every turn stays.
    (tmp_path / "lookup_tables").mkdir()
    rows = ["time,gender,Wait,Sick"]
    for day in range(100, 160):
        lo = (T0 + day) * 86_400_000
        p = 0.05 if day >= 130 else 0.02
        rows.append(f"{lo:.0f}-{lo + 86_399_999:.0f},F,{1 - p},{p}")
    (tmp_path / "lookup_tables" / "daily.csv").write_text("\n".join(rows) + "\n")
    programs = library(tmp_path, loop={
        "Initial": {"type": "Initial", "direct_transition": "Wait"},
        "Wait": {"type": "Delay", "exact": {"quantity": 4, "unit": "days"},
                 "lookup_table_transition": [
                     {"transition": "Wait", "default_probability": 1, "lookup_table_name": "daily.csv"},
                     {"transition": "Sick", "default_probability": 0, "lookup_table_name": "daily.csv"}]},
        "Sick": {"type": "SetAttribute", "attribute": "left", "value": "sick",
                 "direct_transition": "Terminal"},
        "Terminal": {"type": "Terminal"},
    })
    skip = programs["loop"].states["Wait"].skip
    assert skip is not None and skip.reads == {"gender"}
    fast = [t - T0 for t, _ in leave_times(programs, "loop", skip=True, seed0=0, horizon=2 * YEAR)]
    slow = [t - T0 for t, _ in leave_times(programs, "loop", skip=False, seed0=10_000,
                                           horizon=2 * YEAR)]
    left = [t for t in fast if t != math.inf]
    assert all(100 <= t < 161 for t in left)
    assert stats.ks_2samp(left, [t for t in slow if t != math.inf]).pvalue > 1e-3
    # 15 turns land in the span (one every 4 days), 8 at 2% and 7 at 5%.
    expected = 1 - 0.98 ** 8 * 0.95 ** 7
    share = len(left) / len(fast)
    assert abs(share - expected) < 4 * math.sqrt(expected * (1 - expected) / len(fast))
