"""FHIR R4 (4.0.1) export: one transaction Bundle per patient, organization and practitioner
bundles, and FHIR Bulk Data ndjson.

The hot path builds plain dicts and serializes them with orjson; fhir.resources validates
them in the tests and in ``carecourse validate``. Every resource id is derived from the
patient's seed (the same ids as the CSV export), so output is byte-identical for a seed.

Inside a patient bundle, entries have ``fullUrl`` ``urn:uuid:<id>`` and a ``POST`` request,
and refer to each other by those URNs; the patient's care providers are referred to by
conditional references on their identifiers (``Organization?identifier=...``), which the
server resolves against the organization and practitioner bundles (uploaded first, with
``ifNoneExist``). carecourse has no provider model yet: each state has one organization
(its largest city's general hospital) and one practitioner, derived from the state.
"""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson

from exporters.common import Clock, dicom_uid, entry_id
from modules.errors import ConfigError, OutputError
from simulator.person import Person
from simulator.record import Code, Entry, Observation

__all__ = ["FhirSink", "NdjsonSink", "SYSTEMS", "PROVIDER_FILES", "SHARED_FILES", "STUDY_FILE",
           "patient_resources", "provider_resources", "transaction_bundle"]

#: GMF code system names -> FHIR system URIs.
SYSTEMS = {
    "SNOMED-CT": "http://snomed.info/sct",
    "LOINC": "http://loinc.org",
    "RxNorm": "http://www.nlm.nih.gov/research/umls/rxnorm",
    "CVX": "http://hl7.org/fhir/sid/cvx",
    "NUBC": "https://www.nubc.org/CodeSystem/PatDischargeStatus",
    "DICOM": "http://dicom.nema.org/resources/ontology/DCM",
    "ICD-10": "http://hl7.org/fhir/sid/icd-10-cm",
    "NDC": "http://hl7.org/fhir/sid/ndc",
}
_ID_SYSTEM = "https://github.com/carecourse/carecourse"
_NPI = "http://hl7.org/fhir/sid/us-npi"
_US_CORE = "http://hl7.org/fhir/us/core/StructureDefinition/"
_UCUM = "http://unitsofmeasure.org"
_NS = uuid.UUID("5d8b7a4e-8f0e-4c6e-9a51-2f1c3b1e7a10")  # carecourse's namespace for uuid5

# v3 ActCode encounter classes (http://terminology.hl7.org/CodeSystem/v3-ActCode).
_CLASS = {
    "wellness": ("AMB", "ambulatory"), "ambulatory": ("AMB", "ambulatory"),
    "outpatient": ("AMB", "ambulatory"), "urgentcare": ("AMB", "ambulatory"),
    "emergency": ("EMER", "emergency"), "inpatient": ("IMP", "inpatient encounter"),
    "hospice": ("HH", "home health"), "home": ("HH", "home health"),
    "snf": ("IMP", "inpatient encounter"), "virtual": ("VR", "virtual"),
}
# CDC Race & Ethnicity code set (urn:oid:2.16.840.1.113883.6.238), as US Core requires.
_RACE = {"white": ("2106-3", "White"), "black": ("2054-5", "Black or African American"),
         "asian": ("2028-9", "Asian"), "native": ("1002-5", "American Indian or Alaska Native"),
         "hawaiian": ("2076-8", "Native Hawaiian or Other Pacific Islander"),
         "other": ("2131-1", "Other Race")}
_ETHNICITY = {"hispanic": ("2135-2", "Hispanic or Latino"),
              "nonhispanic": ("2186-5", "Not Hispanic or Latino")}
_MARITAL = {"M": "Married", "S": "Never Married", "D": "Divorced", "W": "Widowed"}
_LANG = {"english": ("en-US", "English (United States)"), "spanish": ("es", "Spanish")}
_OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
_ALLERGY_CATEGORY = {"food", "medication", "environment", "biologic"}
_OBS_CATEGORIES = {"social-history", "vital-signs", "imaging", "laboratory", "procedure",
                   "survey", "exam", "therapy", "activity"}

# Profiles carecourse declares: US Core 5.0.1 (http://hl7.org/fhir/us/core/STU5.0.1), and for
# vital signs also FHIR R4's own vital-sign profiles, which every vital-sign Observation
# must meet (R4 observation-vitalsigns.html). Each meta is built once and shared.
_R4 = "http://hl7.org/fhir/StructureDefinition/"


def _meta(*profiles: str) -> dict[str, list[str]]:
    return {"profile": [p if p.startswith("http") else _US_CORE + p for p in profiles]}


