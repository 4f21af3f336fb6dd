"""Learned models in the engine: the ``hazard`` kind of ``learned_transition`` and
``learned_delay``.

Importing this module registers the kind with :mod:`simulator.extensions`. A model is
loaded once per process (torch reads its weights, with ``weights_only=True``) and turned
into numpy arrays; each call then costs a few small numpy operations, no torch.

How a stay is drawn, for a patient with covariates x in state s (bins of ``bin_days``):

- the delay: with p_j the chance of staying through bin j and S_j the product of
  p_0..p_j, one uniform u picks the first bin j whose cumulative chance of leaving
  1 - S_j passes u (inverse transform: one draw, whatever the number of bins); past the
  last modelled bin the last bin's hazard goes on (a geometric tail, drawn from the same
  u), and a model that never leaves gives an infinite delay. A second uniform places the
  end inside its bin (uniformly: the data say nothing finer than a bin);
- the transition: given the time spent in the state, the exit is drawn with the
  probabilities of the exits in that time's bin, renormalised (the cause-specific
  hazards). On a Delay with ``learned_delay``, the two together draw (time, exit) from
  exactly the model's competing-risks distribution; after a rule's delay, the exit is
  the model's given that the patient leaves at that time.

All draws come from the patient's own stream (``run.person.uniform``).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from learned.covariates import Covariate, _level
from learned.hazard import HazardSpec
from modules.errors import ModuleError, SimulationError
from simulator.extensions import Duration, LearnedSite, Next, register_learned_kind
from simulator.timing import Sampler

__all__ = ["HazardTables", "load_tables", "HazardKind"]

#: Keeps the end of a stay strictly inside its bin, away from the edge below, so that the
#: time in state read back by the transition falls in the same bin despite float error.
_INSIDE = 1e-6


class HazardTables:
    """A trained hazard model as numpy arrays: per state, the hazards of every bin as a
    function of the scaled covariates."""

    def __init__(self, spec: HazardSpec, weights: dict[str, np.ndarray],
                 covariates: Sequence[Covariate] = ()) -> None:
        self.spec = spec
        self.covariates = tuple(covariates)
        w = np.asarray(weights["linear.weight"], dtype=np.float64)
        b = np.asarray(weights["linear.bias"], dtype=np.float64)
        allowed = np.asarray(weights["allowed"], dtype=bool)
        nc, nt = len(spec.covariates), spec.n_time
        basis = spec.time_basis()
        if w.shape != (1 + len(spec.classes), spec.n_features) or allowed.shape != (
                len(spec.states), 1 + len(spec.classes)):
            raise ModuleError(f"the weights ({w.shape}) do not fit the model's shape "
                              f"({1 + len(spec.classes)}, {spec.n_features})")
        self._lo = np.array([lo for lo, _ in spec.bounds], dtype=np.float64)
        self._span = np.array([hi - lo for lo, hi in spec.bounds], dtype=np.float64)
        # The covariates shift a class's logit by the same amount in every bin, so the
        # softmax factors: exp(base[j] + k) = exp(base[j]) * exp(k). Per state, keep
        # exp(base) (each row scaled by its largest entry, which cancels) and the map to k.
        self._tables: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for k, s in enumerate(spec.states):
            cols = np.flatnonzero(allowed[k])
            off = k * spec.block
            wk = w[cols]
            base = basis @ wk[:, off + nc: off + nc + nt].T + b[cols]  # [bins, 1 + exits]
            self._tables[s] = (np.exp(base - base.max(axis=1, keepdims=True)),
                               wk[:, off: off + nc])
        self._cache: dict[tuple[str, tuple[float, ...]], _Prepared] = {}

    def exits(self, state: str) -> tuple[str, ...]:
        return self.spec.exits[state]

    def hazards(self, state: str, x: Sequence[float]) -> np.ndarray:
        """[bins, 1 + exits]: per bin, P(stay) and P(leave by each exit), given that the
        patient is in ``state`` at the bin's start (as ``HazardModel.hazards``)."""
        p = self._prepared(state, tuple(x))
        return p.weights / p.total[:, None]

    def _prepared(self, state: str, x: tuple[float, ...]) -> _Prepared:
        key = (state, x)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        e, wc = self._tables[state]
        if len(x):
            z = np.clip((np.asarray(x, dtype=np.float64) - self._lo) / self._span, 0.0, 1.0)
            shift = wc @ z
            weights = e * np.exp(shift - shift.max())
        else:
            weights = e
        out = _Prepared(weights, weights.sum(axis=1))
        if len(self._cache) >= 4096:  # covariates that repeat (sex, arm) stay cached
            del self._cache[next(iter(self._cache))]
        self._cache[key] = out
        return out

    def exit_distribution(self, state: str, x: Sequence[float]) -> dict[str, float]:
        """P(leaving by each exit within the modelled bins)."""
        h = self.hazards(state, x)
        alive = np.concatenate([[1.0], np.cumprod(h[:-1, 0])])
        return dict(zip(self.exits(state), (alive[:, None] * h[:, 1:]).sum(axis=0).tolist(),
                        strict=True))

    def bin_of(self, days: float) -> int:
        """The bin that holds a time in state: bin j holds (j*w, (j+1)*w]."""
        return max(0, math.ceil(days / self.spec.bin_days - 1e-9) - 1)

    def draw_dwell(self, state: str, x: Sequence[float], u: Callable[[], float]) -> float:
        """Days in ``state`` (``math.inf`` when the model never leaves); two draws."""
        p = self._prepared(state, tuple(x))
        left = p.left
        v, w = u(), u()
        j = bisect.bisect_right(left, v)
        if j >= len(left):
            # Past the modelled bins the last bin's hazard goes on: the number of further
            # whole bins survived is geometric, drawn from what is left of v.
            q = 1.0 - p.stay_last
            rest = (v - left[-1]) / (1.0 - left[-1]) if left[-1] < 1.0 else 0.0
            if q <= 0.0:
                return math.inf
            extra = math.floor(math.log1p(-rest) / math.log1p(-q)) if q < 1.0 else 0
            j = len(left) + extra
        return (j + 1 - w * (1 - _INSIDE)) * self.spec.bin_days

    def draw_exit(self, state: str, x: Sequence[float], days: float, u: float) -> int:
        """Index of the exit taken after ``days`` in ``state``; one draw ``u``."""
        row = self._prepared(state, tuple(x)).exit_row(self.bin_of(days))
        target = u * sum(row)
        acc = 0.0
        for i, p in enumerate(row):
            acc += p
            if target < acc:
                return i
        return len(row) - 1


