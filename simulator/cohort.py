"""Cohorts: patients started at a trial's index event with given baseline covariates,
stepped forward through the protocol's modules for the follow-up, with their endpoints.

The baseline covariates come from a :class:`BaselineSource`, anything that can draw rows
of a table conditionally on column constraints: :class:`TableSource` (a CSV or Parquet
file, or a built-in data set's arm, which the command line loads); the DP baseline
generator fills the same interface. The constraints are those the inclusion criteria
imply (:func:`simulator.protocol.sampling_constraints`), so the source draws only rows
that can be eligible, not blindly; every criterion is then checked on the patient as
built at time zero.

Each generated patient *i* gets its own seed from (protocol seed, *i*)
(:func:`simulator.population.patient_seed`), so a patient's course never depends on
the others. :func:`run_cohort` counts patients as a CONSORT diagram does: rows generated
by the source, patients eligible (and why the others were not), enrolled, and how their
follow-up ended.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from typing import Protocol as TypingProtocol

import numpy as np
import pandas as pd
import simpy

from modules.errors import ConfigError, DataError, Problem, SimulationError
from modules.loader import ModuleLibrary, load_library
from simulator import facts
from simulator.demographics import sample_demographics
from simulator.engine import ModuleRun, Program, run_module
from simulator.logic import Cond, compile_condition
from simulator.person import Person, date_of, day_of
from simulator.population import patient_seed
from simulator.protocol import (
    CDISC_ETHNICITY,
    CDISC_RACE,
    Constraint,
    Endpoint,
    EventSpec,
    Protocol,
    sampling_constraints,
)
from simulator.record import Code, Condition, Encounter, Medication, Observation

__all__ = [
    "BaselineSource",
    "TableSource",
    "read_baseline_table",
    "EndpointValue",
    "Subject",
    "Consort",
    "CohortResult",
    "cohort_programs",
    "protocol_library",
    "run_cohort",
]

#: The enrolment visit: ICD-10-CM Z00.6, "Encounter for examination for normal
#: comparison and control in clinical research program".
_ENROLMENT = (Code("ICD-10", "Z00.6", "Encounter for examination for normal comparison "
                                      "and control in clinical research program"),)
_NATURAL_DEATH = (Code("SNOMED-CT", "419620001", "Death (event)"),)
#: A source is asked for at most this many rows per enrolled patient before the cohort
#: gives up (the eligibility criteria exclude almost everything it can draw).
_MAX_DRAWS_PER_PATIENT = 100
#: Spawn key of the baseline draws, apart from the patients' own (index,) keys.
_BASELINE_KEY = 0xBA5E


# ----------------------------------------------------------------------- baseline sources

class BaselineSource(TypingProtocol):
    """Where baseline covariates come from: one row per patient, a column per covariate.

    ``sample(n, seed=..., conditions=...)`` returns ``n`` rows (or every row, in a random
    order, when ``n`` is None and the source is finite) whose columns satisfy
    ``conditions``: column -> inclusive ``(low, high)`` range, or the set of allowed
    values as text. ``available`` is the number of distinct rows a finite source holds
    (None for a generator)."""

    name: str

    @property
    def available(self) -> int | None: ...

    @property
    def columns(self) -> tuple[str, ...]: ...

    def sample(self, n: int | None, *, seed: int,
               conditions: Mapping[str, Constraint]) -> pd.DataFrame: ...


def _cell_text(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v).strip()


class TableSource:
    """Rows of a real or previously generated table. Drawing without replacement (the
    default) returns the matching rows in a seeded random order, each at most once; with
    ``replace`` rows are drawn with replacement (a bootstrap of the table)."""

    def __init__(self, frame: pd.DataFrame, name: str, *, replace: bool = False) -> None:
        self.frame = frame.reset_index(drop=True)
        self.name = name
        self.replace = replace

    @classmethod
    def filtered(cls, frame: pd.DataFrame, name: str, where: Mapping[str, frozenset[str]], *,
                 replace: bool = False, protocol: Protocol | None = None) -> TableSource:
        """The rows of ``frame`` whose columns hold one of the values ``where`` gives
        (``baseline.source.where``: e.g. the control arm of a data set). Raises
        DataError for a column the table lacks or a filter that keeps no row."""
        f = str(protocol.path) if protocol is not None else name
        missing = [Problem(f, f"baseline.source.where.{col}", f"column {col!r} is not in "
                                                                f"{name}; its columns: "
                                                                f"{', '.join(map(str, frame.columns))}")
                   for col in where if col not in frame.columns]
        if missing:
            raise DataError(missing)
        keep = np.ones(len(frame), dtype=bool)
        for col, values in where.items():
            keep &= frame[col].map(_cell_text).isin(values).to_numpy()
        if where and not keep.any():
            raise DataError([Problem(f, "baseline.source.where", f"no row of {name} matches "
                                                                 "the filter; check the "
                                                                 "values")])
        return cls(frame[keep], name, replace=replace)

    @property
    def available(self) -> int | None:
        return len(self.frame)

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(str(c) for c in self.frame.columns)

    def matching(self, conditions: Mapping[str, Constraint]) -> pd.DataFrame:
        """The rows that satisfy every constraint (missing values never do)."""
        keep = np.ones(len(self.frame), dtype=bool)
        for col, c in conditions.items():
            values = self.frame[col]
            if isinstance(c, tuple):
                x = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
                with np.errstate(invalid="ignore"):
                    keep &= (x >= c[0]) & (x <= c[1])
            else:
                keep &= values.map(_cell_text).isin(c).to_numpy() & values.notna().to_numpy()
        return self.frame[keep]

    def sample(self, n: int | None, *, seed: int,
               conditions: Mapping[str, Constraint]) -> pd.DataFrame:
        rows = self.matching(conditions)
        rng = np.random.default_rng(seed)
        if self.replace:
            if n is None:
                raise ValueError("drawing with replacement needs a number of rows")
            if not len(rows):
                return rows
            return rows.iloc[rng.integers(0, len(rows), size=n)]
        order = rng.permutation(len(rows))
        return rows.iloc[order if n is None else order[:n]]


def read_baseline_table(path: Path) -> pd.DataFrame:
    """A baseline table from CSV (``.csv``, ``.tsv``, optionally gzipped) or Parquet.
    Raises DataError naming the file when it cannot be read."""
    name = path.name.lower()
    try:
        if name.endswith((".parquet", ".pq")):
            return pd.read_parquet(path)
        if name.endswith((".csv", ".csv.gz", ".tsv", ".tsv.gz")):
            sep = "\t" if ".tsv" in name else ","
            return pd.read_csv(path, sep=sep)
    except FileNotFoundError:
        raise DataError([Problem(str(path), "", "no such baseline file; check "
                                                "baseline.source.file")]) from None
    except (OSError, ValueError, ImportError) as exc:
        raise DataError([Problem(str(path), "", f"cannot read the baseline table "
                                                f"({type(exc).__name__}: {exc})")]) from None
    raise DataError([Problem(str(path), "", "a baseline table must be .csv, .tsv or "
                                            ".parquet")])


# ----------------------------------------------------------------------------- results

@dataclass(frozen=True)
class EndpointValue:
    """One endpoint of one subject. Time to event: ``value`` is days from time zero to
    the event (``censored`` False) or to censoring (True), ``description`` says which
    event or why censored, ``day`` equals ``value``. Binary: 1.0 / 0.0, observation: the
    number; None when missing (the patient died or was lost before ``day``)."""

    value: float | None
    censored: bool | None
    description: str
    day: float


@dataclass(frozen=True)
class Subject:
    """An enrolled patient: who, when, and what happened."""

    number: int
    seed: int
    patient_id: str
    #: Time zero and the end of follow-up, as SimPy clock values (days since 1970).
    index_time: float
    end_time: float
    #: completed | death | lost to follow-up | data cut-off
    end_reason: str
    death_time: float | None
    age: float
    sex: str
    race: str
    ethnicity: str
    #: The baseline row as the source gave it (column -> value), but its id column.
    covariates: Mapping[str, Any]
    endpoints: Mapping[str, EndpointValue]
    #: The row's id in the source (``baseline.id``); never written to the datasets.
    source_id: str | None = None

    @property
    def index_date(self) -> dt.date:
        return date_of(self.index_time).date()

    @property
    def end_date(self) -> dt.date:
        return date_of(self.end_time).date()

    @property
    def death_date(self) -> dt.date | None:
        return date_of(self.death_time).date() if self.death_time is not None else None


@dataclass
class Consort:
    """CONSORT-style counts (Schulz et al., CONSORT 2010 statement, BMJ 2010;340:c332):
    how many patients the source generated, how many were eligible (and, for the others,
    each criterion they failed), how many were enrolled and how follow-up ended."""

    source: str
    source_rows: int | None
    matching_rows: int | None
    generated: int = 0
    eligible: int = 0
    enrolled: int = 0
    #: criterion -> generated patients who failed it (a patient can fail several).
    not_eligible: Counter = field(default_factory=Counter)
    #: completed | death | lost to follow-up | data cut-off -> enrolled patients.
    follow_up: Counter = field(default_factory=Counter)
    constraints: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "source_rows": self.source_rows,
                "matching_rows": self.matching_rows, "generated": self.generated,
                "eligible": self.eligible, "enrolled": self.enrolled,
                "not_eligible": dict(self.not_eligible), "follow_up": dict(self.follow_up),
                "constraints": self.constraints}

    def conditioning(self) -> str:
        """For an endless source (a generator), the conditions its draws were made on
        (the constraints are conditions of the draws there, not filters of rows); else
        empty."""
        if self.source_rows is not None or not self.constraints:
            return ""
        return "drawn conditionally on " + "; ".join(
            f"{k} in {{{', '.join(v)}}}" if all(isinstance(x, str) for x in v)
            else f"{k} in [{v[0]:g}, {v[1]:g}]" for k, v in self.constraints.items())

    def lines(self) -> list[str]:
        """The counts as the command line prints them."""
        src = f"{self.source}" + (f" ({self.source_rows} rows, {self.matching_rows} "
                                  "matching the eligibility constraints)"
                                  if self.source_rows is not None else "")
        out = [f"baseline source: {src}"]
        conditioning = self.conditioning()
        if conditioning:
            out.append(f"  {conditioning}")
        out += [f"generated: {self.generated}",
               f"  not eligible: {self.generated - self.eligible}"]
        out += [f"    {n:6d}  {name}" for name, n in self.not_eligible.most_common()]
        out += [f"eligible: {self.eligible}", f"enrolled: {self.enrolled}"]
        out += [f"  {reason}: {n}" for reason, n in sorted(self.follow_up.items())]
        return out


@dataclass
class CohortResult:
    subjects: list[Subject]
    consort: Consort


# ------------------------------------------------------------------------------- engine

class _Hooks:
    """The engine hooks of a cohort patient: death stops the simulation."""

    def __init__(self, person: Person, stop: simpy.Event) -> None:
        self.person = person
        self.env = person.env
        self.stop = stop

    def die(self, person: Person, when: float, cause: tuple[Code, ...]) -> None:
        if person.death is not None and person.death <= when:
            return
        person.death = when
        person.death_cause = cause
        if when <= self.env.now:
            self._stop_if_dead(None)
        else:
            self.env.timeout(when - self.env.now).callbacks.append(self._stop_if_dead)

    def _stop_if_dead(self, _ev: Any) -> None:
        death = self.person.death
        if death is not None and death <= self.env.now and not self.stop.triggered:
            self.stop.succeed()

    def symptom_changed(self, person: Person, t: float) -> None:
        return None  # a cohort has no symptom-driven visits


class _Probe:
    """What a compiled GMF condition needs of a module run, for conditions evaluated by
    the protocol (eligibility, endpoints) rather than by a module."""

    __slots__ = ("person", "env", "module_name", "state_name", "last_seq", "last_exit")

    def __init__(self, person: Person, what: str) -> None:
        self.person = person
        self.env = person.env
        self.module_name = "protocol"
        self.state_name = what
        self.last_seq: dict[str, int] = {}
        self.last_exit: dict[str, float | None] = {}


def protocol_library(protocol: Protocol) -> ModuleLibrary:
    """The module library the protocol's standard of care runs on
    (``standard_of_care.modules_dir``, or the built-in library when the key is absent).
    A folder that does not exist raises ConfigError naming the protocol file and the key:
    the library loader alone could name only the folder."""
    d = protocol.modules_dir
    if d is not None and not d.is_dir():
        raise ConfigError(f"{protocol.path}: standard_of_care.modules_dir: module library "
                          f"folder not found: {d} (a relative path is read from the "
                          "protocol's folder); give an existing folder of GMF modules, or "
                          "leave the key out for the built-in library")
    return load_library(d)


def cohort_programs(protocol: Protocol, library: ModuleLibrary,
                    programs: dict[str, Program]) -> dict[str, Program]:
    """The protocol's modules, checked against the library: every named module exists,
    and a ``state`` index names a state of its module. Raises ConfigError naming the
    protocol file and key."""
    f = str(protocol.path)
    for key in protocol.modules:
        if key not in programs:
            raise ConfigError(f"{f}: standard_of_care.modules: no module {key!r} in "
                              f"{library.root}; known: {', '.join(library.top_level())}")
    ix = protocol.index
    if ix.event == "state":
        assert ix.module is not None and ix.state is not None
        states = programs[ix.module].states
        if ix.state not in states:
            raise ConfigError(f"{f}: index.state: module {ix.module!r} has no state "
                              f"{ix.state!r}; its states: {', '.join(sorted(states))}")
    for i, e in enumerate(protocol.endpoints):
        for j, ev in enumerate(e.events):
            if ev.kind != "state":
                continue
            mods = [ev.module] if ev.module else list(protocol.modules)
            if not any(ev.state in _all_states(programs, m) for m in mods):
                raise ConfigError(f"{f}: endpoints[{i}].events[{j}].state: no module of "
                                  f"{', '.join(mods)} has a state {ev.state!r}")
    return programs


def _all_states(programs: dict[str, Program], key: str, seen: set[str] | None = None
                ) -> set[str]:
    """States of a module and of the submodules it calls (their states are spliced into
    its history)."""
    seen = seen if seen is not None else set()
    if key in seen or key not in programs:
        return set()
    seen.add(key)
    out = set(programs[key].states)
    for st in programs[key].states.values():
        if st.submodule:
            out |= _all_states(programs, st.submodule, seen)
    return out


def _starting_at(program: Program, state: str) -> Program:
    """The same compiled module, entered at ``state`` instead of Initial."""
    p = Program(program.key, program.name, program.states)
    p.initial = program.states[state]
    return p


def _truthy(v: Any, equals: str | None) -> bool:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return False
    text = _cell_text(v)
    if equals is not None:
        return text == equals
    return text.lower() not in ("0", "false", "no", "n", "")


def _number(v: Any) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


class _Builder:
    """Builds one patient at time zero from a baseline row."""

    def __init__(self, protocol: Protocol, source: BaselineSource) -> None:
        self.protocol = protocol
        self.source = source
        b = protocol.baseline
        mapped = {b.age, b.sex.column, b.id} | {c.column for c in (b.race, b.ethnicity) if c}
        self.attributes = b.attributes if b.attributes is not None else tuple(
            c for c in source.columns if c not in mapped)
        self.inclusion = [(c.name, compile_condition(dict(c.condition)))
                          for c in protocol.eligibility.inclusion]
        self.exclusion = [(c.name, compile_condition(dict(c.condition)))
                          for c in protocol.eligibility.exclusion]
        ix = protocol.index
        self.first_day = day_of(ix.start)
        self.days = (ix.end - ix.start).days + 1

    def build(self, number: int, row: Mapping[str, Any], place: str,
              numeric: frozenset[str]) -> tuple[Person, str, str]:
        """The patient at time zero, and its CDISC race and ethnicity. ``numeric``: the
        columns whose values are numbers (set as numeric attributes)."""
        p = self.protocol
        b = p.baseline
        seed = patient_seed(p.seed, number)
        rng = np.random.Generator(np.random.PCG64(seed))
        u = rng.random(2)
        t0 = self.first_day + math.floor(u[0] * self.days)
        age = _number(row.get(b.age))
        sex = b.sex.translate(row.get(b.sex.column))
        problems = []
        if age is None or not (0 <= age <= 130):
            problems.append(Problem(self.source.name, f"{place}, column {b.age!r}",
                                    f"age {row.get(b.age)!r} is not a number of years "
                                    "between 0 and 130"))
        if sex not in ("M", "F"):
            problems.append(Problem(self.source.name, f"{place}, column {b.sex.column!r}",
                                    f"sex {row.get(b.sex.column)!r} is neither M nor F; map "
                                    "the column's values with baseline.sex.values"))
        if problems:
            raise DataError(problems)
        assert age is not None
        if float(age).is_integer():
            # Whole years of age: the birthday falls anywhere in the year before.
            d0 = date_of(t0).date()
            try:
                anniversary = d0.replace(year=d0.year - int(age))
            except ValueError:  # 29 February
                anniversary = d0.replace(year=d0.year - int(age), day=28)
            birth = day_of(anniversary) - math.floor(u[1] * 365.0)
        else:
            birth = t0 - age * 365.25
        demo = sample_demographics(rng, age_years=age, gender=sex)
        race = ethnicity = None
        if b.race is not None:
            race = b.race.translate(row.get(b.race.column))
            demo = replace(demo, race=CDISC_RACE.get(race, "other"))
        if b.ethnicity is not None:
            ethnicity = b.ethnicity.translate(row.get(b.ethnicity.column))
            demo = replace(demo, ethnicity=CDISC_ETHNICITY.get(ethnicity, "nonhispanic"))
        person = Person(number, seed, rng, birth, sex)
        person.demographics = demo
        attrs = person.attributes
        attrs.update({"race": demo.race, "ethnicity": demo.ethnicity,
                      "first_language": demo.first_language, "income": demo.income,
                      "education": demo.education,
                      "socioeconomic_category": demo.socioeconomic_category,
                      "state": demo.state, "city": demo.city, "county": demo.county,
                      "marital_status": demo.marital_status,
                      "name": f"{demo.first_name} {demo.last_name}"})
        for col in self.attributes:
            v = row.get(col)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                continue
            attrs[col] = float(v) if col in numeric else _cell_text(v)
        env = simpy.Environment(initial_time=t0)
        person.env = env
        person.wellness_visit = None
        person.next_wellness = env.event()  # a cohort has no wellness schedule
        enc = Encounter("enrollment", t0, _ENROLMENT, "ambulatory")
        enc.end(t0)
        rec = person.record
        rec.encounters.append(enc)
        for item in b.conditions:
            if _truthy(row.get(item.column), item.equals):
                self._activate(person, "conditions", Condition("baseline", t0,
                                                               (_code(item.code),), enc))
        for item in b.medications:
            if _truthy(row.get(item.column), item.equals):
                self._activate(person, "medications", Medication("baseline", t0,
                                                                 (_code(item.code),), enc,
                                                                 chronic=True))
        for item in b.observations:
            x = _number(row.get(item.column))
            if x is not None:
                obs = Observation("baseline", t0, (_code(item.code),), enc, x, item.unit,
                                  "laboratory")
                rec.observations.append(obs)
                person.latest_observation[obs.codes[0].code] = obs
        for item in b.vital_signs:
            x = _number(row.get(item.column))
            if x is not None:
                assert item.vital_sign is not None
                person.vitals[item.vital_sign] = x
        if p.index.event == "diagnosis":
            assert p.index.diagnosis is not None
            code = _code(p.index.diagnosis)
            if not person.active["conditions"].get(code.code):
                self._activate(person, "conditions", Condition("index", t0, (code,), enc))
        return person, race or _cdisc_race(demo.race), \
            ethnicity or _cdisc_ethnicity(demo.ethnicity)

    @staticmethod
    def _activate(person: Person, kind: str, entry: Any) -> None:
        getattr(person.record, kind).append(entry)
        for c in entry.codes:
            person.active[kind][c.code].append(entry)

    def eligibility(self, person: Person) -> list[str]:
        """The criteria the patient fails at time zero (empty: eligible)."""
        probe = _Probe(person, "eligibility")
        t = person.env.now
        failed = []
        for i, (name, cond) in enumerate(self.inclusion):
            ok = _holds(cond, probe, t, f"eligibility.inclusion[{i}]", self.protocol)
            if ok is not True:
                failed.append(name if ok is False else f"{name} (not measured)")
        for i, (name, cond) in enumerate(self.exclusion):
            hit = _holds(cond, probe, t, f"eligibility.exclusion[{i}]", self.protocol)
            if hit is not False:
                failed.append(f"excluded: {name}" if hit else
                              f"excluded: {name} (not measured)")
        return failed


def _holds(cond: Cond, probe: _Probe, t: float, where: str = "",
           protocol: Protocol | None = None) -> bool | None:
    """Whether a condition holds; None when it reads something the patient lacks. A
    comparison of a number with a text (``value: 80`` against a categorical column,
    whose values are text) is the protocol's mistake: ConfigError."""
    try:
        return bool(cond.test(probe, t))
    except SimulationError as exc:
        if "cannot compare" in str(exc):
            f = f"{protocol.path}: {where}: " if protocol is not None else ""
            raise ConfigError(f"{f}{str(exc).split(': ', 1)[-1]}; categorical baseline "
                              "columns hold text, so quote the value (value: \"80\")") from None
        return None


