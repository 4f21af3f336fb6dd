"""GMF state semantics: each state type compiled into a ``process(run, t)`` function.

``process`` returns None when the state is done and its transition should be taken now, a
SimPy event to wait for, or :data:`TERMINAL`. After the wait, a state whose ``recheck`` is
set (Guard, wellness Encounter) is processed again; the others (Delay, Procedure) are done.

The semantics are restated from the GMF documentation and the behaviour Synthea's engine
tests assert (../shared/synthea/EXPECTED.md); the code is our own. Registry: user code can
add a state type with :func:`register_state_kind`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from modules.errors import ConfigError, ModuleError, SimulationError
from simulator.expressions import compile_expression
from simulator.logic import compile_condition
from simulator.person import WATCH_OBSERVATION, Person
from simulator.record import (
    Allergy,
    CarePlan,
    Code,
    Condition,
    Device,
    Encounter,
    Entry,
    ImagingStudy,
    Immunization,
    Medication,
    Observation,
    Procedure,
    Report,
    Supply,
)
from simulator.timing import compile_distribution, compile_duration

__all__ = [
    "CompiledState", "no_work", "TERMINAL", "compile_state", "register_state_kind", "codes_of"]

TERMINAL = object()
Process = Callable[[Any, float], Any]


class CompiledState:
    """An immutable compiled state. ``next`` picks the following state's name."""

    __slots__ = ("name", "type", "process", "next", "recheck", "submodule", "spec", "skip",
                 "plain", "following", "tracked", "jump")

    def __init__(self, name: str, stype: str, process: Process, nxt: Any, spec: dict[str, Any],
                 recheck: bool = False, submodule: str | None = None) -> None:
        self.name = name
        self.type = stype
        self.process = process
        self.next = nxt
        self.recheck = recheck
        self.submodule = submodule
        self.spec = spec
        #: For a Delay that loops to itself on the clock alone: ``skip(run, t)`` returns
        #: (the time the loop is left, the state it goes to), so the engine waits once.
        self.skip: Any = None
        #: Whether the state does nothing but move on (no work, no submodule, no loop
        #: skip): the engine enters and leaves it in one step. Set once compiled.
        self.plain = False
        #: For a ``direct_transition``, the compiled state it names, set once the whole
        #: module is compiled: the engine goes there without calling ``next`` (half the
        #: transitions of Synthea's library are direct).
        self.following: CompiledState | None = None
        #: Whether a PriorState condition anywhere in the library names this state: only
        #: then are its entry and exit noted when a run keeps no history (see ``jump``).
        self.tracked = True
        #: Where the engine goes from here when nothing is recorded: ``following``, past
        #: the plain, untracked states with a direct transition that come after it (no one
        #: can tell they were passed through). Set once the whole module is compiled.
        self.jump: CompiledState | None = None


def codes_of(spec: Any) -> tuple[Code, ...]:
    """Codes of a GMF ``codes`` list (numeric codes become strings)."""
    if isinstance(spec, dict):
        spec = [spec]
    return tuple(Code(str(c.get("system", "")), str(c.get("code", "")), str(c.get("display", "")))
                 for c in spec or ())


def _fail(run: Any, message: str) -> SimulationError:
    return SimulationError(f"module {run.module_name!r}, state {run.state_name!r}: {message}")


def no_work(run: Any, t: float) -> None:
    """The process of a state that does nothing but move on (Initial, Simple, Physiology):
    the engine does not call it."""
    return None


# --------------------------------------------------------------------------- helpers

def _encounter(run: Any, t: float) -> Encounter:
    """The encounter an entry is recorded in: the module's current one, else the latest in
    the record, else an implicit wellness encounter at ``t``."""
    enc = run.ctx.encounter
    if enc is not None:
        return enc
    rec = run.person.record
    if rec.encounters:
        return rec.encounters[-1]
    enc = Encounter("implicit", t, (Code("SNOMED-CT", "185349003", "Encounter for check up"),),
                    "wellness")
    enc.end(t)
    rec.encounters.append(enc)
    return enc


