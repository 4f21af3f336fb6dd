"""A simulated person: attributes, vital signs, symptoms, the health record, and the
change signal that wakes Guards.

A Guard that waits on something a person holds registers a wake-up event under a *watch
key*: an attribute name, or one of the keys below for things that change through the
record. Whatever changes that thing calls :meth:`Person.notify` with the key, which fires
every event waiting on it. So a Guard sleeps until what it reads can have changed, never on
a weekly tick.
"""

from __future__ import annotations

import bisect
import datetime as dt
import itertools
import uuid
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np

from simulator.record import Code, Entry, HealthRecord, Observation

__all__ = [
    "Person",
    "WATCH_ACTIVE",
    "WATCH_OBSERVATION",
    "WATCH_VITAL",
    "WATCH_SYMPTOM",
    "active_key",
    "EPOCH",
    "day_of",
    "date_of",
    "day_date",
    "WellnessVisit",
]

WATCH_ACTIVE = "@active"  # active conditions, medications, care plans, allergies, devices
WATCH_OBSERVATION = "@observation"
WATCH_VITAL = "@vital"
WATCH_SYMPTOM = "@symptom"


def active_key(code: str) -> str:
    """The watch key of one code becoming active or inactive (any kind of entry): a Guard
    on "Active Condition 44054006" sleeps on this, not on every change to the record."""
    return f"{WATCH_ACTIVE}:{code}"

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()


def day_of(date: dt.date | dt.datetime) -> float:
    """SimPy clock value (days since 1970-01-01 UTC) of a date or datetime."""
    if isinstance(date, dt.datetime):
        if date.tzinfo is None:
            date = date.replace(tzinfo=dt.UTC)
        return (date - EPOCH).total_seconds() / 86400.0
    return float(date.toordinal() - _EPOCH_ORDINAL)


def date_of(t: float) -> dt.datetime:
    """The UTC datetime of a SimPy clock value, to the millisecond."""
    return EPOCH + dt.timedelta(milliseconds=round(t * 86400000.0))


