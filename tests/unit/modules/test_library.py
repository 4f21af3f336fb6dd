"""The embedded module library: every module validates, each one's key states are reached
at a plausible rate in a small population, and the records read like a real practice's
(no drug, procedure or visit before its reason is diagnosed, no pregnancy for men, no prostate
cancer or PSA for women and no mammography for men, hospice only in a terminal illness,
nothing after death)."""

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
    # incidence figures of the module remarks (SEER, Lawrence 2008, NHANES, Manly 2022) over
    # the years these patients lived past 40
    ("dementia", {"26929004", "429998004", "52448006"}, 0.01, 0.15),
    ("osteoarthritis", {"239873007", "239872002", "201834006"}, 0.12, 0.55),
    ("osteoporosis", {"64859006"}, 0.01, 0.15),
    ("breast_cancer", {"254837009"}, 0.005, 0.06),
    ("lung_cancer", {"254637007", "254632001"}, 0.002, 0.04),
    ("colorectal_cancer", {"363406005", "363351006"}, 0.002, 0.04),
    ("prostate_cancer", {"399068003"}, 0.005, 0.08),
]
# modules whose key states are procedures: (module, procedure codes, plausible share)
KEY_PROCEDURES = [
    ("end_of_life", {"713603004"}, 0.08, 0.60),  # advance care planning
]
# Normal pregnancy, Pregnant, miscarriage (first, second trimester), ectopic pregnancy,
# gestational diabetes, pre-eclampsia
PREGNANCY = {"72892002", "77386006", "19169002", "85116003", "34801009", "11687002", "398254007"}
# modules whose key states test_library_acute.py checks
ACUTE = {"bronchitis", "injuries", "pregnancy", "contraception", "allergies", "tobacco", "alcohol",
         "opioids", "hiv", "covid19", "covid19_vaccination"}
WOMEN_ONLY = {"254837009": "breast cancer", "24623002": "screening mammography",
              "241055006": "diagnostic mammography"}
MEN_ONLY = {"399068003": "prostate cancer", "2857-1": "PSA", "65575008": "prostate biopsy",
            "90470006": "prostatectomy"}
CANCER_DEATHS = {"254637007", "254632001", "254837009", "363406005", "363351006", "399068003"}


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
    tested = {m for m, *_ in KEY_CONDITIONS + KEY_PROCEDURES} | {"wellness_encounters"} | ACUTE
    assert set(library.top_level()) <= tested


def _within_binomial(hits: int, n: int, low: float, high: float) -> bool:
    slack_low = 4 * math.sqrt(n * low * (1 - low))
    slack_high = 4 * math.sqrt(n * high * (1 - high))
    return n * low - slack_low <= hits <= n * high + slack_high


KEY_STATES = [("conditions", *c) for c in KEY_CONDITIONS] + [("procedures", *p) for p in KEY_PROCEDURES]


@pytest.mark.parametrize(("kind", "module", "codes", "low", "high"), KEY_STATES,
                         ids=[m for _, m, *_ in KEY_STATES])
def test_key_state_is_reached_at_a_plausible_rate(population, kind, module, codes, low, high):
    n = len(population)
    hits = sum(1 for p in population if any(e.codes[0].code in codes for e in getattr(p.record, kind)))
    assert _within_binomial(hits, n, low, high), (module, hits, n)


def test_no_medication_before_its_reason_is_diagnosed(population):
    assert_no_medication_before_its_reason(population)


def test_no_procedure_care_plan_or_visit_before_its_reason_is_diagnosed(population):
    for p in population:
        onset: dict[str, float] = {}
        for c in p.record.conditions:
            onset[c.codes[0].code] = min(onset.get(c.codes[0].code, math.inf), c.start)
        for kind in ("procedures", "careplans", "encounters"):
            for e in getattr(p.record, kind):
                reasons = e.reasons if kind == "careplans" else (e.reason,) if e.reason else ()
                for r in reasons:
                    assert onset.get(r.code, math.inf) <= e.start + 1e-9, (kind, e.state, r)


def test_sex_specific_cancers_and_screening(population):
    for p in population:
        rec = p.record
        codes = {e.codes[0].code for kind in ("conditions", "procedures", "observations")
                 for e in getattr(rec, kind)}
        wrong = MEN_ONLY if p.gender == "F" else WOMEN_ONLY
        assert not codes & set(wrong), (p.gender, [wrong[c] for c in codes & set(wrong)])


def test_cancer_deaths_follow_a_diagnosis_and_hospice_a_terminal_illness(population):
    hospice = [p for p in population if any(e.encounter_class == "hospice" for e in p.record.encounters)]
    for p in population:
        if p.death is not None and p.death_cause and p.death_cause[0].code in CANCER_DEATHS:
            onset = min(c.start for c in p.record.conditions if c.codes[0].code == p.death_cause[0].code)
            assert onset < p.death
    for p in hospice:
        first = min(e.start for e in p.record.encounters if e.encounter_class == "hospice")
        assert p.attributes.get("terminal_illness") is not None
        assert first < (p.death if p.death is not None else math.inf)
        # hospice comes in the last weeks of life (a terminal phase lasts 2-12 weeks)
        assert p.death is None or p.death - first <= 7 * 13


def test_two_in_three_terminal_patients_enroll_in_hospice(population):
    terminal = [p for p in population if p.attributes.get("terminal_illness") is not None]
    enrolled = sum(1 for p in terminal if any(e.encounter_class == "hospice" for e in p.record.encounters))
    assert terminal, "some patients aged 40-90 should reach a terminal phase"
    assert _within_binomial(enrolled, len(terminal), 0.65, 0.65), (enrolled, len(terminal))


def test_no_pregnancy_for_men(population):
    for p in population:
        if p.gender == "M":
            assert not any(c.codes[0].code in PREGNANCY for c in p.record.conditions)


def test_nothing_after_death(population):
    assert_nothing_after_death(population)


def test_smoking_raises_lung_cancer(population):
    # current smokers have 20 times and former smokers 6 times the draw of never smokers
    def share(people):
        lung = {"254637007", "254632001"}
        return sum(1 for p in people if any(c.codes[0].code in lung for c in p.record.conditions)) / len(people)
    ever = [p for p in population if p.attributes.get("smoker") or "quit smoking age" in p.attributes]
    never = [p for p in population if p not in ever]
    assert share(ever) > share(never)


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
