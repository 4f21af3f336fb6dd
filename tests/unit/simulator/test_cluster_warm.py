"""A local cluster's workers load the run's library as they start (simulator.cluster's
dask_setup preload), and the first partition task on such a worker uses it."""

from __future__ import annotations

import base64
import datetime as dt
import gc
import json
import os
import pickle
import subprocess
import sys

import pytest

from exporters.csv import CsvSink
from modules.errors import ConfigError, ModuleValidationError
from simulator import cluster, population
from simulator.population import RunConfig


def _config(tmp_path, modules_dir):
    return RunConfig(population=3, seed=5, out=tmp_path / "out", modules_dir=modules_dir,
                     reference_date=dt.date(2020, 1, 1))


def _library(tmp_path):
    lib = tmp_path / "library"
    lib.mkdir()
    (lib / "visit.json").write_text(json.dumps({"name": "visit", "states": {
        "Initial": {"type": "Initial", "direct_transition": "Checkup"},
        "Checkup": {"type": "Encounter", "encounter_class": "ambulatory",
                    "codes": [{"system": "SNOMED-CT", "code": "185349003",
                               "display": "Encounter for check up"}],
                    "direct_transition": "End"},
        "End": {"type": "EncounterEnd", "direct_transition": "Terminal"},
        "Terminal": {"type": "Terminal"}}}))
    return lib


@pytest.fixture
def clean_cache():
    cluster._CACHE.clear()
    yield cluster._CACHE
    cluster._CACHE.clear()
    gc.unfreeze()  # a worker leaves the library it keeps out of the collector's passes


def _hand_over(monkeypatch, config) -> list:
    """Set the environment a local cluster gives its workers; return the exit handlers the
    preload registers (recorded, not registered: this process is not a worker)."""
    monkeypatch.setenv(cluster._WARM_ENV, base64.b64encode(pickle.dumps(config)).decode())
    handlers: list = []
    monkeypatch.setattr(cluster.atexit, "register", handlers.append)
    return handlers


_WORKER = object()  # dask_setup only passes the worker along


def test_a_worker_loads_the_library_as_it_starts_and_its_first_task_uses_it(
        tmp_path, monkeypatch, clean_cache):
    config = _config(tmp_path, _library(tmp_path))
    handlers = _hand_over(monkeypatch, config)
    cluster.dask_setup(_WORKER)
    assert handlers == [cluster._exit_without_teardown]
    digest, warm = clean_cache[cluster._WARM]
    programs, top = warm
    assert top == ["visit"] and "visit" in programs
    assert digest == population.library_digest(config)

    parts = tmp_path / "parts"
    parts.mkdir()
    record = cluster._partition_task(0, 0, 3, config, [CsvSink()], str(parts), "fp", digest)
    assert record["patients"] == 3
    assert (parts / "part-000000" / "csv" / "encounters.csv").is_file()
    # The task kept the warm library under the run's fingerprint: no second load, and
    # out of the collector's passes.
    assert clean_cache == {"fp": warm}
    assert gc.get_freeze_count() > 0


def test_a_library_edited_after_the_worker_loaded_it_is_loaded_again_with_the_checks(
        tmp_path, monkeypatch, clean_cache):
    # The warm load skips the module checks: it serves only files the driver checked.
    lib = _library(tmp_path)
    config = _config(tmp_path, lib)
    _hand_over(monkeypatch, config)
    cluster.dask_setup(_WORKER)
    (lib / "odd.json").write_text(json.dumps({"name": "odd", "states": {
        "Initial": {"type": "Initial", "direct_transition": "Nowhere"}}}))
    parts = tmp_path / "parts"
    parts.mkdir()
    with pytest.raises(ModuleValidationError, match=r"odd\.json.*missing state 'Nowhere'"):
        cluster._partition_task(0, 0, 3, config, [CsvSink()], str(parts), "fp",
                                population.library_digest(config))
    assert not list(parts.iterdir())


def test_a_library_that_fails_to_load_is_left_to_the_first_task_to_report(
        tmp_path, monkeypatch, clean_cache):
    lib = _library(tmp_path)
    (lib / "broken.json").write_text("{ not json")
    config = _config(tmp_path, lib)
    _hand_over(monkeypatch, config)
    cluster.dask_setup(_WORKER)  # no exception: the worker starts
    assert cluster._WARM not in clean_cache
    parts = tmp_path / "parts"
    parts.mkdir()
    with pytest.raises(Exception, match="broken.json"):
        cluster._partition_task(0, 0, 3, config, [CsvSink()], str(parts), "fp",
                                population.library_digest(config))
    assert not list(parts.iterdir())  # no half-written partition


def test_without_a_handed_over_config_the_preload_does_nothing(monkeypatch, clean_cache):
    monkeypatch.delenv(cluster._WARM_ENV, raising=False)
    handlers: list = []
    monkeypatch.setattr(cluster.atexit, "register", handlers.append)
    cluster.dask_setup(_WORKER)
    assert clean_cache == {} and handlers == []


