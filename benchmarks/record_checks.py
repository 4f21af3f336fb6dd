"""Record checks on the default ``carecourse run`` output, opened as a new user would.

Runs ``carecourse run -p 1000`` on the embedded library (CSV, the default export of the
last 10 years) and reads the tables back, checking what a real practice's records never
show:

- ``reason_before_care``: a medication, procedure, care plan or encounter that names a
  REASONCODE comes on or after that condition's diagnosis (its first START in the export);
  an entry that started before the export window (the last ``--years-of-history`` years:
  still active, so exported) and whose reason ended before the window is counted apart as
  ``reason_outside_window``: the exporter, like Synthea's, writes what is still active but
  not the conditions that ended before the cutoff, so the reader sees no reason;
- ``no_pregnancy_for_men``: no pregnancy, delivery, prenatal or contraceptive entry for
  a male patient;
- ``nothing_after_death``: no entry of any table starts after the patient's DEATHDATE.

Writes benchmarks/results/record_checks.json (flat keys: rows read per table, the number of
violations of each rule, up to five examples of each) and exits 1 if any rule is broken
(``reason_outside_window`` is reported, not counted as broken: the record before the window
is complete).

    python benchmarks/record_checks.py                 # runs carecourse run -p 1000
    python benchmarks/record_checks.py --csv out/csv   # checks an existing run's tables
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import date, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Pregnancy conditions (normal pregnancy, pregnant, miscarriage, ectopic pregnancy,
# gestational diabetes, preeclampsia, preterm labour...), deliveries and prenatal
# procedures, prenatal and postpartum encounters, contraceptive drugs and procedures: the
# codes the pregnancy and contraception modules record.
PREGNANCY_CODES = frozenset({
    "72892002", "77386006", "19169002", "85116003", "34801009", "11687002", "398254007",
    "47200007", "451921000124109", "177184002", "11466000", "714812005", "31208007",
    "18946005", "271442007", "169230002", "445912000", "424441002", "424619006", "169762003",
    "183460006", "748879", "749785", "748856", "748962", "1000126", "389221", "807283",
    "1856546", "1605257", "65200003", "169553002", "287664005", "1263416007", "301807007",
    "408969000",
})
# Tables with a START (or DATE) column and the column that holds each row's code.
TABLES = {"conditions": "CODE", "medications": "CODE", "procedures": "CODE",
          "careplans": "CODE", "encounters": "CODE", "observations": "CODE",
          "immunizations": "CODE", "allergies": "CODE", "imaging_studies": "PROCEDURE_CODE",
          "devices": "CODE", "supplies": "CODE"}
WITH_REASON = ("medications", "procedures", "careplans", "encounters")

__all__ = ["check"]


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _start(row: dict[str, str]) -> str:
    # ISO dates and timestamps compare as text: the date part decides
    return (row.get("START") or row.get("DATE") or "")[:10]


def check(folder: Path, cutoff: str = "") -> dict[str, object]:
    """Check the CSV tables under ``folder``; return flat figures (counts and examples).
    ``cutoff`` (YYYY-MM-DD) is the start of the exported window ("" for a full export)."""
    patients = {r["Id"]: r for r in _rows(folder / "patients.csv")}
    if not patients:
        raise SystemExit(f"{folder}: no patients.csv with rows; point --csv at a run's csv folder")
    tables = {name: _rows(folder / f"{name}.csv") for name in TABLES}
    onset: dict[tuple[str, str], str] = {}
    for r in tables["conditions"]:
        key = (r["PATIENT"], r["CODE"])
        onset[key] = min(onset.get(key, "9999"), _start(r))
    bad: dict[str, list[str]] = defaultdict(list)
    for name in WITH_REASON:
        for r in tables[name]:
            reason = r.get("REASONCODE") or ""
            if reason and onset.get((r["PATIENT"], reason), "9999") > _start(r):
                rule = "reason_outside_window" if _start(r) < cutoff else "reason_before_care"
                bad[rule].append(
                    f"{name}: {r.get('DESCRIPTION')} on {_start(r)} for {r.get('REASONDESCRIPTION')} "
                    f"(diagnosed {onset.get((r['PATIENT'], reason), 'never')})")
    for name, col in TABLES.items():
        for r in tables[name]:
            p = patients.get(r["PATIENT"])
            if p is None:
                continue
            if p["GENDER"] == "M" and r.get(col) in PREGNANCY_CODES:
                bad["no_pregnancy_for_men"].append(f"{name}: {r.get('DESCRIPTION')} for a man")
            death = (p.get("DEATHDATE") or "")[:10]
            if death and _start(r) > death:
                bad["nothing_after_death"].append(f"{name}: {r.get('DESCRIPTION')} on {_start(r)}, "
                                                  f"died {death}")
    out: dict[str, object] = {"patients": len(patients),
                              "deceased": sum(1 for p in patients.values() if p.get("DEATHDATE")),
                              "male": sum(1 for p in patients.values() if p["GENDER"] == "M")}
    for name, rows in tables.items():
        out[f"rows_{name}"] = len(rows)
    for rule in ("reason_before_care", "reason_outside_window", "no_pregnancy_for_men",
                 "nothing_after_death"):
        out[f"violations_{rule}"] = len(bad[rule])
        out[f"examples_{rule}"] = "; ".join(bad[rule][:5])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-p", "--population", type=int, default=1000)
    ap.add_argument("-s", "--seed", type=int, default=1)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--csv", type=Path, help="check this run's csv folder instead of running")
    ap.add_argument("--end-date", default="2025-01-01", help="the run's end date (with --csv)")
    ap.add_argument("--years-of-history", type=int, default=10,
                    help="the run's exported years (with --csv; 0 = everything)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "record_checks.json")
    args = ap.parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if args.csv is None:
            cmd = [sys.executable, "-m", "simulator.cli", "run", "-p", str(args.population),
                   "-s", str(args.seed), "--processes", str(args.processes),
                   "--reference-date", args.end_date, "--years-of-history",
                   str(args.years_of_history), "--out", tmp]
            subprocess.run(cmd, check=True)
            folder = Path(tmp) / "csv"
            run = (f"carecourse run -p {args.population} -s {args.seed} --reference-date "
                   f"{args.end_date} (CSV, last {args.years_of_history} years: the default export)")
        else:
            folder, run = args.csv, f"tables in {args.csv}"
        cutoff = ""
        if args.years_of_history:
            end = date.fromisoformat(args.end_date)
            cutoff = (end - timedelta(days=args.years_of_history * 365.25)).isoformat()
        result = {"run": run, **check(folder, cutoff),
                  "seconds": round(time.perf_counter() - t0, 1)}
    for rule in ("reason_before_care", "reason_outside_window", "no_pregnancy_for_men",
                 "nothing_after_death"):
        n = result[f"violations_{rule}"]
        flag = "ok " if n == 0 else "note" if rule == "reason_outside_window" else "BAD"
        print(f"{flag} {rule:<22} {n} violation(s)"
              + (f": {result[f'examples_{rule}']}" if n else ""))
    print(f"{result['patients']} patients ({result['deceased']} deceased, {result['male']} male), "
          + ", ".join(f"{k[5:]} {v}" for k, v in result.items() if k.startswith("rows_")))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_json = tempfile.mkstemp(dir=args.out.parent, suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps(result, indent=2) + "\n")
    os.chmod(tmp_json, 0o644)  # mkstemp creates files private to the user
    os.replace(tmp_json, args.out)
    print(f"wrote {args.out}")
    if any(result[f"violations_{r}"] for r in ("reason_before_care", "no_pregnancy_for_men",
                                                "nothing_after_death")):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
