"""Trial protocols: a YAML file that fixes, before any patient is generated, who is
eligible, what time zero is, how long patients are followed, what is measured and which
disease modules the control arm follows.

Everything is validated in one place, :func:`load_protocol`, which reports every problem
at once, each with the file, the YAML path and line of the value, and what to do, as one
:class:`modules.errors.ProtocolError`. The result is a tree of frozen dataclasses.
Eligibility criteria and GMF-condition endpoints are written in the GMF condition
language (the ``condition_type`` objects of Synthea's modules) and checked with the
module validator's own rules (:func:`modules.gmf.condition_problems`); the cohort compiles
them with :func:`simulator.logic.compile_condition`.

>>> text = '''
... name: Demo
... arm: {size: 10}
... baseline: {source: {file: rows.csv}, age: age, sex: sex}
... index: {event: enrollment, start: 2024-01-01}
... follow_up: {duration: {quantity: 1, unit: years}}
... standard_of_care: {modules: [demo]}
... endpoints: [{paramcd: DTH, type: time_to_event, events: [{death: true}]}]
... '''
>>> p = parse_protocol(text, "demo.yaml")
>>> p.arm.size, p.follow_up.days, p.endpoints[0].paramcd
(10, 365.0, 'DTH')
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from modules.errors import Problem, ProtocolError
from modules.gmf import TIME_UNITS_DAYS, condition_problems, normalize_condition_type

__all__ = [
    "CodeSpec",
    "Criterion",
    "Eligibility",
    "IndexEvent",
    "FollowUp",
    "EventSpec",
    "Endpoint",
    "ColumnMap",
    "BaselineItem",
    "BaselineSpec",
    "ArmSpec",
    "Protocol",
    "Constraint",
    "load_protocol",
    "parse_protocol",
    "sampling_constraints",
    "CDISC_RACE",
    "CDISC_ETHNICITY",
]

#: CDISC controlled terminology for RACE (codelist C74457) and the engine's race names
#: (those ``simulator.demographics`` draws and GMF ``Race`` conditions read).
CDISC_RACE: dict[str, str] = {
    "WHITE": "white",
    "BLACK OR AFRICAN AMERICAN": "black",
    "ASIAN": "asian",
    "AMERICAN INDIAN OR ALASKA NATIVE": "native",
    "NATIVE HAWAIIAN OR OTHER PACIFIC ISLANDER": "hawaiian",
    "MULTIPLE": "other",
    "OTHER": "other",
    "NOT REPORTED": "other",
    "UNKNOWN": "other",
}
#: CDISC controlled terminology for ETHNIC (codelist C66790) and the engine's names.
CDISC_ETHNICITY: dict[str, str] = {
    "HISPANIC OR LATINO": "hispanic",
    "NOT HISPANIC OR LATINO": "nonhispanic",
    "NOT REPORTED": "nonhispanic",
    "UNKNOWN": "nonhispanic",
}

EndpointKind = Literal["time_to_event", "binary", "observation"]
EventKind = Literal["state", "death", "condition_onset", "medication_start", "condition"]
IndexKind = Literal["enrollment", "diagnosis", "state"]

#: A sampling constraint on one baseline column: an inclusive numeric range (either end
#: may be infinite) or the set of allowed values (as text).
Constraint = tuple[float, float] | frozenset[str]


@dataclass(frozen=True)
class CodeSpec:
    """A coded concept in GMF's form (system names as in modules: SNOMED-CT, LOINC...)."""

    system: str
    code: str
    display: str = ""


@dataclass(frozen=True, eq=False)
class Criterion:
    """One eligibility criterion: a GMF condition evaluated on the patient at time zero."""

    name: str
    condition: Mapping[str, Any]


@dataclass(frozen=True)
class Eligibility:
    """Patients are eligible when every inclusion criterion holds and no exclusion does."""

    inclusion: tuple[Criterion, ...] = ()
    exclusion: tuple[Criterion, ...] = ()


@dataclass(frozen=True)
class IndexEvent:
    """Time zero. ``enrollment``: a calendar date (drawn uniformly in ``start``..``end``,
    the accrual period); ``diagnosis``: the patient is diagnosed with ``diagnosis`` at
    time zero (the condition is recorded active); ``state``: the module ``module`` starts
    in ``state`` at time zero instead of at its Initial state. All three happen on a date
    of the accrual period."""

    event: IndexKind
    start: dt.date
    end: dt.date
    diagnosis: CodeSpec | None = None
    module: str | None = None
    state: str | None = None


@dataclass(frozen=True)
class FollowUp:
    """How long each patient is followed after time zero (days), and what cuts it
    short: a data cut-off date (administrative censoring), loss to follow-up at a
    constant yearly rate, and (when asked) background mortality from the US life table."""

    days: float
    data_cutoff: dt.date | None = None
    dropout_per_year: float = 0.0
    background_mortality: bool = False


