"""Why a synthetic ACTG 320 control arm has more events than the real one: where they come from.

Three suspects, each measured against the real control arm (577 patients, 63 events):

1. **follow-up**: the censoring of a protocol with a stated accrual and data cut-off
   (``stated_``) and of the arm censored as the real one is (``matched_``, see
   ``learned.arms.match_censoring``) against the real censoring times: quantiles, the share
   followed past 300 and 350 days, events and person-time per 60-day band;
2. **the course model's baseline hazard**: the life-table hazard of the real arm per 30-day
   bin against the learned model's (averaged over the real patients' covariates), with and
   without privacy;
3. **the baseline generator**: real against generated covariates (CD4 quantiles and tail,
   CD4 by Karnofsky score, age), and the one-year risk the no-privacy course model gives
   each set of covariates (so the generator's share of the excess is read on one scale).

    python benchmarks/diagnose_actg320.py [--seeds 5]

Prints the figures and writes ``results/diagnose_actg320.json`` (flat keys).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import replicate_actg320 as rep  # noqa: E402

#: The data cut-off of the protocol the benchmark had before censoring was matched: with
#: uniform accrual over January 1996 to January 1997, a median potential follow-up of the
#: paper's 38 weeks.
STATED_CUTOFF = "1997-04-09"

BANDS = ((0, 60), (60, 120), (120, 180), (180, 240), (240, 300), (300, 366))


def bands(time: np.ndarray, event: np.ndarray) -> dict[str, float]:
    """Events, person-years and the hazard (per year) in each band."""
    out: dict[str, float] = {}
    for a, b in BANDS:
        ev = int(((event == 1) & (time > a) & (time <= b)).sum())
        py = float(np.clip(time - a, 0, b - a).sum()) / 365.25
        out.update({f"events_{a}_{b}": ev, f"person_years_{a}_{b}": py,
                    f"hazard_{a}_{b}": ev / py if py else math.nan})
    return out


def followup(time: np.ndarray, event: np.ndarray) -> dict[str, float]:
    cens = time[event == 0]
    q = np.quantile(cens, [0.1, 0.25, 0.5, 0.75, 0.9])
    return {"censor_q10": q[0], "censor_q25": q[1], "censor_median": q[2], "censor_q75": q[3],
            "censor_q90": q[4], "share_followed_300": float((time >= 300).mean()),
            "share_followed_350": float((time >= 350).mean()), "mean_time": float(time.mean()),
            "events": int(event.sum()), **bands(time, event)}


def life_table(rows: pd.DataFrame, width: float = 30.0, bins: int = 12) -> np.ndarray:
    """Per bin, the discrete hazard of AIDS or death among those at risk at its start."""
    t, e = rows["time"].to_numpy(float), rows["event"].to_numpy(int)
    h = np.zeros(bins)
    for j in range(bins):
        at_risk = t > j * width
        ev = at_risk & (t <= (j + 1) * width) & (e == 1)
        h[j] = ev.sum() / max(at_risk.sum(), 1)
    return h


def model_hazard(card: Path, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(per-bin hazard of leaving 'randomized' averaged over ``rows``' covariates, each
    row's chance of leaving within the modelled bins)."""
    from learned.covariates import encode_frame
    from learned.runtime import load_tables

    tables = load_tables(card)
    x = encode_frame(rows.astype({"sex": str, "karnof": str}), tables.covariates, "rows")
    hs = [1.0 - tables.hazards("randomized", tuple(r))[:, 0] for r in x]
    risk = [sum(tables.exit_distribution("randomized", tuple(r)).values()) for r in x]
    return np.mean(hs, axis=0), np.asarray(risk)


def covariate_summary(rows: pd.DataFrame) -> dict[str, float]:
    cd4 = rows["cd4"].astype(float)
    k = rows["karnof"].astype(str)
    q = np.quantile(cd4, [0.1, 0.25, 0.5, 0.75, 0.9])
    return {"cd4_q10": q[0], "cd4_q25": q[1], "cd4_median": q[2], "cd4_q75": q[3],
            "cd4_q90": q[4], "cd4_share_below_25": float((cd4 < 25).mean()),
            "cd4_share_below_50": float((cd4 < 50).mean()),
            "cd4_share_above_200": float((cd4 > 200).mean()),
            "cd4_mean_karnof_70_80": float(cd4[k.isin(["70", "80"])].mean()),
            "cd4_mean_karnof_90_100": float(cd4[k.isin(["90", "100"])].mean()),
            "share_karnof_70_80": float(k.isin(["70", "80"]).mean()),
            "age_median": float(rows["age"].astype(float).median()),
            "age_q90": float(rows["age"].astype(float).quantile(0.9))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--generator-epochs", type=int, default=200)
    ap.add_argument("--course-epochs", type=int, default=30)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "diagnose_actg320.json")
    args = ap.parse_args()
    import torch

    from learned.baseline import load_generator

    torch.set_num_threads(1)
    control, _treatment = rep.real_arms()
    ids = control["patient_id"].tolist()
    real_cov = control[list(rep.COURSE_COVARIATES)]
    out: dict[str, Any] = {"real_" + k: v for k, v in
                           followup(control["time"].to_numpy(float),
                                    control["event"].to_numpy(int)).items()}
    out.update({"real_" + k: v for k, v in covariate_summary(real_cov).items()})
    real_h = life_table(control)
    per: dict[str, list[dict[str, float]]] = {"dp": [], "nodp": []}
    todo = [("nodp", 0)] + [("dp", s) for s in range(args.seeds)]
    with tempfile.TemporaryDirectory(prefix="diagnose-") as tmp:
        # The first fit (no privacy) is the common scale on which every generator's
        # covariates are scored: its chance of an event within the modelled year.
        ref_card = Path(tmp) / "nodp-0" / "course" / "models" / "actg320" / "card.json"
        for variant, seed in tqdm(todo, desc="fits", unit="fit"):
            work = Path(tmp) / f"{variant}-{seed}"
            work.mkdir()
            kind = "full" if variant == "dp" else "nodp"
            synth, _info = rep.synthesize(ids, len(control), seed, work, args, kind)
            stated, _consort = rep.build_arm(work, seed, len(control), kind, STATED_CUTOFF)
            h, risk_own = model_hazard(work / "course" / "models" / "actg320" / "card.json", real_cov)
            gen_cov = load_generator(work / "generator").sample(
                len(control), seed=seed)[list(rep.COURSE_COVARIATES)]
            m = rep.matched(synth, control, seed)
            row = {**{f"stated_{k}": v for k, v in followup(
                       stated["time"].to_numpy(float), stated["event"].to_numpy(int)).items()},
                   **{f"matched_{k}": v for k, v in followup(
                       m["time"].to_numpy(float), m["event"].to_numpy(int)).items()},
                   **covariate_summary(gen_cov),
                   "risk_real_covariates": float(model_hazard(ref_card, real_cov)[1].mean()),
                   "risk_generated_covariates": float(model_hazard(ref_card, gen_cov)[1].mean()),
                   "risk_real_covariates_own_model": float(risk_own.mean())}
            row.update({f"model_hazard_bin{j}": float(v) for j, v in enumerate(h)})
            per[variant].append(row)
    for j, v in enumerate(real_h):
        out[f"real_hazard_bin{j}"] = float(v)
    for variant, rows in per.items():
        for k in rows[0]:
            out[f"{variant}_{k}"] = float(np.median([r[k] for r in rows]))
    out["dp_seeds"] = len(per["dp"])
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    for k, v in out.items():
        print(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