def _code(c: Any) -> Code:
    return Code(c.system, c.code, c.display)


def _cdisc_race(engine: str) -> str:
    for k, v in CDISC_RACE.items():
        if v == engine:
            return k
    return "OTHER"


def _cdisc_ethnicity(engine: str) -> str:
    return "HISPANIC OR LATINO" if engine == "hispanic" else "NOT HISPANIC OR LATINO"


def _background_death(person: Person, t0: float, u: float) -> float:
    """When background mortality ends the life of a person alive at ``t0``: the US life
    table's yearly death probabilities (NCHS, ``simulator/data``), as a constant hazard
    within each year of age, inverted at one uniform draw."""
    need = -math.log(1.0 - u)
    age = (t0 - person.birth) / 365.25
    t = t0
    while True:
        a = int(age)
        q = facts.annual_death_probability(min(a, 100), person.gender)
        rate = -math.log(max(1e-12, 1.0 - min(q, 0.999999)))  # per year
        span = (a + 1) - age
        if rate * span >= need:
            return t + need / rate * 365.25
        need -= rate * span
        t += span * 365.25
        age = a + 1.0
        if age > 140:
            return t


def _monitor(person: Person, cond: Cond, found: list[float], where: str,
             protocol: Protocol) -> Generator[Any, Any, None]:
    """Wait, as a Guard does, until ``cond`` holds; note the time."""
    env = person.env
    probe = _Probe(person, "endpoint")
    while True:
        t = env.now
        if _holds(cond, probe, t, where, protocol):
            found.append(t)
            return
        wake = env.event()
        for key in cond.deps:
            person.watch(key, wake)
        if cond.timed:
            at = cond.next_change(probe, t)
            if at != math.inf:
                env.timeout(max(0.0, at - t)).callbacks.append(
                    lambda _e, w=wake: None if w.triggered else w.succeed())
        yield wake


