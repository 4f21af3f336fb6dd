"""What the engine provides beyond the modules: mortality, growth, vital signs, demographics,
the wellness schedule and immunizations. Statistical checks use many patients and
tolerances."""

from __future__ import annotations

import datetime as dt
import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from modules.loader import load_library
from simulator import facts
from simulator.demographics import US_STATES, normalize_state, sample_demographics
from simulator.engine import compile_library
from simulator.lifecycle import Lifecycle, sample_age_at_death
from simulator.population import RunConfig, simulate_patient
from tests.conftest import T0, YEAR, make_harness


@pytest.mark.parametrize("sex, low, high", [("M", 73.0, 75.5), ("F", 78.5, 81.0)])
def test_life_expectancy_matches_the_us_life_table(sex, low, high):
    assert low < facts.life_expectancy(sex) < high  # NCHS 2021: 73.5 (M), 79.3 (F)


@pytest.mark.parametrize("sex", ["M", "F"])
def test_sampled_ages_at_death_have_the_table_mean(sex):
    rng = np.random.default_rng(7)
    ages = np.array([sample_age_at_death(u, sex) for u in rng.random(20000)])
    se = ages.std() / math.sqrt(len(ages))
    assert abs(ages.mean() - facts.life_expectancy(sex)) < 5 * se + 0.3
    assert ages.min() >= 0 and ages.max() <= 101


@given(age=st.integers(-5, 130), sex=st.sampled_from(["M", "F"]))
def test_death_probabilities_are_probabilities(age, sex):
    q = facts.annual_death_probability(age, sex)
    assert 0.0 < q <= 1.0


@given(z=st.floats(-3, 3), sex=st.sampled_from(["M", "F"]))
def test_children_grow(z, sex):
    heights = [facts.height_cm(a / 4, sex, z) for a in range(0, 4 * 18)]
    assert all(b >= a - 1e-9 for a, b in zip(heights, heights[1:], strict=False))


@given(age=st.floats(2, 90), z=st.floats(-3, 3), sex=st.sampled_from(["M", "F"]))
def test_bmi_percentile_inverts_bmi(age, z, sex):
    b = facts.bmi(age, sex, z)
    p = facts.bmi_percentile(age, sex, b)
    assert 0.0 <= p <= 100.0
    assert p == pytest.approx(50.0 * (1 + math.erf(z / math.sqrt(2))), abs=1e-6)


def test_adult_obesity_share_near_nhanes():
    rng = np.random.default_rng(3)
    z = rng.standard_normal(40000)
    ages = rng.uniform(20, 80, size=z.size)
    sexes = np.where(rng.random(z.size) < 0.5, "M", "F")
    obese = np.mean([facts.bmi(a, s, zz) >= 30 for a, s, zz in zip(ages, sexes, z, strict=True)])
    assert 0.37 < obese < 0.47  # NHANES 2017-2020: 41.9%


def test_wellness_schedule_follows_the_age_rules():
    ages = facts.wellness_visit_ages_days(80) / 365.25
    assert sum(a < 3 for a in ages) == 11  # Bright Futures infancy visits
    assert all(any(abs(a - y) < 1e-9 for a in ages) for y in range(3, 20))
    adults = [a for a in ages if 20 <= a < 50]
    assert adults == [20, 23, 26, 29, 32, 35, 38, 40, 42, 44, 46, 48]
    assert all(any(abs(a - y) < 1e-9 for a in ages) for y in range(50, 81))


def test_race_and_ethnicity_shares_match_the_census():
    rng = np.random.default_rng(11)
    n = 20000
    demo = [sample_demographics(rng, age_years=40) for _ in range(n)]
    white = sum(d.race == "white" for d in demo) / n
    hispanic = sum(d.ethnicity == "hispanic" for d in demo) / n
    assert abs(white - 0.616) < 5 * math.sqrt(0.616 * 0.384 / n)
    assert abs(hispanic - 0.187) < 5 * math.sqrt(0.187 * 0.813 / n)
    male = sum(d.gender == "M" for d in demo) / n
    assert abs(male - 1.048 / 2.048) < 5 * math.sqrt(0.25 / n)


