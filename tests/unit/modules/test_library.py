"""The embedded module library: every module validates, each one's key states are reached
at a plausible rate in a small population, and the records read like a real practice's
(no drug before its reason is diagnosed, no pregnancy for men, nothing after death)."""

from __future__ import annotations

import datetime as dt
import math

import pytest

from modules.loader import default_library_path, validate_library
from simulator.population import RunConfig, _prepare, simulate_patient
from tests.unit.modules.records import (
    assert_no_medication_before_its_reason,
    assert_nothing_after_death,
)

REF = dt.date(2025, 1, 1)
N = 400  # patients aged 40-90: long enough lives to reach childhood and adult conditions

# (module, condition codes, plausible share of patients aged 40-90 who ever had one of them):
# wide bounds from the published figures each module cites; the test allows four binomial
# standard deviations beyond them, so it does not depend on a lucky seed.
KEY_CONDITIONS = [
    ("appendicitis", {"74400008"}, 0.02, 0.15),
    ("asthma", {"195967001"}, 0.06, 0.30),
    ("hypertension", {"59621000"}, 0.40, 0.85),
    ("pharyngitis", {"43878008", "195662009"}, 0.50, 1.00),
    ("sinusitis", {"444814009", "75498004"}, 0.60, 1.00),
    ("type2_diabetes", {"44054006"}, 0.10, 0.40),
    ("otitis_media", {"65363002"}, 0.50, 1.00),
    ("urinary_tract_infection", {"38822007"}, 0.25, 0.80),
    # obesity is coded whenever a visit's BMI is 30 or more and ended when it falls below;
    # the engine's BMI wanders from year to year, so most people cross 30 at some visit
    ("obesity", {"414916001"}, 0.35, 0.95),
    ("hypercholesterolemia", {"13644009"}, 0.05, 0.20),
    ("coronary_heart_disease", {"53741008"}, 0.04, 0.25),
    ("heart_failure", {"703272007", "446221000"}, 0.01, 0.12),
    ("atrial_fibrillation", {"49436004"}, 0.01, 0.12),
    ("stroke", {"422504002", "274100004"}, 0.01, 0.12),
    ("chronic_kidney_disease", {"431856006", "433144002"}, 0.08, 0.40),
    ("copd", {"13645005"}, 0.03, 0.20),
    ("depression", {"36923009", "66344007"}, 0.10, 0.45),
    ("anxiety", {"21897009"}, 0.02, 0.20),
]
# Normal pregnancy, Pregnant, miscarriage (first, second trimester), ectopic pregnancy,
# gestational diabetes, pre-eclampsia
PREGNANCY = {"72892002", "77386006", "19169002", "85116003", "34801009", "11687002", "398254007"}
# modules whose key states test_library_acute.py checks
ACUTE = {"bronchitis", "injuries", "pregnancy", "contraception", "allergies", "tobacco", "alcohol",
         "opioids", "hiv", "covid19", "covid19_vaccination"}


@pytest.fixture(scope="module")
def population():
    config = RunConfig(population=N, seed=7, age_range=(40, 90), reference_date=REF)
    programs, top = _prepare(config)
    return [simulate_patient(i, config, programs, top) for i in range(N)]


def test_every_module_validates():
    _library, errors, warnings = validate_library(default_library_path())
    assert errors == [] and warnings == [], [str(p) for p in errors + warnings]


def test_every_top_level_module_is_exercised():
    library, _errors, _warnings = validate_library(default_library_path())
    tested = {m for m, *_ in KEY_CONDITIONS} | {"wellness_encounters"} | ACUTE
    assert set(library.top_level()) <= tested


@pytest.mark.parametrize(("module", "codes", "low", "high"), KEY_CONDITIONS,
                         ids=[m for m, *_ in KEY_CONDITIONS])
def test_key_condition_is_reached_at_a_plausible_rate(population, module, codes, low, high):
    n = len(population)
    hits = sum(1 for p in population if any(c.codes[0].code in codes for c in p.record.conditions))
    slack_low = 4 * math.sqrt(n * low * (1 - low))
    slack_high = 4 * math.sqrt(n * high * (1 - high))
    assert n * low - slack_low <= hits <= n * high + slack_high, (module, hits, n)


def test_no_medication_before_its_reason_is_diagnosed(population):
    assert_no_medication_before_its_reason(population)


def test_no_pregnancy_for_men(population):
    for p in population:
        if p.gender == "M":
            assert not any(c.codes[0].code in PREGNANCY for c in p.record.conditions)


def test_nothing_after_death(population):
    assert_nothing_after_death(population)


def test_shared_attributes_link_the_modules(population):
    # Diabetes and hypertension feed kidney and heart disease: those with them get CKD
    # more often than those without (the modules' risk gates read the attributes).
    def ckd(p):
        return any(c.codes[0].code in {"431856006", "433144002"} for c in p.record.conditions)
    exposed = [p for p in population if p.attributes.get("diabetes") is True]
    unexposed = [p for p in population if p.attributes.get("diabetes") is not True
                 and p.attributes.get("hypertension") is not True]
    assert exposed and unexposed
    assert sum(map(ckd, exposed)) / len(exposed) > sum(map(ckd, unexposed)) / len(unexposed)
