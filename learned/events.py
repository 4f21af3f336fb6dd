"""The common event form that every data adapter produces and every learner reads.

An :class:`EventData` holds three tables about the same patients:

- ``events``: one row per event, sorted by patient and time, with the columns
  ``patient_id`` (str), ``time`` (float, days since the patient's origin), ``code`` (str),
  ``kind`` (one of :data:`KINDS`), ``value`` (float, NaN when the event has none) and
  ``display`` (str, may be empty);
- ``baseline``: one row per patient, indexed by ``patient_id``, with the covariates known at
  the origin; each column is either numeric (float64) or categorical (pandas ``category``
  of strings);
- ``end``: each patient's end of follow-up in days since the origin (the time after which
  nothing more is known of the patient's states: censoring or death).

What time 0 is (randomization, diagnosis, birth, a date column) is said in ``origin``.
State events describe one patient's path through states (``initial_state`` is where every
patient starts when the data set has such a state, e.g. "randomized"); the other kinds are
point events and measurements.

>>> import pandas as pd
>>> ev = pd.DataFrame({"patient_id": ["a", "a", "b"], "time": [0.0, 30.0, 12.0],
...                    "code": ["ill", "dead", "dead"]})
>>> base = pd.DataFrame({"patient_id": ["a", "b"], "age": [61, 70], "sex": ["F", "M"]})
>>> data = make_event_data(ev, base, name="toy", origin="diagnosis", initial_state="well")
>>> data.patients, len(data.events), data.covariate_kinds()
(2, 3, {'age': 'numeric', 'sex': 'categorical'})
>>> sorted(data.transition_counts().items())
[(('ill', 'dead'), 1), (('well', 'dead'), 1), (('well', 'ill'), 1)]
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from modules.errors import DataError, Problem

__all__ = [
    "KINDS",
    "EVENT_COLUMNS",
    "TIME_UNITS",
    "PlaceFn",
    "EventData",
    "DataSummary",
    "make_event_data",
    "covariate_kind",
    "as_text",
]

#: What an event is. ``state``: the patient enters the state ``code`` (an endpoint, death, a
#: condition's onset) and stays in it until the next state; ``exit``: the patient leaves
#: the state ``code`` (a condition's abatement); ``encounter``, ``medication``: point events;
#: ``observation``: a measurement whose number is in ``value``; ``event``: any other point
#: event.
KINDS: tuple[str, ...] = ("state", "exit", "encounter", "medication", "observation", "event")

#: Columns of :attr:`EventData.events`, in order.
EVENT_COLUMNS: tuple[str, ...] = ("patient_id", "time", "code", "kind", "value", "display")

#: Days in one unit of time, for tables whose times are numbers in another unit.
TIME_UNITS: Mapping[str, float] = {"days": 1.0, "weeks": 7.0, "months": 365.25 / 12,
                                   "years": 365.25}

#: The column of an input frame that, when present, names each row's place in its file
#: ("line 7"); adapters set it so that problems point into the file the user has.
PLACE = "_place"

CovariateKind = Literal["numeric", "categorical"]


class PlaceFn:
    """Where row ``i`` of a frame is: its ``_place`` column when there is one, else
    ``row i+1``."""

    def __init__(self, frame: pd.DataFrame, names: Mapping[str, str] | None = None) -> None:
        self._places = frame[PLACE].tolist() if PLACE in frame.columns else None
        self._names = dict(names or {})

    def __call__(self, i: int, column: str | None = None) -> str:
        where = self._places[i] if self._places is not None else f"row {i + 1}"
        if not column:
            return where
        return f"{where}, column {self._names.get(column, column)!r}"


@dataclass(frozen=True)
class DataSummary:
    """Counts that describe an :class:`EventData` (what ``carecourse datasets show``
    prints)."""

    name: str
    patients: int
    events: int
    origin: str
    time_unit: str
    #: (code, kind) -> (events, patients), most frequent first.
    codes: dict[tuple[str, str], tuple[int, int]]
    #: (from, to) -> patients who made that transition (``from`` is the initial state, or
    #: "(start)" when the data has none), most frequent first.
    transitions: dict[tuple[str, str], int]
    #: last state -> patients whose follow-up ended there.
    final_states: dict[str, int]
    #: covariate -> ("numeric" | "categorical", a short description of its values).
    covariates: dict[str, tuple[str, str]]
    follow_up_median: float
    follow_up_max: float
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)
class EventData:
    """Patients' events, baseline covariates and follow-up in the common form (see the
    module's docstring). Build it with :func:`make_event_data`, which validates."""

    events: pd.DataFrame
    baseline: pd.DataFrame
    end: pd.Series
    name: str
    origin: str
    initial_state: str | None = None
    time_unit: str = "days"
    #: What an adapter left out or assumed, in words (shown by ``carecourse datasets show``).
    notes: tuple[str, ...] = field(default=())

    @property
    def patients(self) -> int:
        return len(self.baseline)

    def states(self) -> list[str]:
        """The state codes, the initial state first, then in order of first entry."""
        codes = self.events.loc[self.events["kind"] == "state", "code"]
        seen = [self.initial_state] if self.initial_state else []
        seen += [c for c in pd.unique(codes) if c != self.initial_state]
        return seen

    def covariate_kinds(self) -> dict[str, CovariateKind]:
        return {c: covariate_kind(self.baseline[c]) for c in self.baseline.columns}

    def paths(self) -> dict[str, list[tuple[float, str]]]:
        """Each patient's states in time order as (time, state), starting with
        ``(0.0, initial_state)`` when the data has an initial state. A state entered again
        while the patient is in it is not repeated."""
        start = [(0.0, self.initial_state)] if self.initial_state else []
        out: dict[str, list[tuple[float, str]]] = {p: list(start) for p in self.baseline.index}
        states = self.events[self.events["kind"] == "state"]
        for pid, t, code in zip(states["patient_id"], states["time"], states["code"],
                                strict=True):
            path = out[pid]
            if not path or path[-1][1] != code:
                path.append((float(t), code))
        return out

    def transition_counts(self) -> Counter[tuple[str, str]]:
        """Patients per (from state, to state), from :meth:`paths`."""
        counts: Counter[tuple[str, str]] = Counter()
        for path in self.paths().values():
            prev = None if self.initial_state else "(start)"
            for _, code in path:
                if prev is not None:
                    counts[(prev, code)] += 1
                prev = code
        return counts

    def summary(self) -> DataSummary:
        ev = self.events
        codes: dict[tuple[str, str], tuple[int, int]] = {}
        if len(ev):
            g = ev.groupby(["code", "kind"], observed=True)["patient_id"]
            table = pd.DataFrame({"events": g.size(), "patients": g.nunique()})
            table = table.sort_values(["events", "patients"], ascending=False, kind="stable")
            codes = {(str(c), str(k)): (int(r.events), int(r.patients))
                     for (c, k), r in table.iterrows()}
        finals = Counter(path[-1][1] if path else "(no state)" for path in self.paths().values())
        covs = {c: (covariate_kind(self.baseline[c]), _describe(self.baseline[c]))
                for c in self.baseline.columns}
        end = self.end.to_numpy(dtype=float)
        return DataSummary(
            name=self.name, patients=self.patients, events=len(ev), origin=self.origin,
            time_unit=self.time_unit, codes=codes,
            transitions=dict(self.transition_counts().most_common()),
            final_states=dict(finals.most_common()), covariates=covs,
            follow_up_median=float(np.median(end)) if len(end) else math.nan,
            follow_up_max=float(end.max()) if len(end) else math.nan, notes=self.notes)


