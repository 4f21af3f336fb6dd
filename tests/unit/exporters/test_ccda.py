"""C-CDA documents: well-formed XML whose sections hold the patient's record."""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET

import jinja2
import numpy as np
import pytest

from exporters.ccda import SECTIONS, CcdaSink, render_document, template_environment
from simulator.demographics import sample_demographics
from simulator.person import Person, day_of
from simulator.population import RunConfig, _prepare, simulate_patient
from simulator.record import (
    Allergy,
    Code,
    Condition,
    Encounter,
    Immunization,
    Medication,
    Observation,
    Procedure,
)

NS = {"h": "urn:hl7-org:v3"}
T = day_of(dt.date(2020, 3, 1))


def person_with_everything(empty: bool = False) -> Person:
    p = Person(0, 12345, np.random.default_rng(1), T - 40 * 365.25, "F")
    p.demographics = sample_demographics(np.random.default_rng(2), age_years=40, gender="F")
    p.end = T + 10
    if empty:
        return p
    rec = p.record
    enc = Encounter("Visit", T, (Code("SNOMED-CT", "185345009", "Encounter for symptom"),),
                    "ambulatory")
    enc.end(T)
    rec.encounters.append(enc)
    rec.conditions.append(Condition("C", T, (Code("SNOMED-CT", "44054006", "Diabetes <&> type 2"),), enc))
    rec.medications.append(Medication("M", T, (Code("RxNorm", "860975", "Metformin"),), enc))
    rec.allergies.append(Allergy("A", T, (Code("SNOMED-CT", "91930004", "Allergy to eggs"),), enc))
    rec.immunizations.append(Immunization("I", T, (Code("CVX", "140", "Influenza"),), enc))
    proc = Procedure("P", T, (Code("SNOMED-CT", "80146002", "Appendectomy"),), enc)
    proc.stop = T + 0.05
    rec.procedures.append(proc)
    rec.observations.append(Observation("V", T, (Code("LOINC", "8302-2", "Body Height"),), enc,
                                        170.2, "cm", "vital-signs"))
    rec.observations.append(Observation("L", T, (Code("LOINC", "4548-4", "Hemoglobin A1c"),),
                                        enc, 7.1, "%", "laboratory"))
    return p


def sections(xml: str) -> dict[str, ET.Element]:
    root = ET.fromstring(xml.encode())
    assert root.find("h:templateId[@root='2.16.840.1.113883.10.20.22.1.2']", NS) is not None
    out = {}
    for s in root.iter("{urn:hl7-org:v3}section"):
        out[s.find("h:code", NS).get("code")] = s
    return out


def codes_in(section: ET.Element) -> set[str]:
    return {e.get("code") for e in section.iter() if e.get("code")}


def test_every_section_holds_its_entries():
    xml = render_document(person_with_everything())
    found = sections(xml)
    assert set(found) == {s[3] for s in SECTIONS}
    expect = {"11450-4": "44054006", "10160-0": "860975", "48765-2": "91930004",
              "11369-6": "140", "47519-4": "80146002", "46240-8": "185345009",
              "8716-3": "8302-2", "30954-2": "4548-4"}
    for loinc, code in expect.items():
        assert code in codes_in(found[loinc]), loinc
        assert found[loinc].get("nullFlavor") is None
    assert "Diabetes &lt;&amp;&gt; type 2" in xml  # escaped, and parsed back intact
    texts = "".join(found["11450-4"].itertext())
    assert "Diabetes <&> type 2" in texts


def test_empty_sections_say_so():
    found = sections(render_document(person_with_everything(empty=True)))
    for s in found.values():
        assert s.get("nullFlavor") == "NI"
        assert "No " in "".join(s.find("h:text", NS).itertext())


def test_rendering_is_deterministic():
    assert render_document(person_with_everything()) == render_document(person_with_everything())


def test_templates_are_strict():
    env = template_environment()
    with pytest.raises(jinja2.UndefinedError):
        env.from_string("{{ missing.value }}").render()


def test_real_patients_render_with_their_conditions(tmp_path):
    config = RunConfig(population=6, seed=3, reference_date=dt.date(2024, 1, 1))
    programs, top = _prepare(config)
    sink = CcdaSink(end=config.end)
    part = tmp_path / "part"
    part.mkdir()
    writer = sink.open(part)
    for i in range(6):
        p = simulate_patient(i, config, programs, top)
        found = sections(render_document(p, end=config.end))
        assert {c.codes[0].code for c in p.record.conditions} <= codes_in(found["11450-4"])
        writer.write(p)
    writer.close()
    out = tmp_path / "out"
    sink.merge([part], out)
    files = sorted((out / "ccda").iterdir())
    assert len(files) == 6 and all(f.suffix == ".xml" for f in files)
    assert list(part.iterdir()) == []
