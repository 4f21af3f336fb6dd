"""Run a population on Dask distributed: ``carecourse run --workers N`` (a local cluster) or
``--scheduler ADDRESS`` (an existing one, e.g. started by dask-jobqueue on SLURM or by
dask-kubernetes).

The population is split into partitions of consecutive patient indices; their size is an
option, never derived from the number of workers, so a rerun sees the same partitions.
Each partition is one Dask task that simulates its patients into
``<out>/parts/.part-NNNNNN.<random>.tmp/`` and renames that folder to
``<out>/parts/part-NNNNNN/`` only when every shard in it is complete, with a
``_partition.json`` that records the patient range, the run seed, the counts and each
shard's SHA-256. A task that fails is retried by Dask; a task that ran on a worker that
died is rescheduled; a second execution of a finished partition finds the folder and
keeps the first. So a shard is either whole or absent, and no patient appears twice.

``<out>/parts/manifest.json`` gathers the partition records as they finish (rewritten every
two seconds at most, and when the run stops; each partition also keeps its own record, which
is what a resume reads). Rerunning an
interrupted run (same command, same ``--out``) checks each finished shard against its
checksums and computes only the missing partitions. When all are there, the sinks join the
shards in partition order exactly as ``--processes`` does, so the output is byte for byte
the same as a one-process run; ``<out>/manifest.json`` then lists each partition (patient
range, seeds, counts) and each output file with its size and SHA-256.
"""

from __future__ import annotations

import atexit
import base64
import gc
import hashlib
import logging
import multiprocessing
import os
import pickle
import shutil
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson

from modules.errors import ConfigError, OutputError, SimulationError
from modules.extensions import sha256_file
from simulator.population import (
    RunConfig,
    RunSummary,
    _check_out,
    _prepare,
    _simulate_range,
    checked_library,
    library_digest,
)

__all__ = ["run_on_dask", "plan_partitions", "default_partition_size"]

PARTS = "parts"
MANIFEST = "manifest.json"
#: The partitions' manifest is rewritten at most this often while a run goes on (and when
#: it stops): rewriting it after every partition made the driver's work grow with the
#: square of the number of partitions, on cores the workers need.
_MANIFEST_EVERY_S = 2.0
RECORD = "_partition.json"

_CACHE: dict[str, Any] = {}
#: The environment variable by which a local cluster hands its workers the run's
#: configuration, so that each loads the library while the cluster starts (:func:`dask_setup`).
_WARM_ENV = "CARECOURSE_WORKER_CONFIG"
#: The _CACHE key of a library a worker loaded as it started, before it knew the run's
#: fingerprint.
_WARM = "warm"
#: The _CACHE key that says the driver lent its library to workers forked from it.
_LENT = "lent"
#: The environment variable that says how a local cluster starts its workers: fork (the
#: default, where :func:`_fork_workers` allows it) or spawn.
START_ENV = "CARECOURSE_WORKER_START"

#: Dask settings for simulation workers (documented in the README for --scheduler users).
QUIET_WORKERS = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.tick.limit": "30s",
    "distributed.admin.system-monitor.interval": "2s",
}


