"""The DP baseline generator as a cohort's baseline source, its fit by a trial build
(charging the privacy ledger with the exact mechanism, refusing over a budget), and the
record of the models behind an arm."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from learned.baseline import Categorical, MixtureConfig, MixtureGenerator, Numeric, Schema
from learned.ledger import Ledger, Spend, compose
from learned.privacy import Mechanism
from learned.trial_inputs import (
    GeneratorSource,
    card_entry,
    fit_generator,
    learned_record,
)
from modules.errors import ConfigError
from simulator.protocol import parse_protocol

SCHEMA = Schema((Numeric("age", (20.0, 40.0, 60.0, 80.0)), Categorical("sex", ("1", "2")),
                 Categorical("karnof", ("70", "80", "90", "100")),
                 Categorical("site", ("north", "south"))))


def table(n: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"age": rng.uniform(20, 80, n), "sex": rng.choice(["1", "2"], n),
                         "karnof": rng.choice(["70", "80", "90", "100"], n),
                         "site": rng.choice(["north", "south"], n)})


@pytest.fixture(scope="module")
def source() -> GeneratorSource:
    gen = MixtureGenerator(SCHEMA, MixtureConfig(components=2, epochs=40))
    return GeneratorSource(gen.fit(table(), epsilon=None), "test generator")


def test_cohort_constraints_become_the_generators_conditions(source):
    cond = source.conditions({
        "age": (18.0, math.inf),           # an open end is None
        "sex": frozenset({"2"}),
        "karnof": (80.0, math.inf),        # numeric range on numeric categories
        "site": (0.0, 1.0),                # a range on text categories says nothing
        "unknown": frozenset({"x"}),       # not the generator's column
    })
    assert cond == {"age": (18.0, None), "sex": {"2"}, "karnof": {"80", "90", "100"}}
    # A zero-width range has probability 0 under a density: left to the eligibility check.
    assert source.conditions({"age": (50.0, 50.0)}) == {}


def test_draws_honour_the_constraints_exactly(source):
    rows = source.sample(300, seed=1, conditions={"age": (45.0, math.inf),
                                                  "karnof": (-math.inf, 80.0),
                                                  "sex": frozenset({"1"})})
    assert len(rows) == 300
    assert (rows["age"] >= 45).all() and set(rows["sex"]) == {"1"}
    assert set(rows["karnof"]) <= {"70", "80"}
    assert source.available is None and source.columns == ("age", "sex", "karnof", "site")


def test_constraints_no_category_meets_are_refused_with_the_source_named(source):
    with pytest.raises(ConfigError, match="test generator: the eligibility criteria allow no "
                                          "category of karnof"):
        source.sample(5, seed=1, conditions={"karnof": (0.0, 50.0)})
    with pytest.raises(ConfigError, match="test generator: cannot draw patients meeting"):
        source.sample(5, seed=1, conditions={"age": (90.0, math.inf)})


PROTOCOL = """\
name: Fit test
arm: {{size: 10}}
baseline:
  source:
    fit:
      file: {file}
      epsilon: {epsilon}
      delta: 1e-3
      columns:
        age: {{edges: [20, 40, 60, 80]}}
        sex: [1, 2]
        karnof: [70, 80, 90, 100]
        site: [north, south]
      settings: {{epochs: 3, components: 2}}
  age: age
  sex: {{column: sex, values: {{1: M, 2: F}}}}