#: Vital-sign LOINC code -> meta: the specific US Core profile and R4 profile for it (the
#: codes of US Core's and R4's vital-sign value sets). Other "vital-signs" observations
#: (pain scores, intraocular pressure...) have no vital-sign profile and declare none.
_VITAL_META = {code: _meta(us_core, _R4 + r4) for code, us_core, r4 in (
    # R4's bp profile discriminates its component slices by a nested coding slice, which the
    # validator the tests use (Medplum) cannot match; its parent vitalsigns is declared.
    ("85354-9", "us-core-blood-pressure", "vitalsigns"),
    ("39156-5", "us-core-bmi", "bmi"),
    ("8302-2", "us-core-body-height", "bodyheight"),
    ("29463-7", "us-core-body-weight", "bodyweight"),
    ("8310-5", "us-core-body-temperature", "bodytemp"),
    ("9843-4", "us-core-head-circumference", "headcircum"),
    ("8867-4", "us-core-heart-rate", "heartrate"),
    ("9279-1", "us-core-respiratory-rate", "resprate"),
    ("2708-6", "us-core-pulse-oximetry", "oxygensat"),
    ("59408-5", "us-core-pulse-oximetry", "oxygensat"),
    ("59576-9", "pediatric-bmi-for-age", "vitalsigns"),
    ("77606-2", "pediatric-weight-for-height", "vitalsigns"),
    ("8289-1", "head-occipital-frontal-circumference-percentile", "vitalsigns"),
)}
# US Core's pulse-oximetry profile wants both codes: SpO2 by pulse oximetry (59408-5) and
# arterial oxygen saturation (2708-6), which records of vital signs use for the same value.
_PULSE_OX = ({"system": SYSTEMS["LOINC"], "code": "59408-5",
              "display": "Oxygen saturation in Arterial blood by Pulse oximetry"},
             {"system": SYSTEMS["LOINC"], "code": "2708-6",
              "display": "Oxygen saturation in Arterial blood"})
#: Observation category -> meta, where US Core 5.0.1 has a profile for the category.
_CATEGORY_META = {
    "laboratory": _meta("us-core-observation-lab"),
    "survey": _meta("us-core-observation-survey"),
    "imaging": _meta("us-core-observation-imaging"),
    "social-history": _meta("us-core-observation-social-history"),
}
#: Social-history LOINC codes with a profile of their own.
_SOCIAL_META = {
    "72166-2": _meta("us-core-smokingstatus"),
    "76690-7": _meta("us-core-observation-sexual-orientation"),
}
_PROBLEM_META = _meta("us-core-condition-problems-health-concerns")
_DIAGNOSIS_META = _meta("us-core-condition-encounter-diagnosis")
_PROBLEM_CATEGORY = [{"coding": [{
    "system": "http://terminology.hl7.org/CodeSystem/condition-category",
    "code": "problem-list-item", "display": "Problem List Item"}]}]
_DIAGNOSIS_CATEGORY = [{"coding": [{
    "system": "http://terminology.hl7.org/CodeSystem/condition-category",
    "code": "encounter-diagnosis", "display": "Encounter Diagnosis"}]}]
#: SNOMED CT devices that are implanted (descendants of 40388003 |Implant, device|), the
#: only ones declared as US Core implantable devices; other devices (wheelchairs,
#: nebulizers, glucose meters...) declare no profile.
_IMPLANTABLE = frozenset({
    "14106009",   # Cardiac pacemaker, device
    "706004007",  # Implantable cardiac pacemaker
    "72506001",   # Implantable defibrillator, device
    "360064003",  # Ventricular assist device
    "360066001",  # Left ventricular assist device
    "705991002",  # Mechanical cardiac valve prosthesis
    "860577005",  # Aortic valve bioprosthesis
    "705643001",  # Coronary artery stent
    "468063009",  # Coated coronary artery stent
    "304120007",  # Total hip replacement prosthesis
    "86184003",   # Knee joint prosthesis
    "43252007",   # Cochlear prosthesis
    "469008001",  # Intrauterine contraceptive device (copper)
    "268460000",  # Intrauterine device
})
_IMPLANTABLE_META = _meta("us-core-implantable-device")
_MEDICATION_META = _meta("us-core-medication")


def _coding(c: Code) -> dict[str, str]:
    return {"system": SYSTEMS.get(c.system, c.system), "code": c.code, "display": c.display}


def _cc(codes: tuple[Code, ...] | Code | None) -> dict[str, Any]:
    """A CodeableConcept. Built once per distinct codes and shared (never mutated after)."""
    if codes is None:
        return {}
    if isinstance(codes, Code):
        codes = (codes,)
    return _cc_cached(codes)


@lru_cache(maxsize=65536)
def _cc_cached(codes: tuple[Code, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {"coding": [_coding(c) for c in codes]}
    if codes:
        out["text"] = codes[0].display
    return out


@lru_cache(maxsize=4096)
def _state_uuid(kind: str, abbr: str) -> str:
    return str(uuid.uuid5(_NS, f"{kind}:{abbr}"))


@lru_cache(maxsize=1024)
def _npi(abbr: str) -> str:
    n = int(uuid.uuid5(_NS, f"npi:{abbr}").int % 10**8)
    return f"99{n:08d}"


def provider_resources(state: str, abbr: str, city: str, zip_code: str, *, bulk: bool = False
                       ) -> list[dict[str, Any]]:
    """The Organization, Location and Practitioner that stand for care in a state. With
    ``bulk``, the Location refers to its Organization as ``Organization/id``; otherwise by
    the Organization's ``urn:uuid`` in the same transaction bundle (a conditional reference
    would be resolved before the bundle creates the Organization, and match nothing)."""
    org_id = _state_uuid("organization", abbr)
    return [
        {"resourceType": "Organization", "id": org_id,
         "meta": {"profile": [_US_CORE + "us-core-organization"]},
         "identifier": [{"system": _ID_SYSTEM, "value": org_id}],
         "active": True,
         "type": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/organization-type",
                               "code": "prov", "display": "Healthcare Provider"}],
                   "text": "Healthcare Provider"}],
         "name": f"{city} General Hospital",
         "address": [{"city": city, "state": abbr, "postalCode": zip_code, "country": "US"}]},
        {"resourceType": "Location", "id": _state_uuid("location", abbr),
         "meta": {"profile": [_US_CORE + "us-core-location"]},
         "identifier": [{"system": _ID_SYSTEM, "value": _state_uuid("location", abbr)}],
         "status": "active", "name": f"{city} General Hospital",
         "address": {"city": city, "state": abbr, "postalCode": zip_code, "country": "US"},
         "managingOrganization": _Refs(bulk)("Organization", org_id)},
        {"resourceType": "Practitioner", "id": _state_uuid("practitioner", abbr),
         "meta": {"profile": [_US_CORE + "us-core-practitioner"]},
         "identifier": [{"system": _NPI, "value": _npi(abbr)}],
         "active": True,
         "name": [{"family": "Practitioner", "given": [state], "prefix": ["Dr."]}]},
    ]


