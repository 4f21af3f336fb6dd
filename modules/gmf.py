"""Facts about Synthea's Generic Module Framework (GMF) format, versions 1 and 2.

The closed sets of state, transition and condition types, the fields each needs, time
units, and GMF 2 distributions. Restated from the format's documentation
(../shared/synthea/README.md); no Synthea code is used.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "STATE_TYPES",
    "TRANSITION_KEYS",
    "CONDITION_TYPES",
    "OPERATORS",
    "TIME_UNITS_DAYS",
    "DISTRIBUTION_PARAMETERS",
    "normalize_condition_type",
    "transition_key",
    "distribution_problem",
    "condition_problems",
    "state_field_problems",
    "referenced_states",
]

STATE_TYPES = frozenset({
    "Initial", "Terminal", "Simple", "Guard", "Delay", "SetAttribute", "Counter",
    "CallSubmodule", "Encounter", "EncounterEnd", "ConditionOnset", "ConditionEnd",
    "AllergyOnset", "AllergyEnd", "MedicationOrder", "MedicationEnd", "CarePlanStart",
    "CarePlanEnd", "Procedure", "Observation", "MultiObservation", "DiagnosticReport",
    "VitalSign", "Symptom", "ImagingStudy", "Device", "DeviceEnd", "SupplyList", "Vaccine",
    "Death", "Physiology",
})

#: Transition keys in the order Synthea gives them precedence when a state has several.
TRANSITION_KEYS = (
    "direct_transition",
    "distributed_transition",
    "conditional_transition",
    "complex_transition",
    "lookup_table_transition",
    "type_of_care_transition",
    "learned_transition",  # carecourse extension: a trained model with a GMF fallback
)

#: Canonical condition type (spaces removed) -> required keys (any one of a tuple).
CONDITION_TYPES: dict[str, tuple[Any, ...]] = {
    "And": ("conditions",),
    "Or": ("conditions",),
    "Not": ("condition",),
    "AtLeast": ("minimum", "conditions"),
    "AtMost": ("maximum", "conditions"),
    "True": (),
    "False": (),
    "Gender": ("gender",),
    "Age": ("operator", "quantity", "unit"),
    "Date": ("operator", ("year", "month", "date")),
    "SocioeconomicStatus": ("category",),
    "Race": ("race",),
    "Symptom": ("symptom", "operator", "value"),
    "Observation": (("codes", "referenced_by_attribute"), "operator"),
    "VitalSign": ("vital_sign", "operator", "value"),
    "Attribute": ("attribute", "operator"),
    "PriorState": ("name",),
    "ActiveCondition": (("codes", "referenced_by_attribute"),),
    "ActiveAllergy": (("codes", "referenced_by_attribute"),),
    "ActiveMedication": (("codes", "referenced_by_attribute"),),
    "ActiveCarePlan": (("codes", "referenced_by_attribute"),),
}

OPERATORS = frozenset({"<", "<=", "==", ">=", ">", "!=", "is nil", "is not nil"})

#: Days per unit. GMF 2 distributions use 365-day years (Synthea's tests add a year as 365
#: days); GMF 1 ``exact``/``range`` amounts use 365.25 and are truncated, see
#: simulator.timing.
TIME_UNITS_DAYS: dict[str, float] = {
    "years": 365.0,
    "months": 30.0,
    "weeks": 7.0,
    "days": 1.0,
    "hours": 1.0 / 24.0,
    "minutes": 1.0 / 1440.0,
    "seconds": 1.0 / 86400.0,
    "milliseconds": 1.0 / 86400000.0,
}

#: GMF 2 distribution kinds -> required parameters.
DISTRIBUTION_PARAMETERS: dict[str, tuple[str, ...]] = {
    "EXACT": ("value",),
    "UNIFORM": ("low", "high"),
    "GAUSSIAN": ("mean", "standardDeviation"),
    "EXPONENTIAL": ("mean",),
    "TRIANGULAR": ("min", "mode", "max"),
}


def normalize_condition_type(name: str) -> str:
    """GMF ignores spaces in condition types ("Active Condition" == "ActiveCondition")."""
    return name.replace(" ", "")


def transition_key(state: dict[str, Any]) -> str | None:
    """The transition key a state uses, by Synthea's precedence, or None."""
    for key in TRANSITION_KEYS:
        if key in state:
            return key
    return None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def distribution_problem(dist: Any) -> str | None:
    """Why a GMF 2 ``distribution`` object is invalid, or None when it is fine."""
    if not isinstance(dist, dict):
        return "distribution must be an object with 'kind' and 'parameters'"
    kind = dist.get("kind")
    if kind not in DISTRIBUTION_PARAMETERS:
        return f"unknown distribution kind {kind!r}; known: {', '.join(DISTRIBUTION_PARAMETERS)}"
    params = dist.get("parameters")
    if not isinstance(params, dict):
        return f"{kind} distribution has no 'parameters' object"
    missing = [p for p in DISTRIBUTION_PARAMETERS[kind] if not _is_number(params.get(p))]
    if missing:
        return f"{kind} distribution needs numeric parameter(s) {', '.join(missing)}"
    return None


