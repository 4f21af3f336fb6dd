"""Event-driven engine behaviour on small modules written here: Guards wake exactly when what
they read changes, Delays are exact, and nothing happens after death."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modules.errors import SimulationError
from modules.loader import load_library
from simulator.engine import ModuleRun, compile_library, prior_state_names, run_module
from tests.conftest import T0, YEAR, make_harness


def library(tmp_path: Path, **modules: dict) -> dict:
    for name, states in modules.items():
        (tmp_path / f"{name}.json").write_text(json.dumps({"name": name, "states": states}))
    return compile_library(load_library(tmp_path, lenient=True))


def chain(*states: tuple[str, dict]) -> dict:
    """Initial -> states in order -> Terminal."""
    out = {"Initial": {"type": "Initial", "direct_transition": states[0][0]}}
    for i, (name, spec) in enumerate(states):
        nxt = states[i + 1][0] if i + 1 < len(states) else "Terminal"
        out[name] = {**spec, "direct_transition": nxt}
    out["Terminal"] = {"type": "Terminal"}
    return out


def entered(run, name):
    return [h[1] for h in run.history if h[0] == name]


def test_guard_on_attribute_wakes_when_another_module_sets_it(tmp_path):
    programs = library(
        tmp_path,
        waiter=chain(("Wait", {"type": "Guard", "allow": {
            "condition_type": "Attribute", "attribute": "ready", "operator": "==",
            "value": True}}), ("After", {"type": "Simple"})),
        setter=chain(("Pause", {"type": "Delay", "exact": {"quantity": 17, "unit": "days"}}),
                     ("Set", {"type": "SetAttribute", "attribute": "ready", "value": True})),
    )
    h = make_harness(programs)
    waiter = h.start("waiter")
    h.start("setter")
    h.run_until(T0 + 100)
    assert entered(waiter, "After") == [pytest.approx(T0 + 17)]


def test_guard_on_age_passes_on_the_birthday(tmp_path):
    programs = library(tmp_path, aging=chain(
        ("Wait", {"type": "Guard", "allow": {"condition_type": "Age", "operator": ">=",
                                             "quantity": 40, "unit": "years"}}),
        ("Forty", {"type": "Simple"})))
    h = make_harness(programs, age_years=35)
    run = h.start("aging")
    h.run_until(T0 + 10 * YEAR)
    (t,) = entered(run, "Forty")
    assert t == pytest.approx(h.person.birthday(40))
    assert h.person.age_years(t) == 40 and h.person.age_years(t - 1e-6) == 39


def test_guard_that_can_never_pass_costs_no_events(tmp_path):
    programs = library(tmp_path, never=chain(("Wait", {"type": "Guard", "allow": {
        "condition_type": "Gender", "gender": "M"}}), ("X", {"type": "Simple"})))
    h = make_harness(programs, gender="F")
    run = h.start("never")
    h.run_until(T0 + YEAR)
    steps = 0
    original = h.env.step

    def counting_step():
        nonlocal steps
        steps += 1
        original()
    h.env.step = counting_step
    h.run_until(T0 + 50 * YEAR)
    assert entered(run, "X") == []
    assert steps <= 2  # the run's own stop events only: the Guard never polls


def test_delays_are_exact_and_chain(tmp_path):
    programs = library(tmp_path, delays=chain(
        ("D1", {"type": "Delay", "exact": {"quantity": 3, "unit": "hours"}}),
        ("D2", {"type": "Delay", "distribution": {"kind": "EXACT", "parameters": {"value": 2}},
                "unit": "weeks"}),
        ("Done", {"type": "Simple"})))
    h = make_harness(programs)
    run = h.start("delays")
    h.run_until(T0 + 30)
    assert entered(run, "D2") == [pytest.approx(T0 + 3 / 24)]
    assert entered(run, "Done") == [pytest.approx(T0 + 3 / 24 + 14)]


def test_nothing_happens_after_death(tmp_path):
    programs = library(
        tmp_path,
        dies=chain(("Later", {"type": "Delay", "exact": {"quantity": 5, "unit": "days"}}),
                   ("Die", {"type": "Death"})),
        busy=chain(("Wait", {"type": "Delay", "exact": {"quantity": 10, "unit": "days"}}),
                   ("Visit", {"type": "Encounter", "encounter_class": "ambulatory",
                              "codes": [{"system": "SNOMED-CT", "code": "1", "display": "x"}]})),
    )
    h = make_harness(programs)
    h.start("dies")
    busy = h.start("busy")
    h.run_until(T0 + 30)
    assert h.person.death == pytest.approx(T0 + 5)
    assert entered(busy, "Visit") == []
    assert h.person.record.encounters == []


def test_transition_to_missing_state_is_named_when_taken(tmp_path):
    programs = library(tmp_path, broken={"Initial": {"type": "Initial",
                                                      "direct_transition": "Gone"}})
    h = make_harness(programs)
    h.start("broken")
    with pytest.raises(SimulationError, match="'broken'.*missing state 'Gone'"):
        h.run_until(T0 + 1)


def test_a_loop_that_never_waits_is_named(tmp_path):
    programs = library(tmp_path, spin={
        "Initial": {"type": "Initial", "direct_transition": "A"},
        "A": {"type": "Simple", "direct_transition": "B"},
        "B": {"type": "Simple", "direct_transition": "A"}})
    h = make_harness(programs)
    h.start("spin")
    with pytest.raises(SimulationError, match="'spin'.*no Delay, Guard or Encounter"):
        h.run_until(T0 + 1)


def test_a_death_is_attributed_to_the_top_level_module_that_caused_it(tmp_path):
    import datetime as dt

    from simulator.population import RunConfig, _prepare, simulate_patient
    root = tmp_path / "lib"
    root.mkdir()
    (root / "fatal.json").write_text(json.dumps({"name": "Fatal", "states": {
        "Initial": {"type": "Initial", "direct_transition": "Die"},
        "Die": {"type": "Death", "codes": [{"system": "SNOMED-CT", "code": "22298006",
                                            "display": "Myocardial infarction (disorder)"}],
                "direct_transition": "Dead"},
        "Dead": {"type": "Terminal"}}}))
    config = RunConfig(population=1, seed=1, age_range=(30, 30), reference_date=dt.date(2025, 1, 1),
                       modules_dir=root)
    programs, top = _prepare(config)
    p = simulate_patient(0, config, programs, top)
    assert p.death_module == "fatal"


@pytest.mark.parametrize("kind", ["Simple", "Counter"])
def test_prior_state_sees_states_with_or_without_history(tmp_path, kind):
    # A and D are named by no PriorState: without history the engine passes them without
    # noting them. B and C are named, so their order must still be known, whether they
    # do nothing (Simple) or do some work (a Counter).
    work = {} if kind == "Simple" else {"attribute": "n", "action": "increment"}
    programs = library(tmp_path, m={
        "Initial": {"type": "Initial", "direct_transition": "A"},
        "A": {"type": kind, **work, "direct_transition": "B"},
        "B": {"type": kind, **work, "direct_transition": "C"},
        "C": {"type": kind, **work, "direct_transition": "D"},
        "D": {"type": kind, **work, "direct_transition": "Saw_B"},
        "Saw_B": {"type": "Simple", "conditional_transition": [
            {"condition": {"condition_type": "PriorState", "name": "B"},
             "transition": "B_Since_C"},
            {"transition": "No"}]},
        "B_Since_C": {"type": "Simple", "conditional_transition": [
            {"condition": {"condition_type": "PriorState", "name": "B", "since": "C"},
             "transition": "No"},
            {"transition": "Yes"}]},
        "Yes": {"type": "SetAttribute", "attribute": "order_right", "value": True,
                "direct_transition": "Terminal"},
        "No": {"type": "SetAttribute", "attribute": "order_right", "value": False,
               "direct_transition": "Terminal"},
        "Terminal": {"type": "Terminal"}})
    states = programs["m"].states
    assert [n for n in "ABCD" if states[n].tracked] == ["B", "C"]
    for keep in (True, False):
        h = make_harness(programs)
        run = ModuleRun(h.person, programs["m"], programs, None, keep_history=keep)
        h.env.process(run_module(run))
        h.run_until(T0 + 1)
        assert h.person.attributes["order_right"] is True, keep
        assert set(run.last_seq) >= {"B", "C"}


def test_prior_state_names_are_found_wherever_the_condition_sits(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps({"name": "m", "states": {
        "Initial": {"type": "Initial", "direct_transition": "G"},
        "G": {"type": "Guard", "allow": {"condition_type": "Not", "condition": {
            "condition_type": "Prior State", "name": "X", "since": "Y"}},
            "complex_transition": [{"condition": {"condition_type": "Or", "conditions": [
                {"condition_type": "PriorState", "name": "W"}]},
                "distributions": [{"distribution": 1.0, "transition": "Terminal"}]},
                {"distributions": [{"distribution": 1.0, "transition": "Terminal"}]}]},
        "X": {"type": "Simple", "direct_transition": "Terminal"},
        "Terminal": {"type": "Terminal"}}}))
    assert prior_state_names(load_library(tmp_path, lenient=True)) == {"W", "X", "Y"}
