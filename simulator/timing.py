"""Durations and GMF 2 distributions, compiled once into samplers.

A sampler takes the person's uniform source (``person.uniform``) and returns a number, so
every random draw of a patient comes from its own seeded stream.

Units: GMF 2 ``distribution`` amounts use 365-day years and 30-day months (as Synthea's
tests do). GMF 1 ``exact``/``range`` amounts use 365.25-day years and are truncated after
conversion to the next smaller unit (years, months and weeks to whole days, days to whole
hours, hours to whole minutes...), as Synthea does (../shared/synthea/EXPECTED.md, section
0). GMF 2 samples are not truncated to whole units: Synthea does truncate them, which skews
the mean of a continuous distribution down by half a unit; the intent is the distribution's
own mean.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from modules.gmf import TIME_UNITS_DAYS

__all__ = ["Sampler", "compile_distribution", "compile_duration", "legacy_days"]

Sampler = Callable[[Callable[[], float]], float]

_LEGACY_DAYS = dict(TIME_UNITS_DAYS, years=365.25)
#: Granularity (in days) that a GMF 1 amount is truncated to, by unit.
_TRUNCATE_TO = {
    "years": 1.0, "months": 1.0, "weeks": 1.0, "days": 1.0 / 24.0,
    "hours": 1.0 / 1440.0, "minutes": 1.0 / 86400.0, "seconds": 1.0 / 86400000.0,
    "milliseconds": 1.0 / 86400000.0,
}


def legacy_days(quantity: float, unit: str) -> float:
    """Days of a GMF 1 amount, truncated as Synthea does (2 years = 730 days)."""
    days = quantity * _LEGACY_DAYS[unit]
    g = _TRUNCATE_TO[unit]
    # A small epsilon keeps 0.1 * 3 style float error from losing a whole unit.
    return math.floor(days / g + 1e-9) * g


def compile_distribution(spec: dict[str, Any]) -> Sampler:
    """A sampler for a validated GMF 2 ``distribution`` object."""
    kind = spec["kind"]
    p = spec["parameters"]
    rnd = bool(spec.get("round"))
    if kind == "EXACT":
        v = float(p["value"])

        def sample(u: Callable[[], float]) -> float:
            return v
    elif kind == "UNIFORM":
        lo, hi = float(p["low"]), float(p["high"])

        def sample(u: Callable[[], float]) -> float:
            return lo + (hi - lo) * u()
    elif kind == "GAUSSIAN":
        mean, sd = float(p["mean"]), float(p["standardDeviation"])
        lo = float(p["min"]) if "min" in p else -math.inf
        hi = float(p["max"]) if "max" in p else math.inf

        def sample(u: Callable[[], float]) -> float:
            # Box-Muller from two uniforms of the patient's own stream.
            z = math.sqrt(-2.0 * math.log(1.0 - u())) * math.cos(2.0 * math.pi * u())
            return min(hi, max(lo, mean + sd * z))
    elif kind == "EXPONENTIAL":
        mean = float(p["mean"])

        def sample(u: Callable[[], float]) -> float:
            return -mean * math.log(1.0 - u())
    elif kind == "TRIANGULAR":
        a, c, b = float(p["min"]), float(p["mode"]), float(p["max"])
        f = (c - a) / (b - a) if b > a else 0.5

        def sample(u: Callable[[], float]) -> float:
            x = u()
            if x < f:
                return a + math.sqrt(x * (b - a) * (c - a))
            return b - math.sqrt((1.0 - x) * (b - a) * (b - c))
    else:  # pragma: no cover - rejected by validation
        raise ValueError(f"unknown distribution kind {kind!r}")
    if rnd:
        return lambda u: float(round(sample(u)))
    return sample


def compile_duration(state: dict[str, Any]) -> Sampler | None:
    """Sampler of a state's duration in days (Delay, Procedure, future Death), or None when
    the state gives no duration. Negative draws are clamped to zero."""
    if "distribution" in state and isinstance(state["distribution"], dict):
        per = TIME_UNITS_DAYS[state.get("unit", "days")]
        dist = compile_distribution(state["distribution"])
        return lambda u: max(0.0, dist(u) * per)
    if "exact" in state:
        ex = state["exact"]
        days = max(0.0, legacy_days(float(ex["quantity"]), ex["unit"]))
        return lambda u: days
    if "range" in state:
        r = state["range"]
        lo, hi, unit = float(r["low"]), float(r["high"]), r["unit"]
        return lambda u: max(0.0, legacy_days(lo + (hi - lo) * u(), unit))
    if "duration" in state:  # GMF 1 Procedure: {low, high, unit}
        d = state["duration"]
        lo, hi, unit = float(d["low"]), float(d["high"]), d["unit"]
        return lambda u: max(0.0, legacy_days(lo + (hi - lo) * u(), unit))
    return None
