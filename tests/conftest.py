"""Shared fixtures: Synthea's reference fixtures (skipped when ../shared is absent) and a
small harness that runs one module for one hand-made patient, as Synthea's engine tests do."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import simpy

from modules.loader import ModuleLibrary, validate_library
from simulator.engine import ModuleRun, Program, compile_module, run_module
from simulator.person import Person, WellnessVisit, date_of, day_of
from simulator.record import Code, Encounter

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "synthea"
GENERIC = SHARED / "test-fixtures" / "generic"
SYNTHEA_MODULES = SHARED / "modules"

#: T0 of Synthea's state tests: a fixed clock value (days since 1970) so tests are stable.
T0 = 20000.0
YEAR = 365.0


def need_shared() -> None:
    if not SHARED.is_dir():
        pytest.skip("../shared/synthea is not present (reference fixtures live beside the repo)")


@pytest.fixture(scope="session")
def generic_library() -> ModuleLibrary:
    need_shared()
    lib, _errors, _warnings = validate_library(GENERIC)
    return lib


@pytest.fixture(scope="session")
def generic_programs(generic_library: ModuleLibrary) -> dict[str, Program]:
    programs = {}
    for key, m in generic_library.modules.items():
        try:
            programs[key] = compile_module(m, generic_library)
        except Exception:  # fixtures that are broken on purpose are tested on their own
            continue
    return programs


@dataclass
class Harness:
    """One patient in its own SimPy Environment, running modules by hand."""

    person: Person
    env: simpy.Environment
    programs: dict[str, Program]

    def start(self, key: str) -> ModuleRun:
        run = ModuleRun(self.person, self.programs[key], self.programs, None, keep_history=True)
        self.env.process(run_module(run))
        return run

    def run_until(self, t: float) -> None:
        """Process every event due up to and including clock time ``t``."""
        self.env.run(until=t + 1e-9)

    def simulate_wellness(self, t: float) -> Encounter:
        """Open a scheduler-owned wellness encounter at ``t`` and wake modules waiting
        for one (Synthea's tests call this simulateWellness)."""
        self.run_until(t - 1e-6) if t > self.env.now else None
        if self.env.now < t:
            self.env.run(until=t)
        p = self.person
        enc = Encounter("wellness", t, (Code("SNOMED-CT", "162673000", "General examination"),),
                        "wellness")
        enc.scheduled = True
        p.record.encounters.append(enc)
        p.wellness_visit = WellnessVisit(enc, t)
        waiting, p.next_wellness = p.next_wellness, self.env.event()
        waiting.succeed()
        self.env.run(until=t + 1e-9)
        p.wellness_visit.open = False
        return enc


def make_harness(programs: dict[str, Program], *, age_years: float = 35, gender: str = "F",
                 at: float = T0, seed: int = 0) -> Harness:
    # Born exactly `age_years` calendar years before `at` (Synthea's tests: "35 y old").
    whole = int(age_years)
    d = date_of(at)
    try:
        b = d.replace(year=d.year - whole)
    except ValueError:  # 29 February
        b = d.replace(year=d.year - whole, day=28)
    birth = day_of(b) - (age_years - whole) * 365.25
    person = Person(0, seed + 1, np.random.default_rng(seed), birth, gender)
    env = simpy.Environment(initial_time=at)
    person.env = env
    person.wellness_visit = None
    person.next_wellness = env.event()
    return Harness(person, env, programs)


@pytest.fixture
def harness(generic_programs):
    def factory(**kw) -> Harness:
        return make_harness(generic_programs, **kw)
    return factory


def run_cli(*args: object) -> int:
    """Run the ``carecourse`` command line in-process with these arguments; argparse's own
    usage errors come back as their exit code."""
    from simulator.cli import main

    try:
        return main([str(a) for a in args])
    except SystemExit as exc:
        return int(exc.code or 0)