def _reason(run: Any, name: Any) -> Code | None:
    """A ``reason`` field: the name of a state that recorded an entry, or an attribute
    holding one."""
    if not name:
        return None
    e = run.ctx.entries.get(name)
    if e is None:
        e = run.person.attributes.get(name)
    if isinstance(e, Entry) and e.codes:
        return e.codes[0]
    if isinstance(e, Code):
        return e
    return None


def _activate(person: Person, kind: str, entry: Entry) -> None:
    active = person.active[kind]
    for c in entry.codes:
        active[c.code].append(entry)
    person.notify_active(entry.codes)


def _deactivate(person: Person, kind: str, entry: Entry, t: float) -> None:
    if entry.stop is None:
        entry.stop = t
    active = person.active[kind]
    for c in entry.codes:
        lst = active.get(c.code)
        if lst and entry in lst:
            lst.remove(entry)
            if not lst:
                del active[c.code]
    person.notify_active(entry.codes)


def _already_active(person: Person, kind: str, codes: tuple[Code, ...]) -> Entry | None:
    active = person.active[kind]
    for c in codes:
        lst = active.get(c.code)
        if lst:
            return lst[-1]
    return None


def _assign(run: Any, spec: dict[str, Any], entry: Any) -> None:
    attr = spec.get("assign_to_attribute")
    if attr:
        run.person.set_attribute(attr, entry)


def _ender(kind: str, ref_key: str) -> Callable[[str, dict[str, Any], str], Process]:
    """ConditionEnd / MedicationEnd / CarePlanEnd / AllergyEnd / DeviceEnd."""

    def build(name: str, spec: dict[str, Any], where: str) -> Process:
        ref = spec.get(ref_key)
        attr = spec.get("referenced_by_attribute")
        codes = codes_of(spec.get("codes"))

        def process(run: Any, t: float) -> None:
            person = run.person
            targets: list[Entry] = []
            if ref is not None:
                e = run.ctx.entries.get(ref)
                if e is not None:
                    targets.append(e)
            elif attr is not None:
                e = person.attributes.get(attr)
                if isinstance(e, Entry):
                    targets.append(e)
            else:
                for c in codes:
                    targets.extend(person.active[kind].get(c.code, ()))
            for e in targets:
                run.ctx.forget_pending(e)
                _deactivate(person, kind, e, t)
            return None
        return process
    return build


# --------------------------------------------------------------------------- values

def _value_source(name: str, spec: dict[str, Any], where: str) -> Callable[[Any, float], Any]:
    """The value of an Observation / VitalSign / Symptom / SetAttribute-like spec."""
    if "exact" in spec:
        ex = spec["exact"]
        v = ex.get("quantity", ex.get("value")) if isinstance(ex, dict) else ex
        return lambda run, t: v
    if "range" in spec:
        r = spec["range"]
        lo, hi = float(r["low"]), float(r["high"])
        dec = r.get("decimals")

        def ranged(run: Any, t: float) -> float:
            x = lo + (hi - lo) * run.person.uniform()
            return round(x, int(dec)) if dec is not None else x
        return ranged
    if "distribution" in spec and isinstance(spec["distribution"], dict):
        dist = compile_distribution(spec["distribution"])
        return lambda run, t: dist(run.person.uniform)
    if "value_code" in spec:
        c = codes_of(spec["value_code"])[0]
        return lambda run, t: c
    if "attribute" in spec:
        a = spec["attribute"]

        def from_attr(run: Any, t: float) -> Any:
            v = run.person.attributes.get(a)
            if v is None:
                raise _fail(run, f"reads attribute {a!r}, which is not set")
            return v
        return from_attr
    if "vital_sign" in spec:
        vs = spec["vital_sign"]

        def from_vital(run: Any, t: float) -> float:
            v = run.person.vitals.get(vs)
            if v is None:
                raise _fail(run, f"reads vital sign {vs!r}, which was never set")
            return v
        return from_vital
    if "expression" in spec:
        ev = compile_expression(spec["expression"], where)
        return lambda run, t: ev(run.person, t)
    if "sampled_data" in spec:
        sd = spec["sampled_data"]
        attrs = list(sd.get("attributes") or [])

        def sampled(run: Any, t: float) -> tuple[float, ...]:
            series = []
            for a in attrs:
                v = run.person.attributes.get(a)
                if not isinstance(v, (list, tuple)):
                    raise _fail(run, f"sampled_data reads attribute {a!r}, which is not a series")
                series.append(v)
            # Samples are interleaved across the series, as FHIR SampledData expects.
            return tuple(x for group in zip(*series, strict=False) for x in group)
        return sampled
    if "attachment" in spec:
        att = spec["attachment"]
        return lambda run, t: att
    return lambda run, t: None


