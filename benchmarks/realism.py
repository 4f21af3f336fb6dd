"""Realism benchmark: does the embedded module library's population look like the US?

Runs ``carecourse run`` on the embedded library (10,000 patients by default) and compares,
with the targets and sources in benchmarks/data/realism_targets.csv:

- the prevalence of each condition among living people of the target's age (and sex) at
  the end date, counted from conditions.csv rows that have no STOP date;
- life expectancy at birth, from a period life table of the simulated deaths and
  person-years in the last ten years before the end date;
- the share of the living population aged 65 and over;
- encounters per person-year in the last year;
- rates of procedures (births) per 1,000 person-years and of encounters of a class
  (emergency) per person-year in the last year, by age and sex;
- the share of living people with an active allergy to given substances, and with a given
  immunization (COVID-19 vaccines) in the exported history.

Writes benchmarks/results/realism.json (``figures``: name, simulated, target, source,
within_20pct, headline; ``headline_within_20pct``; prevalence by age band and sex) and
benchmarks/results/realism.html (the table and pictures of prevalence by age).

    python benchmarks/realism.py                      # 10,000 patients, 2 processes
    python benchmarks/realism.py --csv output/csv     # measure an existing run instead
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import json
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGETS = HERE / "data" / "realism_targets.csv"
END_DATE = "2025-01-01"
AGE_BANDS = ((18, 44), (45, 64), (65, 200))
PLOT_BANDS = ((18, 29), (30, 39), (40, 49), (50, 59), (60, 69), (70, 79), (80, 200))
_DAYS_PER_YEAR = 365.25

__all__ = ["Population", "Target", "load_population", "load_targets", "measure"]


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    kind: str
    codes: frozenset[str]
    age_low: float
    age_high: float
    sex: str | None
    target: float
    headline: bool
    source: str


@dataclass(frozen=True, slots=True)
class Population:
    """What the measurements need from a run's CSV files."""

    end: date
    birth: dict[str, date]
    death: dict[str, date | None]
    sex: dict[str, str]
    active: dict[str, set[str]]  # patient -> codes of conditions with no STOP date
    encounters: list[tuple[str, date]]
    encounter_classes: list[str] = field(default_factory=list)  # parallel to encounters
    procedures: list[tuple[str, date, str]] = field(default_factory=list)  # patient, start, code
    allergies: dict[str, set[str]] = field(default_factory=dict)  # patient -> active allergy codes
    immunizations: dict[str, set[str]] = field(default_factory=dict)  # patient -> CVX codes

    def age(self, pid: str, on: date | None = None) -> float:
        return ((on or self.end) - self.birth[pid]).days / _DAYS_PER_YEAR

    def living(self) -> list[str]:
        return [p for p, d in self.death.items() if d is None or d > self.end]


def load_targets(path: Path = TARGETS) -> list[Target]:
    out = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            out.append(Target(
                name=row["name"], kind=row["kind"],
                codes=frozenset(c for c in row["codes"].split("|") if c),
                age_low=float(row["age_low"] or 0), age_high=float(row["age_high"] or 200) + 1,
                sex=row["sex"] or None, target=float(row["target"]),
                headline=row["headline"] == "yes", source=row["source"]))
    return out


def _date(text: str) -> date | None:
    return date.fromisoformat(text[:10]) if text else None