def covariate_kind(column: pd.Series) -> CovariateKind:
    return "categorical" if isinstance(column.dtype, pd.CategoricalDtype) else "numeric"


def _describe(column: pd.Series) -> str:
    missing = int(column.isna().sum())
    tail = f", {missing} missing" if missing else ""
    if isinstance(column.dtype, pd.CategoricalDtype):
        counts = column.value_counts(sort=True)
        shown = ", ".join(f"{k}: {v}" for k, v in counts.head(6).items())
        more = f", ... ({len(counts)} levels)" if len(counts) > 6 else ""
        return f"{shown}{more}{tail}"
    if column.notna().any():
        return (f"mean {column.mean():.4g}, range {column.min():.4g} to "
                f"{column.max():.4g}{tail}")
    return f"all missing{tail}"


def make_event_data(
    events: pd.DataFrame,
    baseline: pd.DataFrame,
    *,
    name: str,
    origin: str,
    end: pd.Series | Mapping[str, float] | None = None,
    initial_state: str | None = None,
    categorical: Iterable[str] = (),
    events_file: str = "events",
    baseline_file: str = "baseline",
    notes: Iterable[str] = (),
    problems: Iterable[Problem] = (),
    column_names: Mapping[str, str] | None = None,
) -> EventData:
    """Validate two frames and return them in the common form.

    ``events`` needs the columns ``patient_id``, ``time`` (numbers: days since the
    patient's origin) and ``code``; ``kind`` (default "state"), ``value`` and ``display``
    are optional. ``baseline`` needs ``patient_id``; every other column is a covariate:
    numeric unless it holds text, is a pandas category, or is named in ``categorical``.
    ``end`` maps patients to their end of follow-up (days); by default it is each
    patient's last event (0 for a patient without events), which also stands in for a
    patient that ``end`` leaves missing.

    Every problem found is reported at once in a :class:`DataError`, each with the file
    (``events_file``, ``baseline_file``) and the row (an input column ``_place``, when
    present, names each row's place, e.g. "line 7"): missing columns, missing or
    non-finite times, empty codes, unknown kinds, non-numeric values, duplicate patients in
    the baseline, events of patients absent from it, and states after the end of
    follow-up. ``problems`` already found by an adapter are reported with these;
    ``column_names`` maps the standard column names to those of the user's file, for the
    messages.
    """
    problems = list(problems)
    names = dict(column_names or {})
    ev = _events_frame(events, events_file, problems, names)
    base = _baseline_frame(baseline, baseline_file, set(categorical), problems, names)
    if ev is None or base is None:
        raise DataError(problems)
    known = set(base.index)
    place = PlaceFn(events, names)
    unknown = ~ev["patient_id"].isin(known) & (ev["patient_id"] != "")
    if unknown.any():
        first = ev[unknown].drop_duplicates("patient_id")
        for i, pid in zip(first["_row"], first["patient_id"], strict=True):
            problems.append(Problem(events_file, place(int(i), "patient_id"),
                                    f"patient {pid!r} is not in the baseline table "
                                    f"{baseline_file}; add a baseline row for every patient"))
    if problems:
        raise DataError(problems)
    last = ev.groupby("patient_id")["time"].max()
    if end is None:
        ends = pd.Series(0.0, index=base.index, dtype=float)
        ends.update(last)
    else:
        ends = pd.Series(end, dtype=float)
        ends.index = as_text(pd.Series(ends.index)).to_numpy()
        ends = ends[~ends.index.duplicated()].reindex(base.index)
        # A patient without an end of follow-up is followed to its last event.
        ends = ends.fillna(last.reindex(base.index)).fillna(0.0)
        bad = ends[~np.isfinite(ends.to_numpy(dtype=float))]
        for pid in bad.index[:50]:
            problems.append(Problem(baseline_file, f"patient {pid!r}",
                                    "the end of follow-up is not a finite number"))
        states = ev[ev["kind"] == "state"]
        late = states[states["time"].to_numpy() > ends.reindex(states["patient_id"]).to_numpy()]
        late = late.drop_duplicates("patient_id")
        for i, pid, t in zip(late["_row"], late["patient_id"], late["time"], strict=True):
            problems.append(Problem(events_file, place(int(i), "time"),
                                    f"state entered at {t:g} days, after the end of "
                                    f"follow-up of patient {pid!r} ({ends[pid]:g} days); fix "
                                    "the time or the end of follow-up"))
    if problems:
        raise DataError(problems)
    ev = ev.sort_values(["patient_id", "time", "_row"], kind="stable")
    ev = ev.drop(columns="_row").reset_index(drop=True)
    # Patients in id order, so that the same data read from differently ordered files is
    # the same EventData.
    base = base.sort_index(kind="stable")
    ends = ends.reindex(base.index)
    ends.index.name = "patient_id"
    ends.name = "end"
    return EventData(events=ev, baseline=base, end=ends, name=name, origin=origin,
                     initial_state=initial_state, notes=tuple(notes))


