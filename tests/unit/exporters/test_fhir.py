"""FHIR R4 export: every bundle and ndjson resource validates with fhir.resources, and the
references that no validator checks resolve to resources of the right type. The export is
the session fixture ``exported`` (tests/unit/exporters/conftest.py), which
test_us_core.py validates against the US Core profiles."""

from __future__ import annotations

import gzip
import json
from functools import cache
from pathlib import Path

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle
from jsonschema import Draft6Validator

#: Where a reference field must point.
TARGET = {"subject": "Patient", "patient": "Patient", "encounter": "Encounter",
          "result": "Observation", "addresses": "Condition", "careTeam": "CareTeam",
          "goal": "Goal", "medicationReference": "Medication",
          "managingOrganization": "Organization"}


def bundles(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "fhir").glob("*.json"))]


def walk_references(node, field=None):
    if isinstance(node, dict):
        if "reference" in node and isinstance(node["reference"], str) and field:
            yield field, node["reference"]
        for k, v in node.items():
            yield from walk_references(v, k)
    elif isinstance(node, list):
        for v in node:
            yield from walk_references(v, field)


def test_every_bundle_validates_as_r4(exported):
    found = bundles(exported)
    assert len(found) == 202  # 200 patients + hospital and practitioner bundles
    for b in found:
        Bundle.model_validate(b)


@cache
def _schema_definitions() -> dict:
    path = Path(__file__).resolve().parents[2] / "data" / "fhir.schema.json.gz"
    with gzip.open(path) as f:
        return json.load(f)["definitions"]


@cache
def schema_validator(rtype: str) -> Draft6Validator:
    """A validator for one resource type from HL7's official R4 JSON Schema."""
    return Draft6Validator({"$ref": f"#/definitions/{rtype}", "definitions": _schema_definitions()})


def test_every_resource_validates_against_the_official_r4_json_schema(exported):
    problems = []
    for b in bundles(exported):
        shell = {**b, "entry": [{k: v for k, v in e.items() if k != "resource"}
                                for e in b["entry"]]}
        problems += [("Bundle", e.message) for e in schema_validator("Bundle").iter_errors(shell)]
        for e in b["entry"]:
            r = e["resource"]
            problems += [(r["resourceType"], list(err.absolute_path), err.message[:200])
                         for err in schema_validator(r["resourceType"]).iter_errors(r)]
    assert problems == []


def test_the_schema_validator_catches_what_it_should():
    v = schema_validator("Observation")
    good = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
    assert list(v.iter_errors(good)) == []
    assert list(v.iter_errors({**good, "status": "bogus"}))
    assert list(v.iter_errors({**good, "colour": "red"}))


def test_full_urls_unique_and_references_resolve_to_the_right_type(exported):
    seen = set()
    for b in bundles(exported):
        types = {}
        for e in b["entry"]:
            assert e["fullUrl"] == f"urn:uuid:{e['resource']['id']}"
            assert e["fullUrl"] not in seen
            seen.add(e["fullUrl"])
            types[e["fullUrl"]] = e["resource"]["resourceType"]
            assert e["request"]["method"] == "POST"
        for field, ref in walk_references(b["entry"]):
            if ref.startswith("urn:uuid:"):
                assert ref in types, ref
                if field in TARGET:
                    assert types[ref] == TARGET[field], (field, types[ref])
            else:
                # Conditional references are resolved before a transaction creates its
                # entries, so only patient bundles may use them, for the providers.
                assert b["entry"][0]["resource"]["resourceType"] == "Patient", ref
                assert ref.split("?")[0] in ("Organization", "Practitioner"), ref


def test_patient_has_us_core_essentials(exported):
    for b in bundles(exported):
        first = b["entry"][0]["resource"]
        if first["resourceType"] != "Patient":
            continue
        urls = {x["url"].rsplit("/", 1)[-1] for x in first["extension"]}
        assert {"us-core-race", "us-core-ethnicity", "us-core-birthsex"} <= urls
        assert first["identifier"][0]["system"] and first["name"][0]["family"]
        assert first["gender"] in ("male", "female") and first["birthDate"]


def test_ndjson_validates_and_references_resolve(exported):
    folder = exported / "ndjson"
    manifest = json.loads((folder / "manifest.json").read_text())
    ids: dict[str, set[str]] = {}
    resources = []
    for item in manifest["output"]:
        lines = (folder / item["url"]).read_text().splitlines()
        assert len(lines) == item["count"]
        cls = get_fhir_model_class(item["type"])
        for line in lines:
            r = json.loads(line)
            assert r["resourceType"] == item["type"]
            cls.model_validate(r)
            ids.setdefault(item["type"], set()).add(r["id"])
            resources.append(r)
    for r in resources:
        for _field, ref in walk_references(r):
            rtype, rid = ref.split("/")
            assert rid in ids.get(rtype, set()), ref
