"""GMF transitions compiled into ``next(run, t) -> state name`` functions.

The six kinds of GMF are built in. The extension key ``learned_transition`` is compiled by
the learned model kind it names (registered in :mod:`simulator.extensions`), through the
same ``next(run, t)`` interface as a rule; its plain GMF ``fallback`` is compiled here and
handed to the kind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modules.errors import ModuleError, SimulationError
from modules.gmf import transition_key
from simulator.extensions import LearnedSite, Next, learned_kind
from simulator.logic import compile_condition
from simulator.person import date_of

__all__ = ["Next", "compile_transition"]


def _pick(u: float, probs: list[float], targets: list[str]) -> str:
    """First option whose cumulative probability passes the draw; leftover goes to the last."""
    acc = 0.0
    for p, tgt in zip(probs, targets, strict=True):
        acc += p
        if u < acc:
            return tgt
    return targets[-1]


def _distributed(options: list[dict[str, Any]]) -> Next:
    targets = [o["transition"] for o in options]
    fixed = all(isinstance(o["distribution"], (int, float)) for o in options)
    if fixed:
        probs = [float(o["distribution"]) for o in options]
        if len(targets) == 1:
            only = targets[0]
            return lambda run, t: only
        return lambda run, t: _pick(run.person.uniform(), probs, targets)
    specs = [o["distribution"] for o in options]

    def nxt(run: Any, t: float) -> str:
        attrs = run.person.attributes
        probs = []
        for d in specs:
            if isinstance(d, dict):
                v = attrs.get(d["attribute"], d.get("default", 0.0))
                probs.append(float(v) if isinstance(v, (int, float)) else float(d.get("default", 0.0)))
            else:
                probs.append(float(d))
        return _pick(run.person.uniform(), probs, targets)
    return nxt


def _conditional(options: list[dict[str, Any]], complex_: bool) -> Next:
    compiled: list[tuple[Any, Next]] = []
    for o in options:
        cond = compile_condition(o["condition"]).test if "condition" in o else None
        if complex_ and o.get("distributions"):
            go = _distributed(o["distributions"])
        else:
            target = o["transition"]
            go = (lambda tgt: (lambda run, t: tgt))(target)
        compiled.append((cond, go))
    last = compiled[-1][1]

    def nxt(run: Any, t: float) -> str:
        for cond, go in compiled:
            if cond is None or cond(run, t):
                return go(run, t)
        return last(run, t)
    return nxt


def _attr_key(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _lookup(options: list[dict[str, Any]], state: str, library: Any) -> Next:
    targets = [o["transition"] for o in options]
    defaults = [float(o.get("default_probability") or 0.0) for o in options]
    tname = options[0]["lookup_table_name"]
    table = library.lookup_tables.get(tname) if library is not None else None
    if table is None:
        raise ModuleError(f"state {state}: lookup table {tname!r} is not loaded")
    cols = table.attribute_columns
    has_age = table.has_age

    def nxt(run: Any, t: float) -> str:
        attrs = run.person.attributes
        key = []
        for c in cols:
            v = attrs.get(c)
            if v is None:
                raise SimulationError(
                    f"module {run.module_name!r}, state {state!r}: lookup table {tname} needs "
                    f"patient attribute {c!r}, which is not set")
            key.append(_attr_key(v))
        age = run.person.age_years(t) if has_age else 0
        probs = table.probabilities(tuple(key), age, t)
        return _pick(run.person.uniform(), list(probs) if probs is not None else defaults, targets)
    return nxt


#: Telemedicine weights by era and payer group (ambulatory, emergency, telemedicine), as
#: Synthea's telemedicine configuration sets them (EXPECTED.md section 4). carecourse does
#: not model insurance yet, so everybody is in the general payer group.
_CARE_WEIGHTS = {
    ("pre2020", "general"): (0.75, 0.25, 0.0),
    ("pre2020", "high_ed"): (0.65, 0.35, 0.0),
    ("2020", "general"): (0.56, 0.20, 0.24),
    ("2020", "high_ed"): (0.66, 0.25, 0.09),
}
_HIGH_ED = {"medicaid", "dual eligible", "no_insurance", "none"}


def _type_of_care(spec: dict[str, Any]) -> Next:
    order = ("ambulatory", "emergency", "telemedicine")
    targets = [spec.get(k) for k in order]

    def nxt(run: Any, t: float) -> str:
        era = "2020" if date_of(t).year >= 2020 else "pre2020"
        ins = str(run.person.attributes.get("insurance_status", "")).lower()
        w = _CARE_WEIGHTS[(era, "high_ed" if ins in _HIGH_ED else "general")]
        probs = [p for p, tg in zip(w, targets, strict=True) if tg]
        tg = [x for x in targets if x]
        return _pick(run.person.uniform(), probs, tg)
    return nxt


def compile_transition(state_name: str, state: dict[str, Any], library: Any,
                       module_path: Path | None = None) -> Next | None:
    """``next(run, t)`` for a state's transition, or None for a Terminal. A
    ``learned_transition`` is compiled by its registered kind (ModuleError when none is);
    ``module_path`` is what its model path is relative to."""
    key = transition_key(state)
    if state.get("type") == "Physiology" or key is None:
        # No physiology solver: take the transition meant for simulation switched off.
        alt = state.get("alt_direct_transition")
        return (lambda run, t: alt) if isinstance(alt, str) else None
    spec = state[key]
    if key == "direct_transition":
        return lambda run, t: spec
    if key == "distributed_transition":
        return _distributed(spec)
    if key == "conditional_transition":
        return _conditional(spec, complex_=False)
    if key == "complex_transition":
        return _conditional(spec, complex_=True)
    if key == "lookup_table_transition":
        return _lookup(spec, state_name, library)
    if key == "type_of_care_transition":
        return _type_of_care(spec)
    if key == "learned_transition":
        fallback = compile_transition(state_name, spec["fallback"], library)
        assert fallback is not None
        site = LearnedSite(module_path, state_name, key, spec)
        return learned_kind(site).transition(site, fallback)
    raise ModuleError(f"state {state_name}: unknown transition {key}")

