"""FHIR R4 resources into the common event form.

Reads a folder (or one file) of either Bundles (transaction, collection, batch, searchset:
what ``carecourse run --format fhir`` writes, one bundle per patient) or FHIR Bulk Data
ndjson files (``--format ndjson``: one ``<Type>.ndjson`` per resource type, optionally
gzipped). The two give the same :class:`~learned.events.EventData` for the same patients.

- **Patient** -> the baseline: ``age`` in years at the reference date (or at death, when
  earlier), ``gender``, and ``race`` and ``ethnicity`` from the US Core extensions (the OMB
  category's display, else the extension's text). Time 0 of every patient is the birth
  date, so event times are ages in days. ``deceasedDateTime`` -> a ``death`` state event,
  and the end of follow-up is death or the reference date.
- **Condition** -> a ``state`` event at its onset and an ``exit`` event at its abatement,
  coded ``SYSTEM|code`` with GMF system names (``SNOMED-CT|44054006``).
- **Encounter** -> an ``encounter`` event at the start of its period (coded by its type,
  else its class).
- **Observation** -> an ``observation`` event per value at its effective time, with the
  number in ``value`` (quantities, integers, booleans as 1/0; coded and text answers have
  no number); each component is an observation of its own (blood pressure).
- **MedicationRequest** -> a ``medication`` event at ``authoredOn``, coded by its
  ``medicationCodeableConcept`` or by the Medication resource it refers to.

Resources marked ``entered-in-error`` are left out, as are resources without a time or a
code (counted in ``EventData.notes``). References are resolved by ``fullUrl``
(``urn:uuid:...``) or ``Type/id``; a resource whose subject is not a Patient of the data is
an error.
"""

from __future__ import annotations

import datetime as dt
import gzip
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import orjson
import pandas as pd

from learned.events import KINDS, PLACE, EventData, make_event_data
from modules.errors import ConfigError, DataError, Problem

__all__ = ["read_fhir", "SYSTEM_NAMES", "fhir_files"]

#: FHIR code system URIs -> the names GMF modules use (others are kept as URIs).
SYSTEM_NAMES: dict[str, str] = {
    "http://snomed.info/sct": "SNOMED-CT",
    "http://loinc.org": "LOINC",
    "http://www.nlm.nih.gov/research/umls/rxnorm": "RxNorm",
    "http://hl7.org/fhir/sid/cvx": "CVX",
    "http://hl7.org/fhir/sid/icd-10-cm": "ICD-10",
    "http://hl7.org/fhir/sid/icd-10": "ICD-10",
    "http://hl7.org/fhir/sid/ndc": "NDC",
    "http://www.ama-assn.org/go/cpt": "CPT",
    "http://terminology.hl7.org/CodeSystem/v3-ActCode": "ActCode",
    "http://dicom.nema.org/resources/ontology/DCM": "DICOM",
}

_US_CORE = "http://hl7.org/fhir/us/core/StructureDefinition/"
_USED = ("Patient", "Condition", "Encounter", "Observation", "MedicationRequest", "Medication")
_SECONDS_PER_DAY = 86400.0
_SECONDS_PER_YEAR = 365.25 * _SECONDS_PER_DAY


@dataclass
class _Resource:
    body: dict[str, Any]
    file: str
    place: str  # "Bundle.entry[3].resource(Condition)" or "line 12 (Condition)"

    def at(self, field: str) -> str:
        return f"{self.place}.{field}"


