"""The Synthea-compatible CSV exporter: headers, references, formats, determinism,
years of history and merging of parts."""

from __future__ import annotations

import csv
import datetime as dt
import io
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporters.common import Clock
from exporters.csv import FILES, CsvSink, _observation_value, _q, entry_id
from modules.errors import ConfigError, OutputError
from simulator.person import Person, date_of, day_of
from simulator.record import (
    Allergy,
    CarePlan,
    Code,
    Condition,
    Device,
    Encounter,
    ImagingStudy,
    Immunization,
    Medication,
    Observation,
    Procedure,
    Report,
    Supply,
)

# Synthea 3.x's header lines (CSVConstants), restated here so the test does not trust the
# module's own table.
SYNTHEA_HEADERS = {
    "patients.csv": "Id,BIRTHDATE,DEATHDATE,SSN,DRIVERS,PASSPORT,PREFIX,FIRST,MIDDLE,LAST,"
                    "SUFFIX,MAIDEN,MARITAL,RACE,ETHNICITY,GENDER,BIRTHPLACE,ADDRESS,CITY,STATE,"
                    "COUNTY,FIPS,ZIP,LAT,LON,HEALTHCARE_EXPENSES,HEALTHCARE_COVERAGE,INCOME",
    "encounters.csv": "Id,START,STOP,PATIENT,ORGANIZATION,PROVIDER,PAYER,ENCOUNTERCLASS,CODE,"
                      "DESCRIPTION,BASE_ENCOUNTER_COST,TOTAL_CLAIM_COST,PAYER_COVERAGE,"
                      "REASONCODE,REASONDESCRIPTION",
    "conditions.csv": "START,STOP,PATIENT,ENCOUNTER,SYSTEM,CODE,DESCRIPTION",
    "allergies.csv": "START,STOP,PATIENT,ENCOUNTER,CODE,SYSTEM,DESCRIPTION,TYPE,CATEGORY,"
                     "REACTION1,DESCRIPTION1,SEVERITY1,REACTION2,DESCRIPTION2,SEVERITY2",
    "medications.csv": "START,STOP,PATIENT,PAYER,ENCOUNTER,CODE,DESCRIPTION,BASE_COST,"
                       "PAYER_COVERAGE,DISPENSES,TOTALCOST,REASONCODE,REASONDESCRIPTION",
    "observations.csv": "DATE,PATIENT,ENCOUNTER,CATEGORY,CODE,DESCRIPTION,VALUE,UNITS,TYPE",
    "procedures.csv": "START,STOP,PATIENT,ENCOUNTER,SYSTEM,CODE,DESCRIPTION,BASE_COST,"
                      "REASONCODE,REASONDESCRIPTION",
    "immunizations.csv": "DATE,PATIENT,ENCOUNTER,CODE,DESCRIPTION,BASE_COST",
    "careplans.csv": "Id,START,STOP,PATIENT,ENCOUNTER,CODE,DESCRIPTION,REASONCODE,"
                     "REASONDESCRIPTION",
    "devices.csv": "START,STOP,PATIENT,ENCOUNTER,CODE,DESCRIPTION,UDI",
    "imaging_studies.csv": "Id,DATE,PATIENT,ENCOUNTER,SERIES_UID,BODYSITE_CODE,"
                           "BODYSITE_DESCRIPTION,MODALITY_CODE,MODALITY_DESCRIPTION,"
                           "INSTANCE_UID,SOP_CODE,SOP_DESCRIPTION,PROCEDURE_CODE",
    "supplies.csv": "DATE,PATIENT,ENCOUNTER,CODE,DESCRIPTION,QUANTITY",
}

UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
DATE = re.compile(r"^\d{4}-\d\d-\d\d$")


@dataclass(frozen=True)
class Demo:
    """Stand-in for simulator.demographics.Demographics (same fields)."""

    gender: str = "F"
    race: str = "white"
    ethnicity: str = "nonhispanic"
    first_name: str = "Ada"
    last_name: str = "O'Brien, Jr"
    prefix: str = "Mrs."
    state: str = "Massachusetts"
    state_abbr: str = "MA"
    city: str = "Springfield"
    county: str = "Hampden County"
    zip: str = "01103"
    address: str = '12 Main St, Apt "B"'
    lat: float = 42.1015
    lon: float = -72.5898
    income: int = 52000
    education: str = "bs_degree"
    socioeconomic_category: str = "Middle"
    sei_score: float = 0.5
    marital_status: str = "M"
    first_language: str = "english"
    birthplace: str = "Boston, Massachusetts, US"
    ssn: str = "999-12-3456"
    phone: str = "555-123-4567"


