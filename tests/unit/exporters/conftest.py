"""The 200-patient FHIR export that test_fhir.py and test_us_core.py validate, made once
per session: Synthea's module library when ../shared is present, else carecourse's own."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from exporters.fhir import FhirSink, NdjsonSink
from modules.loader import load_library
from simulator.population import RunConfig, run_population
from tests.conftest import SYNTHEA_MODULES


@pytest.fixture(scope="session")
def exported(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fhir")
    modules_dir = SYNTHEA_MODULES if SYNTHEA_MODULES.is_dir() else None
    config = RunConfig(population=200, seed=9, reference_date=dt.date(2024, 6, 30),
                       years_of_history=10, modules_dir=modules_dir, out=out, processes=2)
    load_library(modules_dir)  # fail early with a clear message if the library is broken
    end = config.end
    history = config.years_of_history
    run_population(config, [FhirSink(end=end, years_of_history=history),
                            NdjsonSink(end=end, years_of_history=history, transaction_time="x")],
                   progress=False)
    return out