def test_states_by_name_or_code_and_unknown_ones():
    assert normalize_state("ma") == "Massachusetts"
    assert normalize_state("New York") == "New York"
    assert len(US_STATES) == 51
    with pytest.raises(ValueError, match="Atlantis"):
        sample_demographics(np.random.default_rng(0), age_years=3, state="Atlantis")
    d = sample_demographics(np.random.default_rng(0), age_years=3, state="TX", gender="F")
    assert (d.state, d.gender, d.marital_status) == ("Texas", "F", "")


@pytest.fixture(scope="module")
def embedded():
    return compile_library(load_library())


def test_children_get_their_vaccines_and_wellness_vitals(embedded):
    config = RunConfig(population=1, seed=5, age_range=(3, 3), years_of_history=0,
                       reference_date=dt.date(2024, 1, 1))
    for i in range(5):
        p = simulate_patient(i, config, embedded, ["wellness_encounters"])
        if p.death is not None:
            continue
        cvx = [im.codes[0].code for im in p.record.immunizations]
        assert cvx.count("20") >= 4  # DTaP at 2, 4, 6, 15 months
        assert cvx.count("08") == 3  # Hep B at 0, 1, 6 months
        wellness = [e for e in p.record.encounters if e.encounter_class == "wellness"]
        assert len(wellness) >= 12
        heights = [o.value for o in p.record.observations if o.codes[0].code == "8302-2"]
        assert len(heights) == len(wellness)
        assert heights == sorted(heights)


# --------------------------------------------------------------- causes simulated by modules

@pytest.mark.parametrize("sex", ["M", "F"])
def test_removing_a_cause_takes_its_rate_out_of_the_hazard(sex):
    # constant hazard within a year of age: -ln(1 - q) falls by the cause's yearly rate
    rates = {"covid19": {"M": 1822.6e-5, "F": 1138.5e-5}, "opioid_overdose": {"M": 55.5e-5, "F": 24.4e-5},
             "lung_cancer": {"M": 141.7e-5, "F": 110.7e-5}, "prostate_cancer": {"M": 156.0e-5, "F": 0.0}}
    for cause, age in (("covid19", 90), ("opioid_overdose", 30), ("lung_cancer", 70), ("prostate_cancer", 80)):
        q = facts.annual_death_probability(age, sex)
        q_ex = facts.annual_death_probability(age, sex, frozenset({cause}))
        assert -math.log1p(-q) - -math.log1p(-q_ex) == pytest.approx(rates[cause][sex], rel=1e-6, abs=1e-12)
        assert facts.cause_death_rate(cause, age, sex) == pytest.approx(rates[cause][sex], rel=1e-6)
    assert facts.annual_death_probability(100, sex, frozenset(facts.mortality_causes())) == 1.0


def test_life_expectancy_without_the_simulated_causes_is_longer():
    causes = frozenset(facts.mortality_causes())
    assert set(causes) >= {"covid19", "opioid_overdose", "hiv", "lung_cancer", "dementia"}
    for sex in ("M", "F"):
        full = facts.life_expectancy(sex)
        # COVID-19 alone cost about 1.5-2 years of life expectancy in 2021 (NCHS VSRR 23, 2022)
        gain = facts.life_expectancy(sex, frozenset({"covid19"})) - full
        assert 1.0 < gain < 3.0, (sex, gain)
        # every cause the library simulates: more, but far from the table's whole mortality
        assert gain < facts.life_expectancy(sex, causes) - full < 12.0


def test_every_cause_is_declared_by_a_module_of_the_library():
    # a row nobody declares would be dead data; a declared cause is checked at compile
    declared = {c for m in load_library().modules.values()
                for c in m.spec.get("background_mortality_excludes", [])}
    assert declared == set(facts.mortality_causes())
    with pytest.raises(ValueError, match="known: breast_cancer"):
        facts.cause_death_rate("influenza", 50, "M")


