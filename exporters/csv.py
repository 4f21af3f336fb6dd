"""Synthea-compatible CSV export, streamed one patient at a time.

:class:`CsvSink` is the output format the population runner sends to its workers; each
partition opens a :class:`CsvWriter` on its own folder, writes its patients and closes it,
and :meth:`CsvSink.merge` then concatenates the parts, in order, into ``<out>/csv``. A
writer keeps nothing from one patient to the next (beyond bounded formatting caches), so
memory does not grow with the population.

Files and columns are those of Synthea 3.x's CSV exporter (its ``CSVConstants`` header
lines, which the "CSV File Data Dictionary" page of the Synthea wiki documents):
patients, encounters, conditions, allergies, medications, observations, procedures,
immunizations, careplans, devices, imaging_studies and supplies. Synthea's organizations,
providers, payers, payer_transitions, claims, claims_transactions and patient_expenses files
are not written: carecourse has no provider, payer or cost model yet.

What is written, and what is deliberately left empty:

* Cost, payer, organization and provider cells (HEALTHCARE_EXPENSES, HEALTHCARE_COVERAGE,
  ORGANIZATION, PROVIDER, PAYER, BASE_ENCOUNTER_COST, TOTAL_CLAIM_COST, PAYER_COVERAGE,
  BASE_COST, TOTALCOST) are empty, never invented numbers. So are DRIVERS, PASSPORT, MIDDLE,
  SUFFIX, MAIDEN and FIPS unless the demographics carry them (``drivers``, ``passport``,
  ``middle_name``, ``suffix``, ``maiden_name``, ``fips``), and a device's UDI.
* DISPENSES is derived from the record: refills plus the first fill when the prescription
  states refills (Synthea writes the refills alone), else the active time (to the end when
  still active) divided by the prescription's duration, else one fill per 30 days; at
  least one.
* Allergies: SYSTEM is the code's system as the module names it (Synthea maps it through a
  URI table and writes "Unknown" for GMF names); with more than two reactions,
  REACTION1/REACTION2 are the two most severe.
* Dates: BIRTHDATE, DEATHDATE, condition / allergy / care-plan START and STOP and supply
  DATE are ``YYYY-MM-DD`` (as Synthea writes them); every other time is an ISO 8601 UTC
  timestamp ``YYYY-MM-DDTHH:MM:SSZ``. An absent STOP is an empty cell.
* Observation VALUE: a number with one decimal (Synthea's ``%.1f``: ``120.0``) and TYPE
  ``numeric``; a code writes its display, text its text, sampled data its values separated
  by spaces, all with TYPE ``text``. A MultiObservation without a value of its own is
  written as one row per component, as Synthea does; an observation with neither a value
  nor components is not written. Diagnostic reports have no file: their observations are
  already rows of observations.csv.
* Ids: the patient's Id is ``person.id``. Encounter, care-plan and imaging-study Ids, and
  the DICOM series and instance UIDs (``2.25.<integer>``, the UUID form of an OID), are
  derived from the patient's seed, the kind and the entry's position in its list
  (:func:`entry_id`), so the same seed gives byte-identical files. An ENCOUNTER cell holds
  the Id of the entry's encounter, or is empty when the entry has no encounter or its
  encounter is not exported.
* Text is quoted as CSV requires (commas, quotes and line breaks are kept, not replaced
  with spaces as Synthea does); lines end with ``\n``, files are UTF-8.

Years of history (Synthea's ``exporter.years_of_history``): with ``years_of_history=N`` and
an end time, the cutoff is ``end - N * 365.25`` days. The patient row is always written.
An encounter is written if it starts on or after the cutoff. An entry with a duration
(condition, allergy, medication, care plan, device, procedure) is written unless it
stopped before the cutoff, so whatever is still active is always written; a point-in-time
entry (observation, immunization, imaging study, supply) is written if it happened on or
after the cutoff. ``0`` writes everything.
"""

from __future__ import annotations

import math
import numbers
import os
import shutil
from pathlib import Path
from typing import Any

