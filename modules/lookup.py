"""Lookup tables for ``lookup_table_transition``: CSV files of probabilities by patient
attributes, age range and time range.

The layout (restated from the GMF documentation): the last N columns are the names of the N
states the transition can go to (in any order); the columns before them are keys. ``age``
holds an inclusive ``low-high`` range of whole years; ``time`` an inclusive range of epoch
milliseconds or ``YYYY-MM-DD-YYYY-MM-DD`` (UTC, end day included); any other column must
equal the patient attribute of that name. The table is indexed once by its exact-match key
columns, so a lookup is a dictionary access plus a scan of the few rows sharing those keys.
"""

from __future__ import annotations

import bisect
import csv
import datetime as dt
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

from modules.errors import ModuleError

__all__ = ["LookupTable", "load_lookup_table"]

_MS_PER_DAY = 86400000.0
_ROUNDING = 0.02


@dataclass(frozen=True, slots=True)
class _Row:
    age: tuple[int, int] | None
    time: tuple[float, float] | None  # clock days, inclusive
    probabilities: tuple[float, ...]


@dataclass(frozen=True)
class LookupTable:
    """A parsed lookup table. ``targets`` are the state names, in CSV column order."""

    path: str
    attribute_columns: tuple[str, ...]
    has_age: bool
    has_time: bool
    targets: tuple[str, ...]
    index: dict[tuple[str, ...], tuple[_Row, ...]]
    # With a time column, rows of one key sorted by start time, with their start times, so
    # a lookup bisects instead of scanning (tables of daily rates have hundreds of rows).
    by_time: dict[tuple[str, ...], tuple[list[float], tuple[_Row, ...]]] = field(default_factory=dict)

    @property
    def time_span(self) -> tuple[float, float] | None:
        """Earliest start and latest end of the time ranges, or None without a time column."""
        if not self.has_time:
            return None
        rows = [r for rs in self.index.values() for r in rs if r.time is not None]
        return min(r.time[0] for r in rows), max(r.time[1] for r in rows)

    def probabilities(self, key: tuple[str, ...], age: int, t: float) -> tuple[float, ...] | None:
        """The row for attribute values ``key`` at whole-year ``age`` and time ``t`` (days),
        as probabilities in ``targets`` order, or None when no row matches."""
        if self.has_time:
            entry = self.by_time.get(key)
            if entry is None:
                return None
            starts, rows = entry
            # Candidates start at or before t; time ranges of one key rarely overlap, so
            # scan back from the last such row and stop at the first match.
            i = bisect.bisect_right(starts, t)
            while i > 0:
                i -= 1
                row = rows[i]
                if row.time is not None and t > row.time[1]:
                    continue
                if row.age is not None and not (row.age[0] <= age <= row.age[1]):
                    continue
                return row.probabilities
            return None
        for row in self.index.get(key, ()):
            if row.age is not None and not (row.age[0] <= age <= row.age[1]):
                continue
            return row.probabilities
        return None


def _parse_age(cell: str, where: str) -> tuple[int, int]:
    parts = cell.strip().split("-")
    if len(parts) != 2 or not parts[0].strip().isdigit() or not parts[1].strip().isdigit():
        raise ModuleError(
            f"{where}: Age Range must be in the form: 'ageLow-ageHigh', got {cell!r}"
        )
    lo, hi = int(parts[0]), int(parts[1])
    if hi < lo:  # "50-0" is written for "0-50"
        lo, hi = hi, lo
    return lo, hi


def _parse_time(cell: str, where: str) -> tuple[float, float]:
    s = cell.strip()
    parts = s.split("-")
    try:
        if len(parts) == 2:
            lo, hi = float(parts[0]), float(parts[1])
            return lo / _MS_PER_DAY, hi / _MS_PER_DAY
        if len(parts) == 6:
            start = dt.date(int(parts[0]), int(parts[1]), int(parts[2]))
            end = dt.date(int(parts[3]), int(parts[4]), int(parts[5]))
            epoch = dt.date(1970, 1, 1).toordinal()
            # The end day is included: the range closes just before the next midnight.
            return float(start.toordinal() - epoch), float(end.toordinal() - epoch + 1) - 1e-9
    except ValueError:
        pass
    raise ModuleError(
        f"{where}: Time Range must be 'lowMillis-highMillis' or 'YYYY-MM-DD-YYYY-MM-DD', got {cell!r}"
    )


