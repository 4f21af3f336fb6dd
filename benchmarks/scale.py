"""Scale benchmark: patients per second with one process and on a local Dask cluster of two
workers, the speed-up, and the per-core rate, with Synthea's whole module library, full
lifetimes and FHIR export on.

Both runs simulate the same patients (ages 0-100 at the reference date, each from birth,
10 years of exported history as in Synthea's default) and write FHIR bundles. The Dask time
includes starting the local cluster and joining the shards, as a user would see it.
Figures are printed and written to benchmarks/results/scale.json, with the time of a fixed
pure-Python workload (``python_reference_seconds``) measured just before, so that runs on a
machine that is faster or slower that day (a shared VM) can be compared, and the speed of
that workload on both cores at once relative to one (``parallel_reference_efficiency``):
the ceiling of any speed-up that day. ``speedup_2_workers_steady`` leaves out the fixed
costs of a Dask run (starting the cluster, loading the library in each worker, closing).

    python benchmarks/scale.py [--patients 1000] [--modules-dir DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_MODULES = HERE.parent.parent / "shared" / "synthea" / "modules"


def python_reference_seconds() -> float:
    """Best of five timings of a fixed interpreter-bound workload (dict lookups, attribute
    access, float arithmetic, as the engine does): a yardstick of the machine, not of
    carecourse."""
    import timeit

    return min(timeit.repeat(_STMT, _SETUP, number=200, repeat=5))


_STMT = "s = 0.0\nfor i in range(1000):\n    s += d.get(i, 0.0) * 1.5"
_SETUP = "d = {i: float(i) for i in range(1000)}"


def _reference_run(_: int) -> float:
    """The yardstick's workload for about two seconds, timed once (sustained, not best)."""
    import timeit

    return timeit.timeit(_STMT, _SETUP, number=20_000)


def parallel_reference_efficiency() -> float:
    """The same yardstick run in two processes at once, as a share of two runs' worth of
    work done in one run's time (1.0: both cores are there; a shared VM's second core is
    sometimes not, and then no program can scale)."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    alone = _reference_run(0)
    with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
        list(pool.map(abs, [0, 1]))  # start both processes first
        both = list(pool.map(_reference_run, [0, 1]))
    return alone / max(both)


def main() -> None:
    from exporters.fhir import FhirSink
    from simulator.cluster import default_partition_size, run_on_dask
    from simulator.population import RunConfig, run_population

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=1000)
    ap.add_argument("--modules-dir", type=Path, default=DEFAULT_MODULES)
    ap.add_argument("--partition-size", type=int, default=None,
                    help="patients per partition (default: what carecourse run uses)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "scale.json")
    args = ap.parse_args()
    if not args.modules_dir.is_dir():
        sys.exit(f"{args.modules_dir}: module library not found (pass --modules-dir)")
    size = args.partition_size or default_partition_size(args.patients)
    figures: dict[str, float | int | str] = {"patients": args.patients, "partition_size": size,
                                             "modules_dir": str(args.modules_dir),
                                             "export": "fhir", "cores": os.cpu_count() or 0}
    ref = python_reference_seconds()
    figures["python_reference_seconds"] = round(ref, 4)
    print(f"machine yardstick: {ref:.4f} s (fixed pure-Python workload; lower is faster)")
    eff = parallel_reference_efficiency()
    figures["parallel_reference_efficiency"] = round(eff, 3)
    print(f"the same on both cores at once: {eff:.2f} of the speed of one (1.0: two full cores)")
    with tempfile.TemporaryDirectory() as tmp:
        def config(name: str) -> RunConfig:
            return RunConfig(population=args.patients, seed=1, out=Path(tmp) / name,
                             reference_date=dt.date(2025, 1, 1), modules_dir=args.modules_dir,
                             years_of_history=10)

        c1 = config("one")
        t = time.perf_counter()
        run_population(c1, [FhirSink(years_of_history=10, end=c1.end)], progress=True)
        one = args.patients / (time.perf_counter() - t)
        print(f"1 process:       {one:6.2f} patients/s")

        c2 = config("dask")
        finished: list[tuple[float, int]] = []  # (time, patients) as partitions finish
        t = time.perf_counter()
        run_on_dask(c2, [FhirSink(years_of_history=10, end=c2.end)], workers=2,
                    partition_size=size, progress=True,
                    on_partition=lambda _c, rec: finished.append((time.perf_counter() - t,
                                                                  rec["patients"])))
        total = time.perf_counter() - t
        two = args.patients / total
        print(f"2 Dask workers:  {two:6.2f} patients/s")
        # The fixed costs of a Dask run (starting the cluster and loading the library in
        # each worker; closing it and joining the shards) apart from its steady rate.
        first, last = finished[0][0], finished[-1][0]
        steady = sum(n for _, n in finished[1:]) / (last - first) if last > first else two
        figures["seconds_to_first_partition"] = round(first, 2)
        figures["seconds_after_last_partition"] = round(total - last, 2)
        figures["patients_per_second_2_workers_steady"] = round(steady, 2)
        print(f"  first partition after {first:.1f} s, done {total - last:.1f} s after the "
              f"last; steady rate {steady:.2f} patients/s")
    figures["patients_per_second_1_process"] = round(one, 2)
    figures["patients_per_second_2_workers"] = round(two, 2)
    figures["speedup_2_workers"] = round(two / one, 3)
    figures["speedup_2_workers_steady"] = round(figures["patients_per_second_2_workers_steady"]
                                                / one, 3)
    figures["patients_per_second_per_core"] = round(one, 2)
    figures["patients_per_second_per_core_2_workers"] = round(two / 2, 2)
    print(f"speed-up {two / one:.2f} (steady {figures['speedup_2_workers_steady']:.2f}); "
          f"per core {one:.2f} patients/s (goal 20)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
