"""GMF transitions compiled into ``next(run, t) -> state name`` functions.

The six kinds of GMF are built in. The extension key ``learned_transition`` is compiled by
the learned model kind it names (registered in :mod:`simulator.extensions`), through the
same ``next(run, t)`` interface as a rule; its plain GMF ``fallback`` is compiled here and
handed to the kind.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from modules.errors import ModuleError, SimulationError
from modules.gmf import transition_key
from simulator.extensions import LearnedSite, Next, learned_kind
from simulator.logic import compile_condition
from simulator.person import day_date

__all__ = ["Next", "compile_transition"]


def _pick(u: float, probs: Sequence[float], targets: Sequence[str]) -> str:
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
        cum = list(itertools.accumulate(probs))
        pairs = list(zip(cum, targets, strict=True))
        last = targets[-1]

        def fixed_pick(run: Any, t: float) -> str:
            # _pick on cumulative sums made once (the same sums, added in the same order)
            u = run.person.uniform()
            for acc, tgt in pairs:
                if u < acc:
                    return tgt
            return last
        return fixed_pick
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
    # (test or None, fixed target or None, draw for a complex option): a plain option's
    # target is returned without a call.
    compiled: list[tuple[Any, str | None, Next | None]] = []
    for o in options:
        cond = compile_condition(o["condition"]).test if "condition" in o else None
        if complex_ and o.get("distributions"):
            compiled.append((cond, None, _distributed(o["distributions"])))
        else:
            compiled.append((cond, o["transition"], None))
    _, last_target, last_go = compiled[-1]

    def nxt(run: Any, t: float) -> str:
        for cond, target, go in compiled:
            if cond is None or cond(run, t):
                return target if go is None else go(run, t)
        return last_target if last_go is None else last_go(run, t)  # type: ignore[return-value]
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
    has_time = table.has_time
    # Without a time column a row depends on the key and the whole-year age only: each
    # (key, age) is looked up once per run (the heart-valve tables are asked yearly for life).
    rows: dict[tuple[tuple[str, ...], int], Any] = {}

    def nxt(run: Any, t: float) -> str:
        person = run.person
        attrs = person.attributes
        key = []
        for c in cols:
            v = attrs.get(c)
            if type(v) is not str:
                if v is None:
                    raise SimulationError(
                        f"module {run.module_name!r}, state {state!r}: lookup table {tname} "
                        f"needs patient attribute {c!r}, which is not set")
                v = _attr_key(v)
            key.append(v)
        age = person.age_years(t) if has_age else 0
        if has_time:
            probs = table.probabilities(tuple(key), age, t)
        else:
            k = (tuple(key), age)
            probs = rows.get(k, rows)
            if probs is rows:
                probs = rows[k] = table.probabilities(k[0], age, t)
        return _pick(person.uniform(), probs if probs is not None else defaults, targets)
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
        era = "2020" if day_date(t).year >= 2020 else "pre2020"
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

