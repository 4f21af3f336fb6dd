"""Module mortality calibration: does each lethal module kill at the rate of the causes of
death it takes out of background mortality?

A module that lists causes under ``background_mortality_excludes`` replaces their deaths:
the engine removes the causes' published 2021 rates (simulator/data/cause_death_rates.csv)
from the background life table, and the module's own Death states must put them back. This
benchmark simulates whole lives on the embedded library (ages 0-100 at the end date) and,
within the last ``--window-years`` before the end date, counts each death by the top-level
module whose Death state caused it and the person-years lived at each age and sex. For every
module with declared causes it compares the simulated deaths with the deaths the declared
rates give over the same person-years (the ratio, with a 95% Poisson interval), overall and
by age band and sex. A ratio above 1 means the module kills more people than the deaths it
takes out of the background (life expectancy falls), below 1 fewer (it rises). It also
reports all deaths against the life table's expectation, and the deaths of modules that
kill without declaring a cause (they come on top of the table).

Writes benchmarks/results/module_mortality.json (flat keys) and module_mortality.png
(simulated and declared death rates by age band, one panel per module).

    python benchmarks/module_mortality.py                  # 10,000 patients, 2 processes
    python benchmarks/module_mortality.py -p 3000          # a quicker look
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

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tqdm import tqdm  # noqa: E402

from simulator import facts  # noqa: E402
from simulator.population import RunConfig, _prepare, simulate_patient  # noqa: E402

HERE = Path(__file__).resolve().parent
END_DATE = date(2025, 1, 1)
BANDS = ((0, 44), (45, 64), (65, 74), (75, 84), (85, 200))
_YEAR = 365.25
_Z = 1.959964  # two-sided 95%

__all__ = ["poisson_interval", "run"]


def poisson_interval(k: int) -> tuple[float, float]:
    """95% interval for the mean of a Poisson count ``k`` (Byar's approximation to the exact
    interval; Breslow and Day, Statistical Methods in Cancer Research II, IARC 1987)."""
    low = 0.0 if k == 0 else k * (1 - 1 / (9 * k) - _Z / (3 * math.sqrt(k))) ** 3
    up = (k + 1) * (1 - 1 / (9 * (k + 1)) + _Z / (3 * math.sqrt(k + 1))) ** 3
    return low, up


def _band(age: int) -> int:
    return next(i for i, (lo, hi) in enumerate(BANDS) if lo <= age <= hi)


def _measure(args: tuple[int, int, int, int]) -> tuple[Counter, Counter, dict[str, tuple[str, ...]]]:
    """Deaths by (module, sex, age) and person-years by (sex, age) in the window, for
    patients [start, stop); and each top-level module's declared causes."""
    start, stop, seed, window = args
    config = RunConfig(population=stop, seed=seed, age_range=(0, 100), reference_date=END_DATE)
    programs, top = _prepare(config)
    causes = {k: programs[k].background_excludes for k in top}
    end = config.end
    w0 = end - window * _YEAR
    deaths: Counter = Counter()
    years: Counter = Counter()
    for i in range(start, stop):
        p = simulate_patient(i, config, programs, top)
        last = min(end, p.death) if p.death is not None else end
        # person-years by whole year of age (stepping by age, not by time, so rounding at
        # a birthday cannot stall the loop)
        age = max(0, int((max(w0, p.birth) - p.birth) / _YEAR))
        while p.birth + age * _YEAR < last:
            lo = max(w0, p.birth + age * _YEAR)
            hi = min(last, p.birth + (age + 1) * _YEAR)
            if hi > lo:
                years[(p.gender, min(age, 100))] += (hi - lo) / _YEAR
            age += 1
        if p.death is not None and w0 <= p.death <= end:
            age = min(int((p.death - p.birth) / _YEAR), 100)
            deaths[(p.death_module or "(background)", p.gender, age)] += 1
    return deaths, years, causes


