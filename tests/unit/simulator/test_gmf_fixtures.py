"""GMF semantics pinned on Synthea's own engine-test fixtures
(../shared/synthea/test-fixtures/generic; ../shared/synthea/EXPECTED.md restates what
Synthea's tests assert). Times are days; T0 is the test start. Random behaviour is checked
over many independent patients with binomial tolerances, never one seed's counts."""

from __future__ import annotations

import json
import math

import pytest

from modules.errors import ModuleError
from modules.loader import load_library
from simulator.engine import compile_module
from simulator.logic import compile_condition
from simulator.record import Code, Condition
from simulator.states import compile_state
from tests.conftest import GENERIC, T0, YEAR, make_harness

HOUR = 1 / 24
MINUTE = 1 / 1440


def history(run, base=T0):
    return [(h[0], None if h[1] is None else round(h[1] - base, 6),
             None if h[2] is None else round(h[2] - base, 6)) for h in run.history]


def within_binomial(count: int, n: int, p: float) -> bool:
    return abs(count - n * p) <= 5 * math.sqrt(n * p * (1 - p)) + 1


def test_delay_time_travel_history(harness):
    h = harness()
    run = h.start("delay_time_travel")
    h.run_until(T0 + 7)
    assert history(run) == [
        ("Initial", 0, 0), ("2_Day_Delay", 0, 2), ("ED_Visit", 2, 2),
        ("3_Day_Delay", 2, 5), ("Death", 5, 5)]
    assert h.person.death == pytest.approx(T0 + 5)  # Terminal is never run after death
    assert [e.start - T0 for e in h.person.record.encounters] == [pytest.approx(2)]


@pytest.mark.parametrize("unit, days", [
    ("Second", 1 / 86400), ("Minute", MINUTE), ("Hour", HOUR), ("Day", 1), ("Week", 7),
    ("Month", 30), ("Year", 365)])
def test_exact_delays_block_before_and_pass_after(generic_library, tmp_path, unit, days):
    h = one_state_module(generic_library.get("delay").states[f"2_{unit}_Delay"], tmp_path)
    run = h.start("one")
    h.run_until(T0 + 1.5 * days)
    assert run.history[-1][0] == "S"  # still blocked after 1.5 units
    h.run_until(T0 + 3 * days)
    name, entered, _ = run.history[-1][:3]
    assert name == "Terminal" and entered - T0 == pytest.approx(2 * days, rel=1e-6)


def one_state_module(spec: dict, folder) -> object:
    """A module Initial -> S (the given state) -> Terminal, compiled in a harness."""
    spec = {k: v for k, v in spec.items() if not k.endswith("transition")}
    states = {"Initial": {"type": "Initial", "direct_transition": "S"},
              "S": {**spec, "direct_transition": "Terminal"}, "Terminal": {"type": "Terminal"}}
    (folder / "one.json").write_text(json.dumps({"name": "one", "states": states}))
    lib = load_library(folder)
    return make_harness({"one": compile_module(lib.get("one"), lib)})


def _bare_run(h):
    class R:
        person = h.person
        env = h.env
        module_name = "test"
        state_name = "test"
    return R()


def test_range_delay_is_within_its_bounds(generic_library, tmp_path):
    h = one_state_module(generic_library.get("delay").states["2_To_10_Day_Delay"], tmp_path)
    programs = h.programs
    for seed in range(200):
        h = make_harness(programs, seed=seed)
        run = h.start("one")
        h.run_until(T0 + 11)
        assert 2 <= run.history[-1][1] - T0 <= 10


def test_gaussian_delay_mean_and_never_negative(generic_library, tmp_path):
    states = generic_library.get("gaussian_distro_delay").states
    wide = one_state_module(states["1 Mean Delay"], tmp_path / "w" if (tmp_path / "w").mkdir()
                            is None else None).programs
    mean = one_state_module(states["10 Mean Delay"], tmp_path / "m" if (tmp_path / "m").mkdir()
                            is None else None).programs
    xs = []
    for seed in range(1000):
        for programs, keep in ((wide, False), (mean, True)):
            h = make_harness(programs, seed=seed)
            run = h.start("one")
            h.run_until(T0 + 1)
            end = run.history[-1][1] - T0
            assert end >= 0
            if keep:
                xs.append(end * 86400)
    assert 9.5 < sum(xs) / len(xs) < 10.5