def _events_frame(frame: pd.DataFrame, file: str, problems: list[Problem],
                  names: Mapping[str, str]) -> pd.DataFrame | None:
    missing = [c for c in ("patient_id", "time", "code") if c not in frame.columns]
    if missing:
        problems.append(Problem(file, "header", f"missing column(s) {', '.join(missing)}; "
                                f"found {_listed(frame)}"))
        return None
    place = PlaceFn(frame, names)
    n = len(frame)
    pid = as_text(frame["patient_id"])
    code = as_text(frame["code"])
    time = pd.to_numeric(frame["time"], errors="coerce").astype(float)
    kind = as_text(frame["kind"]) if "kind" in frame.columns else pd.Series(["state"] * n)
    kind = kind.str.strip().str.lower().replace("", "state")
    if "value" in frame.columns:
        raw = frame["value"]
        value = pd.to_numeric(raw, errors="coerce").astype(float)
        blank = raw.isna() | (raw.astype(str).str.strip() == "")
        for i in np.flatnonzero((value.isna() & ~blank).to_numpy()):
            problems.append(Problem(file, place(int(i), "value"),
                                    f"{raw.iloc[i]!r} is not a number; leave it empty or "
                                    "write a number"))
    else:
        value = pd.Series(np.nan, index=range(n), dtype=float)
    display = as_text(frame["display"]) if "display" in frame.columns else pd.Series([""] * n)
    for i in np.flatnonzero((pid == "").to_numpy()):
        problems.append(Problem(file, place(int(i), "patient_id"), "the patient id is empty"))
    for i in np.flatnonzero(~np.isfinite(time.to_numpy())):
        problems.append(Problem(file, place(int(i), "time"),
                                f"{frame['time'].iloc[i]!r} is not a finite number of days"))
    for i in np.flatnonzero((code == "").to_numpy()):
        problems.append(Problem(file, place(int(i), "code"), "the code is empty"))
    for i in np.flatnonzero((~kind.isin(KINDS)).to_numpy()):
        problems.append(Problem(file, place(int(i), "kind"),
                                f"unknown kind {kind.iloc[i]!r}; known: {', '.join(KINDS)}"))
    return pd.DataFrame({
        "patient_id": pid.to_numpy(), "time": time.to_numpy(), "code": code.to_numpy(),
        "kind": pd.Categorical(kind.to_numpy(), categories=list(KINDS)),
        "value": value.to_numpy(), "display": display.to_numpy(), "_row": np.arange(n),
    })


