"""Shared fixtures of the library tests: one population of the whole embedded library,
simulated once per test session for every module check (simulating a population per module
would multiply the suite's time)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import pytest

from simulator.person import Person
from simulator.population import RunConfig, _prepare, simulate_patient

REF = dt.date(2025, 1, 1)
END = (REF - dt.date(1970, 1, 1)).days
#: Ages at the end date: the checks select the lives they need from 15-90 (600 patients give
#: about 400 aged 40-90 and 480 aged 15-75).
AGES = (15, 90)
N = 600


@pytest.fixture(scope="session")
def library_population() -> list[Person]:
    """Every top-level module of the embedded library, N patients aged 15-90 at 2025-01-01."""
    config = RunConfig(population=N, seed=7, age_range=AGES, reference_date=REF)
    programs, top = _prepare(config)
    return [simulate_patient(i, config, programs, top) for i in range(N)]


def aged(population: Iterable[Person], low: int, high: int) -> list[Person]:
    """The patients who would be ``low``-``high`` years old at the end date, alive or not
    (ages are drawn uniformly in [low, high + 1), so this is a population of that range)."""
    return [p for p in population if low <= (END - p.birth) / 365.25 < high + 1]
