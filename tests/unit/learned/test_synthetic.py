"""carecourse's CSV output in the event form agrees with its FHIR output of the same run;
one way of naming a data source serves every command; malformed CSV names file, line and
column."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from pathlib import Path

import pytest

from exporters.csv import CsvSink
from exporters.fhir import FhirSink
from learned.fhir import read_fhir
from learned.sources import TableOptions, read_source
from learned.synthetic import BIRTH_ORIGIN, read_carecourse_csv
from modules.errors import ConfigError, DataError
from simulator.population import RunConfig, run_population

REFERENCE = dt.date(2024, 6, 30)

#: A visit with a diagnosis, a measurement and a prescription; the illness ends a month on,
#: and half of the patients die within a year.
MODULE = {
    "name": "visit", "gmf_version": 2,
    "states": {
        "Initial": {"type": "Initial", "direct_transition": "Wait"},
        "Wait": {"type": "Delay", "distribution": {"kind": "UNIFORM", "parameters": {
            "low": 10, "high": 200}}, "unit": "days", "direct_transition": "Visit"},
        "Visit": {"type": "Encounter", "encounter_class": "ambulatory", "codes": [
            {"system": "SNOMED-CT", "code": "185345009", "display": "Encounter for symptom"}],
            "direct_transition": "Ill"},
        "Ill": {"type": "ConditionOnset", "assign_to_attribute": "ill", "codes": [
            {"system": "SNOMED-CT", "code": "9100002", "display": "ill"}],
            "direct_transition": "Temperature"},
        "Temperature": {"type": "Observation", "category": "vital-signs", "codes": [
            {"system": "LOINC", "code": "8310-5", "display": "Body temperature"}],
            "unit": "Cel", "range": {"low": 37.8, "high": 39.6, "decimals": 1},
            "direct_transition": "Drug"},
        "Drug": {"type": "MedicationOrder", "reason": "ill", "codes": [
            {"system": "RxNorm", "code": "308182", "display": "Amoxicillin 250 MG"}],
            "direct_transition": "End_Visit"},
        "End_Visit": {"type": "EncounterEnd", "direct_transition": "Month"},
        "Month": {"type": "Delay", "exact": {"quantity": 30, "unit": "days"},
                  "direct_transition": "Recover"},
        "Recover": {"type": "ConditionEnd", "referenced_by_attribute": "ill",
                    "distributed_transition": [{"distribution": 0.5, "transition": "Later"},
                                               {"distribution": 0.5,
                                                "transition": "Terminal"}]},
        "Later": {"type": "Delay", "distribution": {"kind": "UNIFORM", "parameters": {
            "low": 1, "high": 300}}, "unit": "days", "direct_transition": "Death"},
        "Death": {"type": "Death", "direct_transition": "Terminal"},
        "Terminal": {"type": "Terminal"},
    },
}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("csv-learned")
    (root / "modules").mkdir()
    (root / "modules" / "visit.json").write_text(json.dumps(MODULE))
    config = RunConfig(population=40, seed=5, age_range=(2, 3), reference_date=REFERENCE,
                       years_of_history=0, modules_dir=root / "modules", out=root / "out")
    run_population(config, [CsvSink(years_of_history=0, end=config.end),
                            FhirSink(years_of_history=0, end=config.end)], progress=False)
    return config.out


@pytest.fixture(scope="module")
def both(run):
    return (read_carecourse_csv(run, reference_date=REFERENCE),
            read_fhir(run / "fhir", reference_date=REFERENCE))


def test_csv_and_fhir_of_one_run_give_the_same_patients(both):
    csv, fhir = both
    assert csv.origin == fhir.origin == BIRTH_ORIGIN
    assert list(csv.baseline.index) == list(fhir.baseline.index)
    for column in ("gender", "race", "ethnicity"):
        assert csv.baseline[column].astype(str).tolist() == \
            fhir.baseline[column].astype(str).tolist(), column
    # Deaths are dates in CSV and timestamps in FHIR: within a day.
    assert (csv.baseline["age"] - fhir.baseline["age"]).abs().max() < 1 / 365
    assert (csv.end - fhir.end).abs().max() < 1.0


def test_csv_and_fhir_of_one_run_give_the_same_events(both):
    csv, fhir = both
    for kind in ("state", "exit", "encounter", "medication", "observation"):
        a = csv.events[csv.events["kind"] == kind]
        b = fhir.events[fhir.events["kind"] == kind]
        assert Counter(zip(a["patient_id"], a["code"], strict=True)) == \
            Counter(zip(b["patient_id"], b["code"], strict=True)), kind
        assert len(a) > 0, kind
        # The same events in the same order: times agree within a day.
        a, b = (x.sort_values(["patient_id", "code", "time"]) for x in (a, b))
        assert (a["time"].to_numpy() - b["time"].to_numpy()).max() < 1.0, kind
        assert (a["time"].to_numpy() - b["time"].to_numpy()).min() > -1.0, kind
    obs = csv.events[csv.events["kind"] == "observation"]
    assert obs["value"].between(37.8, 39.6).all()
    assert set(csv.states()) == {"SNOMED-CT|9100002", "death"}


def test_read_source_names_every_kind_of_source(run, tmp_path):
    assert read_source("lymph_node").kind == "dataset"
    assert read_source(str(run)).kind == "csv"  # a run's --out folder: its csv/
    assert read_source(str(run / "csv")).kind == "csv"
    assert read_source(str(run / "fhir")).kind == "fhir"
    samples = tmp_path / "samples.csv"
    samples.write_text("age,sex\n61,F\n70,M\n")
    alone = read_source(str(samples), baseline_only=True)
    assert alone.kind == "baseline" and alone.data.patients == 2
    assert list(alone.data.baseline.columns) == ["age", "sex"] and alone.data.events.empty
    events = tmp_path / "events.csv"
    events.write_text("patient_id,time,code\n1,3,ill\n")
    with pytest.raises(ConfigError, match="looks like an event table"):
        read_source(str(events), baseline_only=True)
    with pytest.raises(ConfigError, match="needs its baseline table"):
        read_source(str(events))
    with pytest.raises(ConfigError, match="go.es. with an event table"):
        read_source("lymph_node", table=TableOptions(initial_state="x"))
    with pytest.raises(ConfigError, match="neither a built-in data set"):
        read_source(str(tmp_path / "nothing"))


def test_malformed_csv_names_file_line_and_column(run, tmp_path):
    folder = tmp_path / "csv"
    folder.mkdir()
    for f in ("patients.csv", "conditions.csv"):
        (folder / f).write_text((run / "csv" / f).read_text())
    lines = (folder / "conditions.csv").read_text().splitlines()
    cells = lines[2].split(",")
    cells[0] = "2021-02-30"
    lines[2] = ",".join(cells)
    (folder / "conditions.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"conditions.csv: line 3, column 'START': "
                                        r"'2021-02-30' is not a date"):
        read_carecourse_csv(folder)
    (folder / "patients.csv").write_text("Id,BIRTHDATE\n1,2000-01-01\n")
    with pytest.raises(DataError, match="missing column.*DEATHDATE"):
        read_carecourse_csv(folder)