def default_partition_size(population: int) -> int:
    """Patients per partition when the user does not say: about a hundredth of the
    population, between 10 and 100. It depends on the population only (never on the
    workers), so a rerun of the same command sees the same partitions. Small partitions
    keep the end of a run short, when the last partitions finish one by one while other
    workers have nothing left to do; 100 keeps the task count of large runs modest."""
    return max(10, min(100, -(-population // 100)))


def plan_partitions(population: int, size: int) -> list[tuple[int, int, int]]:
    """(partition number, first index, stop index) for every partition."""
    return [(k, a, min(population, a + size)) for k, a in enumerate(range(0, population, size))]


def _files(folder: Path) -> dict[str, dict[str, Any]]:
    return {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != RECORD}


def fingerprint(config: RunConfig, sinks: list[Any], size: int, library: str | None = None
                ) -> str:
    """What decides the output: the run options, the sinks and their options, the
    partition size and the module library's content (``library``: its digest, when the
    caller has it already)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        ours = version("carecourse")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        ours = "source"
    fields = {
        "version": ours, "population": config.population, "seed": config.seed,
        "age_range": list(config.age_range), "gender": config.gender, "state": config.state,
        "reference_date": str(config.reference_date), "end_date": str(config.end_date),
        "years_of_history": config.years_of_history, "modules": list(config.modules),
        "lenient": config.lenient, "partition_size": size,
        "learned_fallback": config.learned_fallback, "extensions": list(config.extensions),
        "library": library if library is not None else library_digest(config),
        "sinks": [[s.name, sorted((k, repr(v)) for k, v in vars(s).items())] for s in sinks],
    }
    return hashlib.sha256(orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _summary_dict(s: RunSummary) -> dict[str, Any]:
    return {"patients": s.patients, "alive": s.alive, "dead": s.dead, "age_sum": float(s.age_sum),
            "conditions": dict(s.conditions)}


def _summary(d: dict[str, Any]) -> RunSummary:
    return RunSummary(patients=d["patients"], alive=d["alive"], dead=d["dead"],
                      age_sum=d["age_sum"], conditions=Counter(d["conditions"]))


def _partition_task(k: int, start: int, stop: int, config: RunConfig, sinks: list[Any],
                    parts: str, fp: str, library: str) -> dict[str, Any]:
    """One partition, on a Dask worker: simulate into a temporary folder, checksum, and
    rename into place. Idempotent: a partition that is already there is kept as it is.
    ``library`` is the digest of the module library the driver checked."""
    folder = Path(parts)
    final = folder / f"part-{k:06d}"
    if (final / RECORD).is_file():
        return orjson.loads((final / RECORD).read_bytes())
    if fp not in _CACHE:
        # A worker of a local cluster has loaded the library as it started (dask_setup),
        # for this run (the cluster was started for it and no other), without the checks:
        # it serves if its files are those the driver checked, else they changed since
        # and are loaded again, checked.
        # The library kept is left out of the collector's passes (population._frozen);
        # one that is dropped is let back in first.
        warm = _CACHE.pop(_WARM, None)
        gc.unfreeze()
        _CACHE.clear()
        _CACHE[fp] = warm[1] if warm is not None and warm[0] == library else _prepare(config)
        del warm
        gc.freeze()
    programs, top = _CACHE[fp]
    tmp = folder / f".part-{k:06d}.{uuid.uuid4().hex}.tmp"
    try:
        summary = _simulate_range(start, stop, tmp, sinks, config, programs, top, None)
        record = {"partition": k, "first_patient": start, "last_patient": stop - 1,
                  "patients": stop - start, "run_seed": config.seed,
                  "seeds": "patient i has seed simulator.population.patient_seed(run_seed, i)",
                  "files": _files(tmp), "summary": _summary_dict(summary)}
        (tmp / RECORD).write_bytes(orjson.dumps(record, option=orjson.OPT_INDENT_2))
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / RECORD).is_file():
                raise
            # Another execution of this partition finished first: keep its shards.
            shutil.rmtree(tmp, ignore_errors=True)
            return orjson.loads((final / RECORD).read_bytes())
        return record
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    os.replace(tmp, path)


def _finished(parts: Path, k: int) -> dict[str, Any] | None:
    """The record of partition ``k`` if its shards are all there and match their sums."""
    final = parts / f"part-{k:06d}"
    try:
        record = orjson.loads((final / RECORD).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    for rel, meta in record.get("files", {}).items():
        p = final / rel
        if not p.is_file() or p.stat().st_size != meta["bytes"] or sha256_file(p) != meta["sha256"]:
            return None
    return record


def dask_setup(worker: Any) -> None:
    """Dask's preload hook, run in each worker of a local cluster as it starts. A worker
    forked from the driver has the library the driver checked already (:func:`_lend`).
    A spawned one loads and compiles the run's module library now, while the other
    workers and the scheduler are still starting, instead of in the worker's first task.
    The driver checks the library meanwhile, so this load skips the checks and keeps the
    digest of the files it read; the first task uses it only if the driver checked files
    of that digest. A failure is left for that task to meet again and report."""
    blob = os.environ.get(_WARM_ENV)
    if not blob or worker is None:
        return
    atexit.register(_exit_without_teardown)
    if _WARM in _CACHE:
        return  # forked from the driver, with the library it lent
    try:
        config = pickle.loads(base64.b64decode(blob))
        digest = library_digest(config)
        _CACHE[_WARM] = (digest, _prepare(config, checked=False))
        gc.freeze()  # see _partition_task
    except Exception:  # noqa: BLE001 - the first task prepares again and reports it
        _CACHE.pop(_WARM, None)


def _exit_without_teardown() -> None:
    """Leave a local cluster's worker process at once when it has closed. The interpreter's
    own shutdown frees the module library object by object (millions of them): measured,
    that was 0.7-0.9 s of every run's close, with nothing left to do by then (each task
    has written, closed and renamed its shards, and the scheduler has its results). Run
    from ``atexit``, after the handlers Dask registered later; a worker that is killed never
    gets here."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(0)


def _distributed() -> Any:
    try:
        import distributed
    except ImportError:  # pragma: no cover - a declared dependency
        raise ConfigError("--workers/--scheduler need Dask: pip install 'dask[distributed]'"
                          ) from None
    return distributed


def _fork_workers() -> bool:
    """Whether a local cluster's workers are forked from the driver: on Linux (fork is
    unsafe on macOS and absent on Windows), unless torch is loaded here (its thread pools
    can hang a forked child; learned modules load it), Dask is configured with a start
    method of its own (``distributed.worker.multiprocessing-method`` other than its
    default, spawn), or ``CARECOURSE_WORKER_START=spawn`` asks for spawned workers."""
    import dask

    choice = os.environ.get(START_ENV, "fork")
    if choice not in ("fork", "spawn"):
        raise ConfigError(f"{START_ENV}={choice!r}: say fork (the default) or spawn")
    return (choice == "fork" and sys.platform.startswith("linux")
            and "torch" not in sys.modules
            and dask.config.get("distributed.worker.multiprocessing-method",
                                "spawn") == "spawn"
            and "fork" in multiprocessing.get_all_start_methods())


def _lend(digest: str, prepared: Any) -> None:
    """Leave the library this process checked where the workers about to be forked from it
    find it (their first task takes it if ``digest`` is the run's)."""
    _CACHE[_WARM] = (digest, prepared)
    _CACHE[_LENT] = True


def _take_back() -> None:
    """Undo :func:`_lend` once the workers are forked (nothing if nothing was lent): a
    worker that Dask starts again later, after one died, is spawned and loads the library
    itself."""
    if _CACHE.pop(_LENT, False):
        _CACHE.pop(_WARM, None)


def _after_fork_in_child() -> None:
    """In a worker just forked from a driver that lent it the library: Dask's offload
    thread pool, copied from the driver, lists a thread that the copy does not have (the
    driver's scheduler started it on an earlier run), so work handed to it would wait for
    ever; give the worker a pool of its own."""
    utils = sys.modules.get("distributed.utils")
    if _LENT in _CACHE and utils is not None:
        utils._offload_executor = ThreadPoolExecutor(max_workers=1,
                                                     thread_name_prefix="Dask-Offload")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _client(workers: int | None, scheduler: str | None, config: RunConfig | None = None,
            fork: bool = False) -> Any:
    distributed = _distributed()
    if scheduler:
        try:
            return distributed.Client(scheduler, timeout="15s")
        except (OSError, TimeoutError) as exc:
            raise ConfigError(f"--scheduler {scheduler}: cannot connect to a Dask scheduler "
                              f"there ({exc}); check the address (tcp://HOST:8786) and that "
                              f"the scheduler is running") from None
    import dask

    # The engine is pure Python and holds the interpreter lock while it runs, so every
    # wake-up of a worker's event loop costs simulation time. Dask's defaults (a stack
    # sampler every 10 ms, a loop tick every 20 ms) cost about 10% on a 2-core machine;
    # these settings, handed by the nannies to their workers, keep the loop quiet.
    settings = {**QUIET_WORKERS, "distributed.worker.multiprocessing-method": "fork"} \
        if fork else QUIET_WORKERS
    with dask.config.set(settings):
        warm = {} if config is None else {
            "preload": ["simulator.cluster"],
            "env": {_WARM_ENV: base64.b64encode(pickle.dumps(config)).decode()}}
        cluster = distributed.LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, memory_limit=0,
            dashboard_address=None, silence_logs=logging.CRITICAL, **warm)
    return distributed.Client(cluster)


def _start(workers: int, config: RunConfig, *, fork: bool) -> tuple[ThreadPoolExecutor, Any]:
    """Start a local cluster in the background: (the thread starting it, the future of its
    client)."""
    starting = ThreadPoolExecutor(max_workers=1, thread_name_prefix="carecourse-cluster")
    return starting, starting.submit(_client, workers, None, config, fork)


def _close(client: Any, workers: int | None) -> None:
    cluster = getattr(client, "cluster", None)
    client.close()
    if cluster is not None and workers is not None:
        cluster.close()


def run_on_dask(config: RunConfig, sinks: list[Any], *, workers: int | None = None,
                scheduler: str | None = None, partition_size: int | None = None,
                progress: bool = True, retries: int = 2,
                on_partition: Callable[[Any, dict[str, Any]], None] | None = None
                ) -> RunSummary:
    """Simulate ``config.population`` patients on a Dask cluster; see the module docs.
    ``on_partition(client, record)`` is called as each partition finishes."""
    try:
        return _run_on_dask(config, sinks, workers, scheduler, partition_size, progress,
                            retries, on_partition)
    finally:
        _take_back()


def _run_on_dask(config: RunConfig, sinks: list[Any], workers: int | None,
                 scheduler: str | None, partition_size: int | None, progress: bool,
                 retries: int, on_partition: Callable[[Any, dict[str, Any]], None] | None
                 ) -> RunSummary:
    from tqdm import tqdm

    config.check()
    if (workers is None) == (scheduler is None):
        raise ConfigError("give either --workers N (a local Dask cluster) or --scheduler "
                          "ADDRESS (an existing one)")
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    if partition_size is None:
        partition_size = default_partition_size(config.population)
    if partition_size < 1:
        raise ConfigError(f"--partition-size must be at least 1, got {partition_size}")
    _check_out(config.out)
    for s in sinks:
        if (config.out / s.name).exists():
            raise OutputError(f"{config.out / s.name}: already exists; choose an empty --out "
                              f"folder")
    t0 = time.perf_counter()
    # The workers of a local cluster are forked from this process once it has checked the
    # library: they start in a tenth of a second with Dask, carecourse and the checked
    # library in memory. Where they are not (see _fork_workers) they are spawned, which
    # takes seconds (each imports Dask and loads the library), so that cluster is started
    # first, in the background, while this process checks the library and the folder.
    # Dask is imported first, here: imported by the starting thread, it would share the
    # interpreter lock with the check and start the workers later.
    starting = None
    if workers is not None:
        _distributed()
        if not _fork_workers():
            starting, pending = _start(workers, config, fork=False)
    client = None
    try:
        # Spawned workers load the library unchecked and use it only if its digest is
        # that of the files checked here, so they must not change meanwhile.
        library, prepared = checked_library(config)  # fail fast, here, on a broken library
        if workers is not None and starting is None:
            fork = _fork_workers()  # the check may have loaded torch, for learned modules
            if fork:
                _lend(library, prepared)
            starting, pending = _start(workers, config, fork=fork)
        del prepared
        parts = config.out / PARTS
        parts.mkdir(exist_ok=True)
        fp = fingerprint(config, sinks, partition_size, library)
        manifest_path = parts / MANIFEST
        if manifest_path.exists():
            try:
                old = orjson.loads(manifest_path.read_bytes())
            except orjson.JSONDecodeError:
                old = {}
            if old.get("fingerprint") != fp:
                raise ConfigError(f"{parts}: holds an interrupted run with other settings "
                                  f"(options, formats, partition size or modules); rerun that "
                                  f"exact command to finish it, or choose another --out")
        plan = plan_partitions(config.population, partition_size)
        for leftover in parts.glob(".part-*.tmp"):
            shutil.rmtree(leftover, ignore_errors=True)  # from tasks killed mid-way
        done: dict[int, dict[str, Any]] = {}
        for k, _a, _b in plan:
            rec = _finished(parts, k)
            if rec is not None:
                done[k] = rec
            elif (parts / f"part-{k:06d}").exists():
                shutil.rmtree(parts / f"part-{k:06d}")  # damaged: compute it again
        todo = [(k, a, b) for k, a, b in plan if k not in done]
        try:
            if starting is not None:
                client = pending.result()
                _take_back()  # the workers are forked: the driver needs the library no more
            elif todo:
                client = _client(None, scheduler)
        except BaseException:
            if not done:
                shutil.rmtree(parts, ignore_errors=True)
            raise
        if client is not None and not todo:
            _close(client, workers)
            client = None
    except BaseException:
        if starting is not None:
            # the cluster may still be starting: wait for it, then shut it down
            try:
                _close(pending.result(), workers)
            except BaseException:  # the first error is the one to report
                pass
        raise
    finally:
        if starting is not None:
            starting.shutdown(wait=False)

    def save_manifest() -> None:
        _write_json(manifest_path, {"fingerprint": fp, "population": config.population,
                                    "run_seed": config.seed, "partition_size": partition_size,
                                    "partitions": [done[k] for k in sorted(done)]})

    save_manifest()
    saved = time.perf_counter()
    bar = tqdm(total=config.population, unit="patients", disable=not progress, smoothing=0.1,
               dynamic_ncols=True, initial=sum(done[k]["patients"] for k in done))
    failed: list[tuple[int, BaseException]] = []
    if client is not None:
        from distributed import as_completed

        try:
            futures = {client.submit(_partition_task, k, a, b, config, sinks, str(parts), fp,
                                     library, key=f"carecourse-part-{k:06d}-{fp[:12]}", pure=False,
                                     retries=retries): k for k, a, b in todo}
            for fut in as_completed(futures):
                k = futures[fut]
                try:
                    rec = fut.result()
                except Exception as exc:  # a partition that failed all its retries
                    failed.append((k, exc))
                    bar.set_postfix(failed_partitions=len(failed), refresh=False)
                    continue
                done[k] = rec
                if time.perf_counter() - saved >= _MANIFEST_EVERY_S:
                    save_manifest()
                    saved = time.perf_counter()
                bar.update(rec["patients"])
                if on_partition is not None:
                    on_partition(client, rec)
        finally:
            save_manifest()
            bar.close()
            _close(client, workers)
    bar.close()
    if failed:
        k, exc = failed[0]
        msg = str(exc) if isinstance(exc, (SimulationError, ConfigError, OutputError)) else \
            f"{type(exc).__name__}: {exc}"
        raise SimulationError(
            f"{len(failed)} partition(s) failed after {retries} retries (first: partition "
            f"{k}, {msg}); the {len(done)} finished partition(s) are kept in {parts}: fix the "
            f"cause and rerun the same command to compute only the missing ones")
    # Join the shards, in partition order, exactly as a --processes run does.
    folders = [parts / f"part-{k:06d}" for k, _a, _b in plan]
    for s in sinks:
        s.merge([f / s.name for f in folders], config.out)
    # Files the sinks moved unchanged (FHIR bundles, C-CDA documents) keep the checksum
    # their partition computed; only joined files (CSV, ndjson) are read again.
    known = {rel: meta for k in done for rel, meta in done[k].get("files", {}).items()}
    outputs = {}
    for s in sinks:
        for p in sorted((config.out / s.name).rglob("*")):
            if p.is_file():
                rel = str(p.relative_to(config.out))
                size = p.stat().st_size
                meta = known.get(rel)
                outputs[rel] = (meta if meta is not None and meta["bytes"] == size and
                                s.name in ("fhir", "ccda")
                                else {"bytes": size, "sha256": sha256_file(p)})
    _write_json(config.out / MANIFEST, {
        "run_seed": config.seed, "population": config.population,
        "partition_size": partition_size,
        "partitions": [{key: done[k][key] for key in ("partition", "first_patient",
                                                      "last_patient", "patients", "run_seed",
                                                      "seeds")} for k in sorted(done)],
        "files": outputs})
    total = RunSummary()
    for k in sorted(done):
        total.merge(_summary(done[k]["summary"]))
    shutil.rmtree(parts, ignore_errors=True)
    total.seconds = time.perf_counter() - t0
    return total