def _parse_series(text: Any, attr: str) -> tuple[float, ...]:
    out = []
    for tok in str(text).split():
        try:
            out.append(float(tok))
        except ValueError:
            raise ModuleError(f'unable to parse "{tok}" in SetAttribute state for "{attr}"') from None
    return tuple(out)


# --------------------------------------------------------------------------- builders

def _set_attribute(name: str, spec: dict[str, Any], where: str) -> Process:
    attr = spec["attribute"]
    if "value" in spec:
        v = spec["value"]
        get: Callable[[Any, float], Any] = lambda run, t: v  # noqa: E731
    elif "value_code" in spec:
        c = codes_of(spec["value_code"])[0]
        get = lambda run, t: c  # noqa: E731
    elif "value_attribute" in spec:
        src = spec["value_attribute"]
        get = lambda run, t: run.person.attributes.get(src)  # noqa: E731
    elif "series_data" in spec:
        series = _parse_series(spec["series_data"], attr)
        get = lambda run, t: series  # noqa: E731
    elif any(k in spec for k in ("range", "distribution", "expression")):
        # "attribute" names the target here, not a value source
        get = _value_source(name, {k: v for k, v in spec.items() if k != "attribute"}, where)
    else:
        get = lambda run, t: None  # noqa: E731  # no value: remove the attribute

    def process(run: Any, t: float) -> None:
        run.person.set_attribute(attr, get(run, t))
    return process


def _counter(name: str, spec: dict[str, Any], where: str) -> Process:
    attr = spec["attribute"]
    amount = float(spec.get("amount", 1))
    if spec["action"] == "decrement":
        amount = -amount

    def process(run: Any, t: float) -> None:
        cur = run.person.attributes.get(attr, 0.0)
        if not isinstance(cur, (int, float)) or isinstance(cur, bool):
            raise _fail(run, f"Counter on attribute {attr!r}, which holds {cur!r}")
        run.person.set_attribute(attr, float(cur) + amount)
    return process


def _delay(name: str, spec: dict[str, Any], where: str) -> Process:
    dur = compile_duration(spec)
    assert dur is not None

    def process(run: Any, t: float) -> Any:
        return run.env.timeout(dur(run.person.uniform))
    return process


def _guard(name: str, spec: dict[str, Any], where: str) -> Process:
    cond = compile_condition(spec["allow"])
    test = cond.test
    deps = cond.deps
    timed = cond.timed
    next_change = cond.next_change

    def process(run: Any, t: float) -> Any:
        if test(run, t):
            return None
        person = run.person
        env = run.env
        wake = env.event()
        for key in deps:
            person.watch(key, wake)
        if timed:
            at = next_change(run, t)
            if at != math.inf:
                tm = env.timeout(max(0.0, at - t))
                tm.callbacks.append(lambda _ev, w=wake: None if w.triggered else w.succeed())
        return wake
    return process


