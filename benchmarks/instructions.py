"""Instruction benchmark: CPU instructions per patient, a measure of the engine's cost that
does not move with the machine's speed (on a shared VM the same code runs 50% faster or
slower from one hour to the next, so patients per second compare badly across days).

It runs valgrind's cachegrind (instruction counting only, no cache simulation) on a child
process that simulates 1 + N patients with Synthea's whole module library and FHIR export
(the same settings as benchmarks/scale.py), and on one that simulates the first patient
only, and divides the difference by N: imports, the library load and the exporter's fixed
files are left out. The children run with PYTHONHASHSEED=0 (other hash seeds lay
dictionaries out differently) and with one OpenBLAS (and OpenMP) thread: numpy's import
starts OpenBLAS's thread pool, whose threads spin for a while, and their instructions were
counted too (``import numpy`` alone counted 465 to 500 million, now 395 million every
time); that, not the engine, was most of the spread earlier counts showed (166 and 172
million per patient for one commit). What remains (temporary names, timestamps) is small,
but the pair is still counted ``--repeat`` times and the median is reported with the
lowest and highest. It writes
benchmarks/results/instructions.json (``instructions_per_patient``, in millions, the
median; ``instructions_per_patient_low`` and ``_high``; ``instructions_fixed``, the
1-patient run's median). Needs valgrind (``apt-get install valgrind``); each repeat takes
about a minute.

    python benchmarks/instructions.py [--patients 5] [--repeat 3] [--modules-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_MODULES = HERE.parent.parent / "shared" / "synthea" / "modules"

# What the counted child process runs: N patients, FHIR export, 10 years of history.
_CHILD = """
import datetime as dt, sys, tempfile
from pathlib import Path
from exporters.fhir import FhirSink
from simulator.population import RunConfig, run_population
n, modules = int(sys.argv[1]), Path(sys.argv[2])
with tempfile.TemporaryDirectory() as tmp:
    c = RunConfig(population=n, seed=1, out=Path(tmp) / "o", modules_dir=modules,
                  reference_date=dt.date(2025, 1, 1), years_of_history=10)
    run_population(c, [FhirSink(years_of_history=10, end=c.end)], progress=False)
"""


#: The children's environment: fixed hash seed, and no thread pools of numpy's libraries
#: (their threads' spinning would be counted).
_QUIET = {"PYTHONHASHSEED": "0", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
          "MKL_NUM_THREADS": "1"}


def count(patients: int, modules: Path) -> int:
    """Instructions executed by a child process that runs the first ``patients``."""
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "child.py"
        script.write_text(_CHILD)
        out = subprocess.run(
            ["valgrind", "--tool=cachegrind", "--cache-sim=no",
             f"--cachegrind-out-file={os.devnull}", sys.executable, str(script),
             str(patients), str(modules)],
            capture_output=True, text=True, cwd=HERE.parent, check=False,
            env={**os.environ, **_QUIET})
    if out.returncode != 0:
        sys.exit(f"valgrind run failed (exit {out.returncode}):\n{out.stderr[-2000:]}")
    m = re.search(r"I\s+refs:\s+([\d,]+)", out.stderr)
    if m is None:
        sys.exit(f"no instruction count in valgrind's output:\n{out.stderr[-2000:]}")
    return int(m.group(1).replace(",", ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--modules-dir", type=Path, default=DEFAULT_MODULES)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "instructions.json")
    args = ap.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind not found: install it (apt-get install valgrind) to count "
                 "instructions")
    if not args.modules_dir.is_dir():
        sys.exit(f"{args.modules_dir}: module library not found (pass --modules-dir)")
    if args.patients < 1 or args.repeat < 1:
        sys.exit(f"--patients and --repeat must be at least 1, got {args.patients} and "
                 f"{args.repeat}")
    pers, bases = [], []
    for r in range(args.repeat):
        print(f"counting instructions for 1 and {1 + args.patients} patients under valgrind "
              f"({r + 1} of {args.repeat}) ...", flush=True)
        base = count(1, args.modules_dir)
        full = count(1 + args.patients, args.modules_dir)
        bases.append(base)
        pers.append((full - base) / args.patients)
        print(f"  {pers[-1] / 1e6:.1f} million per patient", flush=True)
    per = statistics.median(pers)
    base = statistics.median(bases)
    figures = {"patients": args.patients, "repeats": args.repeat,
               "modules_dir": str(args.modules_dir), "export": "fhir",
               "instructions_per_patient": round(per / 1e6, 1),
               "instructions_per_patient_low": round(min(pers) / 1e6, 1),
               "instructions_per_patient_high": round(max(pers) / 1e6, 1),
               "instructions_fixed": round(base / 1e6, 1)}
    print(f"{per / 1e6:.1f} million instructions per patient (median; {min(pers) / 1e6:.1f} "
          f"to {max(pers) / 1e6:.1f}); the 1-patient run, with imports and the library "
          f"load: {base / 1e6:.0f} million")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
