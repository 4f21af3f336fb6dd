"""Runs on Dask distributed give the one-process output byte for byte, survive a killed
worker, and resume an interrupted run by computing only the missing partitions."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import signal
from pathlib import Path

import pytest

from exporters.csv import CsvSink
from exporters.fhir import FhirSink, NdjsonSink
from modules.errors import ConfigError
from simulator.cluster import run_on_dask
from simulator.population import RunConfig, run_population
from tests.integration.test_cli import digest, run_cli

N = 2000


def config(out: Path, n: int = N) -> RunConfig:
    return RunConfig(population=n, seed=11, reference_date=dt.date(2024, 6, 30),
                     years_of_history=5, out=out)


def sinks(c: RunConfig) -> list:
    return [CsvSink(years_of_history=c.years_of_history, end=c.end),
            FhirSink(years_of_history=c.years_of_history, end=c.end),
            NdjsonSink(years_of_history=c.years_of_history, end=c.end, transaction_time="t")]


def outputs(folder: Path) -> dict[str, str]:
    return {k: v for k, v in digest(folder).items() if k != "manifest.json"}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("one")
    c = config(out)
    run_population(c, sinks(c), progress=False)
    return outputs(out)


def test_two_workers_give_the_one_process_output_byte_for_byte(one_process, tmp_path):
    c = config(tmp_path / "dask")
    summary = run_on_dask(c, sinks(c), workers=2, partition_size=150, progress=False)
    assert summary.patients == N
    assert outputs(c.out) == one_process
    manifest = json.loads((c.out / "manifest.json").read_text())
    ranges = [(p["first_patient"], p["last_patient"]) for p in manifest["partitions"]]
    assert ranges[0] == (0, 149) and ranges[-1] == (1950, 1999) and len(ranges) == 14
    assert manifest["files"]["csv/patients.csv"]["sha256"] == one_process["csv/patients.csv"]
    assert not (c.out / "parts").exists()


def test_a_killed_worker_loses_nothing_and_duplicates_nothing(one_process, tmp_path):
    c = config(tmp_path / "dask")
    killed: list[int] = []

    def kill_one(client, record) -> None:
        if not killed:
            pids = client.run(os.getpid)
            pid = sorted(pids.values())[0]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    run_on_dask(c, sinks(c), workers=2, partition_size=100, progress=False,
                on_partition=kill_one)
    assert killed
    assert outputs(c.out) == one_process


def test_an_interrupted_run_completes_only_the_missing_partitions(one_process, tmp_path):
    c = config(tmp_path / "dask")
    seen: list[int] = []

    def interrupt(client, record) -> None:
        seen.append(record["partition"])
        if len(seen) == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_on_dask(c, sinks(c), workers=2, partition_size=100, progress=False,
                    on_partition=interrupt)
    parts = c.out / "parts"
    finished = sorted(p.name for p in parts.glob("part-*"))
    assert len(finished) >= 5 and not (c.out / "csv").exists()
    # Damage one finished shard: the resume must notice it and compute it again.
    victim = parts / finished[0] / "csv" / "patients.csv"
    victim.write_bytes(victim.read_bytes()[:-10])

    # Other settings must not be mixed into the interrupted run.
    other = dataclasses.replace(c, seed=12)
    with pytest.raises(ConfigError, match="interrupted run with other settings"):
        run_on_dask(other, sinks(other), workers=1, progress=False)

    computed: list[int] = []
    run_on_dask(c, sinks(c), workers=2, partition_size=100, progress=False,
                on_partition=lambda client, rec: computed.append(rec["partition"]))
    assert len(computed) == 20 - len(finished) + 1
    assert int(finished[0].split("-")[1]) in computed
    assert outputs(c.out) == one_process


def test_cli_on_an_existing_scheduler_and_bad_combinations(tmp_path, capsys):
    from distributed import LocalCluster

    args = ["run", "-p", 120, "-s", 3, "--reference-date", "2024-06-30", "--no-progress"]
    assert run_cli(*args, "--out", tmp_path / "one") == 0
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as cluster:
        assert run_cli(*args, "--out", tmp_path / "sched", "--scheduler",
                       cluster.scheduler_address, "--partition-size", 50) == 0
    assert "Dask scheduler" in capsys.readouterr().out
    assert outputs(tmp_path / "sched") == outputs(tmp_path / "one")
    assert run_cli(*args, "--out", tmp_path / "x", "--workers", 2, "--processes", 2) == 2
    assert "--processes is for runs without Dask" in capsys.readouterr().err
    assert run_cli(*args, "--out", tmp_path / "y", "--workers", 2, "--scheduler", "tcp://a:1") == 2


def test_an_interrupted_cli_run_says_where_its_finished_partitions_are(tmp_path, capsys,
                                                                       monkeypatch):
    import simulator.cluster

    finished: list[int] = []

    def interrupted(config, sinks, **_kwargs):
        (config.out / "parts").mkdir(parents=True, exist_ok=True)
        for k in finished:
            (config.out / "parts" / f"part-{k:06d}").mkdir()
        raise KeyboardInterrupt

    monkeypatch.setattr(simulator.cluster, "run_on_dask", interrupted)
    out = tmp_path / "out"
    assert run_cli("run", "-p", 40, "--out", out, "--workers", 2, "--no-progress") == 130
    assert "partition" not in capsys.readouterr().err  # none had finished
    finished[:] = [0, 1]
    assert run_cli("run", "-p", 40, "--out", out, "--workers", 2, "--no-progress") == 130
    err = capsys.readouterr().err
    assert f"the 2 partition(s) that finished are kept in {out / 'parts'}" in err
    assert "rerun the same command" in err
