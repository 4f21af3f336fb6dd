"""`carecourse validate` and the validator behind it."""

from __future__ import annotations

import json

from exporters.validate import validate_fhir_paths
from simulator.cli import main


def obs(**over):
    r = {"resourceType": "Observation", "id": "o1", "status": "final",
         "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2"}]},
         "subject": {"reference": "urn:uuid:p1"},
         "valueQuantity": {"value": 170.0, "unit": "cm", "system": "http://unitsofmeasure.org",
                           "code": "cm"}}
    r.update(over)
    return r


def bundle(*resources):
    return {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": f"urn:uuid:{r['id']}", "resource": r,
         "request": {"method": "POST", "url": r["resourceType"]}} for r in resources]}


def test_valid_files_and_folders(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(bundle(obs())))
    (tmp_path / "Observation.ndjson").write_text(json.dumps(obs()) + "\n" + json.dumps(obs(id="o2")))
    report = validate_fhir_paths([tmp_path])
    assert (report.files, report.resources, report.problems) == (2, 3, [])


def test_each_problem_has_file_path_and_kind(tmp_path):
    bad = bundle(obs(), obs(id="o2", status="bogus"),
                 obs(id="o3", valueQuantity={"value": "tall"}))
    (tmp_path / "b.json").write_text(json.dumps(bad))
    (tmp_path / "c.json").write_text('{"resourceType": ')
    (tmp_path / "Patient.ndjson").write_text('{"resourceType": "Patient", "gender": "x"}\n')
    report = validate_fhir_paths([tmp_path])
    text = "\n".join(str(p) for p in report.problems)
    assert "b.json: Bundle.entry[1].resource(Observation).status" in text
    assert "Bundle.entry[2].resource(Observation).valueQuantity.value" in text
    assert "c.json" in text and "invalid JSON" in text
    assert "Patient.ndjson: line 1: (Patient).gender" in text
    assert report.by_kind["required-binding"] == 2
    assert report.by_kind["json"] == 1


def test_cli_exit_codes_and_summary(tmp_path, capsys):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(bundle(obs())))
    assert main(["validate", str(good)]) == 0
    assert "1 file(s), 1 resource(s), 0 error(s)" in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(bundle(obs(status="nope"))))
    assert main(["validate", str(bad), str(good)]) == 1
    out = capsys.readouterr().out
    assert "bad.json: Bundle.entry[0].resource(Observation).status" in out
    assert "required-binding" in out


def test_run_with_validate_writes_valid_bundles(tmp_path):
    out = tmp_path / "o"
    assert main(["run", "-p", "4", "--format", "fhir,ndjson", "--validate", "--out", str(out),
                 "--reference-date", "2024-01-01", "--no-progress"]) == 0
    assert validate_fhir_paths([out / "fhir", out / "ndjson"]).problems == []