def test_a_library_that_changes_while_the_driver_checks_it_stops_the_run(
        tmp_path, monkeypatch, clean_cache):
    # Workers trust the digest the driver checked: files saved during the check would
    # leave it unknown which files were checked, so the run stops before it starts.
    config = _config(tmp_path, _library(tmp_path))
    digests = iter(["before", "after"])
    monkeypatch.setattr(population, "library_digest", lambda _config: next(digests))
    with pytest.raises(ConfigError, match="changed while the run checked them"):
        cluster.run_on_dask(config, [CsvSink()], scheduler="tcp://127.0.0.1:9", progress=False)
    assert not (config.out / cluster.PARTS).exists()


def test_a_worker_forked_from_the_driver_keeps_the_library_lent_to_it(
        tmp_path, monkeypatch, clean_cache):
    config = _config(tmp_path, _library(tmp_path))
    digest, prepared = population.checked_library(config)
    cluster._lend(digest, prepared)
    handlers = _hand_over(monkeypatch, config)
    monkeypatch.setattr(cluster, "_prepare", _no_second_load)
    cluster.dask_setup(_WORKER)  # as in the forked worker: the lent library is there
    assert clean_cache[cluster._WARM][1] is prepared
    assert handlers == [cluster._exit_without_teardown]
    cluster._take_back()  # the driver, once the workers are forked
    assert cluster._WARM not in clean_cache


def _no_second_load(*_args, **_kwargs):
    raise AssertionError("the worker loaded the library again")


def test_how_workers_start_can_be_chosen(monkeypatch):
    import dask

    monkeypatch.delitem(sys.modules, "torch", raising=False)  # only asked, nothing forked
    monkeypatch.setattr(cluster.sys, "platform", "linux")
    monkeypatch.delenv(cluster.START_ENV, raising=False)
    assert cluster._fork_workers()
    monkeypatch.setenv(cluster.START_ENV, "spawn")
    assert not cluster._fork_workers()
    monkeypatch.setenv(cluster.START_ENV, "sideways")
    with pytest.raises(ConfigError, match="CARECOURSE_WORKER_START='sideways': say fork"):
        cluster._fork_workers()
    monkeypatch.setenv(cluster.START_ENV, "fork")
    with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}):
        assert not cluster._fork_workers()  # the user's own Dask setting stands
    monkeypatch.setitem(sys.modules, "torch", object())
    assert not cluster._fork_workers()
    monkeypatch.delitem(sys.modules, "torch")
    monkeypatch.setattr(cluster.sys, "platform", "darwin")
    assert not cluster._fork_workers()


# Run in a fresh interpreter, so that nothing this test process holds (torch's threads, say,
# from other test files) is forked with the workers. Two runs in one process: the second
# forks from a driver whose Dask threads of the first run are still there.
_FORK_SCRIPT = """
import datetime as dt, json, sys, types
from pathlib import Path
from exporters.csv import CsvSink
from simulator import cluster
from simulator.population import RunConfig

def main():
    mode, lib, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    sys.modules["carecourse_probe"] = types.ModuleType("carecourse_probe")
    if mode == "torch":
        sys.modules["torch"] = types.ModuleType("torch")  # as after learned modules load it
    else:
        def no_second_load(*_args, **_kwargs):
            raise AssertionError("a forked worker loaded the library again")
        cluster._prepare = no_second_load  # what a forked worker would call to load it

    def probe():
        from distributed import utils  # work for Dask's offload pool must get done
        return ["carecourse_probe" in sys.modules,
                utils._offload_executor.submit(lambda: 1).result(timeout=20)]

    seen = []
    for run in range(2 if mode == "fork" else 1):
        config = RunConfig(population=3, seed=5, out=out / str(run), modules_dir=lib,
                           reference_date=dt.date(2020, 1, 1))
        summary = cluster.run_on_dask(
            config, [CsvSink()], workers=1, partition_size=3, progress=False,
            on_partition=lambda client, _rec: seen.extend(client.run(probe).values()))
        assert summary.patients == 3 and cluster._WARM not in cluster._CACHE
    print(json.dumps(seen))

if __name__ == "__main__":
    main()
"""


@pytest.mark.parametrize("mode, forked", [("fork", True), ("torch", False), ("spawn", False)])
def test_a_local_cluster_forks_its_workers_with_the_checked_library(tmp_path, mode, forked):
    # Forked workers start with Dask and the library the driver checked in memory; a driver
    # that has loaded torch, or CARECOURSE_WORKER_START=spawn, has them spawned instead.
    if not sys.platform.startswith("linux"):
        pytest.skip("workers are forked on Linux only")
    script = tmp_path / "fork_run.py"
    script.write_text(_FORK_SCRIPT)
    env = {**os.environ, cluster.START_ENV: "spawn" if mode == "spawn" else "fork"}
    done = subprocess.run([sys.executable, str(script), mode, str(_library(tmp_path)),
                           str(tmp_path / "out")], capture_output=True, text=True, env=env,
                          timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == \
        [[forked, 1]] * (2 if mode == "fork" else 1)
