"""The DP baseline-covariate generator: round trip on a known distribution, exact
conditional sampling, bounds, accounting, bad input, save and load.

The known distribution is a two-class latent-class model (so the generator can represent
it exactly): sex and smoking are associated through the class, age is binned on the same
edges the schema states. Tolerances come from the sample size: an estimated share p from n
training rows has a standard error sqrt(p(1-p)/n); a difference of two conditional shares
adds the two groups' variances. Every check allows 4.5 standard errors (by chance alone a
correct model fails one with probability below 1e-5), plus the generator's own sampling
noise (50,000 rows, a fifth of the training error's variance or less).
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from learned.baseline import (
    Categorical,
    MixtureConfig,
    MixtureGenerator,
    NotFittedError,
    Numeric,
    Schema,
    constraints,
    load_generator,
)
from modules.errors import ConfigError, DataError

EDGES = (20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0)
SCHEMA = Schema((Numeric("age", EDGES), Categorical("sex", ("F", "M")),
                 Categorical("smoker", ("no", "yes")), Categorical("event", ("0", "1"))))
CLASS = np.array([0.6, 0.4])
AGE = np.array([[0.30, 0.30, 0.20, 0.10, 0.05, 0.05],    # class 0: younger
                [0.05, 0.05, 0.10, 0.20, 0.30, 0.30]])   # class 1: older
MALE = np.array([0.7, 0.3])
SMOKER = np.array([0.4, 0.1])
EVENT = (0.1, 0.4)  # P(event | non-smoker), P(event | smoker): the outcome head's job
DRAWS = 50_000
Z = 4.5


def truth() -> dict[str, tuple[float, float]]:
    """Share -> (true value, share of the rows it is estimated from)."""
    p_m, p_s = float(CLASS @ MALE), float(CLASS @ SMOKER)
    out = {"male": (p_m, 1.0), "smoker": (p_s, 1.0),
           "smoker|M": (float(CLASS @ (MALE * SMOKER)) / p_m, p_m),
           "smoker|F": (float(CLASS @ ((1 - MALE) * SMOKER)) / (1 - p_m), 1 - p_m),
           "event": (EVENT[0] + (EVENT[1] - EVENT[0]) * p_s, 1.0),
           "event|smoker": (EVENT[1], p_s), "event|non-smoker": (EVENT[0], 1 - p_s)}
    out.update({f"age{b}": (float(CLASS @ AGE[:, b]), 1.0) for b in range(AGE.shape[1])})
    return out


def make_table(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    z = rng.choice(2, size=n, p=CLASS)
    bins = np.array([rng.choice(6, p=AGE[k]) for k in z])
    age = np.asarray(EDGES)[bins] + 10.0 * rng.random(n)
    smoker = rng.random(n) < SMOKER[z]
    return pd.DataFrame({
        "age": age,
        "sex": np.where(rng.random(n) < MALE[z], "M", "F"),
        "smoker": np.where(smoker, "yes", "no"),
        "event": np.where(rng.random(n) < np.where(smoker, EVENT[1], EVENT[0]), "1", "0"),
        "ignored": rng.random(n),  # columns outside the schema are left alone
    })


def shares(frame: pd.DataFrame) -> dict[str, float]:
    male = frame["sex"] == "M"
    smoker = frame["smoker"] == "yes"
    event = frame["event"] == "1"
    bins = np.clip(np.searchsorted(EDGES, frame["age"], side="right") - 1, 0, 5)
    out = {"male": male.mean(), "smoker": smoker.mean(), "smoker|M": smoker[male].mean(),
           "smoker|F": smoker[~male].mean(), "event": event.mean(),
           "event|smoker": event[smoker].mean(), "event|non-smoker": event[~smoker].mean()}
    out.update({f"age{b}": (bins == b).mean() for b in range(6)})
    return {k: float(v) for k, v in out.items()}


def tolerance(name: str, n: int) -> float:
    """Z standard errors of the estimate of ``name`` from n training rows (and DRAWS
    generated ones)."""
    p, group = truth()[name]
    return Z * math.sqrt(sum(p * (1 - p) / (m * group) for m in (n, DRAWS)))


CONFIG = MixtureConfig(components=4, outcomes=("event",), epochs=200, lr=0.1)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # The model is tiny; on a shared machine, torch's thread pool costs more than it gains.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


N_PLAIN = 3000
N_DP = 6000


@pytest.fixture(scope="module")
def plain() -> MixtureGenerator:
    gen = MixtureGenerator(SCHEMA, CONFIG)
    return gen.fit(make_table(N_PLAIN, seed=11), epsilon=None, seed=0)


@pytest.fixture(scope="module")
def private() -> MixtureGenerator:
    # A clipping norm above most rows' gradient norms: clipping many rows would bias the
    # model against rare values (their rows have the larger gradients), which at this n
    # and epsilon would cost more than the noise a larger norm brings.
    gen = MixtureGenerator(SCHEMA, replace(CONFIG, epochs=100, max_grad_norm=5.0))
    return gen.fit(make_table(N_DP, seed=12), epsilon=3.0, delta=1e-5, seed=0)


def check_recovered(gen: MixtureGenerator, n: int) -> None:
    got = shares(gen.sample(DRAWS, seed=5))
    want = {k: v for k, (v, _) in truth().items()}
    for name in want:
        assert abs(got[name] - want[name]) < tolerance(name, n), (name, got[name], want[name])
    # The associations themselves: smoking is more common among men (through the latent
    # class), and the event among smokers (through the outcome head).
    for a, b in (("smoker|M", "smoker|F"), ("event|smoker", "event|non-smoker")):
        diff = got[a] - got[b]
        assert abs(diff - (want[a] - want[b])) < math.hypot(tolerance(a, n), tolerance(b, n))


def test_without_noise_marginals_and_the_association_come_back(plain):
    assert plain.report.epsilon is None
    check_recovered(plain, N_PLAIN)


def test_at_epsilon_3_marginals_and_the_association_come_back(private):
    # At epsilon 3 and delta 1e-5 the whole training is like one Gaussian release with noise
    # max_grad_norm / sqrt(2 rho), rho ~ 0.17: about 8.5 rows of 6,000 on a count, a share
    # of 0.0014, well inside the sampling tolerance.
    check_recovered(private, N_DP)


def test_the_reported_epsilon_is_opacus_accounting_of_the_same_settings(private):
    from opacus.accountants import RDPAccountant

    r = private.report
    assert r.epsilon is not None and r.epsilon <= 3.0
    assert r.accountant == "rdp" and r.delta == 1e-5 and r.rows == N_DP
    # Every step sees the full data (sample rate 1): one step per epoch.
    assert r.sample_rate == pytest.approx(1.0) and r.steps == r.epochs == 100
    acc = RDPAccountant()
    acc.history = [(r.noise_multiplier, r.sample_rate, r.steps)]
    assert acc.get_epsilon(1e-5) == pytest.approx(r.epsilon, rel=1e-6)


@pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")
def test_minibatches_are_accounted_with_their_sample_rate():
    from opacus.accountants import RDPAccountant

    gen = MixtureGenerator(SCHEMA, MixtureConfig(components=2, epochs=3, batch_size=250))
    # (3 epochs at sample rate 0.25 reach epsilon 1 only at the largest RDP order tried)
    r = gen.fit(make_table(1000, seed=3), epsilon=1.0, seed=0).report
    assert r.sample_rate == pytest.approx(0.25)
    acc = RDPAccountant()
    acc.history = [(r.noise_multiplier, 0.25, 12)]
    assert acc.get_epsilon(1e-5) == pytest.approx(r.epsilon, rel=1e-6) and r.epsilon <= 1.0


SHAPE = tuple(SCHEMA.sizes)


def exact_conditional(gen: MixtureGenerator, conditions) -> np.ndarray:
    """P(every combination of bins | conditions), flat, by enumerating the model's own
    likelihood over all of them (not through its sampler)."""
    every = np.array(list(itertools.product(*(range(s) for s in SHAPE))))
    joint = np.exp(gen.log_likelihood(every))
    assert joint.sum() == pytest.approx(1.0)
    for j, w in enumerate(constraints(SCHEMA, conditions).weights):
        joint = joint * w[every[:, j]]
    return joint / joint.sum()


@pytest.mark.parametrize("conditions", [
    {"age": (35.0, 62.5), "sex": {"F"}},
    {"smoker": "yes"},
    {"age": (None, 45.0), "smoker": {"no", "yes"}},
    {"event": "1", "sex": {"M"}},  # on the outcome: exact rejection through its head
])
def test_conditional_samples_follow_the_models_own_conditional(plain, conditions):
    n = 20_000
    rows = plain.sample(n, seed=7, conditions=conditions)
    codes = SCHEMA.encode(rows)
    want = exact_conditional(plain, conditions).ravel()
    flat = np.ravel_multi_index(tuple(codes.T), SHAPE)
    observed = np.bincount(flat, minlength=want.size)
    keep = want > 0
    assert observed[~keep].sum() == 0  # nothing where the conditions allow nothing
    # A chi-square goodness-of-fit test against the exact conditional; a correct sampler
    # fails it with probability 1e-4.
    assert stats.chisquare(observed[keep], want[keep] * n).pvalue > 1e-4
    lo, hi = conditions.get("age", (None, None))
    lo, hi = EDGES[0] if lo is None else lo, EDGES[-1] if hi is None else hi
    assert rows["age"].between(lo, hi).all()
    for col in ("sex", "smoker", "event"):
        if col in conditions:
            allowed = conditions[col]
            assert set(rows[col]) <= ({allowed} if isinstance(allowed, str) else allowed)


def test_within_a_cut_bin_ages_are_uniform_on_the_allowed_part(plain):
    rows = plain.sample(20_000, seed=8, conditions={"age": (35.0, 62.5)})
    part = rows["age"][rows["age"] < 40.0]  # the bin [30, 40) cut at 35
    assert len(part) > 200
    assert stats.kstest((part - 35.0) / 5.0, "uniform").pvalue > 1e-4


def test_output_respects_bounds_and_categories(plain):
    rows = plain.sample(5000, seed=9)
    assert list(rows.columns) == SCHEMA.names
    assert rows["age"].between(EDGES[0], EDGES[-1]).all()
    assert set(rows["sex"].cat.categories) == {"F", "M"}
    assert len(np.unique(rows["age"].round(6))) > 4000  # continuous, not bin edges


def test_same_seed_same_rows_and_a_list_is_a_range(plain):
    pd.testing.assert_frame_equal(plain.sample(100, seed=3), plain.sample(100, seed=3))
    pd.testing.assert_frame_equal(plain.sample(100, seed=3, conditions={"age": [30, 50]}),
                                  plain.sample(100, seed=3, conditions={"age": (30, 50)}))


def test_sampling_or_saving_before_fit_raises_not_fitted(tmp_path):
    gen = MixtureGenerator(SCHEMA)
    with pytest.raises(NotFittedError, match="before fit"):
        gen.sample(10, seed=0)
    with pytest.raises(NotFittedError):
        gen.save(tmp_path / "m")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(("conditions", "message"), [
    ({"weight": (50, 90)}, r"unknown column 'weight'; the schema has \['age', 'sex', 'smoker', 'event'\]"),
    ({"age": (85, 95)}, r"outside the column's bounds \[20, 80\]"),
    ({"age": (50, 40)}, "empty or has zero width"),
    ({"sex": set()}, "set of allowed categories is empty"),
    ({"sex": {"X"}}, r"\['X'\] not among the categories \['F', 'M'\]"),
    ({"age": {"F"}}, r"give a range \(low, high\)"),
    ({"sex": (0, 1)}, "give a set of categories"),
])
def test_bad_conditions_are_named(plain, conditions, message):
    with pytest.raises(ConfigError, match=message):
        plain.sample(10, seed=0, conditions=conditions)


def test_bad_tables_name_row_and_column():
    table = make_table(20, seed=1)
    table.loc[3, "age"] = 95.0
    table.loc[7, "sex"] = "X"
    table.loc[9, "age"] = np.nan
    with pytest.raises(DataError) as err:
        MixtureGenerator(SCHEMA).fit(table, epsilon=1.0, source="people.csv")
    text = str(err.value)
    assert "3 problem(s)" in text
    assert "people.csv: row 4, column 'age': 95 is not a number within the stated bounds" in text
    assert "people.csv: row 8, column 'sex': 'X' is not one of the stated categories" in text
    with pytest.raises(DataError, match=r"missing column\(s\) \['smoker'\]"):
        MixtureGenerator(SCHEMA).fit(table.drop(columns="smoker"), epsilon=1.0)


@pytest.mark.parametrize("kwargs", [{"epsilon": -1.0}, {"epsilon": 0.0},
                                    {"epsilon": 1.0, "delta": 1.5},
                                    {"epsilon": 1.0, "device": "tpu"}])
def test_impossible_options_are_refused(kwargs):
    with pytest.raises(ConfigError):
        MixtureGenerator(SCHEMA).fit(make_table(50, seed=2), **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_a_gpu_is_refused_and_auto_runs_on_cpu():
    gen = MixtureGenerator(SCHEMA, MixtureConfig(components=2, epochs=2))
    with pytest.raises(ConfigError, match="no CUDA device"):
        gen.fit(make_table(50, seed=2), epsilon=None, device="cuda")
    assert gen.fit(make_table(50, seed=2), epsilon=None, device="auto").report.device == "cpu"


@pytest.mark.parametrize("schema", [
    lambda: Schema(()),
    lambda: Schema((Numeric("a", (1.0, 1.0)),)),
    lambda: Schema((Numeric("a", (0.0,)),)),
    lambda: Schema((Categorical("a", ()),)),
    lambda: Schema((Categorical("a", ("x", "x")),)),
    lambda: Schema((Categorical("a", ("x",)), Numeric.uniform("a", 0, 1, 2))),
    lambda: Numeric.uniform("a", 1.0, 0.0),
])
def test_impossible_schemas_are_refused(schema):
    with pytest.raises(ConfigError):
        schema()


def test_save_and_load_round_trip(private, tmp_path):
    folder = private.save(tmp_path / "model")
    card = json.loads((folder / "card.json").read_text())
    assert card["kind"] == "mixture"
    training = card["training"]
    for key in ("fingerprint", "rows", "epsilon", "delta", "accountant", "noise_multiplier",
                "max_grad_norm", "epochs"):
        assert training[key] is not None, key
    assert card["schema"] == SCHEMA.to_dict() and card["config"]["components"] == 4
    assert sorted(p.name for p in folder.iterdir()) == ["card.json", "weights.pt"]
    loaded = load_generator(folder)
    assert loaded.schema == SCHEMA and loaded.report == private.report
    cond = {"age": (30.0, 50.0)}
    pd.testing.assert_frame_equal(loaded.sample(200, seed=4, conditions=cond),
                                  private.sample(200, seed=4, conditions=cond))


def test_a_damaged_model_file_is_refused(private, tmp_path):
    folder = private.save(tmp_path / "model")
    (folder / "weights.pt").write_bytes(b"not a state dict")
    with pytest.raises(ConfigError, match="SHA-256 does not match"):
        load_generator(folder)
    with pytest.raises(ConfigError, match="not found"):
        load_generator(tmp_path / "nowhere")


def test_schema_round_trips_through_its_dict():
    assert Schema.from_dict(SCHEMA.to_dict()) == SCHEMA
    with pytest.raises(ConfigError, match="columns\\[0\\]: type must be"):
        Schema.from_dict({"columns": [{"name": "a", "type": "date"}]})


@pytest.mark.parametrize(("outcomes", "message"), [
    (("death",), "unknown column 'death'"),
    (("event", "event"), "outcomes repeat"),
    (("age", "sex", "smoker", "event"), "at least one column must be modelled by the mixture"),
])
def test_outcome_settings_are_checked(outcomes, message):
    with pytest.raises(ConfigError, match=message):
        MixtureGenerator(SCHEMA, MixtureConfig(outcomes=outcomes))
