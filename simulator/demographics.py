"""Who a patient is: sex, race and ethnicity, name, address, income, education,
socioeconomic category, language and marital status, drawn from US census facts
(``simulator/data/people.json`` and ``states.csv``, with their sources).

Education and income are drawn through one latent "advantage" score (a Gaussian copula,
correlation 0.5), so that they go together as they do in the ACS. The socioeconomic
category follows Synthea's idea of a score from income and education split in three: the
mean of the two percentiles, below 1/3 Low, below 2/3 Middle, else High.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from functools import cache
from importlib import resources

import numpy as np

from simulator.facts import _json

__all__ = ["Demographics", "US_STATES", "normalize_state", "sample_demographics"]

_EDUCATION = ("less_than_hs", "hs_degree", "some_college", "bs_degree")


@dataclass(frozen=True, slots=True)
class Demographics:
    gender: str
    race: str
    ethnicity: str
    first_name: str
    last_name: str
    prefix: str
    state: str
    state_abbr: str
    city: str
    county: str
    zip: str
    address: str
    lat: float
    lon: float
    income: int
    education: str
    socioeconomic_category: str
    sei_score: float
    marital_status: str
    first_language: str
    birthplace: str
    ssn: str
    phone: str


@dataclass(frozen=True, slots=True)
class _State:
    name: str
    abbr: str
    population: int
    city: str
    county: str
    zip: str
    lat: float
    lon: float


@cache
def _states() -> tuple[_State, ...]:
    text = (resources.files("simulator.data") / "states.csv").read_text(encoding="utf-8")
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    return tuple(_State(r["state"], r["abbr"], int(r["population"]), r["city"], r["county"],
                        r["zip"], float(r["lat"]), float(r["lon"]))
                 for r in csv.DictReader(io.StringIO(body)))


@cache
def _state_index() -> dict[str, _State]:
    out = {}
    for s in _states():
        out[s.name.lower()] = s
        out[s.abbr.lower()] = s
    return out


@cache
def _state_cdf() -> np.ndarray:
    pop = np.array([s.population for s in _states()], dtype=float)
    return np.cumsum(pop) / pop.sum()


US_STATES: tuple[str, ...] = tuple(s.name for s in _states())


def normalize_state(name: str) -> str:
    """The full name of a state given by name or two-letter code (any case)."""
    s = _state_index().get(name.strip().lower())
    if s is None:
        raise ValueError(f"unknown US state {name!r}; use one of: {', '.join(US_STATES)}")
    return s.name


def _choice(u: float, weights: dict[str, float]) -> str:
    total = sum(weights.values())
    acc = 0.0
    for k, w in weights.items():
        acc += w / total
        if u < acc:
            return k
    return next(reversed(weights))


def _phi(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def _income(p: float, brackets: list[list[float]], u: float) -> int:
    total = sum(b[2] for b in brackets)
    acc = 0.0
    for lo, hi, w in brackets:
        share = w / total
        if p < acc + share:
            return int(lo + (hi - lo) * u)
        acc += share
    lo, hi, _ = brackets[-1]
    return int(lo + (hi - lo) * u)


def _marital(age: float, u: float) -> str:
    # Shares by age (ACS 2022 S1201, rounded): never married, married, divorced, widowed.
    if age < 15:
        return ""
    if age < 25:
        shares = {"S": 0.88, "M": 0.11, "D": 0.01, "W": 0.0}
    elif age < 35:
        shares = {"S": 0.48, "M": 0.46, "D": 0.06, "W": 0.0}
    elif age < 65:
        shares = {"S": 0.20, "M": 0.62, "D": 0.15, "W": 0.03}
    else:
        shares = {"S": 0.07, "M": 0.55, "D": 0.14, "W": 0.24}
    return _choice(u, shares)


def sample_demographics(rng: np.random.Generator, *, age_years: float, gender: str | None = None,
                        state: str | None = None) -> Demographics:
    """Draw a person's demographics. ``gender`` (M/F) and ``state`` (name or code) fix
    those; an unknown value raises ValueError naming it."""
    people = _json("people.json")
    if gender is not None and gender not in ("M", "F"):
        raise ValueError(f"unknown gender {gender!r}; use M or F")
    u = rng.random(16)
    z = rng.standard_normal(2)
    if gender is None:
        ratio = people["males_per_female_at_birth"]
        gender = "M" if u[0] < ratio / (1.0 + ratio) else "F"
    st = _state_index()[normalize_state(state).lower()] if state is not None else \
        _states()[int(np.searchsorted(_state_cdf(), u[1], side="right"))]
    race = _choice(u[2], people["race"])
    ethnicity = "hispanic" if u[3] < people["hispanic"] else "nonhispanic"
    first = people["first_names"][gender]
    first_name = first[int(u[4] * len(first))]
    last_name = people["surnames"][int(u[5] * len(people["surnames"]))]
    # Education and income from one latent advantage with correlation 0.5.
    edu_z = z[0]
    inc_z = 0.5 * z[0] + math.sqrt(0.75) * z[1]
    edu_p, inc_p = _phi(edu_z), _phi(inc_z)
    edu = people["education"]
    acc = 0.0
    education = _EDUCATION[-1]
    for k in _EDUCATION:
        acc += edu[k]
        if edu_p < acc:
            education = k
            break
    income = _income(inc_p, people["income_brackets"], u[6])
    sei = (edu_p + inc_p) / 2.0
    ses = "Low" if sei < 1 / 3 else ("Middle" if sei < 2 / 3 else "High")
    language = _choice(u[7], people["language"])
    if ethnicity == "hispanic" and language == "english" and u[8] < 0.5:
        language = "spanish"  # most Spanish speakers at home are Hispanic (ACS S1601)
    streets = people["streets"]
    address = f"{1 + int(u[9] * 9899)} {streets[int(u[10] * len(streets))]}"
    ssn = f"999-{10 + int(u[11] * 89):02d}-{1000 + int(u[12] * 8999):04d}"
    phone = f"555-{100 + int(u[13] * 899):03d}-{1000 + int(u[14] * 8999):04d}"
    return Demographics(
        gender=gender, race=race, ethnicity=ethnicity, first_name=first_name,
        last_name=last_name, prefix="", state=st.name, state_abbr=st.abbr, city=st.city,
        county=st.county, zip=st.zip, address=address,
        lat=round(st.lat + (u[15] - 0.5) * 0.1, 5), lon=round(st.lon + (u[9] - 0.5) * 0.1, 5),
        income=income, education=education, socioeconomic_category=ses, sei_score=round(sei, 4),
        marital_status=_marital(age_years, u[8]), first_language=language,
        birthplace=f"{st.city}, {st.abbr}", ssn=ssn, phone=phone,
    )
