"""carecourse evaluate's metrics behave as their definitions say, with tolerances from the
sample sizes:

- the same data: every distance is 0, the Kaplan-Meier curves coincide; a synthetic set
  that is the training data: every record an exact copy, and the membership attack sees it;
- an independent sample of the same population: the attack and the DCR comparison are
  at chance, within four standard errors of an AUC under the null (Hanley and McNeil,
  Radiology 1982;143:29-36: var = (n1 + n0 + 1) / (12 n1 n0));
- a shifted marginal: the TVD of a two-level column is the shift, within five standard
  errors of a difference of proportions; the KS statistic of a shifted normal is
  2 Phi(shift / 2 sd) - 1 within the Dvoretzky-Kiefer-Wolfowitz bound of both samples;
- Kaplan-Meier: a doubled hazard puts the curves 1/4 apart at their widest (max of
  e^-x - e^-2x), within the DKW bound (no censoring: the curve is the empirical one).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from learned.evaluate import (
    EvaluateOptions,
    align,
    evaluate,
    retime,
    select_patients,
    split_holdout,
    time_to_state,
)
from learned.evaluate_metrics import (
    Discretizer,
    GowerEncoder,
    auc_with_ci,
    closest_distances,
    counts,
    km_compare,
    ks,
    tvd,
)
from learned.events import EventData, make_event_data
from learned.synthetic import BIRTH_ORIGIN
from modules.errors import ConfigError, OutputError

FAST = EvaluateOptions(resamples=200)


def population(n: int, *, seed: int, male: float = 0.5, age_shift: float = 0.0,
               age_effect: float = 0.08, prefix: str = "p", name: str = "pop") -> EventData:
    """Patients enrolled at time 0 who fall ill at a rate that grows with age (by
    ``age_effect`` per year on the log scale), and may die after; follow-up between 200
    and 400 days."""
    rng = np.random.default_rng(seed)
    ids = [f"{prefix}{i}" for i in range(n)]
    age = rng.normal(50 + age_shift, 10, n)
    cd4 = 300 - 2 * age + rng.normal(0, 40, n)
    sex = rng.choice(["M", "F"], n, p=[male, 1 - male])
    ill = rng.exponential(300 * np.exp(-age_effect * (age - 50)))
    dead = ill + rng.exponential(200, n)
    end = rng.uniform(200, 400, n)
    rows = [(i, t, "ill") for i, t, e in zip(ids, ill, end, strict=True) if t <= e]
    rows += [(i, t, "death") for i, t, e in zip(ids, dead, end, strict=True) if t <= e]
    events = pd.DataFrame(rows, columns=["patient_id", "time", "code"])
    base = pd.DataFrame({"patient_id": ids, "age": age, "cd4": cd4, "sex": sex})
    return make_event_data(events, base, name=name, origin="enrolment",
                           end=pd.Series(end, index=ids), initial_state="enrolled")


def null_se(n1: int, n0: int) -> float:
    return math.sqrt((n1 + n0 + 1) / (12 * n1 * n0))


def dkw(n: int, alpha: float = 1e-6) -> float:
    return math.sqrt(math.log(2 / alpha) / (2 * n))


@pytest.fixture(scope="module")
def real() -> EventData:
    return population(1200, seed=1)


@pytest.fixture(scope="module")
def split(real):
    return split_holdout(real, 0.3, seed=4)


# --- whole evaluations -----------------------------------------------------------------------

def test_the_same_data_has_no_distance_and_a_copy_is_caught(split):
    train, holdout = split
    report = evaluate(train, train, holdout=holdout, options=FAST)
    f, p = report.metrics.fidelity, report.metrics.privacy
    assert f.covariates == ("age", "cd4", "sex")
    assert f.tvd1_mean == 0 and f.tvd2_mean == 0 and f.ks_mean == 0
    assert f.cramers_v_diff_max == 0 and f.correlation_diff_max == 0
    assert all(t.real == t.synthetic for t in f.transitions) and f.transition_tvd == 0
    assert [t.state for t in f.time_to_state] == ["ill", "death"]
    assert all(t.gap == 0 and t.logrank_p == pytest.approx(1.0) for t in f.time_to_state)
    # Two real samples are not the same: the holdout reference is above 0.
    assert f.tvd1_mean_reference > 0.01
    # A copy of the training data: every record is one, and the attack knows the members.
    assert p.exact_copies_synthetic == 1.0 and p.exact_copies_holdout == 0.0
    assert p.mia_auc.value > 0.99 and p.mia_advantage > 0.99
    assert p.dcr_closer.value > 0.99
    u = report.metrics.utility
    assert u.outcome == "ill" and u.outcome_kind == "state"
    assert u.horizon == pytest.approx(float(np.median(train.end)))
    assert u.tstr.value == pytest.approx(u.trtr.value)


def test_an_independent_sample_of_the_same_population_is_at_chance(split):
    train, holdout = split
    synthetic = population(1500, seed=2, prefix="s", name="synthetic")
    report = evaluate(train, synthetic, holdout=holdout, options=FAST)
    p = report.metrics.privacy
    assert p.exact_copies_synthetic == 0.0
    se = null_se(train.patients, holdout.patients)
    assert abs(p.mia_auc.value - 0.5) < 4 * se, p.mia_auc
    assert abs(p.dcr_closer.value - 0.5) < 4 * null_se(synthetic.patients, holdout.patients)
    # The advantage is a two-sample KS statistic of the attack's scores: its null bound.
    n1, n0 = train.patients, holdout.patients
    assert p.mia_advantage < math.sqrt(-math.log(1e-4 / 2) / 2 * (n1 + n0) / (n1 * n0))
    # The same course: the log-rank test rejects a true null with probability 1e-4.
    assert all(t.logrank_p > 1e-4 for t in report.metrics.fidelity.time_to_state)
    # Age predicts illness in both; trained on either, the classifier scores alike.
    u = report.metrics.utility
    width = math.hypot(u.tstr.high - u.tstr.low, u.trtr.high - u.trtr.low) / (2 * 1.96)
    assert u.tstr.value > 0.6 and abs(u.tstr.value - u.trtr.value) < 4 * width


def test_a_synthetic_population_with_the_wrong_risk_factor_misleads(split):
    train, holdout = split
    # Risk falls with age in this synthetic population, but rises in the real one.
    synthetic = population(1500, seed=3, prefix="s", age_effect=-0.08)
    u = evaluate(train, synthetic, holdout=holdout, options=FAST).metrics.utility
    assert u.tstr.high < 0.5 < u.trtr.low


@pytest.mark.parametrize("shift", [0.0, 0.1, 0.2])
def test_tvd_of_a_two_level_column_is_the_shift(shift):
    n = 4000
    a, b = population(n, seed=5, male=0.5), population(n, seed=6, male=0.5 + shift)
    disc = Discretizer.fit(a.baseline, [b.baseline])
    j = disc.columns.index("sex")
    got = tvd(counts(disc.codes(a.baseline)[:, j], disc.size("sex")),
              counts(disc.codes(b.baseline)[:, j], disc.size("sex")))
    q = 0.5 + shift
    se = math.sqrt(0.25 / n + q * (1 - q) / n)
    assert abs(got - shift) < 5 * se


def test_ks_and_binned_tvd_of_a_shifted_number():
    n = 3000
    a = population(n, seed=7).baseline["age"].to_numpy()
    tol = 2 * dkw(n)
    for shift, sd in ((0.0, 10.0), (5.0, 10.0), (10.0, 10.0)):
        b = population(n, seed=8, age_shift=shift).baseline["age"].to_numpy()
        stat, _ = ks(a, b)
        assert abs(stat - (2 * norm.cdf(shift / (2 * sd)) - 1)) < tol
        # Binned at the real deciles, the TVD is the shifted law's departure from 10% per
        # bin, within the bins' sampling error (Bretagnolle-Huber-Carol, 11 bins).
        frame_a, frame_b = pd.DataFrame({"age": a}), pd.DataFrame({"age": b})
        disc = Discretizer.fit(frame_a, bins=10)
        got = tvd(counts(disc.codes(frame_a)[:, 0], disc.size("age")),
                  counts(disc.codes(frame_b)[:, 0], disc.size("age")))
        edges = norm.ppf(np.linspace(0, 1, 11), 50, sd)
        truth = 0.5 * np.abs(np.diff(norm.cdf(edges, 50 + shift, sd)) - 0.1).sum()
        bhc = math.sqrt(2 * (11 * math.log(2) + math.log(1e6)) / n)
        assert abs(got - truth) < bhc


# --- Kaplan-Meier ----------------------------------------------------------------------------

def test_km_compare_of_the_same_times_and_of_a_doubled_hazard():
    rng = np.random.default_rng(9)
    n = 3000
    t = rng.exponential(100, n)
    e = np.ones(n)
    same = km_compare((t, e), (t, e))
    assert same.gap == 0 and same.logrank_p == pytest.approx(1.0)
    fast = rng.exponential(50, n)
    doubled = km_compare((t, e), (fast, e))
    assert abs(doubled.gap - 0.25) < 2 * dkw(n)
    assert abs(doubled.gap_time - 100 * math.log(2)) < 100 * 0.35  # the flat top of the gap
    assert doubled.logrank_p < 1e-6
    # Censored at the shorter follow-up, the longer curve ends at its share still event-free.
    assert doubled.horizon == fast.max()
    assert doubled.a.survival[-1] == pytest.approx(np.mean(t > fast.max()))


def test_km_compare_censors_both_at_the_common_horizon():
    t = np.array([10.0, 20.0, 30.0, 40.0])
    long = np.array([10.0, 20.0, 300.0, 400.0])
    e = np.array([1, 1, 1, 1])
    cmp = km_compare((t, e), (long, e))
    assert cmp.horizon == 40.0
    assert cmp.b.events == 2  # 300 and 400 are past the horizon
    assert cmp.gap == pytest.approx(0.5)


def test_time_to_state(real):
    t, observed = time_to_state(real, "ill")
    ev = real.events[real.events["code"] == "ill"].set_index("patient_id")["time"]
    ids = list(real.baseline.index)
    assert observed.sum() == len(ev)
    for i in (0, 1, 2, 3, 4):
        pid = ids[i]
        assert t[i] == pytest.approx(ev[pid] if observed[i] else real.end[pid])


# --- AUC and distances -----------------------------------------------------------------------

def test_auc_with_ci_estimates_a_known_auc():
    rng = np.random.default_rng(10)
    n = 1000
    y = np.r_[np.ones(n), np.zeros(n)]
    s = np.r_[rng.normal(1, 1, n), rng.normal(0, 1, n)]
    a = auc_with_ci(y, s, rng=rng, resamples=500)
    truth = norm.cdf(1 / math.sqrt(2))
    # Hanley-McNeil standard error at the true AUC.
    q1, q2 = truth / (2 - truth), 2 * truth ** 2 / (1 + truth)
    se = math.sqrt((truth * (1 - truth) + (n - 1) * (q1 - truth ** 2)
                    + (n - 1) * (q2 - truth ** 2)) / n ** 2)
    assert abs(a.value - truth) < 5 * se
    assert a.low < a.value < a.high
    assert 0.6 < (a.high - a.low) / (2 * 1.96 * se) < 1.6
    assert auc_with_ci(np.ones(5), np.arange(5.0), rng=rng) is None


def test_gower_distance_of_mixed_records():
    ref = pd.DataFrame({"x": [0.0, 10.0], "c": pd.Categorical(["a", "b"])})
    query = pd.DataFrame({"x": [5.0, 10.0, np.nan], "c": pd.Categorical(["a", "b", "b"])})
    enc = GowerEncoder.fit(ref, [query])
    d = closest_distances(enc.encode(query), enc.encode(ref), enc.width)
    # (|5 - 0| / 10 + 0) / 2; an exact copy; a missing number is at least 1 away.
    assert d[0] == pytest.approx(0.25) and d[1] == 0.0 and d[2] >= 0.5


# --- preparing the data ----------------------------------------------------------------------

def test_split_holdout_is_a_reproducible_partition(real):
    train, hold = split_holdout(real, 0.3, seed=4)
    again, _ = split_holdout(real, 0.3, seed=4)
    other, _ = split_holdout(real, 0.3, seed=5)
    assert hold.patients == round(0.3 * real.patients)
    assert set(train.baseline.index) | set(hold.baseline.index) == set(real.baseline.index)
    assert not set(train.baseline.index) & set(hold.baseline.index)
    assert list(again.baseline.index) == list(train.baseline.index)
    assert list(other.baseline.index) != list(train.baseline.index)
    assert set(hold.events["patient_id"]) <= set(hold.baseline.index)
    with pytest.raises(ConfigError, match="between 0 and 1"):
        split_holdout(real, 1.5, seed=0)


def from_birth() -> EventData:
    """Data counted from birth, as carecourse output is: a enrols at 10 years and falls
    ill 50 days later; b never enrols; c falls ill before enrolling."""
    events = pd.DataFrame({
        "patient_id": ["a", "a", "c", "c"], "time": [3652.5, 3702.5, 7000.0, 7305.0],
        "code": ["SNOMED-CT|9100001", "SNOMED-CT|9100002", "SNOMED-CT|9100002",
                 "SNOMED-CT|9100001"],
        "display": ["Enrolled in study", "ill", "ill", "Enrolled in study"]})
    base = pd.DataFrame({"patient_id": ["a", "b", "c"], "age": [30.0, 30.0, 30.0],
                         "gender": ["male", "female", "female"]})
    return make_event_data(events, base, name="run", origin=BIRTH_ORIGIN,
                           end={"a": 10000.0, "b": 10000.0, "c": 10000.0})


@pytest.mark.parametrize("name", ["SNOMED-CT|9100001", "9100001", "enrolled in study"])
def test_retime_counts_from_the_origin_state(name):
    data = retime(from_birth(), name, initial_state="enrolled")
    assert list(data.baseline.index) == ["a", "c"]
    assert data.initial_state == "enrolled"
    assert data.baseline.loc["a", "age"] == pytest.approx(10.0)
    assert data.end["a"] == pytest.approx(10000 - 3652.5)
    assert data.events[data.events["patient_id"] == "a"]["time"].tolist() == [0.0, 50.0]
    # c's illness came before its origin: dropped; its entry is the initial state.
    assert data.transition_counts() == {("enrolled", "SNOMED-CT|9100002"): 1}


def test_retime_names_an_unknown_origin_state():
    with pytest.raises(ConfigError, match=r"'nope' is not a state.*SNOMED-CT\|9100001 \(2\)"):
        retime(from_birth(), "nope")


def test_align_matches_states_by_display_and_refuses_what_cannot_be_compared(real):
    aligned = align(real, from_birth(), origin_state="9100001",
                    rename={"gender": "sex"})
    syn = aligned.synthetic
    assert syn.initial_state == "enrolled"  # the real data's name for time 0
    assert set(syn.events["code"]) == {"enrolled", "ill"}  # "ill" matched by display
    assert list(syn.baseline.columns) == ["age", "sex"]
    assert any("matched" in n for n in aligned.notes)
    with pytest.raises(ConfigError, match="time 0 is birth.*--origin-state"):
        align(real, from_birth())
    bare = from_birth()
    with pytest.raises(ConfigError, match="no covariate in common.*--rename"):
        align(real, EventData(bare.events, bare.baseline[[]], bare.end, "x", "enrolment"))
    with pytest.raises(ConfigError, match="no patients"):
        align(real, select_patients(real, []))


def test_align_reads_synthetic_covariates_as_the_real_kinds(real):
    syn = real.baseline.copy()
    syn["sex"] = syn["sex"].astype(str).map({"M": 1.0, "F": 0.0})
    real2 = EventData(real.events, real.baseline.assign(
        sex=real.baseline["sex"].astype(str).map({"M": "1", "F": "0"}).astype("category")),
        real.end, "real", real.origin, real.initial_state)
    aligned = align(real2, EventData(real.events, syn, real.end, "syn", real.origin,
                                     real.initial_state))
    assert isinstance(aligned.synthetic.baseline["sex"].dtype, pd.CategoricalDtype)
    assert set(aligned.synthetic.baseline["sex"].astype(str)) == {"0", "1"}


def test_a_covariate_outcome_for_baseline_only_synthetic_data(split):
    train, holdout = split
    def with_flag(d: EventData) -> EventData:
        flag = (d.baseline["age"] > 50).map({True: "yes", False: "no"}).astype("category")
        return EventData(d.events, d.baseline.assign(old=flag), d.end, d.name, d.origin,
                         d.initial_state)
    samples = with_flag(population(800, seed=11, prefix="s")).baseline.reset_index()
    synthetic = make_event_data(pd.DataFrame({"patient_id": [], "time": [], "code": []}),
                                samples, name="samples", origin="none")
    report = evaluate(with_flag(train), synthetic, holdout=with_flag(holdout),
                      options=EvaluateOptions(outcome="old", resamples=200))
    u = report.metrics.utility
    assert u.outcome_kind == "covariate" and "old" not in u.features
    assert u.tstr.value > 0.95  # age decides it, and age is a feature
    f = report.metrics.fidelity
    assert f.time_to_state == () and f.transitions == () and "covariates only" in f.note
    with pytest.raises(ConfigError, match="neither a state"):
        evaluate(train, train, options=EvaluateOptions(outcome="nope", resamples=200))


def test_a_holdout_that_shares_patients_with_the_training_data_is_noted(real):
    aligned = align(real, real, holdout=select_patients(real, list(real.baseline.index)[:10]))
    assert any("10 patient id(s) are both in the real and in the holdout" in n
               for n in aligned.notes)


def test_without_a_holdout_the_reference_is_cross_validated(real):
    report = evaluate(real, population(600, seed=12, prefix="s"), options=FAST)
    u, p = report.metrics.utility, report.metrics.privacy
    assert u.reference == "cross-validation" and u.trtr is not None
    assert p.mia_auc is None and "no holdout" in p.note
    assert report.metrics.fidelity.tvd1_mean_reference is None


# --- the report ------------------------------------------------------------------------------

def test_the_report_renders_every_section_and_is_written_atomically(split, tmp_path):
    train, holdout = split
    report = evaluate(train, population(500, seed=13, prefix="s", name="syn"),
                      holdout=holdout, options=FAST, inputs={"real": "toy"})
    out = report.write(tmp_path / "report")
    assert sorted(p.name for p in out.iterdir()) == ["figures", "metrics.json", "report.html"]
    figures = sorted(p.stem for p in (out / "figures").iterdir())
    assert figures == ["correlation", "cramers_v", "km", "marginals", "privacy",
                       "utility_roc"]
    page = (out / "report.html").read_text()
    for section in ("summary", "inputs", "fidelity", "utility", "privacy"):
        assert f'id="{section}"' in page
    assert page.count("data:image/png;base64,") == len(figures)
    assert "How to read this" in page and "membership" in page.lower()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == report.metrics.to_dict()
    assert metrics["fidelity"]["time_to_state"][0]["state"] == "ill"
    # Writing again replaces the report; nothing is left beside it.
    report.write(tmp_path / "report")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]
    # A folder holding anything else is refused and left as it was.
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="holds other files"):
        report.write(tmp_path / "other")
    assert [p.name for p in (tmp_path / "other").iterdir()] == ["notes.txt"]