def condition_problems(cond: Any, path: str) -> list[tuple[str, str]]:
    """(json path, message) for every problem in a condition tree."""
    if not isinstance(cond, dict):
        return [(path, "condition must be an object with 'condition_type'")]
    ctype = cond.get("condition_type")
    if not isinstance(ctype, str):
        return [(path, "condition has no 'condition_type'")]
    canon = normalize_condition_type(ctype)
    if canon not in CONDITION_TYPES:
        known = ", ".join(sorted(CONDITION_TYPES))
        return [(path, f"unknown condition_type {ctype!r}; known: {known}")]
    out: list[tuple[str, str]] = []
    for req in CONDITION_TYPES[canon]:
        options = req if isinstance(req, tuple) else (req,)
        if not any(o in cond for o in options):
            out.append((path, f"{ctype} condition needs {' or '.join(options)}"))
    op = cond.get("operator")
    if op is not None and op not in OPERATORS:
        out.append((f"{path}.operator", f"unknown operator {op!r}; known: {', '.join(sorted(OPERATORS))}"))
    if canon in ("And", "Or", "AtLeast", "AtMost"):
        subs = cond.get("conditions")
        if isinstance(subs, list):
            for i, sub in enumerate(subs):
                out.extend(condition_problems(sub, f"{path}.conditions[{i}]"))
        elif subs is not None:
            out.append((f"{path}.conditions", "must be a list of conditions"))
    elif canon == "Not" and "condition" in cond:
        out.extend(condition_problems(cond["condition"], f"{path}.condition"))
    if canon == "Age" and cond.get("unit") not in TIME_UNITS_DAYS and "unit" in cond:
        out.append((f"{path}.unit", f"unknown time unit {cond.get('unit')!r}"))
    return out


def _codes_problem(state: dict[str, Any]) -> str | None:
    codes = state.get("codes")
    if not isinstance(codes, list) or not codes:
        return "needs a non-empty 'codes' list"
    for c in codes:
        if not isinstance(c, dict) or "code" not in c or "system" not in c:
            return "each code needs 'system' and 'code'"
    return None


_END_REFERENCES = {
    "ConditionEnd": ("condition_onset", "referenced_by_attribute", "codes"),
    "AllergyEnd": ("allergy_onset", "referenced_by_attribute", "codes"),
    "MedicationEnd": ("medication_order", "referenced_by_attribute", "codes"),
    "CarePlanEnd": ("careplan", "referenced_by_attribute", "codes"),
    "DeviceEnd": ("device", "referenced_by_attribute", "codes"),
}

_CODED = {"ConditionOnset", "AllergyOnset", "MedicationOrder", "CarePlanStart", "Procedure",
          "Observation", "MultiObservation", "DiagnosticReport", "Vaccine"}

_OBSERVATION_VALUES = ("exact", "range", "distribution", "value_code", "attribute",
                       "vital_sign", "expression", "sampled_data", "attachment")