def at(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> float:
    return day_of(dt.datetime(y, mo, d, h, mi, s, tzinfo=dt.UTC))


END = at(2024, 1, 1)
SNOMED = "SNOMED-CT"


def make_person(seed: int = 12345, *, index: int = 0, death: float | None = None) -> Person:
    """A patient with one entry of every kind (and a few old ones for years of history)."""
    p = Person(index=index, seed=seed, rng=np.random.default_rng(1), birth=at(1960, 5, 17),
               gender="F")
    p.demographics = Demo()
    p.death = death
    rec = p.record

    old = Encounter("old_visit", at(1990, 1, 1, 10, 30), (Code(SNOMED, "162673000",
                                                               "General examination"),),
                    "wellness")
    old.end(old.start)
    enc = Encounter("visit", at(2020, 3, 4, 5, 6, 7), (Code(SNOMED, "185345009",
                                                          "Encounter for symptom"),),
                    "Ambulatory", reason=Code(SNOMED, "38341003", "Hypertension"))
    enc.end(enc.start + 0.5 / 24)
    rec.encounters += [old, enc]

    ended = Condition("old_ended", at(1990, 1, 1, 10, 30), (Code(SNOMED, "444814009",
                                                                 "Viral sinusitis"),), old)
    ended.stop = at(1990, 1, 20)
    active = Condition("old_active", at(1990, 1, 1, 10, 30),
                       (Code(SNOMED, "38341003", 'Hypertension, essential "primary"'),), old)
    recent = Condition("recent", at(2020, 3, 4, 5, 6, 7), (Code(SNOMED, "195662009",
                                                               "Acute pharyngitis"),), enc)
    recent.stop = at(2020, 3, 18, 23, 59)
    rec.conditions += [ended, active, recent]

    rec.allergies.append(Allergy(
        "allergy", at(2020, 3, 4, 5, 6, 7), (Code("RxNorm", "7980", "Penicillin G"),), enc,
        allergy_type="allergy", category="medication",
        reactions=((Code(SNOMED, "271807003", "Eruption of skin"), "MILD"),
                   (Code(SNOMED, "39579001", "Anaphylaxis"), "SEVERE"),
                   (Code(SNOMED, "247472004", "Wheal"), "MODERATE"))))

    med = Medication("med", at(2020, 3, 4, 5, 6, 7), (Code("RxNorm", "314076",
                                                        "lisinopril 10 MG Oral Tablet"),), enc,
                     reason=Code(SNOMED, "38341003", "Hypertension"), chronic=True,
                     prescription={"duration": {"quantity": 30, "unit": "days"}})
    rec.medications.append(med)

    bp = Observation("bp", at(2020, 3, 4, 5, 6, 7), (Code("LOINC", "8480-6",
                                                       "Systolic blood pressure"),), enc,
                     value=120, unit="mm[Hg]", category="vital-signs")
    coded = Observation("smoking", at(2020, 3, 4, 5, 6, 7),
                        (Code("LOINC", "72166-2", "Tobacco smoking status"),), enc,
                        value=Code(SNOMED, "266919005", "Never smoked tobacco"),
                        category="survey")
    a1c = Observation("a1c", at(2020, 3, 4, 5, 6, 7), (Code("LOINC", "4548-4", "Hemoglobin A1c"),),
                      enc, value=5.64, unit="%", category="laboratory")
    panel = Observation("panel", at(2020, 3, 4, 5, 6, 7),
                        (Code("LOINC", "55284-4", "Blood pressure systolic and diastolic"),),
                        enc, value=None, category="vital-signs",
                        components=(
                            Observation("sys", at(2020, 3, 4, 5, 6, 7),
                                        (Code("LOINC", "8480-6", "Systolic blood pressure"),),
                                        enc, value=118.0, unit="mm[Hg]",
                                        category="vital-signs"),
                            Observation("dia", at(2020, 3, 4, 5, 6, 7),
                                        (Code("LOINC", "8462-4", "Diastolic blood pressure"),),
                                        enc, value=76.0, unit="mm[Hg]",
                                        category="vital-signs")))
    old_obs = Observation("old_bmi", at(1990, 1, 1, 10, 30), (Code("LOINC", "39156-5", "BMI"),),
                          old, value=22.0, unit="kg/m2", category="vital-signs")
    rec.observations += [old_obs, bp, coded, a1c, panel]
    rec.reports.append(Report("report", at(2020, 3, 4, 5, 6, 7),
                              (Code("LOINC", "4548-4", "Hemoglobin A1c"),), enc, (a1c,)))

    proc = Procedure("proc", at(2020, 3, 4, 5, 10), (Code(SNOMED, "430193006",
                                                        "Medication reconciliation"),), enc,
                     reason=Code(SNOMED, "38341003", "Hypertension"))
    proc.stop = at(2020, 3, 4, 5, 25)
    rec.procedures.append(proc)

    rec.immunizations.append(Immunization("flu", at(2020, 3, 4, 5, 6, 7),
                                          (Code("CVX", "140", "Influenza, seasonal"),), enc))
    rec.careplans.append(CarePlan("plan", at(2020, 3, 4, 5, 6, 7),
                                  (Code(SNOMED, "443402002", "Lifestyle education"),), enc,
                                  reasons=(Code(SNOMED, "38341003", "Hypertension"),)))
    rec.devices.append(Device("device", at(2021, 6, 1, 8), (Code(SNOMED, "337414009",
                                                               "Blood glucose meter"),), None))
    rec.imaging_studies.append(ImagingStudy(
        "xray", at(2020, 3, 4, 5, 20), (Code(SNOMED, "399208008", "Chest X-ray"),), enc,
        series=({"body_site": Code(SNOMED, "51185008", "Thoracic structure"),
                 "modality": Code("DICOM-DCM", "DX", "Digital Radiography"),
                 "instances": ({"title": "PA", "sop_class": Code(
                     "DICOM-SOP", "1.2.840.10008.5.1.4.1.1.1.1", "Digital X-Ray Image")},
                     {"title": "Lateral", "sop_class": Code(
                         "DICOM-SOP", "1.2.840.10008.5.1.4.1.1.1.1", "Digital X-Ray Image")})},)))
    rec.supplies.append(Supply("strips", at(2021, 6, 1, 8), (Code(SNOMED, "337388004",
                                                                "Blood glucose test strips"),),
                               None, quantity=50))
    return p


def export(folder: Path, people: list[Person], **kw) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    writer = CsvSink(**kw).open(folder)
    try:
        for p in people:
            writer.write(p)
    finally:
        writer.close()
    return folder


def rows(folder: Path, name: str) -> list[dict[str, str]]:
    with open(folder / name, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def person() -> Person:
    return make_person()


@pytest.fixture
def out(tmp_path: Path, person: Person) -> Path:
    return export(tmp_path / "part", [person], end=END)


# ---------------------------------------------------------------------- structure

def test_every_file_has_exactly_synthea_header(out: Path) -> None:
    assert sorted(p.name for p in out.iterdir()) == sorted(SYNTHEA_HEADERS)
    assert set(FILES) == set(SYNTHEA_HEADERS)
    for name, header in SYNTHEA_HEADERS.items():
        with open(out / name, newline="", encoding="utf-8") as f:
            assert f.readline() == header + "\n", name
        with open(out / name, newline="", encoding="utf-8") as f:
            assert csv.DictReader(f).fieldnames == header.split(","), name


def test_every_row_references_the_patient(out: Path, person: Person) -> None:
    for name in SYNTHEA_HEADERS:
        data = rows(out, name)
        assert data, f"{name} has no rows"
        key = "Id" if name == "patients.csv" else "PATIENT"
        assert {r[key] for r in data} == {person.id}, name


def test_patient_row(out: Path, person: Person) -> None:
    (row,) = rows(out, "patients.csv")
    assert row["BIRTHDATE"] == "1960-05-17"
    assert row["DEATHDATE"] == ""
    assert row["FIRST"] == "Ada" and row["LAST"] == "O'Brien, Jr"  # comma survives quoting
    assert row["ADDRESS"] == '12 Main St, Apt "B"'
    assert (row["SSN"], row["PREFIX"], row["MARITAL"]) == ("999-12-3456", "Mrs.", "M")
    assert (row["RACE"], row["ETHNICITY"], row["GENDER"]) == ("white", "nonhispanic", "F")
    assert (row["CITY"], row["STATE"], row["COUNTY"], row["ZIP"]) == (
        "Springfield", "Massachusetts", "Hampden County", "01103")
    assert float(row["LAT"]) == 42.1015 and float(row["LON"]) == -72.5898
    assert row["INCOME"] == "52000"
    # No cost model: empty cells, not invented numbers.
    assert row["HEALTHCARE_EXPENSES"] == row["HEALTHCARE_COVERAGE"] == ""


def test_deathdate_written_only_for_a_death_before_the_end(tmp_path: Path) -> None:
    dead = make_person(death=at(2022, 7, 9, 13))
    later = make_person(seed=7, death=END + 30)
    out = export(tmp_path / "p", [dead, later], end=END)
    deaths = [r["DEATHDATE"] for r in rows(out, "patients.csv")]
    assert deaths == ["2022-07-09", ""]


def test_rows_reference_the_right_encounter(out: Path, person: Person) -> None:
    encounters = rows(out, "encounters.csv")
    ids = [r["Id"] for r in encounters]
    assert len(set(ids)) == len(ids) == 2
    assert all(UUID4.match(i) for i in ids)
    by_start = {r["START"]: r["Id"] for r in encounters}
    visit = by_start["2020-03-04T05:06:07Z"]
    old = by_start["1990-01-01T10:30:00Z"]

    conditions = {r["CODE"]: r for r in rows(out, "conditions.csv")}
    assert conditions["444814009"]["ENCOUNTER"] == old
    assert conditions["195662009"]["ENCOUNTER"] == visit
    for name in ("allergies.csv", "medications.csv", "procedures.csv", "immunizations.csv",
                 "careplans.csv", "imaging_studies.csv"):
        assert {r["ENCOUNTER"] for r in rows(out, name)} == {visit}, name
    # Recorded outside any encounter: an empty cell.
    assert rows(out, "devices.csv")[0]["ENCOUNTER"] == ""
    assert rows(out, "supplies.csv")[0]["ENCOUNTER"] == ""


def test_encounter_row(out: Path) -> None:
    row = rows(out, "encounters.csv")[1]
    assert row["ENCOUNTERCLASS"] == "ambulatory"
    assert (row["CODE"], row["DESCRIPTION"]) == ("185345009", "Encounter for symptom")
    assert (row["REASONCODE"], row["REASONDESCRIPTION"]) == ("38341003", "Hypertension")
    assert row["STOP"] == "2020-03-04T05:36:07Z"
    for cell in ("ORGANIZATION", "PROVIDER", "PAYER", "BASE_ENCOUNTER_COST",
                 "TOTAL_CLAIM_COST", "PAYER_COVERAGE"):
        assert row[cell] == "", cell


# ---------------------------------------------------------------------- formats

@pytest.mark.parametrize("name, columns, pattern", [
    ("conditions.csv", ("START",), DATE),
    ("allergies.csv", ("START",), DATE),
    ("careplans.csv", ("START",), DATE),
    ("supplies.csv", ("DATE",), DATE),
    ("encounters.csv", ("START", "STOP"), STAMP),
    ("observations.csv", ("DATE",), STAMP),
    ("procedures.csv", ("START", "STOP"), STAMP),
    ("medications.csv", ("START",), STAMP),
    ("immunizations.csv", ("DATE",), STAMP),
    ("devices.csv", ("START",), STAMP),
    ("imaging_studies.csv", ("DATE",), STAMP),
])
def test_time_formats(out: Path, name: str, columns: tuple[str, ...], pattern) -> None:
    for row in rows(out, name):
        for col in columns:
            assert pattern.match(row[col]), (name, col, row[col])


def test_absent_stop_is_empty_and_dates_are_calendar_dates(out: Path) -> None:
    conditions = {r["CODE"]: r for r in rows(out, "conditions.csv")}
    assert conditions["38341003"]["STOP"] == ""
    assert conditions["444814009"]["START"] == "1990-01-01"
    assert conditions["444814009"]["STOP"] == "1990-01-20"
    assert conditions["195662009"]["STOP"] == "2020-03-18"
    assert conditions["38341003"]["SYSTEM"] == "SNOMED-CT"
    assert conditions["38341003"]["DESCRIPTION"] == 'Hypertension, essential "primary"'
    (med,) = rows(out, "medications.csv")
    assert med["START"] == "2020-03-04T05:06:07Z" and med["STOP"] == ""
    (proc,) = rows(out, "procedures.csv")
    assert (proc["START"], proc["STOP"]) == ("2020-03-04T05:10:00Z", "2020-03-04T05:25:00Z")
    assert rows(out, "supplies.csv")[0]["DATE"] == "2021-06-01"


def test_observation_values_and_components(out: Path) -> None:
    obs = rows(out, "observations.csv")
    got = [(r["CODE"], r["VALUE"], r["UNITS"], r["TYPE"], r["CATEGORY"]) for r in obs]
    assert got == [
        ("39156-5", "22.0", "kg/m2", "numeric", "vital-signs"),
        ("8480-6", "120.0", "mm[Hg]", "numeric", "vital-signs"),
        ("72166-2", "Never smoked tobacco", "", "text", "survey"),
        ("4548-4", "5.6", "%", "numeric", "laboratory"),  # one decimal, as Synthea
        # The MultiObservation has no row of its own: its components are the rows.
        ("8480-6", "118.0", "mm[Hg]", "numeric", "vital-signs"),
        ("8462-4", "76.0", "mm[Hg]", "numeric", "vital-signs"),
    ]
    # The report's observation is not repeated for the report.
    assert sum(r["CODE"] == "4548-4" for r in obs) == 1


def test_other_kinds(out: Path, person: Person) -> None:
    (allergy,) = rows(out, "allergies.csv")
    assert (allergy["CODE"], allergy["SYSTEM"], allergy["TYPE"], allergy["CATEGORY"]) == (
        "7980", "RxNorm", "allergy", "medication")
    # More than two reactions: the two most severe.
    assert [allergy[f"SEVERITY{i}"] for i in (1, 2)] == ["SEVERE", "MODERATE"]
    assert allergy["REACTION1"] == "39579001" and allergy["DESCRIPTION1"] == "Anaphylaxis"

    (med,) = rows(out, "medications.csv")
    assert med["REASONCODE"] == "38341003" and med["PAYER"] == med["BASE_COST"] == ""
    assert int(med["DISPENSES"]) == int((END - person.record.medications[0].start) // 30)

    (plan,) = rows(out, "careplans.csv")
    assert UUID4.match(plan["Id"]) and plan["REASONCODE"] == "38341003"
    assert plan["Id"] == entry_id(person.seed, "careplan", 0)

    studies = rows(out, "imaging_studies.csv")
    assert len(studies) == 2  # one row per instance
    assert len({r["Id"] for r in studies}) == 1
    assert len({r["SERIES_UID"] for r in studies}) == 1
    assert len({r["INSTANCE_UID"] for r in studies}) == 2
    for r in studies:
        assert re.match(r"^2\.25\.\d+$", r["INSTANCE_UID"]) and len(r["INSTANCE_UID"]) <= 64
        assert (r["MODALITY_CODE"], r["BODYSITE_CODE"], r["PROCEDURE_CODE"]) == (
            "DX", "51185008", "399208008")

    (supply,) = rows(out, "supplies.csv")
    assert supply["QUANTITY"] == "50"
    (device,) = rows(out, "devices.csv")
    assert device["START"] == "2021-06-01T08:00:00Z" and device["STOP"] == ""


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=-40_000, max_value=60_000, allow_nan=False))
def test_clock_agrees_with_date_of(t: float) -> None:
    clock = Clock()
    expected = date_of(t)
    assert clock.stamp(t) == expected.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert clock.date(t) == expected.date().isoformat()


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1))
def test_quoting_round_trips_through_a_csv_reader(text: str) -> None:
    line = f"{_q(text)},{_q('x')}\n"
    assert next(csv.reader(io.StringIO(line, newline=""))) == [text, "x"]