def fhir_files(path: str | PathLike[str]) -> list[Path]:
    """The files :func:`read_fhir` reads at ``path``: the file itself, or a folder's
    ``*.ndjson`` (and ``*.ndjson.gz``) files when it has any, else its ``*.json`` files."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise ConfigError(f"{p}: no such file or folder")
    nd = sorted([*p.glob("*.ndjson"), *p.glob("*.ndjson.gz")])
    if nd:
        return nd
    js = sorted(p.glob("*.json"))
    if js:
        return js
    subs = [d.name for d in (p / "fhir", p / "ndjson") if d.is_dir()]
    hint = (f"; this looks like a carecourse output folder: point at {p / subs[0]}"
            if subs else "")
    raise ConfigError(f"{p}: no FHIR files (*.json bundles or *.ndjson){hint}")


def read_fhir(path: str | PathLike[str], *, reference_date: dt.date | None = None,
              name: str | None = None) -> EventData:
    """Read FHIR R4 bundles or Bulk Data ndjson (see the module docstring) into the common
    event form. ``reference_date`` is when the living patients' follow-up ends and their
    age is taken (default: the latest date in the data). Every malformed resource is
    reported at once in a :class:`DataError` naming its file and FHIR path."""
    root = Path(path)
    files = fhir_files(root)
    problems: list[Problem] = []
    ignored: Counter[str] = Counter()
    by_type: dict[str, list[_Resource]] = {t: [] for t in _USED}
    aliases: dict[str, str] = {}  # fullUrl -> Type/id
    for res in _resources(files, root, problems, aliases):
        rtype = res.body.get("resourceType")
        if rtype in by_type:
            if res.body.get("status") == "entered-in-error":
                ignored[f"{rtype} entered-in-error"] += 1
            else:
                by_type[rtype].append(res)
        else:
            ignored[str(rtype)] += 1
    reader = _Reader(aliases, problems)
    patients = reader.patients(by_type["Patient"])
    medications = reader.medications(by_type["Medication"])
    rows: list[tuple] = []
    left_out: Counter[str] = Counter()
    for res in by_type["Condition"]:
        reader.condition(res, patients, rows, left_out)
    for res in by_type["Encounter"]:
        reader.encounter(res, patients, rows, left_out)
    for res in by_type["Observation"]:
        reader.observation(res, patients, rows, left_out)
    for res in by_type["MedicationRequest"]:
        reader.medication_request(res, patients, medications, rows, left_out)
    if problems:
        raise DataError(problems)
    if not patients:
        raise DataError([Problem(str(root), "", "no Patient resources; the events need the "
                                 "patients they are about")])

    deaths = {pid: p.death for pid, p in patients.items() if p.death is not None}
    for pid, t in deaths.items():
        rows.append((pid, t, "death", "state", math.nan, "Death", f"{patients[pid].place}"
                     ".deceasedDateTime"))
    if reference_date is not None:
        ref = _day_seconds(reference_date)
    else:
        latest = max([r[1] for r in rows] + [p.birth for p in patients.values()])
        ref = math.floor(latest / _SECONDS_PER_DAY + 1) * _SECONDS_PER_DAY  # the next midnight
    end_s = {pid: min(ref, deaths.get(pid, math.inf)) for pid in patients}
    kept = [r for r in rows if r[1] <= end_s[r[0]]]
    # One order whatever the input's (bundles list a patient's resources together, ndjson
    # one type at a time): patient, time, kind, code, value.
    order = {k: i for i, k in enumerate(KINDS)}
    kept.sort(key=lambda r: (r[0], r[1], order[r[3]], r[2], math.isnan(r[4]),
                             0.0 if math.isnan(r[4]) else r[4]))
    if len(kept) < len(rows):
        left_out["event(s) after the reference date"] += len(rows) - len(kept)

    events = pd.DataFrame(kept, columns=["patient_id", "seconds", "code", "kind", "value",
                                         "display", PLACE])
    births = pd.Series({pid: p.birth for pid, p in patients.items()}, dtype=float)
    events["time"] = (events["seconds"] - births.reindex(events["patient_id"]).to_numpy()) \
        / _SECONDS_PER_DAY
    events = events.drop(columns="seconds")
    ids = list(patients)
    baseline = pd.DataFrame({
        "patient_id": ids,
        "age": [(end_s[i] - patients[i].birth) / _SECONDS_PER_YEAR for i in ids],
        "gender": pd.Categorical([patients[i].gender for i in ids]),
        "race": pd.Categorical([patients[i].race for i in ids]),
        "ethnicity": pd.Categorical([patients[i].ethnicity for i in ids]),
    })
    end = pd.Series({i: (end_s[i] - patients[i].birth) / _SECONDS_PER_DAY for i in ids})
    ref_date = dt.datetime.fromtimestamp(ref, dt.UTC).date()
    notes = [f"reference date {ref_date.isoformat()}"
             + (" (the day after the latest date in the data)" if reference_date is None
                else "")]
    notes += [f"left out: {n} {what}" for what, n in sorted(left_out.items())]
    if ignored:
        notes.append("not used: " + ", ".join(f"{n} {t}" for t, n in sorted(ignored.items())))
    return make_event_data(events, baseline, name=name or root.name,
                           origin="birth date (event times are ages in days)", end=end,
                           events_file=str(root), baseline_file=str(root), notes=notes)


def _resources(files: list[Path], root: Path, problems: list[Problem],
               aliases: dict[str, str]) -> Iterator[_Resource]:
    for f in files:
        label = str(f)
        name = f.name.lower()
        if name.endswith((".ndjson", ".ndjson.gz")):
            opener = gzip.open if name.endswith(".gz") else open
            try:
                with opener(f, "rb") as fh:
                    for n, line in enumerate(fh, 1):
                        if not line.strip():
                            continue
                        try:
                            body = orjson.loads(line)
                        except orjson.JSONDecodeError as exc:
                            problems.append(Problem(label, f"line {n}", f"not JSON: {exc}"))
                            continue
                        if not isinstance(body, dict) or "resourceType" not in body:
                            problems.append(Problem(label, f"line {n}",
                                                    "not a FHIR resource (no resourceType)"))
                            continue
                        rtype = body["resourceType"]
                        if "id" in body:
                            aliases[f"{rtype}/{body['id']}"] = f"{rtype}/{body['id']}"
                        yield _Resource(body, label, f"line {n} ({rtype})")
            except (OSError, EOFError) as exc:
                problems.append(Problem(label, "", f"not readable: {exc}"))
            continue
        try:
            body = orjson.loads(f.read_bytes())
        except orjson.JSONDecodeError as exc:
            problems.append(Problem(label, "", f"not JSON: {exc}"))
            continue
        except OSError as exc:
            problems.append(Problem(label, "", f"not readable: {exc}"))
            continue
        if not isinstance(body, dict) or "resourceType" not in body:
            if f.name == "manifest.json":  # a Bulk Data export manifest
                continue
            problems.append(Problem(label, "", "not a FHIR resource (no resourceType)"))
            continue
        if body["resourceType"] != "Bundle":
            rtype = body["resourceType"]
            if "id" in body:
                aliases[f"{rtype}/{body['id']}"] = f"{rtype}/{body['id']}"
            yield _Resource(body, label, rtype)
            continue
        entries = body.get("entry") or []
        if not isinstance(entries, list):
            problems.append(Problem(label, "Bundle.entry", "not a list of entries"))
            continue
        found: list[_Resource] = []
        for i, entry in enumerate(entries):
            r = entry.get("resource") if isinstance(entry, dict) else None
            if not isinstance(r, dict) or "resourceType" not in r:
                problems.append(Problem(label, f"Bundle.entry[{i}]",
                                        "no resource with a resourceType"))
                continue
            rtype = r["resourceType"]
            full = entry.get("fullUrl")
            rid = r.get("id") or (_tail(full) if isinstance(full, str) else None)
            if rid:
                r = r if "id" in r else {**r, "id": rid}
                aliases[f"{rtype}/{rid}"] = f"{rtype}/{rid}"
                if isinstance(full, str):
                    aliases[full] = f"{rtype}/{rid}"
            found.append(_Resource(r, label, f"Bundle.entry[{i}].resource({rtype})"))
        yield from found


def _tail(url: str) -> str:
    """The id at the end of ``urn:uuid:ID``, ``Type/ID`` or ``http://.../Type/ID``."""
    if url.startswith("urn:uuid:") or url.startswith("urn:oid:"):
        return url.rsplit(":", 1)[-1]
    parts = url.rstrip("/").split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        return parts[-3]
    return parts[-1]


