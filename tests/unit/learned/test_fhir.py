"""FHIR R4 into the event form: carecourse's own bundles and ndjson give the same events,
which agree with the resources; hand-written resources cover the mapping; malformed ones are
reported with file and FHIR path (exit 2 from the command line)."""

from __future__ import annotations

import datetime as dt
import json
import math
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from exporters.fhir import FhirSink, NdjsonSink
from learned.fhir import parse_fhir_time, read_fhir
from modules.errors import ConfigError, DataError
from simulator.cli import main
from simulator.population import RunConfig, run_population
from tests.conftest import SYNTHEA_MODULES

REFERENCE = dt.date(2024, 6, 30)


def cli(*args: object) -> int:
    try:
        return main([str(a) for a in args])
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fhir-learned")
    modules_dir = SYNTHEA_MODULES if SYNTHEA_MODULES.is_dir() else None
    config = RunConfig(population=50, seed=11, reference_date=REFERENCE, years_of_history=10,
                       modules_dir=modules_dir, out=out, processes=1)
    run_population(config, [FhirSink(end=config.end, years_of_history=10),
                            NdjsonSink(end=config.end, years_of_history=10,
                                       transaction_time="2024-06-30T00:00:00Z")],
                   progress=False)
    return out


@pytest.fixture(scope="module")
def both(exported):
    return (read_fhir(exported / "fhir", reference_date=REFERENCE),
            read_fhir(exported / "ndjson", reference_date=REFERENCE))


def test_bundles_and_ndjson_give_the_same_event_data(both):
    bundles, ndjson = both
    assert bundles.patients == ndjson.patients == 50
    pd.testing.assert_frame_equal(bundles.events, ndjson.events)
    pd.testing.assert_frame_equal(bundles.baseline, ndjson.baseline)
    pd.testing.assert_series_equal(bundles.end, ndjson.end)
    assert bundles.notes == ndjson.notes


