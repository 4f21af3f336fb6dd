"""Round trip: simulate patients through a rule module whose probabilities and delays are
known, read the stays back from the simulated CSV output, and learn them with and without
differential privacy.

Tolerances come from the sample size: with n stays, an estimated exit probability near p
has a standard error of sqrt(p(1-p)/n), about 0.004 for n = 15,000 and p = 1/3. The issue's
bars (0.02 without noise, 0.05 at epsilon 1) are five and more standard errors wide, so
sampling alone fails them with probability below 1e-6; what remains is the model's bias
and, with DP, the noise.
"""

from __future__ import annotations

import csv
import datetime as dt
import json

import pytest

from exporters.csv import CsvSink
from learned.hazard import HazardSpec, Visit, train
from simulator.population import RunConfig, run_population

N = 20_000
P_B, P_C = 0.1, 0.2  # monthly chances of each exit; staying: 0.7
TRUTH = {"B": P_B / (P_B + P_C), "C": P_C / (P_B + P_C)}

MODULE = {
    "name": "roundtrip",
    "states": {
        "Initial": {"type": "Initial", "direct_transition": "Onset_A"},
        "Onset_A": {"type": "ConditionOnset", "codes": [
            {"system": "SNOMED-CT", "code": "9000001", "display": "State A"}],
            "direct_transition": "Wait"},
        "Wait": {"type": "Delay", "exact": {"quantity": 1, "unit": "months"},
                 "distributed_transition": [{"distribution": P_B, "transition": "Onset_B"},
                                            {"distribution": P_C, "transition": "Onset_C"},
                                            {"distribution": 0.7, "transition": "Wait"}]},
        "Onset_B": {"type": "ConditionOnset", "codes": [
            {"system": "SNOMED-CT", "code": "9000002", "display": "State B"}],
            "direct_transition": "Terminal"},
        "Onset_C": {"type": "ConditionOnset", "codes": [
            {"system": "SNOMED-CT", "code": "9000003", "display": "State C"}],
            "direct_transition": "Terminal"},
        "Terminal": {"type": "Terminal"},
    },
}
CODES = {"9000001": "A", "9000002": "B", "9000003": "C"}
SPEC = HazardSpec({"A": ("B", "C")}, bin_days=30.0, max_bins=24,
                  covariates=("male",), bounds=((0.0, 1.0),))


@pytest.fixture(scope="module")
def stays(tmp_path_factory) -> list[Visit]:
    root = tmp_path_factory.mktemp("roundtrip")
    (root / "modules").mkdir()
    (root / "modules" / "roundtrip.json").write_text(json.dumps(MODULE))
    config = RunConfig(population=N, seed=3, age_range=(0, 1), processes=2,
                       reference_date=dt.date(2024, 6, 30), years_of_history=0,
                       modules_dir=root / "modules", out=root / "out")
    run_population(config, [CsvSink(years_of_history=0, end=config.end)], progress=False)
    csv_dir = config.out / "csv"
    with open(csv_dir / "patients.csv", newline="") as f:
        male = {r["Id"]: float(r["GENDER"] == "M") for r in csv.DictReader(f)}
    onsets: dict[str, dict[str, dt.date]] = {}
    with open(csv_dir / "conditions.csv", newline="") as f:
        for r in csv.DictReader(f):
            if r["CODE"] in CODES:
                onsets.setdefault(r["PATIENT"], {})[CODES[r["CODE"]]] = \
                    dt.date.fromisoformat(r["START"][:10])
    end = config.reference_date
    out = []
    for pid, seen in onsets.items():
        exit_ = next((s for s in ("B", "C") if s in seen), None)
        stop = seen[exit_] if exit_ else end
        out.append(Visit(pid, "A", float((stop - seen["A"]).days), exit_, (male[pid],)))
    return out


def test_the_simulated_output_has_the_known_course(stays):
    assert len(stays) > 0.95 * N
    left = [v for v in stays if v.exit]
    share_b = sum(v.exit == "B" for v in left) / len(left)
    assert abs(share_b - TRUTH["B"]) < 5 * (TRUTH["B"] * TRUTH["C"] / len(left)) ** 0.5


def test_without_noise_the_probabilities_come_back_within_0_02(stays):
    result = train(stays, SPEC, epsilon=None)
    for male in (0.0, 1.0):
        got = result.model.exit_distribution("A", (male,))
        for exit_, truth in TRUTH.items():
            assert abs(got[exit_] - truth) < 0.02, (male, got)
        # The dwell time: leaving in the first month has probability 0.3.
        assert abs(1 - result.model.hazards("A", (male,))[0, 0] - (P_B + P_C)) < 0.02


def test_at_epsilon_1_within_0_05_and_the_budget_is_kept(stays):
    from opacus.accountants import RDPAccountant

    from learned.privacy import ALPHAS

    result = train(stays, SPEC, epsilon=1.0, delta=1e-5, seed=1)
    assert result.epsilon is not None and result.epsilon <= 1.0
    for male in (0.0, 1.0):
        got = result.model.exit_distribution("A", (male,))
        for exit_, truth in TRUTH.items():
            assert abs(got[exit_] - truth) < 0.05, (male, got)
    # The reported epsilon is Opacus's own RDP accounting of the same settings.
    patients = len({v.patient for v in stays})
    batches = -(-patients // 2048)  # Poisson sampling at rate 1/batches, batches per epoch
    assert result.sample_rate == pytest.approx(1 / batches)
    assert result.steps == result.epochs * batches
    acc = RDPAccountant()
    acc.history = [(result.noise_multiplier, 1 / batches, result.steps)]
    assert acc.get_epsilon(1e-5, alphas=list(ALPHAS)) == pytest.approx(result.epsilon, rel=1e-6)
    # Opacus's default orders give the same bound, or a looser one.
    assert acc.get_epsilon(1e-5) >= result.epsilon * (1 - 1e-9)


def test_exits_that_the_spec_does_not_know_are_refused():
    from modules.errors import ConfigError

    with pytest.raises(ConfigError, match="not among the modelled exits"):
        train([Visit(1, "A", 30.0, "Z", (0.0,))], SPEC)
