"""carecourse's own CSV output (``carecourse run``, Synthea's CSV layout) in the common
event form, the same as :func:`learned.fhir.read_fhir` gives for the same patients' FHIR.

- ``patients.csv`` -> the baseline: ``age`` in years at the reference date (or at death,
  when earlier), ``gender`` (``male``/``female``, as FHIR writes it), ``race`` and
  ``ethnicity`` with the displays of the CDC Race & Ethnicity code set that US Core uses
  (what the FHIR exporter writes and the FHIR reader reads back). Time 0 is the birth
  date, so event times are ages in days; ``DEATHDATE`` -> a ``death`` state.
- ``conditions.csv`` -> a ``state`` event at START and an ``exit`` event at STOP, coded
  ``SYSTEM|CODE`` (``SNOMED-CT|44054006``).
- ``encounters.csv``, ``medications.csv``, ``observations.csv`` -> ``encounter``,
  ``medication`` and ``observation`` events. These files have no code-system column; the
  codes are taken as SNOMED CT, RxNorm and LOINC, the systems Synthea and carecourse use
  for them (an encounter without a code is coded by its class, as in FHIR). Observations
  of TYPE ``numeric`` carry their number in ``value``.

The CSV files hold dates for conditions and deaths and timestamps for the rest, so times
agree with the FHIR reader's to within a day. Only what the run exported is there: give
``carecourse run --years-of-history 0`` to keep whole histories.

>>> folder_is_carecourse_csv("no/such/folder")
False
"""

from __future__ import annotations

import datetime as dt
import math
from os import PathLike
from pathlib import Path

import numpy as np
import pandas as pd

from learned.events import PLACE, EventData, make_event_data
from modules.errors import ConfigError, DataError, Problem

__all__ = ["read_carecourse_csv", "folder_is_carecourse_csv", "csv_folder", "BIRTH_ORIGIN"]

#: The origin of event data read from carecourse output (the same words as the FHIR
#: reader's), by which re-timing knows that ``age`` is an age at the end of follow-up.
BIRTH_ORIGIN = "birth date (event times are ages in days)"

# CDC Race & Ethnicity code set (urn:oid:2.16.840.1.113883.6.238) displays for the values
# carecourse's demographics write, as US Core's race and ethnicity extensions carry them.
_RACE = {"white": "White", "black": "Black or African American", "asian": "Asian",
         "native": "American Indian or Alaska Native",
         "hawaiian": "Native Hawaiian or Other Pacific Islander", "other": "Other Race"}
_ETHNICITY = {"hispanic": "Hispanic or Latino", "nonhispanic": "Not Hispanic or Latino"}
_GENDER = {"M": "male", "F": "female"}

_DAY = 86400.0
_YEAR_DAYS = 365.25

# file -> (time column, kind, code system when the file has no SYSTEM column)
_POINT_FILES = {
    "encounters.csv": ("START", "encounter", "SNOMED-CT"),
    "medications.csv": ("START", "medication", "RxNorm"),
    "observations.csv": ("DATE", "observation", "LOINC"),
}


def csv_folder(path: str | PathLike[str]) -> Path | None:
    """The folder holding ``patients.csv`` at ``path`` or in its ``csv/`` subfolder (a
    run's ``--out``), or None."""
    p = Path(path)
    for candidate in (p, p / "csv"):
        if (candidate / "patients.csv").is_file():
            return candidate
    return None


def folder_is_carecourse_csv(path: str | PathLike[str]) -> bool:
    return Path(path).is_dir() and csv_folder(path) is not None