@dataclass(frozen=True, eq=False)
class EventSpec:
    """Something that can happen to a patient after time zero: entering a module state,
    death, the onset of a condition or the start of a medication with a code, or a GMF
    condition becoming true."""

    kind: EventKind
    state: str | None = None
    module: str | None = None
    code: CodeSpec | None = None
    condition: Mapping[str, Any] | None = None

    def describe(self) -> str:
        if self.kind == "death":
            return "DEATH"
        if self.kind == "state":
            return f"STATE {self.state}" + (f" ({self.module})" if self.module else "")
        if self.kind == "condition":
            return "CONDITION MET"
        assert self.code is not None
        what = "ONSET" if self.kind == "condition_onset" else "MEDICATION"
        return f"{what} {self.code.display or self.code.code}"


@dataclass(frozen=True, eq=False)
class Endpoint:
    """What is measured. ``time_to_event``: days from time zero to the first of
    ``events``, or to censoring. ``binary``: at ``at_days``, whether one of ``events``
    has happened, or whether the GMF ``condition`` holds. ``observation``: at ``at_days``,
    the latest value of the observation ``code``, the vital sign or the attribute."""

    paramcd: str
    name: str
    kind: EndpointKind
    events: tuple[EventSpec, ...] = ()
    at_days: float | None = None
    condition: Mapping[str, Any] | None = None
    code: CodeSpec | None = None
    vital_sign: str | None = None
    attribute: str | None = None
    unit: str = ""
    #: binary and observation endpoints of patients dead before ``at_days``: "missing",
    #: or for binary endpoints "yes"/"no" (e.g. "alive at one year" counts death as no).
    if_dead: str = "missing"
    primary: bool = False


@dataclass(frozen=True)
class ColumnMap:
    """A baseline column and how its values translate (``values``: raw text -> value)."""

    column: str
    values: Mapping[str, str] = field(default_factory=dict)

    def translate(self, raw: Any) -> str:
        text = _text(raw)
        return self.values.get(text, text)


@dataclass(frozen=True)
class BaselineItem:
    """A baseline column that puts something in the patient's record at time zero: an
    active condition or medication (when the column equals ``equals``), an observation
    with the column's number, or a vital sign."""

    column: str
    code: CodeSpec | None = None
    equals: str | None = None
    unit: str = ""
    vital_sign: str | None = None


@dataclass(frozen=True)
class BaselineSpec:
    """Where baseline covariates come from and what each column means."""

    source: Literal["file", "dataset"]
    path: Path | None = None
    dataset: str | None = None
    where: Mapping[str, frozenset[str]] = field(default_factory=dict)
    replace: bool = False
    #: A column that identifies rows in the source; never a covariate.
    id: str | None = None
    age: str = "age"
    sex: ColumnMap = field(default_factory=lambda: ColumnMap("sex"))
    race: ColumnMap | None = None
    ethnicity: ColumnMap | None = None
    #: Columns set as patient attributes; None: every column not used otherwise.
    attributes: tuple[str, ...] | None = None
    conditions: tuple[BaselineItem, ...] = ()
    medications: tuple[BaselineItem, ...] = ()
    observations: tuple[BaselineItem, ...] = ()
    vital_signs: tuple[BaselineItem, ...] = ()


@dataclass(frozen=True)
class ArmSpec:
    """The arm being built: its size, and its ARM / ARMCD / TRT01P names."""

    size: int
    name: str = "Synthetic control"
    code: str = "SYNCTRL"


@dataclass(frozen=True, eq=False)
class Protocol:
    """A validated trial protocol (see :func:`load_protocol`)."""

    path: Path
    name: str
    study_id: str
    description: str
    seed: int
    arm: ArmSpec
    baseline: BaselineSpec
    eligibility: Eligibility
    index: IndexEvent
    follow_up: FollowUp
    modules: tuple[str, ...]
    modules_dir: Path | None
    endpoints: tuple[Endpoint, ...]

    @property
    def primary(self) -> Endpoint:
        """The primary endpoint: the one marked ``primary``, else the first time-to-event
        endpoint, else the first endpoint."""
        for e in self.endpoints:
            if e.primary:
                return e
        for e in self.endpoints:
            if e.kind == "time_to_event":
                return e
        return self.endpoints[0]

    def event_modules(self) -> frozenset[str | None]:
        """Modules whose state histories endpoints read (None: any module)."""
        return frozenset(ev.module for e in self.endpoints for ev in e.events
                         if ev.kind == "state")


# ----------------------------------------------------------------------------- loading

def load_protocol(path: Path | str) -> Protocol:
    """Read and validate a protocol file. Raises :class:`ProtocolError` listing every
    problem (file, YAML path and line, what to do)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ProtocolError([Problem(str(path), "", f"cannot read the protocol file "
                                                    f"({exc.strerror}); check the path")]) from None
    return parse_protocol(text, path)


def parse_protocol(text: str, path: Path | str = "<protocol>") -> Protocol:
    """Validate protocol YAML ``text`` (read from ``path``, against which relative paths
    in it are resolved)."""
    import yaml

    path = Path(path)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ProtocolError([Problem(str(path), where, f"invalid YAML: {problem}; fix the "
                                                       "syntax there")]) from None
    v = _Validator(path, _lines(node))
    protocol = v.protocol(data)
    if v.problems:
        raise ProtocolError(v.problems)
    assert protocol is not None
    return protocol


def _lines(node: Any, prefix: str = "") -> dict[str, int]:
    """YAML path -> line (1-based) of every node, from the composed node tree."""
    import yaml

    out: dict[str, int] = {}
    if node is None:
        return out
    out[prefix] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for k, val in node.value:
            key = f"{prefix}.{k.value}" if prefix else str(k.value)
            out.update(_lines(val, key))
    elif isinstance(node, yaml.SequenceNode):
        for i, val in enumerate(node.value):
            out.update(_lines(val, f"{prefix}[{i}]"))
    return out


_PARAMCD = re.compile(r"^[A-Z][A-Z0-9]{0,7}$")
_ARMCD = re.compile(r"^[A-Za-z0-9_]{1,20}$")
_MISSING = object()


def _text(v: Any) -> str:
    """A cell or YAML scalar as the text it is compared by: integral floats lose their
    '.0' (a CSV column of codes read as numbers still matches "1")."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v).strip()