class _Refs:
    """How a patient's resources refer to each other: bundle URNs or ``Type/id``."""

    def __init__(self, bulk: bool) -> None:
        self.bulk = bulk

    def __call__(self, rtype: str, rid: str) -> dict[str, str]:
        return {"reference": f"{rtype}/{rid}" if self.bulk else f"urn:uuid:{rid}"}

    def provider(self, rtype: str, abbr: str) -> dict[str, str]:
        if rtype == "Practitioner":
            ident = f"{_NPI}|{_npi(abbr)}"
            rid = _state_uuid("practitioner", abbr)
        else:
            rid = _state_uuid(rtype.lower(), abbr)
            ident = f"{_ID_SYSTEM}|{rid}"
        if self.bulk:
            return {"reference": f"{rtype}/{rid}"}
        return {"reference": f"{rtype}?identifier={ident}"}


def patient_resources(person: Person, *, end: float | None = None, years_of_history: int = 0,
                      bulk: bool = False, clock: Clock | None = None) -> list[dict[str, Any]]:
    """Every FHIR resource of one patient, Patient first. With ``bulk``, references are
    ``Type/id``; otherwise ``urn:uuid:<id>`` for use inside a transaction bundle."""
    clock = clock or Clock()
    ts = clock.stamp
    ref = _Refs(bulk)
    seed = person.seed
    rec = person.record
    end = end if end is not None else (person.end if person.end is not None else person.death)
    cutoff = end - years_of_history * 365.25 if (years_of_history and end is not None) \
        else -float("inf")
    demo = person.demographics
    abbr = getattr(demo, "state_abbr", "MA")
    pid = person.id
    patient_ref = ref("Patient", pid)
    out: list[dict[str, Any]] = [_patient(person, clock)]

    enc_ids: dict[int, str] = {}
    # {"encounter": reference} per exported encounter, shared by the resources recorded in
    # it (read only: they are spread into each resource).
    enc_refs: dict[int, dict[str, Any]] = {}
    practitioner = ref.provider("Practitioner", abbr)
    organization = ref.provider("Organization", abbr)
    for i, e in enumerate(rec.encounters):
        if e.start < cutoff:
            continue
        eid = entry_id(seed, "encounter", i)
        enc_ids[id(e)] = eid
        enc_refs[id(e)] = {"encounter": ref("Encounter", eid)}
        code, display = _CLASS.get(e.encounter_class, ("AMB", "ambulatory"))
        r: dict[str, Any] = {
            "resourceType": "Encounter", "id": eid,
            "meta": {"profile": [_US_CORE + "us-core-encounter"]},
            "identifier": [{"use": "official", "system": _ID_SYSTEM, "value": eid}],
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                      "code": code, "display": display},
            "type": [_cc(e.codes)] if e.codes else [{"text": e.encounter_class}],
            "subject": patient_ref,
            "participant": [{"individual": practitioner}],
            "period": {"start": ts(e.start), "end": ts(e.stop if e.stop is not None else e.start)},
            "serviceProvider": organization,
        }
        if e.reason is not None:
            r["reasonCode"] = [_cc(e.reason)]
        if e.discharge is not None:
            r["hospitalization"] = {"dischargeDisposition": _cc(e.discharge)}
        out.append(r)

    def enc_ref(entry: Entry) -> dict[str, Any]:
        return enc_refs.get(id(entry.encounter), _NO_ENCOUNTER)

    def kept(entry: Entry) -> bool:
        return entry.stop is None or entry.stop >= cutoff

    cond_ids: dict[int, str] = {}
    for i, c in enumerate(rec.conditions):
        if not kept(c):
            continue
        cid = entry_id(seed, "condition", i)
        cond_ids[id(c)] = cid
        active = c.stop is None
        enc = enc_ref(c)
        # A condition still active at the end of the record belongs on the problem list; a
        # resolved one is the diagnosis of the encounter that recorded it (a problem-list
        # item when no exported encounter did).
        diagnosis = bool(enc) and not active
        r = {
            "resourceType": "Condition", "id": cid,
            "meta": _DIAGNOSIS_META if diagnosis else _PROBLEM_META,
            "clinicalStatus": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                "code": "active" if active else "resolved"}]},
            "verificationStatus": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                "code": "confirmed"}]},
            "category": _DIAGNOSIS_CATEGORY if diagnosis else _PROBLEM_CATEGORY,
            "code": _cc(c.codes), "subject": patient_ref, **enc,
            "onsetDateTime": ts(c.start), "recordedDate": ts(c.start),
        }
        if not active:
            r["abatementDateTime"] = ts(c.stop)
        out.append(r)

    for i, a in enumerate(rec.allergies):
        if not kept(a):
            continue
        r = {
            "resourceType": "AllergyIntolerance", "id": entry_id(seed, "allergy", i),
            "meta": {"profile": [_US_CORE + "us-core-allergyintolerance"]},
            "clinicalStatus": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
                "code": "active" if a.stop is None else "resolved"}]},
            "verificationStatus": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
                "code": "confirmed"}]},
            "type": "intolerance" if a.allergy_type == "intolerance" else "allergy",
            "code": _cc(a.codes), "patient": patient_ref, "recordedDate": ts(a.start),
        }
        if a.category in _ALLERGY_CATEGORY:
            r["category"] = [a.category]
        if a.reactions:
            r["reaction"] = [{"manifestation": [_cc(code)], "severity": sev.lower()}
                             for code, sev in a.reactions
                             if sev.lower() in ("mild", "moderate", "severe")]
            if not r["reaction"]:
                del r["reaction"]
        out.append(r)

    obs_ids: dict[int, str] = {}
    for i, o in enumerate(rec.observations):
        if o.start < cutoff:
            continue
        oid = entry_id(seed, "observation", i)
        obs_ids[id(o)] = oid
        out.append(_observation(o, oid, patient_ref, enc_ref(o), ts))

    for i, rep in enumerate(rec.reports):
        if rep.start < cutoff:
            continue
        results = [ref("Observation", obs_ids[id(m)]) for m in rep.observations if id(m) in obs_ids]
        out.append({
            "resourceType": "DiagnosticReport", "id": entry_id(seed, "report", i),
            "meta": {"profile": [_US_CORE + "us-core-diagnosticreport-lab"]},
            "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074",
                                      "code": "LAB", "display": "Laboratory"}]}],
            "code": _cc(rep.codes), "subject": patient_ref, **enc_ref(rep),
            # A FHIR instant needs seconds and a zone: our stamps have both.
            "effectiveDateTime": ts(rep.start), "issued": ts(rep.start),
            **({"result": results} if results else {}),
        })

    for i, p in enumerate(rec.procedures):
        if not kept(p):
            continue
        r = {
            "resourceType": "Procedure", "id": entry_id(seed, "procedure", i),
            "meta": {"profile": [_US_CORE + "us-core-procedure"]},
            "status": "completed", "code": _cc(p.codes), "subject": patient_ref, **enc_ref(p),
            "performedPeriod": {"start": ts(p.start),
                                "end": ts(p.stop if p.stop is not None else p.start)},
        }
        if p.reason is not None:
            r["reasonCode"] = [_cc(p.reason)]
        out.append(r)

    med_ids: dict[str, str] = {}
    for i, m in enumerate(rec.medications):
        if not kept(m):
            continue
        code = m.codes[0].code if m.codes else ""
        med_id = med_ids.get(code)
        if med_id is None:  # one Medication resource per drug the patient was given
            med_id = med_ids[code] = entry_id(seed, f"drug:{code}", 0)
            out.append({"resourceType": "Medication", "id": med_id, "meta": _MEDICATION_META,
                        "status": "active", "code": _cc(m.codes)})
        r = {
            "resourceType": "MedicationRequest", "id": entry_id(seed, "medication", i),
            "meta": {"profile": [_US_CORE + "us-core-medicationrequest"]},
            "status": "active" if m.stop is None else ("completed" if m.administration
                                                       else "stopped"),
            "intent": "order",
            "medicationReference": ref("Medication", med_id),
            "subject": patient_ref, **enc_ref(m),
            "authoredOn": ts(m.start),
            "requester": practitioner,
        }
        if m.reason is not None:
            r["reasonCode"] = [_cc(m.reason)]
        dosage = _dosage(m.prescription)
        if dosage:
            r["dosageInstruction"] = [dosage]
        out.append(r)

    for i, v in enumerate(rec.immunizations):
        if v.start < cutoff:
            continue
        out.append({
            "resourceType": "Immunization", "id": entry_id(seed, "immunization", i),
            "meta": {"profile": [_US_CORE + "us-core-immunization"]},
            "status": "completed", "vaccineCode": _cc(v.codes), "patient": patient_ref,
            **enc_ref(v), "occurrenceDateTime": ts(v.start), "primarySource": True,
        })

    for i, cp in enumerate(rec.careplans):
        if not kept(cp):
            continue
        done = cp.stop is not None
        r = {
            "resourceType": "CarePlan", "id": entry_id(seed, "careplan", i),
            "meta": {"profile": [_US_CORE + "us-core-careplan"]},
            "text": {"status": "generated",
                     "div": '<div xmlns="http://www.w3.org/1999/xhtml">Care Plan for '
                            + _xml_escape(cp.codes[0].display if cp.codes else "") + "</div>"},
            "status": "completed" if done else "active", "intent": "order",
            "category": [{"coding": [{
                "system": "http://hl7.org/fhir/us/core/CodeSystem/careplan-category",
                "code": "assess-plan"}]}, _cc(cp.codes)],
            "subject": patient_ref, **enc_ref(cp),
            "period": {"start": ts(cp.start), **({"end": ts(cp.stop)} if done else {})},
        }
        if cp.activities:
            r["activity"] = [{"detail": {"code": _cc(a),
                                         "status": "completed" if done else "in-progress"}}
                             for a in cp.activities]
        if cp.reasons:
            r["addresses"] = [ref("Condition", cond_ids[id(c)]) for c in
                              _reason_conditions(rec.conditions, cp.reasons) if id(c) in cond_ids]
            if not r["addresses"]:
                del r["addresses"]
        # A care team per care plan: the patient's practitioner and organization.
        team_id = entry_id(seed, "careteam", i)
        period = {"start": ts(cp.start), **({"end": ts(cp.stop)} if done else {})}
        out.append({
            "resourceType": "CareTeam", "id": team_id,
            "meta": {"profile": [_US_CORE + "us-core-careteam"]},
            "status": "inactive" if done else "active",
            "subject": patient_ref, **enc_ref(cp), "period": period,
            "participant": [
                {"role": [{"coding": [{"system": "http://snomed.info/sct", "code": "223366009",
                                       "display": "Healthcare professional (occupation)"}]}],
                 "member": practitioner},
                {"role": [{"coding": [{"system": "http://snomed.info/sct", "code": "224891009",
                                       "display": "Healthcare services (qualifier value)"}]}],
                 "member": organization},
            ],
            **({"reasonCode": [_cc(cp.reasons)]} if cp.reasons else {}),
            "managingOrganization": [organization],
        })
        r["careTeam"] = [ref("CareTeam", team_id)]
        goal_refs = []
        for j, g in enumerate(cp.goals):
            text = _goal_text(g)
            if not text:
                continue
            gid = entry_id(seed, f"goal:{i}", j)
            out.append({
                "resourceType": "Goal", "id": gid,
                "meta": {"profile": [_US_CORE + "us-core-goal"]},
                "lifecycleStatus": "completed" if done else "active",
                "description": {"text": text}, "subject": patient_ref,
            })
            goal_refs.append(ref("Goal", gid))
        if goal_refs:
            r["goal"] = goal_refs
        out.append(r)

    for i, d in enumerate(rec.devices):
        if not kept(d):
            continue
        r = {"resourceType": "Device", "id": entry_id(seed, "device", i)}
        if d.codes and d.codes[0].code in _IMPLANTABLE:
            r["meta"] = _IMPLANTABLE_META
        r.update({"status": "active" if d.stop is None else "inactive",
                  "type": _cc(d.codes), "patient": patient_ref})
        if d.manufacturer:
            r["manufacturer"] = d.manufacturer
        if d.model:
            r["deviceName"] = [{"name": d.model, "type": "model-name"}]
        out.append(r)

    for i, s in enumerate(rec.imaging_studies):
        if s.start < cutoff:
            continue
        series = []
        for j, se in enumerate(s.series):
            item: dict[str, Any] = {"uid": dicom_uid(seed, f"series:{i}", j), "number": j + 1}
            if se.get("modality") is not None:
                item["modality"] = _coding(se["modality"])
            if se.get("body_site") is not None:
                item["bodySite"] = _coding(se["body_site"])
            instances = []
            for k, inst in enumerate(se.get("instances") or ()):
                sop = inst.get("sop_class")
                instances.append({
                    "uid": dicom_uid(seed, f"instance:{i}:{j}", k), "number": k + 1,
                    "sopClass": {"system": "urn:ietf:rfc:3986",
                                 "code": f"urn:oid:{sop.code}" if sop else "urn:oid:1.2.840.10008.5.1.4.1.1.7"},
                    **({"title": inst["title"]} if inst.get("title") else {})})
            if instances:
                item["instance"] = instances
                item["numberOfInstances"] = len(instances)
            if "modality" in item:
                series.append(item)
        r = {
            "resourceType": "ImagingStudy", "id": entry_id(seed, "imaging", i),
            "identifier": [{"system": "urn:ietf:rfc:3986",
                            "value": f"urn:oid:{dicom_uid(seed, 'imaging', i)}"}],
            "status": "available", "subject": patient_ref, **enc_ref(s),
            "started": ts(s.start), "procedureCode": [_cc(s.codes)],
        }
        if series:
            r["series"] = series
            r["numberOfSeries"] = len(series)
        out.append(r)

    for i, sp in enumerate(rec.supplies):
        if sp.start < cutoff:
            continue
        out.append({
            "resourceType": "SupplyDelivery", "id": entry_id(seed, "supply", i),
            "status": "completed", "patient": patient_ref,
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/supply-item-type",
                                 "code": "device", "display": "Device"}]},
            "suppliedItem": {"quantity": {"value": sp.quantity}, "itemCodeableConcept": _cc(sp.codes)},
            "occurrenceDateTime": ts(sp.start),
        })
    out.extend(_clinical_notes(person, rec.encounters, enc_ids, ref, abbr, ts))
    return out


