"""carecourse's GMF extension keys, ``learned_transition`` and ``learned_delay``: their
shape, the model card fields they rely on, and their validation.

A state with ``learned_transition`` takes its exit from a trained model::

    "learned_transition": {
        "model": "models/actg320/card.json",   # the model card, relative to the module file
        "kind": "hazard",                      # optional: the registered model kind
        "state": "randomized",                 # optional: the model's state (default: this one)
        "exits": {"aids": "AIDS onset"},       # optional: model exit -> module state
        "covariates": {"age": "age", "sex": {"attribute": "gender",
                                             "values": {"M": "1", "F": "2"}}},
        "fallback": {"distributed_transition": [...]}   # any plain GMF transition
    }

A Delay with ``learned_delay`` waits as long as the model says; its own ``exact``, ``range``
or ``distribution`` is the fallback. Its object may leave out ``model``, ``kind``, ``state``
and ``covariates`` when the state also has a ``learned_transition`` (they are taken from
there), so ``"learned_delay": {}`` means "the dwell time of the same model".

Covariate sources (how a model covariate is read from a simulated patient): ``"age"`` (age
in years when the state is entered), ``{"age_plus": YEARS}`` (that age plus a constant, for
data whose age is centred), ``{"attribute": NAME, "values": {...}, "default": V}``
(a patient attribute, its values optionally recoded to the data's coding, ``default`` when
it is not set) or ``{"value": V}`` (a constant). A model covariate the mapping leaves out is
read from the attribute of the same name.

This module reads model cards as JSON only (no torch), so validating a module never loads a
model. ``learned.modelfile`` writes the cards.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from modules.gmf import referenced_states, transition_key

__all__ = [
    "CARD_FORMAT",
    "DEFAULT_KIND",
    "LEARNED_KEYS",
    "card_problems",
    "delay_spec",
    "learned_problems",
    "read_card",
    "sha256_file",
    "uses_learned_keys",
]

#: The ``format`` field of a model card.
CARD_FORMAT = "carecourse-model-card/1"
#: The model kind a key means when it names none.
DEFAULT_KIND = "hazard"
LEARNED_KEYS = ("learned_transition", "learned_delay")
_SHARED = ("model", "kind", "state", "covariates")


def uses_learned_keys(spec: dict[str, Any]) -> bool:
    """Whether a module spec has a state with a learned key."""
    states = spec.get("states")
    if not isinstance(states, dict):
        return False
    return any(isinstance(st, dict) and any(k in st for k in LEARNED_KEYS)
               for st in states.values())


def delay_spec(state: dict[str, Any]) -> dict[str, Any]:
    """A state's ``learned_delay`` completed from its ``learned_transition``."""
    own = state.get("learned_delay")
    out = dict(own) if isinstance(own, dict) else {}
    lt = state.get("learned_transition")
    if isinstance(lt, dict):
        for k in _SHARED:
            if k not in out and k in lt:
                out[k] = lt[k]
    return out


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def card_problems(card: Any) -> list[tuple[str, str]]:
    """(JSON path in the card, message) for what a model card lacks."""
    if not isinstance(card, dict):
        return [("", "a model card must be a JSON object")]
    out: list[tuple[str, str]] = []
    if card.get("format") != CARD_FORMAT:
        out.append(("format", f"not a carecourse model card (format {card.get('format')!r}, "
                              f"expected {CARD_FORMAT!r})"))
        return out
    for key in ("kind", "weights"):
        if not isinstance(card.get(key), str) or not card[key]:
            out.append((key, f"needs a non-empty string {key!r}"))
    model = card.get("model")
    if not isinstance(model, dict):
        return out + [("model", "needs an object 'model' with 'exits' and 'covariates'")]
    exits = model.get("exits")
    if not isinstance(exits, dict) or not all(
            isinstance(v, list) and v and all(isinstance(e, str) for e in v)
            for v in exits.values()):
        out.append(("model.exits", "must map each state to a non-empty list of exits"))
    covs = model.get("covariates")
    if not isinstance(covs, list) or not all(isinstance(c, dict) and isinstance(c.get("name"), str)
                                             for c in covs):
        out.append(("model.covariates", "must be a list of objects with a 'name'"))
    return out


