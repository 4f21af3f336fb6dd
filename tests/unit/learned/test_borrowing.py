"""The commensurate-prior hybrid analysis on simulated data where the truth is known: a
synthetic arm that agrees with the real control is borrowed nearly in full and narrows the
interval; one that disagrees is hardly borrowed and leaves the real-control answer."""

from __future__ import annotations

import math

import numpy as np
import pytest

from learned.arms import Arm
from learned.borrowing import commensurate_borrowing, hybrid_weights
from modules.errors import ConfigError

TRUE_HR = 0.5
REPS = 6


def exp_arm(name: str, n: int, hazard: float, seed: int) -> Arm:
    rng = np.random.default_rng(seed)
    t = rng.exponential(1.0 / hazard, n)
    return Arm(name, np.minimum(t, 365.0), (t <= 365.0).astype(float))


def scenario(k: int, synthetic_hazard_ratio: float):
    base = 1 / 300.0
    return (exp_arm("treatment", 200, base * TRUE_HR, 1000 + k),
            exp_arm("real control", 70, base, 2000 + k),
            exp_arm("synthetic", 300, base * synthetic_hazard_ratio, 3000 + k))


def test_agreeing_synthetic_arm_is_borrowed_and_narrows_the_interval():
    shares, narrower, covered = [], 0, 0
    for k in range(REPS):
        trt, real, syn = scenario(k, 1.0)
        r = commensurate_borrowing(trt, real, syn)
        shares.append(r.borrowed_share)
        narrower += r.ci_width < r.real_only.high - r.real_only.low
        covered += r.low <= TRUE_HR <= r.high
        assert r.effective_borrowed == pytest.approx(r.borrowed_share * 300)
        assert r.low < r.hr < r.high
    # Under agreement the spike (pooling) dominates: the median share is large, and the
    # interval is narrower than with the real control alone in nearly every replication.
    assert np.median(shares) > 0.6
    assert narrower >= REPS - 1
    assert covered >= REPS - 1  # a 95% interval misses twice in 6 with probability 3.3%


def test_disagreeing_synthetic_arm_is_not_borrowed():
    # log 3 is about 5 standard errors of the discrepancy here: never commensurate
    for k in range(4):
        trt, real, syn = scenario(k, 3.0)  # the synthetic arm's hazard is three times the real
        r = commensurate_borrowing(trt, real, syn)
        assert r.borrowed_share < 0.05 and r.p_commensurate < 0.01
        assert r.discrepancy > math.log(3.0) - 4 * r.discrepancy_se
        # the estimate falls back to the real control arm alone, while pooling is biased
        assert abs(math.log(r.hr) - math.log(r.real_only.hr)) < 0.1
        assert r.pooled.hr < r.real_only.hr


def test_hybrid_curve_weights_and_bad_options():
    trt, real, syn = scenario(0, 1.0)
    r = commensurate_borrowing(trt, real, syn, spike=0.9)
    h = hybrid_weights(real, syn, r)
    assert h.n == real.n + syn.n and h.weights is not None
    assert np.all(h.weights[: real.n] == 1.0) and np.allclose(h.weights[real.n:], r.borrowed_share)
    # a stronger prior belief in commensurability borrows more
    assert r.borrowed_share >= commensurate_borrowing(trt, real, syn, spike=0.1).borrowed_share
    with pytest.raises(ConfigError, match="--spike"):
        commensurate_borrowing(trt, real, syn, spike=1.0)
    with pytest.raises(ConfigError, match="no events"):
        commensurate_borrowing(trt, Arm("real control", np.ones(5), np.zeros(5)), syn)