_NO_ENCOUNTER: dict[str, Any] = {}


def _clinical_notes(person: Person, encounters: list[Any], enc_ids: dict[int, str], ref: Any,
                    abbr: str, ts: Callable[[float], str]) -> list[dict[str, Any]]:
    """A US Core clinical note (DocumentReference) per exported encounter: a plain-text
    summary of what the encounter recorded, base64-encoded."""
    rec = person.record
    by_enc: dict[int, list[str]] = {}
    for kind, entries in (("Condition", rec.conditions), ("Medication", rec.medications),
                          ("Procedure", rec.procedures), ("Immunization", rec.immunizations),
                          ("Care plan", rec.careplans)):
        for e in entries:
            if e.encounter is not None and id(e.encounter) in enc_ids and e.codes:
                by_enc.setdefault(id(e.encounter), []).append(f"{kind}: {e.codes[0].display}")
    demo = person.demographics
    out = []
    for i, e in enumerate(encounters):
        eid = enc_ids.get(id(e))
        if eid is None:
            continue
        what = e.codes[0].display if e.codes else e.encounter_class
        lines = [f"{ts(e.start)[:10]}", f"{getattr(demo, 'first_name', '')} "
                 f"{getattr(demo, 'last_name', '')}: {what} ({e.encounter_class})", ""]
        lines += by_enc.get(id(e), ["No new findings."])
        data = base64.b64encode("\n".join(lines).encode()).decode()
        out.append({
            "resourceType": "DocumentReference", "id": entry_id(person.seed, "note", i),
            "meta": {"profile": [_US_CORE + "us-core-documentreference"]},
            "status": "current",
            "type": {"coding": [{"system": "http://loinc.org", "code": "34117-2",
                                 "display": "History and physical note"}]},
            "category": [{"coding": [{
                "system": "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category",
                "code": "clinical-note", "display": "Clinical Note"}]}],
            "subject": ref("Patient", person.id),
            "date": ts(e.start),
            "author": [ref.provider("Practitioner", abbr)],
            "custodian": ref.provider("Organization", abbr),
            "content": [{"attachment": {"contentType": "text/plain; charset=utf-8", "data": data},
                         "format": {"system": "http://ihe.net/fhir/ihe.formatcode.fhir/CodeSystem/formatcode",
                                    "code": "urn:ihe:iti:xds:2017:mimeTypeSufficient",
                                    "display": "mimeType Sufficient"}}],
            "context": {"encounter": [ref("Encounter", eid)],
                        "period": {"start": ts(e.start),
                                   "end": ts(e.stop if e.stop is not None else e.start)}},
        })
    return out


