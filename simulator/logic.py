"""GMF conditions, compiled once per module into small closures.

Each condition becomes a :class:`Cond`: ``test(run, t)`` answers it for a module run at clock
time ``t``; ``deps`` names what it reads (attribute names and the person's watch keys), so a
Guard can sleep until one of them changes; ``next_change(run, t)`` gives the next clock time
at which the answer can change by the passing of time alone (a birthday, a date, the end of
a PriorState window), or ``inf``.
"""

from __future__ import annotations

import datetime as dt
import math
import operator
from collections.abc import Callable
from typing import Any

from modules.errors import SimulationError
from modules.gmf import TIME_UNITS_DAYS, normalize_condition_type
from simulator.person import (
    WATCH_ACTIVE,
    WATCH_OBSERVATION,
    WATCH_SYMPTOM,
    WATCH_VITAL,
    active_key,
    day_date,
    day_of,
)
from simulator.record import Code, Entry

__all__ = ["Cond", "compile_condition", "compare", "TRUE"]

INF = math.inf
Test = Callable[[Any, float], bool]
NextChange = Callable[[Any, float], float]


def _never(run: Any, t: float) -> float:
    return INF


class Cond:
    """A compiled condition."""

    __slots__ = ("test", "deps", "next_change", "timed")

    def __init__(self, test: Test, deps: frozenset[str] = frozenset(),
                 next_change: NextChange | None = None) -> None:
        self.test = test
        self.deps = deps
        self.timed = next_change is not None
        self.next_change = next_change or _never


TRUE = Cond(lambda run, t: True)
FALSE = Cond(lambda run, t: False)


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    ">=": operator.ge,
    ">": operator.gt,
    "!=": operator.ne,
}


def compare(lhs: Any, rhs: Any, op: str) -> bool:
    """Compare a patient's value with a module's value the way GMF does.

    Numbers compare numerically, strings lexicographically, booleans by equality, codes by
    code value. A missing value (None) is false for every operator but ``is nil``. Mixing a
    number and a string is an error (raised as TypeError for the caller to name the state).
    """
    if op == "is nil":
        return lhs is None
    if op == "is not nil":
        return lhs is not None
    if lhs is None:
        return False
    fn = _OPS[op]
    if _num(lhs) and _num(rhs):
        return fn(lhs, rhs)
    if isinstance(lhs, str) and isinstance(rhs, str):
        return fn(lhs, rhs)
    if isinstance(lhs, bool) or isinstance(rhs, bool):
        if op not in ("==", "!="):
            raise TypeError(f"cannot compare booleans with {op!r}")
        return fn(bool(lhs), bool(rhs)) if isinstance(lhs, bool) and isinstance(rhs, bool) \
            else fn(lhs, rhs)
    if isinstance(lhs, (Code, Entry)) or isinstance(rhs, (Code, Entry, dict)):
        a = _code_value(lhs)
        b = _code_value(rhs)
        return fn(a, b)
    raise TypeError(f"cannot compare {type(lhs).__name__} {lhs!r} with "
                    f"{type(rhs).__name__} {rhs!r}")


def _code_value(v: Any) -> Any:
    if isinstance(v, Code):
        return v.code
    if isinstance(v, Entry):
        return v.codes[0].code if v.codes else None
    if isinstance(v, dict):
        return str(v.get("code"))
    return v


def _fail(run: Any, message: str) -> SimulationError:
    return SimulationError(f"module {run.module_name!r}, state {run.state_name!r}: {message}")


# ---------------------------------------------------------------------------- builders

def compile_condition(spec: dict[str, Any]) -> Cond:
    """Compile a (validated) GMF condition object."""
    kind = normalize_condition_type(spec["condition_type"])
    return _BUILDERS[kind](spec)


def _and(spec: dict[str, Any]) -> Cond:
    subs = [compile_condition(c) for c in spec["conditions"]]
    tests = [s.test for s in subs]

    def test(run: Any, t: float) -> bool:
        for f in tests:
            if not f(run, t):
                return False
        return True
    return Cond(test, _union(subs), _min_next(subs))


def _or(spec: dict[str, Any]) -> Cond:
    subs = [compile_condition(c) for c in spec["conditions"]]
    tests = [s.test for s in subs]

    def test(run: Any, t: float) -> bool:
        for f in tests:
            if f(run, t):
                return True
        return False
    return Cond(test, _union(subs), _min_next(subs))


def _not(spec: dict[str, Any]) -> Cond:
    sub = compile_condition(spec["condition"])
    f = sub.test
    return Cond(lambda run, t: not f(run, t), sub.deps, sub.next_change if sub.timed else None)