from exporters.common import Clock, dicom_uid, entry_id
from modules.errors import ConfigError, OutputError
from simulator.person import Person
from simulator.record import Code, Encounter, Entry, Medication, Observation

__all__ = [
    "CsvSink",
    "CsvWriter",
    "FILES",
    "entry_id",
]

#: Every file written, with its columns, in Synthea 3.x's order.
FILES: dict[str, tuple[str, ...]] = {
    "patients.csv": (
        "Id", "BIRTHDATE", "DEATHDATE", "SSN", "DRIVERS", "PASSPORT", "PREFIX", "FIRST",
        "MIDDLE", "LAST", "SUFFIX", "MAIDEN", "MARITAL", "RACE", "ETHNICITY", "GENDER",
        "BIRTHPLACE", "ADDRESS", "CITY", "STATE", "COUNTY", "FIPS", "ZIP", "LAT", "LON",
        "HEALTHCARE_EXPENSES", "HEALTHCARE_COVERAGE", "INCOME",
    ),
    "encounters.csv": (
        "Id", "START", "STOP", "PATIENT", "ORGANIZATION", "PROVIDER", "PAYER",
        "ENCOUNTERCLASS", "CODE", "DESCRIPTION", "BASE_ENCOUNTER_COST", "TOTAL_CLAIM_COST",
        "PAYER_COVERAGE", "REASONCODE", "REASONDESCRIPTION",
    ),
    "conditions.csv": (
        "START", "STOP", "PATIENT", "ENCOUNTER", "SYSTEM", "CODE", "DESCRIPTION",
    ),
    "allergies.csv": (
        "START", "STOP", "PATIENT", "ENCOUNTER", "CODE", "SYSTEM", "DESCRIPTION", "TYPE",
        "CATEGORY", "REACTION1", "DESCRIPTION1", "SEVERITY1", "REACTION2", "DESCRIPTION2",
        "SEVERITY2",
    ),
    "medications.csv": (
        "START", "STOP", "PATIENT", "PAYER", "ENCOUNTER", "CODE", "DESCRIPTION", "BASE_COST",
        "PAYER_COVERAGE", "DISPENSES", "TOTALCOST", "REASONCODE", "REASONDESCRIPTION",
    ),
    "observations.csv": (
        "DATE", "PATIENT", "ENCOUNTER", "CATEGORY", "CODE", "DESCRIPTION", "VALUE", "UNITS",
        "TYPE",
    ),
    "procedures.csv": (
        "START", "STOP", "PATIENT", "ENCOUNTER", "SYSTEM", "CODE", "DESCRIPTION", "BASE_COST",
        "REASONCODE", "REASONDESCRIPTION",
    ),
    "immunizations.csv": (
        "DATE", "PATIENT", "ENCOUNTER", "CODE", "DESCRIPTION", "BASE_COST",
    ),
    "careplans.csv": (
        "Id", "START", "STOP", "PATIENT", "ENCOUNTER", "CODE", "DESCRIPTION", "REASONCODE",
        "REASONDESCRIPTION",
    ),
    "devices.csv": (
        "START", "STOP", "PATIENT", "ENCOUNTER", "CODE", "DESCRIPTION", "UDI",
    ),
    "imaging_studies.csv": (
        "Id", "DATE", "PATIENT", "ENCOUNTER", "SERIES_UID", "BODYSITE_CODE",
        "BODYSITE_DESCRIPTION", "MODALITY_CODE", "MODALITY_DESCRIPTION", "INSTANCE_UID",
        "SOP_CODE", "SOP_DESCRIPTION", "PROCEDURE_CODE",
    ),
    "supplies.csv": (
        "DATE", "PATIENT", "ENCOUNTER", "CODE", "DESCRIPTION", "QUANTITY",
    ),
}

