"""Learning transitions, end to end: rules -> simulated data -> ``carecourse learn`` -> a
hybrid module -> simulated again, and the same course comes out; plus ACTG 320 at epsilon 1
against the same model without privacy.

1. Round trip. A rule module whose course is known: from A, every month a man leaves to B
   with 0.10 and to C with 0.20, a woman to B with 0.15 and to C with 0.15. ``--patients``
   (20,000) are simulated from birth to their second year; their conditions become an event
   table (time 0: the onset of A) with sex as the covariate; ``learned.learn`` learns it at
   epsilon inf and 1 (delta 1e-5), states public, transitions chosen by DP counts; the
   derived modules run for as many patients again. Figures: each learned model's chance of
   leaving within the first month and within six, and of B among leavers, by sex (truth
   0.30, 0.8824 and 1/3 for men, 0.30, 0.8824 and 1/2 for women), the last two measured
   in the patients the hybrid module simulated too (dates are whole days, so a first
   month read from them would take in the start of the second); the structure kept;
   seconds to learn; patients per second with the learned module, its fallbacks and the
   rules.
2. ACTG 320 (1,151 patients; covariates age, sex, arm, CD4; 12 bins of 30 days): each
   exit's probability within the year at the reference covariates, at epsilon 1 and
   without privacy.

Prints its figures and writes benchmarks/results/learn.json (flat keys).

    python benchmarks/learn.py [--patients 20000] [--processes 2]
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REFERENCE = dt.date(2024, 6, 30)
TRUTH = {"M": {"B": 0.10, "C": 0.20}, "F": {"B": 0.15, "C": 0.15}}
CODES = {"9000001": "A", "9000002": "B", "9000003": "C"}


def onset(code: str, nxt: str) -> dict:
    return {"type": "ConditionOnset", "codes": [
        {"system": "SNOMED-CT", "code": code, "display": f"State {CODES[code]}"}],
        "direct_transition": nxt}


def rule_module() -> dict:
    def loop(p: dict[str, float]) -> list[dict]:
        return [{"distribution": p["B"], "transition": "B"},
                {"distribution": p["C"], "transition": "C"},
                {"distribution": 1 - p["B"] - p["C"], "transition": "Wait"}]
    return {"name": "roundtrip", "states": {
        "Initial": {"type": "Initial", "direct_transition": "A"},
        "A": onset("9000001", "Wait"),
        "Wait": {"type": "Delay", "exact": {"quantity": 1, "unit": "months"},
                 "complex_transition": [
                     {"condition": {"condition_type": "Gender", "gender": "M"},
                      "distributions": loop(TRUTH["M"])},
                     {"distributions": loop(TRUTH["F"])}]},
        "B": onset("9000002", "Terminal"),
        "C": onset("9000003", "Terminal"),
        "Terminal": {"type": "Terminal"}}}


def simulate(modules_dir: Path, out: Path, n: int, processes: int,
             learned_fallback: bool = False) -> float:
    from exporters.csv import CsvSink
    from simulator.population import RunConfig, run_population

    config = RunConfig(population=n, seed=11, age_range=(1, 1), reference_date=REFERENCE,
                       years_of_history=0, modules_dir=modules_dir, out=out,
                       processes=processes, extensions=("learned.runtime",),
                       learned_fallback=learned_fallback)
    t0 = time.perf_counter()
    run_population(config, [CsvSink(years_of_history=0, end=config.end)], progress=False)
    return n / (time.perf_counter() - t0)


def onsets(out: Path) -> tuple[dict[str, str], dict[str, dict[str, dt.date]]]:
    """(sex by patient, date of A, B and C by patient) of a run's CSV output."""
    with open(out / "csv" / "patients.csv", newline="") as f:
        sex = {r["Id"]: r["GENDER"] for r in csv.DictReader(f)}
    seen: dict[str, dict[str, dt.date]] = {}
    with open(out / "csv" / "conditions.csv", newline="") as f:
        for r in csv.DictReader(f):
            if r["CODE"] in CODES:
                seen.setdefault(r["PATIENT"], {})[CODES[r["CODE"]]] = \
                    dt.date.fromisoformat(r["START"][:10])
    return sex, seen


def stays(out: Path) -> dict[str, list[tuple[float | None, str | None]]]:
    """Per sex: (days from A to B or C, which; None, None when still in A)."""
    sex, seen = onsets(out)
    res: dict[str, list[tuple[float | None, str | None]]] = {"M": [], "F": []}
    for pid, s in seen.items():
        ex = next((e for e in ("B", "C") if e in s), None)
        res[sex[pid]].append(((s[ex] - s["A"]).days, ex) if ex else (None, None))
    return res


def event_tables(out: Path, folder: Path) -> tuple[Path, Path]:
    """An event table (days since A) and a baseline table (sex, end of follow-up)."""
    sex, seen = onsets(out)
    events, base = folder / "events.csv", folder / "baseline.csv"
    with open(events, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["patient_id", "time", "code"])
        for pid, s in seen.items():
            for code in ("B", "C"):
                if code in s:
                    w.writerow([pid, (s[code] - s["A"]).days, code])
    with open(base, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["patient_id", "sex", "end"])
        for pid, s in seen.items():
            w.writerow([pid, sex[pid], (REFERENCE - s["A"]).days])
    return events, base