class _Course:
    """One enrolled patient stepped through the follow-up."""

    def __init__(self, protocol: Protocol, programs: dict[str, Program]) -> None:
        self.protocol = protocol
        self.programs = programs
        self.history_modules = protocol.event_modules()
        self.monitors = [(e.paramcd, j, compile_condition(dict(ev.condition)),
                          f"endpoints[{i}].events[{j}].condition")
                         for i, e in enumerate(protocol.endpoints)
                         for j, ev in enumerate(e.events)
                         if ev.kind == "condition" and ev.condition is not None]
        self.snapshots = [(e, compile_condition(dict(e.condition))
                           if e.condition is not None else None, f"endpoints[{i}].condition")
                          for i, e in enumerate(protocol.endpoints)
                          if e.kind == "observation" or (e.kind == "binary" and
                                                         e.condition is not None)]

    def run(self, person: Person) -> tuple[float, str, dict[str, EndpointValue]]:
        p = self.protocol
        fu = p.follow_up
        env = person.env
        t0 = env.now
        u = person.rng.random(2)
        end, reason = t0 + fu.days, "completed"
        if fu.data_cutoff is not None and day_of(fu.data_cutoff) < end:
            end, reason = max(t0, day_of(fu.data_cutoff)), "data cut-off"
        if fu.dropout_per_year > 0:
            rate = -math.log(1.0 - fu.dropout_per_year) / 365.25
            lost = t0 - math.log(1.0 - u[0]) / rate
            if lost < end:
                end, reason = lost, "lost to follow-up"
        stop = env.event()
        hooks = _Hooks(person, stop)
        values: dict[str, Any] = {}
        probe = _Probe(person, "endpoint")
        for e, cond, where in self.snapshots:
            assert e.at_days is not None

            def snap(_ev: Any, e: Endpoint = e, cond: Cond | None = cond,
                     where: str = where) -> None:
                values[e.paramcd] = _snapshot(e, cond, person, probe, env.now, where, p)
            env.timeout(e.at_days).callbacks.append(snap)
        if fu.background_mortality:
            hooks.die(person, _background_death(person, t0, float(u[1])), _NATURAL_DEATH)
        runs: list[ModuleRun] = []
        ix = p.index
        for key in p.modules:
            program = self.programs[key]
            if ix.event == "state" and key == ix.module:
                assert ix.state is not None
                program = _starting_at(program, ix.state)
            keep = key in self.history_modules or None in self.history_modules
            run = ModuleRun(person, program, self.programs, hooks, keep_history=keep)
            runs.append(run)
            env.process(run_module(run))
        found: dict[tuple[str, int], list[float]] = {}
        for paramcd, j, cond, where in self.monitors:
            found[(paramcd, j)] = []
            env.process(_monitor(person, cond, found[(paramcd, j)], where, p))
        env.timeout(end - t0).callbacks.append(
            lambda _e: None if stop.triggered else stop.succeed())
        env.run(until=stop)
        if person.death is not None and person.death <= end:
            end, reason = person.death, "death"
        person.end = end
        for enc in person.record.encounters:
            if not enc.ended:
                enc.end(max(enc.start, min(end, enc.default_stop())))
        out = {}
        for e in p.endpoints:
            out[e.paramcd] = self._endpoint(e, person, runs, found, t0, end, reason, values)
        return end, reason, out

    def _event_time(self, ev: EventSpec, j: int, e: Endpoint, person: Person,
                    runs: list[ModuleRun], found: dict[tuple[str, int], list[float]],
                    t0: float) -> float | None:
        if ev.kind == "death":
            return person.death
        if ev.kind == "condition":
            times = found.get((e.paramcd, j)) or []
            return times[0] if times else None
        if ev.kind == "state":
            best = None
            ix = self.protocol.index
            for run in runs:
                key = run.program.key
                if ev.module is not None and key != ev.module or run.history is None:
                    continue
                hist = run.history
                if ix.event == "state" and key == ix.module:
                    hist = hist[1:]  # the index state itself is time zero, not an event
                for name, t_in, _t_out, _k in hist:
                    if name == ev.state and t_in >= t0:
                        best = t_in if best is None else min(best, t_in)
                        break
            return best
        assert ev.code is not None
        entries = person.record.conditions if ev.kind == "condition_onset" \
            else person.record.medications
        for entry in entries:
            if entry.state in ("baseline", "index") or entry.start < t0:
                continue
            if any(c.code == ev.code.code for c in entry.codes):
                return entry.start
        return None

    def _endpoint(self, e: Endpoint, person: Person, runs: list[ModuleRun],
                  found: dict[tuple[str, int], list[float]], t0: float, end: float,
                  reason: str, values: dict[str, Any]) -> EndpointValue:
        first: tuple[float, EventSpec] | None = None
        for j, ev in enumerate(e.events):
            t = self._event_time(ev, j, e, person, runs, found, t0)
            if t is not None and t <= end and (first is None or t < first[0]):
                first = (t, ev)
        if e.kind == "time_to_event":
            if first is not None:
                return EndpointValue(first[0] - t0, False, first[1].describe(), first[0] - t0)
            why = {"completed": "END OF FOLLOW-UP", "death": "DEATH",
                   "lost to follow-up": "LOST TO FOLLOW-UP",
                   "data cut-off": "DATA CUT-OFF"}[reason]
            return EndpointValue(end - t0, True, why, end - t0)
        assert e.at_days is not None
        at = t0 + e.at_days
        if e.kind == "binary" and e.events:
            if first is not None and first[0] <= at:
                return EndpointValue(1.0, None, first[1].describe(), e.at_days)
            if end >= at:
                return EndpointValue(0.0, None, "NO EVENT", e.at_days)
            return _if_dead(e, reason)
        if e.paramcd in values:
            v = values[e.paramcd]
            return EndpointValue(v, None, "" if v is not None else "NOT MEASURED", e.at_days)
        return _if_dead(e, reason)


