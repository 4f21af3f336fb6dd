"""Privacy accounting: noise calibrated to a budget, RDP composition as Opacus computes it,
training that stops at its epsilon, and the threshold of partition selection."""

from __future__ import annotations

from statistics import NormalDist

import pytest
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from learned.hazard import HazardSpec, Visit, train
from learned.privacy import ALPHAS, Mechanism, calibrate_noise, rdp_epsilon, selection_threshold
from modules.errors import ConfigError


def opacus_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    acc = RDPAccountant()
    acc.history = history
    return acc.get_epsilon(delta, alphas=list(ALPHAS))


@pytest.mark.parametrize("epsilon, rate, steps", [(1.0, 0.02, 500), (0.5, 1.0, 10)])
def test_calibrated_noise_spends_the_budget_as_opacus_counts_it(epsilon, rate, steps):
    sigma = calibrate_noise(epsilon, 1e-5, rate, steps)
    spent = opacus_epsilon([(sigma, rate, steps)], 1e-5)
    assert epsilon * (1 - 2e-3) <= spent <= epsilon
    # The same as Opacus's own calibration, to its tolerance (0.01 in epsilon).
    theirs = get_noise_multiplier(target_epsilon=epsilon, target_delta=1e-5, sample_rate=rate,
                                  steps=steps, alphas=list(ALPHAS))
    assert opacus_epsilon([(theirs, rate, steps)], 1e-5) == pytest.approx(spent, abs=0.011)


def test_releases_before_training_leave_it_less_and_compose_in_rdp():
    counts = Mechanism("transition counts", calibrate_noise(0.2, 1e-5, 1.0, 1), 1.0, 1)
    alone = calibrate_noise(1.0, 1e-5, 0.05, 200)
    after = calibrate_noise(1.0, 1e-5, 0.05, 200, prior=[counts])
    assert after > alone
    both = [counts, Mechanism("DP-SGD", after, 0.05, 200)]
    assert rdp_epsilon(both, 1e-5) == pytest.approx(
        opacus_epsilon([m.history for m in both], 1e-5), rel=1e-12)
    assert rdp_epsilon(both, 1e-5) <= 1.0
    with pytest.raises(ConfigError, match="already spend"):
        calibrate_noise(0.1, 1e-5, 0.05, 200, prior=[counts])


def test_small_budgets_are_reachable_and_too_small_ones_refused():
    # Opacus's default orders cannot certify epsilon 0.1 at delta 1e-5 at any noise.
    sigma = calibrate_noise(0.1, 1e-5, 1.0, 1)
    assert 0.099 <= rdp_epsilon([Mechanism("counts", sigma, 1.0, 1)], 1e-5) <= 0.1
    with pytest.raises(ConfigError, match="too small"):
        calibrate_noise(1e-9, 1e-5, 1.0, 10_000)


def visits(n: int) -> list[Visit]:
    return [Visit(i, "A", 30.0 * (1 + i % 5), "B" if i % 3 else "C", ()) for i in range(n)]


def test_training_stops_before_the_step_that_would_pass_its_epsilon():
    spec = HazardSpec({"A": ("B", "C")}, 30.0, 6)
    # Noise at which 20 epochs of 4 batches would spend 4.6, with a target of 3.
    rate, steps, sigma = 1 / 4, 20 * 4, 2.5
    assert opacus_epsilon([(sigma, rate, steps)], 1e-5) > 4
    result = train(visits(400), spec, epsilon=3.0, delta=1e-5, noise_multiplier=sigma,
                   epochs=20, batch_size=100)
    assert result.stopped_early and 0 < result.steps < steps
    assert result.epsilon <= 3.0
    # One more step would have passed it.
    more = opacus_epsilon([(sigma, rate, result.steps + 1)], 1e-5)
    assert more > 3.0
    assert result.epsilon == pytest.approx(opacus_epsilon([(sigma, rate, result.steps)], 1e-5))


def test_partition_selection_releases_a_one_patient_transition_rarely():
    noise, delta, k = 7.0, 1e-6, 4
    tau = selection_threshold(noise, delta, k)
    # A count of 1 plus N(0, noise^2) passes tau with probability delta / k.
    assert 1 - NormalDist(1.0, noise).cdf(tau) == pytest.approx(delta / k, rel=1e-6)