def _at_least(spec: dict[str, Any], at_most: bool = False) -> Cond:
    subs = [compile_condition(c) for c in spec["conditions"]]
    tests = [s.test for s in subs]
    bound = int(spec["maximum" if at_most else "minimum"])

    def test(run: Any, t: float) -> bool:
        n = sum(1 for f in tests if f(run, t))
        return n <= bound if at_most else n >= bound
    return Cond(test, _union(subs), _min_next(subs))


def _union(subs: list[Cond]) -> frozenset[str]:
    out: frozenset[str] = frozenset()
    for s in subs:
        out |= s.deps
    return out


def _min_next(subs: list[Cond]) -> NextChange | None:
    timed = [s.next_change for s in subs if s.timed]
    if not timed:
        return None
    if len(timed) == 1:
        return timed[0]
    return lambda run, t: min(f(run, t) for f in timed)


def _gender(spec: dict[str, Any]) -> Cond:
    g = spec["gender"]
    return Cond(lambda run, t: run.person.attributes.get("gender") == g, frozenset({"gender"}))


def _race(spec: dict[str, Any]) -> Cond:
    race = str(spec["race"]).lower()
    if race == "hispanic":  # older modules treat Hispanic as a race; it is an ethnicity
        return Cond(lambda run, t: str(run.person.attributes.get("ethnicity", "")).lower()
                    == "hispanic", frozenset({"ethnicity"}))
    return Cond(lambda run, t: str(run.person.attributes.get("race", "")).lower() == race,
                frozenset({"race"}))


def _ses(spec: dict[str, Any]) -> Cond:
    cat = spec["category"]
    return Cond(lambda run, t: run.person.attributes.get("socioeconomic_category") == cat,
                frozenset({"socioeconomic_category"}))


def _age(spec: dict[str, Any]) -> Cond:
    op = _OPS[spec["operator"]]
    q = spec["quantity"]
    unit = spec["unit"]
    lo = math.floor(q)
    marks = sorted({lo, lo + 1, math.ceil(q)})
    if unit == "years":
        def test(run: Any, t: float) -> bool:
            return op(run.person.age_years(t), q)

        def next_change(run: Any, t: float) -> float:
            for m in marks:
                b = run.person.birthday(m)
                if b > t:
                    return b
            return INF
    elif unit == "months":
        def test(run: Any, t: float) -> bool:
            return op(run.person.age_months(t), q)

        def next_change(run: Any, t: float) -> float:
            for m in marks:
                b = run.person.month_birthday(m)
                if b > t:
                    return b
            return INF
    else:
        step = TIME_UNITS_DAYS[unit]

        def test(run: Any, t: float) -> bool:
            return op(math.floor((t - run.person.birth) / step), q)

        def next_change(run: Any, t: float) -> float:
            for m in marks:
                b = run.person.birth + m * step
                if b > t:
                    return b
            return INF
    return Cond(test, frozenset(), next_change)


def _date(spec: dict[str, Any]) -> Cond:
    op = _OPS[spec["operator"]]
    if "year" in spec:
        year = int(spec["year"])
        marks = (day_of(dt.date(year, 1, 1)), day_of(dt.date(year + 1, 1, 1)))

        def test(run: Any, t: float) -> bool:
            return op(day_date(t).year, year)
    elif "month" in spec:
        month = int(spec["month"])

        def test(run: Any, t: float) -> bool:
            return op(day_date(t).month, month)

        def next_month(run: Any, t: float) -> float:
            d = day_date(t)
            y, m = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
            return day_of(dt.date(y, m, 1))
        return Cond(test, frozenset(), next_month)
    else:
        d = spec["date"]
        when = day_of(dt.datetime(int(d["year"]), int(d["month"]), int(d["day"]),
                                  int(d.get("hour", 0)), int(d.get("minute", 0)),
                                  int(d.get("second", 0)), int(d.get("millisecond", 0)) * 1000))
        marks = (when, when + 1.0 / 86400000.0)

        def test(run: Any, t: float) -> bool:
            return op(t, when)

    def next_change(run: Any, t: float) -> float:
        for m in marks:
            if m > t:
                return m
        return INF
    return Cond(test, frozenset(), next_change)


def _symptom(spec: dict[str, Any]) -> Cond:
    sym, op, value = spec["symptom"], spec["operator"], spec["value"]
    return Cond(lambda run, t: compare(run.person.symptom_level(sym), value, op),
                frozenset({WATCH_SYMPTOM}))