def _baseline_frame(frame: pd.DataFrame, file: str, categorical: set[str],
                    problems: list[Problem], names: Mapping[str, str]) -> pd.DataFrame | None:
    if "patient_id" not in frame.columns:
        problems.append(Problem(file, "header", f"missing column patient_id; found "
                                f"{_listed(frame)}"))
        return None
    place = PlaceFn(frame, {"patient_id": names.get("baseline_patient_id",
                                                    names.get("patient_id", "patient_id"))})
    pid = as_text(frame["patient_id"])
    for i in np.flatnonzero((pid == "").to_numpy()):
        problems.append(Problem(file, place(int(i), "patient_id"), "the patient id is empty"))
    first: dict[str, int] = {}
    for i, p in enumerate(pid):
        if p in first and p:
            problems.append(Problem(file, place(i, "patient_id"),
                                    f"patient {p!r} appears again (first at "
                                    f"{place(first[p])}); keep one baseline row per patient"))
        first.setdefault(p, i)
    unknown = categorical - set(frame.columns)
    if unknown:
        problems.append(Problem(file, "header", f"categorical column(s) "
                                f"{', '.join(sorted(unknown))} not found"))
    cols: dict[str, pd.Series] = {}
    for c in frame.columns:
        if c in ("patient_id", PLACE):
            continue
        cols[str(c)] = _covariate(frame[c].reset_index(drop=True), c in categorical)
    base = pd.DataFrame(cols)
    base.index = pd.Index(pid.to_numpy(), name="patient_id")
    return base


def _covariate(column: pd.Series, categorical: bool) -> pd.Series:
    """A numeric (float64) column, or a category of strings: text, bools and pandas
    categories are categorical; so is any column the caller names."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        return column.astype(str).where(column.notna()).astype("category")
    if pd.api.types.is_bool_dtype(column.dtype):
        categorical = True
    elif not categorical and pd.api.types.is_numeric_dtype(column.dtype):
        return column.astype(float)
    if not categorical:
        blank = column.isna() | (column.astype(str).str.strip() == "")
        numbers = pd.to_numeric(column.where(~blank), errors="coerce")
        if blank.all() or numbers[~blank].notna().all():
            return numbers.astype(float)
    text = column.astype(str).str.strip()
    text = text.where(column.notna() & (text != ""))
    return text.astype("category")


def _listed(frame: pd.DataFrame) -> str:
    return ", ".join(str(c) for c in frame.columns if c != PLACE) or "no columns"


def as_text(column: pd.Series) -> pd.Series:
    """Strings, with missing values as ""; numbers written as whole numbers lose ".0"."""
    def one(v: object) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
            return ""
        if isinstance(v, float) and v.is_integer():
            return str(int(v))
        return str(v).strip()
    return pd.Series([one(v) for v in column], dtype=object)