def _reason_conditions(conditions: list[Any], reasons: tuple[Code, ...]) -> list[Any]:
    codes = {c.code for c in reasons}
    return [c for c in conditions if c.codes and c.codes[0].code in codes][-1:]


def _goal_text(goal: Any) -> str:
    """A readable description of a GMF care-plan goal."""
    if not isinstance(goal, dict):
        return ""
    if goal.get("text"):
        return str(goal["text"])
    obs = goal.get("observation")
    if isinstance(obs, dict):
        codes = obs.get("codes") or [{}]
        what = codes[0].get("display", codes[0].get("code", "observation"))
        return f"{what} {obs.get('operator', '')} {obs.get('value', '')}".strip()
    for key in ("codes",):
        if goal.get(key):
            return str(goal[key][0].get("display", ""))
    return ""


def _xml_escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _dosage(prescription: dict[str, Any] | None) -> dict[str, Any] | None:
    if not prescription:
        return None
    out: dict[str, Any] = {"sequence": 1}
    if prescription.get("as_needed"):
        out["asNeededBoolean"] = True
    d = prescription.get("dosage")
    if isinstance(d, dict):
        timing: dict[str, Any] = {}
        if "frequency" in d and "period" in d and "unit" in d:
            unit = {"seconds": "s", "minutes": "min", "hours": "h", "days": "d", "weeks": "wk",
                    "months": "mo", "years": "a"}.get(str(d["unit"]))
            if unit:
                timing = {"repeat": {"frequency": int(d["frequency"]), "period": float(d["period"]),
                                     "periodUnit": unit}}
        if timing:
            out["timing"] = timing
        if "amount" in d:
            out["doseAndRate"] = [{"doseQuantity": {"value": d["amount"]}}]
    if prescription.get("instructions"):
        out["additionalInstruction"] = [_cc(tuple(
            Code(str(c.get("system")), str(c.get("code")), str(c.get("display", "")))
            for c in prescription["instructions"]))]
    return out