def day_date(t: float) -> dt.date:
    """The UTC calendar day of a clock value: ``date_of(t).date()`` without building a
    datetime (Date conditions ask it at every turn)."""
    return dt.date.fromordinal(_EPOCH_ORDINAL + round(t * 86400000.0) // 86400000)


class WellnessVisit:
    """A scheduled wellness visit; modules waiting for one join it while it is open."""

    __slots__ = ("encounter", "open", "time")

    def __init__(self, encounter: Any, time: float) -> None:
        self.encounter = encounter
        self.open = True
        self.time = time


def _uniforms(rng: np.random.Generator) -> Callable[[], float]:
    """``uniform() -> float``: uniform [0, 1) numbers from the person's numpy Generator,
    drawn in blocks of 256.

    Drawing one float at a time through numpy costs far more than the draw itself; a block
    keeps the stream identical for a given seed while removing that cost. The function is
    an iterator's ``__next__`` over the blocks, chained in C: no Python frame per number
    (a patient draws some thousands).
    """
    blocks = map(lambda _: rng.random(256).tolist(), itertools.repeat(None))
    return itertools.chain.from_iterable(blocks).__next__


class Person:
    """One patient. ``attributes`` is the GMF attribute map (strings to anything)."""

    def __init__(self, index: int, seed: int, rng: np.random.Generator, birth: float,
                 gender: str) -> None:
        self.index = index
        self.seed = seed
        # Stable identifier derived from the patient's own seed, so it does not depend on
        # how the run was split across processes.
        self.id = str(uuid.UUID(int=seed & ((1 << 128) - 1), version=4))
        self.rng = rng
        self.uniform = _uniforms(rng)
        self.birth = birth
        self.gender = gender
        self.demographics: Any = None
        self.attributes: dict[str, Any] = {"gender": gender}
        self.vitals: dict[str, float] = {}
        # symptom -> cause -> severity (0-100)
        self.symptoms: dict[str, dict[str, float]] = {}
        self._symptom_max: dict[str, float] = {}  # symptom -> its worst severity now
        self.record = HealthRecord()
        self.death: float | None = None
        self.death_cause: tuple[Code, ...] = ()
        self.death_module: str | None = None  # the top-level module whose Death state set it
        # code -> active entries with that code, one map per kind (conditions, medications,
        # careplans, allergies, devices). Codes match on the code value only.
        self.active: dict[str, dict[str, list[Entry]]] = {
            k: defaultdict(list)
            for k in ("conditions", "medications", "careplans", "allergies", "devices")
        }
        self.latest_observation: dict[str, Observation] = {}
        self._watchers: dict[str, list[Any]] = {}
        self._birthdays: list[float] | None = None
        self._monthdays: list[float] | None = None
        self.env: Any = None  # the patient's SimPy Environment, set by the engine
        self.wellness_visit: WellnessVisit | None = None
        self.next_wellness: Any = None  # event fired at the next wellness visit
        self.end: float | None = None  # when the simulation of this person stopped

    # ------------------------------------------------------------------ change signal
    def release(self) -> None:
        """Let go of the health record once the patient is written. The record hangs off
        the patient's own reference cycles (its processes' module runs refer back to it),
        so otherwise only the garbage collector frees it; freed now by reference counting,
        a patient's end costs about half as long (1.3 instead of 2.6 ms, Synthea's
        library). The record is gone afterwards: reading it raises AttributeError."""
        del self.record

    def watch(self, key: str, event: Any) -> None:
        self._watchers.setdefault(key, []).append(event)

    def notify(self, key: str) -> None:
        waiting = self._watchers.pop(key, None)
        if waiting:
            for ev in waiting:
                if not ev.triggered:
                    ev.succeed()

    def notify_active(self, codes: Any) -> None:
        """Wake what waits on these codes (entries with them started or stopped) and what
        waits on any change to the active entries."""
        watchers = self._watchers
        if not watchers:
            return
        for c in codes:
            key = active_key(c.code)
            if key in watchers:
                self.notify(key)
        if WATCH_ACTIVE in watchers:
            self.notify(WATCH_ACTIVE)

    def set_attribute(self, name: str, value: Any) -> None:
        """Set (or with None, remove) an attribute and wake whatever waits on it."""
        if value is None:
            self.attributes.pop(name, None)
        else:
            self.attributes[name] = value
        if name in self._watchers:
            self.notify(name)

    def set_vital(self, name: str, value: float) -> None:
        self.vitals[name] = value
        if WATCH_VITAL in self._watchers:
            self.notify(WATCH_VITAL)

    def set_symptom(self, symptom: str, cause: str, value: float) -> None:
        causes = self.symptoms.setdefault(symptom, {})
        causes[cause] = value
        self._symptom_max[symptom] = max(causes.values())
        if WATCH_SYMPTOM in self._watchers:
            self.notify(WATCH_SYMPTOM)

    def symptom_level(self, symptom: str) -> float:
        causes = self.symptoms.get(symptom)
        return max(causes.values()) if causes else 0.0

    def symptom_total(self) -> float:
        return sum(self._symptom_max.values())

    # ------------------------------------------------------------------ time
    def is_dead(self, t: float) -> bool:
        d = self.death
        return d is not None and d <= t

    def _calendar(self) -> None:
        b = date_of(self.birth)
        years = []
        for y in range(0, 141):
            try:
                d = b.replace(year=b.year + y)
            except ValueError:  # born on 29 February
                d = b.replace(year=b.year + y, day=28)
            years.append(day_of(d))
        self._birthdays = years

    def birthday(self, years: int) -> float:
        """Clock value of the person's ``years``-th birthday (calendar, leap-day aware)."""
        if self._birthdays is None:
            self._calendar()
        bd = self._birthdays
        assert bd is not None
        if years < 0:
            return self.birth
        if years >= len(bd):
            return bd[-1] + (years - len(bd) + 1) * 365.25
        return bd[years]

    def age_years(self, t: float) -> int:
        """Whole years of age at ``t`` (the number of birthdays passed)."""
        if self._birthdays is None:
            self._calendar()
        return bisect.bisect_right(self._birthdays, t) - 1  # type: ignore[arg-type]

    def age_decimal(self, t: float) -> float:
        return (t - self.birth) / 365.25

    def month_birthday(self, months: int) -> float:
        """Clock value at which the person is ``months`` whole months old."""
        b = date_of(self.birth)
        y, m = divmod(b.month - 1 + months, 12)
        day = b.day
        while True:
            try:
                return day_of(b.replace(year=b.year + y, month=m + 1, day=day))
            except ValueError:
                day -= 1

    def age_months(self, t: float) -> int:
        b = date_of(self.birth)
        n = date_of(t)
        months = (n.year - b.year) * 12 + (n.month - b.month)
        if (n.day, n.hour, n.minute, n.second) < (b.day, b.hour, b.minute, b.second):
            months -= 1
        return months
