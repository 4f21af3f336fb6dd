"""Public facts the lifecycle needs: mortality, growth, vital signs, behaviour,
immunizations and the wellness-visit schedule.

The numbers live in small data files in ``simulator/data/`` with their sources; this module
loads each once, indexes it, and answers lookups without scanning.
"""

from __future__ import annotations

import bisect
import csv
import io
import json
import math
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import numpy as np

__all__ = [
    "annual_death_probability",
    "mortality_causes",
    "cause_death_rate",
    "height_cm",
    "bmi",
    "bmi_percentile",
    "weight_kg",
    "Body",
    "body",
    "blood_pressure",
    "heart_rate",
    "respiratory_rate",
    "smoking_start_probability",
    "smoking_quit_probability",
    "alcohol_use_probability",
    "heavy_drinking_probability",
    "Vaccine",
    "immunization_schedule",
    "wellness_visit_ages_days",
    "life_expectancy",
]


def _text(name: str) -> str:
    return (resources.files("simulator.data") / name).read_text(encoding="utf-8")


@cache
def _json(name: str) -> dict[str, Any]:
    return json.loads(_text(name))


def _check_sex(sex: str) -> str:
    if sex not in ("M", "F"):
        raise ValueError(f"sex must be 'M' or 'F', got {sex!r}")
    return sex


# ------------------------------------------------------------------------ mortality

@cache
def _qx() -> dict[str, np.ndarray]:
    rows = [r for r in csv.DictReader(io.StringIO(
        "\n".join(line for line in _text("life_table.csv").splitlines()
                  if not line.startswith("#"))))]
    ages = np.array([float(r["age"]) for r in rows])
    out = {}
    for sex, col in (("M", "qx_male"), ("F", "qx_female")):
        q = np.array([float(r[col]) for r in rows])
        grid = np.arange(0, 101, dtype=float)
        # log-linear between the published ages: mortality grows roughly exponentially
        table = np.exp(np.interp(grid, ages, np.log(q)))
        table[-1] = 1.0
        out[sex] = table
    return out


@cache
def _cause_rates() -> dict[str, dict[str, np.ndarray]]:
    """cause -> sex -> yearly death rate at each whole age 0-100 (deaths per person)."""
    rows = csv.DictReader(io.StringIO("\n".join(
        line for line in _text("cause_death_rates.csv").splitlines() if not line.startswith("#"))))
    out: dict[str, dict[str, np.ndarray]] = {}
    for r in rows:
        by_sex = out.setdefault(r["cause"], {"M": np.zeros(101), "F": np.zeros(101)})
        lo, hi = int(r["age_low"]), min(int(r["age_high"]), 100)
        for sex, col in (("M", "male"), ("F", "female")):
            by_sex[sex][lo:hi + 1] += float(r[col]) / 100_000.0
    return out


def mortality_causes() -> tuple[str, ...]:
    """Causes of death a module may take out of the background life table (sorted)."""
    return tuple(sorted(_cause_rates()))


def cause_death_rate(cause: str, age: int, sex: str) -> float:
    """Published 2021 yearly death rate (deaths per person) of ``cause`` at whole-year
    ``age`` (0-100; 100 stands for 100 and over) for ``sex``: the rate background mortality
    leaves out when a module lists the cause. Raises ValueError for an unknown cause."""
    rates = _cause_rates()
    if cause not in rates:
        raise ValueError(f"unknown cause of death {cause!r}; known: {', '.join(mortality_causes())}")
    return float(rates[cause][_check_sex(sex)][min(max(int(age), 0), 100)])


# The background hazard never falls below this share of the all-cause hazard however many
# causes are removed: a guard against rates that do not fit the table, not a fitted figure.
_MIN_REMAINING_HAZARD = 0.1