def _quantity(value: float, unit: str) -> dict[str, Any]:
    q: dict[str, Any] = {"value": round(float(value), 4)}
    if unit:
        q.update({"unit": unit, "system": _UCUM, "code": unit})
    return q


@lru_cache(maxsize=256)
def _obs_category(category: str) -> list[dict[str, Any]]:
    """An Observation's category list, shared between resources (never mutated after).
    Synthea's modules use a few categories outside HL7's observation-category codes (food,
    environment, medication): those are kept as text, not miscoded."""
    return [{"coding": [{"system": _OBS_CATEGORY, "code": category}]}
            if category in _OBS_CATEGORIES else {"text": category}]


def _value(o: Observation) -> dict[str, Any]:
    v = o.value
    if isinstance(v, bool):
        return {"valueBoolean": v}
    if isinstance(v, (int, float)):
        return {"valueQuantity": _quantity(v, o.unit)}
    if isinstance(v, Code):
        return {"valueCodeableConcept": _cc(v)}
    if isinstance(v, Entry) and v.codes:
        return {"valueCodeableConcept": _cc(v.codes)}
    if isinstance(v, tuple):
        return {"valueString": " ".join(f"{x:g}" for x in v)}
    if isinstance(v, str):
        return {"valueString": v}
    return {}


def _observation(o: Observation, oid: str, patient_ref: dict[str, str], enc: dict[str, Any],
                 ts: Callable[[float], str]) -> dict[str, Any]:
    category = o.category or "laboratory"
    when = ts(o.start)
    r: dict[str, Any] = {
        "resourceType": "Observation", "id": oid, "status": "final",
        "category": _obs_category(category),
        "code": _cc(o.codes), "subject": patient_ref, **enc,
        "effectiveDateTime": when, "issued": when,  # an instant: seconds and zone, as ours
    }
    code = o.codes[0].code if o.codes else ""
    if category == "vital-signs":
        meta = _VITAL_META.get(code)
        if meta is not None and code in ("2708-6", "59408-5"):
            r["code"] = {"coding": list(_PULSE_OX), "text": r["code"].get("text", "")}
    elif category == "social-history":
        meta = _SOCIAL_META.get(code) or _CATEGORY_META["social-history"]
    else:
        meta = _CATEGORY_META.get(category)
    if meta is not None:
        r["meta"] = meta
    value = _value(o) if o.value is not None else {}
    if o.components:
        comps = []
        for c in o.components:
            cv = _value(c) if c.value is not None else {}
            comps.append({"code": _cc(c.codes), **cv} if cv else
                         {"code": _cc(c.codes), "dataAbsentReason": _ABSENT})
        r["component"] = comps
    if value:
        r.update(value)
    elif not o.components:
        r["dataAbsentReason"] = _ABSENT
    return r


