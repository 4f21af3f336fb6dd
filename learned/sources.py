"""One way of naming a data source, for every command that reads one.

A source is a built-in data set (``actg320``), an event table (``.csv``, ``.tsv``,
``.parquet``) with its baseline table, a baseline table alone (covariates only, e.g. the
baseline generator's samples), a folder of FHIR bundles or Bulk Data ndjson, or
carecourse's CSV output (a run's ``--out`` folder with ``csv/``, or that folder).

>>> read_source("actg320").kind
'dataset'
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd

from learned.datasets import DatasetInfo, dataset_names, get_dataset, load_dataset
from learned.events import EventData, make_event_data
from modules.errors import ConfigError, DataError, Problem

__all__ = ["TableOptions", "Source", "read_source", "read_baseline_table", "is_table"]

SourceKind = Literal["dataset", "table", "baseline", "fhir", "csv"]

_TABLE_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".tsv.gz", ".parquet", ".pq")


@dataclass(frozen=True)
class TableOptions:
    """How to read event tables (see :func:`learned.tables.read_event_tables`)."""

    columns: str | None = None  # "ROLE=COLUMN,..." as --columns takes it
    time_unit: str = "days"
    date_format: str | None = None
    categorical: tuple[str, ...] = ()
    initial_state: str | None = None

    def given(self) -> list[str]:
        """The command-line flags of the options that differ from their defaults."""
        return [flag for flag, on in (
            ("--columns", self.columns), ("--date-format", self.date_format),
            ("--categorical", self.categorical), ("--initial-state", self.initial_state),
            ("--time-unit", self.time_unit != "days")) if on]


@dataclass(frozen=True, eq=False)
class Source:
    """A data source that was read: its events, what kind of source it was, and for a
    built-in data set its description."""

    data: EventData
    kind: SourceKind
    info: DatasetInfo | None = None


def is_table(name: str | Path) -> bool:
    return Path(name).name.lower().endswith(_TABLE_SUFFIXES)


def read_source(name: str, *, baseline: Path | None = None,
                table: TableOptions | None = None, reference_date: dt.date | None = None,
                baseline_only: bool = False) -> Source:
    """Read the source ``name`` (see the module docstring).

    An event table needs ``baseline``; with ``baseline_only`` a table given without one is
    read as a baseline table (one row per patient, covariates only; a ``patient_id``
    column is used when present). ``table`` applies to tables, ``reference_date`` (the end
    of the living patients' follow-up) to FHIR and CSV output. Raises
    :class:`ConfigError` for a name that is none of these and :class:`DataError` for
    malformed data.
    """
    table = table or TableOptions()
    path = Path(name)
    if not is_table(path) and (baseline is not None or table.given()):
        flags = ", ".join((["--baseline"] if baseline is not None else []) + table.given())
        raise ConfigError(f"{flags} go(es) with an event table (.csv, .tsv, .parquet), not "
                          f"with {name}")
    if name in dataset_names():
        if reference_date is not None:
            raise ConfigError("--reference-date goes with FHIR data or carecourse CSV output, "
                              f"not with the built-in data set {name}")
        return Source(load_dataset(name), "dataset", get_dataset(name))
    if is_table(path):
        if reference_date is not None:
            raise ConfigError(f"{name}: --reference-date goes with FHIR data or carecourse "
                              "CSV output, not with tables")
        if baseline is None and baseline_only:
            return Source(read_baseline_table(path, table), "baseline")
        if baseline is None:
            raise ConfigError(f"{path}: an event table needs its baseline table; give "
                              "--baseline FILE (one row per patient: id and covariates)")
        from learned.tables import TableColumns, read_event_tables

        columns = TableColumns.parse(table.columns) if table.columns else None
        return Source(read_event_tables(path, baseline, columns=columns,
                                        time_unit=table.time_unit,
                                        date_format=table.date_format,
                                        categorical=table.categorical,
                                        initial_state=table.initial_state), "table")
    if path.is_dir():
        from learned.synthetic import csv_folder, read_carecourse_csv

        if csv_folder(path) is not None:
            return Source(read_carecourse_csv(path, reference_date=reference_date), "csv")
    if path.exists():
        from learned.fhir import read_fhir

        return Source(read_fhir(path, reference_date=reference_date), "fhir")
    raise ConfigError(f"{name!r} is neither a built-in data set ({', '.join(dataset_names())}) "
                      "nor an existing file or folder")


def read_baseline_table(path: Path, table: TableOptions) -> EventData:
    """A table of covariates alone (one row per patient, no events) as event data whose
    patients have no follow-up. Patients are its ``patient_id`` column (the ``--columns``
    role ``baseline_patient`` or ``patient`` names another), else its row numbers. Of
    ``table``, only ``columns`` and ``categorical`` apply (the rest is about events)."""
    from learned.tables import TableColumns, read_table

    frame, _ = read_table(path)
    cols = TableColumns.parse(table.columns) if table.columns else TableColumns()
    if cols.time in frame.columns and cols.code in frame.columns:
        raise ConfigError(f"{path}: has {cols.time!r} and {cols.code!r} columns, so it looks "
                          "like an event table; give its baseline table too")
    pid = cols.baseline_patient or cols.patient
    if pid in frame.columns:
        frame = frame.rename(columns={pid: "patient_id"})
    elif pid != "patient_id":
        raise DataError([Problem(str(path), "header", f"no column {pid!r} of patient ids")])
    else:
        frame.insert(0, "patient_id", [str(i + 1) for i in range(len(frame))])
    if not len(frame):
        raise DataError([Problem(str(path), "", "no rows; a baseline table needs one row per "
                                 "patient")])
    events = pd.DataFrame({"patient_id": [], "time": [], "code": []})
    return make_event_data(events, frame, name=path.stem, origin="none (covariates only)",
                           categorical=table.categorical, events_file=str(path),
                           baseline_file=str(path))
