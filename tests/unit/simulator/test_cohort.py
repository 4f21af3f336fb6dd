"""Cohorts started at the index event: endpoints against a rule module whose laws are
known (tests/data/trial/modules/trial_course.json), CONSORT counts, determinism, index
events and what cuts follow-up short."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modules.errors import ConfigError, DataError
from modules.loader import load_library
from simulator.cohort import TableSource, cohort_programs, read_baseline_table, run_cohort
from simulator.engine import compile_library
from simulator.person import day_of
from simulator.protocol import Criterion, Eligibility, Protocol, load_protocol

DATA = Path(__file__).resolve().parents[2] / "data" / "trial"
MEAN = 300.0  # the module's exponential mean (days)
P_PROGRESS = 0.4


@pytest.fixture(scope="module")
def base_protocol() -> Protocol:
    return load_protocol(DATA / "protocol.yaml")


@pytest.fixture(scope="module")
def programs(base_protocol):
    lib = load_library(base_protocol.modules_dir)
    return cohort_programs(base_protocol, lib, compile_library(lib))


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return read_baseline_table(DATA / "baseline.csv")


def with_(p: Protocol, **kw) -> Protocol:
    """The protocol with some sections replaced (``arm_size``, ``replace``...)."""
    if "arm_size" in kw:
        kw["arm"] = dataclasses.replace(p.arm, size=kw.pop("arm_size"))
    if "replace" in kw:
        kw["baseline"] = dataclasses.replace(p.baseline, replace=kw.pop("replace"))
    if "follow" in kw:
        kw["follow_up"] = dataclasses.replace(p.follow_up, **kw.pop("follow"))
    return dataclasses.replace(p, **kw)


def source(p: Protocol, table: pd.DataFrame) -> TableSource:
    return TableSource.filtered(table, "baseline.csv", p.baseline.where,
                                replace=p.baseline.replace, protocol=p)


def within(share: float, p: float, n: int) -> bool:
    """share within 4 binomial standard errors of p."""
    return abs(share - p) <= 4.0 * math.sqrt(p * (1 - p) / n)


@pytest.fixture(scope="module")
def big(base_protocol, programs, table):
    p = with_(base_protocol, arm_size=400, replace=True, eligibility=Eligibility())
    return p, run_cohort(p, source(p, table), programs, progress=False)


def test_endpoints_follow_the_module_laws(big, table):
    p, result = big
    subjects = result.subjects
    n = len(subjects)
    assert n == 400
    pfs = np.array([s.endpoints["PFS"].value for s in subjects])
    pfs_event = np.array([not s.endpoints["PFS"].censored for s in subjects])
    # Time to progression or death is exponential with mean 300 days.
    assert within(pfs_event.mean(), 1 - math.exp(-365 / MEAN), n)
    assert within(np.mean(pfs_event & (pfs <= 100)), 1 - math.exp(-100 / MEAN), n)
    assert np.all(pfs[~pfs_event] == 365.0)  # censored at the end of follow-up
    assert {s.endpoints["PFS"].description for s in subjects if s.endpoints["PFS"].censored} \
        == {"END OF FOLLOW-UP"}
    # Death: directly (60%) or 30 days after a progression (40%).
    p_death = (1 - P_PROGRESS) * (1 - math.exp(-365 / MEAN)) + \
        P_PROGRESS * (1 - math.exp(-335 / MEAN))
    os_event = np.array([not s.endpoints["OS"].censored for s in subjects])
    assert within(os_event.mean(), p_death, n)
    progressed = np.array([s.endpoints["PFS"].description.startswith("STATE") for s in subjects])
    assert within(progressed.mean(), P_PROGRESS * (1 - math.exp(-365 / MEAN)), n)
    for s, prog in zip(subjects, progressed, strict=True):
        pf, os_, ttt = (s.endpoints[k] for k in ("PFS", "OS", "TTT"))
        if prog:
            # second-line therapy starts at the progression; death exactly 30 days later
            assert ttt.value == pytest.approx(pf.value) and not ttt.censored
            if not os_.censored:
                assert os_.value == pytest.approx(pf.value + 30.0)
        else:
            assert ttt.censored
            if not pf.censored:
                assert pf.description == "DEATH" and os_.value == pytest.approx(pf.value)
    # Binary outcomes at a time, and the observation endpoint.
    prog180 = [s.endpoints["PROG180"].value for s in subjects]
    assert within(np.mean([v == 1.0 for v in prog180]),
                  P_PROGRESS * (1 - math.exp(-180 / MEAN)), n)
    alive = np.array([s.endpoints["ALIVE365"].value for s in subjects])
    assert set(alive) <= {0.0, 1.0} and np.all(alive == (~os_event).astype(float))
    cd4 = dict(zip(table["pid"].astype(str), table["cd4"], strict=True))
    for s in subjects:
        v = s.endpoints["CD4D90"].value
        alive90 = s.endpoints["OS"].censored or s.endpoints["OS"].value > 90
        assert (v == cd4[s.source_id]) if alive90 else v is None
    assert sum(result.consort.follow_up.values()) == n


def test_patients_are_started_at_the_index_event(big):
    p, result = big
    lo, hi = day_of(p.index.start), day_of(p.index.end)
    for s in result.subjects:
        assert lo <= s.index_time <= hi and s.index_time == int(s.index_time)
        assert s.sex in ("M", "F") and s.race in ("WHITE", "BLACK OR AFRICAN AMERICAN", "ASIAN")
        # whole years of age at time zero, as the baseline row says
        assert s.age == s.covariates["age"]


def test_consort_counts_from_a_finite_table(base_protocol, programs, table):
    in_age = table[(table.age >= 18) & (table.age <= 75)]
    eligible = int((in_age.hemophil != 1).sum())
    p = with_(base_protocol, arm_size=eligible)
    result = run_cohort(p, source(p, table), programs, progress=False)
    c = result.consort
    # constraints keep the source to the age range, so exactly those rows are generated
    assert c.source_rows == len(table) and c.matching_rows == len(in_age)
    assert c.generated == len(in_age) and c.eligible == c.enrolled == eligible
    assert dict(c.not_eligible) == {"excluded: hemophilia": len(in_age) - eligible}
    with pytest.raises(ConfigError, match=r"arm.size .* baseline.replace: true"):
        run_cohort(with_(p, arm_size=eligible + 1), source(p, table), programs,
                   progress=False)


def test_a_patient_does_not_depend_on_the_others(base_protocol, programs, table):
    p = with_(base_protocol, arm_size=30)
    a = run_cohort(p, source(p, table), programs, progress=False).subjects
    b = run_cohort(with_(p, arm_size=60), source(p, table), programs, progress=False).subjects
    again = run_cohort(p, source(p, table), programs, progress=False).subjects
    assert a == again
    assert a == b[:30]
    other_seed = run_cohort(with_(p, seed=8), source(p, table), programs,
                            progress=False).subjects
    assert [s.endpoints for s in other_seed] != [s.endpoints for s in a]


def test_data_cutoff_and_dropout_cut_follow_up_short(base_protocol, programs, table):
    cutoff = dt.date(2024, 12, 31)
    p = with_(base_protocol, arm_size=120, replace=True,
              follow={"data_cutoff": cutoff, "dropout_per_year": 0.5})
    result = run_cohort(p, source(p, table), programs, progress=False)
    reasons = result.consort.follow_up
    assert set(reasons) <= {"death", "lost to follow-up", "data cut-off"}
    assert reasons["lost to follow-up"] > 0 and reasons["data cut-off"] > 0
    for s in result.subjects:
        assert s.end_time <= day_of(cutoff) + 1e-9
        if s.end_reason != "death":
            assert s.endpoints["OS"].censored and s.endpoints["OS"].description == \
                s.end_reason.upper()


def test_background_mortality_adds_deaths_of_old_age(base_protocol, programs):
    old = pd.DataFrame({"pid": [str(i) for i in range(200)], "age": 90, "sex": 1, "race": 1,
                        "cd4": 100, "hemophil": 0, "karnof": 80})
    p = with_(base_protocol, arm_size=200, modules=(), endpoints=base_protocol.endpoints[1:2],
              eligibility=Eligibility(),
              index=dataclasses.replace(base_protocol.index, event="enrollment", module=None,
                                        state=None),
              follow={"background_mortality": True})
    result = run_cohort(p, source(p, old), programs, progress=False)
    dead = np.mean([not s.endpoints["OS"].censored for s in result.subjects])
    # US life table: about 16% of 90-year-old men die within a year (NCHS)
    assert 0.06 < dead < 0.30


def test_a_diagnosis_index_records_the_condition(base_protocol, programs, table, tmp_path):
    text = (DATA / "protocol.yaml").read_text().replace(
        "index: {event: state, module: trial_course, state: Randomized, start: 2024-01-01, "
        "end: 2024-06-30}",
        "index: {event: diagnosis, code: {system: SNOMED-CT, code: '86406008', display: HIV},"
        " start: 2024-03-01}")
    text = text.replace("  exclusion:", "    - {condition_type: Active Condition, codes: "
                                        "[{system: SNOMED-CT, code: '86406008'}]}\n  exclusion:")
    (tmp_path / "p.yaml").write_text(text)
    (tmp_path / "baseline.csv").write_bytes((DATA / "baseline.csv").read_bytes())
    p = with_(load_protocol(tmp_path / "p.yaml"), arm_size=20, modules_dir=DATA / "modules")
    seen = []
    result = run_cohort(p, source(p, table), programs, progress=False,
                        on_enrolled=lambda person, s: seen.append(person))
    assert len(seen) == 20 and "86406008" not in str(result.consort.not_eligible)
    for person, s in zip(seen, result.subjects, strict=True):
        assert s.index_date == dt.date(2024, 3, 1)
        dx = [c for c in person.record.conditions if c.codes[0].code == "86406008"]
        assert dx and dx[0].start == s.index_time
        # the module started at Initial: Randomized is reached, and counts, after time zero
        assert not s.endpoints["PFS"].censored or s.endpoints["PFS"].value == 365.0


def test_bad_baseline_rows_and_columns(base_protocol, programs, table):
    bad = table.copy()
    bad.loc[bad.index[0], "sex"] = 3
    p = with_(base_protocol, arm_size=len(bad))
    with pytest.raises(DataError, match=r"row \d+, column 'sex': sex 3 is neither M nor F"):
        run_cohort(with_(p, arm_size=5, replace=True),
                   TableSource(bad.iloc[:1], "bad.csv", replace=True), programs,
                   progress=False)
    with pytest.raises(DataError) as info:
        run_cohort(p, TableSource(table.drop(columns=["cd4", "race"]), "t.csv"), programs,
                   progress=False)
    text = str(info.value)
    assert "baseline.race: column 'race' is not in the baseline source t.csv" in text
    assert "baseline.observations[0].column: column 'cd4'" in text
    with pytest.raises(DataError, match="baseline.source.where.arm"):
        TableSource.filtered(table, "t.csv", {"arm": frozenset({"0"})}, protocol=p)


def test_a_number_compared_with_a_categorical_column_is_a_protocol_error(
        base_protocol, programs, table):
    text = table.assign(karnof=table["karnof"].astype(str))  # a categorical column
    crit = Criterion("fit", {"condition_type": "Attribute", "attribute": "karnof",
                             "operator": ">=", "value": 80})
    p = with_(base_protocol, arm_size=5, eligibility=Eligibility(inclusion=(crit,)))
    with pytest.raises(ConfigError, match=r"eligibility.inclusion\[0\]: Attribute condition "
                                          r"on 'karnof': cannot compare .*quote the value"):
        run_cohort(p, source(p, text), programs, progress=False)
    quoted = Criterion("fit", {**crit.condition, "operator": "==", "value": "80"})
    p = with_(p, eligibility=Eligibility(inclusion=(quoted,)))
    result = run_cohort(p, source(p, text), programs, progress=False)
    assert {s.covariates["karnof"] for s in result.subjects} == {"80"}