def _observation(spec: dict[str, Any]) -> Cond:
    op = spec["operator"]
    value = spec.get("value_code", spec.get("value"))
    if isinstance(value, dict):
        value = Code(str(value.get("system", "")), str(value.get("code")), str(value.get("display", "")))
    codes = [str(c["code"]) for c in spec.get("codes") or []]
    attr = spec.get("referenced_by_attribute")

    def latest(run: Any) -> Any:
        if attr is not None:
            return run.person.attributes.get(attr)
        obs = run.person.latest_observation
        for c in codes:
            o = obs.get(c)
            if o is not None:
                return o
        return None

    def test(run: Any, t: float) -> bool:
        o = latest(run)
        if op in ("is nil", "is not nil"):
            return compare(o, None, op)
        if o is None:
            raise _fail(run, f"Observation condition needs an observation {codes or attr} "
                             f"that the patient does not have yet")
        v = getattr(o, "value", o)
        try:
            if isinstance(value, Code):
                return compare(v.code if isinstance(v, Code) else v, value.code, op)
            return compare(v, value, op)
        except TypeError as exc:
            raise _fail(run, f"Observation condition: {exc}") from None
    deps = {WATCH_OBSERVATION} | ({attr} if attr else set())
    return Cond(test, frozenset(deps))


def _vital(spec: dict[str, Any]) -> Cond:
    name, op, value = spec["vital_sign"], spec["operator"], spec["value"]

    def test(run: Any, t: float) -> bool:
        v = run.person.vitals.get(name)
        if v is None:
            raise _fail(run, f"Vital Sign condition reads {name!r}, which was never set")
        return compare(v, value, op)
    return Cond(test, frozenset({WATCH_VITAL}))


def _attribute(spec: dict[str, Any]) -> Cond:
    name, op = spec["attribute"], spec["operator"]
    value = spec.get("value")
    deps = frozenset({name})
    if op == "is nil":
        return Cond(lambda run, t: run.person.attributes.get(name) is None, deps)
    if op == "is not nil":
        return Cond(lambda run, t: run.person.attributes.get(name) is not None, deps)

    def general(run: Any, v: Any) -> bool:
        try:
            return compare(v, value, op)
        except TypeError as exc:
            raise _fail(run, f"Attribute condition on {name!r}: {exc}") from None

    # The common cases answered without compare(): a missing attribute (false) and a value
    # of the module's own type (what compare does with it, in one type check); anything
    # else goes through compare, errors included.
    fn = _OPS[op]
    kind = type(value)
    if kind is bool:
        same: tuple[type, ...] = (bool,) if op in ("==", "!=") else ()
    elif kind is str:
        same = (str,)
    elif kind is int or kind is float:
        same = (int, float)
    else:
        same = ()

    def test(run: Any, t: float) -> bool:
        v = run.person.attributes.get(name)
        if type(v) in same:
            return fn(v, value)
        return False if v is None else general(run, v)
    return Cond(test, deps)


def _prior_state(spec: dict[str, Any]) -> Cond:
    name = spec["name"]
    since = spec.get("since")
    within = spec.get("within")
    window = within["quantity"] * TIME_UNITS_DAYS[within["unit"]] if within else None

    def test(run: Any, t: float) -> bool:
        seq = run.last_seq.get(name)
        if seq is None:
            return False
        if since is not None:
            s = run.last_seq.get(since)
            if s is not None and s > seq:
                return False
        if window is not None:
            ex = run.last_exit.get(name)
            if ex is not None and ex <= t - window:
                return False
        return True

    next_change = None
    if window is not None:
        def next_change(run: Any, t: float) -> float:
            ex = run.last_exit.get(name)
            return ex + window if ex is not None and ex + window > t else INF
    return Cond(test, frozenset(), next_change)


def _active(kind: str) -> Callable[[dict[str, Any]], Cond]:
    def build(spec: dict[str, Any]) -> Cond:
        attr = spec.get("referenced_by_attribute")
        if attr is not None:
            def test(run: Any, t: float) -> bool:
                e = run.person.attributes.get(attr)
                if not isinstance(e, Entry) or not e.codes:
                    return False
                return bool(run.person.active[kind].get(e.codes[0].code))
            return Cond(test, frozenset({WATCH_ACTIVE, attr}))
        codes = [str(c["code"]) for c in spec["codes"]]

        def test_codes(run: Any, t: float) -> bool:
            active = run.person.active[kind]
            for c in codes:
                if active.get(c):
                    return True
            return False
        return Cond(test_codes, frozenset(active_key(c) for c in codes))
    return build


_BUILDERS: dict[str, Callable[[dict[str, Any]], Cond]] = {
    "And": _and,
    "Or": _or,
    "Not": _not,
    "AtLeast": _at_least,
    "AtMost": lambda s: _at_least(s, at_most=True),
    "True": lambda s: TRUE,
    "False": lambda s: FALSE,
    "Gender": _gender,
    "Race": _race,
    "SocioeconomicStatus": _ses,
    "Age": _age,
    "Date": _date,
    "Symptom": _symptom,
    "Observation": _observation,
    "VitalSign": _vital,
    "Attribute": _attribute,
    "PriorState": _prior_state,
    "ActiveCondition": _active("conditions"),
    "ActiveAllergy": _active("allergies"),
    "ActiveMedication": _active("medications"),
    "ActiveCarePlan": _active("careplans"),
}