def _if_dead(e: Endpoint, reason: str) -> EndpointValue:
    assert e.at_days is not None
    if reason == "death" and e.if_dead in ("yes", "no"):
        return EndpointValue(1.0 if e.if_dead == "yes" else 0.0, None, "DEATH", e.at_days)
    return EndpointValue(None, None, "DEATH" if reason == "death" else reason.upper(),
                         e.at_days)


def _snapshot(e: Endpoint, cond: Cond | None, person: Person, probe: _Probe, t: float,
              where: str, protocol: Protocol) -> float | None:
    if cond is not None:
        ok = _holds(cond, probe, t, where, protocol)
        return None if ok is None else float(ok)
    if e.code is not None:
        o = person.latest_observation.get(e.code.code)
        return _number(o.value) if o is not None else None
    if e.vital_sign is not None:
        return _number(person.vitals.get(e.vital_sign))
    assert e.attribute is not None
    return _number(person.attributes.get(e.attribute))


# ------------------------------------------------------------------------------ cohorts

def _check_columns(protocol: Protocol, source: BaselineSource) -> None:
    b = protocol.baseline
    need = [("baseline.age", b.age), ("baseline.sex", b.sex.column)]
    need += [("baseline.id", b.id)] if b.id else []
    need += [(f"baseline.{k}", c.column) for k, c in (("race", b.race),
                                                      ("ethnicity", b.ethnicity)) if c]
    need += [(f"baseline.attributes[{i}]", c) for i, c in enumerate(b.attributes or ())]
    for key in ("conditions", "medications", "observations", "vital_signs"):
        need += [(f"baseline.{key}[{i}].column", it.column)
                 for i, it in enumerate(getattr(b, key))]
    cols = set(source.columns)
    problems = [Problem(str(protocol.path), where, f"column {col!r} is not in the baseline "
                                                   f"source {source.name} (its columns: "
                                                   f"{', '.join(sorted(cols))})")
                for where, col in need if col not in cols]
    if problems:
        raise DataError(problems)