def shares(rows: list[tuple[float | None, str | None]]) -> tuple[float, float]:
    """(leaving within six months, B among leavers)."""
    left = [(d, e) for d, e in rows if e is not None]
    return (sum(d <= 180 for d, _ in left) / len(rows),
            sum(e == "B" for _, e in left) / len(left))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=20_000)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "learn.json")
    args = ap.parse_args()
    figures: dict[str, float | int | str] = {
        "patients": args.patients, "roundtrip_truth_first_month": 0.3,
        "roundtrip_truth_within_6_months": round(1 - 0.7 ** 6, 4),
        "roundtrip_truth_b_share_M": round(1 / 3, 4), "roundtrip_truth_b_share_F": 0.5}
    root = Path(tempfile.mkdtemp(prefix="carecourse-learn-bench-"))
    try:
        run(root, args, figures)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    for k, v in figures.items():
        print(f"{k:58s} {v}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {args.out}")


def run(root: Path, args: argparse.Namespace, figures: dict[str, float | int | str]) -> None:
    from learned.covariates import Covariate
    from learned.datasets import load_dataset
    from learned.learn import PUBLIC, LearnConfig, learn
    from learned.runtime import load_tables
    from learned.tables import read_event_tables

    (root / "rules").mkdir()
    (root / "rules" / "roundtrip.json").write_text(json.dumps(rule_module()))
    simulate(root / "rules", root / "sim", args.patients, args.processes)
    events, base = event_tables(root / "sim", root)
    data = read_event_tables(events, base, initial_state="A", name="roundtrip")
    sex = Covariate("sex", "categorical", levels=("M", "F"))
    codes = tuple((c, "SNOMED-CT", k, f"State {c}") for k, c in CODES.items())
    for tag, eps in (("noiseless", math.inf), ("eps1", 1.0)):
        config = LearnConfig(epsilon=eps, covariates=(sex,), bin_days=30.0, max_bins=12,
                             structure="dp", states=("A", "B", "C"), codes=codes,
                             name="learned_roundtrip")
        t0 = time.perf_counter()
        res = learn(data, config, root / f"learned_{tag}", ledger_dir=root / f"ledgers_{tag}",
                    sources={"sex": {"attribute": "gender"}}, progress=False)
        figures[f"roundtrip_learn_seconds_{tag}"] = round(time.perf_counter() - t0, 1)
        figures[f"roundtrip_structure_{tag}"] = ", ".join(f"{a}>{b}" for a, b in
                                                          res.structure.edges)
        tables = load_tables(res.card)
        b = 1 + tables.exits("A").index("B")
        for s in ("M", "F"):
            h = tables.hazards("A", tuple(sex.encode(s)))
            figures[f"roundtrip_first_month_{s}_{tag}"] = round(1 - h[0, 0], 4)
            figures[f"roundtrip_within_6_months_{s}_{tag}"] = round(1 - h[:6, 0].prod(), 4)
            figures[f"roundtrip_b_share_{s}_{tag}"] = round(h[0, b] / (1 - h[0, 0]), 4)
        rate = simulate(root / f"learned_{tag}", root / f"resim_{tag}", args.patients,
                        args.processes)
        figures[f"roundtrip_patients_per_second_learned_{tag}"] = round(rate, 1)
        for s, rows in stays(root / f"resim_{tag}").items():
            six, share = shares(rows)
            figures[f"roundtrip_resimulated_within_6_months_{s}_{tag}"] = round(six, 4)
            figures[f"roundtrip_resimulated_b_share_{s}_{tag}"] = round(share, 4)
    figures["roundtrip_patients_per_second_fallback"] = round(simulate(
        root / "learned_eps1", root / "fallback", args.patients, args.processes,
        learned_fallback=True), 1)
    figures["roundtrip_patients_per_second_rules"] = round(simulate(
        root / "rules", root / "rules_again", args.patients, args.processes), 1)

    facts = PUBLIC["actg320"]
    actg = load_dataset("actg320")
    covs = tuple(facts.covariates[c] for c in ("age", "sex", "tx", "cd4"))
    for tag, eps in (("noiseless", math.inf), ("eps1", 1.0)):
        config = LearnConfig(epsilon=eps, covariates=covs, bin_days=facts.bin_days,
                             max_bins=facts.bins)
        t0 = time.perf_counter()
        res = learn(actg, config, root / f"actg_{tag}", ledger_dir=root / f"ledgers_{tag}",
                    facts=facts, progress=False)
        figures[f"actg320_learn_seconds_{tag}"] = round(time.perf_counter() - t0, 1)
        card = json.loads(res.card.read_text())
        for state, exits in card["metrics"]["exit_probability_within_horizon_at_reference"] \
                .items():
            for e, p in exits.items():
                figures[f"actg320_{state}_to_{e}_within_year_{tag}"] = round(p, 4)


if __name__ == "__main__":
    main()