_DAYS_PER_YEAR = 365.25
_NO_CODE = Code("", "", "")
# Bound on each formatting cache; a cache is dropped when it grows past this.
_CACHE_LIMIT = 100_000
# Prescription duration units (GMF) in days; Synthea counts a month as 30 days.
_UNIT_DAYS = {
    "seconds": 1 / 86400, "minutes": 1 / 1440, "hours": 1 / 24, "days": 1.0,
    "weeks": 7.0, "months": 30.0, "years": 365.0,
}
_SEVERITY_RANK = {"SEVERE": 0, "MODERATE": 1, "MILD": 2}


def _header_line(name: str) -> str:
    return ",".join(FILES[name]) + "\n"


def _q(value: Any) -> str:
    """One CSV cell: None is empty; text with a comma, quote or line break is quoted (the
    csv module's minimal quoting, which is cheaper done here than through csv.writer)."""
    if value is None:
        return ""
    s = value if value.__class__ is str else str(value)
    if '"' in s:
        return '"' + s.replace('"', '""') + '"'
    if "," in s or "\n" in s or "\r" in s:
        return '"' + s + '"'
    return s


class _Quoted(dict):
    """``quoted[text]`` is ``_q(text)``, remembered: a patient's rows repeat the same
    displays, units and categories over and over."""

    def __missing__(self, key: Any) -> str:
        v = self[key] = _q(key)
        return v


def _number(value: float) -> str:
    return f"{value:.1f}"


def _sample(value: float) -> str:
    s = f"{value:.3f}".rstrip("0")
    return s[:-1] if s.endswith(".") else s


def _observation_value(value: Any) -> tuple[str, str]:
    """(VALUE, TYPE) of an observation value, as Synthea writes them (VALUE unquoted)."""
    if value.__class__ is float:
        return f"{value:.1f}", "numeric"
    if isinstance(value, bool):
        return ("true" if value else "false"), "text"
    if isinstance(value, float | int):
        return _number(value), "numeric"
    if isinstance(value, Code):
        return value.display, "text"
    if isinstance(value, str):
        return value, "text"
    if isinstance(value, Entry):
        c = value.codes[0] if value.codes else _NO_CODE
        return c.display, "text"
    if isinstance(value, tuple | list):
        return " ".join(_sample(float(v)) for v in value), "text"
    if isinstance(value, numbers.Real):  # numpy scalars
        return _number(float(value)), "numeric"
    return str(value), "text"