def test_an_unknown_cause_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="known: breast_cancer, colorectal_cancer, covid19"):
        facts.annual_death_probability(50, "M", frozenset({"influenza"}))


def _one_module_library(tmp_path, excludes):
    spec = {"name": "m", "background_mortality_excludes": excludes,
            "states": {"Initial": {"type": "Initial", "direct_transition": "Done"}, "Done": {"type": "Terminal"}}}
    (tmp_path / "m.json").write_text(json.dumps(spec))
    return load_library(tmp_path)


def test_a_module_naming_an_unknown_cause_fails_to_compile_with_its_file(tmp_path):
    from modules.errors import ModuleError
    with pytest.raises(ModuleError, match=r"m\.json: background_mortality_excludes: unknown cause 'flu'"):
        compile_library(_one_module_library(tmp_path, ["flu"]))


def test_modules_validate_checks_the_shape_of_the_excludes(tmp_path):
    from modules.loader import validate_library
    spec = {"name": "m", "background_mortality_excludes": "covid19",
            "states": {"Initial": {"type": "Initial", "direct_transition": "Done"}, "Done": {"type": "Terminal"}}}
    (tmp_path / "m.json").write_text(json.dumps(spec))
    _lib, errors, _warnings = validate_library(tmp_path)
    assert any(e.place == "background_mortality_excludes" for e in errors)


def test_background_deaths_leave_out_the_causes_the_running_modules_simulate(tmp_path):
    programs = compile_library(_one_module_library(tmp_path, ["covid19", "opioid_overdose", "hiv"]))
    assert programs["m"].background_excludes == ("covid19", "opioid_overdose", "hiv")
    # born on the end date: the age at death is drawn at birth, so no life needs simulating
    config = RunConfig(population=1, seed=2, age_range=(0, 0), gender="M", years_of_history=0,
                       reference_date=dt.date(2024, 1, 1))
    n = 300
    with_module = np.array([_lifespan(simulate_patient(i, config, programs, ["m"])) for i in range(n)])
    without = np.array([_lifespan(simulate_patient(i, config, programs, [])) for i in range(n)])
    # the same seeds draw the same uniform: each life is at least as long without the causes,
    # and the paired gain averages the difference of the two tables' life expectancies
    gain = with_module - without
    assert (gain >= -1e-9).all()
    excluded = frozenset({"covid19", "opioid_overdose", "hiv"})
    expected = facts.life_expectancy("M", excluded) - facts.life_expectancy("M")
    assert abs(gain.mean() - expected) < 5 * gain.std() / math.sqrt(n) + 0.2, (gain.mean(), expected)


def _lifespan(p):
    return (p.death - p.birth) / 365.25


@pytest.mark.parametrize("ckd, below", [(None, None), (0, None), (1, None), (2, None),
                                        (True, None), (3, 60.0), (4.0, 30.0), (5, 15.0),
                                        (np.int64(4), 30.0), (math.inf, 15.0)])
def test_egfr_falls_with_chronic_kidney_disease_from_stage_3(ckd, below):
    # Synthea's modules set "ckd" to 0 for everybody and count stages up from 1: kidney
    # function falls into KDIGO's G3 from stage 3 on, not when the attribute is set.
    def egfr(stage):
        h = make_harness({}, age_years=50, seed=4)
        life = Lifecycle(h.person, h.env, T0 + YEAR, h.env.event())
        if stage is not None:
            h.person.set_attribute("ckd", stage)
        life.update_body(T0)
        return h.person.vitals["EGFR"]

    healthy = egfr(None)
    assert healthy > 60  # seed 4 draws a 50-year-old with normal kidney function
    if below is None:
        assert egfr(ckd) == healthy
    else:
        assert egfr(ckd) < below