@dataclass
class _Patient:
    birth: float  # seconds since 1970, UTC midnight of the birth date
    death: float | None
    gender: str
    race: str
    ethnicity: str
    place: str


class _Reader:
    def __init__(self, aliases: dict[str, str], problems: list[Problem]) -> None:
        self.aliases = aliases
        self.problems = problems

    def problem(self, res: _Resource, field: str, message: str) -> None:
        self.problems.append(Problem(res.file, res.at(field), message))

    def resolve(self, ref: object, rtype: str) -> str | None:
        """The id of the ``rtype`` resource a reference (dict with ``reference``) names,
        or None when it names none of the data's resources of that type."""
        text = ref.get("reference") if isinstance(ref, dict) else None
        if not isinstance(text, str):
            return None
        target = self.aliases.get(text)
        if target is None:
            parts = text.rstrip("/").split("/")
            if "_history" in parts:
                parts = parts[: parts.index("_history")]
            if len(parts) >= 2:
                target = self.aliases.get(f"{parts[-2]}/{parts[-1]}")
        if target is None or not target.startswith(rtype + "/"):
            return None
        return target.split("/", 1)[1]

    def time(self, res: _Resource, field: str, text: object) -> float | None:
        if not isinstance(text, str):
            self.problem(res, field, f"{text!r} is not a FHIR date or dateTime")
            return None
        t = parse_fhir_time(text)
        if t is None:
            self.problem(res, field, f"{text!r} is not a FHIR date or dateTime "
                                     "(YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm:ss+zz:zz)")
        return t

    def patients(self, resources: list[_Resource]) -> dict[str, _Patient]:
        out: dict[str, _Patient] = {}
        for res in resources:
            b = res.body
            pid = b.get("id")
            if not isinstance(pid, str) or not pid:
                self.problem(res, "id", "the Patient has no id")
                continue
            if pid in out:
                self.problem(res, "id", f"Patient {pid!r} appears again (first at "
                                        f"{out[pid].place}); give each patient one resource")
                continue
            if "birthDate" not in b:
                self.problem(res, "birthDate", "missing; event times are counted from birth")
                continue
            birth = self.time(res, "birthDate", b["birthDate"])
            if birth is None:
                continue
            death = None
            if "deceasedDateTime" in b:
                death = self.time(res, "deceasedDateTime", b["deceasedDateTime"])
            out[pid] = _Patient(
                birth=math.floor(birth / _SECONDS_PER_DAY) * _SECONDS_PER_DAY, death=death,
                gender=str(b.get("gender") or "unknown"),
                race=_us_core(b, "us-core-race"), ethnicity=_us_core(b, "us-core-ethnicity"),
                place=f"{res.file}: {res.place}")
        return out

    def medications(self, resources: list[_Resource]) -> dict[str, tuple[str, str]]:
        out: dict[str, tuple[str, str]] = {}
        for res in resources:
            coded = _code(res.body.get("code"))
            if coded is not None and res.body.get("id"):
                out[str(res.body["id"])] = coded
        return out

    def subject(self, res: _Resource, patients: dict[str, _Patient]) -> str | None:
        field = "patient" if "patient" in res.body and "subject" not in res.body else "subject"
        ref = res.body.get(field)
        pid = self.resolve(ref, "Patient")
        if pid is None or pid not in patients:
            shown = ref.get("reference") if isinstance(ref, dict) else ref
            self.problem(res, field, f"refers to {shown!r}, which is not a Patient in the "
                                     "data; every resource needs its patient")
            return None
        return pid

    def condition(self, res: _Resource, patients: dict[str, _Patient], rows: list[tuple],
                  left_out: Counter[str]) -> None:
        b = res.body
        status = _coding_code(b.get("verificationStatus"))
        if status in ("entered-in-error", "refuted"):
            left_out[f"Condition(s) {status}"] += 1
            return
        pid = self.subject(res, patients)
        coded = _code(b.get("code"))
        onset_field, onset = _first(b, "onsetDateTime", "onsetPeriod.start")
        if pid is None:
            return
        if coded is None:
            left_out["Condition(s) without a code"] += 1
            return
        if onset is None:
            left_out["Condition(s) without an onset date"] += 1
            return
        t = self.time(res, onset_field, onset)
        if t is not None:
            rows.append((pid, t, coded[0], "state", math.nan, coded[1], res.at(onset_field)))
        ab_field, abated = _first(b, "abatementDateTime", "abatementPeriod.start")
        if abated is not None:
            t = self.time(res, ab_field, abated)
            if t is not None:
                rows.append((pid, t, coded[0], "exit", math.nan, coded[1], res.at(ab_field)))

    def encounter(self, res: _Resource, patients: dict[str, _Patient], rows: list[tuple],
                  left_out: Counter[str]) -> None:
        b = res.body
        pid = self.subject(res, patients)
        types = b.get("type")
        coded = _code(types[0]) if isinstance(types, list) and types else None
        if coded is None and isinstance(b.get("class"), dict):
            coded = _code({"coding": [b["class"]]})
        field, start = _first(b, "period.start")
        if pid is None:
            return
        if coded is None:
            left_out["Encounter(s) without a type or class"] += 1
            return
        if start is None:
            left_out["Encounter(s) without a period start"] += 1
            return
        t = self.time(res, field, start)
        if t is not None:
            rows.append((pid, t, coded[0], "encounter", math.nan, coded[1], res.at(field)))

    def observation(self, res: _Resource, patients: dict[str, _Patient], rows: list[tuple],
                    left_out: Counter[str]) -> None:
        b = res.body
        if b.get("status") == "cancelled":
            left_out["Observation(s) cancelled"] += 1
            return
        pid = self.subject(res, patients)
        field, when = _first(b, "effectiveDateTime", "effectivePeriod.start",
                             "effectiveInstant", "issued")
        if pid is None:
            return
        if when is None:
            left_out["Observation(s) without an effective time"] += 1
            return
        t = self.time(res, field, when)
        if t is None:
            return
        coded = _code(b.get("code"))
        parts: list[tuple[tuple[str, str] | None, dict, str]] = []
        if any(k.startswith("value") for k in b) or not b.get("component"):
            parts.append((coded, b, "code"))
        for i, comp in enumerate(b.get("component") or []):
            if isinstance(comp, dict):
                parts.append((_code(comp.get("code")), comp, f"component[{i}].code"))
        for part_code, holder, where in parts:
            if part_code is None:
                left_out["Observation value(s) without a code"] += 1
                continue
            rows.append((pid, t, part_code[0], "observation", _number(holder), part_code[1],
                         res.at(where)))

    def medication_request(self, res: _Resource, patients: dict[str, _Patient],
                           medications: dict[str, tuple[str, str]], rows: list[tuple],
                           left_out: Counter[str]) -> None:
        b = res.body
        pid = self.subject(res, patients)
        coded = _code(b.get("medicationCodeableConcept"))
        if coded is None and "medicationReference" in b:
            ref = b["medicationReference"]
            text = ref.get("reference") if isinstance(ref, dict) else None
            if isinstance(text, str) and text.startswith("#"):  # a contained Medication
                for c in b.get("contained") or []:
                    if isinstance(c, dict) and c.get("id") == text[1:]:
                        coded = _code(c.get("code"))
            else:
                mid = self.resolve(ref, "Medication")
                coded = medications.get(mid) if mid is not None else None
        if pid is None:
            return
        if coded is None:
            left_out["MedicationRequest(s) whose medication has no code in the data"] += 1
            return
        if "authoredOn" not in b:
            left_out["MedicationRequest(s) without authoredOn"] += 1
            return
        t = self.time(res, "authoredOn", b["authoredOn"])
        if t is not None:
            rows.append((pid, t, coded[0], "medication", math.nan, coded[1],
                         res.at("authoredOn")))