def read_card(path: Path) -> tuple[dict[str, Any] | None, list[tuple[str, str]]]:
    """A model card and the problems found in it ((place, message); place "" for the
    file as a whole)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return None, [("", f"cannot read the model card ({exc.strerror})")]
    try:
        card = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, [(f"line {exc.lineno}, column {exc.colno}", f"invalid JSON: {exc.msg}")]
    problems = card_problems(card)
    return (card if not problems else None), problems


def _source_problem(source: Any) -> str | None:
    if source == "age":
        return None
    if isinstance(source, dict):
        if "value" in source and len(source) == 1:
            return None
        if "age_plus" in source and len(source) == 1:
            ok = isinstance(source["age_plus"], (int, float)) and \
                not isinstance(source["age_plus"], bool)
            return None if ok else "'age_plus' must be a number of years"
        if isinstance(source.get("attribute"), str) and source["attribute"]:
            extra = set(source) - {"attribute", "values", "default"}
            if extra:
                return f"unknown key(s) {', '.join(sorted(extra))}"
            if "values" in source and not isinstance(source["values"], dict):
                return "'values' must map the patient's values to the model's"
            return None
    return ("must be \"age\", {\"age_plus\": YEARS}, {\"attribute\": NAME, \"values\": "
            "{...}, \"default\": V} or {\"value\": V}")


def learned_problems(module_path: Path, sname: str, state: dict[str, Any],
                     states: dict[str, Any], *, check_models: bool = True
                     ) -> list[tuple[str, str]]:
    """(JSON path, message) for every problem with a state's learned keys: their shape,
    and with ``check_models`` the model card they point to (found relative to the module
    file, readable, with its weights file, knowing the state, its exits matching the
    state's fallback, and the covariates named)."""
    where = f"states.{sname}"
    out: list[tuple[str, str]] = []
    lt = state.get("learned_transition")
    ld = state.get("learned_delay")
    if lt is None and ld is None:
        return out
    if lt is not None:
        here = f"{where}.learned_transition"
        if not isinstance(lt, dict):
            return [(here, "must be an object with 'model' and 'fallback'")]
        fb = lt.get("fallback")
        if not isinstance(fb, dict) or transition_key(fb) in (None, "learned_transition"):
            out.append((f"{here}.fallback", "needs a plain GMF transition object, e.g. "
                                            "{\"direct_transition\": \"State\"}"))
        exits = lt.get("exits", {})
        if not isinstance(exits, dict) or not all(isinstance(v, str) for v in exits.values()):
            out.append((f"{here}.exits", "must map the model's exits to states of this module"))
            exits = {}
        for e, target in exits.items():
            if target not in states:
                out.append((f"{here}.exits.{e}", f"exit to missing state {target!r}"))
    if ld is not None:
        here = f"{where}.learned_delay"
        if not isinstance(ld, dict):
            out.append((here, "must be an object (may be {} beside a learned_transition)"))
        elif state.get("type") != "Delay":
            out.append((here, f"only a Delay can have a learned delay, not a "
                              f"{state.get('type')} state"))
    sites = []
    if isinstance(lt, dict):
        sites.append(("learned_transition", lt))
    if isinstance(ld, dict):
        sites.append(("learned_delay", delay_spec(state)))
    for key, spec in sites:
        here = f"{where}.{key}"
        if not isinstance(spec.get("model"), str) or not spec["model"]:
            out.append((f"{here}.model", "needs 'model': the path of a model card (relative "
                                         "to the module file)"))
            continue
        for k in ("kind", "state"):
            if k in spec and not isinstance(spec[k], str):
                out.append((f"{here}.{k}", "must be a string"))
        covs = spec.get("covariates", {})
        if not isinstance(covs, dict):
            out.append((f"{here}.covariates", "must map model covariates to their sources"))
            covs = {}
        for c, src in covs.items():
            why = _source_problem(src)
            if why:
                out.append((f"{here}.covariates.{c}", why))
        if check_models and not any(p.startswith(here) for p, _ in out):
            out.extend(_model_problems(module_path, sname, state, key, spec, here))
    return out


def _model_problems(module_path: Path, sname: str, state: dict[str, Any], key: str,
                    spec: dict[str, Any], here: str) -> list[tuple[str, str]]:
    card_path = Path(spec["model"])
    if not card_path.is_absolute():
        card_path = module_path.parent / card_path
    if not card_path.is_file():
        return [(f"{here}.model", f"model card {spec['model']!r} not found (looked for "
                                  f"{card_path}); train it with carecourse learn, fix the path "
                                  "(relative to the module file), or run with "
                                  "--learned-fallback")]
    card, problems = read_card(card_path)
    if card is None:
        return [(f"{here}.model", f"{card_path}: {p + ': ' if p else ''}{m}")
                for p, m in problems]
    out: list[tuple[str, str]] = []
    kind = spec.get("kind", DEFAULT_KIND)
    if card["kind"] != kind:
        out.append((f"{here}.model", f"{card_path} is a {card['kind']!r} model, the key asks "
                                     f"for kind {kind!r}"))
    weights = card_path.parent / card["weights"]
    if not weights.is_file():
        out.append((f"{here}.model", f"the weights file {weights} named by the card is "
                                     "missing; copy it beside the card"))
    elif isinstance(card.get("weights_sha256"), str) and \
            sha256_file(weights) != card["weights_sha256"]:
        out.append((f"{here}.model", f"{weights} does not match its card {card_path} "
                                     "(SHA-256 differs): the card and weights come from "
                                     "different trainings"))
    model_state = spec.get("state", sname)
    exits = card["model"]["exits"]
    if model_state not in exits:
        known = ", ".join(sorted(exits)) or "none"
        out.append((f"{here}.state", f"the model {spec['model']!r} has no state "
                                     f"{model_state!r} (its states with exits: {known}); "
                                     "name one with 'state'"))
        return out
    names = [c["name"] for c in card["model"]["covariates"]]
    for c in spec.get("covariates", {}):
        if c not in names:
            out.append((f"{here}.covariates.{c}", f"the model has no covariate {c!r} (its "
                                                  f"covariates: {', '.join(names) or 'none'})"))
    if key == "learned_transition":
        mapping = state["learned_transition"].get("exits", {})
        unknown = sorted(set(mapping) - set(exits[model_state]))
        if unknown:
            out.append((f"{here}.exits", f"the model's state {model_state!r} has no exit(s) "
                                         f"{', '.join(unknown)} (its exits: "
                                         f"{', '.join(exits[model_state])})"))
        mapped = {mapping.get(e, e) for e in exits[model_state]}
        fb = state["learned_transition"]["fallback"]
        targets = {t for _p, t, _l, _q in referenced_states(fb)} - {sname}
        if mapped != targets:
            out.append((f"{here}.exits",
                        f"the model's exits of {model_state!r} lead to "
                        f"{', '.join(sorted(mapped))}, the fallback to "
                        f"{', '.join(sorted(targets)) or 'nowhere else'}; make them the same "
                        "states (map model exits to states with 'exits')"))
    return out