def resources(exported: Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for f in (exported / "ndjson").glob("*.ndjson"):
        out[f.stem] = [json.loads(line) for line in f.read_text().splitlines() if line]
    return out


def test_events_agree_with_the_resources(exported, both):
    data, _ = both
    res = resources(exported)
    kinds = Counter(data.events["kind"])
    onsets = sum(1 for c in res["Condition"] if "onsetDateTime" in c)
    abated = sum(1 for c in res["Condition"] if "abatementDateTime" in c)
    deaths = sum(1 for p in res["Patient"] if "deceasedDateTime" in p)
    assert kinds["state"] == onsets + deaths and kinds["exit"] == abated
    assert kinds["encounter"] == len(res["Encounter"])
    assert kinds["medication"] == len(res["MedicationRequest"])
    values = sum(len(o["component"]) if "component" in o and not any(
        k.startswith("value") for k in o) else 1 + len(o.get("component", []))
        for o in res["Observation"])
    assert kinds["observation"] == values
    assert (data.events["code"] == "death").sum() == deaths
    # codes carry GMF system names; medications are coded by their Medication resource
    codes = data.events.groupby("kind", observed=True)["code"].first()
    assert codes["state"].startswith(("SNOMED-CT|", "death"))
    meds = data.events[data.events["kind"] == "medication"]["code"]
    assert meds.str.startswith("RxNorm|").all()
    # quantities are in value
    obs = data.events[data.events["kind"] == "observation"]
    assert obs["value"].notna().sum() > len(obs) / 2


def test_baseline_from_patient_resources(exported, both):
    data, _ = both
    for p in resources(exported)["Patient"]:
        row = data.baseline.loc[p["id"]]
        assert row["gender"] == p["gender"]
        race = next(e for e in p["extension"] if e["url"].endswith("us-core-race"))
        assert row["race"] == race["extension"][0]["valueCoding"]["display"]
        birth = dt.date.fromisoformat(p["birthDate"])
        if "deceasedDateTime" in p:
            death = parse_fhir_time(p["deceasedDateTime"])
            end_days = (death - parse_fhir_time(p["birthDate"])) / 86400
        else:
            end_days = (REFERENCE - birth).days
        assert data.end[p["id"]] == pytest.approx(end_days)
        assert row["age"] == pytest.approx(end_days / 365.25)
    # times are ages in days: all events between birth and the end of follow-up
    ev = data.events
    assert (ev["time"] >= 0).all()
    assert (ev["time"].to_numpy() <= data.end.reindex(ev["patient_id"]).to_numpy() + 1e-9).all()


def test_datasets_show_reads_a_carecourse_output_folder(exported, capsys):
    assert cli("datasets", "show", exported / "ndjson", "--reference-date", "2024-06-30") == 0
    out = capsys.readouterr().out
    assert "patients: 50" in out and "birth date" in out and "gender" in out
    assert cli("datasets", "show", exported) == 2  # the run folder: point at fhir/ or ndjson/
    assert "point at" in capsys.readouterr().err


# --- hand-written resources --------------------------------------------------------------

def patient(pid: str = "p1", **extra) -> dict:
    return {"resourceType": "Patient", "id": pid, "gender": "female", "birthDate": "2000-01-01",
            "extension": [
                {"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race",
                 "extension": [{"url": "text", "valueString": "Asian"}]}], **extra}


def bundle(*resources: dict) -> dict:
    return {"resourceType": "Bundle", "type": "collection",
            "entry": [{"fullUrl": f"urn:uuid:{r.get('id', i)}", "resource": r}
                      for i, r in enumerate(resources)]}


def snomed(code: str, display: str = "") -> dict:
    return {"coding": [{"system": "http://snomed.info/sct", "code": code, "display": display}]}


def test_mapping_of_each_resource_type(tmp_path):
    res = [
        patient(deceasedDateTime="2020-01-11T00:00:00+02:00"),
        {"resourceType": "Condition", "id": "c1", "subject": {"reference": "urn:uuid:p1"},
         "code": snomed("44054006", "Diabetes"), "onsetDateTime": "2010-01-01",
         "abatementDateTime": "2010-02"},
        {"resourceType": "Condition", "id": "c2", "subject": {"reference": "Patient/p1"},
         "code": snomed("1"), "onsetDateTime": "2011-01-01",
         "verificationStatus": {"coding": [{"code": "entered-in-error"}]}},
        {"resourceType": "Condition", "id": "c3", "subject": {"reference": "Patient/p1"},
         "code": snomed("2")},  # no onset: left out, counted
        {"resourceType": "Encounter", "id": "e1", "subject": {"reference": "Patient/p1"},
         "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                   "code": "AMB"}, "period": {"start": "2005-01-01T12:00:00Z"}},
        {"resourceType": "Observation", "id": "o1", "status": "final",
         "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2006-01-01",
         "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
         "component": [
             {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
              "valueQuantity": {"value": 120}},
             {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
              "valueQuantity": {"value": 80}}]},
        {"resourceType": "Observation", "id": "o2", "status": "final",
         "subject": {"reference": "Patient/p1"}, "effectivePeriod": {"start": "2006"},
         "code": {"text": "smoker"}, "valueBoolean": True},
        {"resourceType": "Medication", "id": "m1",
         "code": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                              "code": "860975"}]}},
        {"resourceType": "MedicationRequest", "id": "r1", "subject": {"reference": "Patient/p1"},
         "medicationReference": {"reference": "urn:uuid:m1"}, "authoredOn": "2012-01-01"},
        {"resourceType": "MedicationRequest", "id": "r2", "subject": {"reference": "Patient/p1"},
         "contained": [{"resourceType": "Medication", "id": "x",
                        "code": {"coding": [{"code": "42"}]}}],
         "medicationReference": {"reference": "#x"}, "authoredOn": "2012-01-02"},
        {"resourceType": "Procedure", "id": "pr", "subject": {"reference": "Patient/p1"}},
    ]
    (tmp_path / "b.json").write_text(json.dumps(bundle(*res)))
    data = read_fhir(tmp_path)
    ev = data.events
    got = list(zip(ev["time"], ev["code"], ev["kind"], ev["value"].fillna(-1), strict=True))
    day = (dt.date(2005, 1, 1) - dt.date(2000, 1, 1)).days
    assert got == [
        (day + 0.5, "ActCode|AMB", "encounter", -1),
        (day + 365, "LOINC|8462-4", "observation", 80.0),
        (day + 365, "LOINC|8480-6", "observation", 120.0),
        (day + 365, "smoker", "observation", 1.0),
        ((dt.date(2010, 1, 1) - dt.date(2000, 1, 1)).days, "SNOMED-CT|44054006", "state", -1),
        ((dt.date(2010, 2, 1) - dt.date(2000, 1, 1)).days, "SNOMED-CT|44054006", "exit", -1),
        ((dt.date(2012, 1, 1) - dt.date(2000, 1, 1)).days, "RxNorm|860975", "medication", -1),
        ((dt.date(2012, 1, 2) - dt.date(2000, 1, 1)).days, "42", "medication", -1),
        ((dt.date(2020, 1, 11) - dt.date(2000, 1, 1)).days - 1 / 12, "death", "state", -1),
    ]
    assert ev["display"].iloc[4] == "Diabetes"
    base = data.baseline.loc["p1"]
    assert (base["gender"], base["race"], base["ethnicity"]) == ("female", "Asian", "unknown")
    assert base["age"] == pytest.approx(data.end["p1"] / 365.25)
    notes = " | ".join(data.notes)
    assert "1 Condition(s) entered-in-error" in notes
    assert "1 Condition(s) without an onset date" in notes and "1 Procedure" in notes


