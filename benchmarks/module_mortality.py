"""Module mortality: how many deaths the embedded library's modules cause, by module, sex and
age band, as shares of the US life table's all-cause deaths.

Simulates whole lives (ages 0-100 at the end date) on the embedded library and counts each
death by the top-level module whose Death state caused it; the expected all-cause deaths are
the person-years lived at each age times the life table's hazard. Prints each module's share
of all simulated deaths beside the NCHS share of US deaths for the causes it stands for, and
writes benchmarks/results/module_mortality.json (flat keys).

With ``--write`` it also writes modules/library/module_deaths.csv, which the engine uses to
take those deaths out of background mortality (see modules/mortality.py). The shares are
measured with the current file in force, so run it twice after a large change (the second
run starts from the first's background).

    python benchmarks/module_mortality.py                 # 10,000 patients, 2 processes
    python benchmarks/module_mortality.py --write         # and update module_deaths.csv
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from datetime import date
from pathlib import Path

from tqdm import tqdm

from modules.loader import default_library_path
from modules.mortality import DEATHS_FILE
from simulator import facts
from simulator.population import RunConfig, _prepare, simulate_patient

HERE = Path(__file__).resolve().parent
END_DATE = date(2025, 1, 1)
BANDS = tuple((lo, lo + 9) for lo in range(0, 100, 10)) + ((100, 130),)
_YEAR = 365.25

# Share of all US deaths in 2021 by underlying cause (NCHS, Deaths: Final Data for 2021,
# NVSR; total 3,464,231 deaths): diseases of heart 695,547, cerebrovascular 162,890, chronic
# lower respiratory 142,342, Alzheimer disease 119,399, nephritis and nephrosis 54,358; lung
# and bronchus cancer 134,592 (CDC WONDER, 2021). Which modules stand for each cause.
NCHS_SHARES = {
    "heart disease (coronary_heart_disease, heart_failure, atrial_fibrillation)":
        (("coronary_heart_disease", "heart_failure", "atrial_fibrillation"), 695547 / 3464231),
    "stroke": (("stroke",), 162890 / 3464231),
    "chronic lower respiratory disease (copd, asthma)": (("copd", "asthma"), 142342 / 3464231),
    "Alzheimer disease (dementia: all dementia)": (("dementia",), 119399 / 3464231),
    "kidney disease (chronic_kidney_disease)": (("chronic_kidney_disease",), 54358 / 3464231),
    "lung cancer": (("lung_cancer",), 134592 / 3464231),
}


def _band(age: float) -> int:
    return min(int(age) // 10, len(BANDS) - 1)


def _hazards() -> dict[str, list[float]]:
    return {s: [-math.log(1.0 - min(facts.annual_death_probability(a, s), 1 - 1e-12))
                for a in range(0, 101)] for s in ("M", "F")}


def _measure(args: tuple[int, int, int]) -> tuple[Counter, Counter, Counter]:
    """Module deaths, expected all-cause deaths and person-years for patients [start, stop)."""
    start, stop, seed = args
    config = RunConfig(population=stop, seed=seed, age_range=(0, 100), reference_date=END_DATE)
    programs, top = _prepare(config)
    mu = _hazards()
    end = config.end
    deaths: Counter = Counter()
    expected: Counter = Counter()
    years: Counter = Counter()
    for i in range(start, stop):
        p = simulate_patient(i, config, programs, top)
        sex = p.gender
        last = min(end, p.death) if p.death is not None else end
        lived = max(0.0, (last - p.birth) / _YEAR)
        a = 0
        while a < lived:
            span = min(lived, a + 1) - a
            b = _band(a)
            expected[(sex, b)] += span * mu[sex][min(a, 100)]
            years[(sex, b)] += span
            a += 1
        if p.death is not None and p.death <= end:
            deaths[(p.death_module or "(background)", sex, _band(lived))] += 1
    return deaths, expected, years


def run(n: int, seed: int, processes: int) -> tuple[Counter, Counter, Counter, float]:
    chunk = max(50, n // (processes * 20))
    parts = [(s, min(n, s + chunk), seed) for s in range(0, n, chunk)]
    deaths: Counter = Counter()
    expected: Counter = Counter()
    years: Counter = Counter()
    t0 = time.perf_counter()
    with ProcessPoolExecutor(processes) as pool, tqdm(total=n, unit="patient") as bar:
        for (s, e, _), (d, x, y) in zip(parts, pool.map(_measure, parts), strict=True):
            deaths.update(d)
            expected.update(x)
            years.update(y)
            bar.update(e - s)
    return deaths, expected, years, time.perf_counter() - t0


def write_shares(deaths: Counter, expected: Counter, path: Path, note: str) -> int:
    """Write module_deaths.csv atomically; return the number of rows."""
    rows = []
    for (module, sex, b), k in sorted(deaths.items()):
        if module == "(background)" or expected[(sex, b)] <= 0:
            continue
        lo, hi = BANDS[b]
        rows.append(f"{module},{sex},{lo},{hi},{k / expected[(sex, b)]:.5f},{k}")
    text = (
        "# Deaths the embedded library's modules cause, as a share of the US life table's all-cause\n"
        "# deaths (NCHS 2021) at the same sex and age band, measured by\n"
        "# `python benchmarks/module_mortality.py --write`: " + note + ".\n"
        "# The engine takes the shares of the modules that run out of background mortality\n"
        "# (modules/mortality.py); rerun after changing how a module kills.\n"
        "module,sex,age_low,age_high,share,deaths\n" + "\n".join(rows) + "\n")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".module_deaths.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
    return len(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-p", "--population", type=int, default=10000)
    ap.add_argument("-s", "--seed", type=int, default=2)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--write", action="store_true", help=f"update modules/library/{DEATHS_FILE}")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "module_mortality.json")
    args = ap.parse_args()
    deaths, expected, years, seconds = run(args.population, args.seed, args.processes)
    total = sum(deaths.values())
    by_module: Counter = Counter()
    for (module, _sex, _b), k in deaths.items():
        by_module[module] += k
    result: dict[str, float | int | str] = {
        "run": f"{args.population} patients aged 0-100 at {END_DATE}, seed {args.seed}, "
               f"{seconds:.0f} s on {args.processes} process(es)",
        "deaths": total,
        "expected_all_cause_deaths": round(sum(expected.values()), 1),
        "deaths_per_expected": round(total / sum(expected.values()), 4),
    }
    print(f"{total} deaths, {sum(expected.values()):.0f} expected from the life table "
          f"({total / sum(expected.values()):.3f} of expected)")
    for module, k in by_module.most_common():
        result[f"share_of_deaths_{module.strip('()')}"] = round(k / total, 4)
        print(f"  {module:<28} {k:>6} deaths  {100 * k / total:5.1f}% of deaths")
    print("module deaths beside the NCHS 2021 share of US deaths:")
    for cause, (mods, share) in NCHS_SHARES.items():
        sim = sum(by_module[m] for m in mods) / total
        key = cause.split(" (")[0].replace(" ", "_")
        result[f"simulated_share_{key}"] = round(sim, 4)
        result[f"nchs_share_{key}"] = round(share, 4)
        print(f"  {cause:<72} simulated {100 * sim:5.1f}%  NCHS {100 * share:5.1f}%")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    if args.write:
        path = default_library_path() / DEATHS_FILE
        n = write_shares(deaths, expected, path, f"{args.population} patients, seed {args.seed}, "
                         f"{date.today().isoformat()}")
        print(f"wrote {path} ({n} rows)")


if __name__ == "__main__":
    main()