_ABSENT = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason",
                       "code": "unknown", "display": "Unknown"}]}


def _patient(person: Person, clock: Clock) -> dict[str, Any]:
    demo = person.demographics
    pid = person.id
    race = _RACE.get(getattr(demo, "race", "other"), _RACE["other"])
    eth = _ETHNICITY.get(getattr(demo, "ethnicity", "nonhispanic"), _ETHNICITY["nonhispanic"])
    gender = "male" if person.gender == "M" else "female"
    r: dict[str, Any] = {
        "resourceType": "Patient", "id": pid,
        "meta": {"profile": [_US_CORE + "us-core-patient"]},
        "extension": [
            {"url": _US_CORE + "us-core-race", "extension": [
                {"url": "ombCategory", "valueCoding": {"system": "urn:oid:2.16.840.1.113883.6.238",
                                                       "code": race[0], "display": race[1]}},
                {"url": "text", "valueString": race[1]}]},
            {"url": _US_CORE + "us-core-ethnicity", "extension": [
                {"url": "ombCategory", "valueCoding": {"system": "urn:oid:2.16.840.1.113883.6.238",
                                                       "code": eth[0], "display": eth[1]}},
                {"url": "text", "valueString": eth[1]}]},
            {"url": _US_CORE + "us-core-birthsex", "valueCode": person.gender},
        ],
        "identifier": [
            {"system": _ID_SYSTEM, "value": pid},
            {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                  "code": "MR", "display": "Medical Record Number"}],
                      "text": "Medical Record Number"},
             "system": "http://hospital.smarthealthit.org", "value": pid},
        ],
        "name": [{"use": "official", "family": getattr(demo, "last_name", "Doe"),
                  "given": [getattr(demo, "first_name", "Pat")]}],
        "gender": gender,
        "birthDate": clock.date(person.birth),
    }
    ssn = getattr(demo, "ssn", "")
    if ssn:
        r["identifier"].append({
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                 "code": "SS", "display": "Social Security Number"}],
                     "text": "Social Security Number"},
            "system": "http://hl7.org/fhir/sid/us-ssn", "value": ssn})
    phone = getattr(demo, "phone", "")
    if phone:
        r["telecom"] = [{"system": "phone", "value": phone, "use": "home"}]
    end = person.end
    if person.death is not None and (end is None or person.death <= end):
        r["deceasedDateTime"] = clock.stamp(person.death)
    if demo is not None:
        r["address"] = [{"line": [demo.address], "city": demo.city, "state": demo.state_abbr,
                         "postalCode": demo.zip, "country": "US"}]
        if demo.marital_status in _MARITAL:
            r["maritalStatus"] = {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus",
                "code": demo.marital_status, "display": _MARITAL[demo.marital_status]}],
                "text": _MARITAL[demo.marital_status]}
        lang = _LANG.get(demo.first_language)
        if lang:
            r["communication"] = [{"language": {"coding": [{
                "system": "urn:ietf:bcp:47", "code": lang[0], "display": lang[1]}],
                "text": lang[1]}}]
    return r


def transaction_bundle(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": f"urn:uuid:{r['id']}", "resource": r,
         "request": {"method": "POST", "url": r["resourceType"]}} for r in resources]}


def _provider_bundle(resources: list[dict[str, Any]]) -> dict[str, Any]:
    entries = []
    for r in resources:
        ident = r["identifier"][0]
        entries.append({"fullUrl": f"urn:uuid:{r['id']}", "resource": r, "request": {
            "method": "POST", "url": r["resourceType"],
            "ifNoneExist": f"identifier={ident['system']}|{ident['value']}"}})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _all_providers(bulk: bool = False) -> dict[str, list[dict[str, Any]]]:
    from simulator.demographics import _states

    by_type: dict[str, list[dict[str, Any]]] = {"Organization": [], "Location": [],
                                                 "Practitioner": []}
    for s in _states():
        for r in provider_resources(s.name, s.abbr, s.city, s.zip, bulk=bulk):
            by_type[r["resourceType"]].append(r)
    return by_type


PROVIDER_FILES = ("hospitalInformation.json", "practitionerInformation.json")
#: A trial arm's ResearchStudy bundle (``carecourse trial build``), which its subjects'
#: ResearchSubject resources refer to conditionally.
STUDY_FILE = "researchStudy.json"
#: Bundles that patient bundles refer to conditionally: uploaded first, in this order.
SHARED_FILES = (*PROVIDER_FILES, STUDY_FILE)


def provider_bundle_files() -> list[tuple[str, bytes]]:
    """The organization and practitioner bundles as (file name, bytes), in upload order."""
    providers = _all_providers()
    return [(PROVIDER_FILES[0], orjson.dumps(_provider_bundle(providers["Organization"]
                                                              + providers["Location"]))),
            (PROVIDER_FILES[1], orjson.dumps(_provider_bundle(providers["Practitioner"])))]


