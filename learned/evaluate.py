"""How close a synthetic population is to the real data it learned from, how useful it is,
and how much of the real data it gives away: what ``carecourse evaluate`` reports.

Three questions, each answered against the real patients the generator was trained on
(``real``) and, when there is one, real patients it never saw (``holdout``):

- **fidelity**: do the synthetic patients look like the real ones? Per-covariate
  marginals (total-variation distance of binned columns, Kolmogorov-Smirnov for numbers),
  pairwise associations (correlations, Cramér's V), transitions between states, and
  Kaplan-Meier curves of the time to each state with log-rank tests. With a holdout, the
  same distances between the holdout and the training data say how far two real samples
  of the same sizes already are apart.
- **utility**: does a model trained on synthetic patients work on real ones? The AUC of
  a classifier of an outcome (by default: entering the first endpoint state by a
  horizon) trained on the synthetic data and tested on real data ("train on synthetic,
  test on real"), beside the same classifier trained on real data (the reference).
- **privacy**: does the synthetic data copy real patients? The distance from each
  synthetic record to its closest training record, against the same distance for holdout
  records (a generator that copies makes synthetic records closer than new real ones),
  and a membership-inference attack that guesses, from the distance to the closest
  synthetic record, whether a real patient was in the training data.

The two data sets are first brought to one form (:func:`align`): a synthetic population
from ``carecourse run`` counts time from birth, so it is re-timed to the entry into the
state that marks the real data's time 0 (:func:`retime`); codes and covariates are matched
by name. The report is computed from the real data and is not differentially private: it
is for the data's custodian, not for release beside the synthetic data.

>>> from learned.datasets import load_dataset
>>> real = load_dataset("lymph_node")
>>> train, holdout = split_holdout(real, 0.3, seed=1)
>>> train.patients, holdout.patients
(480, 206)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from learned.evaluate_metrics import (
    AUC,
    Discretizer,
    GowerEncoder,
    KMComparison,
    advantage,
    auc_with_ci,
    closest_distances,
    correlation_matrix,
    counts,
    cramers_v_matrix,
    joint_counts,
    km_compare,
    ks,
    tvd,
)
from learned.events import EventData, covariate_kind
from learned.synthetic import BIRTH_ORIGIN
from modules.errors import ConfigError

__all__ = [
    "EvaluateOptions",
    "Marginal",
    "TransitionRow",
    "TimeToState",
    "Fidelity",
    "Utility",
    "Privacy",
    "Metrics",
    "Details",
    "Report",
    "Aligned",
    "evaluate",
    "align",
    "retime",
    "censor",
    "select_patients",
    "split_holdout",
    "time_to_state",
    "register_classifier",
    "classifier_names",
    # re-exported for Kaplan-Meier comparisons elsewhere (trial arms)
    "km_compare",
    "KMComparison",
]

_YEAR = 365.25
#: Distances at or below this are exact copies (floating-point slack of the encoding).
EXACT = 1e-9


# --- options and results ---------------------------------------------------------------------

@dataclass(frozen=True)
class EvaluateOptions:
    """What to measure, and how.

    ``bins``: bins of numeric columns for TVD and Cramér's V. ``outcome``: the utility
    outcome, a state (entered by ``horizon`` days) or a two-valued covariate (default:
    the real data's first state after the initial one). ``horizon``: default the median
    follow-up of the real data. ``follow_up``: every population is censored there
    (default: the longest real follow-up), so that a synthetic population followed for
    longer is not counted as having more events. ``model``: a registered classifier.
    ``resamples``: bootstrap resamples of each AUC interval.
    """

    bins: int = 10
    outcome: str | None = None
    horizon: float | None = None
    follow_up: float | None = None
    model: str = "logistic"
    resamples: int = 1000
    seed: int = 0
    progress: bool = False

    def check(self) -> None:
        if self.bins < 2:
            raise ConfigError(f"bins must be at least 2, got {self.bins}")
        for name in ("horizon", "follow_up"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise ConfigError(f"{name.replace('_', '-')} must be a positive number of "
                                  f"days, got {v}")
        if self.resamples < 100:
            raise ConfigError(f"resamples must be at least 100, got {self.resamples}")
        if self.model not in _CLASSIFIERS:
            raise ConfigError(f"unknown model {self.model!r}; known: "
                              f"{', '.join(classifier_names())}")


@dataclass(frozen=True)
class Marginal:
    """One covariate's distribution, real against synthetic."""

    covariate: str
    kind: str
    #: TVD of the binned column (0: the same shares in every bin; 1: no overlap).
    tvd: float
    #: Kolmogorov-Smirnov statistic and p-value (numeric columns).
    ks: float | None
    ks_p: float | None
    real_missing: float
    synthetic_missing: float
    #: The TVD between the holdout and the training data: what sampling alone gives.
    reference_tvd: float | None


@dataclass(frozen=True)
class TransitionRow:
    """Patients who went from ``source`` to ``target``, and that transition's share of
    all transitions out of ``source``, in each population."""

    source: str
    target: str
    real: int
    synthetic: int
    real_share: float
    synthetic_share: float


@dataclass(frozen=True)
class TimeToState:
    """Time from time 0 to the first entry into ``state``, real against synthetic."""

    state: str
    horizon: float
    real_patients: int
    real_events: int
    synthetic_patients: int
    synthetic_events: int
    #: Median time to the state (None: fewer than half enter it before the horizon).
    real_median: float | None
    synthetic_median: float | None
    #: The largest vertical distance between the Kaplan-Meier curves, and when.
    gap: float
    gap_time: float
    logrank_statistic: float
    logrank_p: float


@dataclass(frozen=True)
class Fidelity:
    covariates: tuple[str, ...]
    marginals: tuple[Marginal, ...]
    #: Mean TVD of the 1-way and of the 2-way marginals of the binned covariates.
    tvd1_mean: float | None
    tvd2_mean: float | None
    #: The same between the holdout and the training data (None without a holdout).
    tvd1_mean_reference: float | None
    tvd2_mean_reference: float | None
    ks_mean: float | None
    #: Mean and largest absolute difference of the Pearson correlations of numeric
    #: covariates and of the Cramér's V of all (binned) covariates, over pairs.
    correlation_diff_mean: float | None
    correlation_diff_max: float | None
    cramers_v_diff_mean: float | None
    cramers_v_diff_max: float | None
    states: tuple[str, ...]
    transitions: tuple[TransitionRow, ...]
    #: Mean over source states of the TVD of where patients go next.
    transition_tvd: float | None
    time_to_state: tuple[TimeToState, ...]
    km_gap_max: float | None
    follow_up: float
    #: Why states were not compared, when they were not.
    note: str = ""


@dataclass(frozen=True)
class Utility:
    outcome: str | None
    outcome_kind: Literal["state", "covariate"] | None
    horizon: float | None
    model: str
    features: tuple[str, ...]
    #: Train on synthetic, test on real.
    tstr: AUC | None
    #: Train on real, test on real: the reference a synthetic population can approach.
    trtr: AUC | None
    #: What TRTR is: "holdout" (trained on the training data, tested on the holdout)
    #: or "cross-validation" (5-fold, on the real data, when there is no holdout).
    reference: str
    test: str
    synthetic_train_patients: int
    real_train_patients: int
    test_patients: int
    note: str = ""


@dataclass(frozen=True)
class Privacy:
    features: tuple[str, ...]
    #: Distance to the closest training record (Gower, 0 to 1): its median and 5th
    #: percentile for synthetic records and for holdout records.
    dcr_synthetic_median: float | None
    dcr_synthetic_p05: float | None
    dcr_holdout_median: float | None
    dcr_holdout_p05: float | None
    #: Median synthetic DCR over median holdout DCR: below 1, synthetic records are
    #: closer to the training data than new real patients are.
    dcr_ratio: float | None
    #: The chance that a synthetic record is closer to the training data than a holdout
    #: record (ties count one half), with its bootstrap interval: 0.5 when synthetic
    #: records are no closer than new patients, above when the generator copies.
    dcr_closer: AUC | None
    #: Shares of records that are exact copies of a training record.
    exact_copies_synthetic: float | None
    exact_copies_holdout: float | None
    #: The distance attack: members (training) against non-members (holdout).
    mia_auc: AUC | None
    mia_advantage: float | None
    note: str = ""


@dataclass(frozen=True)
class Metrics:
    """Everything ``carecourse evaluate`` measured (written as ``metrics.json``)."""

    real: str
    synthetic: str
    holdout: str | None
    real_patients: int
    synthetic_patients: int
    holdout_patients: int
    fidelity: Fidelity
    utility: Utility
    privacy: Privacy
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


@dataclass(frozen=True, eq=False)
class Details:
    """The arrays behind the report's pictures."""

    #: covariate -> (bin labels, real shares, synthetic shares)
    marginals: dict[str, tuple[tuple[str, ...], np.ndarray, np.ndarray]]
    #: "cramers_v" / "correlation" -> (columns, real matrix, synthetic matrix)
    associations: dict[str, tuple[tuple[str, ...], np.ndarray, np.ndarray]]
    km: dict[str, KMComparison]
    #: "tstr" / "trtr" -> (labels, scores) on the test data
    roc: dict[str, tuple[np.ndarray, np.ndarray]]
    dcr_synthetic: np.ndarray
    dcr_holdout: np.ndarray | None
    #: labels (1: member) and attack scores
    mia: tuple[np.ndarray, np.ndarray] | None


@dataclass(frozen=True, eq=False)
class Report:
    """The result of :func:`evaluate`: the metrics, and what draws the pictures."""

    metrics: Metrics
    details: Details
    inputs: dict[str, str] = field(default_factory=dict)

    @cached_property
    def figures(self) -> dict[str, bytes]:
        """The pictures as PNG files: name -> bytes (drawn once, on first use)."""
        from learned.evaluate_report import figures

        return figures(self)

    def html(self) -> str:
        """The report as one HTML page with its pictures embedded."""
        from learned.evaluate_report import render_html

        return render_html(self, self.figures)

    def write(self, out: str | Path) -> Path:
        """Write ``report.html``, ``metrics.json`` and ``figures/*.png`` into the folder
        ``out``, atomically (all of it appears at once, or nothing changes)."""
        from learned.evaluate_report import write_report

        return write_report(self, Path(out))


# --- classifiers -----------------------------------------------------------------------------

_CLASSIFIERS: dict[str, Callable[[int], Any]] = {}


def register_classifier(name: str, factory: Callable[[int], Any]) -> None:
    """Add a utility classifier: ``factory(seed)`` returns a scikit-learn classifier with
    ``predict_proba``. A name that is already registered raises ValueError."""
    if name in _CLASSIFIERS:
        raise ValueError(f"a classifier named {name!r} is already registered")
    _CLASSIFIERS[name] = factory


def classifier_names() -> list[str]:
    return list(_CLASSIFIERS)


def _logistic(seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=5000)


def _boosting(seed: int) -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(random_state=seed, max_iter=200)


register_classifier("logistic", _logistic)
register_classifier("boosting", _boosting)


# --- data preparation ------------------------------------------------------------------------

def select_patients(data: EventData, ids: Iterable[str]) -> EventData:
    """The same data restricted to the patients ``ids`` (in the data's order)."""
    keep = set(ids)
    base = data.baseline[data.baseline.index.isin(keep)]
    ev = data.events[data.events["patient_id"].isin(keep)].reset_index(drop=True)
    return replace(data, events=ev, baseline=base, end=data.end.reindex(base.index))


def split_holdout(data: EventData, fraction: float, seed: int) -> tuple[EventData, EventData]:
    """Split patients into (training, holdout): the holdout is the first
    ``round(fraction * patients)`` patients of ``numpy.random.default_rng(seed)
    .permutation`` of the patients in id order. The same data, fraction and seed give the
    same split, so a learner that holds out patients this way can be evaluated against
    exactly the patients it never saw."""
    if not 0 < fraction < 1:
        raise ConfigError(f"--holdout-fraction must be between 0 and 1, got {fraction}")
    ids = list(data.baseline.index)
    k = int(round(fraction * len(ids)))
    if k < 1 or k >= len(ids):
        raise ConfigError(f"a holdout fraction of {fraction} of {len(ids)} patients leaves "
                          "no patient on one side; use more data or another fraction")
    order = np.random.default_rng(seed).permutation(len(ids))
    hold = {ids[i] for i in order[:k]}
    return (select_patients(data, [i for i in ids if i not in hold]),
            select_patients(data, [i for i in ids if i in hold]))


def censor(data: EventData, at: float) -> EventData:
    """Follow-up ends at ``at`` days at the latest: later events are left out."""
    ev = data.events[data.events["time"] <= at].reset_index(drop=True)
    return replace(data, events=ev, end=data.end.clip(upper=at))


def _state_codes(data: EventData) -> pd.Series:
    ev = data.events
    return ev.loc[ev["kind"] == "state", "code"]


def _resolve_state(data: EventData, text: str) -> str | None:
    """The state code that ``text`` names: the code itself, else the one code whose part
    after ``SYSTEM|`` or whose display is ``text`` (ignoring case)."""
    ev = data.events[data.events["kind"] == "state"]
    codes = set(ev["code"])
    if text in codes:
        return text
    t = text.strip().lower()
    hits = {c for c in codes if c.split("|")[-1].lower() == t}
    hits |= set(ev.loc[ev["display"].str.lower() == t, "code"])
    return next(iter(hits)) if len(hits) == 1 else None


def retime(data: EventData, state: str, *, initial_state: str | None = None,
           label: str = "") -> EventData:
    """Count time from each patient's first entry into ``state`` (a code, or its code
    without the system or its display when that names one state): patients who never
    enter it are left out, earlier events are dropped, and ``state`` becomes the initial
    state (named ``initial_state`` when given, e.g. the real data's). When time 0 was
    birth (carecourse output, FHIR), a numeric ``age`` covariate becomes the age in years
    at the new time 0."""
    code = _resolve_state(data, state)
    if code is None:
        seen = _state_codes(data).value_counts()
        shown = ", ".join(f"{c} ({n})" for c, n in seen.head(12).items()) or "none"
        raise ConfigError(f"{label or data.name}: --origin-state {state!r} is not a state of "
                          f"the data; states (entries): {shown}")
    ev = data.events
    t0 = ev.loc[(ev["kind"] == "state") & (ev["code"] == code)].groupby("patient_id")["time"]
    t0 = t0.min()
    start = t0.reindex(ev["patient_id"]).to_numpy()
    ev = ev.assign(time=ev["time"].to_numpy() - start)
    ev = ev[np.isfinite(start) & (ev["time"].to_numpy() >= 0)]
    name = initial_state or code
    if name != code:
        ev = ev.assign(code=ev["code"].where(ev["code"] != code, name))
    ev = ev.reset_index(drop=True)
    base = data.baseline.loc[data.baseline.index.isin(t0.index)]
    if data.origin == BIRTH_ORIGIN and "age" in base.columns \
            and covariate_kind(base["age"]) == "numeric":
        base = base.assign(age=t0.reindex(base.index).to_numpy() / _YEAR)
    end = data.end.reindex(base.index) - t0.reindex(base.index)
    left = data.patients - len(base)
    note = (f"re-timed: time 0 is the first entry into {code}"
            + (f" (named {name})" if name != code else "")
            + (f"; {left} patient(s) who never entered it are left out" if left else ""))
    return replace(data, events=ev, baseline=base, end=end, origin=f"entry into {code}",
                   initial_state=name, notes=(*data.notes, note))


@dataclass(frozen=True, eq=False)
class Aligned:
    """Real, synthetic and holdout data brought to one form, with what was done to them."""

    real: EventData
    synthetic: EventData
    holdout: EventData | None
    notes: tuple[str, ...] = ()


def align(real: EventData, synthetic: EventData, *, holdout: EventData | None = None,
          origin_state: str | None = None, rename: Mapping[str, str] | None = None,
          follow_up: float | None = None) -> Aligned:
    """Bring the synthetic (and, where needed, the real) data to the real data's form.

    1. ``rename`` maps synthetic covariate names and state codes to the real ones.
    2. ``origin_state``: data whose time 0 is birth (carecourse output, FHIR) is re-timed
       to the entry into that state (:func:`retime`); the synthetic data's initial state
       then takes the real data's name.
    3. A real state that the synthetic data lacks is matched to the one synthetic state
       whose code (without the system) or display is the real state's code.
    4. Synthetic covariates take the real ones' kinds (numbers become categories where
       the real column is categorical, written as the real data writes them).
    5. Every population is censored at ``follow_up`` days (default: the longest real
       follow-up), and synthetic states that the real data does not have are left out of
       the comparison.

    Raises :class:`ConfigError` when the populations cannot be compared: no patients, no
    covariate in common, an unknown origin state, or a synthetic population counted from
    birth against real data that is not (without ``origin_state``).
    """
    for label, data in (("real", real), ("synthetic", synthetic), ("holdout", holdout)):
        if data is not None and data.patients == 0:
            raise ConfigError(f"{label} data {data.name}: no patients; nothing to compare")
    notes: list[str] = []
    if holdout is not None:
        both = set(real.baseline.index) & set(holdout.baseline.index)
        if both:
            notes.append(f"{len(both)} patient id(s) are both in the real and in the holdout "
                         "data; if they are the same patients, the holdout is not one and the "
                         "privacy tests cannot see copying")
    if rename:
        synthetic = _rename(synthetic, rename)
        notes.append("renamed in the synthetic data: " + ", ".join(
            f"{a} -> {b}" for a, b in rename.items()))
    if origin_state is not None:
        retimed = False
        if real.origin == BIRTH_ORIGIN:
            real = retime(real, origin_state, label="real")
            holdout = retime(holdout, origin_state, label="holdout") if holdout else None
            retimed = True
        synthetic = retime(synthetic, origin_state, initial_state=real.initial_state,
                           label="synthetic")
        notes.append(f"{'real and synthetic' if retimed else 'synthetic'} data re-timed to "
                     f"the entry into {origin_state}")
        if synthetic.patients == 0:
            raise ConfigError(f"synthetic data: no patient enters {origin_state}")
    elif synthetic.origin == BIRTH_ORIGIN and real.origin != BIRTH_ORIGIN \
            and len(_state_codes(synthetic)) and len(_state_codes(real)):
        raise ConfigError(f"synthetic data {synthetic.name}: time 0 is birth, the real data's "
                          f"is {real.origin}; give --origin-state CODE, the synthetic state "
                          "whose entry is the real data's time 0")
    real_states = real.states()
    syn_codes = set(_state_codes(synthetic))
    matched = {}
    for s in real_states:
        if s in syn_codes or s == synthetic.initial_state:
            continue
        code = _resolve_state(synthetic, s)
        if code is not None and code not in real_states:
            matched[code] = s
    if matched:
        synthetic = _rename(synthetic, matched)
        notes.append("synthetic states matched to real ones by code or display: "
                     + ", ".join(f"{a} -> {b}" for a, b in matched.items()))
    shared = [c for c in real.baseline.columns if c in synthetic.baseline.columns]
    if not shared:
        raise ConfigError(
            f"the real data ({', '.join(map(str, real.baseline.columns)) or 'none'}) and the "
            f"synthetic data ({', '.join(map(str, synthetic.baseline.columns)) or 'none'}) "
            "have no covariate in common; name synthetic columns as the real ones with "
            "--rename SYNTHETIC=REAL")
    if holdout is not None:
        missing = [c for c in shared if c not in holdout.baseline.columns]
        if missing:
            raise ConfigError(f"holdout data {holdout.name} lacks the covariate(s) "
                              f"{', '.join(missing)} that real and synthetic share; the "
                              "holdout must be the same kind of data as the real data")
    synthetic = _like(synthetic, real, shared, notes)
    if holdout is not None:
        holdout = _like(holdout, real, shared, notes)
    horizon = float(real.end.max()) if follow_up is None else float(follow_up)
    if not math.isfinite(horizon) or horizon <= 0:
        horizon = math.inf
    if math.isfinite(horizon):
        real, synthetic = censor(real, horizon), censor(synthetic, horizon)
        holdout = censor(holdout, horizon) if holdout is not None else None
    keep = set(real_states)
    dropped = sorted(set(_state_codes(synthetic)) - keep)
    if dropped:
        ev = synthetic.events
        synthetic = replace(synthetic, events=ev[(ev["kind"] != "state") | ev["code"].isin(keep)]
                            .reset_index(drop=True))
        notes.append(f"{len(dropped)} synthetic state code(s) that the real data does not have "
                     "are left out of the comparison")
    return Aligned(real, synthetic, holdout, tuple(notes))


def _rename(data: EventData, mapping: Mapping[str, str]) -> EventData:
    base = data.baseline.rename(columns=dict(mapping))
    ev = data.events.assign(code=data.events["code"].replace(dict(mapping)))
    return replace(data, events=ev, baseline=base)


def _like(data: EventData, real: EventData, shared: list[str], notes: list[str]) -> EventData:
    """``data``'s shared covariates with the kinds of the real data's."""
    base = data.baseline[shared].copy()
    for c in shared:
        want, have = covariate_kind(real.baseline[c]), covariate_kind(base[c])
        if want == have:
            continue
        if want == "categorical":
            v = base[c].astype(float)
            base[c] = pd.Categorical(v.map(lambda x: f"{x:g}" if pd.notna(x) else None))
        else:
            v = pd.to_numeric(base[c].astype(object), errors="coerce")
            if v.isna().sum() > base[c].isna().sum():
                raise ConfigError(f"covariate {c!r} is numeric in the real data but holds "
                                  f"text in {data.name}; rename or recode it")
            base[c] = v.astype(float)
        notes.append(f"{data.name}: covariate {c!r} read as {want}, as in the real data")
    return replace(data, baseline=base)


def time_to_state(data: EventData, state: str) -> tuple[np.ndarray, np.ndarray]:
    """(durations, observed) for each patient, in the data's order: the time of the
    first entry into ``state``, else the end of follow-up (censored)."""
    ev = data.events
    first = ev.loc[(ev["kind"] == "state") & (ev["code"] == state)].groupby("patient_id")["time"]
    t = first.min().reindex(data.baseline.index)
    end = data.end.reindex(data.baseline.index).to_numpy(dtype=float)
    observed = t.notna().to_numpy()
    return np.where(observed, t.to_numpy(dtype=float), end), observed


# --- the evaluation --------------------------------------------------------------------------

class _Steps:
    """A progress bar over the evaluation's steps."""

    def __init__(self, total: int, enabled: bool) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="step", disable=not enabled, dynamic_ncols=True,
                        desc="evaluate")

    def __call__(self, what: str) -> None:
        self.bar.set_postfix_str(what, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def evaluate(real: EventData, synthetic: EventData, *, holdout: EventData | None = None,
             options: EvaluateOptions | None = None, aligned: bool = False,
             origin_state: str | None = None, rename: Mapping[str, str] | None = None,
             inputs: Mapping[str, str] | None = None) -> Report:
    """Compare ``synthetic`` with ``real`` (the patients it was learned from) and, when
    given, ``holdout`` (real patients it never saw); see the module docstring.

    Unless ``aligned``, the data are first brought to one form by :func:`align` (with
    ``origin_state`` and ``rename``). Randomness (bootstrap resamples, cross-validation
    folds) comes from ``options.seed``, so the same inputs give the same report. Raises
    :class:`ConfigError` when the data cannot be compared.
    """
    options = options or EvaluateOptions()
    options.check()
    notes: list[str] = []
    if not aligned:
        a = align(real, synthetic, holdout=holdout, origin_state=origin_state, rename=rename,
                  follow_up=options.follow_up)
        real, synthetic, holdout, notes = a.real, a.synthetic, a.holdout, list(a.notes)
    shared = [c for c in real.baseline.columns if c in synthetic.baseline.columns]
    if not shared:
        raise ConfigError("the real and synthetic data have no covariate in common")
    states = [s for s in real.states() if s != real.initial_state]
    steps = _Steps(total=4 + len(states), enabled=options.progress)
    rng = np.random.default_rng(options.seed)
    try:
        fidelity, fdetails = _fidelity(real, synthetic, holdout, shared, states, options, steps)
        utility, roc = _utility(real, synthetic, holdout, shared, options, rng)
        steps("utility")
        privacy, pdetails = _privacy(real, synthetic, holdout, shared, options, rng)
        steps("privacy")
    finally:
        steps.close()
    metrics = Metrics(
        real=real.name, synthetic=synthetic.name,
        holdout=holdout.name if holdout is not None else None, real_patients=real.patients,
        synthetic_patients=synthetic.patients,
        holdout_patients=holdout.patients if holdout is not None else 0, fidelity=fidelity,
        utility=utility, privacy=privacy, notes=tuple(notes))
    details = Details(marginals=fdetails["marginals"], associations=fdetails["associations"],
                      km=fdetails["km"], roc=roc, **pdetails)
    return Report(metrics, details, dict(inputs or {}))


def _mean(values: Iterable[float | None]) -> float | None:
    v = [x for x in values if x is not None and not math.isnan(x)]
    return float(np.mean(v)) if v else None


def _max(values: Iterable[float | None]) -> float | None:
    v = [x for x in values if x is not None and not math.isnan(x)]
    return float(np.max(v)) if v else None


def _tvds(disc: Discretizer, a: np.ndarray, b: np.ndarray) -> tuple[list[float], list[float]]:
    """1-way TVD per column and 2-way TVD per pair of columns, of two coded frames."""
    cols = disc.columns
    sizes = [disc.size(c) for c in cols]
    one = [tvd(counts(a[:, j], sizes[j]), counts(b[:, j], sizes[j])) for j in range(len(cols))]
    two = []
    for i in range(len(cols)):
        for j in range(i + 1, len(cols)):
            two.append(tvd(joint_counts(a[:, i], a[:, j], sizes[i], sizes[j]),
                           joint_counts(b[:, i], b[:, j], sizes[i], sizes[j])))
    return one, two


def _fidelity(real: EventData, synthetic: EventData, holdout: EventData | None,
              shared: list[str], states: list[str], options: EvaluateOptions,
              steps: _Steps) -> tuple[Fidelity, dict[str, Any]]:
    rb, sb = real.baseline[shared], synthetic.baseline[shared]
    hb = holdout.baseline[shared] if holdout is not None else None
    disc = Discretizer.fit(rb, [sb] + ([hb] if hb is not None else []), bins=options.bins)
    rc, sc = disc.codes(rb), disc.codes(sb)
    one, two = _tvds(disc, rc, sc)
    ref_one: list[float] | None = None
    ref_two: list[float] | None = None
    if hb is not None:
        ref_one, ref_two = _tvds(disc, rc, disc.codes(hb))
    marginals, shares = [], {}
    for j, c in enumerate(shared):
        kind = covariate_kind(rb[c])
        k, p = ks(rb[c].to_numpy(float), sb[c].to_numpy(float)) if kind == "numeric" \
            else (None, None)
        marginals.append(Marginal(c, kind, one[j], k, p, float(rb[c].isna().mean()),
                                  float(sb[c].isna().mean()),
                                  ref_one[j] if ref_one is not None else None))
        size = disc.size(c)
        rs, ss = counts(rc[:, j], size), counts(sc[:, j], size)
        shares[c] = (disc.labels[c], rs / rs.sum(), ss / ss.sum())
    steps("marginals")

    associations: dict[str, tuple[tuple[str, ...], np.ndarray, np.ndarray]] = {}
    sizes = [disc.size(c) for c in shared]
    vr, vs = cramers_v_matrix(rc, sizes), cramers_v_matrix(sc, sizes)
    associations["cramers_v"] = (tuple(shared), vr, vs)
    numeric = [c for c in shared if covariate_kind(rb[c]) == "numeric"]
    corr_diff: list[float] = []
    if len(numeric) >= 2:
        cr, cs = correlation_matrix(rb[numeric]), correlation_matrix(sb[numeric])
        associations["correlation"] = (tuple(numeric), cr, cs)
        iu = np.triu_indices(len(numeric), 1)
        corr_diff = np.abs(cr - cs)[iu].tolist()
    iu = np.triu_indices(len(shared), 1)
    v_diff = np.abs(vr - vs)[iu].tolist()
    steps("associations")

    km: dict[str, KMComparison] = {}
    times: list[TimeToState] = []
    transitions: list[TransitionRow] = []
    transition_tvd = None
    horizon = min(float(real.end.max()), float(synthetic.end.max()))
    note = ""
    if not len(_state_codes(synthetic)) and horizon <= 0:
        note = ("the synthetic data has covariates only (no states, no follow-up): states "
                "and times to them are not compared")
    elif horizon <= 0:
        note = "no follow-up after time 0 in one of the populations: times are not compared"
    if not note or len(_state_codes(synthetic)):
        transitions, transition_tvd = _transitions(real, synthetic)
    for s in states:
        steps(f"time to {s}")
        if horizon <= 0:
            continue
        cmp = km_compare(time_to_state(real, s), time_to_state(synthetic, s),
                         horizon=horizon)
        km[s] = cmp
        times.append(TimeToState(s, cmp.horizon, cmp.a.patients, cmp.a.events,
                                 cmp.b.patients, cmp.b.events, _finite(cmp.a.median()),
                                 _finite(cmp.b.median()), cmp.gap, cmp.gap_time,
                                 cmp.logrank_statistic, cmp.logrank_p))
    fid = Fidelity(
        covariates=tuple(shared), marginals=tuple(marginals), tvd1_mean=_mean(one),
        tvd2_mean=_mean(two), tvd1_mean_reference=_mean(ref_one) if ref_one else None,
        tvd2_mean_reference=_mean(ref_two) if ref_two else None,
        ks_mean=_mean(m.ks for m in marginals), correlation_diff_mean=_mean(corr_diff),
        correlation_diff_max=_max(corr_diff), cramers_v_diff_mean=_mean(v_diff),
        cramers_v_diff_max=_max(v_diff), states=tuple(real.states()),
        transitions=tuple(transitions), transition_tvd=transition_tvd,
        time_to_state=tuple(times), km_gap_max=_max(t.gap for t in times),
        follow_up=float(real.end.max()), note=note)
    return fid, {"marginals": shares, "associations": associations, "km": km}


def _transitions(real: EventData, synthetic: EventData
                 ) -> tuple[list[TransitionRow], float | None]:
    rc, sc = real.transition_counts(), synthetic.transition_counts()
    pairs = sorted(set(rc) | set(sc), key=lambda p: (-rc.get(p, 0), -sc.get(p, 0), p))
    out_r: dict[str, int] = {}
    out_s: dict[str, int] = {}
    for (a, _), n in rc.items():
        out_r[a] = out_r.get(a, 0) + n
    for (a, _), n in sc.items():
        out_s[a] = out_s.get(a, 0) + n
    rows = [TransitionRow(a, b, rc.get((a, b), 0), sc.get((a, b), 0),
                          rc.get((a, b), 0) / out_r[a] if out_r.get(a) else 0.0,
                          sc.get((a, b), 0) / out_s[a] if out_s.get(a) else 0.0)
            for a, b in pairs]
    per_source = []
    for a in sorted(set(out_r) & set(out_s)):
        targets = sorted({b for (x, b) in pairs if x == a})
        per_source.append(tvd(np.array([rc.get((a, b), 0) for b in targets]),
                              np.array([sc.get((a, b), 0) for b in targets])))
    return rows, _mean(per_source)


# --- utility ---------------------------------------------------------------------------------

def _labels(data: EventData, outcome: str, kind: str, horizon: float | None,
            positive: str | None = None) -> pd.Series:
    """1 / 0 per patient, NaN where unknown (censored before the horizon). A categorical
    covariate outcome is 1 where it is ``positive``."""
    if kind == "covariate":
        col = data.baseline[outcome]
        if isinstance(col.dtype, pd.CategoricalDtype):
            y = col.astype(object).map(lambda v: float(str(v) == positive) if pd.notna(v)
                                       else math.nan)
        else:
            y = col.astype(float)
        return pd.Series(y.to_numpy(dtype=float), index=data.baseline.index)
    t, observed = time_to_state(data, outcome)
    if horizon is None:
        return pd.Series(observed.astype(float), index=data.baseline.index)
    y = np.where(observed & (t <= horizon), 1.0, np.where(t >= horizon, 0.0, math.nan))
    return pd.Series(y, index=data.baseline.index)


def _pipeline(frame: pd.DataFrame, model: str, seed: int) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric = [c for c in frame.columns if covariate_kind(frame[c]) == "numeric"]
    cats = [c for c in frame.columns if c not in numeric]
    parts = []
    if numeric:
        parts.append(("num", make_pipeline(SimpleImputer(strategy="median", add_indicator=True,
                                                         keep_empty_features=True),
                                           StandardScaler()), numeric))
    if cats:
        parts.append(("cat", OneHotEncoder(handle_unknown="ignore"), cats))
    return make_pipeline(ColumnTransformer(parts), _CLASSIFIERS[model](seed))


def _features(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    for c in out.columns:
        if isinstance(out[c].dtype, pd.CategoricalDtype):
            out[c] = out[c].astype(object).where(out[c].notna(), "(missing)").astype(str)
    return out


def _fit_score(train: pd.DataFrame, y: np.ndarray, test: pd.DataFrame, model: str,
               seed: int, kinds: pd.DataFrame) -> np.ndarray:
    pipe = _pipeline(kinds, model, seed)
    pipe.fit(_features(train), y.astype(int))
    return pipe.predict_proba(_features(test))[:, 1]


def _usable(y: np.ndarray) -> str:
    """Why labels cannot train a classifier, or ""."""
    pos = int(y.sum())
    if len(y) < 10:
        return f"only {len(y)} patient(s) with a known outcome"
    if pos < 2 or len(y) - pos < 2:
        return f"{pos} of {len(y)} patients have the outcome: too few of one class"
    return ""


def _utility(real: EventData, synthetic: EventData, holdout: EventData | None,
             shared: list[str], options: EvaluateOptions, rng: np.random.Generator
             ) -> tuple[Utility, dict[str, tuple[np.ndarray, np.ndarray]]]:
    outcome = options.outcome
    endpoints = [s for s in real.states() if s != real.initial_state]
    if outcome is None and endpoints:
        outcome = endpoints[0]
    kind: Literal["state", "covariate"] | None = None
    if outcome is not None:
        if outcome in shared:
            kind = "covariate"
        elif outcome in endpoints:
            kind = "state"
        else:
            raise ConfigError(f"--outcome {outcome!r} is neither a state of the real data "
                              f"({', '.join(endpoints) or 'none'}) nor a covariate of both "
                              f"({', '.join(shared)})")
    test_data = holdout if holdout is not None else real
    empty = Utility(outcome, kind, None, options.model, (), None, None,
                    "holdout" if holdout is not None else "cross-validation",
                    "real holdout" if holdout is not None else "real", 0, 0, 0)
    if outcome is None or kind is None:
        return replace(empty, note="no outcome: the real data has no state after the initial "
                                   "one; name a two-valued covariate with --outcome"), {}
    horizon = None
    if kind == "state":
        horizon = options.horizon if options.horizon is not None \
            else float(np.median(real.end.to_numpy(dtype=float)))
    features = [c for c in shared if c != outcome]
    positive = None
    if kind == "covariate":
        col = real.baseline[outcome]
        values = sorted(set(col.dropna().astype(str)) if covariate_kind(col) == "categorical"
                        else set(col.dropna().astype(float)))
        if len(values) != 2 or (covariate_kind(col) == "numeric" and values != [0.0, 1.0]):
            raise ConfigError(f"--outcome {outcome!r} takes {len(values)} value(s) in the real "
                              "data; a covariate outcome needs two (categories, or 0 and 1)")
        if covariate_kind(col) == "categorical":
            positive = str(values[-1])
    empty = replace(empty, horizon=horizon, features=tuple(features))
    if not features:
        return replace(empty, note="no covariate is left to predict the outcome from"), {}
    ys = _labels(synthetic, outcome, kind, horizon, positive)
    yr = _labels(real, outcome, kind, horizon, positive)
    yt = _labels(test_data, outcome, kind, horizon, positive)
    s_ok, r_ok, t_ok = ys.notna().to_numpy(), yr.notna().to_numpy(), yt.notna().to_numpy()
    xs = synthetic.baseline.loc[s_ok, features]
    xr = real.baseline.loc[r_ok, features]
    xt = test_data.baseline.loc[t_ok, features]
    ys_, yr_, yt_ = ys[s_ok].to_numpy(), yr[r_ok].to_numpy(), yt[t_ok].to_numpy()
    kinds = real.baseline[features]
    base = replace(empty, synthetic_train_patients=len(ys_), real_train_patients=len(yr_),
                   test_patients=len(yt_))
    why = _usable(yt_)
    if why:
        return replace(base, note=f"the real test data cannot score a classifier: {why}"), {}
    notes: list[str] = []
    roc: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def scored(key: str, x: pd.DataFrame, y: np.ndarray, what: str) -> AUC | None:
        why = _usable(y)
        if why:
            notes.append(f"{what} not possible: {why}")
            return None
        score = _fit_score(x, y, xt, options.model, options.seed, kinds)
        roc[key] = (yt_, score)
        return auc_with_ci(yt_, score, rng=rng, resamples=options.resamples)

    tstr = None
    if kind == "state" and not len(_state_codes(synthetic)):
        notes.append(f"the synthetic data has no states, so a classifier of {outcome} cannot "
                     "be trained on it; name a covariate with --outcome")
    else:
        tstr = scored("tstr", xs, ys_, "train on synthetic")
    trtr = None
    if holdout is not None:
        trtr = scored("trtr", xr, yr_, "train on real")
    else:
        from sklearn.model_selection import StratifiedKFold, cross_val_predict

        folds = min(5, int(yr_.sum()), int(len(yr_) - yr_.sum()))
        if folds >= 2:
            cv = StratifiedKFold(folds, shuffle=True, random_state=options.seed)
            score = cross_val_predict(_pipeline(kinds, options.model, options.seed),
                                      _features(xr), yr_.astype(int), cv=cv,
                                      method="predict_proba")[:, 1]
            trtr = auc_with_ci(yr_, score, rng=rng, resamples=options.resamples)
            roc["trtr"] = (yr_, score)
        else:
            notes.append("train on real not possible: too few patients with the outcome "
                         "for cross-validation")
    return replace(base, tstr=tstr, trtr=trtr, note="; ".join(notes)), roc


# --- privacy ---------------------------------------------------------------------------------

def _privacy(real: EventData, synthetic: EventData, holdout: EventData | None,
             shared: list[str], options: EvaluateOptions, rng: np.random.Generator
             ) -> tuple[Privacy, dict[str, Any]]:
    # A record is a patient's covariates. States are left out: how many a patient has
    # entered depends on how long it was followed, which differs between a simulated
    # population and a real one, so distances would measure follow-up, not copying.
    rr, sr = real.baseline[shared], synthetic.baseline[shared]
    hr = holdout.baseline[shared] if holdout is not None else None
    enc = GowerEncoder.fit(rr, [sr] + ([hr] if hr is not None else []))
    er, es = enc.encode(rr), enc.encode(sr)
    d_syn = closest_distances(es, er, enc.width)
    empty = Privacy(tuple(rr.columns), _q(d_syn, 0.5), _q(d_syn, 0.05), None, None, None,
                    None, float(np.mean(d_syn <= EXACT)) if len(d_syn) else None, None, None,
                    None)
    details: dict[str, Any] = {"dcr_synthetic": d_syn, "dcr_holdout": None, "mia": None}
    if hr is None:
        return replace(empty, note="no holdout: the distances of synthetic records cannot be "
                                   "compared with those of real patients the generator never "
                                   "saw, and the membership attack needs non-members; give "
                                   "--holdout or --holdout-fraction"), details
    eh = enc.encode(hr)
    d_hold = closest_distances(eh, er, enc.width)
    med_h = _q(d_hold, 0.5)
    med_s = _q(d_syn, 0.5)
    ratio = med_s / med_h if med_s is not None and med_h else None
    closer = auc_with_ci(np.concatenate([np.ones(len(d_syn)), np.zeros(len(d_hold))]),
                         -np.concatenate([d_syn, d_hold]), rng=rng,
                         resamples=options.resamples)
    # The attack: a record close to some synthetic record was likelier in the training
    # data. Members are the training patients, non-members the holdout.
    member = closest_distances(er, es, enc.width)
    other = closest_distances(eh, es, enc.width)
    y = np.concatenate([np.ones(len(member)), np.zeros(len(other))])
    score = -np.concatenate([member, other])
    mia = auc_with_ci(y, score, rng=rng, resamples=options.resamples)
    details.update(dcr_holdout=d_hold, mia=(y, score))
    return replace(empty, dcr_holdout_median=med_h, dcr_holdout_p05=_q(d_hold, 0.05),
                   dcr_ratio=ratio, dcr_closer=closer, exact_copies_holdout=float(np.mean(d_hold <= EXACT)),
                   mia_auc=mia, mia_advantage=advantage(y, score)), details


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def _q(values: np.ndarray, q: float) -> float | None:
    return float(np.quantile(values, q)) if len(values) else None


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float | np.floating):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, np.integer):
        return int(value)
    return value