def test_submodule_history_is_spliced(harness):
    h = harness()
    run = h.start("recursively_calls_submodules")
    for t in (T0, T0 + 365, T0 + 730):
        h.run_until(t)
    names = [x[0] for x in history(run)]
    assert names == [
        "Initial", "Example_Condition", "Call_Encounter_Submodule", "Initial", "Delay",
        "Encounter_In_Submodule", "Call_MedicationOrder_Submodule", "Initial",
        "Examplitis_Medication", "Delay_Yet_Again", "End_Medication", "Med_Terminal",
        "Call_MedicationOrder_Submodule", "Delay_Some_More", "Encounter_Terminal",
        "Call_Encounter_Submodule", "End_Condition", "Terminal"]
    hist = history(run)
    assert hist[9] == ("Delay_Yet_Again", 365, 379)
    assert hist[13] == ("Delay_Some_More", 379, 407)
    assert hist[-1] == ("Terminal", 407, 407)
    assert {x[3] for x in run.history} == {"recursively_calls_submodules",
                                            "submodules/encounter_submodule",
                                            "submodules/medication_submodule"}


def test_submodule_acts_on_the_callers_encounter(harness):
    h = harness()
    h.start("encounter_with_submodule")
    h.run_until(T0 + 30)
    encounters = h.person.record.encounters
    assert [e.encounter_class for e in encounters] == ["ambulatory", "inpatient"]
    assert len([c for c in h.person.record.conditions if c.encounter is encounters[0]]) == 1
    assert h.person.active["conditions"].get("5678")


def test_distributed_transition_frequencies(harness):
    n = 1500
    counts = {"Terminal1": 0, "Terminal2": 0, "Terminal3": 0}
    for seed in range(n):
        h = harness(seed=seed)
        run = h.start("distributed_transition")
        h.run_until(T0)
        counts[run.history[-1][0]] += 1
    for name, p in (("Terminal1", 0.15), ("Terminal2", 0.55), ("Terminal3", 0.30)):
        assert within_binomial(counts[name], n, p), counts


@pytest.mark.parametrize("attrs, expected", [
    ({"probability1": 1.0}, "Terminal1"),
    ({"probability1": 0.0, "probability2": 0.0, "probability3": 1.0}, "Terminal3"),
])
def test_distributed_transition_weights_from_attributes(harness, attrs, expected):
    for seed in range(50):
        h = harness(seed=seed)
        h.person.attributes.update(attrs)
        run = h.start("distributed_transition_with_attrs")
        h.run_until(T0)
        assert run.history[-1][0] == expected


def test_onset_waits_for_its_target_encounter(harness):
    h = harness()
    h.start("condition_onset")
    h.run_until(T0 + 1)
    assert h.person.record.conditions == []  # Diabetes waits for ED_Visit
    h.run_until(T0 + 200)
    (ed,) = h.person.record.encounters
    assert ed.codes[0].code == "50849002"
    assert ed.start == pytest.approx(T0 + 180)
    assert ed.stop == pytest.approx(T0 + 180 + 60 * MINUTE)  # emergency: 60 minutes
    codes = {c.codes[0].code: c for c in h.person.record.conditions}
    assert set(codes) == {"73211009", "47693006"}
    assert all(c.encounter is ed for c in codes.values())
    assert codes["73211009"].start == pytest.approx(T0 + 180)  # recorded when diagnosed
    assert h.person.attributes["Most Recent ED Visit"] is codes["47693006"]


def test_wellness_encounter_blocks_until_a_visit(harness):
    h = harness()
    run = h.start("encounter")
    h.run_until(T0)
    assert run.history[-1][0] == "Annual_Physical"
    h.run_until(T0 + 180)
    h.simulate_wellness(T0 + 194)
    names = [x[0] for x in run.history]
    assert names.index("Annual_Physical") < len(names) - 1


def test_death_during_delay(harness):
    h = harness()
    run = h.start("death_during_delay")
    h.run_until(T0)
    assert h.person.death == pytest.approx(T0 + 2)
    assert not h.person.is_dead(T0)
    h.run_until(T0 + 7)
    assert h.person.is_dead(T0 + 7)
    assert len(h.person.record.encounters) == 1
    assert "Encounter Should Not Happen" not in [x[0] for x in run.history]


def test_future_death_lets_the_module_go_on_until_then(harness):
    h = harness()
    h.start("death_life_expectancy")
    h.run_until(T0 + 7)
    p = h.person
    assert not p.is_dead(T0 + 7) and p.attributes["processing"] is True
    h.run_until(T0 + 14)
    assert p.attributes.get("still_processing") is True
    h.run_until(T0 + 180)
    assert p.is_dead(T0 + 180)
    assert 120 <= p.death - T0 <= 150
    assert all(e.start < p.death for e in p.record.encounters)


