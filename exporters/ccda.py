"""C-CDA R2.1 Continuity of Care Documents, one per patient, rendered with Jinja2.

One master template (``templates/ccda/document.xml.j2``: the US Realm header and the CCD
document template) and one template per section (problems, medications, allergies,
results, vital signs, immunizations, procedures, encounters), sharing one section frame
(``_section.xml.j2``: templateId, LOINC code, narrative table, coded entries). The data of
a document is prepared here as plain dicts, so templates only place values; Jinja2 runs
with autoescaping and StrictUndefined, so text is escaped and a missing value is an error.
Template and code-system identifiers are those of HL7 C-CDA R2.1 (2015-08-01 templates).
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

from exporters.common import entry_id
from modules.errors import ConfigError, OutputError
from simulator.person import Person, date_of
from simulator.record import Code, Observation

__all__ = ["CcdaSink", "render_document", "template_environment", "SECTIONS"]

#: GMF code system -> (OID, name).
OIDS = {
    "SNOMED-CT": ("2.16.840.1.113883.6.96", "SNOMED CT"),
    "LOINC": ("2.16.840.1.113883.6.1", "LOINC"),
    "RxNorm": ("2.16.840.1.113883.6.88", "RxNorm"),
    "CVX": ("2.16.840.1.113883.12.292", "CVX"),
    "NUBC": ("2.16.840.1.113883.6.301.5", "NUBC"),
    "DICOM": ("1.2.840.10008.2.16.4", "DCM"),
}
# CDC Race & Ethnicity codes (2.16.840.1.113883.6.238).
_RACE = {"white": ("2106-3", "White"), "black": ("2054-5", "Black or African American"),
         "asian": ("2028-9", "Asian"), "native": ("1002-5", "American Indian or Alaska Native"),
         "hawaiian": ("2076-8", "Native Hawaiian or Other Pacific Islander"),
         "other": ("2131-1", "Other Race")}
_ETHNICITY = {"hispanic": ("2135-2", "Hispanic or Latino"),
              "nonhispanic": ("2186-5", "Not Hispanic or Latino")}

#: (key, template file, section templateId, LOINC code, title, narrative columns)
SECTIONS = (
    ("problems", "problems.xml.j2", "2.16.840.1.113883.10.20.22.2.5.1", "11450-4", "Problems",
     ("Problem", "Code", "Start", "End")),
    ("medications", "medications.xml.j2", "2.16.840.1.113883.10.20.22.2.1.1", "10160-0",
     "Medications", ("Medication", "Code", "Start", "End")),
    ("allergies", "allergies.xml.j2", "2.16.840.1.113883.10.20.22.2.6.1", "48765-2",
     "Allergies", ("Allergy", "Code", "Start", "End")),
    ("results", "results.xml.j2", "2.16.840.1.113883.10.20.22.2.3.1", "30954-2", "Results",
     ("Test", "Code", "Date", "Value")),
    ("vitals", "results.xml.j2", "2.16.840.1.113883.10.20.22.2.4.1", "8716-3", "Vital Signs",
     ("Vital sign", "Code", "Date", "Value")),
    ("immunizations", "immunizations.xml.j2", "2.16.840.1.113883.10.20.22.2.2.1", "11369-6",
     "Immunizations", ("Vaccine", "Code", "Date")),
    ("procedures", "procedures.xml.j2", "2.16.840.1.113883.10.20.22.2.7.1", "47519-4",
     "Procedures", ("Procedure", "Code", "Start", "End")),
    ("encounters", "encounters.xml.j2", "2.16.840.1.113883.10.20.22.2.22.1", "46240-8",
     "Encounters", ("Encounter", "Code", "Start", "End")),
)
_ORGANIZERS = {
    "results": ("BATTERY", "2.16.840.1.113883.10.20.22.4.1", "26436-6", "Laboratory studies",
                "2.16.840.1.113883.10.20.22.4.2"),
    "vitals": ("CLUSTER", "2.16.840.1.113883.10.20.22.4.26", "46680005", "Vital signs",
               "2.16.840.1.113883.10.20.22.4.27"),
}


@cache
def template_environment() -> jinja2.Environment:
    """The Jinja2 environment over the package's C-CDA templates (autoescaped XML,
    StrictUndefined)."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("exporters", "templates/ccda"),
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=False,
        lstrip_blocks=False, keep_trailing_newline=True)


def _ts(t: float | None) -> str:
    if t is None:
        return ""
    return date_of(t).strftime("%Y%m%d%H%M%S") + "+0000"


def _date(t: float | None) -> str:
    return "" if t is None else date_of(t).strftime("%Y-%m-%d")


def _code(c: Code | None) -> dict[str, str]:
    if c is None:
        return {"code": "", "oid": "", "system": "", "display": ""}
    oid, name = OIDS.get(c.system, ("", c.system))
    return {"code": c.code, "oid": oid, "system": name, "display": c.display}


def _value(o: Observation) -> dict[str, Any]:
    v = o.value
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return {"kind": "PQ", "value": f"{float(v):g}", "unit": o.unit or "1",
                "text": f"{float(v):g} {o.unit}".strip()}
    if isinstance(v, Code):
        return {"kind": "CD", "code": _code(v), "text": v.display}
    text = " ".join(f"{x:g}" for x in v) if isinstance(v, tuple) else str(v)
    return {"kind": "ST", "value": text, "text": text}