@cache
def _qx_excluding(sex: str, excluded: frozenset[str]) -> np.ndarray:
    q = _qx()[sex]
    if not excluded:
        return q
    rates = _cause_rates()
    unknown = sorted(excluded - rates.keys())
    if unknown:
        raise ValueError(f"unknown cause(s) of death {', '.join(unknown)}; known: "
                         f"{', '.join(mortality_causes())}")
    # Constant hazard within each year of age: q = 1 - exp(-m), and removing a cause
    # subtracts its rate from m (Chiang 1968, as NCHS's cause-eliminated life tables do).
    m = -np.log1p(-np.minimum(q, 1.0 - 1e-12))
    removed = sum(rates[c][sex] for c in excluded)
    out = 1.0 - np.exp(-np.maximum(m - removed, _MIN_REMAINING_HAZARD * m))
    out[-1] = 1.0
    return out


def annual_death_probability(age: int, sex: str, excluding: frozenset[str] = frozenset()) -> float:
    """Probability of dying within a year at whole-year ``age`` (US life table 2021), with
    the 2021 death rates of the causes in ``excluding`` (see :func:`mortality_causes`)
    taken out. Raises ValueError for an unknown cause."""
    q = _qx_excluding(_check_sex(sex), frozenset(excluding))
    return float(q[min(max(int(age), 0), 100)])


def life_expectancy(sex: str, excluding: frozenset[str] = frozenset()) -> float:
    """Period life expectancy at birth implied by the table (years), without the causes in
    ``excluding``."""
    q = _qx_excluding(_check_sex(sex), frozenset(excluding))
    alive = np.concatenate([[1.0], np.cumprod(1.0 - q)])
    # deaths spread evenly within each year of age
    return float(np.sum((alive[:-1] + alive[1:]) / 2.0))


# ------------------------------------------------------------------------ growth

def _interp(x: float, xs: list[float], ys: list[float]) -> float:
    """``numpy.interp`` for one point (constant beyond the ends), without building arrays:
    the growth and vital-sign curves are read several times per body update."""
    if x <= xs[0]:
        return float(ys[0])
    if x >= xs[-1]:
        return float(ys[-1])
    i = bisect.bisect_right(xs, x)
    x0, x1 = xs[i - 1], xs[i]
    y0 = ys[i - 1]
    return float(y0 + (ys[i] - y0) * (x - x0) / (x1 - x0))


