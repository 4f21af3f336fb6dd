"""The engine side of carecourse's GMF extension keys: ``learned_transition`` (a trained
model picks which exit a state takes) and ``learned_delay`` (a trained model says how long a
Delay lasts).

The engine never imports the code that evaluates models. A *learned kind* (an object with
``transition`` and ``delay`` methods, see :class:`LearnedKind`) is registered under a name
with :func:`register_learned_kind`; a state's key names its kind (``"kind"``, default
:data:`DEFAULT_KIND`). ``carecourse run`` registers the project's own kind (``hazard``, in
``learned.runtime``) when a module asks for one, in every worker process.

A missing kind is an error naming the module file, the state and the key, not a silent
fallback: a run that was meant to use a model and quietly used the hand-written fallback
would give wrong results that look right. Asking for the fallbacks is explicit: compiling
with ``use_fallbacks`` (``carecourse run --learned-fallback``) replaces every learned key by
its plain GMF fallback (:func:`plain_gmf`), so nothing learned is loaded at all.

>>> plain_gmf({"type": "Delay", "exact": {"quantity": 1, "unit": "months"},
...            "learned_delay": {}, "learned_transition": {
...                "model": "m.json", "fallback": {"direct_transition": "B"}}})
{'type': 'Delay', 'exact': {'quantity': 1, 'unit': 'months'}, 'direct_transition': 'B'}
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from modules.errors import ConfigError, ModuleError
from modules.extensions import DEFAULT_KIND, LEARNED_KEYS, delay_spec, uses_learned_keys
from simulator.timing import Sampler

__all__ = [
    "DEFAULT_KIND",
    "Duration",
    "LearnedKind",
    "LearnedSite",
    "Next",
    "learned_kind",
    "learned_kinds",
    "plain_gmf",
    "register_learned_kind",
    "uses_learned_keys",
]

#: ``next(run, t) -> state name``: a transition, as the engine calls it.
Next = Callable[[Any, float], str]
#: ``duration(run, t) -> days``: a learned delay (``math.inf``: the state is never left).
Duration = Callable[[Any, float], float]


@dataclass(frozen=True)
class LearnedSite:
    """Where a learned key sits: what a kind needs to find its model and to name the
    place in an error."""

    module_path: Path | None
    state: str
    key: str
    #: The key's object; for ``learned_delay``, completed with the model, model state,
    #: kind and covariates of the state's ``learned_transition`` where it leaves them out.
    spec: dict[str, Any]

    @property
    def where(self) -> str:
        return f"{self.module_path or '(module)'}: states.{self.state}.{self.key}"

    def resolve(self, path: str) -> Path:
        """A model path, relative to the module file's folder unless absolute."""
        p = Path(path)
        if p.is_absolute() or self.module_path is None:
            return p
        return Path(self.module_path).parent / p


class LearnedKind(Protocol):
    """What a learned model kind gives the engine. Both methods are called once, when a
    module is compiled; what they return is called for every patient, and must draw its
    randomness only from ``run.person.uniform`` so that output does not depend on how a
    run is split across processes."""

    def transition(self, site: LearnedSite, fallback: Next) -> Next:
        """``next(run, t)`` for a state with ``learned_transition``."""
        ...

    def delay(self, site: LearnedSite, fallback: Sampler) -> Duration:
        """``duration(run, t)`` in days for a Delay with ``learned_delay``."""
        ...


_KINDS: dict[str, LearnedKind] = {}


def register_learned_kind(name: str, kind: LearnedKind) -> None:
    """Register a learned model kind under ``name``. A duplicate name raises ConfigError."""
    if name in _KINDS:
        raise ConfigError(f"learned model kind {name!r} is already registered")
    _KINDS[name] = kind


def learned_kinds() -> list[str]:
    """The registered kinds, sorted."""
    return sorted(_KINDS)


def learned_kind(site: LearnedSite) -> LearnedKind:
    """The kind a key names. Raises ModuleError, naming the place, when it is not
    registered."""
    name = str(site.spec.get("kind", DEFAULT_KIND))
    try:
        return _KINDS[name]
    except KeyError:
        known = ", ".join(learned_kinds()) or "none"
        raise ModuleError(
            f"{site.where}: learned model kind {name!r} is not registered (registered: "
            f"{known}); carecourse run registers its own kinds, in Python import "
            f"learned.runtime first; to run the state's GMF fallback instead, use "
            f"carecourse run --learned-fallback") from None


def plain_gmf(state: dict[str, Any]) -> dict[str, Any]:
    """The state with its learned keys replaced by their GMF fallbacks: the
    ``learned_transition``'s ``fallback`` becomes the state's transition, and a
    ``learned_delay`` leaves the Delay's own ``exact``/``range``/``distribution``."""
    if not any(k in state for k in LEARNED_KEYS):
        return state
    out = {k: v for k, v in state.items() if k not in LEARNED_KEYS}
    lt = state.get("learned_transition")
    if isinstance(lt, dict) and isinstance(lt.get("fallback"), dict):
        out.update(lt["fallback"])
    return out


def delay_site(module_path: Path | None, name: str, state: dict[str, Any]) -> LearnedSite:
    """The site of a Delay's ``learned_delay``, completed from its ``learned_transition``."""
    return LearnedSite(module_path, name, "learned_delay", delay_spec(state))