class _Prepared:
    """The hazards of one state for one covariate vector, as the draws use them:
    unnormalised class weights per bin and their sums; the cumulative chance of having
    left by the end of each bin (a list, for bisection); exit weights by bin on demand."""

    __slots__ = ("weights", "total", "left", "stay_last", "_rows")

    def __init__(self, weights: np.ndarray, total: np.ndarray) -> None:
        self.weights = weights
        self.total = total
        stay = weights[:, 0] / total
        self.left = (1.0 - np.cumprod(stay)).tolist()
        self.stay_last = float(stay[-1])
        self._rows: dict[int, list[float]] = {}

    def exit_row(self, j: int) -> list[float]:
        j = min(j, len(self.total) - 1)
        row = self._rows.get(j)
        if row is None:
            row = self._rows[j] = self.weights[j, 1:].tolist()
        return row


_LOADED: dict[tuple[str, int, int], HazardTables] = {}


def load_tables(card_path: Path) -> HazardTables:
    """The model of a card, as numpy tables (cached per file and version)."""
    from learned.modelfile import _card, load_weights

    p = Path(card_path).resolve()
    try:
        st = p.stat()
    except OSError:
        raise ModuleError(f"{card_path}: no such model card") from None
    key = (str(p), st.st_mtime_ns, st.st_size)
    hit = _LOADED.get(key)
    if hit is None:
        card = _card(p)
        try:
            spec = HazardSpec.from_dict(card["model"]["spec"])
            covs = [Covariate.from_dict(c) for c in card["model"]["covariates"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ModuleError(f"{card_path}: the card's model is malformed ({exc})") from None
        hit = HazardTables(spec, load_weights(p), covs)
        _LOADED[key] = hit
    return hit


def _reader(tables: HazardTables, site: LearnedSite) -> Callable[[Any], tuple[float, ...]]:
    """``read(run) -> feature values`` of the covariates, from the key's sources."""
    sources = site.spec.get("covariates", {}) or {}
    names = [c.name for c in tables.covariates]
    unknown = sorted(set(sources) - set(names))
    if unknown:
        raise ModuleError(f"{site.where}.covariates: the model has no covariate(s) "
                          f"{', '.join(unknown)} (its covariates: {', '.join(names) or 'none'})")
    getters = []
    for cov in tables.covariates:
        src = sources.get(cov.name, {"attribute": cov.name})
        getters.append((cov, _getter(cov, src, site)))
    if not getters:
        return lambda run: ()

    def read(run: Any) -> tuple[float, ...]:
        out: list[float] = []
        for cov, get in getters:
            value = get(run)
            try:
                out.extend(cov.encode(value, strict=True))
            except ValueError as exc:
                raise SimulationError(
                    f"module {run.module_name!r}, state {run.state_name!r}: covariate "
                    f"{cov.name!r} of the learned model: {exc}; map the patient's values "
                    f"to the model's with {site.key}.covariates.{cov.name}.values") from None
        return tuple(out)
    return read


def _getter(cov: Covariate, src: Any, site: LearnedSite) -> Callable[[Any], Any]:
    if src == "age":
        return lambda run: run.person.age_decimal(run.entered)
    if "age_plus" in src:
        plus = float(src["age_plus"])
        return lambda run: run.person.age_decimal(run.entered) + plus
    if "value" in src:
        const = src["value"]
        return lambda run: const
    attr = src["attribute"]
    values = {str(k): v for k, v in (src.get("values") or {}).items()}
    has_default = "default" in src
    default = src.get("default")

    def get(run: Any) -> Any:
        v = run.person.attributes.get(attr)
        if v is None:
            if has_default:
                return default
            raise SimulationError(
                f"module {run.module_name!r}, state {run.state_name!r}: the learned model "
                f"reads covariate {cov.name!r} from patient attribute {attr!r}, which is not "
                f"set; set it in a module, or give a default in "
                f"{site.key}.covariates.{cov.name}")
        return values.get(_level(v), v) if values else v
    return get


class HazardKind:
    """The ``hazard`` kind: a discrete-time competing-risks model trained by
    ``carecourse learn`` (:mod:`learned.hazard`)."""

    def _open(self, site: LearnedSite) -> tuple[HazardTables, str]:
        try:
            tables = load_tables(site.resolve(str(site.spec["model"])))
        except ModuleError as exc:
            raise ModuleError(f"{site.where}.model: {exc}") from None
        state = str(site.spec.get("state", site.state))
        if state not in tables.spec.exits:
            raise ModuleError(f"{site.where}.state: the model has no state {state!r} (its "
                              f"states: {', '.join(tables.spec.states)})")
        return tables, state

    def transition(self, site: LearnedSite, fallback: Next) -> Next:
        tables, state = self._open(site)
        mapping = site.spec.get("exits", {}) or {}
        targets = [str(mapping.get(e, e)) for e in tables.exits(state)]
        read = _reader(tables, site)
        draw = tables.draw_exit

        def nxt(run: Any, t: float) -> str:
            return targets[draw(state, read(run), t - run.entered, run.person.uniform())]
        return nxt

    def delay(self, site: LearnedSite, fallback: Sampler) -> Duration:
        tables, state = self._open(site)
        read = _reader(tables, site)
        draw = tables.draw_dwell

        def duration(run: Any, t: float) -> float:
            return draw(state, read(run), run.person.uniform)
        return duration


register_learned_kind("hazard", HazardKind())
