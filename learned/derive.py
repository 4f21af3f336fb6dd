"""Derive a GMF module from event data: which states and transitions it has (public, or
chosen by differentially private counts), the stays a hazard model learns from, and the
module's JSON.

**Structure.** Each patient's path through the states (``EventData.paths``; data without
an initial state start in the pseudo-state :data:`START`) is cut after
``max_transitions`` transitions (a public bound on what one patient contributes). The
transitions are either public (a built-in data set documents its states and transitions;
``--edges`` states them) or chosen from counts of the patients who made each one, with
Gaussian noise: each patient adds 1 to at most ``max_transitions`` counts, so the counts'
L2 sensitivity is the square root of that. When the states are public too, every pair of
them is a candidate and the noisy counts are compared with a threshold of three noise
deviations (or ``min_count``, if higher; a transition nobody made passes with probability
0.13%): post-processing, no further cost. When they are not (codes read from FHIR), only
transitions in the data are candidates, and the threshold is that of Gaussian partition
selection (:func:`learned.privacy.selection_threshold`), which adds to delta. A death
state is absorbing: transitions out of it are dropped.

**Stays.** A stay in a state with exits ends by one of them, or is censored: at the end of
follow-up, at a transition the structure does not have, or where the path was cut.

**Module.** Every state becomes an entry state (a Death for death; a ConditionOnset for a
coded state, ``SYSTEM|code`` with a GMF code system or given with ``--code``; else a
SetAttribute of ``<module>_state``) and, when it has exits, a Delay ``In <state>`` whose
dwell time and exit come from the model (``learned_delay`` and ``learned_transition``).
The Delay's own fields and the transition's ``fallback`` are the model summarised at the
reference covariates as a plain GMF loop: every ``bin_days``, leave with the average hazard
of the modelled horizon, split among the exits by their cumulative incidence. That is
post-processing of the DP model, so it costs nothing more, and a person can read, draw and
edit it.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from learned.events import EventData
from learned.hazard import Visit
from modules.errors import ConfigError

__all__ = ["START", "Structure", "Path_", "patient_paths", "transition_counts",
           "public_structure", "dp_structure", "stays", "is_death", "build_module",
           "fallback_probabilities"]

#: The state a patient is in before the first state of data without an initial state.
START = "(start)"
#: GMF code systems a coded state (``SYSTEM|code``) can be recorded in.
_CODE_SYSTEMS = ("SNOMED-CT", "LOINC", "RxNorm", "ICD-10", "CVX", "NUBC", "DICOM", "NDC")
_DEATH = {"death", "dead", "died", "deceased"}


def is_death(state: str) -> bool:
    return state.strip().lower() in _DEATH


@dataclass(frozen=True)
class Path_:
    """One patient's states in time order, cut after the allowed transitions, and when
    the last one's stay is censored."""

    patient: str
    states: tuple[tuple[float, str], ...]
    censored_at: float


@dataclass(frozen=True)
class Structure:
    """The states and transitions of a derived module."""

    initial: str
    edges: tuple[tuple[str, str], ...]
    #: "public", or "dp" (chosen by noisy counts).
    how: str
    noisy_counts: Mapping[tuple[str, str], float] = field(default_factory=dict)
    threshold: float | None = None

    @property
    def states(self) -> list[str]:
        """The initial state first, then in order of first appearance in the edges."""
        seen = [self.initial]
        for a, b in self.edges:
            for s in (a, b):
                if s not in seen:
                    seen.append(s)
        return seen

    @property
    def exits(self) -> dict[str, tuple[str, ...]]:
        out: dict[str, list[str]] = {}
        for a, b in self.edges:
            out.setdefault(a, []).append(b)
        return {a: tuple(bs) for a, bs in out.items()}


def patient_paths(data: EventData, *, max_transitions: int,
                  states: Sequence[str] | None = None) -> list[Path_]:
    """Every patient's path (see the module's docstring). With ``states`` (a public list),
    other codes are not states here."""
    if max_transitions < 1:
        raise ConfigError("--max-transitions must be at least 1")
    keep = set(states) if states else None
    initial = data.initial_state or START
    out = []
    for pid, path in data.paths().items():
        seq: list[tuple[float, str]] = [] if data.initial_state else [(0.0, START)]
        for t, s in path:
            if keep is not None and s not in keep and s != initial:
                continue
            if not seq or seq[-1][1] != s:
                seq.append((float(t), s))
        if not seq:
            seq = [(0.0, initial)]
        end = float(data.end[pid])
        if len(seq) > max_transitions + 1:
            end = seq[max_transitions + 1][0]
            seq = seq[:max_transitions + 1]
        out.append(Path_(str(pid), tuple(seq), end))
    return out


def transition_counts(paths: Sequence[Path_]) -> Counter[tuple[str, str]]:
    """Patients who made each transition (once per patient)."""
    counts: Counter[tuple[str, str]] = Counter()
    for p in paths:
        counts.update({(a, b) for (_, a), (_, b) in itertools.pairwise(p.states)})
    return counts