def patient_bundle_file(person: Person, *, end: float | None, years_of_history: int,
                        clock: Clock | None = None, validate: bool = False
                        ) -> tuple[str, bytes]:
    """One patient's transaction bundle as (file name, bytes): what ``--format fhir``
    writes and what the uploader sends, so the two agree byte for byte."""
    res = _checked(patient_resources(person, end=end, clock=clock,
                                     years_of_history=years_of_history), person, validate)
    demo = person.demographics
    name = f"{getattr(demo, 'first_name', 'Patient')}_{getattr(demo, 'last_name', '')}_{person.id}"
    return f"{name}.json", orjson.dumps(transaction_bundle(res))


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _checked(resources: list[dict[str, Any]], person: Person, validate: bool
             ) -> list[dict[str, Any]]:
    """With ``validate`` (``carecourse run --validate``), refuse to write a patient whose
    resources do not validate, naming the patient, resource and path."""
    if validate:
        from exporters.validate import validate_resource

        problems = [p for r in resources
                    for p in validate_resource(r, f"{r.get('resourceType')}/{r.get('id')}",
                                               f"patient {person.index} ({person.id})")]
        if problems:
            shown = "\n".join(str(p) for p in problems[:10])
            more = f"\n... and {len(problems) - 10} more" if len(problems) > 10 else ""
            raise OutputError(f"FHIR validation failed:\n{shown}{more}")
    return resources


def _check_history(years_of_history: int, end: float | None) -> None:
    if not isinstance(years_of_history, int) or years_of_history < 0:
        raise ConfigError(f"years_of_history must be a whole number >= 0, got {years_of_history!r}")


class _FhirWriter:
    def __init__(self, folder: Path, sink: FhirSink) -> None:
        self.folder = folder
        self.sink = sink
        self.clock = Clock()

    def write(self, person: Person) -> None:
        name, data = patient_bundle_file(person, end=self.sink.end, clock=self.clock,
                                         years_of_history=self.sink.years_of_history,
                                         validate=self.sink.validate)
        _write_atomic(self.folder / name, data)

    def close(self) -> None:
        pass


class FhirSink:
    """One transaction bundle per patient in ``<out>/fhir/``, plus
    ``hospitalInformation.json`` and ``practitionerInformation.json``."""

    name = "fhir"

    def __init__(self, *, years_of_history: int = 0, end: float | None = None,
                 validate: bool = False) -> None:
        _check_history(years_of_history, end)
        self.years_of_history = years_of_history
        self.end = end
        self.validate = validate

    def open(self, folder: Path) -> _FhirWriter:
        return _FhirWriter(folder, self)

    def merge(self, parts: list[Path], out: Path) -> None:
        dest = out / "fhir"
        dest.mkdir(parents=True, exist_ok=True)
        for name, data in provider_bundle_files():
            _write_atomic(dest / name, data)
        for part in parts:
            for f in sorted(part.glob("*.json")):
                target = dest / f.name
                if target.exists():
                    raise OutputError(f"{target}: already exists; choose an empty --out folder")
                os.replace(f, target)


class _NdjsonWriter:
    def __init__(self, folder: Path, sink: NdjsonSink) -> None:
        self.folder = folder
        self.sink = sink
        self.clock = Clock()
        self.files: dict[str, Any] = {}

    def write(self, person: Person) -> None:
        for r in _checked(patient_resources(person, end=self.sink.end, bulk=True,
                                            years_of_history=self.sink.years_of_history,
                                            clock=self.clock), person, self.sink.validate):
            f = self.files.get(r["resourceType"])
            if f is None:
                f = self.files[r["resourceType"]] = open(
                    self.folder / f"{r['resourceType']}.ndjson", "ab")
            f.write(orjson.dumps(r) + b"\n")

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        self.files.clear()


class NdjsonSink:
    """FHIR Bulk Data style output in ``<out>/ndjson/``: one ``<ResourceType>.ndjson`` per
    type (references as ``Type/id``) and a ``manifest.json`` shaped like an ``$export``
    completion response."""

    name = "ndjson"

    def __init__(self, *, years_of_history: int = 0, end: float | None = None,
                 transaction_time: str = "", validate: bool = False) -> None:
        _check_history(years_of_history, end)
        self.years_of_history = years_of_history
        self.end = end
        self.transaction_time = transaction_time
        self.validate = validate

    def open(self, folder: Path) -> _NdjsonWriter:
        return _NdjsonWriter(folder, self)

    def merge(self, parts: list[Path], out: Path) -> None:
        dest = out / "ndjson"
        dest.mkdir(parents=True, exist_ok=True)
        counts: dict[str, int] = {}
        providers = _all_providers(bulk=True)
        types = sorted({f.stem for p in parts for f in p.glob("*.ndjson")} | set(providers))
        for rtype in types:
            tmp = dest / f".{rtype}.ndjson.tmp"
            n = 0
            with open(tmp, "wb") as w:
                for r in providers.get(rtype, ()):
                    w.write(orjson.dumps(r) + b"\n")
                    n += 1
                for p in parts:
                    src = p / f"{rtype}.ndjson"
                    if src.exists():
                        with open(src, "rb") as f:
                            for line in f:
                                w.write(line)
                                n += 1
            os.replace(tmp, dest / f"{rtype}.ndjson")
            counts[rtype] = n
        manifest = {
            "transactionTime": self.transaction_time,
            "request": "carecourse run",
            "requiresAccessToken": False,
            "output": [{"type": t, "url": f"{t}.ndjson", "count": counts[t]} for t in types],
            "error": [],
        }
        _write_atomic(dest / "manifest.json", orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