class _Validator:
    """Walks the parsed YAML, collecting every problem with its YAML path."""

    def __init__(self, path: Path, lines: dict[str, int]) -> None:
        self.path = path
        self.lines = lines
        self.problems: list[Problem] = []

    # ------------------------------------------------------------ helpers
    def err(self, where: str, message: str) -> None:
        line = self.lines.get(where)
        if line is None:  # a missing key: point at its parent
            parent = where.rsplit(".", 1)[0] if "." in where else ""
            line = self.lines.get(parent)
        place = f"{where} (line {line})" if line is not None and where else where
        self.problems.append(Problem(str(self.path), place, message))

    def mapping(self, v: Any, where: str, known: tuple[str, ...],
                required: tuple[str, ...] = ()) -> dict[str, Any] | None:
        if not isinstance(v, dict):
            self.err(where, f"must be a mapping with the keys {', '.join(known)}")
            return None
        for k in v:
            if k not in known:
                self.err(f"{where}.{k}" if where else str(k),
                         f"unknown key {k!r}; known here: {', '.join(known)}")
        for k in required:
            if k not in v:
                self.err(f"{where}.{k}" if where else k, f"missing; add '{k}:'")
        return v

    def string(self, v: Any, where: str, *, default: Any = _MISSING) -> str | None:
        if v is None and default is not _MISSING:
            return default
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return _text(v)
        if not isinstance(v, str) or not v.strip():
            self.err(where, "must be a non-empty text")
            return None
        return v.strip()

    def number(self, v: Any, where: str, *, low: float = -math.inf, high: float = math.inf,
               integer: bool = False) -> float | None:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or \
                (integer and not float(v).is_integer()) or not math.isfinite(v):
            self.err(where, "must be a whole number" if integer else "must be a number")
            return None
        if not (low <= v <= high):
            bounds = f"at least {low:g}" if high == math.inf else \
                f"between {low:g} and {high:g}"
            self.err(where, f"must be {bounds}, got {v:g}")
            return None
        return float(v)

    def boolean(self, v: Any, where: str, default: bool) -> bool:
        if v is None:
            return default
        if not isinstance(v, bool):
            self.err(where, "must be true or false")
            return default
        return v

    def date(self, v: Any, where: str) -> dt.date | None:
        if isinstance(v, dt.datetime):
            return v.date()
        if isinstance(v, dt.date):
            return v
        if isinstance(v, str):
            try:
                return dt.date.fromisoformat(v.strip())
            except ValueError:
                pass
        self.err(where, "must be a date YYYY-MM-DD")
        return None

    def duration(self, v: Any, where: str) -> float | None:
        """Days of a ``{quantity, unit}`` amount (GMF units: a year is 365 days, a month
        30, as in GMF 2 modules)."""
        m = self.mapping(v, where, ("quantity", "unit"), ("quantity", "unit"))
        if m is None or "quantity" not in m or "unit" not in m:
            return None
        q = self.number(m["quantity"], f"{where}.quantity", low=0)
        unit = m["unit"]
        if unit not in TIME_UNITS_DAYS:
            self.err(f"{where}.unit", f"unknown time unit {unit!r}; use one of "
                                      f"{', '.join(TIME_UNITS_DAYS)}")
            return None
        return None if q is None else q * TIME_UNITS_DAYS[unit]

    def code(self, v: Any, where: str) -> CodeSpec | None:
        m = self.mapping(v, where, ("system", "code", "display"), ("system", "code"))
        if m is None or "system" not in m or "code" not in m:
            return None
        system = self.string(m["system"], f"{where}.system")
        code = self.string(m["code"], f"{where}.code")
        display = self.string(m.get("display"), f"{where}.display", default="")
        if system is None or code is None:
            return None
        return CodeSpec(system, code, display or "")

    def gmf_condition(self, v: Any, where: str) -> Mapping[str, Any] | None:
        v = _yaml_booleans(v)
        found = condition_problems(v, where)
        for place, msg in found:
            self.err(place, msg)
        if found:
            return None
        for place, kind in _condition_types(v, where):
            if kind == "PriorState":
                self.err(place, "PriorState reads one module's own history, which a "
                                "protocol does not have; use an endpoint event "
                                "{state: NAME} instead")
        return v

    def items(self, v: Any, where: str) -> list[tuple[str, Any]]:
        if v is None:
            return []
        if not isinstance(v, list):
            self.err(where, "must be a list")
            return []
        return [(f"{where}[{i}]", x) for i, x in enumerate(v)]

    # ------------------------------------------------------------ sections
    def protocol(self, data: Any) -> Protocol | None:
        top = self.mapping(data, "", ("name", "study_id", "description", "seed", "arm",
                                      "baseline", "eligibility", "index", "follow_up",
                                      "standard_of_care", "endpoints"),
                           ("name", "arm", "baseline", "index", "follow_up",
                            "standard_of_care", "endpoints"))
        if top is None:
            return None
        name = self.string(top.get("name"), "name") if "name" in top else None
        study_id = self.string(top.get("study_id"), "study_id", default=None)
        if study_id is None and name:
            study_id = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").upper()[:20] or "STUDY"
        if study_id is not None and len(study_id) > 200:
            self.err("study_id", "must be at most 200 characters (SAS transport limit)")
        description = self.string(top.get("description"), "description", default="") or ""
        seed = 0
        if "seed" in top:
            s = self.number(top["seed"], "seed", low=0, integer=True)
            seed = int(s) if s is not None else 0
        arm = self.arm(top.get("arm"), "arm") if "arm" in top else None
        baseline = self.baseline(top.get("baseline"), "baseline") if "baseline" in top \
            else None
        eligibility = self.eligibility(top.get("eligibility"), "eligibility")
        index = self.index(top.get("index"), "index") if "index" in top else None
        follow = self.follow_up(top.get("follow_up"), "follow_up") if "follow_up" in top \
            else None
        modules, modules_dir = self.soc(top.get("standard_of_care"), "standard_of_care") \
            if "standard_of_care" in top else ((), None)
        endpoints = self.endpoints(top.get("endpoints"), "endpoints", follow) \
            if "endpoints" in top else ()
        if index is not None and index.event == "state" and modules and \
                index.module not in modules:
            self.err("index.module", f"module {index.module!r} is not one of the "
                                     f"standard_of_care modules ({', '.join(modules)}); add it")
        for i, e in enumerate(endpoints):
            for j, ev in enumerate(e.events):
                if ev.module is not None and modules and ev.module not in modules:
                    self.err(f"endpoints[{i}].events[{j}].module",
                             f"module {ev.module!r} is not one of the standard_of_care "
                             f"modules ({', '.join(modules)})")
        if self.problems or None in (name, study_id, arm, baseline, index, follow):
            return None
        assert name and study_id and arm and baseline and index and follow
        return Protocol(path=self.path, name=name, study_id=study_id, description=description,
                        seed=seed, arm=arm, baseline=baseline, eligibility=eligibility,
                        index=index, follow_up=follow, modules=modules,
                        modules_dir=modules_dir, endpoints=endpoints)

    def arm(self, v: Any, where: str) -> ArmSpec | None:
        m = self.mapping(v, where, ("size", "name", "code"), ("size",))
        if m is None:
            return None
        size = self.number(m["size"], f"{where}.size", low=1, integer=True) \
            if "size" in m else None
        name = self.string(m.get("name"), f"{where}.name", default="Synthetic control")
        code = self.string(m.get("code"), f"{where}.code", default="SYNCTRL")
        if code is not None and not _ARMCD.match(code):
            self.err(f"{where}.code", "must be 1-20 letters, digits or _ (SDTM ARMCD)")
            code = None
        if name is not None and len(name) > 200:
            self.err(f"{where}.name", "must be at most 200 characters")
            name = None
        if size is None or name is None or code is None:
            return None
        return ArmSpec(int(size), name, code)

    def column_map(self, v: Any, where: str) -> ColumnMap | None:
        if isinstance(v, str):
            return ColumnMap(v)
        m = self.mapping(v, where, ("column", "values"), ("column",))
        if m is None or "column" not in m:
            return None
        col = self.string(m["column"], f"{where}.column")
        values: dict[str, str] = {}
        raw = m.get("values") or {}
        if not isinstance(raw, dict):
            self.err(f"{where}.values", "must map raw values to values, e.g. {1: M, 2: F}")
        else:
            values = {_text(k): _text(x) for k, x in raw.items()}
        return None if col is None else ColumnMap(col, values)

    def baseline(self, v: Any, where: str) -> BaselineSpec | None:
        m = self.mapping(v, where, ("source", "replace", "id", "age", "sex", "race", "ethnicity",
                                    "attributes", "conditions", "medications",
                                    "observations", "vital_signs"),
                         ("source", "age", "sex"))
        if m is None:
            return None
        src = self.mapping(m.get("source"), f"{where}.source", ("file", "dataset", "where"))
        kind: str | None = None
        path = dataset = None
        where_filter: dict[str, frozenset[str]] = {}
        if src is not None:
            if ("file" in src) == ("dataset" in src):
                self.err(f"{where}.source", "give exactly one of 'file: PATH' (CSV or "
                                            "Parquet) or 'dataset: NAME' (a built-in data set)")
            elif "file" in src:
                f = self.string(src["file"], f"{where}.source.file")
                if f is not None:
                    kind = "file"
                    path = Path(f) if Path(f).is_absolute() else self.path.parent / f
            else:
                dataset = self.string(src["dataset"], f"{where}.source.dataset")
                kind = "dataset" if dataset else None
            w = src.get("where")
            if w is not None:
                if not isinstance(w, dict) or not w:
                    self.err(f"{where}.source.where", "must map columns to a value or a "
                                                      "list of values, e.g. {tx: 0}")
                else:
                    for col, val in w.items():
                        vals = val if isinstance(val, list) else [val]
                        where_filter[str(col)] = frozenset(_text(x) for x in vals)
        replace = self.boolean(m.get("replace"), f"{where}.replace", False)
        id_col = self.string(m.get("id"), f"{where}.id", default=None)
        age = self.string(m.get("age"), f"{where}.age") if "age" in m else None
        sex = self.column_map(m["sex"], f"{where}.sex") if "sex" in m else None
        if sex is not None and sex.values:
            bad = sorted(set(sex.values.values()) - {"M", "F"})
            if bad:
                self.err(f"{where}.sex.values", f"sex values must map to M or F, not "
                                                f"{', '.join(bad)}")
        race = self.column_map(m["race"], f"{where}.race") if m.get("race") else None
        if race is not None:
            bad = sorted(set(race.values.values()) - set(CDISC_RACE))
            if bad:
                self.err(f"{where}.race.values", f"unknown CDISC race {', '.join(bad)}; "
                                                 f"use {', '.join(CDISC_RACE)}")
        eth = self.column_map(m["ethnicity"], f"{where}.ethnicity") \
            if m.get("ethnicity") else None
        if eth is not None:
            bad = sorted(set(eth.values.values()) - set(CDISC_ETHNICITY))
            if bad:
                self.err(f"{where}.ethnicity.values", f"unknown CDISC ethnicity "
                                                      f"{', '.join(bad)}; use "
                                                      f"{', '.join(CDISC_ETHNICITY)}")
        attributes = None
        if "attributes" in m:
            attributes = tuple(s for p, x in self.items(m["attributes"], f"{where}.attributes")
                               if (s := self.string(x, p)) is not None)
        coded = {}
        for key in ("conditions", "medications"):
            coded[key] = tuple(it for p, x in self.items(m.get(key), f"{where}.{key}")
                               if (it := self.baseline_item(x, p, "coded")) is not None)
        observations = tuple(it for p, x in self.items(m.get("observations"),
                                                       f"{where}.observations")
                             if (it := self.baseline_item(x, p, "observation")) is not None)
        vitals = tuple(it for p, x in self.items(m.get("vital_signs"), f"{where}.vital_signs")
                       if (it := self.baseline_item(x, p, "vital")) is not None)
        if kind is None or age is None or sex is None:
            return None
        return BaselineSpec(source=kind, path=path, dataset=dataset,  # type: ignore[arg-type]
                            where=where_filter, replace=replace, id=id_col, age=age, sex=sex,
                            race=race,
                            ethnicity=eth, attributes=attributes,
                            conditions=coded["conditions"], medications=coded["medications"],
                            observations=observations, vital_signs=vitals)

    def baseline_item(self, v: Any, where: str, kind: str) -> BaselineItem | None:
        if kind == "coded":
            m = self.mapping(v, where, ("column", "equals", "code"), ("column", "code"))
        elif kind == "observation":
            m = self.mapping(v, where, ("column", "code", "unit"), ("column", "code"))
        else:
            m = self.mapping(v, where, ("column", "vital_sign", "unit"),
                             ("column", "vital_sign"))
        if m is None or "column" not in m:
            return None
        col = self.string(m["column"], f"{where}.column")
        code = self.code(m["code"], f"{where}.code") if "code" in m else None
        equals = _text(m["equals"]) if m.get("equals") is not None else None
        unit = self.string(m.get("unit"), f"{where}.unit", default="") or ""
        vital = self.string(m["vital_sign"], f"{where}.vital_sign") \
            if "vital_sign" in m else None
        if col is None or (kind != "vital" and code is None) or (kind == "vital" and not vital):
            return None
        return BaselineItem(col, code, equals, unit, vital)

    def criteria(self, v: Any, where: str) -> tuple[Criterion, ...]:
        out = []
        for p, x in self.items(v, where):
            if isinstance(x, dict) and "condition" in x and "condition_type" not in x:
                m = self.mapping(x, p, ("name", "condition"), ("condition",))
                if m is None:
                    continue
                name = self.string(m.get("name"), f"{p}.name", default=None)
                cond = self.gmf_condition(m["condition"], f"{p}.condition")
            else:
                name, cond = None, self.gmf_condition(x, p)
            if cond is not None:
                out.append(Criterion(name or _describe_condition(cond), cond))
        return tuple(out)

    def eligibility(self, v: Any, where: str) -> Eligibility:
        if v is None:
            return Eligibility()
        m = self.mapping(v, where, ("inclusion", "exclusion"))
        if m is None:
            return Eligibility()
        return Eligibility(self.criteria(m.get("inclusion"), f"{where}.inclusion"),
                           self.criteria(m.get("exclusion"), f"{where}.exclusion"))

    def index(self, v: Any, where: str) -> IndexEvent | None:
        m = self.mapping(v, where, ("event", "start", "end", "code", "module", "state"),
                         ("event", "start"))
        if m is None:
            return None
        event = m.get("event")
        if event not in ("enrollment", "diagnosis", "state"):
            self.err(f"{where}.event", f"must be enrollment, diagnosis or state, got {event!r}")
            event = None
        start = self.date(m["start"], f"{where}.start") if "start" in m else None
        end = self.date(m["end"], f"{where}.end") if "end" in m else start
        if start and end and end < start:
            self.err(f"{where}.end", f"the accrual period ends ({end}) before it starts "
                                     f"({start})")
        diagnosis = module = state = None
        if event == "diagnosis":
            if "code" not in m:
                self.err(f"{where}.code", "a diagnosis index needs the condition's code: "
                                          "{system: SNOMED-CT, code: ..., display: ...}")
            else:
                diagnosis = self.code(m["code"], f"{where}.code")
        if event == "state":
            for k in ("module", "state"):
                if k not in m:
                    self.err(f"{where}.{k}", f"a state index needs '{k}:' (the module and "
                                             "the state patients start in at time zero)")
            module = self.string(m.get("module"), f"{where}.module") if "module" in m else None
            state = self.string(m.get("state"), f"{where}.state") if "state" in m else None
        allowed = {"enrollment": (), "diagnosis": ("code",), "state": ("module", "state")}
        for k in ("code", "module", "state"):
            if k in m and event is not None and k not in allowed[event]:
                self.err(f"{where}.{k}", f"'{k}' does not go with event {event}")
        if event is None or start is None or end is None:
            return None
        return IndexEvent(event, start, end, diagnosis, module, state)

    def follow_up(self, v: Any, where: str) -> FollowUp | None:
        m = self.mapping(v, where, ("duration", "data_cutoff", "dropout",
                                    "background_mortality"), ("duration",))
        if m is None:
            return None
        days = self.duration(m["duration"], f"{where}.duration") if "duration" in m else None
        if days is not None and days <= 0:
            self.err(f"{where}.duration", "must be longer than zero")
            days = None
        cutoff = self.date(m["data_cutoff"], f"{where}.data_cutoff") \
            if m.get("data_cutoff") is not None else None
        rate = 0.0
        if m.get("dropout") is not None:
            d = self.mapping(m["dropout"], f"{where}.dropout", ("per_year",), ("per_year",))
            if d is not None and "per_year" in d:
                r = self.number(d["per_year"], f"{where}.dropout.per_year", low=0, high=0.99)
                rate = r if r is not None else 0.0
        mortality = self.boolean(m.get("background_mortality"),
                                 f"{where}.background_mortality", False)
        if days is None:
            return None
        return FollowUp(days, cutoff, rate, mortality)

    def soc(self, v: Any, where: str) -> tuple[tuple[str, ...], Path | None]:
        m = self.mapping(v, where, ("modules", "modules_dir"), ("modules",))
        if m is None:
            return (), None
        mods = tuple(s for p, x in self.items(m.get("modules"), f"{where}.modules")
                     if (s := self.string(x, p)) is not None)
        if "modules" in m and not mods:
            self.err(f"{where}.modules", "name at least one module the arm follows")
        mdir = None
        if m.get("modules_dir") is not None:
            s = self.string(m["modules_dir"], f"{where}.modules_dir")
            if s is not None:
                mdir = Path(s) if Path(s).is_absolute() else self.path.parent / s
        return mods, mdir

    def event(self, v: Any, where: str) -> EventSpec | None:
        m = self.mapping(v, where, ("state", "module", "death", "condition_onset",
                                    "medication_start", "condition"))
        if m is None:
            return None
        kinds = [k for k in ("state", "death", "condition_onset", "medication_start",
                             "condition") if k in m]
        if len(kinds) != 1:
            self.err(where, "give exactly one of state, death, condition_onset, "
                            "medication_start or condition")
            return None
        kind = kinds[0]
        if "module" in m and kind != "state":
            self.err(f"{where}.module", "'module' goes with 'state'")
        if kind == "state":
            st = self.string(m["state"], f"{where}.state")
            mod = self.string(m["module"], f"{where}.module") if "module" in m else None
            return EventSpec("state", state=st, module=mod) if st else None
        if kind == "death":
            if m["death"] is not True:
                self.err(f"{where}.death", "write 'death: true'")
                return None
            return EventSpec("death")
        if kind == "condition":
            cond = self.gmf_condition(m["condition"], f"{where}.condition")
            return EventSpec("condition", condition=cond) if cond is not None else None
        code = self.code(m[kind], f"{where}.{kind}")
        return EventSpec(kind, code=code) if code is not None else None  # type: ignore[arg-type]

    def endpoints(self, v: Any, where: str, follow: FollowUp | None) -> tuple[Endpoint, ...]:
        out: list[Endpoint] = []
        seen: set[str] = set()
        items = self.items(v, where)
        if not items and isinstance(v, list):
            self.err(where, "list at least one endpoint")
        for p, x in items:
            m = self.mapping(x, p, ("paramcd", "name", "type", "events", "at", "condition",
                                    "code", "vital_sign", "attribute", "unit", "if_dead",
                                    "primary"), ("paramcd", "type"))
            if m is None:
                continue
            paramcd = self.string(m.get("paramcd"), f"{p}.paramcd") if "paramcd" in m else None
            if paramcd is not None and not _PARAMCD.match(paramcd):
                self.err(f"{p}.paramcd", f"{paramcd!r} must be 1-8 capital letters or digits, "
                                         "starting with a letter (ADaM PARAMCD)")
                paramcd = None
            if paramcd in seen:
                self.err(f"{p}.paramcd", f"{paramcd!r} is used by another endpoint")
            seen.add(paramcd or "")
            kind = m.get("type")
            if kind not in ("time_to_event", "binary", "observation"):
                self.err(f"{p}.type", f"must be time_to_event, binary or observation, got "
                                      f"{kind!r}")
                continue
            name = self.string(m.get("name"), f"{p}.name", default=None) or paramcd or ""
            if len(name) > 200:
                self.err(f"{p}.name", "must be at most 200 characters (PARAM)")
            events = tuple(e for q, y in self.items(m.get("events"), f"{p}.events")
                           if (e := self.event(y, q)) is not None)
            at = self.duration(m["at"], f"{p}.at") if "at" in m else None
            if at is not None and follow is not None and at > follow.days + 1e-9:
                self.err(f"{p}.at", f"is after the end of follow-up ({follow.days:g} days); "
                                    "measure within follow-up")
            cond = self.gmf_condition(m["condition"], f"{p}.condition") \
                if "condition" in m else None
            code = self.code(m["code"], f"{p}.code") if "code" in m else None
            vital = self.string(m["vital_sign"], f"{p}.vital_sign") if "vital_sign" in m \
                else None
            attr = self.string(m["attribute"], f"{p}.attribute") if "attribute" in m else None
            unit = self.string(m.get("unit"), f"{p}.unit", default="") or ""
            if_dead = m.get("if_dead", "missing")
            allowed = ("missing", "yes", "no") if kind == "binary" else ("missing",)
            if if_dead not in allowed:
                self.err(f"{p}.if_dead", f"must be one of {', '.join(allowed)}")
            primary = self.boolean(m.get("primary"), f"{p}.primary", False)
            extra = {"time_to_event": ("at", "condition", "code", "vital_sign", "attribute"),
                     "binary": ("code", "vital_sign", "attribute"),
                     "observation": ("events", "condition")}[kind]
            for k in extra:
                if k in m:
                    self.err(f"{p}.{k}", f"'{k}' does not go with a {kind} endpoint")
            if kind == "time_to_event" and not events and "events" not in m:
                self.err(f"{p}.events", "a time_to_event endpoint needs 'events:' (a list, "
                                        "e.g. [{death: true}])")
            if kind in ("binary", "observation") and "at" not in m:
                self.err(f"{p}.at", f"a {kind} endpoint needs 'at: {{quantity, unit}}' (when "
                                    "it is measured, after time zero)")
            if kind == "binary" and ("events" in m) == ("condition" in m):
                self.err(p, "a binary endpoint needs exactly one of 'events:' (happened by "
                            "then) or 'condition:' (a GMF condition that holds then)")
            if kind == "observation" and sum(k in m for k in ("code", "vital_sign",
                                                             "attribute")) != 1:
                self.err(p, "an observation endpoint needs exactly one of 'code:', "
                            "'vital_sign:' or 'attribute:'")
            if paramcd is None:
                continue
            out.append(Endpoint(paramcd=paramcd, name=name, kind=kind, events=events,
                                at_days=at, condition=cond, code=code, vital_sign=vital,
                                attribute=attr, unit=unit, if_dead=str(if_dead),
                                primary=primary))
        if sum(e.primary for e in out) > 1:
            self.err(where, "mark at most one endpoint 'primary: true'")
        return tuple(out)