@pytest.mark.parametrize("value, cells", [
    (120, ("120.0", "numeric")),
    (np.float64(3.14159), ("3.1", "numeric")),
    (np.int64(7), ("7.0", "numeric")),
    (True, ("true", "text")),
    ("positive", ("positive", "text")),
    (Code(SNOMED, "10828004", "Positive"), ("Positive", "text")),
    ((1.0, 2.25, 3.1234), ("1 2.25 3.123", "text")),
])
def test_observation_value_cells(value, cells) -> None:
    assert _observation_value(value) == cells


# ---------------------------------------------------------------------- determinism

def test_same_input_gives_byte_identical_files(tmp_path: Path) -> None:
    a = export(tmp_path / "a", [make_person(), make_person(seed=99, index=1)], end=END)
    b = export(tmp_path / "b", [make_person(), make_person(seed=99, index=1)], end=END)
    for name in SYNTHEA_HEADERS:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_ids_differ_between_patients(tmp_path: Path) -> None:
    out = export(tmp_path / "p", [make_person(), make_person(seed=99, index=1)], end=END)
    ids = [r["Id"] for r in rows(out, "encounters.csv")]
    assert len(set(ids)) == len(ids) == 4
    patients = {r["Id"] for r in rows(out, "patients.csv")}
    assert not patients & set(ids)


