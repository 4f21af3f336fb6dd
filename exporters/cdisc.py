"""CDISC-shaped trial datasets of a cohort: ADaM ADSL (one row per subject), ADTTE
(time-to-event endpoints) and ADEFF (binary and observation endpoints, BDS), and SDTM DM,
each as CSV and as SAS transport version 5 (``.xpt``), the format FDA's Study Data
Technical Conformance Guide requires for submissions.

Variable names and labels follow the CDISC ADaM Implementation Guide v1.3 and SDTM
Implementation Guide v3.4 (``STUDYID``, ``USUBJID``, ``TRT01P``, ``ITTFL``, ``PARAMCD``,
``AVAL``, ``CNSR`` with 0 for an event and 1 for censoring, ``STARTDT``, ``ADT``...).
Dates are ISO 8601 text in CSV and in SDTM (``--DTC``), SAS dates (days since 1960-01-01,
format DATE9.) in the ADaM ``.xpt`` files. Baseline covariates are added to ADSL under
SAS names of at most 8 characters, labelled with the source column's name; ``SYNFL``
marks every subject as synthetic. The transport files are written by pyreadstat
(ReadStat), and the tests read them back with pandas' own reader.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from modules.errors import ConfigError, OutputError
from simulator.cohort import Subject
from simulator.protocol import Protocol

__all__ = ["Dataset", "adsl", "adtte", "adeff", "dm", "covariate_names", "write_dataset",
           "DATASET_FILES"]

_SAS_EPOCH = dt.date(1960, 1, 1)

#: Standard variable labels (ADaMIG v1.3, SDTMIG v3.4); all at most 40 characters.
LABELS: dict[str, str] = {
    "STUDYID": "Study Identifier",
    "DOMAIN": "Domain Abbreviation",
    "USUBJID": "Unique Subject Identifier",
    "SUBJID": "Subject Identifier for the Study",
    "SITEID": "Study Site Identifier",
    "RFSTDTC": "Subject Reference Start Date/Time",
    "RFENDTC": "Subject Reference End Date/Time",
    "RFPENDTC": "Date/Time of End of Participation",
    "DTHDTC": "Date/Time of Death",
    "DTHFL": "Subject Death Flag",
    "BRTHDTC": "Date/Time of Birth",
    "AGE": "Age",
    "AGEU": "Age Units",
    "SEX": "Sex",
    "RACE": "Race",
    "ETHNIC": "Ethnicity",
    "ARMCD": "Planned Arm Code",
    "ARM": "Description of Planned Arm",
    "ACTARMCD": "Actual Arm Code",
    "ACTARM": "Description of Actual Arm",
    "COUNTRY": "Country",
    "TRT01P": "Planned Treatment for Period 01",
    "TRT01A": "Actual Treatment for Period 01",
    "ITTFL": "Intent-To-Treat Population Flag",
    "SAFFL": "Safety Population Flag",
    "SYNFL": "Synthetic Subject Flag",
    "RANDDT": "Date of Randomization",
    "TRTSDT": "Date of First Exposure to Treatment",
    "EOSSTT": "End of Study Status",
    "EOSDT": "End of Study Date",
    "DCSREAS": "Reason for Discontinuation from Study",
    "DTHDT": "Date of Death",
    "LSTALVDT": "Date Last Known Alive",
    "PARAMCD": "Parameter Code",
    "PARAM": "Parameter",
    "AVAL": "Analysis Value",
    "AVALC": "Analysis Value (C)",
    "STARTDT": "Time-to-Event Origin Date for Subject",
    "ADT": "Analysis Date",
    "ADY": "Analysis Relative Day",
    "CNSR": "Censor",
    "EVNTDESC": "Event or Censoring Description",
    "CNSDTDSC": "Censor Date Description",
    "AVISIT": "Analysis Visit",
    "AVISITN": "Analysis Visit (N)",
}
_DATES = ("RANDDT", "TRTSDT", "EOSDT", "DTHDT", "LSTALVDT", "STARTDT", "ADT")
_STATUS = {"completed": ("COMPLETED", ""), "death": ("DISCONTINUED", "DEATH"),
           "lost to follow-up": ("DISCONTINUED", "LOST TO FOLLOW-UP"),
           "data cut-off": ("ONGOING", "")}

#: dataset -> (file stem, SAS member name, label)
DATASET_FILES = {"adsl": ("adsl", "ADSL", "Subject-Level Analysis Dataset"),
                 "adtte": ("adtte", "ADTTE", "Time-to-Event Analysis Dataset"),
                 "adeff": ("adeff", "ADEFF", "Efficacy Analysis Dataset"),
                 "dm": ("dm", "DM", "Demographics")}


@dataclass(frozen=True)
class Dataset:
    """A dataset ready to write: the frame, its member name and label, and labels."""

    name: str
    label: str
    frame: pd.DataFrame
    labels: Mapping[str, str]


def _usubjid(protocol: Protocol, s: Subject) -> str:
    return f"{protocol.study_id}-{s.number + 1:05d}"


def _iso(d: dt.date | None) -> str:
    return d.isoformat() if d is not None else ""


def covariate_names(columns: Iterable[str], taken: Iterable[str] = LABELS) -> dict[str, str]:
    """SAS names (capitals, digits and _, at most 8 characters, unique, not a standard
    variable) for the baseline columns, in order.

    >>> covariate_names(["age", "cd4", "prior zdv months", "prior zdv days", "SEX"])
    {'age': 'BL_AGE', 'cd4': 'CD4', 'prior zdv months': 'PRIOR_ZD', 'prior zdv days': 'PRIOR_Z1', 'SEX': 'BL_SEX'}
    """
    standard = set(taken)
    used = set(standard)
    out: dict[str, str] = {}
    for col in columns:
        base = re.sub(r"[^A-Z0-9_]", "_", str(col).upper()) or "X"
        if base[0].isdigit():
            base = f"_{base}"
        if base[:8] in standard:  # a covariate named like a standard variable (age, sex)
            base = f"BL_{base}"
        name = base[:8]
        k = 1
        while name in used:
            suffix = str(k)
            name = base[: 8 - len(suffix)] + suffix
            k += 1
        used.add(name)
        out[str(col)] = name
    return out


def _covariate_value(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    return str(v)


def adsl(protocol: Protocol, subjects: Sequence[Subject],
         covariates: Sequence[str] = ()) -> Dataset:
    """ADSL: one row per enrolled subject, with the baseline covariates ``covariates``."""
    names = covariate_names(covariates)
    rows = []
    arm = protocol.arm
    for s in subjects:
        status, reason = _STATUS[s.end_reason]
        row: dict[str, Any] = {
            "STUDYID": protocol.study_id, "USUBJID": _usubjid(protocol, s),
            "SUBJID": f"{s.number + 1:05d}", "SITEID": "SYN", "AGE": float(math.floor(s.age)),
            "AGEU": "YEARS", "SEX": s.sex, "RACE": s.race, "ETHNIC": s.ethnicity,
            "ARM": arm.name, "ARMCD": arm.code, "ACTARM": arm.name, "ACTARMCD": arm.code,
            "TRT01P": arm.name, "TRT01A": arm.name, "ITTFL": "Y", "SAFFL": "Y", "SYNFL": "Y",
            "RANDDT": s.index_date, "TRTSDT": s.index_date, "EOSSTT": status,
            "EOSDT": s.end_date if status != "ONGOING" else None, "DCSREAS": reason,
            "DTHFL": "Y" if s.death_time is not None else "", "DTHDT": s.death_date,
            "LSTALVDT": s.death_date or s.end_date,
        }
        for col, name in names.items():
            row[name] = _covariate_value(s.covariates.get(col))
        rows.append(row)
    labels = {k: LABELS[k] for k in rows[0] if k in LABELS} if rows else {}
    labels.update({name: f"Baseline {col}"[:40] for col, name in names.items()})
    return Dataset("ADSL", DATASET_FILES["adsl"][2], _frame(rows, labels), labels)


def _frame(rows: list[dict[str, Any]], labels: Mapping[str, str]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(labels) if not rows else None)
    return frame


def _common(protocol: Protocol, s: Subject) -> dict[str, Any]:
    return {"STUDYID": protocol.study_id, "USUBJID": _usubjid(protocol, s),
            "AGE": float(math.floor(s.age)), "SEX": s.sex, "RACE": s.race,
            "TRT01P": protocol.arm.name, "TRT01A": protocol.arm.name, "ITTFL": "Y"}


def _param(e: Any) -> str:
    unit = " (days)" if e.kind == "time_to_event" else (f" ({e.unit})" if e.unit else "")
    return (e.name + unit)[:200]


def adtte(protocol: Protocol, subjects: Sequence[Subject]) -> Dataset:
    """ADTTE: one row per subject and time-to-event endpoint. AVAL is the time from
    time zero (STARTDT) in days, to the event (CNSR 0) or to censoring (CNSR 1)."""
    rows = []
    for e in protocol.endpoints:
        if e.kind != "time_to_event":
            continue
        for s in subjects:
            v = s.endpoints[e.paramcd]
            assert v.value is not None
            adt = (dt.datetime.combine(s.index_date, dt.time())
                   + dt.timedelta(days=v.value)).date()
            rows.append({**_common(protocol, s), "PARAMCD": e.paramcd, "PARAM": _param(e),
                         "AVAL": round(v.value, 4), "STARTDT": s.index_date, "ADT": adt,
                         "CNSR": 1.0 if v.censored else 0.0,
                         "EVNTDESC": v.description, "CNSDTDSC": v.description
                         if v.censored else ""})
    labels = {k: LABELS[k] for k in (rows[0] if rows else
                                     ["STUDYID", "USUBJID", "PARAMCD", "AVAL", "CNSR"])}
    return Dataset("ADTTE", DATASET_FILES["adtte"][2], _frame(rows, labels), labels)


def adeff(protocol: Protocol, subjects: Sequence[Subject]) -> Dataset | None:
    """ADEFF (BDS): binary outcomes (AVAL 1/0, AVALC Y/N) and observation values at
    their analysis day; None when the protocol has no such endpoint."""
    rows = []
    for e in protocol.endpoints:
        if e.kind == "time_to_event":
            continue
        assert e.at_days is not None
        for s in subjects:
            v = s.endpoints[e.paramcd]
            avalc = "" if v.value is None or e.kind != "binary" else \
                ("Y" if v.value == 1.0 else "N")
            day = round(e.at_days, 4)
            rows.append({**_common(protocol, s), "PARAMCD": e.paramcd, "PARAM": _param(e),
                         "AVAL": v.value, "AVALC": avalc, "ADY": day,
                         "AVISIT": f"DAY {day:g}", "AVISITN": day,
                         "EVNTDESC": v.description})
    if not rows:
        return None
    labels = {k: LABELS[k] for k in rows[0]}
    return Dataset("ADEFF", DATASET_FILES["adeff"][2], _frame(rows, labels), labels)


def dm(protocol: Protocol, subjects: Sequence[Subject]) -> Dataset:
    """SDTM DM: demographics, dates as ISO 8601 text."""
    rows = []
    arm = protocol.arm
    for s in subjects:
        rows.append({
            "STUDYID": protocol.study_id, "DOMAIN": "DM", "USUBJID": _usubjid(protocol, s),
            "SUBJID": f"{s.number + 1:05d}", "RFSTDTC": _iso(s.index_date),
            "RFENDTC": _iso(s.end_date), "RFPENDTC": _iso(s.end_date),
            "DTHDTC": _iso(s.death_date), "DTHFL": "Y" if s.death_time is not None else "",
            "SITEID": "SYN", "AGE": float(math.floor(s.age)), "AGEU": "YEARS", "SEX": s.sex,
            "RACE": s.race, "ETHNIC": s.ethnicity, "ARMCD": arm.code, "ARM": arm.name,
            "ACTARMCD": arm.code, "ACTARM": arm.name, "COUNTRY": "USA"})
    labels = {k: LABELS[k] for k in (rows[0] if rows else ["STUDYID", "DOMAIN", "USUBJID"])}
    return Dataset("DM", DATASET_FILES["dm"][2], _frame(rows, labels), labels)


def _sas_dates(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """Date columns as SAS dates (days since 1960-01-01) with format DATE9."""
    out = frame.copy()
    formats = {}
    for col in out.columns:
        if col in _DATES:
            out[col] = [float((d - _SAS_EPOCH).days) if isinstance(d, dt.date) else math.nan
                        for d in out[col]]
            formats[col] = "DATE9"
    return out, formats


def _csv_frame(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    for col in out.columns:
        if col in _DATES:
            out[col] = [d.isoformat() if isinstance(d, dt.date) else "" for d in out[col]]
    return out


def _check_xpt(ds: Dataset) -> None:
    """SAS transport v5 limits: names of at most 8 characters, labels of 40, text values
    of 200 bytes."""
    for col in ds.frame.columns:
        if len(col) > 8:
            raise ConfigError(f"{ds.name}: variable name {col!r} is longer than the 8 "
                              "characters SAS transport v5 allows")
        if len(ds.labels.get(col, "")) > 40:
            raise ConfigError(f"{ds.name}: label of {col} is longer than 40 characters")
        if ds.frame[col].dtype == object:
            longest = max((len(str(v).encode()) for v in ds.frame[col] if v is not None),
                          default=0)
            if longest > 200:
                raise ConfigError(f"{ds.name}: a value of {col} is longer than the 200 bytes "
                                  "SAS transport v5 allows; shorten it in the protocol")


def write_dataset(ds: Dataset, folder: Path, stem: str) -> list[Path]:
    """Write ``stem.csv`` and ``stem.xpt`` (SAS transport v5) into ``folder``, each
    through a temporary name. Raises ConfigError when pyreadstat is missing."""
    try:
        import pyreadstat
    except ImportError:
        raise ConfigError("writing SAS transport files needs pyreadstat; pip install "
                          "'carecourse[trial]'") from None
    _check_xpt(ds)
    csv_path = folder / f"{stem}.csv"
    xpt_path = folder / f"{stem}.xpt"
    tmp_csv = folder / f".{stem}.csv.tmp"
    tmp_xpt = folder / f".{stem}.xpt.tmp"
    try:
        _csv_frame(ds.frame).to_csv(tmp_csv, index=False)
        sas, formats = _sas_dates(ds.frame)
        for col in sas.columns:
            if sas[col].dtype == object:
                sas[col] = ["" if v is None else str(v) for v in sas[col]]
        pyreadstat.write_xport(sas, str(tmp_xpt), file_label=ds.label,
                               column_labels=[ds.labels.get(c, "") for c in sas.columns],
                               table_name=ds.name, file_format_version=5,
                               variable_format=formats)
        os.replace(tmp_csv, csv_path)
        os.replace(tmp_xpt, xpt_path)
    except OSError as exc:
        raise OutputError(f"{folder}: cannot write {stem} ({exc.strerror})") from None
    finally:
        for t in (tmp_csv, tmp_xpt):
            t.unlink(missing_ok=True)
    return [csv_path, xpt_path]