def _yaml_booleans(cond: Any) -> Any:
    """YAML reads an unquoted ``condition_type: True`` as a boolean; GMF means the
    condition type "True" (or "False")."""
    if isinstance(cond, list):
        return [_yaml_booleans(c) for c in cond]
    if not isinstance(cond, dict):
        return cond
    out = {k: _yaml_booleans(x) if k in ("conditions", "condition") else x
           for k, x in cond.items()}
    if isinstance(out.get("condition_type"), bool):
        out["condition_type"] = "True" if out["condition_type"] else "False"
    return out


def _condition_types(cond: Any, where: str) -> Iterator[tuple[str, str]]:
    if not isinstance(cond, dict):
        return
    kind = normalize_condition_type(str(cond.get("condition_type", "")))
    yield where, kind
    for i, sub in enumerate(cond.get("conditions") or []):
        yield from _condition_types(sub, f"{where}.conditions[{i}]")
    if "condition" in cond:
        yield from _condition_types(cond["condition"], f"{where}.condition")


def _describe_condition(cond: Mapping[str, Any]) -> str:
    """A short name for an unnamed criterion (CONSORT counts list criteria by name)."""
    kind = normalize_condition_type(str(cond.get("condition_type")))
    if kind == "Age":
        return f"age {cond['operator']} {cond['quantity']:g} {cond['unit']}"
    if kind == "Gender":
        return f"sex {cond['gender']}"
    if kind == "Attribute":
        return f"{cond['attribute']} {cond['operator']} {cond.get('value', '')}".strip()
    if kind in ("Observation", "VitalSign"):
        what = cond.get("vital_sign") or ",".join(str(c.get("code")) for c in
                                                  cond.get("codes") or [])
        return f"{what} {cond['operator']} {cond.get('value', '')}".strip()
    if kind.startswith("Active"):
        codes = ",".join(str(c.get("code")) for c in cond.get("codes") or [])
        return f"{kind} {codes or cond.get('referenced_by_attribute')}"
    return kind