index: {{event: enrollment, start: 2024-01-01}}
follow_up: {{duration: {{quantity: 30, unit: days}}}}
standard_of_care: {{modules: [m]}}
endpoints: [{{paramcd: DTH, type: time_to_event, events: [{{death: true}}]}}]
"""


def test_the_fit_charges_the_ledger_with_its_exact_mechanism_and_refuses_over_budget(tmp_path):
    table(120).to_csv(tmp_path / "rows.csv", index=False)
    protocol = parse_protocol(PROTOCOL.format(file="rows.csv", epsilon=1.0),
                              tmp_path / "p.yaml")
    fitted = fit_generator(protocol, ledger_dir=tmp_path / "ledgers", budget=1.2)
    gen = fitted.source.generator
    assert gen.report is not None and 0.9 < gen.report.epsilon <= 1.0
    (spend,) = fitted.ledger.spends()
    assert spend.status == "reserved" and spend.epsilon == 1.0 and spend.delta == 1e-3
    # The reservation made before training is the mechanism Opacus then ran.
    (mech,) = spend.mechanisms
    assert mech.noise_multiplier == pytest.approx(gen.report.noise_multiplier)
    assert (mech.sample_rate, mech.steps) == (gen.report.sample_rate, gen.report.steps)
    assert compose([spend]).epsilon == pytest.approx(gen.report.epsilon, rel=1e-6)
    assert gen.data is not None and gen.data["fingerprint"] == fitted.ledger.fingerprint
    # A second release would compose to more than 1.2 (about 1.4): refused, nothing recorded.
    with pytest.raises(ConfigError, match="baseline.source.fit: privacy budget exceeded"):
        fit_generator(protocol, ledger_dir=tmp_path / "ledgers", budget=1.2)
    assert len(Ledger(tmp_path / "ledgers", fitted.ledger.fingerprint).spends()) == 1
    # The saved card names its data set and reads back as an entry of build.json.
    gen.save(tmp_path / "gen")
    entry = card_entry(tmp_path / "gen", "baseline generator")
    assert entry["fingerprint"] == fitted.ledger.fingerprint and entry["data"] == "rows"
    assert entry["mechanisms"] == [mech.to_dict()]


def test_bad_fit_input_is_one_clear_error(tmp_path):
    bad = table(50)
    bad.loc[3, "age"] = 95.0  # outside the stated bounds
    bad.to_csv(tmp_path / "rows.csv", index=False)
    protocol = parse_protocol(PROTOCOL.format(file="rows.csv", epsilon=1.0),
                              tmp_path / "p.yaml")
    with pytest.raises(Exception, match="row 4") as info:
        fit_generator(protocol, ledger_dir=tmp_path / "ledgers")
    assert "age" in str(info.value)
    small = parse_protocol(PROTOCOL.format(file="rows.csv", epsilon=1.0)
                           .replace("delta: 1e-3", "delta: 0.1"), tmp_path / "p.yaml")
    with pytest.raises(ConfigError, match="not below 1/rows"):
        fit_generator(small, ledger_dir=tmp_path / "ledgers")


def entry(path: str, fingerprint: str, eps: float | None, noise: float) -> dict:
    mech = Mechanism("DP-SGD", noise, 1.0, 100)
    return {"path": path, "data": "d", "fingerprint": fingerprint, "epsilon": eps,
            "delta": 1e-5, "accountant": "rdp", "mechanisms": [mech.to_dict()],
            "extra_delta": 0.0}


def test_the_record_composes_the_models_of_one_data_set(tmp_path):
    a, b = entry("a", "sha256:x", 1.0, 30.0), entry("b", "sha256:x", 1.0, 30.0)
    c = entry("c", "sha256:y", None, 30.0)  # trained without privacy
    rec = learned_record([a, b, c], ledger_dir=tmp_path)
    x, y = rec["privacy"]
    assert (x["fingerprint"], x["models"], y["models"]) == ("sha256:x", 2, 1)
    assert x["epsilon_added"] == 2.0 and x["epsilon"] < 2.0  # RDP is tighter than adding
    expected = compose([Spend("a", 1.0, 1e-5, "rdp", (Mechanism("DP-SGD", 30.0, 1.0, 100),))
                        ] * 2)
    assert x["epsilon"] == pytest.approx(expected.epsilon) and x["delta"] == 2e-5
    assert y["epsilon"] == "inf" and "ledger" not in x  # no ledger file here
    json.dumps(rec)  # build.json can hold it