def _encounter_state(name: str, spec: dict[str, Any], where: str) -> Process:
    if spec.get("wellness"):
        def wellness(run: Any, t: float) -> Any:
            person = run.person
            visit = person.wellness_visit
            if visit is not None and visit.open and run.ctx.seen_visit is not visit:
                run.ctx.seen_visit = visit
                run.ctx.encounter = visit.encounter
                run.ctx.record_pending(name, t)
                _assign(run, spec, visit.encounter)
                return None
            return person.next_wellness
        return wellness

    cls = str(spec["encounter_class"])
    codes = codes_of(spec.get("codes"))
    reason = spec.get("reason")

    assign = spec.get("assign_to_attribute")

    def process(run: Any, t: float) -> None:
        enc = Encounter(name, t, codes, cls, _reason(run, reason) if reason else None)
        run.person.record.encounters.append(enc)
        ctx = run.ctx
        ctx.encounter = enc
        if ctx.pending:
            ctx.record_pending(name, t)
        if assign:
            run.person.set_attribute(assign, enc)
        return None
    return process


def _encounter_end(name: str, spec: dict[str, Any], where: str) -> Process:
    disposition = codes_of(spec["discharge_disposition"])[0] \
        if spec.get("discharge_disposition") else None

    def process(run: Any, t: float) -> None:
        enc = run.ctx.encounter
        # Scheduled wellness visits belong to the schedule, which closes them itself.
        if enc is not None and not enc.scheduled and not enc.ended:
            enc.discharge = disposition
            enc.end(t)
        run.ctx.encounter = None
        return None
    return process


def _onset(kind: str) -> Callable[[str, dict[str, Any], str], Process]:
    def build(name: str, spec: dict[str, Any], where: str) -> Process:
        codes = codes_of(spec["codes"])
        target = spec.get("target_encounter") or ""
        if kind == "allergies":
            reactions = spec.get("reactions") or []
            atype = spec.get("allergy_type", spec.get("allergyType", "allergy"))
            category = spec.get("category", "")

        def make(run: Any, t: float) -> Entry:
            if kind == "conditions":
                return Condition(name, t, codes, None)
            picked = []
            for r in reactions:
                sev = _pick_severity(run, r.get("possible_severities") or {})
                if sev is not None:
                    picked.append((codes_of(r["reaction"])[0], sev))
            return Allergy(name, t, codes, None, atype, category, picked)

        def record(run: Any, t: float, provisional: Entry | None = None) -> Entry:
            person = run.person
            existing = _already_active(person, kind, codes)
            if existing is not None:  # the same code is not coded twice
                entry = existing
            else:
                entry = provisional or make(run, t)
                entry.start = t
                entry.encounter = _encounter(run, t)
                getattr(person.record, kind).append(entry)
                _activate(person, kind, entry)
            run.ctx.entries[name] = entry
            _assign(run, spec, entry)
            return entry

        def process(run: Any, t: float) -> None:
            enc = run.ctx.encounter
            if not target or (enc is not None and enc.state == target):
                record(run, t)
            else:
                entry = make(run, t)
                run.ctx.entries[name] = entry
                _assign(run, spec, entry)  # provisional, not yet in the record
                run.ctx.pending.append((target, entry, record, run))
            return None
        return process
    return build


def _pick_severity(run: Any, sevs: Any) -> str | None:
    """One severity from ``[{level, value}]`` weights (normalised); "none" means the
    reaction does not occur."""
    pairs = [(str(s.get("level", "")), float(s.get("value", 0.0))) for s in sevs] \
        if isinstance(sevs, list) else [(str(k), float(v)) for k, v in sevs.items()]
    total = sum(p for _, p in pairs)
    if total <= 0:
        return None
    u = run.person.uniform() * total
    acc = 0.0
    for sev, p in pairs:
        acc += p
        if u < acc:
            return None if sev.lower() == "none" else sev.upper()
    return None


