"""The privacy ledger: keyed by the data's fingerprint, composing every spend, refusing
one that would pass the budget before anything is trained."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from opacus.accountants import RDPAccountant

from learned.events import make_event_data
from learned.ledger import Ledger, Spend, compose, data_fingerprint
from learned.privacy import ALPHAS, Mechanism, rdp_epsilon
from modules.errors import ConfigError


def training(noise: float, rate: float = 0.05, steps: int = 200) -> Spend:
    """A DP-SGD run, charged with the epsilon its mechanism spends at delta 1e-5."""
    mechanism = Mechanism("DP-SGD", noise, rate, steps)
    return Spend("training", rdp_epsilon([mechanism], 1e-5), 1e-5, "rdp", (mechanism,))


ONE = 3.07  # the noise at which training(ONE) spends epsilon 1.0 (to 1%)


def test_rdp_spends_compose_as_one_opacus_accountant():
    a, b = training(ONE), training(2.0, rate=0.1, steps=50)
    assert a.epsilon == pytest.approx(1.0, abs=0.02)
    total = compose([a, b])
    acc = RDPAccountant()
    acc.history = [m.history for s in (a, b) for m in s.mechanisms]
    assert total.epsilon == pytest.approx(acc.get_epsilon(2e-5, alphas=list(ALPHAS)),
                                          rel=1e-12)
    assert total.epsilon < a.epsilon + b.epsilon and total.delta == pytest.approx(2e-5)
    assert "composed in RDP" in total.method


def test_other_spends_add_up_and_addition_is_used_where_it_is_tighter():
    laplace = Spend("counts by another tool", 0.3, 0.0, "pure")
    assert compose([training(ONE), laplace]).epsilon == pytest.approx(
        compose([training(ONE)]).epsilon + 0.3)
    # An entry whose mechanisms RDP rates above its stated epsilon: both bounds hold, the
    # smaller is reported.
    loose = Spend("x", 1.0, 1e-5, "rdp", (Mechanism("DP-SGD", 1.1, 0.01, 1000),))
    assert compose([loose, loose]).epsilon == pytest.approx(2.0)
    assert compose([training(ONE), Spend("no privacy", math.inf, 0.0, "none")]).epsilon \
        == math.inf
    assert compose([]).epsilon == 0.0


def test_reserve_refuses_over_budget_and_records_nothing(tmp_path):
    ledger = Ledger(tmp_path, "sha256:abc", name="toy", patients=10)
    first = training(ONE)
    assert ledger.reserve(first, budget=1.2).epsilon == pytest.approx(first.epsilon)
    with pytest.raises(ConfigError, match=r"over --budget 1\.2.*nothing was trained"):
        ledger.reserve(training(ONE), budget=1.2)
    assert [s.id for s in ledger.spends()] == [first.id]
    ledger.complete(first.id, ["out/model.pt"])
    (done,) = ledger.spends()
    assert done.status == "completed" and done.outputs == ("out/model.pt",)
    doc = json.loads(ledger.path.read_text())
    assert doc["fingerprint"] == "sha256:abc"
    assert doc["total"]["epsilon"] == pytest.approx(first.epsilon)
    # A smaller spend still fits.
    assert ledger.reserve(training(20.0), budget=1.2).epsilon < 1.2


def test_a_damaged_ledger_is_an_error_not_a_fresh_start(tmp_path):
    ledger = Ledger(tmp_path, "sha256:abc")
    ledger.reserve(training(ONE))
    ledger.path.write_text("{ not json")
    with pytest.raises(ConfigError, match="cannot be read"):
        ledger.reserve(training(20.0))


def toy(rows: list[tuple[str, float, str]], ages: dict[str, float]):
    ev = pd.DataFrame(rows, columns=["patient_id", "time", "code"])
    base = pd.DataFrame({"patient_id": list(ages), "age": list(ages.values())})
    return make_event_data(ev, base, name="toy", origin="diagnosis", initial_state="well")


def test_the_fingerprint_is_the_content_whatever_the_order():
    rows = [("a", 0.0, "ill"), ("a", 9.0, "dead"), ("b", 3.0, "ill")]
    one = toy(rows, {"a": 60, "b": 70})
    other = toy(rows[::-1], {"b": 70, "a": 60})
    assert data_fingerprint(one) == data_fingerprint(other)
    assert data_fingerprint(one) != data_fingerprint(toy(rows, {"a": 60, "b": 71}))
    assert data_fingerprint(one) != data_fingerprint(toy(rows[:2], {"a": 60, "b": 70}))