def test_procedure_duration_then_death(harness):
    h = harness()
    h.start("procedure_duration_and_death")
    h.run_until(T0 + 7)
    p = h.person
    (enc,) = p.record.encounters
    (proc,) = p.record.procedures
    assert 1 <= proc.stop - proc.start <= 2  # 24-48 hours
    assert p.death == pytest.approx(proc.stop)
    assert p.death >= enc.stop


def test_counter_and_set_attribute(harness, generic_library):
    h = harness()
    run = _bare_run(h)
    inc = compile_state("Counter", generic_library.get("counter").states["Counter"], None, "c")
    dec = compile_state("Dec", generic_library.get("counter").states["Counter_Decrement_by_2"],
                        None, "c")
    values = []
    for _ in range(3):
        inc.process(run, T0)
        values.append(h.person.attributes["loop_index"])
    assert values == [1.0, 2.0, 3.0]
    dec.process(run, T0)
    dec.process(run, T0)
    assert h.person.attributes["loop_index"] == -1.0
    states = json.loads((GENERIC / "set_attribute.json").read_text())["states"]
    for name in ("Set_Attribute_1", "Set_Attribute_2", "Set_Attribute_3", "Set_Attribute_4"):
        compile_state(name, states[name], None, "s").process(run, T0)
        if name == "Set_Attribute_1":
            assert h.person.attributes["Current Opioid Prescription"] == "Vicodin"
        if name == "Set_Attribute_2":
            assert "Current Opioid Prescription" not in h.person.attributes
    assert h.person.attributes["Maximum Heart Rate"] == pytest.approx(185, abs=0.1)
    ecg = h.person.attributes["ECG"]
    assert len(ecg) == 10 and ecg[0] == 2041
    with pytest.raises(ModuleError, match='unable to parse "invalid" in SetAttribute state for "ECG"'):
        compile_state("Set_Attribute_5", states["Set_Attribute_5"], None, "s")


@pytest.mark.parametrize("gender, state, ethnicity, age, expected", [
    ("F", "Massachusetts", "english", 45, "Moderate"),
    ("F", "Massachusetts", "english", 55, "Mild"),
    ("M", "Massachusetts", "english", 55, "Extreme"),
    ("M", "Massachusetts", "irish", 1, "Moderate"),
    ("F", "Massachusetts", "irish", 53, "Moderate"),
    ("M", "Arizona", "italian", 65, "Moderate"),
    ("F", "Arizona", "italian", 15, "Extreme"),
    ("F", "Arizona", "spanish", 15, "Extreme"),
    ("F", "Alaska", "english", 15, "Extreme"),
])
def test_lookup_table_transition(harness, gender, state, ethnicity, age, expected):
    h = harness(age_years=age + 0.5, gender=gender)
    h.person.attributes.update({"state": state, "ethnicity": ethnicity})
    h.start("lookuptable_test")
    h.run_until(T0)
    (cond,) = h.person.record.conditions
    assert cond.codes[0].display == f"{expected}_Lookuptablitis"


@pytest.mark.parametrize("gender, state, t_ms, expected", [
    ("M", "Massachusetts", 500, "Moderate"), ("F", "Massachusetts", 500, "Mild"),
    ("M", "New Hampshire", 500, "Extreme"), ("M", "Massachusetts", 1500, "Extreme"),
    ("F", "Massachusetts", 1500, "Moderate"),
])
def test_lookup_table_time_ranges(harness, gender, state, t_ms, expected):
    at = t_ms / 86400000.0
    h = harness(gender=gender, at=at, age_years=0)
    h.person.attributes["state"] = state
    h.start("lookuptable_timerangetest")
    h.run_until(at)
    (cond,) = h.person.record.conditions
    assert cond.codes[0].display == f"{expected}_Lookuptablitis"


def test_broken_lookup_tables_are_rejected_at_load():
    with pytest.raises(ModuleError) as exc:
        load_library(GENERIC)
    text = str(exc.value)
    assert "Age Range must be in the form: 'ageLow-ageHigh'" in text
    assert "does not match a JSON state to transition to in CSV table" in text


# ------------------------------------------------------------------------ logic.json

@pytest.fixture(scope="module")
def logic():
    return json.loads((GENERIC / "logic.json").read_text())


def check(logic, name, run, t):
    return compile_condition(logic[name]).test(run, t)


@pytest.mark.parametrize("age, expected", [
    (35, [True, True, False, False, False, True]),
    (40, [False, True, True, True, False, False]),
    (45, [False, False, False, True, True, True]),
])
def test_age_conditions_use_whole_years(harness, logic, age, expected):
    h = harness(age_years=age)  # born exactly `age` calendar years before T0
    run = _bare_run(h)
    names = ["ageLt40Test", "ageLte40Test", "ageEq40Test", "ageGte40Test", "ageGt40Test",
             "ageNe40Test"]
    assert [check(logic, n, run, T0) for n in names] == expected