def _medication(name: str, spec: dict[str, Any], where: str) -> Process:
    codes = codes_of(spec["codes"])
    reason = spec.get("reason")
    administration = bool(spec.get("administration"))
    chronic = bool(spec.get("chronic"))
    prescription = spec.get("prescription")

    def process(run: Any, t: float) -> None:
        person = run.person
        existing = None if administration else _already_active(person, "medications", codes)
        if existing is not None:
            entry = existing
        else:
            entry = Medication(name, t, codes, _encounter(run, t), _reason(run, reason),
                               administration, chronic, prescription)
            person.record.medications.append(entry)
            if administration:
                entry.stop = t
            else:
                _activate(person, "medications", entry)
        run.ctx.entries[name] = entry
        _assign(run, spec, entry)
        return None
    return process


def _careplan(name: str, spec: dict[str, Any], where: str) -> Process:
    codes = codes_of(spec["codes"])
    activities = codes_of(spec.get("activities"))
    goals = tuple(spec.get("goals") or ())
    reason = spec.get("reason")

    def process(run: Any, t: float) -> None:
        person = run.person
        existing = _already_active(person, "careplans", codes)
        if existing is not None:
            entry = existing
        else:
            r = _reason(run, reason)
            entry = CarePlan(name, t, codes, _encounter(run, t), activities, goals,
                             (r,) if r else ())
            person.record.careplans.append(entry)
            _activate(person, "careplans", entry)
        run.ctx.entries[name] = entry
        _assign(run, spec, entry)
        return None
    return process


def _procedure(name: str, spec: dict[str, Any], where: str) -> Process:
    codes = codes_of(spec["codes"])
    reason = spec.get("reason")
    dur = compile_duration(spec)

    assign = spec.get("assign_to_attribute")

    def process(run: Any, t: float) -> Any:
        enc = run.ctx.encounter or _encounter(run, t)
        entry = Procedure(name, t, codes, enc, _reason(run, reason) if reason else None)
        d = dur(run.person.uniform) if dur is not None else 0.0
        entry.stop = t + d
        if entry.stop > enc.latest_contained:
            enc.latest_contained = entry.stop
        run.person.record.procedures.append(entry)
        run.ctx.entries[name] = entry
        if assign:
            run.person.set_attribute(assign, entry)
        # The module waits until the procedure ends.
        return run.env.timeout(d) if d > 0 else None
    return process


def _observation_builder(name: str, spec: dict[str, Any], where: str
                         ) -> Callable[[Any, float, Encounter], Observation]:
    codes = codes_of(spec.get("codes"))
    unit = str(spec.get("unit", ""))
    category = str(spec.get("category", ""))
    value = _value_source(name, spec, where)

    def make(run: Any, t: float, enc: Encounter) -> Observation:
        return Observation(name, t, codes, enc, value(run, t), unit, category)
    return make


def _note_observation(person: Person, obs: Observation) -> None:
    latest = person.latest_observation
    for c in obs.codes:
        latest[c.code] = obs
    person.notify(WATCH_OBSERVATION)


def _observation(name: str, spec: dict[str, Any], where: str) -> Process:
    make = _observation_builder(name, spec, where)
    assign = spec.get("assign_to_attribute")

    def process(run: Any, t: float) -> None:
        obs = make(run, t, run.ctx.encounter or _encounter(run, t))
        run.person.record.observations.append(obs)
        _note_observation(run.person, obs)
        run.ctx.entries[name] = obs
        if assign:
            run.person.set_attribute(assign, obs)
        return None
    return process