def run(n: int, seed: int, processes: int, window: int
        ) -> tuple[Counter, Counter, dict[str, tuple[str, ...]], float]:
    """Simulate ``n`` whole lives in parallel; return deaths, person-years, causes, seconds."""
    chunk = max(50, n // (processes * 20))
    parts = [(s, min(n, s + chunk), seed, window) for s in range(0, n, chunk)]
    deaths: Counter = Counter()
    years: Counter = Counter()
    causes: dict[str, tuple[str, ...]] = {}
    t0 = time.perf_counter()
    with ProcessPoolExecutor(processes) as pool, tqdm(total=n, unit="patient") as bar:
        for (s, e, *_), (d, y, c) in zip(parts, pool.map(_measure, parts), strict=True):
            deaths.update(d)
            years.update(y)
            causes = c
            bar.update(e - s)
    return deaths, years, causes, time.perf_counter() - t0


def _declared(causes: tuple[str, ...], sex: str, age: int) -> float:
    return sum(facts.cause_death_rate(c, age, sex) for c in causes)


def _all_cause_hazard(sex: str, age: int) -> float:
    return -math.log(1.0 - min(facts.annual_death_probability(age, sex), 1.0 - 1e-12))


def summarize(deaths: Counter, years: Counter, causes: dict[str, tuple[str, ...]]
              ) -> tuple[dict[str, float | int | str], dict[str, list[tuple[float, float, float]]]]:
    """Flat figures, and for the picture: per module, per (sex, band) index, the simulated
    rate, its interval and the declared rate (deaths per 100,000 a year)."""
    out: dict[str, float | int | str] = {}
    total = sum(deaths.values())
    expected_all = sum(py * _all_cause_hazard(s, a) for (s, a), py in years.items())
    out["person_years"] = round(sum(years.values()), 1)
    out["deaths"] = total
    out["deaths_per_life_table"] = round(total / expected_all, 4) if expected_all else 0.0
    by_module: Counter = Counter()
    for (m, _s, _a), k in deaths.items():
        by_module[m] += k
    panels: dict[str, list[tuple[float, float, float]]] = {}
    for m in sorted(k for k, c in causes.items() if c):
        sim = sum(k for (mm, _s, _a), k in deaths.items() if mm == m)
        exp = sum(py * _declared(causes[m], s, a) for (s, a), py in years.items())
        lo, hi = poisson_interval(sim)
        out[f"{m}_causes"] = "+".join(causes[m])
        out[f"{m}_deaths"] = sim
        out[f"{m}_declared_deaths"] = round(exp, 1)
        out[f"{m}_ratio"] = round(sim / exp, 3) if exp else 0.0
        out[f"{m}_ratio_low"] = round(lo / exp, 3) if exp else 0.0
        out[f"{m}_ratio_high"] = round(hi / exp, 3) if exp else 0.0
        rows = []
        for sex in ("F", "M"):
            for b, (blo, bhi) in enumerate(BANDS):
                py = sum(v for (s, a), v in years.items() if s == sex and _band(a) == b)
                k = sum(v for (mm, s, a), v in deaths.items() if mm == m and s == sex and _band(a) == b)
                e = sum(v * _declared(causes[m], s, a) for (s, a), v in years.items()
                        if s == sex and _band(a) == b)
                klo, khi = poisson_interval(k)
                scale = 1e5 / py if py else 0.0
                rows.append((k * scale, khi * scale, e * scale))
                label = f"{blo}-{bhi}" if bhi < 200 else f"{blo}+"
                out[f"{m}_{sex}_{label}_deaths"] = k
                out[f"{m}_{sex}_{label}_declared"] = round(e, 2)
        panels[m] = rows
    for m, k in by_module.most_common():
        if not causes.get(m):
            out[f"undeclared_{m.strip('()')}_deaths"] = k
    return out, panels


def draw(panels: dict[str, list[tuple[float, float, float]]], path: Path) -> None:
    """One panel per module: simulated (dots, with the interval's upper end) and declared
    (lines) deaths per 100,000 a year by age band, women and men."""
    n = len(panels)
    cols = 3
    fig, axes = plt.subplots(math.ceil(n / cols), cols, figsize=(4.2 * cols, 3.2 * math.ceil(n / cols)),
                             squeeze=False)
    labels = [f"{lo}-{hi}" if hi < 200 else f"{lo}+" for lo, hi in BANDS]
    x = range(len(BANDS))
    for ax, (m, rows) in zip(axes.flat, panels.items(), strict=False):
        for j, (sex, colour) in enumerate((("F", "tab:red"), ("M", "tab:blue"))):
            part = rows[j * len(BANDS):(j + 1) * len(BANDS)]
            ax.plot(x, [r[2] for r in part], color=colour, label=f"declared {sex}")
            ax.errorbar(x, [r[0] for r in part], yerr=[[0] * len(part), [r[1] - r[0] for r in part]],
                        fmt="o", color=colour, ms=4, capsize=2, label=f"simulated {sex}")
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_xticks(list(x), labels, fontsize=8)
        ax.set_title(m, fontsize=10)
        ax.set_ylabel("deaths per 100,000 a year", fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".png")
    os.close(fd)
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.chmod(tmp, 0o644)  # mkstemp creates files private to the user
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-p", "--population", type=int, default=10000)
    ap.add_argument("-s", "--seed", type=int, default=2)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--window-years", type=int, default=10,
                    help="count deaths and person-years in this many years before the end date")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "module_mortality.json")
    args = ap.parse_args()
    deaths, years, causes, seconds = run(args.population, args.seed, args.processes,
                                         args.window_years)
    result, panels = summarize(deaths, years, causes)
    result = {"run": f"{args.population} patients aged 0-100 at {END_DATE}, seed {args.seed}, "
                     f"deaths and person-years in the last {args.window_years} years, "
                     f"{seconds:.0f} s on {args.processes} process(es)", **result}
    print(f"{result['deaths']} deaths in {result['person_years']:.0f} person-years: "
          f"{result['deaths_per_life_table']:.3f} of the life table's")
    print(f"{'module':<20} {'causes':<20} {'deaths':>7} {'declared':>9} {'ratio':>6}  95% interval")
    for m in panels:
        print(f"{m:<20} {result[f'{m}_causes']:<20} {result[f'{m}_deaths']:>7} "
              f"{result[f'{m}_declared_deaths']:>9.1f} {result[f'{m}_ratio']:>6.2f}  "
              f"{result[f'{m}_ratio_low']:.2f}-{result[f'{m}_ratio_high']:.2f}")
    undeclared = {k: v for k, v in result.items() if k.startswith("undeclared_")}
    if undeclared:
        print("deaths of modules without declared causes (on top of the life table):",
              ", ".join(f"{k[len('undeclared_'):-len('_deaths')]} {v}" for k, v in undeclared.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=args.out.parent, suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps(result, indent=2) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, args.out)
    draw(panels, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