def test_attribute_conditions(harness, logic):
    h = harness()
    run = _bare_run(h)
    assert not check(logic, "attributeEqualTo_TestValue_Test", run, T0)  # missing: false
    assert check(logic, "attributeNilTest", run, T0)
    h.person.attributes["Test_Attribute_Key"] = "TestValue"
    assert check(logic, "attributeEqualTo_TestValue_Test", run, T0)
    assert check(logic, "attributeLt_String_Test", run, T0)  # strings compare in order
    assert check(logic, "attributeNotNilTest", run, T0)
    h.person.attributes["Test_Attribute_Key"] = 5
    with pytest.raises(Exception, match="cannot compare"):
        check(logic, "attributeLt_String_Test", run, T0)


def test_boolean_combinators(harness, logic):
    run = _bare_run(harness())
    table = {
        "andAllTrueTest": True, "andOneFalseTest": False, "andAllFalseTest": False,
        "orAllTrueTest": True, "orOneTrueTest": True, "orAllFalseTest": False,
        "atLeast3_AllTrueTest": True, "atLeast3_3TrueTest": True, "atLeast3_2TrueTest": False,
        "atLeast3_NoneTrueTest": False, "atMost2_AllTrueTest": False,
        "atMost2_3TrueTest": False, "atMost2_2TrueTest": True, "atMost2_NoneTrueTest": True,
        "notTrueTest": False, "notFalseTest": True, "trueTest": True, "falseTest": False,
    }
    assert {n: check(logic, n, run, T0) for n in table} == table


def test_race_symptom_vital_and_active_conditions(harness, logic):
    h = harness()
    p = h.person
    run = _bare_run(h)
    p.attributes["race"] = "white"
    assert check(logic, "raceExistsTest", run, T0)  # "White" matches case-insensitively
    p.set_symptom("PainLevel", "a", 60)
    assert check(logic, "symptomPainLevelGt50", run, T0)
    assert check(logic, "symptomPainLevelLte80", run, T0)
    p.set_symptom("PainLevel", "b", 100)  # the maximum over causes counts
    assert not check(logic, "symptomPainLevelLte80", run, T0)
    with pytest.raises(Exception, match="never set"):
        check(logic, "SystolicBloodPressureGt120", run, T0)
    p.set_vital("Systolic Blood Pressure", 140)
    assert check(logic, "SystolicBloodPressureGt120", run, T0)
    assert not check(logic, "diabetesConditionTest", run, T0)
    diabetes = [c for c in logic["diabetesConditionTest"]["codes"]][0]
    cond = Condition("x", T0, (Code("SNOMED-CT", str(diabetes["code"]), ""),), None)
    p.active["conditions"][str(diabetes["code"])].append(cond)
    assert check(logic, "diabetesConditionTest", run, T0)


def test_prior_state_since_and_within(harness, logic):
    h = harness()
    names = ["priorStateDoctorVisitTest", "priorStateCarePlanSinceDoctorVisitTest",
             "priorStateDoctorVisitWithin3YearsTest",
             "priorStateCarePlanSinceDoctorVisitWithin3YearsTest"]

    class R:
        person = h.person
        env = h.env
        module_name = state_name = "t"
        last_seq: dict = {}
        last_exit: dict = {}
    run = R()
    assert [check(logic, n, run, T0) for n in names] == [False, False, False, False]
    run.last_seq, run.last_exit = {"CarePlan": 1}, {"CarePlan": T0}
    assert [check(logic, n, run, T0) for n in names] == [False, True, False, True]
    run.last_seq, run.last_exit = {"CarePlan": 1, "DoctorVisit": 2}, {"CarePlan": T0,
                                                                      "DoctorVisit": T0}
    assert [check(logic, n, run, T0) for n in names] == [True, False, True, False]
    run.last_seq, run.last_exit = ({"DoctorVisit": 1, "CarePlan": 2},
                                   {"DoctorVisit": T0, "CarePlan": T0})
    assert [check(logic, n, run, T0 + 2 * YEAR) for n in names] == [True, True, True, True]
    assert [check(logic, n, run, T0 + 7 * YEAR) for n in names] == [True, True, False, False]


def test_fixture_programs_compile(generic_library):
    broken = {"set_attribute", "lookuptable_agerangetest", "lookuptable_nomatchcolumn",
              "validation/field_errors", "state_without_transition", "logic"}
    for key, m in generic_library.modules.items():
        if key not in broken:
            compile_module(m, generic_library)