def _multi_observation(name: str, spec: dict[str, Any], where: str, report: bool) -> Process:
    codes = codes_of(spec["codes"])
    category = str(spec.get("category", "laboratory"))
    parts = [_observation_builder(name, o, f"{where}.observations[{i}]")
             for i, o in enumerate(spec.get("observations") or [])]

    def process(run: Any, t: float) -> None:
        person = run.person
        enc = _encounter(run, t)
        members = [make(run, t, enc) for make in parts]
        if report:
            for m in members:
                person.record.observations.append(m)
                _note_observation(person, m)
            entry: Entry = Report(name, t, codes, enc, members)
            person.record.reports.append(entry)  # type: ignore[arg-type]
        else:
            obs = Observation(name, t, codes, enc, None, "", category, members)
            person.record.observations.append(obs)
            _note_observation(person, obs)
            for m in members:
                _note_observation(person, m)
            entry = obs
        run.ctx.entries[name] = entry
        _assign(run, spec, entry)
        return None
    return process


def _vital_sign(name: str, spec: dict[str, Any], where: str) -> Process:
    vs = spec["vital_sign"]
    value = _value_source(name, spec, where)

    def process(run: Any, t: float) -> None:
        v = value(run, t)
        run.person.set_vital(vs, float(v))
        return None
    return process


def _symptom(name: str, spec: dict[str, Any], where: str) -> Process:
    symptom = spec["symptom"]
    cause = spec.get("cause")
    probability = float(spec.get("probability", 1.0))
    value = _value_source(name, spec, where)

    def process(run: Any, t: float) -> None:
        person = run.person
        if probability >= 1.0 or person.uniform() < probability:
            v = value(run, t)
            person.set_symptom(symptom, cause or run.module_name, float(v) if v is not None else 0.0)
            if run.hooks is not None:
                run.hooks.symptom_changed(person, t)
        return None
    return process


def _death(name: str, spec: dict[str, Any], where: str) -> Process:
    codes = codes_of(spec.get("codes"))
    onset = spec.get("condition_onset")
    attr = spec.get("referenced_by_attribute")
    later = compile_duration(spec) if ("exact" in spec or "range" in spec) else None

    def process(run: Any, t: float) -> None:
        person = run.person
        cause = codes
        if onset:
            e = run.ctx.entries.get(onset)
            cause = e.codes if isinstance(e, Entry) else cause
        elif attr:
            e = person.attributes.get(attr)
            if not isinstance(e, Entry):
                raise _fail(run, f"Death cause attribute {attr!r} holds no entry")
            cause = e.codes
        when = t + later(person.uniform) if later is not None else t
        run.die(when, cause)
        return None
    return process


def _device(name: str, spec: dict[str, Any], where: str) -> Process:
    codes = codes_of(spec["code"])
    manufacturer = str(spec.get("manufacturer", ""))
    model = str(spec.get("model", ""))

    def process(run: Any, t: float) -> None:
        entry = Device(name, t, codes, _encounter(run, t), manufacturer, model)
        run.person.record.devices.append(entry)
        _activate(run.person, "devices", entry)
        run.ctx.entries[name] = entry
        _assign(run, spec, entry)
        return None
    return process


def _supply_list(name: str, spec: dict[str, Any], where: str) -> Process:
    items = [(codes_of(s["code"]), s.get("quantity", 1)) for s in spec["supplies"]]

    def process(run: Any, t: float) -> None:
        enc = _encounter(run, t)
        for codes, q in items:
            run.person.record.supplies.append(Supply(name, t, codes, enc, q))
        return None
    return process


def _imaging(name: str, spec: dict[str, Any], where: str) -> Process:
    proc_codes = codes_of(spec["procedure_code"])
    series = []
    for s in spec["series"]:
        series.append({
            "body_site": codes_of(s.get("body_site"))[0] if s.get("body_site") else None,
            "modality": codes_of(s.get("modality"))[0] if s.get("modality") else None,
            "instances": tuple({
                "title": i.get("title", ""),
                "sop_class": codes_of(i.get("sop_class"))[0] if i.get("sop_class") else None,
            } for i in s.get("instances") or ()),
        })
    series_t = tuple(series)

    def process(run: Any, t: float) -> None:
        enc = _encounter(run, t)
        person = run.person
        study = ImagingStudy(name, t, proc_codes, enc, series_t)
        person.record.imaging_studies.append(study)
        proc = Procedure(name, t, proc_codes, enc)
        proc.stop = t
        person.record.procedures.append(proc)
        run.ctx.entries[name] = study
        _assign(run, spec, study)
        return None
    return process