# ---------------------------------------------------------------------- years of history

def test_years_of_history_drops_old_ended_entries_and_keeps_active_ones(tmp_path: Path,
                                                                       person: Person) -> None:
    out = export(tmp_path / "p", [person], end=END, years_of_history=10)
    conditions = {r["CODE"]: r for r in rows(out, "conditions.csv")}
    assert "444814009" not in conditions            # ended in 1990: dropped
    assert conditions["38341003"]["START"] == "1990-01-01"  # still active: kept
    # ... but its encounter (1990) is not exported, so its ENCOUNTER cell is empty.
    assert conditions["38341003"]["ENCOUNTER"] == ""
    assert [r["START"] for r in rows(out, "encounters.csv")] == ["2020-03-04T05:06:07Z"]
    assert "39156-5" not in {r["CODE"] for r in rows(out, "observations.csv")}
    assert len(rows(out, "patients.csv")) == 1
    # The kept encounter keeps the Id it has without a cutoff.
    assert rows(out, "encounters.csv")[0]["Id"] == entry_id(person.seed, "encounter", 1)


def test_years_of_history_uses_death_when_no_end_is_given(tmp_path: Path) -> None:
    p = make_person(death=at(1995, 1, 1))
    out = export(tmp_path / "p", [p], years_of_history=10)
    assert rows(out, "patients.csv")[0]["DEATHDATE"] == "1995-01-01"
    assert "444814009" in {r["CODE"] for r in rows(out, "conditions.csv")}


