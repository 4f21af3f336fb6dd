"""Whole lives through Synthea's whole library: invariants every patient must satisfy, and
reproducibility of a patient from its seed alone."""

from __future__ import annotations

import datetime as dt

import pytest
import simpy
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.population import (
    PatientEnvironment,
    RunConfig,
    _prepare,
    patient_seed,
    simulate_patient,
)
from tests.conftest import SYNTHEA_MODULES, need_shared

REF = dt.date(2024, 6, 30)


@pytest.fixture(scope="module")
def synthea():
    need_shared()
    config = RunConfig(population=60, seed=21, reference_date=REF, modules_dir=SYNTHEA_MODULES)
    return config, *_prepare(config)


def all_entries(p):
    rec = p.record
    for kind in rec.__slots__:
        yield from getattr(rec, kind)


def test_lives_are_consistent(synthea):
    config, programs, top = synthea
    for i in range(config.population):
        p = simulate_patient(i, config, programs, top)
        end = p.end
        assert end == (min(config.end, p.death) if p.death is not None else config.end)
        for e in all_entries(p):
            # the dead stay dead: nothing starts after death or after the end date
            assert p.birth - 1e-9 <= e.start <= end + 1e-9, (e, p.death)
            if e.stop is not None:
                assert e.stop >= e.start - 1e-9, e
        for enc in p.record.encounters:
            assert enc.ended and enc.stop is not None
        active = {c for lst in p.active["conditions"].values() for c in lst}
        assert all(c.stop is None for c in active)


def test_same_index_and_seed_give_the_same_life_in_any_order(synthea):
    config, programs, top = synthea

    def fingerprint(i):
        p = simulate_patient(i, config, programs, top)
        return [(type(e).__name__, e.state, round(e.start, 9), e.codes[:1]) for e in all_entries(p)]
    first = [fingerprint(i) for i in (3, 4, 5)]
    again = [fingerprint(i) for i in (5, 4, 3)][::-1]
    assert first == again
    assert first[0] != first[1]


@settings(max_examples=50, deadline=None)
@given(run_seed=st.integers(0, 2**63), index=st.integers(0, 10**9))
def test_patient_seeds_are_stable_and_distinct(run_seed, index):
    s = patient_seed(run_seed, index)
    assert s == patient_seed(run_seed, index)
    assert s != patient_seed(run_seed, index + 1)
    assert 0 <= s < 2**128


def test_a_released_patient_record_is_freed_without_the_garbage_collector(synthea):
    # _simulate_range releases each patient once written: its record must go at once, by
    # reference counting, not wait for a collection (that took twice as long).
    import gc
    import weakref

    class Marker:
        pass

    config, programs, top = synthea
    p = simulate_patient(3, config, programs, top)
    marker = Marker()
    p.record.encounters.append(marker)
    alive = weakref.ref(marker)
    del marker
    was = gc.isenabled()
    gc.disable()
    try:
        p.release()
        assert alive() is None
        with pytest.raises(AttributeError):
            p.record  # noqa: B018 - released: reading it is an error, not an empty record
    finally:
        if was:
            gc.enable()


def test_a_worker_skips_the_checks_only_for_the_files_its_parent_checked(tmp_path):
    # --processes N: the parent checks the library (check_library) and hands its digest to
    # the pool's workers, which load files of that digest without the checks.
    import json

    from modules.errors import ModuleValidationError
    from simulator.population import _prepare_checked_elsewhere, check_library, library_digest

    lib = tmp_path / "library"
    lib.mkdir()
    (lib / "visit.json").write_text(json.dumps({"name": "visit", "states": {
        "Initial": {"type": "Initial", "direct_transition": "Terminal"},
        "Terminal": {"type": "Terminal"}}}))
    config = RunConfig(population=2, seed=1, reference_date=REF, modules_dir=lib)
    digest = check_library(config)
    assert digest == library_digest(config)
    # A module that fails the checks, saved after the parent's check: the worker's files
    # no longer have the checked digest, so it checks them and reports the problem.
    (lib / "odd.json").write_text(json.dumps({"name": "odd", "states": {
        "Initial": {"type": "Initial", "direct_transition": "Gone"}}}))
    with pytest.raises(ModuleValidationError, match="missing state 'Gone'"):
        _prepare_checked_elsewhere(config, digest)
    # Files of the checked digest load without the checks (here they would fail them).
    programs, top = _prepare_checked_elsewhere(config, library_digest(config))
    assert set(top) == {"odd", "visit"}


def _trace(env: simpy.Environment, until: simpy.Event) -> list:
    """What a few processes see, run until ``until``: the order, times and values."""
    seen: list = []

    def proc(name: str, delays: list[float]):
        for d in delays:
            v = yield env.timeout(d, value=(name, d))
            seen.append((env.now, v))
        return name

    done = [env.process(proc("a", [1, 0, 2, 2])), env.process(proc("b", [1, 1, 0, 5]))]
    env.process(proc("c", [3]))
    until.callbacks.append(lambda _e: seen.append(("until", env.now)))
    result = env.run(until=until)
    return [seen, result, env.now, [p.value if p.triggered else None for p in done]]


def test_patient_environment_steps_as_simpy_does():
    # The patient's environment runs its own event loop and makes timeouts itself; the
    # order of events, their times and values and where the run stops must be SimPy's.
    def both(stop_at: float):
        out = []
        for cls in (simpy.Environment, PatientEnvironment):
            env = cls(initial_time=10.0)
            out.append(_trace(env, env.timeout(stop_at, value="end")))
        return out
    for stop_at in (2.0, 3.0, 4.5, 100.0):
        plain, ours = both(stop_at)
        assert ours == plain
    env = PatientEnvironment()
    with pytest.raises(ValueError, match="Negative delay"):
        env.timeout(-1)
    with pytest.raises(RuntimeError, match="No scheduled events left"):
        env.run(until=env.event())