def read_carecourse_csv(path: str | PathLike[str], *, reference_date: dt.date | None = None,
                        name: str | None = None) -> EventData:
    """Read the CSV files of a ``carecourse run`` (its ``--out`` folder or the ``csv``
    folder in it) into the common event form; see the module docstring.
    ``reference_date`` ends the living patients' follow-up (default: the day after the
    latest date in the data). Malformed cells are reported at once in a
    :class:`DataError` naming file, line and column."""
    folder = csv_folder(path)
    if folder is None:
        raise ConfigError(f"{path}: no patients.csv here or in its csv/ folder; point at the "
                          "--out folder of a carecourse run with --format csv")
    problems: list[Problem] = []
    patients = _read(folder / "patients.csv", ["Id", "BIRTHDATE", "DEATHDATE", "RACE",
                                               "ETHNICITY", "GENDER"], problems)
    if patients is None:
        raise DataError(problems)
    birth = _seconds(patients, "BIRTHDATE", folder / "patients.csv", problems)
    death = _seconds(patients, "DEATHDATE", folder / "patients.csv", problems, blank=True)
    ids = patients["Id"].str.strip()

    frames = []
    cond = _read(folder / "conditions.csv", ["START", "STOP", "PATIENT", "SYSTEM", "CODE",
                                             "DESCRIPTION"], problems, optional=True)
    if cond is not None:
        code = cond["SYSTEM"].str.strip() + "|" + cond["CODE"].str.strip()
        code = code.where(cond["SYSTEM"].str.strip() != "", cond["CODE"].str.strip())
        start = _seconds(cond, "START", folder / "conditions.csv", problems)
        stop = _seconds(cond, "STOP", folder / "conditions.csv", problems, blank=True)
        frames.append(_frame(cond, start, code, "state"))
        ended = stop.notna()
        frames.append(_frame(cond[ended], stop[ended], code[ended], "exit"))
    for file, (column, kind, system) in _POINT_FILES.items():
        cols = ["PATIENT", column, "CODE", "DESCRIPTION"]
        cols += {"observation": ["VALUE", "TYPE"], "encounter": ["ENCOUNTERCLASS"]}.get(kind, [])
        table = _read(folder / file, cols, problems, optional=True)
        if table is None:
            continue
        when = _seconds(table, column, folder / file, problems)
        raw = table["CODE"].str.strip()
        code = system + "|" + raw
        if kind == "encounter":
            # An encounter without a code is typed by its class, as in FHIR.
            code = code.where(raw != "", table["ENCOUNTERCLASS"].str.strip())
        frame = _frame(table, when, code, kind)
        if kind == "encounter":
            frame["display"] = frame["display"].where(raw != "", code)
        if kind == "observation":
            numeric = table["TYPE"].str.strip() == "numeric"
            frame["value"] = pd.to_numeric(table["VALUE"].where(numeric), errors="coerce")
        frames.append(frame[(code != "").to_numpy()])
    if problems:
        raise DataError(problems)
    if not len(patients):
        raise DataError([Problem(str(folder / "patients.csv"), "", "no patients; the events "
                                 "need the patients they are about")])

    dead = death.notna()
    frames.append(pd.DataFrame({
        "patient_id": ids[dead].to_numpy(), "seconds": death[dead].to_numpy(), "code": "death",
        "kind": "state", "value": math.nan, "display": "Death",
        PLACE: patients.loc[dead, PLACE].to_numpy(),
    }))
    events = pd.concat(frames, ignore_index=True)
    if reference_date is not None:
        ref = float((reference_date - dt.date(1970, 1, 1)).days) * _DAY
    else:
        latest = np.nanmax(np.concatenate([events["seconds"].to_numpy(dtype=float),
                                           birth.to_numpy(dtype=float)]))
        ref = math.floor(latest / _DAY + 1) * _DAY  # the next midnight
    births = pd.Series(birth.to_numpy(), index=ids.to_numpy())
    end_s = pd.Series(np.fmin(ref, death.fillna(np.inf).to_numpy()), index=ids.to_numpy())
    ends = end_s.reindex(events["patient_id"]).to_numpy()
    # Events of patients missing from patients.csv are kept so that make_event_data names
    # them; events after the reference date are left out, as the FHIR reader does.
    late = events["seconds"].to_numpy() > ends
    events = events[~late].copy()
    events["time"] = (events["seconds"] - births.reindex(events["patient_id"]).fillna(0.0)
                      .to_numpy()) / _DAY
    events = events.drop(columns="seconds")
    baseline = pd.DataFrame({
        "patient_id": ids.to_numpy(),
        "age": ((end_s - births) / (_YEAR_DAYS * _DAY)).to_numpy(),
        "gender": pd.Categorical(patients["GENDER"].str.strip().map(
            lambda g: _GENDER.get(g, g.lower() or "unknown"))),
        "race": pd.Categorical(patients["RACE"].str.strip().map(
            lambda r: _RACE.get(r, r or "unknown"))),
        "ethnicity": pd.Categorical(patients["ETHNICITY"].str.strip().map(
            lambda e: _ETHNICITY.get(e, e or "unknown"))),
    })
    end = pd.Series(((end_s - births) / _DAY).to_numpy(), index=ids.to_numpy())
    ref_date = dt.datetime.fromtimestamp(ref, dt.UTC).date()
    notes = [f"reference date {ref_date.isoformat()}"
             + (" (the day after the latest date in the data)" if reference_date is None
                else "")]
    if late.any():
        notes.append(f"left out: {int(late.sum())} event(s) after the reference date")
    return make_event_data(events, baseline, name=name or Path(path).name, origin=BIRTH_ORIGIN,
                           end=end, events_file=str(folder),
                           baseline_file=str(folder / "patients.csv"), notes=notes)


def _read(path: Path, columns: list[str], problems: list[Problem], *,
          optional: bool = False) -> pd.DataFrame | None:
    if not path.is_file():
        if not optional:
            problems.append(Problem(str(path), "", "missing; a carecourse CSV folder has it"))
        return None
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False,
                            usecols=lambda c: c in columns)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError, ValueError) as exc:
        problems.append(Problem(str(path), "", f"not readable as CSV: {exc}"))
        return None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        problems.append(Problem(str(path), "header", f"missing column(s) {', '.join(missing)}; "
                                "is this the output of carecourse run --format csv?"))
        return None
    frame[PLACE] = [f"{path.name}: line {i + 2}" for i in range(len(frame))]
    return frame


def _seconds(frame: pd.DataFrame, column: str, path: Path, problems: list[Problem], *,
             blank: bool = False) -> pd.Series:
    """Seconds since 1970 (UTC) of a column of ISO dates or timestamps; NaN for empty
    cells when ``blank``, and a problem for every other cell that is not a date."""
    text = frame[column].str.strip()
    stamps = pd.to_datetime(text.where(text != ""), format="ISO8601", utc=True,
                            errors="coerce")
    seconds = (stamps - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
    bad = seconds.isna() & ((text != "") | (not blank))
    for i in np.flatnonzero(bad.to_numpy())[:50]:
        problems.append(Problem(str(path), f"line {i + 2}, column {column!r}",
                                f"{text.iloc[i]!r} is not a date (YYYY-MM-DD) or an ISO 8601 "
                                "timestamp"))
    return seconds.reset_index(drop=True)


def _frame(table: pd.DataFrame, seconds: pd.Series, code: pd.Series, kind: str
           ) -> pd.DataFrame:
    return pd.DataFrame({
        "patient_id": table["PATIENT"].str.strip().to_numpy(),
        "seconds": seconds.to_numpy(dtype=float), "code": code.to_numpy(), "kind": kind,
        "value": math.nan, "display": table["DESCRIPTION"].to_numpy(),
        PLACE: table[PLACE].to_numpy(),
    })