@pytest.mark.parametrize("bad", [-1, 2.5, True, "10"])
def test_bad_years_of_history_is_named(bad) -> None:
    with pytest.raises(ConfigError, match="years_of_history"):
        CsvSink(years_of_history=bad)


def test_bad_end_is_named() -> None:
    with pytest.raises(ConfigError, match="end"):
        CsvSink(end=float("nan"))


# ---------------------------------------------------------------------- sink and merge

def test_sink_is_picklable() -> None:
    sink = CsvSink(years_of_history=5, end=END)
    copy = pickle.loads(pickle.dumps(sink))
    assert (copy.name, copy.years_of_history, copy.end) == ("csv", 5, END)


def test_merge_writes_header_once_and_rows_in_part_order(tmp_path: Path) -> None:
    first, second = make_person(seed=1, index=0), make_person(seed=2, index=1)
    parts = [export(tmp_path / "work" / "part-0" / "csv", [first], end=END),
             export(tmp_path / "work" / "part-1" / "csv", [second], end=END)]
    out = tmp_path / "out"
    CsvSink(end=END).merge(parts, out)

    merged = out / "csv"
    assert sorted(p.name for p in merged.iterdir()) == sorted(SYNTHEA_HEADERS)  # no temps
    for name, header in SYNTHEA_HEADERS.items():
        text = (merged / name).read_text(encoding="utf-8")
        assert text.count(header + "\n") == 1 and text.startswith(header + "\n"), name
        expected = header + "\n" + "".join(
            p.joinpath(name).read_text(encoding="utf-8").split("\n", 1)[1] for p in parts)
        assert text == expected, name
    assert [r["Id"] for r in rows(merged, "patients.csv")] == [first.id, second.id]


def test_merge_replaces_earlier_output(tmp_path: Path) -> None:
    part = export(tmp_path / "part", [make_person()], end=END)
    out = tmp_path / "out"
    (out / "csv").mkdir(parents=True)
    (out / "csv" / "patients.csv").write_text("stale\n")
    CsvSink().merge([part], out)
    assert (out / "csv" / "patients.csv").read_bytes() == (part / "patients.csv").read_bytes()


def test_merge_of_a_missing_part_fails_cleanly(tmp_path: Path) -> None:
    part = export(tmp_path / "part", [make_person()], end=END)
    (part / "supplies.csv").unlink()
    out = tmp_path / "out"
    with pytest.raises(OutputError, match="supplies.csv"):
        CsvSink().merge([part], out)
    assert list((out / "csv").iterdir()) == []  # neither temporary nor half-written files


def test_writer_after_close_raises(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    writer = CsvSink().open(tmp_path / "p")
    writer.close()
    writer.close()
    with pytest.raises(OutputError, match="closed"):
        writer.write(make_person())