def parse_fhir_time(text: str) -> float | None:
    """Seconds since 1970-01-01 UTC of a FHIR date, dateTime or instant (a partial date is
    its first day; a time without a zone is taken as UTC), or None when malformed."""
    s = text.strip()
    try:
        if len(s) == 4:
            d = dt.date(int(s), 1, 1)
        elif len(s) == 7 and s[4] == "-":
            d = dt.date(int(s[:4]), int(s[5:]), 1)
        elif len(s) == 10:
            d = dt.date.fromisoformat(s)
        else:
            when = dt.datetime.fromisoformat(s)
            if when.tzinfo is None:
                when = when.replace(tzinfo=dt.UTC)
            return when.timestamp()
    except ValueError:
        return None
    return _day_seconds(d)


def _day_seconds(d: dt.date) -> float:
    return float((d - dt.date(1970, 1, 1)).days) * _SECONDS_PER_DAY


def _first(body: dict, *fields: str) -> tuple[str, Any]:
    """The first of the dotted fields that is present: (field, value), else (fields[0],
    None)."""
    for f in fields:
        node: Any = body
        for part in f.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            return f, node
    return fields[0], None


def _code(cc: object) -> tuple[str, str] | None:
    """(``SYSTEM|code``, display) of a CodeableConcept's first coding with a code, else of
    its text; None when it has neither."""
    if not isinstance(cc, dict):
        return None
    for coding in cc.get("coding") or []:
        if isinstance(coding, dict) and coding.get("code"):
            system = str(coding.get("system") or "")
            name = SYSTEM_NAMES.get(system, system)
            code = f"{name}|{coding['code']}" if name else str(coding["code"])
            return code, str(coding.get("display") or cc.get("text") or "")
    if cc.get("text"):
        return str(cc["text"]), str(cc["text"])
    return None


