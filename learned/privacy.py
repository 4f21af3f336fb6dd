"""Privacy accounting: the Gaussian mechanisms carecourse releases through, their
composition in Rényi differential privacy (RDP), and the calibration of noise to a budget.

Every release that reads the data is a (subsampled) Gaussian mechanism, described by a
:class:`Mechanism` (noise multiplier, sampling rate, steps): DP-SGD (Abadi et al., "Deep
learning with differential privacy", CCS 2016) is one with Poisson sampling of patients;
the noisy transition counts that decide a derived module's structure are one with sampling
rate 1 and one step. Their RDP curves add up (Mironov, "Rényi differential privacy", CSF
2017), and the sum is converted to (epsilon, delta) at the end. The RDP of each mechanism
and the conversion are Opacus's own (``opacus.accountants.RDPAccountant``), so the epsilon
carecourse reports is what Opacus reports for the same settings.

Partition selection (releasing only the transitions whose noisy count passes a threshold,
when the set of possible transitions is not public) adds a delta outside the RDP analysis:
see :func:`selection_threshold`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist
from typing import Any

import numpy as np

from modules.errors import ConfigError

__all__ = ["ALPHAS", "Mechanism", "rdp_epsilon", "calibrate_noise", "selection_threshold"]

#: Above this noise multiplier a budget is called too small to spend.
MAX_NOISE = 1e6
#: The RDP orders of the conversion to (epsilon, delta): Opacus's default orders (1.1 to
#: 63) and larger ones. Any order gives a valid bound; the larger ones are where the
#: optimum lies for small epsilons and much noise (a Gaussian mechanism with noise 30
#: reaches its least epsilon near order 150), which Opacus's default stops short of (it
#: warns "Optimal order is the largest alpha"): below epsilon of about 0.19 at delta 1e-5
#: the default orders cannot certify anything.
ALPHAS: tuple[float, ...] = (*[1 + x / 10.0 for x in range(1, 100)], *range(12, 64),
                             64, 80, 96, 128, 160, 192, 256, 384, 512, 768, 1024)


@dataclass(frozen=True)
class Mechanism:
    """A subsampled Gaussian mechanism: ``steps`` releases, each of a sum with L2
    sensitivity 1 (after clipping) plus N(0, noise_multiplier^2) noise, over a Poisson
    sample of patients at ``sample_rate``."""

    name: str
    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        if not (self.noise_multiplier > 0 and 0 < self.sample_rate <= 1 and self.steps >= 0):
            raise ConfigError(f"mechanism {self.name!r}: needs noise > 0, 0 < sample rate "
                              f"<= 1 and steps >= 0, got {self.noise_multiplier}, "
                              f"{self.sample_rate}, {self.steps}")

    @property
    def history(self) -> tuple[float, float, int]:
        """The entry of an Opacus accountant's ``history``."""
        return (self.noise_multiplier, self.sample_rate, self.steps)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "noise_multiplier": self.noise_multiplier,
                "sample_rate": self.sample_rate, "steps": self.steps}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Mechanism:
        return cls(str(d["name"]), float(d["noise_multiplier"]), float(d["sample_rate"]),
                   int(d["steps"]))


@lru_cache(maxsize=256)
def _rdp_per_step(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    from opacus.accountants.analysis import rdp

    return np.asarray(rdp.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier,
                                      steps=1, orders=list(ALPHAS)), dtype=np.float64)


def rdp_epsilon(mechanisms: Sequence[Mechanism], delta: float) -> float:
    """The epsilon at ``delta`` of all ``mechanisms`` composed (0 for none): the sum of
    their RDP curves, each Opacus's ``compute_rdp``, converted by Opacus's
    ``get_privacy_spent`` over :data:`ALPHAS`; the same number as an Opacus
    ``RDPAccountant`` with these mechanisms as its history and ``alphas=ALPHAS``. A
    mechanism's curve is linear in its steps, so each (noise, rate) is computed once."""
    import warnings

    from opacus.accountants.analysis import rdp

    used = [m for m in mechanisms if m.steps > 0]
    if not used:
        return 0.0
    if not 0 < delta < 1:
        raise ConfigError(f"delta must be between 0 and 1, got {delta}")
    total = sum(m.steps * _rdp_per_step(m.noise_multiplier, m.sample_rate) for m in used)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Optimal order.*")
        eps, _alpha = rdp.get_privacy_spent(orders=list(ALPHAS), rdp=total, delta=delta)
    return float(eps)


def calibrate_noise(epsilon: float, delta: float, sample_rate: float, steps: int, *,
                    prior: Sequence[Mechanism] = (), rtol: float = 1e-3) -> float:
    """The smallest noise multiplier (to a relative ``rtol`` of epsilon) such that
    ``steps`` steps at ``sample_rate``, composed with the ``prior`` mechanisms, spend at
    most ``epsilon`` at ``delta``. Raises ConfigError when the prior mechanisms alone
    spend it, or when the budget would need more noise than :data:`MAX_NOISE`."""
    if not epsilon > 0:
        raise ConfigError(f"epsilon must be positive, got {epsilon}")
    if rdp_epsilon(prior, delta) >= epsilon:
        raise ConfigError(f"the releases before training already spend epsilon "
                          f"{rdp_epsilon(prior, delta):.3g} of the {epsilon:g} asked for; "
                          "raise --epsilon or lower --count-share")

    def spent(sigma: float) -> float:
        return rdp_epsilon([*prior, Mechanism("probe", sigma, sample_rate, steps)], delta)

    low, high = 0.0, 1.0
    while spent(high) > epsilon:
        low, high = high, 2 * high
        if high > MAX_NOISE:
            raise ConfigError(f"epsilon {epsilon:g} at delta {delta:g} is too small for "
                              f"{steps} step(s): raise --epsilon or train fewer epochs")
    while True:
        mid = (low + high) / 2
        if spent(mid) > epsilon:
            low = mid
        else:
            high = mid
        if epsilon - spent(high) <= rtol * epsilon or high - low < 1e-9:
            return high


def selection_threshold(noise: float, delta: float, contributions: int) -> float:
    """The count a noisy count must pass to be released when the set of possible
    transitions is not public (Gaussian partition selection: Korolova et al., "Releasing
    search queries and clicks privately", WWW 2009; Wilson et al., "Differentially private
    SQL with bounded user contribution", PoPETs 2020).

    Each patient adds 1 to at most ``contributions`` counts, and each count gets
    N(0, ``noise``^2). A transition that only one patient made has a true count of 1; it
    is released with probability below ``delta / contributions`` when the threshold is
    ``1 + noise * z`` with z the normal quantile of ``1 - delta / contributions``, so all of
    one patient's unique transitions together are released with probability below
    ``delta``: that ``delta`` is added to the mechanism's own."""
    if not (0 < delta < 1) or contributions < 1 or noise <= 0:
        raise ConfigError("partition selection needs 0 < delta < 1, noise > 0 and at least "
                          "one contribution per patient")
    return 1.0 + noise * NormalDist().inv_cdf(1.0 - delta / contributions)


def is_private(epsilon: float | None) -> bool:
    return epsilon is not None and math.isfinite(epsilon)
