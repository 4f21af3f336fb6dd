"""Hybrid control arms: a small real control arm augmented with synthetic patients
through a commensurate prior, which borrows from the synthetic arm as much as it agrees
with the real one.

The model (Hobbs, Carlin, Mandrekar and Sargent, Biometrics 2011;67:1047-1056; Hobbs,
Sargent and Carlin, Bayesian Analysis 2012;7:639-674). One Cox model over the real
treatment arm (T), the real control arm (C) and the synthetic arm (S) with two
indicators: ``beta``, the log hazard ratio of T against C (the treatment effect), and
``delta``, the log hazard ratio of S against C (how far the synthetic arm is from the
real control). Its estimates are approximately normal, ``(b, d) ~ N((beta, delta), V)``.
The commensurate prior says the synthetic arm is the real control up to a discrepancy
``delta ~ N(0, sigma^2)``; ``sigma`` gets a spike-and-slab prior (Hobbs et al. 2012): with
probability ``spike`` it is 0 (the arms are commensurate: pool them), otherwise it is
half-normal with scale ``slab_scale`` on the log-hazard scale. With a flat prior on
``beta``, everything is Gaussian given ``sigma``:

- the data's evidence about ``sigma`` is ``d ~ N(0, V_dd + sigma^2)``;
- ``beta | sigma ~ N(b - V_bd d / (V_dd + sigma^2), V_bb - V_bd^2 / (V_dd + sigma^2))``;

so the posterior of ``beta`` is a mixture of normals over a grid of ``sigma`` (and the
spike), from which the posterior median and 95% credible interval of the hazard ratio
come. When the arms agree, ``d`` is small, the spike wins and the synthetic arm counts
almost in full (``sigma = 0`` is plain pooling); when they disagree, ``sigma`` is large and
the estimate falls back to the real control arm alone (``sigma -> inf``). This is the
dynamic borrowing that Viele et al. (Pharm Stat 2014;13:41-54) compare with the power
prior (Ibrahim and Chen, Stat Sci 2000;15:46-60) and test-then-pool.

The effective number of borrowed patients: given ``sigma``, the synthetic arm informs
the control arm's log hazard like a normal prior of variance ``1/I_S + sigma^2`` instead
of ``1/I_S``, i.e. with the share ``1 / (1 + sigma^2 I_S)`` of its information, where
``I_S`` is the synthetic arm's information (its events, scaled with the real arm's so
that ``1/I_C + 1/I_S = V_dd``, Schoenfeld's approximation). The effective number is the
synthetic arm's size times the posterior mean of that share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from learned.arms import Arm, HazardRatio, cox_hazard_ratio, fit_cox
from modules.errors import ConfigError

__all__ = ["BorrowingResult", "commensurate_borrowing", "hybrid_weights"]

_GRID = 600


@dataclass(frozen=True)
class BorrowingResult:
    """The hybrid analysis of a treatment arm against real control + synthetic patients."""

    #: Posterior median and 95% credible interval of the treatment-vs-control hazard ratio.
    hr: float
    low: float
    high: float
    #: Posterior probability that the synthetic arm is commensurate (sigma = 0).
    p_commensurate: float
    #: Posterior mean share of the synthetic arm's information borrowed, and in patients.
    borrowed_share: float
    effective_borrowed: float
    synthetic_n: int
    #: The synthetic arm's estimated log hazard ratio against the real control (delta).
    discrepancy: float
    discrepancy_se: float
    #: Comparators: the real control alone, and the real + synthetic arms pooled.
    real_only: HazardRatio
    pooled: HazardRatio
    spike: float
    slab_scale: float

    @property
    def ci_width(self) -> float:
        return self.high - self.low


def _fit3(treatment: Arm, real: Arm, synthetic: Arm) -> tuple[np.ndarray, np.ndarray]:
    frame = pd.DataFrame({
        "time": np.concatenate([treatment.time, real.time, synthetic.time]),
        "event": np.concatenate([treatment.event, real.event, synthetic.event]),
        "trt": np.concatenate([np.ones(treatment.n), np.zeros(real.n + synthetic.n)]),
        "synth": np.concatenate([np.zeros(treatment.n + real.n), np.ones(synthetic.n)]),
    })
    cph = fit_cox(frame, "treatment, real control and synthetic arms")
    params = cph.params_[["trt", "synth"]].to_numpy(dtype=float)
    cov = cph.variance_matrix_.loc[["trt", "synth"], ["trt", "synth"]].to_numpy(dtype=float)
    return params, cov


def _normal_pdf(x: float, var: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * x * x / var) / np.sqrt(2.0 * math.pi * var)


def commensurate_borrowing(treatment: Arm, real: Arm, synthetic: Arm, *, spike: float = 0.5,
                           slab_scale: float = 1.0) -> BorrowingResult:
    """The commensurate-prior hybrid analysis (see the module's docstring). ``spike`` is
    the prior probability that the arms are commensurate, ``slab_scale`` the scale of the
    half-normal prior of ``sigma`` otherwise (log-hazard units)."""
    from scipy.optimize import brentq
    from scipy.special import ndtr

    if not 0.0 <= spike < 1.0:
        raise ConfigError(f"--spike must be in [0, 1), got {spike}")
    if not slab_scale > 0.0:
        raise ConfigError(f"--slab-scale must be positive, got {slab_scale}")
    for arm in (treatment, real, synthetic):
        if arm.events == 0:
            raise ConfigError(f"arm {arm.name!r} has no events; the hybrid analysis needs "
                              "events in every arm")
    (b, d), v = _fit3(treatment, real, synthetic)
    vbb, vbd, vdd = v[0, 0], v[0, 1], v[1, 1]
    # sigma grid for the slab (midpoints), and the spike at sigma = 0.
    edges = np.linspace(0.0, 6.0 * slab_scale, _GRID + 1)
    sig = 0.5 * (edges[1:] + edges[:-1])
    width = np.diff(edges)
    prior = np.concatenate([[spike], (1.0 - spike) * width * math.sqrt(2.0 / math.pi)
                            / slab_scale * np.exp(-0.5 * (sig / slab_scale) ** 2)])
    s2 = np.concatenate([[0.0], sig ** 2])
    like = _normal_pdf(d, vdd + s2)
    w = prior * like
    w /= w.sum()
    mean = b - vbd * d / (vdd + s2)
    var = np.maximum(vbb - vbd ** 2 / (vdd + s2), 1e-12)
    sd = np.sqrt(var)

    def cdf(x: float) -> float:
        return float(np.sum(w * ndtr((x - mean) / sd)))

    lo_x = float(np.min(mean - 10 * sd))
    hi_x = float(np.max(mean + 10 * sd))
    q = [brentq(lambda x, p=p: cdf(x) - p, lo_x, hi_x) for p in (0.025, 0.5, 0.975)]
    # The synthetic arm's information on the control log hazard, from the events split
    # so that 1/I_C + 1/I_S equals the variance of delta.
    scale = (1.0 / real.events + 1.0 / synthetic.events) / vdd
    info_s = scale * synthetic.events
    share = float(np.sum(w / (1.0 + s2 * info_s)))
    pooled_ctrl = Arm("control (real + synthetic)", np.concatenate([real.time, synthetic.time]),
                      np.concatenate([real.event, synthetic.event]))
    return BorrowingResult(
        hr=math.exp(q[1]), low=math.exp(q[0]), high=math.exp(q[2]),
        p_commensurate=float(w[0]), borrowed_share=share,
        effective_borrowed=share * synthetic.n, synthetic_n=synthetic.n,
        discrepancy=float(d), discrepancy_se=math.sqrt(vdd),
        real_only=cox_hazard_ratio(treatment, real),
        pooled=cox_hazard_ratio(treatment, pooled_ctrl), spike=spike, slab_scale=slab_scale)


def hybrid_weights(real: Arm, synthetic: Arm, result: BorrowingResult) -> Arm:
    """The hybrid control arm as one weighted arm: real patients with weight 1, synthetic
    ones with the borrowed share (for its Kaplan-Meier curve)."""
    return Arm("hybrid control", np.concatenate([real.time, synthetic.time]),
               np.concatenate([real.event, synthetic.event]),
               weights=np.concatenate([np.ones(real.n),
                                       np.full(synthetic.n, result.borrowed_share)]))