def run_cohort(protocol: Protocol, source: BaselineSource, programs: dict[str, Program], *,
               on_enrolled: Callable[[Person, Subject], None] | None = None,
               progress: bool = True) -> CohortResult:
    """Generate baseline rows, keep the eligible patients until the arm is full, and step
    each enrolled one through the follow-up. ``on_enrolled(person, subject)`` receives
    each finished patient (its whole record) before it is dropped.

    Raises ConfigError when the source cannot give enough eligible patients, DataError
    for a malformed baseline row, and what the engine raises for a broken module.
    """
    from tqdm import tqdm

    _check_columns(protocol, source)
    constraints = sampling_constraints(protocol)
    matching = None
    if isinstance(source, TableSource):
        matching = len(source.matching(constraints))
    consort = Consort(source.name, source.available, matching,
                      constraints={k: (sorted(v) if isinstance(v, frozenset) else list(v))
                                   for k, v in constraints.items()})
    builder = _Builder(protocol, source)
    course = _Course(protocol, programs)
    size = protocol.arm.size
    finite = source.available is not None and not protocol.baseline.replace
    subjects: list[Subject] = []
    bar = tqdm(total=size, unit="patients", disable=not progress, dynamic_ncols=True,
               desc="enrolled")
    try:
        rnd = 0
        while consort.enrolled < size:
            seed = int(np.random.SeedSequence(protocol.seed, spawn_key=(_BASELINE_KEY, rnd))
                       .generate_state(1)[0])
            if finite:
                if rnd > 0:
                    break
                batch = source.sample(None, seed=seed, conditions=constraints)
            else:
                if consort.generated >= size * _MAX_DRAWS_PER_PATIENT:
                    break
                rate = consort.eligible / consort.generated if consort.generated else 1.0
                want = math.ceil((size - consort.enrolled) / max(rate, 0.01) * 1.1)
                batch = source.sample(want, seed=seed, conditions=constraints)
                if not len(batch):
                    break
            rnd += 1
            numeric = frozenset(str(c) for c in batch.columns
                                if pd.api.types.is_numeric_dtype(batch[c]))
            for place, row in zip(_places(batch), batch.to_dict("records"), strict=True):
                number = consort.generated
                consort.generated += 1
                person, race, ethnicity = builder.build(number, row, place, numeric)
                failed = builder.eligibility(person)
                consort.not_eligible.update(failed)
                if failed:
                    continue
                consort.eligible += 1
                end, reason, endpoints = course.run(person)
                consort.enrolled += 1
                consort.follow_up[reason] += 1
                subject = Subject(
                    number=number, seed=person.seed, patient_id=person.id,
                    index_time=_index_time(person),
                    end_time=end, end_reason=reason,
                    death_time=person.death if reason == "death" else None,
                    age=float(row[protocol.baseline.age]), sex=person.gender, race=race,
                    ethnicity=ethnicity, endpoints=endpoints,
                    covariates={k: v for k, v in row.items() if k != protocol.baseline.id},
                    source_id=_cell_text(row[protocol.baseline.id])
                    if protocol.baseline.id else None)
                subjects.append(subject)
                if on_enrolled is not None:
                    on_enrolled(person, subject)
                bar.update(1)
                bar.set_postfix(generated=consort.generated, eligible=consort.eligible,
                                refresh=False)
                if consort.enrolled >= size:
                    break
    finally:
        bar.close()
    if consort.enrolled < size:
        what = (f"the baseline source {source.name} has {consort.generated} row(s) that "
                f"can match the eligibility criteria, of which {consort.eligible} are "
                "eligible" if finite else
                f"after {consort.generated} generated patients only {consort.eligible} were "
                "eligible")
        fix = ("lower arm.size, widen the eligibility criteria, or set baseline.replace: "
               "true to draw rows with replacement" if finite else
               "widen the eligibility criteria or lower arm.size")
        raise ConfigError(f"{protocol.path}: arm.size is {size}, but {what}; {fix}")
    return CohortResult(subjects, consort)


def _index_time(person: Person) -> float:
    return person.record.encounters[0].start


def _places(batch: pd.DataFrame) -> list[str]:
    """Where each row came from in the source (its row number there, 1-based)."""
    return [f"row {int(i) + 1}" if isinstance(i, (int, np.integer)) else f"row {i}"
            for i in batch.index]