class Body:
    """The growth, vital-sign and smoking curves of one sex, read once from the data files
    (:func:`body`): each body update of every patient reads them several times, so the
    lookups of the files' nested keys are done here, not per reading."""

    __slots__ = ("_h_ages", "_h_med", "_h_cv", "_adult_h", "_bmi_ages", "_bmi_med", "_bmi_sd",
                 "_bmi_last", "_bands", "_band_med", "_adult_sd", "_bp_child", "_bp_adult",
                 "_hr", "_rr", "_smoke_ages", "_smoke_rate", "_smoke_factor", "_quit")

    def __init__(self, sex: str) -> None:
        b = _json("body.json")
        h = b["height_median_cm"]
        self._h_ages, self._h_med, self._h_cv = h["ages"], h[sex], b["height_cv_child"]
        self._adult_h = tuple(b["adult_height"][sex])
        m = b["bmi_median"]
        self._bmi_ages, self._bmi_med, self._bmi_sd = m["ages"], m[sex], b["bmi_log_sd_child"]
        self._bmi_last = m[sex][-1]
        bands = b["adult_bmi_median"]
        self._bands, self._band_med = bands["bands"], bands[sex]
        self._adult_sd = b["adult_bmi_log_sd"]
        c = b["blood_pressure_child"]
        self._bp_child = (c["sys_at_3"], c["sys_per_year"], c["sd"]["sys"],
                          c["dia_at_3"], c["dia_per_year"], c["sd"]["dia"])
        a = b["blood_pressure_adult"]
        self._bp_adult = (a[sex]["sys"], a["sd"]["sys"], a[sex]["dia"], a["sd"]["dia"])
        hr, rr = b["heart_rate"], b["respiratory_rate"]
        self._hr = (hr["ages"], hr["median"], hr["sd"])
        self._rr = (rr["ages"], rr["median"], rr["sd"])
        beh = _json("behaviour.json")
        s = beh["smoking_start_per_year"]
        self._smoke_ages, self._smoke_rate = s["ages"], s["rate"]
        self._smoke_factor = beh["smoking_start_sex_factor"][sex]
        q = beh["smoking_quit_per_year"]
        self._quit = (q["ages"], q["rate"])

    def height_cm(self, age: float, z: float) -> float:
        """See :func:`height_cm`."""
        mean_a, sd_a = self._adult_h
        adult = mean_a + sd_a * z
        if age >= 20:
            return adult
        child = _interp(min(age, 20.0), self._h_ages, self._h_med) * (1.0 + self._h_cv * z)
        # The child curve is capped at the adult height the person will reach (the CDC and
        # NHANES references differ by a centimetre or two at 20).
        return min(child, adult)

    def bmi_median_sigma(self, age: float) -> tuple[float, float]:
        """The median BMI and the log-SD around it at ``age``."""
        if age < 20:
            return _interp(age, self._bmi_ages, self._bmi_med), self._bmi_sd
        # blend from the 20-year child median into the adult band over the early twenties
        if age < 25:
            w = (age - 20.0) / 5.0
            med = (1 - w) * self._bmi_last + w * self._band_med[0]
            sig = (1 - w) * self._bmi_sd + w * self._adult_sd
            return med, sig
        return self._band_med[bisect.bisect_right(self._bands, age) - 1], self._adult_sd

    def bmi(self, age: float, z: float) -> float:
        """See :func:`bmi`."""
        med, sig = self.bmi_median_sigma(age)
        return med * math.exp(sig * z)

    def bmi_percentile(self, age: float, bmi_value: float) -> float:
        """See :func:`bmi_percentile`."""
        med, sig = self.bmi_median_sigma(age)
        z = math.log(max(bmi_value, 1e-6) / med) / sig
        return 50.0 * (1.0 + math.erf(z / math.sqrt(2.0)))

    def blood_pressure(self, age: float, z_sys: float, z_dia: float) -> tuple[float, float]:
        """See :func:`blood_pressure`."""
        if age < 18:
            sys_3, sys_year, sys_sd, dia_3, dia_year, dia_sd = self._bp_child
            a = max(age, 1.0)
            s = sys_3 + sys_year * (a - 3.0) + sys_sd * z_sys
            d = dia_3 + dia_year * (a - 3.0) + dia_sd * z_dia
        else:
            sys_by_age, sys_sd, dia_by_age, dia_sd = self._bp_adult
            s = _interp(age, _BP_MIDS, sys_by_age) + sys_sd * z_sys
            d = _interp(age, _BP_MIDS, dia_by_age) + dia_sd * z_dia
        s = min(max(s, 70.0), 230.0)
        d = min(max(d, 35.0), min(s - 15.0, 140.0))
        return s, d

    def heart_rate(self, age: float, z: float) -> float:
        ages, median, sd = self._hr
        return max(40.0, _interp(age, ages, median) + sd * z)

    def respiratory_rate(self, age: float, z: float) -> float:
        ages, median, sd = self._rr
        return max(8.0, _interp(age, ages, median) + sd * z)

    def smoking_start_probability(self, age: float) -> float:
        """See :func:`smoking_start_probability`."""
        if age < self._smoke_ages[0]:
            return 0.0
        return _interp(age, self._smoke_ages, self._smoke_rate) * self._smoke_factor

    def smoking_quit_probability(self, age: float) -> float:
        """See :func:`smoking_quit_probability`."""
        ages, rate = self._quit
        return _interp(age, ages, rate)


# The middles of NHANES's adult blood-pressure bands 18-39, 40-59, 60+.
_BP_MIDS = [29.0, 50.0, 70.0]


@cache
def body(sex: str) -> Body:
    """The :class:`Body` curves of ``sex`` ("M" or "F"; ValueError otherwise)."""
    return Body(_check_sex(sex))