def test_ndjson_gz_and_the_reference_date(tmp_path):
    import gzip
    lines = [patient(), {"resourceType": "Encounter", "id": "e", "subject":
                         {"reference": "Patient/p1"}, "type": [snomed("1")],
                         "period": {"start": "2001-01-01"}},
             {"resourceType": "Encounter", "id": "f", "subject": {"reference": "Patient/p1"},
              "type": [snomed("1")], "period": {"start": "2003-01-01"}}]
    with gzip.open(tmp_path / "all.ndjson.gz", "wt") as f:
        f.write("\n".join(json.dumps(r) for r in lines) + "\n")
    data = read_fhir(tmp_path, reference_date=dt.date(2002, 1, 1))
    assert data.events["time"].tolist() == [366.0]  # the 2003 encounter is after it
    assert data.end["p1"] == (dt.date(2002, 1, 1) - dt.date(2000, 1, 1)).days
    assert any("1 event(s) after the reference date" in n for n in data.notes)
    # by default the reference date is the day after the latest date in the data
    assert read_fhir(tmp_path).end["p1"] == (dt.date(2003, 1, 2) - dt.date(2000, 1, 1)).days


@pytest.mark.parametrize("text, expected", [
    ("2020", dt.datetime(2020, 1, 1, tzinfo=dt.UTC)),
    ("2020-03", dt.datetime(2020, 3, 1, tzinfo=dt.UTC)),
    ("2020-03-04T05:06:07.123+01:00", dt.datetime(2020, 3, 4, 4, 6, 7, 123000, tzinfo=dt.UTC)),
    ("2020-03-04T05:06:07Z", dt.datetime(2020, 3, 4, 5, 6, 7, tzinfo=dt.UTC)),
])
def test_fhir_times(text, expected):
    assert parse_fhir_time(text) == expected.timestamp()


@pytest.mark.parametrize("text", ["20-01-01", "2020-13", "yesterday", "2020-02-30"])
def test_malformed_fhir_times(text):
    assert parse_fhir_time(text) is None


@pytest.mark.parametrize(("files", "expected"), [
    ({"a.json": "{not json"}, ["a.json: not JSON"]),
    ({"a.json": json.dumps({"id": 1})}, ["a.json: not a FHIR resource (no resourceType)"]),
    ({"a.json": json.dumps(bundle(patient(birthDate="01/02/2000")))},
     ["a.json: Bundle.entry[0].resource(Patient).birthDate: '01/02/2000' is not a FHIR date"]),
    ({"a.json": json.dumps(bundle({"resourceType": "Patient", "id": "p"}))},
     ["a.json: Bundle.entry[0].resource(Patient).birthDate: missing"]),
    ({"a.json": json.dumps(bundle(patient(), {
        "resourceType": "Condition", "id": "c", "subject": {"reference": "Patient/nobody"},
        "code": snomed("1"), "onsetDateTime": "2001-01-01"}))},
     ["a.json: Bundle.entry[1].resource(Condition).subject: refers to 'Patient/nobody', "
      "which is not a Patient in the data"]),
    ({"a.json": json.dumps(bundle(patient(), {
        "resourceType": "Encounter", "id": "e", "subject": {"reference": "Patient/p1"},
        "type": [snomed("1")], "period": {"start": "2001-02-30"}}))},
     ["a.json: Bundle.entry[1].resource(Encounter).period.start: '2001-02-30' is not a FHIR"]),
    ({"Patient.ndjson": json.dumps(patient()) + "\n" + json.dumps(patient()) + "\n{oops\n"},
     ["Patient.ndjson: line 3: not JSON",
      "Patient.ndjson: line 2 (Patient).id: Patient 'p1' appears again"]),
    ({"Observation.ndjson": json.dumps({"resourceType": "Observation", "id": "o", "code":
                                        snomed("1"), "effectiveDateTime": "2001",
                                        "subject": {"reference": "Patient/p9"}}) + "\n",
      "Patient.ndjson": json.dumps(patient()) + "\n"},
     ["Observation.ndjson: line 1 (Observation).subject: refers to 'Patient/p9'"]),
])
def test_malformed_fhir_names_file_and_path_and_exits_2(tmp_path, capsys, files, expected):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(DataError) as err:
        read_fhir(tmp_path)
    for text in expected:
        assert any(text in str(p) for p in err.value.problems), (text, err.value.problems)
    assert cli("datasets", "show", tmp_path) == 2
    captured = capsys.readouterr().err
    assert all(text in captured for text in expected) and "Traceback" not in captured


def test_folders_without_fhir_files(tmp_path):
    with pytest.raises(ConfigError, match="no FHIR files"):
        read_fhir(tmp_path)
    with pytest.raises(ConfigError, match="no such file or folder"):
        read_fhir(tmp_path / "absent")
    (tmp_path / "only.json").write_text(json.dumps(bundle()))
    with pytest.raises(DataError, match="no Patient resources"):
        read_fhir(tmp_path)


def test_no_nan_times(both):
    data, _ = both
    assert not any(math.isnan(t) for t in data.events["time"])
