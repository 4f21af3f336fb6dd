"""Export benchmark: patients per second and MB per patient for each output format, and how
much FHIR export adds to a run without export.

Each measurement is a fresh single-process run of the same patients (Synthea's whole module
library, Synthea's default 10 years of exported history) through ``run_population``: once
with no output, once per format. Figures are printed and written to
benchmarks/results/export.json (``fhir_overhead_ratio`` = time with FHIR / time without
export; 1.3 means 30% more).

    python benchmarks/export.py [--patients 300] [--modules-dir DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_MODULES = HERE.parent.parent / "shared" / "synthea" / "modules"


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def main() -> None:
    from exporters.ccda import CcdaSink
    from exporters.csv import CsvSink
    from exporters.fhir import FhirSink, NdjsonSink
    from simulator.population import RunConfig, _prepare, run_population

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=300)
    ap.add_argument("--modules-dir", type=Path, default=DEFAULT_MODULES)
    ap.add_argument("--years-of-history", type=int, default=10)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "export.json")
    args = ap.parse_args()
    if not args.modules_dir.is_dir():
        sys.exit(f"{args.modules_dir}: module library not found (pass --modules-dir)")
    figures: dict[str, float | int | str] = {"patients": args.patients,
                                             "years_of_history": args.years_of_history,
                                             "modules_dir": str(args.modules_dir)}
    kinds = {
        "none": lambda end: [],
        "csv": lambda end: [CsvSink(years_of_history=args.years_of_history, end=end)],
        "fhir": lambda end: [FhirSink(years_of_history=args.years_of_history, end=end)],
        "ndjson": lambda end: [NdjsonSink(years_of_history=args.years_of_history, end=end)],
        "ccda": lambda end: [CcdaSink(years_of_history=args.years_of_history, end=end)],
    }
    seconds = {}
    for name, make in kinds.items():
        with tempfile.TemporaryDirectory() as tmp:
            config = RunConfig(population=args.patients, seed=1, out=Path(tmp),
                               reference_date=dt.date(2025, 1, 1), modules_dir=args.modules_dir,
                               years_of_history=args.years_of_history)
            _prepare(config)  # load and compile once before timing (cached files, warm imports)
            t0 = time.perf_counter()
            run_population(config, make(config.end), progress=False)
            seconds[name] = time.perf_counter() - t0
            mb = folder_mb(Path(tmp)) / args.patients
        rate = args.patients / seconds[name]
        figures[f"patients_per_second_{name}"] = round(rate, 2)
        if name != "none":
            figures[f"mb_per_patient_{name}"] = round(mb, 3)
        print(f"{name:7s} {seconds[name]:7.1f} s  {rate:6.2f} patients/s"
              + (f"  {mb:6.3f} MB/patient" if name != "none" else ""), flush=True)
    figures["fhir_overhead_ratio"] = round(seconds["fhir"] / seconds["none"], 3)
    print(f"FHIR export overhead ratio: {figures['fhir_overhead_ratio']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