def height_cm(age: float, sex: str, z: float) -> float:
    """Height (length under 2) at ``age`` for a person at height z-score ``z``: the CDC/WHO
    median with a 4% coefficient of variation in childhood, never above the person's NHANES
    adult height, which applies from 20. Non-decreasing in age for fixed z."""
    return body(sex).height_cm(age, z)


def bmi(age: float, sex: str, z: float) -> float:
    """BMI (kg/m2) at ``age`` for BMI z-score ``z``: log-normal around the median."""
    return body(sex).bmi(age, z)


def bmi_percentile(age: float, sex: str, bmi_value: float) -> float:
    """Percentile (0-100) of ``bmi_value`` among people of that age and sex."""
    return body(sex).bmi_percentile(age, bmi_value)


def weight_kg(age: float, sex: str, height_z: float, bmi_z: float) -> float:
    h = height_cm(age, sex, height_z) / 100.0
    return bmi(age, sex, bmi_z) * h * h


# ------------------------------------------------------------------------ vital signs

def blood_pressure(age: float, sex: str, z_sys: float, z_dia: float) -> tuple[float, float]:
    """(systolic, diastolic) in mmHg for the given z-scores."""
    return body(sex).blood_pressure(age, z_sys, z_dia)


def heart_rate(age: float, z: float) -> float:
    """Resting heart rate (/min) at ``age`` for z-score ``z`` (the same for both sexes)."""
    return body("M").heart_rate(age, z)


def respiratory_rate(age: float, z: float) -> float:
    """Respiratory rate (/min) at ``age`` for z-score ``z`` (the same for both sexes)."""
    return body("M").respiratory_rate(age, z)


# ------------------------------------------------------------------------ behaviour

def smoking_start_probability(age: float, sex: str) -> float:
    """Yearly probability that a never-smoker starts smoking at ``age``."""
    return body(sex).smoking_start_probability(age)


def smoking_quit_probability(age: float) -> float:
    """Yearly probability that a current smoker quits for good."""
    return body("M").smoking_quit_probability(age)


def alcohol_use_probability(sex: str) -> float:
    return float(_json("behaviour.json")["alcohol_use"][_check_sex(sex)])


def heavy_drinking_probability(sex: str) -> float:
    return float(_json("behaviour.json")["heavy_drinking"][_check_sex(sex)])


# ------------------------------------------------------------------------ schedules

@dataclass(frozen=True, slots=True)
class Vaccine:
    """One vaccine of the schedule: doses at ``ages_months``, plus (for influenza and Td)
    one dose every ``repeat_every_months`` from ``repeat_from_months``."""

    key: str
    cvx: str
    display: str
    ages_months: tuple[float, ...]
    repeat_every_months: float | None = None
    repeat_from_months: float = 0.0
    repeat_until_months: float | None = None


@cache
def immunization_schedule() -> tuple[Vaccine, ...]:
    out = []
    for v in _json("immunizations.json")["vaccines"]:
        out.append(Vaccine(v["key"], v["cvx"], v["display"], tuple(sorted(v["ages_months"])),
                           v.get("repeat_every_months"), float(v.get("repeat_from_months", 0.0)),
                           v.get("repeat_until_months")))
    return tuple(out)


@cache
def _wellness_ages_years() -> np.ndarray:
    w = _json("wellness.json")
    ages = [m / 12.0 for m in w["infant_months"]]
    ages += list(range(w["yearly_from"], w["yearly_until"]))
    for lo, hi, step in w["adult_intervals"]:
        ages += list(range(lo, hi, step))
    return np.array(sorted(set(ages)), dtype=float)


def wellness_visit_ages_days(max_age_years: float) -> np.ndarray:
    """Ages (days since birth, 365.25-day years) of the scheduled wellness visits up to
    ``max_age_years``, sorted."""
    ages = _wellness_ages_years()
    return ages[ages <= max_age_years] * 365.25