def _absorbing(edges: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple((a, b) for a, b in edges if not is_death(a) and a != b)


def public_structure(initial: str, edges: Sequence[tuple[str, str]]) -> Structure:
    """A structure the user (or a data set's documentation) states as public."""
    if not edges:
        raise ConfigError("a public structure needs at least one transition (--edges A>B)")
    return Structure(initial, _absorbing(edges), "public")


def dp_structure(paths: Sequence[Path_], initial: str, *, noise: float, rng: np.random.Generator,
                 candidates: Sequence[tuple[str, str]] | None, threshold: float) -> Structure:
    """Transitions whose count plus N(0, ``noise``^2) exceeds ``threshold``: over the
    ``candidates`` (every pair of public states) or, when None, over the transitions in
    the data (partition selection). Noise is drawn for candidates in sorted order, so a
    seed gives the same structure for the same data."""
    counts = transition_counts(paths)
    pool = sorted(set(candidates) if candidates is not None else set(counts))
    noisy = {e: counts.get(e, 0) + float(rng.normal(0.0, noise)) for e in pool}
    kept = [e for e in pool if noisy[e] > threshold]
    # Only what is reachable from the initial state makes a module.
    reach, changed = {initial}, True
    while changed:
        changed = False
        for a, b in kept:
            if a in reach and b not in reach and not is_death(a):
                reach.add(b)
                changed = True
    kept = [e for e in _absorbing(kept) if e[0] in reach]
    kept.sort(key=lambda e: -noisy[e])
    return Structure(initial, tuple(kept), "dp", {e: noisy[e] for e in kept}, threshold)


def stays(paths: Sequence[Path_], structure: Structure,
          covariates: Mapping[str, tuple[float, ...]]) -> list[Visit]:
    """The stays in states with exits, each ended by a modelled exit or censored."""
    exits = structure.exits
    out = []
    for p in paths:
        x = covariates.get(p.patient, ())
        seq = p.states
        for i, (t, s) in enumerate(seq):
            if s not in exits:
                continue
            if i + 1 < len(seq):
                t1, nxt = seq[i + 1]
                ex = nxt if nxt in exits[s] else None
            else:
                t1, ex = p.censored_at, None
            out.append(Visit(p.patient, s, max(0.0, t1 - t), ex, x))
    return out


# ----------------------------------------------------------------------------- module

def _state_names(structure: Structure) -> dict[str, tuple[str, str | None]]:
    """data state -> (entry state name, dwell state name or None)."""
    exits = structure.exits
    return {s: (s, f"In {s}" if s in exits else None) for s in structure.states}


def _entry_state(state: str, nxt: str, attribute: str,
                 codes: Mapping[str, tuple[str, str, str]]) -> dict[str, Any]:
    if is_death(state):
        return {"type": "Death", "direct_transition": "Terminal"}
    coded = codes.get(state)
    if coded is None and "|" in state and state.split("|", 1)[0] in _CODE_SYSTEMS:
        system, code = state.split("|", 1)
        coded = (system, code, code)
    if coded is not None:
        system, code, display = coded
        return {"type": "ConditionOnset",
                "codes": [{"system": system, "code": code, "display": display}],
                "direct_transition": nxt}
    return {"type": "SetAttribute", "attribute": attribute, "value": state,
            "direct_transition": nxt}


def build_module(name: str, structure: Structure, fallbacks: Mapping[str, dict[str, float]],
                 *, model_path: str, bin_days: float, sources: Mapping[str, Any],
                 remarks: Sequence[str], start_age: float = 0.0,
                 codes: Mapping[str, tuple[str, str, str]] | None = None) -> dict[str, Any]:
    """The GMF JSON of a derived module. ``fallbacks`` gives, per state with exits, the
    probability of each exit per bin (the rest: staying another bin)."""
    codes = codes or {}
    names = _state_names(structure)
    attribute = f"{name}_state"
    states: dict[str, Any] = {}
    first = names[structure.initial][0] if structure.initial != START else \
        names[structure.initial][1]
    if first is None:
        raise ConfigError(f"the initial state {structure.initial!r} has no transitions: "
                          "there is nothing to model")
    if start_age > 0:
        states["Initial"] = {"type": "Initial", "direct_transition": "Start age"}
        states["Start age"] = {"type": "Guard", "allow": {
            "condition_type": "Age", "operator": ">=", "quantity": start_age,
            "unit": "years"}, "direct_transition": first}
    else:
        states["Initial"] = {"type": "Initial", "direct_transition": first}
    for s in structure.states:
        entry, dwell = names[s]
        if s != START:
            states[entry] = _entry_state(s, dwell or "Terminal", attribute, codes)
        if dwell is None:
            continue
        probs = fallbacks[s]
        options = [{"distribution": round(probs[e], 6), "transition": names[e][0]}
                   for e in structure.exits[s]]
        stay = 1.0 - sum(o["distribution"] for o in options)
        options.append({"distribution": round(max(0.0, stay), 6), "transition": dwell})
        states[dwell] = {
            "type": "Delay",
            "exact": {"quantity": bin_days, "unit": "days"},
            "learned_delay": {},
            "learned_transition": {
                "model": model_path,
                "state": s,
                "covariates": dict(sources),
                "fallback": {"distributed_transition": options},
            },
        }
    states["Terminal"] = {"type": "Terminal"}
    return {"name": name, "remarks": list(remarks), "gmf_version": 2, "states": states}


def fallback_probabilities(exit_cif: Mapping[str, float], max_bins: int) -> dict[str, float]:
    """Per-bin exit probabilities of a constant-hazard loop that leaves within
    ``max_bins`` bins as often as the model does, split as its cumulative incidence."""
    total = sum(exit_cif.values())
    if total <= 0:
        return {e: 0.0 for e in exit_cif}
    q = 1.0 - (1.0 - min(total, 1.0 - 1e-12)) ** (1.0 / max_bins)
    return {e: q * v / total for e, v in exit_cif.items()}
