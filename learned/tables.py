"""Event tables in CSV or Parquet: an event table and a baseline-covariate table.

The event table has one row per event: a patient id, a time, and a state or event code
(optionally a kind, a numeric value and a display text). Times are either numbers (in
``time_unit`` since each patient's origin) or dates (ISO 8601, or ``date_format``); dates
become days since the patient's origin: the date in the baseline table's origin column
when it has one, else the patient's first event. The baseline table has one row per
patient: its id, the covariates, and optionally the origin and the end of follow-up.

Column names are the user's (:class:`TableColumns`); every malformed cell is reported at
once, with the file, the line (CSV; the header is line 1) or row (Parquet) and the column.

>>> import pathlib, tempfile
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "ev.csv").write_text("pid,date,event\\n1,2020-01-01,ill\\n1,2020-01-31,dead\\n")
>>> _ = (d / "base.csv").write_text("pid,age,sex\\n1,61,F\\n")
>>> data = read_event_tables(d / "ev.csv", d / "base.csv",
...                          columns=TableColumns(patient="pid", time="date", code="event"))
>>> data.events[["patient_id", "time", "code"]].values.tolist()
[['1', 0.0, 'ill'], ['1', 30.0, 'dead']]
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from os import PathLike
from pathlib import Path

import numpy as np
import pandas as pd

from learned.events import PLACE, TIME_UNITS, EventData, as_text, make_event_data
from modules.errors import ConfigError, DataError, Problem

__all__ = ["TableColumns", "read_event_tables", "read_table"]

_DEFAULTS = {"kind": "kind", "value": "value", "display": "display", "origin": "origin",
             "end": "end"}


@dataclass(frozen=True)
class TableColumns:
    """The column names of an event table and its baseline table.

    ``kind``, ``value``, ``display`` (event table), ``origin`` and ``end`` (baseline) are
    optional: under their default names they are used when the file has them; a name set
    to something else must be there. ``origin`` is the date that time 0 is, for tables with
    dates; ``end`` is the end of follow-up (a date, or a number in the time unit).
    """

    patient: str = "patient_id"
    time: str = "time"
    code: str = "code"
    kind: str = "kind"
    value: str = "value"
    display: str = "display"
    baseline_patient: str | None = None  # default: the same as ``patient``
    origin: str = "origin"
    end: str = "end"

    @classmethod
    def parse(cls, text: str) -> TableColumns:
        """``"patient=pid,time=date"`` -> TableColumns(patient="pid", time="date")."""
        known = {f.name for f in fields(cls)}
        kw: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, sep, value = part.partition("=")
            if not sep or key.strip() not in known or not value.strip():
                raise ConfigError(f"--columns {text!r}: write ROLE=COLUMN pairs separated by "
                                  f"commas; roles: {', '.join(sorted(known))}")
            kw[key.strip()] = value.strip()
        return cls(**kw)


def read_table(path: str | PathLike[str]) -> tuple[pd.DataFrame, str]:
    """Read a CSV (``.csv``, ``.tsv``, optionally ``.gz``) or Parquet file with every
    column as read (CSV: text). Adds a ``_place`` column ("line 7" / "row 6") and returns
    it with the word used for places."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such file")
    name = p.name.lower()
    try:
        if name.endswith((".parquet", ".pq")):
            try:
                frame = pd.read_parquet(p)
            except ImportError:
                raise ConfigError(f"{p}: reading Parquet needs pyarrow; "
                                  "pip install 'carecourse[learn]'") from None
            frame = frame.reset_index(drop=frame.index.name is None)
            frame[PLACE] = [f"row {i + 1}" for i in range(len(frame))]
            return frame, "row"
        if name.endswith((".csv", ".csv.gz", ".tsv", ".tsv.gz", ".txt")):
            sep = "\t" if ".tsv" in name else ","
            frame = pd.read_csv(p, sep=sep, dtype=str, keep_default_na=False,
                                skipinitialspace=True)
            if not isinstance(frame.index, pd.RangeIndex):
                # pandas takes the first column as an index when the first record has one
                # field more than the header: never what an event table means.
                raise DataError([Problem(str(p), "line 2", f"{len(frame.columns) + 1} fields "
                                         f"but the header names {len(frame.columns)} columns; "
                                         "remove the extra field (a trailing comma?)")])
            frame.columns = [str(c).strip() for c in frame.columns]
            # Line numbers assume one line per record (no line breaks inside quotes).
            frame[PLACE] = [f"line {i + 2}" for i in range(len(frame))]
            return frame, "line"
    except pd.errors.EmptyDataError:
        raise DataError([Problem(str(p), "", "the file is empty; it needs a header row "
                                 "naming its columns")]) from None
    except pd.errors.ParserError as exc:
        raise DataError([Problem(str(p), "", f"not readable as CSV: {exc}")]) from None
    except (OSError, ValueError) as exc:  # pyarrow's errors derive from these
        raise DataError([Problem(str(p), "", f"not readable: {exc}")]) from None
    raise ConfigError(f"{p}: unknown table format; use .csv, .tsv or .parquet")


