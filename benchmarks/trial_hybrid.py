"""Operating characteristics of the hybrid control arm (``trial compare --hybrid``) on
simulated trials where the truth is known.

Each replication draws a treatment arm (200 patients, hazard ratio 0.5 against control,
the ACTG 320 trial's published effect), a small real control arm (70 patients: about a
third of a 200-patient control arm) and a synthetic arm (300 patients) whose hazard is
``synthetic_hr`` times the real control's; exponential times with a control mean of 300
days, censored at 365 days. For each ``synthetic_hr`` it reports, over the replications:
the median share of the synthetic arm borrowed (and in patients), how often the 95%
interval covers the true hazard ratio 0.5 (hybrid, real control alone, naive pooling),
the hybrid interval's width relative to the real-control-only one, and the median
estimated hazard ratio.

    python benchmarks/trial_hybrid.py [--reps 20] [--seed 1]

Figures are printed and written to benchmarks/results/trial_hybrid.json (flat keys, e.g.
``borrowed_share_median_s1_0`` for synthetic_hr 1.0) and a picture to
benchmarks/results/trial_hybrid.png.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from learned.arms import Arm
from learned.borrowing import commensurate_borrowing

HERE = Path(__file__).resolve().parent
TRUE_HR = 0.5
SCENARIOS = (1.0, 1.2, 1.5, 2.0, 3.0)
N_TREATMENT, N_REAL, N_SYNTHETIC = 200, 70, 300
CONTROL_MEAN, HORIZON = 300.0, 365.0


def arm(name: str, n: int, hazard: float, rng: np.random.Generator) -> Arm:
    t = rng.exponential(1.0 / hazard, n)
    return Arm(name, np.minimum(t, HORIZON), (t <= HORIZON).astype(float))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    out: dict[str, float | int | str] = {"reps": args.reps, "true_hr": TRUE_HR,
                                         "n_treatment": N_TREATMENT, "n_real_control": N_REAL,
                                         "n_synthetic": N_SYNTHETIC}
    t0 = time.perf_counter()
    rows = []
    bar = tqdm(total=len(SCENARIOS) * args.reps, unit="trials")
    for s_hr in SCENARIOS:
        key = f"s{s_hr:.1f}".replace(".", "_")
        res = []
        for k in range(args.reps):
            rng = np.random.default_rng([args.seed, int(s_hr * 10), k])
            base = 1.0 / CONTROL_MEAN
            r = commensurate_borrowing(arm("treatment", N_TREATMENT, base * TRUE_HR, rng),
                                       arm("real control", N_REAL, base, rng),
                                       arm("synthetic", N_SYNTHETIC, base * s_hr, rng))
            res.append(r)
            bar.update(1)
        share = np.array([r.borrowed_share for r in res])
        width = np.array([r.ci_width / (r.real_only.high - r.real_only.low) for r in res])
        figures = {
            "borrowed_share_median": float(np.median(share)),
            "effective_borrowed_mean": float(np.mean([r.effective_borrowed for r in res])),
            "coverage_hybrid": float(np.mean([r.low <= TRUE_HR <= r.high for r in res])),
            "coverage_real_only": float(np.mean([r.real_only.low <= TRUE_HR <= r.real_only.high
                                                 for r in res])),
            "coverage_pooled": float(np.mean([r.pooled.low <= TRUE_HR <= r.pooled.high
                                              for r in res])),
            "width_ratio_median": float(np.median(width)),
            "hr_hybrid_median": float(np.median([r.hr for r in res])),
            "hr_real_only_median": float(np.median([r.real_only.hr for r in res])),
            "hr_pooled_median": float(np.median([r.pooled.hr for r in res])),
        }
        for name, v in figures.items():
            out[f"{name}_{key}"] = round(v, 4)
        rows.append((s_hr, figures))
    bar.close()
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"{'synthetic HR':>12} {'borrowed':>9} {'patients':>9} {'cover hyb':>9} "
          f"{'cover real':>10} {'cover pool':>10} {'width':>6} {'HR hyb':>7} {'HR real':>7} "
          f"{'HR pool':>7}")
    for s_hr, f in rows:
        print(f"{s_hr:12.1f} {f['borrowed_share_median']:9.2f} "
              f"{f['effective_borrowed_mean']:9.1f} {f['coverage_hybrid']:9.2f} "
              f"{f['coverage_real_only']:10.2f} {f['coverage_pooled']:10.2f} "
              f"{f['width_ratio_median']:6.2f} {f['hr_hybrid_median']:7.3f} "
              f"{f['hr_real_only_median']:7.3f} {f['hr_pooled_median']:7.3f}")
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    (results / "trial_hybrid.json").write_text(json.dumps(out, indent=2) + "\n")
    picture(rows, results / "trial_hybrid.png")
    print(f"wrote {results / 'trial_hybrid.json'} and trial_hybrid.png "
          f"({out['seconds']} s)")


def picture(rows: list[tuple[float, dict[str, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [math.log(s) for s, _ in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(x, [f["borrowed_share_median"] for _, f in rows], "o-", label="borrowed share")
    a.plot(x, [f["width_ratio_median"] for _, f in rows], "s-",
           label="interval width / real control only")
    a.set_xlabel("log hazard ratio, synthetic vs real control")
    a.set_ylim(0, 1.1)
    a.legend(fontsize=8)
    a.grid(alpha=0.3)
    for key, label in (("coverage_hybrid", "hybrid"), ("coverage_real_only", "real only"),
                       ("coverage_pooled", "pooled")):
        b.plot(x, [f[key] for _, f in rows], "o-", label=label)
    b.axhline(0.95, color="#999", ls="--", lw=1)
    b.set_xlabel("log hazard ratio, synthetic vs real control")
    b.set_ylabel(f"coverage of the true HR {TRUE_HR}")
    b.set_ylim(0, 1.05)
    b.legend(fontsize=8)
    b.grid(alpha=0.3)
    fig.suptitle("Commensurate-prior hybrid control: borrowing and coverage", fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    main()