def _duration_problems(state: dict[str, Any], where: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for key in ("exact", "range"):
        spec = state.get(key)
        if isinstance(spec, dict) and "unit" in spec and spec["unit"] not in TIME_UNITS_DAYS:
            out.append((f"{where}.{key}.unit", f"unknown time unit {spec['unit']!r}"))
    if "distribution" in state:
        if "unit" in state and state["unit"] not in TIME_UNITS_DAYS:
            out.append((f"{where}.unit", f"unknown time unit {state['unit']!r}"))
    return out


def state_field_problems(name: str, state: dict[str, Any]) -> list[tuple[str, str]]:
    """(json path, message) for missing or malformed fields of one state."""
    where = f"states.{name}"
    stype = state.get("type")
    out: list[tuple[str, str]] = []

    def need(*keys: str) -> None:
        if not any(k in state for k in keys):
            out.append((where, f"{stype} state needs {' or '.join(repr(k) for k in keys)}"))

    if "distribution" in state and stype in ("Delay", "SetAttribute", "VitalSign", "Observation",
                                              "Procedure", "Symptom"):
        why = distribution_problem(state["distribution"])
        if why:
            out.append((f"{where}.distribution", f"State {name} contains an invalid distribution: {why}"))
    if stype in _CODED:
        why = _codes_problem(state)
        if why:
            out.append((f"{where}.codes", f"{stype} state {why}"))
    if stype == "Delay":
        need("exact", "range", "distribution")
        out.extend(_duration_problems(state, where))
        if "distribution" in state and "unit" not in state:
            out.append((where, "Delay with a distribution needs a 'unit'"))
    elif stype == "Procedure":
        out.extend(_duration_problems(state, where))
    elif stype == "Guard":
        need("allow")
        if "allow" in state:
            out.extend(condition_problems(state["allow"], f"{where}.allow"))
    elif stype in ("SetAttribute", "Counter"):
        need("attribute")
        if "series_data" in state:
            for tok in str(state["series_data"]).split():
                try:
                    float(tok)
                except ValueError:
                    out.append((f"{where}.series_data", f'unable to parse "{tok}" in SetAttribute '
                                f'state for "{state.get("attribute")}": series_data must be '
                                f"numbers separated by spaces"))
                    break
        if stype == "Counter" and state.get("action") not in ("increment", "decrement"):
            out.append((f"{where}.action", "Counter action must be 'increment' or 'decrement'"))
    elif stype == "CallSubmodule":
        need("submodule")
    elif stype == "Encounter":
        if not state.get("wellness"):
            need("encounter_class")
            if "encounter_class" in state and "codes" not in state:
                out.append((where, "Encounter needs 'codes' unless it is a wellness encounter"))
    elif stype in _END_REFERENCES:
        need(*_END_REFERENCES[stype])
    elif stype == "Observation":
        need(*_OBSERVATION_VALUES)
        if ("exact" in state or "range" in state) and not str(state.get("unit", "")).strip():
            out.append((f"{where}.unit", "Observation with an exact or range value needs a unit"))
    elif stype in ("MultiObservation", "DiagnosticReport"):
        need("observations")
    elif stype == "Symptom":
        need("symptom")
    elif stype == "VitalSign":
        need("vital_sign")
    elif stype == "Device":
        need("code")
    elif stype == "SupplyList":
        need("supplies")
    elif stype == "ImagingStudy":
        need("procedure_code")
        need("series")
    elif stype == "Physiology":
        need("alt_direct_transition")
    return out


def referenced_states(state: dict[str, Any]) -> list[tuple[str, str, str, float | None]]:
    """Every transition option of a state as (json path, target, label, probability).

    Probability is given for distributed options with a fixed number, None otherwise.
    """
    out: list[tuple[str, str, str, float | None]] = []
    key = transition_key(state)
    if key is None:
        alt = state.get("alt_direct_transition")
        if isinstance(alt, str):
            out.append(("alt_direct_transition", alt, "", None))
        return out
    spec = state[key]
    if key == "direct_transition":
        if isinstance(spec, str):
            out.append((key, spec, "", None))
    elif key == "distributed_transition":
        for i, opt in enumerate(spec if isinstance(spec, list) else []):
            _distributed_option(out, f"{key}[{i}]", opt)
    elif key in ("conditional_transition", "complex_transition"):
        for i, opt in enumerate(spec if isinstance(spec, list) else []):
            if not isinstance(opt, dict):
                continue
            label = describe_condition(opt.get("condition")) if "condition" in opt else "else"
            if isinstance(opt.get("transition"), str):
                out.append((f"{key}[{i}].transition", opt["transition"], label, None))
            for j, d in enumerate(opt.get("distributions") or []):
                _distributed_option(out, f"{key}[{i}].distributions[{j}]", d, prefix=label)
    elif key == "lookup_table_transition":
        for i, opt in enumerate(spec if isinstance(spec, list) else []):
            if isinstance(opt, dict) and isinstance(opt.get("transition"), str):
                p = opt.get("default_probability")
                out.append((f"{key}[{i}].transition", opt["transition"],
                            f"table {opt.get('lookup_table_name', '?')}",
                            p if _is_number(p) else None))
    elif key == "type_of_care_transition":
        if isinstance(spec, dict):
            for care in ("ambulatory", "emergency", "telemedicine"):
                if isinstance(spec.get(care), str):
                    out.append((f"{key}.{care}", spec[care], care, None))
    elif key == "learned_transition":
        if isinstance(spec, dict):
            fb = spec.get("fallback")
            if isinstance(fb, dict):
                for path, target, label, p in referenced_states(fb):
                    out.append((f"{key}.fallback.{path}", target, f"learned; {label}".strip("; "), p))
    if "alt_direct_transition" in state and isinstance(state["alt_direct_transition"], str):
        out.append(("alt_direct_transition", state["alt_direct_transition"], "alt", None))
    return out


def _distributed_option(out: list, path: str, opt: Any, prefix: str = "") -> None:
    if not isinstance(opt, dict) or not isinstance(opt.get("transition"), str):
        return
    d = opt.get("distribution")
    p: float | None = None
    if _is_number(d):
        p = float(d)
        label = f"{p * 100:.4g}%"
    elif isinstance(d, dict):
        label = f"attr {d.get('attribute')} (default {d.get('default')})"
    else:
        label = "?"
    out.append((f"{path}.transition", opt["transition"], f"{prefix}: {label}" if prefix else label, p))


def describe_condition(cond: Any, depth: int = 0) -> str:
    """A short human label for a condition (for drawings)."""
    if not isinstance(cond, dict):
        return "?"
    ctype = str(cond.get("condition_type", "?"))
    canon = normalize_condition_type(ctype)
    if canon in ("And", "Or") and depth < 2:
        parts = [describe_condition(c, depth + 1) for c in cond.get("conditions") or []]
        return f" {canon.lower()} ".join(f"({p})" for p in parts)
    if canon == "Not":
        return f"not ({describe_condition(cond.get('condition'), depth + 1)})"
    if canon == "Age":
        return f"age {cond.get('operator')} {cond.get('quantity')} {cond.get('unit')}"
    if canon == "Gender":
        return f"gender {cond.get('gender')}"
    if canon == "Attribute":
        v = cond.get("value", "")
        return f"{cond.get('attribute')} {cond.get('operator')} {v}".strip()
    if canon == "PriorState":
        return f"was in {cond.get('name')}"
    if canon.startswith("Active"):
        codes = cond.get("codes") or []
        what = codes[0].get("display", codes[0].get("code")) if codes and isinstance(codes[0], dict) \
            else cond.get("referenced_by_attribute")
        return f"active {what}"
    if canon == "VitalSign":
        return f"{cond.get('vital_sign')} {cond.get('operator')} {cond.get('value')}"
    if canon == "Date":
        v = cond.get("year", cond.get("month", cond.get("date")))
        return f"date {cond.get('operator')} {v}"
    return ctype