def read_event_tables(
    events: str | PathLike[str],
    baseline: str | PathLike[str],
    *,
    columns: TableColumns | None = None,
    time_unit: str = "days",
    date_format: str | None = None,
    categorical: tuple[str, ...] = (),
    initial_state: str | None = None,
    name: str | None = None,
) -> EventData:
    """Read an event table and its baseline table into the common event form.

    Times that are numbers are in ``time_unit`` (days, weeks, months, years) since each
    patient's origin; dates are parsed as ISO 8601 (or with ``date_format``, a strftime
    pattern) and become days since the origin. Baseline columns other than the patient,
    origin and end are covariates: numeric when every cell is a number, else categorical
    (or categorical when named in ``categorical``). Raises :class:`DataError` listing every
    malformed cell with its file, line and column.
    """
    cols = columns or TableColumns()
    if time_unit not in TIME_UNITS:
        raise ConfigError(f"unknown time unit {time_unit!r}; use {', '.join(TIME_UNITS)}")
    ev_file, base_file = str(events), str(baseline)
    ev_raw, _ = read_table(events)
    base_raw, _ = read_table(baseline)
    bpid = cols.baseline_patient or cols.patient
    problems: list[Problem] = []
    _need(ev_raw, ev_file, [cols.patient, cols.time, cols.code],
          [(role, getattr(cols, role)) for role in ("kind", "value", "display")], problems)
    _need(base_raw, base_file, [bpid],
          [(role, getattr(cols, role)) for role in ("origin", "end")], problems)
    if problems:
        raise DataError(problems)

    ev = pd.DataFrame({"patient_id": ev_raw[cols.patient], "code": ev_raw[cols.code],
                       PLACE: ev_raw[PLACE]})
    for role in ("kind", "value", "display"):
        if getattr(cols, role) in ev_raw.columns:
            ev[role] = ev_raw[getattr(cols, role)]
    base_pid = as_text(base_raw[bpid])
    ev_pid = as_text(ev_raw[cols.patient])

    times, is_date = _times(ev_raw, cols.time, ev_file, date_format, problems)
    has_origin = cols.origin in base_raw.columns
    has_end = cols.end in base_raw.columns
    if has_origin and not is_date:
        problems.append(Problem(base_file, f"column {cols.origin!r}", "an origin date is only "
                                "used with dated events, but the event times are numbers"))
    end = None
    origin_text = f"the time in column {cols.time!r} of {ev_file} (in {time_unit})"
    if is_date:
        if has_origin:
            odates, _ = _times(base_raw, cols.origin, base_file, date_format, problems,
                               want_dates=True)
            origin = pd.Series(odates.to_numpy(), index=base_pid.to_numpy())
            origin = origin[~origin.index.duplicated()]
            # Patients missing from the baseline are reported as such by make_event_data;
            # their first event stands in as origin so that their times are not blamed.
            first = times.groupby(ev_pid.to_numpy()).min()
            origin = pd.concat([origin, first[~first.index.isin(origin.index)]])
            origin_text = f"the date in column {cols.origin!r} of {base_file}"
        else:
            origin = times.groupby(ev_pid.to_numpy()).min()
            origin_text = "each patient's first event date"
        ev["time"] = (times.to_numpy() - origin.reindex(ev_pid).to_numpy()) / 86400.0
        if has_end:
            ends, end_is_date = _times(base_raw, cols.end, base_file, date_format, problems,
                                       allow_blank=True)
            if not end_is_date and ends.notna().any():
                problems.append(Problem(base_file, f"column {cols.end!r}", "the event times "
                                        "are dates, so the end of follow-up must be dates too"))
            end = pd.Series((ends.to_numpy() - origin.reindex(base_pid).to_numpy()) / 86400.0,
                            index=base_pid.to_numpy())
    else:
        ev["time"] = times.to_numpy() * TIME_UNITS[time_unit]
        if has_end:
            ends, end_is_date = _times(base_raw, cols.end, base_file, date_format, problems,
                                       want_numbers=True, allow_blank=True)
            end = pd.Series(ends.to_numpy() * TIME_UNITS[time_unit], index=base_pid.to_numpy())
    if problems:
        # Cells already reported stand in as 0 so that make_event_data reports the other
        # problems (duplicate patients, unknown kinds...) without repeating these.
        ev["time"] = ev["time"].fillna(0.0)
        end = None
    if end is not None:
        end = end[~end.index.duplicated()]

    base = base_raw.drop(columns=[c for c in (cols.origin, cols.end)
                                  if c in base_raw.columns])
    base = base.rename(columns={bpid: "patient_id"})
    return make_event_data(ev, base, name=name or Path(ev_file).stem, origin=origin_text,
                           end=end, initial_state=initial_state, categorical=categorical,
                           events_file=ev_file, baseline_file=base_file, problems=problems,
                           column_names={"patient_id": cols.patient, "time": cols.time,
                                         "code": cols.code, "kind": cols.kind,
                                         "value": cols.value, "display": cols.display,
                                         "baseline_patient_id": bpid})