def load_lookup_table(path: Path, transitions: list[str]) -> LookupTable:
    """Parse the table at ``path`` for a transition whose options go to ``transitions``.

    Raises ModuleError naming the file, row and column for every kind of malformed input.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ModuleError(f"{path}: cannot read lookup table ({exc.strerror})") from None
    rows = list(csv.reader(io.StringIO(text)))
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        raise ModuleError(f"{path}: lookup table is empty")
    header = [h.strip() for h in rows[0]]
    n = len(transitions)
    if n == 0 or len(header) <= n:
        raise ModuleError(f"{path}: lookup table needs key columns and {n} state column(s)")
    state_cols = header[-n:]
    for col in state_cols:
        if col not in transitions:
            raise ModuleError(
                f"{path}: CSV column state name {col!r} does not match a JSON state to "
                f"transition to in CSV table (states: {', '.join(transitions)})"
            )
    keys = header[:-n]
    has_age = "age" in keys
    has_time = "time" in keys
    attr_cols = tuple(k for k in keys if k not in ("age", "time"))
    order = [state_cols.index(t) for t in transitions]
    col = {h: i for i, h in enumerate(header)}  # as a dict of the row would (last wins)
    width = len(header)
    state_at = [(c, col[c]) for c in state_cols]
    attr_at = [col[c] for c in attr_cols]
    age_at = col.get("age") if has_age else None
    time_at = col.get("time") if has_time else None
    # Tables repeat the same few age and time ranges row after row: each distinct cell is
    # parsed once (and the place of an error is only written when there is one).
    ages: dict[str, tuple[int, int]] = {}
    times: dict[str, tuple[float, float]] = {}
    index: dict[tuple[str, ...], list[_Row]] = {}
    for line_no, row in enumerate(rows[1:], start=2):
        if len(row) != width:
            raise ModuleError(f"{path}: row {line_no}: has {len(row)} cells, the header has "
                              f"{width}")
        cells = [c.strip() for c in row]
        age = time = None
        if age_at is not None:
            age = ages.get(cells[age_at])
            if age is None:
                age = ages[cells[age_at]] = _parse_age(
                    cells[age_at], f"{path}: row {line_no}, column age")
        if time_at is not None:
            time = times.get(cells[time_at])
            if time is None:
                time = times[cells[time_at]] = _parse_time(
                    cells[time_at], f"{path}: row {line_no}, column time")
        probs: list[float] = []
        for name, i in state_at:
            try:
                p = float(cells[i])
            except ValueError:
                raise ModuleError(f"{path}: row {line_no}, column {name}: {cells[i]!r} is not "
                                  f"a number") from None
            if not (0.0 <= p <= 1.0) or math.isnan(p):
                raise ModuleError(f"{path}: row {line_no}, column {name}: probability {p} is "
                                  f"not in [0, 1]")
            probs.append(p)
        # Tables hold rounded published rates, so a row may sum to 1.001 or 1.01; a larger
        # excess is a mistake in the table.
        if sum(probs) > 1.0 + _ROUNDING:
            raise ModuleError(f"{path}: row {line_no}: probabilities sum to {sum(probs):.6g}, "
                              f"more than 1")
        key = tuple(cells[i] for i in attr_at)
        index.setdefault(key, []).append(_Row(age, time, tuple(probs[i] for i in order)))
    by_time = {}
    if has_time:
        for k, rs in index.items():
            ordered = tuple(sorted(rs, key=lambda r: r.time[0] if r.time else -math.inf))
            by_time[k] = ([r.time[0] if r.time else -math.inf for r in ordered], ordered)
    return LookupTable(
        path=str(path),
        attribute_columns=attr_cols,
        has_age=has_age,
        has_time=has_time,
        targets=tuple(transitions),
        index={k: tuple(v) for k, v in index.items()},
        by_time=by_time,
    )
