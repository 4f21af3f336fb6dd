"""Population benchmark: patients per second per core and peak memory, with Synthea's whole
module library, full lifetimes and CSV export on.

Each measurement runs ``carecourse run`` in a fresh child process (one process, so the rate
is per core) and reads the child's peak resident set size from the OS. Figures are printed
and written to benchmarks/results/population.json.

    python benchmarks/population.py                       # 1,000 and 10,000 patients
    python benchmarks/population.py --sizes 200 --modules-dir DIR
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_MODULES = HERE.parent.parent / "shared" / "synthea" / "modules"
_WRAPPER = (
    "import resource, subprocess, sys\n"
    "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "sys.exit(r.returncode)\n"
)


def measure(n: int, modules_dir: Path, seed: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "simulator.cli", "run", "-p", str(n), "-s", str(seed),
               "--modules-dir", str(modules_dir), "--out", out, "--processes", "1",
               "--reference-date", "2025-01-01", "--years-of-history", "0", "--no-progress"]
        t0 = time.perf_counter()
        # A wrapper process per measurement, so its RUSAGE_CHILDREN peak is this run's alone.
        proc = subprocess.run([sys.executable, "-c", _WRAPPER, *cmd], capture_output=True,
                              text=True)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"run of {n} patients failed:\n{proc.stderr[-4000:]}")
        peak_kb = int(proc.stdout.strip().splitlines()[-1])
        rows = sum(1 for _ in open(Path(out) / "csv" / "observations.csv")) - 1
    return {"patients": n, "seconds": seconds, "patients_per_second": n / seconds,
            "peak_rss_mb": peak_kb / 1024.0, "observations": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--modules-dir", type=Path, default=DEFAULT_MODULES)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "population.json")
    args = ap.parse_args()
    if not args.modules_dir.is_dir():
        sys.exit(f"{args.modules_dir}: module library not found (pass --modules-dir)")
    figures: dict[str, float | str] = {
        "modules_dir": str(args.modules_dir),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
    }
    rates = []
    for n in sorted(args.sizes):
        r = measure(n, args.modules_dir, args.seed)
        rates.append(r["patients_per_second"])
        print(f"{n:>7} patients: {r['seconds']:8.1f} s  {r['patients_per_second']:6.2f} patients/s "
              f"per core  peak RSS {r['peak_rss_mb']:7.1f} MB  ({r['observations']} observations)",
              flush=True)
        figures[f"seconds_{n}"] = round(r["seconds"], 2)
        figures[f"patients_per_second_{n}"] = round(r["patients_per_second"], 3)
        figures[f"peak_rss_mb_{n}"] = round(r["peak_rss_mb"], 1)
        figures[f"observations_{n}"] = r["observations"]
    figures["patients_per_second_per_core"] = round(min(rates), 3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"patients per second per core: {figures['patients_per_second_per_core']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