def _coding_code(cc: object) -> str | None:
    if isinstance(cc, dict):
        for coding in cc.get("coding") or []:
            if isinstance(coding, dict) and coding.get("code"):
                return str(coding["code"])
    return None


def _number(holder: dict) -> float:
    q = holder.get("valueQuantity")
    if isinstance(q, dict) and isinstance(q.get("value"), int | float):
        return float(q["value"])
    for key in ("valueInteger", "valueDecimal"):
        if isinstance(holder.get(key), int | float) and not isinstance(holder[key], bool):
            return float(holder[key])
    if isinstance(holder.get("valueBoolean"), bool):
        return 1.0 if holder["valueBoolean"] else 0.0
    return math.nan


def _us_core(patient: dict, name: str) -> str:
    """The OMB category display (else the text) of a US Core race or ethnicity extension,
    or "unknown"."""
    for ext in patient.get("extension") or []:
        if not isinstance(ext, dict) or ext.get("url") != _US_CORE + name:
            continue
        text = None
        for sub in ext.get("extension") or []:
            if not isinstance(sub, dict):
                continue
            if sub.get("url") == "ombCategory":
                coding = sub.get("valueCoding") or {}
                label = coding.get("display") or coding.get("code")
                if label:
                    return str(label)
            elif sub.get("url") == "text" and sub.get("valueString"):
                text = str(sub["valueString"])
        if text:
            return text
    return "unknown"