def _need(frame: pd.DataFrame, file: str, required: list[str],
          optional: list[tuple[str, str]], problems: list[Problem]) -> None:
    have = [c for c in frame.columns if c != PLACE]
    missing = [c for c in required if c not in frame.columns]
    missing += [c for role, c in optional if c != _DEFAULTS[role] and c not in frame.columns]
    if missing:
        problems.append(Problem(file, "header", f"missing column(s) "
                                f"{', '.join(map(repr, missing))}; the file has "
                                f"{', '.join(map(repr, have)) or 'no columns'} (name the "
                                "columns with --columns ROLE=COLUMN)"))


def _times(frame: pd.DataFrame, column: str, file: str, date_format: str | None,
           problems: list[Problem], *, want_dates: bool = False, want_numbers: bool = False,
           allow_blank: bool = False) -> tuple[pd.Series, bool]:
    """Parse a column of times: numbers, or dates as seconds since 1970 (UTC). The column
    is dates when it has more date-like than number-like cells (or ``want_dates``); each
    cell that is not of that type is a problem, except empty cells when ``allow_blank``
    (they stay NaN)."""
    raw = frame[column]
    places = frame[PLACE].tolist()
    if pd.api.types.is_datetime64_any_dtype(raw.dtype):  # Parquet timestamps or dates
        seconds = pd.Series(_seconds(pd.to_datetime(raw, utc=True)).to_numpy())
        return _report(seconds, raw, places, file, column, "date", problems,
                       allow_blank), True
    if pd.api.types.is_numeric_dtype(raw.dtype) and not want_dates:
        return _report(raw.astype(float).reset_index(drop=True), raw, places, file, column,
                       "number", problems, allow_blank), False
    text = raw.astype(str).str.strip().where(raw.notna(), "").reset_index(drop=True)
    numbers = pd.to_numeric(text.where(text != ""), errors="coerce")
    fmt = date_format or "ISO8601"
    try:
        stamps = pd.to_datetime(text.where(text != ""), format=fmt, utc=True, errors="coerce")
    except ValueError as exc:  # a malformed --date-format
        raise ConfigError(f"--date-format {date_format!r}: {exc}") from None
    dates = _seconds(stamps)
    n_num, n_date = int(numbers.notna().sum()), int(dates.notna().sum())
    is_date = want_dates or (not want_numbers and n_date > n_num)
    if is_date:
        return _report(dates, raw, places, file, column, "date", problems, allow_blank), True
    return _report(numbers.astype(float), raw, places, file, column, "number", problems,
                   allow_blank), False


def _seconds(stamps: pd.Series) -> pd.Series:
    """Seconds since 1970 (UTC) of timezone-aware timestamps, whatever their resolution;
    NaN for NaT."""
    return (stamps - pd.Timestamp(0, tz="UTC")).dt.total_seconds()


def _report(parsed: pd.Series, raw: pd.Series, places: list[str], file: str, column: str,
            what: str, problems: list[Problem], allow_blank: bool = False) -> pd.Series:
    hint = ("a date such as 2021-03-04 (or give --date-format)" if what == "date"
            else "a number")
    values = raw.tolist()
    for i in np.flatnonzero(~np.isfinite(parsed.to_numpy(dtype=float))):
        shown = values[i]
        blank = shown is None or str(shown).strip() in ("", "nan", "NaT", "None", "<NA>")
        if blank and allow_blank:
            continue
        cell = "empty" if blank else repr(shown)
        problems.append(Problem(file, f"{places[i]}, column {column!r}",
                                f"time {cell} is not {hint}"))
    return parsed