def _rows(person: Person, cutoff: float) -> dict[str, list[dict[str, Any]]]:
    rec = person.record
    seed = person.seed
    out: dict[str, list[dict[str, Any]]] = {k[0]: [] for k in SECTIONS}

    def span(kind: str, entries: list[Any], *, ongoing: bool = True) -> None:
        for i, e in enumerate(entries):
            if ongoing and e.stop is not None and e.stop < cutoff:
                continue
            if not ongoing and e.start < cutoff:
                continue
            c = e.codes[0] if e.codes else None
            out[kind].append({
                "id": entry_id(seed, kind, i), "code": _code(c), "start": _ts(e.start),
                "stop": _ts(e.stop),
                "cells": (c.display if c else "", c.code if c else "", _date(e.start),
                          _date(e.stop)) if kind != "immunizations" else
                         (c.display if c else "", c.code if c else "", _date(e.start))})

    span("problems", rec.conditions)
    span("medications", rec.medications)
    span("allergies", rec.allergies)
    span("immunizations", rec.immunizations, ongoing=False)
    span("procedures", rec.procedures)
    span("encounters", [e for e in rec.encounters if e.start >= cutoff], ongoing=False)
    for i, o in enumerate(rec.observations):
        if o.start < cutoff:
            continue
        members = o.components if (o.value is None and o.components) else (o,)
        for j, m in enumerate(members):
            if m.value is None or not m.codes or isinstance(m.value, dict):
                continue
            kind = "vitals" if m.category == "vital-signs" else (
                "results" if m.category == "laboratory" else None)
            if kind is None:
                continue
            v = _value(m)
            out[kind].append({"id": entry_id(seed, f"{kind}:{i}", j), "code": _code(m.codes[0]),
                              "start": _ts(m.start), "stop": "", "value": v,
                              "cells": (m.codes[0].display, m.codes[0].code, _date(m.start),
                                        v["text"])})
    return out


def render_document(person: Person, *, end: float | None = None, years_of_history: int = 0
                    ) -> str:
    """The CCD of one patient as XML text."""
    end = end if end is not None else (person.end if person.end is not None else person.death)
    cutoff = end - years_of_history * 365.25 if (years_of_history and end is not None) \
        else -float("inf")
    demo = person.demographics
    race = _RACE.get(demo.race, _RACE["other"])
    eth = _ETHNICITY.get(demo.ethnicity, _ETHNICITY["nonhispanic"])
    patient = {
        "id": person.id, "given": demo.first_name, "family": demo.last_name,
        "gender": person.gender, "gender_display": "Male" if person.gender == "M" else "Female",
        "birth": _ts(person.birth)[:8],
        "deceased": _ts(person.death) if person.death is not None and
        (end is None or person.death <= end) else "",
        "race_code": race[0], "race_display": race[1],
        "ethnicity_code": eth[0], "ethnicity_display": eth[1],
        "address": demo.address, "city": demo.city, "state": demo.state_abbr, "zip": demo.zip,
        "phone": demo.phone,
    }
    rows = _rows(person, cutoff)
    sections = []
    for key, template, tid, loinc, title, columns in SECTIONS:
        sec = {"key": key, "template": template, "template_id": tid, "code": loinc,
               "title": title, "columns": columns, "rows": rows[key]}
        if key in _ORGANIZERS:
            cls, otid, ocode, odisplay, obs_tid = _ORGANIZERS[key]
            sec.update(organizer_class=cls, organizer_template=otid, organizer_code=ocode,
                       organizer_display=odisplay, observation_template=obs_tid)
        sections.append(sec)
    doc = {"id": entry_id(person.seed, "ccda", 0),
           "title": f"C-CDA Continuity of Care Document for {demo.first_name} {demo.last_name}",
           "created": _ts(end if end is not None else person.birth),
           "low": _ts(person.birth), "high": _ts(end if end is not None else person.birth)}
    return template_environment().get_template("document.xml.j2").render(
        doc=doc, p=patient, sections=sections)


class _CcdaWriter:
    def __init__(self, folder: Path, sink: CcdaSink) -> None:
        self.folder = folder
        self.sink = sink

    def write(self, person: Person) -> None:
        demo = person.demographics
        path = self.folder / f"{demo.first_name}_{demo.last_name}_{person.id}.xml"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(render_document(person, end=self.sink.end,
                                       years_of_history=self.sink.years_of_history),
                       encoding="utf-8")
        os.replace(tmp, path)

    def close(self) -> None:
        pass


class CcdaSink:
    """One C-CDA CCD per patient in ``<out>/ccda/``."""

    name = "ccda"

    def __init__(self, *, years_of_history: int = 0, end: float | None = None) -> None:
        if not isinstance(years_of_history, int) or years_of_history < 0:
            raise ConfigError(f"years_of_history must be a whole number >= 0, got "
                              f"{years_of_history!r}")
        self.years_of_history = years_of_history
        self.end = end

    def open(self, folder: Path) -> _CcdaWriter:
        return _CcdaWriter(folder, self)

    def merge(self, parts: list[Path], out: Path) -> None:
        dest = out / "ccda"
        dest.mkdir(parents=True, exist_ok=True)
        for part in parts:
            for f in sorted(part.glob("*.xml")):
                target = dest / f.name
                if target.exists():
                    raise OutputError(f"{target}: already exists; choose an empty --out folder")
                os.replace(f, target)