def _dispenses(med: Medication, end: float | None) -> int:
    stop = med.stop if med.stop is not None else end
    days = max(0.0, (stop if stop is not None else med.start) - med.start)
    rx = med.prescription or {}
    if rx.get("refills") is not None:
        n = int(rx["refills"]) + 1  # the first fill plus the refills
    else:
        period = 30.0
        duration = rx.get("duration")
        if isinstance(duration, dict):
            unit = _UNIT_DAYS.get(str(duration.get("unit", "")))
            quantity = duration.get("quantity")
            if unit is not None and isinstance(quantity, int | float) and quantity > 0:
                period = unit * quantity
        n = int(days // period)
    return max(1, n)


def _reactions(reactions: tuple[tuple[Code, str], ...]) -> str:
    """REACTION1..SEVERITY2: the first two reactions, or the two most severe of more."""
    picked = list(reactions)
    if len(picked) > 2:
        picked = sorted(picked, key=lambda r: _SEVERITY_RANK.get(str(r[1]).upper(), 3))[:2]
    cells: list[str] = []
    for code, severity in picked:
        cells += [_q(code.code), _q(code.display), _q(severity)]
    return ",".join(cells + [""] * (6 - len(cells)))


class CsvWriter:
    """Writes patients into the twelve files of one folder (headers first).

    Rows are joined by hand rather than through :mod:`csv` (about five times faster per
    row); every cell that can hold text goes through the same minimal quoting as
    ``csv.writer`` would apply, so any CSV reader reads the cells back unchanged.
    """

    def __init__(self, folder: Path, *, years_of_history: int = 0,
                 end: float | None = None) -> None:
        self.folder = Path(folder)
        self.years_of_history = years_of_history
        self.end = end
        self._clock = Clock()
        self._quoted = _Quoted()
        self._files: dict[str, Any] = {}
        try:
            for name in FILES:
                f = open(self.folder / name, "w", encoding="utf-8", newline="",  # noqa: SIM115
                         buffering=1 << 16)
                self._files[name] = f
                f.write(_header_line(name))
        except OSError as exc:
            self.close()
            raise OutputError(f"{self.folder}: cannot write CSV files ({exc.strerror})") from None

    def __enter__(self) -> CsvWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Flush and close every file; closing twice is harmless."""
        files, self._files = self._files, {}
        for f in files.values():
            f.close()

    # ------------------------------------------------------------------ one patient
    def write(self, person: Person) -> None:
        """Append one finished patient to every file.

        The end time is the writer's ``end``, else ``person.end`` (when the simulation of
        this patient stopped), else ``person.death``.
        """
        files = self._files
        if not files:
            raise OutputError(f"{self.folder}: the CSV writer is closed")
        end = self.end
        if end is None:
            end = person.end if person.end is not None else person.death
        cutoff = -math.inf
        if self.years_of_history and end is not None:
            cutoff = end - self.years_of_history * _DAYS_PER_YEAR

        date, stamp = self._clock.date, self._clock.stamp
        Q = self._quoted
        if len(Q) >= _CACHE_LIMIT:
            Q.clear()
        pid = person.id
        seed = person.seed
        rec = person.record
        no_code = _NO_CODE

        files["patients.csv"].write(self._patient_line(person, end))

        # Encounters: written when they start on or after the cutoff; the Id of each
        # written encounter is what the ENCOUNTER cells of other rows refer to. An entry
        # without an encounter looks up None, which is never a key: an empty cell.
        enc_ids: dict[Encounter | None, str] = {}
        lines: list[str] = []
        for i, e in enumerate(rec.encounters):
            if e.start < cutoff:
                continue
            eid = enc_ids[e] = entry_id(seed, "encounter", i)
            c = e.codes[0] if e.codes else no_code
            r = e.reason or no_code
            lines.append(f"{eid},{stamp(e.start)},{stamp(e.stop)},{pid},,,,"
                         f"{Q[e.encounter_class.lower()]},{Q[c.code]},{Q[c.display]},,,,"
                         f"{Q[r.code]},{Q[r.display]}\n")
        files["encounters.csv"].write("".join(lines))
        enc = enc_ids.get

        lines = []
        for x in rec.conditions:
            if x.stop is None or x.stop >= cutoff:
                c = x.codes[0] if x.codes else no_code
                lines.append(f"{date(x.start)},{date(x.stop)},{pid},{enc(x.encounter, '')},"
                             f"{Q[c.system]},{Q[c.code]},{Q[c.display]}\n")
        files["conditions.csv"].write("".join(lines))

        lines = []
        for a in rec.allergies:
            if a.stop is None or a.stop >= cutoff:
                c = a.codes[0] if a.codes else no_code
                lines.append(f"{date(a.start)},{date(a.stop)},{pid},{enc(a.encounter, '')},"
                             f"{Q[c.code]},{Q[c.system]},{Q[c.display]},{Q[a.allergy_type]},"
                             f"{Q[a.category]},{_reactions(a.reactions)}\n")
        files["allergies.csv"].write("".join(lines))

        lines = []
        for m in rec.medications:
            if m.stop is None or m.stop >= cutoff:
                c = m.codes[0] if m.codes else no_code
                r = m.reason or no_code
                lines.append(f"{stamp(m.start)},{stamp(m.stop)},{pid},,{enc(m.encounter, '')},"
                             f"{Q[c.code]},{Q[c.display]},,,{_dispenses(m, end)},,"
                             f"{Q[r.code]},{Q[r.display]}\n")
        files["medications.csv"].write("".join(lines))

        lines = []
        for o in rec.observations:
            if o.start < cutoff:
                continue
            if o.value is not None:
                c = o.codes[0] if o.codes else no_code
                value, kind = _observation_value(o.value)
                lines.append(f"{stamp(o.start)},{pid},{enc(o.encounter, '')},{Q[o.category]},"
                             f"{Q[c.code]},{Q[c.display]},{Q[value]},{Q[o.unit]},{kind}\n")
            elif o.components:
                self._component_lines(lines, o, stamp(o.start), pid, enc(o.encounter, ""))
        files["observations.csv"].write("".join(lines))

        lines = []
        for p in rec.procedures:
            if p.stop is None or p.stop >= cutoff:
                c = p.codes[0] if p.codes else no_code
                r = p.reason or no_code
                lines.append(f"{stamp(p.start)},{stamp(p.stop)},{pid},{enc(p.encounter, '')},"
                             f"{Q[c.system]},{Q[c.code]},{Q[c.display]},,"
                             f"{Q[r.code]},{Q[r.display]}\n")
        files["procedures.csv"].write("".join(lines))

        lines = []
        for v in rec.immunizations:
            if v.start >= cutoff:
                c = v.codes[0] if v.codes else no_code
                lines.append(f"{stamp(v.start)},{pid},{enc(v.encounter, '')},"
                             f"{Q[c.code]},{Q[c.display]},\n")
        files["immunizations.csv"].write("".join(lines))

        lines = []
        for i, cp in enumerate(rec.careplans):
            if cp.stop is None or cp.stop >= cutoff:
                c = cp.codes[0] if cp.codes else no_code
                r = cp.reasons[0] if cp.reasons else no_code
                lines.append(f"{entry_id(seed, 'careplan', i)},{date(cp.start)},{date(cp.stop)},"
                             f"{pid},{enc(cp.encounter, '')},{Q[c.code]},{Q[c.display]},"
                             f"{Q[r.code]},{Q[r.display]}\n")
        files["careplans.csv"].write("".join(lines))

        lines = []
        for d in rec.devices:
            if d.stop is None or d.stop >= cutoff:
                c = d.codes[0] if d.codes else no_code
                lines.append(f"{stamp(d.start)},{stamp(d.stop)},{pid},{enc(d.encounter, '')},"
                             f"{Q[c.code]},{Q[c.display]},\n")
        files["devices.csv"].write("".join(lines))

        lines = []
        for i, s in enumerate(rec.imaging_studies):
            if s.start >= cutoff:
                self._imaging_lines(lines, s, i, seed, stamp(s.start), pid,
                                    enc(s.encounter, ""))
        files["imaging_studies.csv"].write("".join(lines))

        lines = []
        for s in rec.supplies:
            if s.start >= cutoff:
                c = s.codes[0] if s.codes else no_code
                lines.append(f"{date(s.start)},{pid},{enc(s.encounter, '')},"
                             f"{Q[c.code]},{Q[c.display]},{_q(s.quantity)}\n")
        files["supplies.csv"].write("".join(lines))

    # ------------------------------------------------------------------ helpers
    def _patient_line(self, person: Person, end: float | None) -> str:
        demo = person.demographics

        def get(field: str) -> str:
            return _q(getattr(demo, field, None))

        def coordinate(field: str) -> str:
            v = getattr(demo, field, None)
            return "" if v is None else repr(float(v))

        death = person.death
        dead = death is not None and (end is None or death <= end)
        date = self._clock.date
        return ",".join([
            _q(person.id), date(person.birth), date(death) if dead else "",
            get("ssn"), get("drivers"), get("passport"), get("prefix"), get("first_name"),
            get("middle_name"), get("last_name"), get("suffix"), get("maiden_name"),
            get("marital_status"), get("race"), get("ethnicity"), _q(person.gender),
            get("birthplace"), get("address"), get("city"), get("state"), get("county"),
            get("fips"), get("zip"), coordinate("lat"), coordinate("lon"), "", "",
            get("income"),
        ]) + "\n"

    @staticmethod
    def _component_lines(lines: list[str], o: Observation, when: str, pid: str,
                         eid: str) -> None:
        # A MultiObservation without a value of its own: its components are the rows
        # (Synthea writes no row for the group itself).
        for part in o.components:
            if part.value is not None:
                c = part.codes[0] if part.codes else _NO_CODE
                value, kind = _observation_value(part.value)
                lines.append(f"{when},{pid},{eid},{_q(part.category)},{_q(c.code)},"
                             f"{_q(c.display)},{_q(value)},{_q(part.unit)},{kind}\n")
            elif part.components:
                CsvWriter._component_lines(lines, part, when, pid, eid)

    @staticmethod
    def _imaging_lines(lines: list[str], study: Any, index: int, seed: int, when: str,
                       pid: str, eid: str) -> None:
        q = _q
        sid = entry_id(seed, "imaging_study", index)
        proc = q(study.codes[0].code) if study.codes else ""
        for k, series in enumerate(study.series):
            series_uid = dicom_uid(seed, f"series:{index}", k)
            site = series.get("body_site") or _NO_CODE
            modality = series.get("modality") or _NO_CODE
            for j, inst in enumerate(series.get("instances") or ()):
                sop = inst.get("sop_class") or _NO_CODE
                instance_uid = dicom_uid(seed, f"instance:{index}:{k}", j)
                lines.append(f"{sid},{when},{pid},{eid},{series_uid},{q(site.code)},"
                             f"{q(site.display)},{q(modality.code)},{q(modality.display)},"
                             f"{instance_uid},{q(sop.code)},{q(sop.display)},{proc}\n")


class CsvSink:
    """The CSV output format: picklable, so the population runner can send it to workers.

    ``years_of_history`` (0 = everything) and ``end`` (clock value of the end of the run)
    decide what is written; see the module docstring.
    """

    name = "csv"

    def __init__(self, *, years_of_history: int = 0, end: float | None = None) -> None:
        if isinstance(years_of_history, bool) or not isinstance(years_of_history, int) \
                or years_of_history < 0:
            raise ConfigError(f"years_of_history must be 0 (all) or a positive whole number "
                              f"of years, got {years_of_history!r}")
        if end is not None and (isinstance(end, bool) or not isinstance(end, int | float)
                                or not math.isfinite(end)):
            raise ConfigError(f"end must be a finite clock value (days since 1970) or None, "
                              f"got {end!r}")
        self.years_of_history = years_of_history
        self.end = None if end is None else float(end)

    def __repr__(self) -> str:
        return f"CsvSink(years_of_history={self.years_of_history}, end={self.end})"

    def open(self, folder: Path) -> CsvWriter:
        """A writer on ``folder`` (which exists), with every file's header written."""
        return CsvWriter(folder, years_of_history=self.years_of_history, end=self.end)

    def merge(self, parts: list[Path], out: Path) -> None:
        """Concatenate each file over ``parts``, in order, into ``out/csv/<file>`` with one
        header. Each file is written under a temporary name in ``out/csv`` and moved into
        place only when every file is complete; on failure no temporary file is left."""
        dest = Path(out) / "csv"
        temps: dict[str, Path] = {}
        try:
            dest.mkdir(parents=True, exist_ok=True)
            for name in FILES:
                header = _header_line(name).encode("utf-8")
                tmp = temps[name] = dest / f".{name}.{os.getpid()}.tmp"
                with open(tmp, "wb") as w:
                    w.write(header)
                    for part in parts:
                        src = Path(part) / name
                        try:
                            r = open(src, "rb")  # noqa: SIM115
                        except FileNotFoundError:
                            raise OutputError(f"{src}: CSV part is missing; the partition "
                                              f"that should have written it did not finish"
                                              ) from None
                        with r:
                            if r.readline() != header:
                                raise OutputError(f"{src}: header is not the {name} header "
                                                  f"of this version; was the part written "
                                                  f"by another exporter?")
                            shutil.copyfileobj(r, w, 1 << 20)
            for name, tmp in temps.items():
                os.replace(tmp, dest / name)
            temps.clear()
        except OSError as exc:
            raise OutputError(f"{dest}: cannot write the CSV files ({exc.strerror or exc})"
                              ) from None
        finally:
            for tmp in temps.values():
                tmp.unlink(missing_ok=True)