# --------------------------------------------------------------------- sampling constraints

def sampling_constraints(protocol: Protocol) -> dict[str, Constraint]:
    """Constraints on baseline columns implied by the inclusion criteria, so that a
    baseline source draws only covariates that can be eligible instead of drawing
    blindly and rejecting: an Age, Gender, Attribute or Observation criterion on a
    column the baseline maps (alone or inside an ``And``) becomes a numeric range or a
    set of allowed values of that column. The constraints describe a superset of the
    eligible patients: every criterion is still checked on every generated patient.

    >>> import textwrap
    >>> p = parse_protocol(textwrap.dedent('''
    ...   name: x
    ...   arm: {size: 1}
    ...   baseline: {source: {file: b.csv}, age: AGE, sex: {column: SEX, values: {1: M, 2: F}}}
    ...   eligibility:
    ...     inclusion:
    ...       - {condition_type: Age, operator: ">=", quantity: 18, unit: years}
    ...       - {condition_type: Gender, gender: F}
    ...   index: {event: enrollment, start: 2024-01-01}
    ...   follow_up: {duration: {quantity: 30, unit: days}}
    ...   standard_of_care: {modules: [m]}
    ...   endpoints: [{paramcd: DTH, type: time_to_event, events: [{death: true}]}]
    ... '''))
    >>> c = sampling_constraints(p)
    >>> c["AGE"], sorted(c["SEX"])
    ((18.0, inf), ['2'])
    """
    b = protocol.baseline
    obs = {it.code.code: it.column for it in b.observations if it.code is not None}
    out: dict[str, Constraint] = {}

    def add(col: str, c: Constraint) -> None:
        old = out.get(col)
        if old is None:
            out[col] = c
        elif isinstance(old, tuple) and isinstance(c, tuple):
            out[col] = (max(old[0], c[0]), min(old[1], c[1]))
        elif isinstance(old, frozenset) and isinstance(c, frozenset):
            out[col] = old & c

    def walk(cond: Mapping[str, Any]) -> None:
        kind = normalize_condition_type(str(cond.get("condition_type")))
        if kind == "And":
            for sub in cond["conditions"]:
                walk(sub)
        elif kind == "Age" and cond.get("unit") == "years":
            r = _range(cond["operator"], float(cond["quantity"]), whole=True)
            if r is not None:
                add(b.age, r)
        elif kind == "Gender":
            raw = [k for k, x in b.sex.values.items() if x == cond["gender"]] \
                if b.sex.values else [str(cond["gender"])]
            add(b.sex.column, frozenset(raw))
        elif kind == "Attribute" and _is_column_attribute(b, str(cond["attribute"])):
            value = cond.get("value")
            op = cond["operator"]
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                r = _range(op, float(value), whole=False)
                if r is not None:
                    add(str(cond["attribute"]), r)
            elif isinstance(value, str) and op == "==":
                add(str(cond["attribute"]), frozenset({value}))
        elif kind == "Observation" and isinstance(cond.get("value"), (int, float)):
            cols = {obs[str(c["code"])] for c in cond.get("codes") or []
                    if str(c.get("code")) in obs}
            if len(cols) == 1:
                r = _range(cond["operator"], float(cond["value"]), whole=False)
                if r is not None:
                    add(cols.pop(), r)

    for crit in protocol.eligibility.inclusion:
        walk(crit.condition)
    return out


def _is_column_attribute(b: BaselineSpec, name: str) -> bool:
    used = {b.age, b.sex.column, b.id} | {c.column for c in (b.race, b.ethnicity) if c}
    return name not in used if b.attributes is None else name in b.attributes


def _range(op: str, q: float, *, whole: bool) -> tuple[float, float] | None:
    """The inclusive range of a column value ``x`` that can satisfy ``x op q``; with
    ``whole``, of a value whose whole part is compared (ages in years)."""
    inf = math.inf
    if whole:
        # floor(x) <= q  <=>  x < floor(q) + 1: the largest float below that bound.
        below = math.nextafter
        return {">=": (float(math.ceil(q)), inf), ">": (math.floor(q) + 1.0, inf),
                "<=": (-inf, below(math.floor(q) + 1.0, -inf)),
                "<": (-inf, below(float(math.ceil(q)), -inf)),
                "==": (q, below(q + 1.0, -inf))}.get(op)
    return {">=": (q, inf), ">": (q, inf), "<=": (-inf, q), "<": (-inf, q),
            "==": (q, q)}.get(op)