def _vaccine(name: str, spec: dict[str, Any], where: str) -> Process:
    codes = codes_of(spec["codes"])

    def process(run: Any, t: float) -> None:
        entry = Immunization(name, t, codes, _encounter(run, t))
        run.person.record.immunizations.append(entry)
        run.ctx.entries[name] = entry
        _assign(run, spec, entry)
        return None
    return process


def _terminal(name: str, spec: dict[str, Any], where: str) -> Process:
    return lambda run, t: TERMINAL


def _physiology(name: str, spec: dict[str, Any], where: str) -> Process:
    # carecourse has no SBML solver: the state does no work and the module follows
    # alt_direct_transition, as Synthea does with physiology simulation switched off.
    return no_work


def _simple(name: str, spec: dict[str, Any], where: str) -> Process:
    return no_work


StateBuilder = Callable[[str, dict[str, Any], str], Process]

_KINDS: dict[str, StateBuilder] = {
    "Initial": _simple,
    "Simple": _simple,
    "Terminal": _terminal,
    "Guard": _guard,
    "Delay": _delay,
    "SetAttribute": _set_attribute,
    "Counter": _counter,
    "Encounter": _encounter_state,
    "EncounterEnd": _encounter_end,
    "ConditionOnset": _onset("conditions"),
    "AllergyOnset": _onset("allergies"),
    "ConditionEnd": _ender("conditions", "condition_onset"),
    "AllergyEnd": _ender("allergies", "allergy_onset"),
    "MedicationOrder": _medication,
    "MedicationEnd": _ender("medications", "medication_order"),
    "CarePlanStart": _careplan,
    "CarePlanEnd": _ender("careplans", "careplan"),
    "Procedure": _procedure,
    "Observation": _observation,
    "MultiObservation": lambda n, s, w: _multi_observation(n, s, w, report=False),
    "DiagnosticReport": lambda n, s, w: _multi_observation(n, s, w, report=True),
    "VitalSign": _vital_sign,
    "Symptom": _symptom,
    "Death": _death,
    "Device": _device,
    "DeviceEnd": _ender("devices", "device"),
    "SupplyList": _supply_list,
    "ImagingStudy": _imaging,
    "Vaccine": _vaccine,
    "Physiology": _physiology,
    # CallSubmodule is carried out by the module runner (it runs another graph).
    "CallSubmodule": _simple,
}

_RECHECK = {"Guard", "Encounter"}


def register_state_kind(name: str, builder: StateBuilder) -> None:
    """Add a state type. ``builder(name, spec, where)`` returns ``process(run, t)``."""
    if name in _KINDS:
        raise ConfigError(f"state kind {name!r} is already registered")
    _KINDS[name] = builder


def compile_state(name: str, spec: dict[str, Any], nxt: Any, where: str) -> CompiledState:
    stype = spec["type"]
    try:
        builder = _KINDS[stype]
    except KeyError:
        raise ModuleError(f"{where}: unknown state type {stype!r}; known: "
                          f"{', '.join(sorted(_KINDS))}") from None
    try:
        process = builder(name, spec, where)
    except ModuleError as exc:
        raise ModuleError(f"{where}: {exc}") from None
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ModuleError(f"{where}: malformed {stype} state ({type(exc).__name__}: {exc})") from None
    recheck = stype in _RECHECK and (stype == "Guard" or bool(spec.get("wellness")))
    return CompiledState(name, stype, process, nxt, spec, recheck,
                         spec.get("submodule") if stype == "CallSubmodule" else None)