def load_population(csv_dir: Path, end: str = END_DATE) -> Population:
    birth, death, sex = {}, {}, {}
    with open(csv_dir / "patients.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            birth[row["Id"]] = _date(row["BIRTHDATE"])
            death[row["Id"]] = _date(row["DEATHDATE"])
            sex[row["Id"]] = row["GENDER"]
    active: dict[str, set[str]] = defaultdict(set)
    with open(csv_dir / "conditions.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if not row["STOP"]:
                active[row["PATIENT"]].add(row["CODE"])
    encounters, classes = [], []
    with open(csv_dir / "encounters.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            encounters.append((row["PATIENT"], _date(row["START"])))
            classes.append(row["ENCOUNTERCLASS"])
    procedures = []
    with open(csv_dir / "procedures.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            procedures.append((row["PATIENT"], _date(row["START"]), row["CODE"]))
    allergies: dict[str, set[str]] = defaultdict(set)
    with open(csv_dir / "allergies.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if not row["STOP"]:
                allergies[row["PATIENT"]].add(row["CODE"])
    immunizations: dict[str, set[str]] = defaultdict(set)
    with open(csv_dir / "immunizations.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            immunizations[row["PATIENT"]].add(row["CODE"])
    return Population(date.fromisoformat(end), birth, death, sex, dict(active), encounters,
                      classes, procedures, dict(allergies), dict(immunizations))


def _people(pop: Population, lo: float, hi: float, sex: str | None) -> list[str]:
    """Living people aged [lo, hi) (and of ``sex``) at the end date."""
    return [p for p in pop.living() if lo <= pop.age(p) < hi and (sex is None or pop.sex[p] == sex)]


def _share(pop: Population, has: dict[str, set[str]], codes: frozenset[str], lo: float, hi: float,
           sex: str | None = None) -> tuple[float, int]:
    """Percent of living people aged [lo, hi) (and of ``sex``) whose set in ``has`` meets
    ``codes``, and the number of people in the denominator."""
    people = _people(pop, lo, hi, sex)
    if not people:
        return float("nan"), 0
    cases = sum(1 for p in people if has.get(p, set()) & codes)
    return 100.0 * cases / len(people), len(people)


def prevalence(pop: Population, codes: frozenset[str], lo: float, hi: float,
               sex: str | None = None) -> tuple[float, int]:
    """Percent of living people aged [lo, hi) (and of ``sex``) with an active condition of
    ``codes`` at the end date, and the number of people in the denominator."""
    return _share(pop, pop.active, codes, lo, hi, sex)


def person_years(pop: Population, lo: float, hi: float, sex: str | None,
                 start: float, stop: float) -> float:
    """Person-years lived aged [lo, hi) between ordinal days ``start`` and ``stop``."""
    total = 0.0
    for pid, b in pop.birth.items():
        if sex is not None and pop.sex[pid] != sex:
            continue
        born = b.toordinal()
        d = pop.death[pid]
        a = max(start, born + lo * _DAYS_PER_YEAR)
        z = min(stop, born + hi * _DAYS_PER_YEAR, d.toordinal() if d else stop)
        total += max(0.0, z - a) / _DAYS_PER_YEAR
    return total


def procedure_rate(pop: Population, codes: frozenset[str], lo: float, hi: float,
                   sex: str | None = None) -> tuple[float, int]:
    """Procedures of ``codes`` in the last year per 1,000 person-years of people aged [lo, hi)
    (and of ``sex``) when they had them (births per 1,000 women: the general fertility rate)."""
    stop = pop.end.toordinal()
    start = stop - _DAYS_PER_YEAR
    years = person_years(pop, lo, hi, sex, start, stop)
    n = 0
    for pid, t, code in pop.procedures:
        if code in codes and t and start <= t.toordinal() < stop and (sex is None or pop.sex[pid] == sex):
            if lo <= pop.age(pid, t) < hi:
                n += 1
    return (1000.0 * n / years if years else float("nan")), round(years)


def encounter_class_rate(pop: Population, classes: frozenset[str]) -> tuple[float, int]:
    """Encounters of the given classes in the last year per person-year."""
    stop = pop.end.toordinal()
    start = stop - _DAYS_PER_YEAR
    years = person_years(pop, 0, 200, None, start, stop)
    n = sum(1 for (_, t), c in zip(pop.encounters, pop.encounter_classes, strict=True)
            if c in classes and t and start <= t.toordinal() < stop)
    return (n / years if years else float("nan")), round(years)


def life_expectancy(pop: Population, years: float = 10.0) -> float:
    """Period life expectancy at birth from deaths and person-years by single year of age
    in the ``years`` before the end date."""
    end = pop.end.toordinal()
    start = end - years * _DAYS_PER_YEAR
    exposure = [0.0] * 121
    deaths = [0] * 121
    for pid, b in pop.birth.items():
        born = b.toordinal()
        d = pop.death[pid]
        stop = min(end, d.toordinal()) if d else end
        lo = max(start, born)
        if stop <= lo:
            continue
        a0, a1 = (lo - born) / _DAYS_PER_YEAR, (stop - born) / _DAYS_PER_YEAR
        a = int(a0)
        while a < a1 and a < 121:
            exposure[a] += min(a1, a + 1) - max(a0, a)
            a += 1
        if d and start <= d.toordinal() <= end:
            deaths[min(120, int(a1))] += 1
    alive, e0 = 1.0, 0.0
    for a in range(121):
        m = deaths[a] / exposure[a] if exposure[a] > 0 else 1.0
        q = min(1.0, m / (1 + 0.5 * m))
        e0 += alive * (1 - 0.5 * q)
        alive *= 1 - q
        if alive < 1e-9:
            break
    return e0


def share_65(pop: Population) -> float:
    living = pop.living()
    return 100.0 * sum(1 for p in living if pop.age(p) >= 65) / len(living)


def encounter_rate(pop: Population) -> float:
    """Encounters per person-year in the last year before the end date."""
    end = pop.end.toordinal()
    start = end - _DAYS_PER_YEAR
    years = 0.0
    for pid, b in pop.birth.items():
        d = pop.death[pid]
        lo, hi = max(start, b.toordinal()), min(end, d.toordinal()) if d else end
        years += max(0.0, hi - lo) / _DAYS_PER_YEAR
    n = sum(1 for _, t in pop.encounters if t and start <= t.toordinal() < end)
    return n / years if years else float("nan")


def measure(pop: Population, targets: list[Target]) -> dict:
    figures, by_band = [], {}
    for t in targets:
        if t.kind == "prevalence":
            value, n = prevalence(pop, t.codes, t.age_low, t.age_high, t.sex)
            by_band[t.name] = {
                f"{lo}-{hi if hi < 200 else ''}{'' if hi < 200 else '+'} {s}".replace("-+", "+"):
                round(prevalence(pop, t.codes, lo, hi + 1, s)[0], 2)
                for lo, hi in PLOT_BANDS for s in ("M", "F")}
        elif t.kind == "life_expectancy":
            value, n = life_expectancy(pop), len(pop.birth)
        elif t.kind == "share_65":
            value, n = share_65(pop), len(pop.living())
        elif t.kind == "encounter_rate":
            value, n = encounter_rate(pop), len(pop.birth)
        elif t.kind == "procedure_rate":
            value, n = procedure_rate(pop, t.codes, t.age_low, t.age_high, t.sex)
        elif t.kind == "encounter_class_rate":
            value, n = encounter_class_rate(pop, t.codes)
        elif t.kind == "allergy_prevalence":
            value, n = _share(pop, pop.allergies, t.codes, t.age_low, t.age_high, t.sex)
        elif t.kind == "immunization_coverage":
            value, n = _share(pop, pop.immunizations, t.codes, t.age_low, t.age_high, t.sex)
        else:
            raise ValueError(f"{TARGETS}: unknown kind {t.kind!r} for {t.name!r}")
        within = abs(value - t.target) <= 0.2 * t.target
        figures.append({"name": t.name, "simulated": round(value, 2), "target": t.target,
                        "within_20pct": within, "headline": t.headline, "people": n,
                        "source": t.source})
    headline = [f for f in figures if f["headline"]]
    return {"figures": figures,
            "headline_within_20pct": sum(1 for f in headline if f["within_20pct"]),
            "headline_figures": len(headline),
            "prevalence_by_age_and_sex": by_band}


def _plots(result: dict, targets: list[Target]) -> list[tuple[str, str]]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    band_targets: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for t in targets:
        base = t.name.rsplit(" ", 1)[0]
        if t.kind == "prevalence" and base != t.name and base in result["prevalence_by_age_and_sex"]:
            band_targets[base].append((t.age_low, min(t.age_high, 100), t.target))
    out = []
    labels = [f"{lo}-{hi}" if hi < 200 else f"{lo}+" for lo, hi in PLOT_BANDS]
    for name, bands in result["prevalence_by_age_and_sex"].items():
        if any(name.startswith(b + " ") for b in result["prevalence_by_age_and_sex"] if b != name):
            continue
        fig, ax = plt.subplots(figsize=(5.5, 3.2))
        keys = list(bands)
        for s, style in (("M", "o-"), ("F", "s-")):
            ax.plot(labels, [bands[k] for k in keys if k.endswith(" " + s)], style,
                    label=f"simulated, {'men' if s == 'M' else 'women'}")
        for lo, hi, v in band_targets.get(name, []):
            xs = [i for i, (a, b) in enumerate(PLOT_BANDS) if a >= lo and b < hi]
            if xs:
                ax.hlines(v, xs[0] - 0.4, xs[-1] + 0.4, colors="k", linestyles="--")
        overall = next(f for f in result["figures"] if f["name"] == name)
        ax.axhline(overall["target"], color="grey", lw=0.8, ls=":", label="target, all adults")
        ax.set_title(name)
        ax.set_ylabel("% of living people")
        ax.legend(fontsize=7)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90)
        plt.close(fig)
        out.append((name, base64.b64encode(buf.getvalue()).decode()))
    return out


def write_html(result: dict, targets: list[Target], path: Path) -> None:
    rows = "".join(
        f"<tr class='{'ok' if f['within_20pct'] else 'off'}'><td>{html.escape(f['name'])}</td>"
        f"<td>{f['simulated']}</td><td>{f['target']}</td>"
        f"<td>{'yes' if f['within_20pct'] else 'no'}</td><td>{'yes' if f['headline'] else ''}</td>"
        f"<td>{html.escape(f['source'])}</td></tr>" for f in result["figures"])
    imgs = "".join(f"<figure><img alt='{html.escape(n)}' src='data:image/png;base64,{b}'></figure>"
                   for n, b in _plots(result, targets))
    path.write_text(
        "<!doctype html><meta charset='utf-8'><title>carecourse realism</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:3px 8px;border-bottom:1px solid #ddd;"
        "vertical-align:top;font-size:13px}.off td:nth-child(4){color:#b00}figure{display:inline-block;margin:4px}</style>"
        f"<h1>carecourse realism benchmark</h1><p>{html.escape(result.get('run', ''))}</p>"
        f"<p>Headline figures within 20% of target: <b>{result['headline_within_20pct']} of "
        f"{result['headline_figures']}</b></p><table><tr><th>figure</th><th>simulated</th>"
        f"<th>target</th><th>within 20%</th><th>headline</th><th>source</th></tr>{rows}</table>"
        f"<h2>Prevalence by age and sex</h2>{imgs}", encoding="utf-8")


def run_population(n: int, seed: int, processes: int, out: Path) -> float:
    cmd = [sys.executable, "-m", "simulator.cli", "run", "-p", str(n), "-s", str(seed),
           "--out", str(out), "--processes", str(processes), "--reference-date", END_DATE,
           "--years-of-history", "10", "--no-progress"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"run failed:\n{proc.stderr[-4000:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-p", "--population", type=int, default=10000)
    ap.add_argument("-s", "--seed", type=int, default=1)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--csv", type=Path, help="measure this run's csv folder instead of running")
    ap.add_argument("--end-date", default=END_DATE, help="the run's end date (with --csv)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "realism.json")
    args = ap.parse_args()
    targets = load_targets()
    with tempfile.TemporaryDirectory() as tmp:
        if args.csv:
            csv_dir, note = args.csv, f"measured from {args.csv}"
        else:
            seconds = run_population(args.population, args.seed, args.processes, Path(tmp))
            csv_dir = Path(tmp) / "csv"
            note = (f"{args.population} patients, seed {args.seed}, embedded library, end date "
                    f"{END_DATE}, {seconds:.0f} s on {args.processes} process(es)")
        result = {"run": note, **measure(load_population(csv_dir, args.end_date), targets)}
    for f in result["figures"]:
        mark = "ok " if f["within_20pct"] else "OFF"
        print(f"{mark} {f['name']:<32} simulated {f['simulated']:>7}  target {f['target']:>6}"
              f"{'  (headline)' if f['headline'] else ''}")
    print(f"headline figures within 20%: {result['headline_within_20pct']} of "
          f"{result['headline_figures']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    write_html(result, targets, args.out.with_suffix(".html"))
    print(f"wrote {args.out} and {args.out.with_suffix('.html')}")


if __name__ == "__main__":
    main()
