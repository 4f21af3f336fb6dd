"""Replicating ACTG 320's control arm: "DP baseline + DP learned course" against the real arms.

ACTG 320 (Hammer et al., N Engl J Med 1997;337:725-733): zidovudine + lamivudine (control,
577 patients in the public data) against the same plus indinavir (574); endpoint: time to
an AIDS-defining event or death. The paper's hazard ratio of the indinavir arm is 0.50
(95% CI 0.33-0.76).

For each seed (variant ``full``):

1. the DP baseline generator (:class:`learned.baseline.MixtureGenerator`) is fitted on the
   real control arm's covariates (age, CD4, sex, Karnofsky score; public bins below) at
   epsilon 1, delta 1e-5;
2. the DP course model is learned from the same patients (``learned.learn.learn``, what
   ``carecourse learn --data actg320`` does, on the control arm: a competing-risks hazard
   of AIDS and death given age, sex, CD4 and Karnofsky score) at epsilon 1, delta 1e-5.
   **Each model gets epsilon 1**; the arm as a whole spends both on the same patients,
   composed in RDP (``learned.ledger.compose``): the JSON reports that total
   (``epsilon_total_per_arm``);
3. a protocol (baseline source: the saved generator; standard of care: the derived
   module) builds a synthetic control arm of the real arm's size through
   :func:`simulator.cohort.run_cohort`, the cohort ``carecourse trial build`` runs (the
   CDISC and FHIR files are not written: they do not change the figures);
4. the arms are compared with :mod:`learned.arms`: Cox HR of the synthetic against the real
   control (95% CI), HR of the real treatment arm against the synthetic control, and the
   largest gap between the Kaplan-Meier curves over 300 days.

``heldout``: the same, learning on a random half of the real control arm and comparing with
the other half (the synthetic arm as large as that half). ``hybrid`` (on the held-out
seeds): a real control arm cut to a third of the control arm, drawn from the half the models
never saw, plus the held-out synthetic arm through the commensurate prior
(:mod:`learned.borrowing`); reported against that third alone (HR, 95% interval width).

Two ablations say where the gap comes from: ``course_only`` (the real control patients'
own covariates, as a table source, with the DP course: what the course model alone costs)
and ``nodp`` (both models fitted without privacy: what the privacy costs); keys
``course_only_...`` and ``nodp_...``.

The protocol's follow-up: accrual uniform over the trial's enrolment period (January 1996 to
January 1997), 365 days each, no data cut-off and no dropout; the comparison then censors
the synthetic arm as the real arm it is compared with is censored
(:func:`learned.arms.match_censoring`: times drawn from the real arm's reverse Kaplan-Meier
curve). A stated accrual and cut-off does not give ACTG 320's follow-up: the earlier
protocol (cut-off 1997-04-09, a median potential follow-up of the paper's 38 weeks)
followed 24% of the synthetic patients past day 350 against 0.9% of the real ones, 3.4
times the real person-time after day 300 (``diagnose_actg320.py``). The figures without
the matching (the synthetic arm followed a full year) are reported as ``..._unmatched``.

    python benchmarks/replicate_actg320.py [--seeds 20] [--heldout-seeds 20]
        [--course-only-seeds 10] [--nodp-seeds 10] [--fresh]

Each finished (variant, seed) is appended to ``results/.replicate_actg320_runs.jsonl``, so
an interrupted run resumes where it stopped. Writes ``results/replicate_actg320.json``
(flat keys) and ``replicate_actg320.png`` (Kaplan-Meier curves of every seed's synthetic
arm against the real arms, and each seed's HR with its CI).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from fidelity import load_table  # noqa: E402

from learned.arms import (  # noqa: E402
    Arm,
    cox_hazard_ratio,
    km_max_gap,
    km_summary,
    match_censoring,
)
from learned.baseline import Categorical, MixtureConfig, MixtureGenerator, Numeric, Schema  # noqa: E402

EPSILON, DELTA = 1.0, 1e-5
PUBLISHED_HR, PUBLISHED_LOW, PUBLISHED_HIGH = 0.50, 0.33, 0.76
HORIZON = 300.0
#: How the synthetic arm is censored (runs recorded under another way are not reused).
CENSORING = "matched to the real arm"
COURSE_COVARIATES = ("age", "sex", "cd4", "karnof")
#: Public bins: age from the trial's minimum of 16 (edges from 13 as in fidelity.py), CD4 up
#: to twice the screening bound of 200 (the baseline count can exceed the screening one),
#: the documented categories.
SCHEMA = Schema((
    Numeric("age", (13.0, 25.0, 30.0, 35.0, 40.0, 45.0, 50.0, 55.0, 80.0)),
    Numeric("cd4", (0.0, 10.0, 25.0, 50.0, 75.0, 100.0, 150.0, 200.0, 400.0)),
    Categorical("sex", ("1", "2")),
    Categorical("karnof", ("70", "80", "90", "100")),
))

PROTOCOL = """\
name: ACTG 320 synthetic control (seed {seed})
seed: {seed}
arm: {{size: {size}, name: ZDV + 3TC, code: CTRL}}
baseline:
  source: {source}
  age: age
  sex: {{column: sex, values: {{1: M, 2: F}}}}
  attributes: [cd4, karnof]
eligibility:
  inclusion:
    - {{condition_type: Age, operator: ">=", quantity: 16, unit: years}}
index: {{event: state, module: actg320, state: randomized, start: 1996-01-01, end: 1997-01-31}}
follow_up:
  duration: {{quantity: 365, unit: days}}
{cutoff}standard_of_care: {{modules: [actg320], modules_dir: {modules}}}
endpoints:
  - paramcd: AIDSDTH
    name: Time to AIDS-defining event or death
    type: time_to_event
    events: [{{state: aids, module: actg320}}, {{death: true}}]
"""


def real_arms() -> tuple[pd.DataFrame, pd.DataFrame]:
    """(control, treatment) rows: covariates, ``time`` (days) and ``event`` (0/1)."""
    from learned.datasets import load_dataset

    t = load_table()  # in the order of load_dataset's patients
    t["event"] = t["event"].astype(int)
    t["patient_id"] = [str(i) for i in load_dataset("actg320").baseline.index]
    return t[t["tx"] == "0"].reset_index(drop=True), t[t["tx"] == "1"].reset_index(drop=True)


def arm(name: str, rows: pd.DataFrame) -> Arm:
    return Arm(name, rows["time"].to_numpy(dtype=float), rows["event"].to_numpy(dtype=int),
               rows[list(COURSE_COVARIATES)].reset_index(drop=True))


def build_arm(work: Path, seed: int, size: int, variant: str = "full",
              cutoff: str | None = None) -> tuple[pd.DataFrame, Any]:
    """The synthetic arm of the models fitted in ``work`` (see :func:`synthesize`): its
    subjects' covariates, ``time`` and ``event``, and the cohort's CONSORT counts."""
    from learned.trial_inputs import generator_source
    from simulator.cohort import (
        TableSource,
        cohort_programs,
        protocol_library,
        read_baseline_table,
        run_cohort,
    )
    from simulator.engine import compile_library
    from simulator.population import load_extensions
    from simulator.protocol import load_protocol

    path = work / f"protocol-{cutoff or 'none'}.yaml"
    source = f"{{file: {work / 'rows.csv'}}}" if variant == "course_only" else \
        f"{{generator: {work / 'generator'}}}"
    path.write_text(PROTOCOL.format(seed=seed, size=size, source=source,
                                    modules=work / "course",
                                    cutoff=f"  data_cutoff: {cutoff}\n" if cutoff else ""))
    protocol = load_protocol(path)
    load_extensions(("learned.runtime",))
    library = protocol_library(protocol)
    programs = cohort_programs(protocol, library, compile_library(library))
    baseline = TableSource(read_baseline_table(work / "rows.csv"), "real covariates") \
        if variant == "course_only" else generator_source(work / "generator")
    result = run_cohort(protocol, baseline, programs, progress=False)
    ep = [s.endpoints["AIDSDTH"] for s in result.subjects]
    synth = pd.DataFrame([{**{c: s.covariates[c] for c in COURSE_COVARIATES},
                           "time": e.value, "event": int(not e.censored)}
                          for s, e in zip(result.subjects, ep, strict=True)])
    return synth, result.consort


def synthesize(train_ids: list[str], size: int, seed: int, work: Path, args: argparse.Namespace,
               variant: str = "full", cutoff: str | None = None
               ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Fit both models on the patients ``train_ids`` and build a synthetic arm of ``size``.
    ``course_only``: the real patients' covariates (a table source) with the DP course;
    ``nodp``: both models fitted without privacy (what DP costs). ``cutoff``: a data
    cut-off date for the protocol (none: every patient followed 365 days)."""
    from learned.datasets import load_dataset
    from learned.evaluate import select_patients
    from learned.learn import PUBLIC, LearnConfig, learn
    from learned.ledger import Spend, compose
    from learned.privacy import Mechanism

    timing: dict[str, float] = {}
    data = load_dataset("actg320")
    train = select_patients(data, train_ids)
    rows = train.baseline.reset_index(drop=True)
    t = time.perf_counter()
    private = variant != "nodp"
    gen = MixtureGenerator(SCHEMA, MixtureConfig(epochs=args.generator_epochs))
    gen.fit(rows, epsilon=EPSILON if private else None, delta=DELTA, seed=seed,
            source="ACTG 320 control")
    gen.save(work / "generator")
    rows[[c.name for c in SCHEMA.columns]].to_csv(work / "rows.csv", index=False)
    timing["generator_s"] = time.perf_counter() - t
    facts = PUBLIC["actg320"]
    t = time.perf_counter()
    course = learn(train, LearnConfig(epsilon=EPSILON if private else math.inf, delta=DELTA,
                                      covariates=tuple(facts.covariates[c]
                                                       for c in COURSE_COVARIATES),
                                      bin_days=facts.bin_days, max_bins=facts.bins,
                                      epochs=args.course_epochs, seed=seed, device="cpu"),
                   work / "course", ledger_dir=work / "ledgers", facts=facts, progress=False,
                   echo=lambda _s: None)
    timing["course_s"] = time.perf_counter() - t
    total = None
    if private:
        assert gen.report is not None and gen.report.noise_multiplier is not None
        total = compose([
            Spend("generator", gen.report.epsilon or EPSILON, DELTA, "rdp",
                  (Mechanism("DP-SGD", gen.report.noise_multiplier,
                             float(gen.report.sample_rate or 1.0), gen.report.steps),)),
            Spend("course", course.epsilon, DELTA, "rdp", tuple(course.training.mechanisms))])
    t = time.perf_counter()
    synth, c = build_arm(work, seed, size, variant, cutoff)
    timing["cohort_s"] = time.perf_counter() - t
    assert gen.report is not None
    info = {"epsilon_generator": gen.report.epsilon,
            "epsilon_course": course.epsilon if private else None,
            "epsilon_total": total.epsilon if total else None,
            "delta_total": total.delta if total else None,
            "generated": c.generated, "eligible": c.eligible, "enrolled": c.enrolled,
            **timing}
    return synth, info


def matched(synth: pd.DataFrame, real: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The synthetic arm censored as ``real`` is (the comparison's own draws)."""
    m = match_censoring(arm("synthetic", synth), arm("real", real),
                        np.random.default_rng([20261, seed]))
    return synth.assign(time=m.time, event=m.event)


def compare(synth: pd.DataFrame, real: pd.DataFrame, treatment: pd.DataFrame
            ) -> dict[str, Any]:
    s, r, tr = arm("synthetic", synth), arm("real control", real), arm("treatment", treatment)
    h = cox_hazard_ratio(s, r)
    ht = cox_hazard_ratio(tr, s)
    gap = km_max_gap(km_summary(s), km_summary(r), HORIZON)
    return {"hr_synth_vs_real": h.hr, "hr_synth_vs_real_low": h.low,
            "hr_synth_vs_real_high": h.high, "ci_contains_1": h.ci_contains_1,
            "hr_trt_vs_synth": ht.hr, "hr_trt_vs_synth_low": ht.low,
            "hr_trt_vs_synth_high": ht.high,
            "trt_hr_in_published_ci": PUBLISHED_LOW <= ht.hr <= PUBLISHED_HIGH,
            "km_max_gap": gap, "synthetic_events": s.events, "real_events": r.events}


def hybrid(synth: pd.DataFrame, third: pd.DataFrame, treatment: pd.DataFrame
           ) -> dict[str, Any]:
    from learned.borrowing import commensurate_borrowing

    s, r, tr = arm("synthetic", synth), arm("real third", third), arm("treatment", treatment)
    b = commensurate_borrowing(tr, r, s)
    alone = cox_hazard_ratio(tr, r)
    return {"hybrid_hr": b.hr, "hybrid_low": b.low, "hybrid_high": b.high,
            "hybrid_ci_width": b.high - b.low, "third_hr": alone.hr, "third_low": alone.low,
            "third_high": alone.high, "third_ci_width": alone.high - alone.low,
            "hybrid_effective_borrowed": b.effective_borrowed,
            "hybrid_p_commensurate": b.p_commensurate, "third_n": r.n}


def run_one(variant: str, seed: int, control: pd.DataFrame, treatment: pd.DataFrame,
            args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    rng = np.random.default_rng([20260, seed])
    ids = control["patient_id"].tolist()
    if variant != "heldout":
        train_ids, real = ids, control
    else:
        order = rng.permutation(len(control))
        half = len(control) // 2
        train_ids = [ids[i] for i in order[:half]]
        real = control.iloc[order[half:]].reset_index(drop=True)
    with tempfile.TemporaryDirectory(prefix="replicate-") as tmp:
        synth, info = synthesize(train_ids, len(real), seed, Path(tmp), args, variant)
    unmatched = compare(synth, real, treatment)
    synth = matched(synth, real, seed)
    out: dict[str, Any] = {"variant": variant, "seed": seed, **info,
                           **compare(synth, real, treatment),
                           **{f"{k}_unmatched": v for k, v in unmatched.items()
                              if k in ("hr_synth_vs_real", "synthetic_events", "km_max_gap")}}
    if variant == "heldout":
        third = real.iloc[rng.permutation(len(real))[:round(len(control) / 3)]]
        out.update(hybrid(synth, third, treatment))
    out["seconds"] = time.perf_counter() - t0
    out["synthetic"] = {"time": synth["time"].round(3).tolist(),
                        "event": synth["event"].tolist()}
    out["settings"] = {"generator_epochs": args.generator_epochs,
                       "course_epochs": args.course_epochs, "censoring": CENSORING}
    return out


def summarize(runs: list[dict[str, Any]], control: pd.DataFrame, treatment: pd.DataFrame
              ) -> dict[str, Any]:
    out: dict[str, Any] = {}
    real_hr = cox_hazard_ratio(arm("treatment", treatment), arm("real control", control))
    out.update(hr_trt_vs_real=real_hr.hr, hr_trt_vs_real_low=real_hr.low,
               hr_trt_vs_real_high=real_hr.high, published_hr=PUBLISHED_HR,
               published_low=PUBLISHED_LOW, published_high=PUBLISHED_HIGH,
               epsilon_per_model=EPSILON, delta_per_model=DELTA, km_horizon_days=HORIZON)
    for variant, prefix in (("full", ""), ("heldout", "heldout_"),
                            ("course_only", "course_only_"), ("nodp", "nodp_")):
        rs = [r for r in runs if r["variant"] == variant]
        if not rs:
            continue

        def med(key: str, rs: list[dict[str, Any]] = rs) -> float:
            return float(np.median([r[key] for r in rs]))

        def share(key: str, rs: list[dict[str, Any]] = rs) -> float:
            return float(np.mean([bool(r[key]) for r in rs]))

        out.update({
            f"{prefix}seeds": len(rs),
            f"{prefix}hr_synth_vs_real_median": med("hr_synth_vs_real"),
            f"{prefix}hr_synth_vs_real_q10": float(np.quantile(
                [r["hr_synth_vs_real"] for r in rs], 0.1)),
            f"{prefix}hr_synth_vs_real_q90": float(np.quantile(
                [r["hr_synth_vs_real"] for r in rs], 0.9)),
            f"{prefix}ci_contains_1_share": share("ci_contains_1"),
            f"{prefix}hr_trt_vs_synth_median": med("hr_trt_vs_synth"),
            f"{prefix}trt_hr_in_published_ci_share": share("trt_hr_in_published_ci"),
            f"{prefix}km_max_gap_median": med("km_max_gap"),
            f"{prefix}synthetic_events_median": med("synthetic_events"),
            f"{prefix}hr_synth_vs_real_unmatched_median": med("hr_synth_vs_real_unmatched"),
            f"{prefix}synthetic_events_unmatched_median": med("synthetic_events_unmatched"),
            f"{prefix}km_max_gap_unmatched_median": med("km_max_gap_unmatched"),
            f"{prefix}real_events": med("real_events"),
            f"{prefix}seconds_per_seed_median": med("seconds"),
            f"{prefix}eligible_share_median": float(np.median(
                [r["eligible"] / r["generated"] for r in rs])),
        })
        if variant != "nodp":
            # course_only uses the course model alone (the generator is fitted, not used).
            out[f"{prefix}epsilon_total_per_arm_median"] = med(
                "epsilon_course" if variant == "course_only" else "epsilon_total")
        if variant == "heldout":
            out.update({
                "hybrid_seeds": len(rs),
                "hybrid_third_n": rs[0]["third_n"],
                "hybrid_hr_median": med("hybrid_hr"),
                "hybrid_ci_width_median": med("hybrid_ci_width"),
                "hybrid_third_hr_median": med("third_hr"),
                "hybrid_third_ci_width_median": med("third_ci_width"),
                "hybrid_width_ratio_median": float(np.median(
                    [r["hybrid_ci_width"] / r["third_ci_width"] for r in rs])),
                "hybrid_effective_borrowed_median": med("hybrid_effective_borrowed"),
                "hybrid_hr_in_published_ci_share": float(np.mean(
                    [PUBLISHED_LOW <= r["hybrid_hr"] <= PUBLISHED_HIGH for r in rs])),
                "hybrid_third_hr_in_published_ci_share": float(np.mean(
                    [PUBLISHED_LOW <= r["third_hr"] <= PUBLISHED_HIGH for r in rs])),
            })
    if "hr_synth_vs_real_median" in out:
        out.update(
            bar_hr_median_in_0_8_1_25=0.8 <= out["hr_synth_vs_real_median"] <= 1.25,
            bar_ci_contains_1_share_ge_0_9=out["ci_contains_1_share"] >= 0.9,
            bar_trt_hr_in_published_ci_share_ge_0_8=out["trt_hr_in_published_ci_share"] >= 0.8,
            bar_km_max_gap_median_lt_0_05=out["km_max_gap_median"] < 0.05)
    return out


def picture(runs: list[dict[str, Any]], control: pd.DataFrame, treatment: pd.DataFrame,
            path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    for ax, variant, title in ((axes[0], "full", "learned on the whole control arm"),
                               (axes[1], "heldout", "learned on half, against the other half")):
        rs = [r for r in runs if r["variant"] == variant]
        for i, r in enumerate(rs):
            s = km_summary(Arm("s", np.asarray(r["synthetic"]["time"]),
                               np.asarray(r["synthetic"]["event"])))
            ax.step(s.timeline, s.survival, where="post", color="#1f77b4", alpha=0.25, lw=0.8,
                    label=f"synthetic control ({len(rs)} seeds)" if i == 0 else None)
        for rows, name, colour in ((control, "real control (ZDV + 3TC)", "black"),
                                   (treatment, "real treatment (+ indinavir)", "#d62728")):
            k = km_summary(arm(name, rows))
            ax.step(k.timeline, k.survival, where="post", color=colour, lw=1.8,
                    label=f"{name}, n={k.n}")
        ax.axvline(HORIZON, color="#999", ls=":", lw=0.8)
        ax.set_ylim(0.6, 1.01)
        ax.set_xlabel("days from randomization")
        ax.set_ylabel("free of AIDS and alive")
        ax.set_title(title, fontsize=10)
        ax.legend(loc="lower left", fontsize=8)
        ax.grid(alpha=0.3)
    ax = axes[2]
    for j, (variant, colour) in enumerate((("full", "#1f77b4"), ("heldout", "#ff7f0e"))):
        rs = sorted((r for r in runs if r["variant"] == variant), key=lambda r: r["seed"])
        x = np.arange(len(rs)) + 0.3 * j
        hr = np.array([r["hr_synth_vs_real"] for r in rs])
        lo = np.array([r["hr_synth_vs_real_low"] for r in rs])
        hi = np.array([r["hr_synth_vs_real_high"] for r in rs])
        if len(rs):
            ax.errorbar(x, hr, yerr=[hr - lo, hi - hr], fmt="o", ms=3, color=colour,
                        label=f"{variant}: HR synthetic vs real control")
    ax.axhline(1.0, color="black", lw=0.8)
    for y in (0.8, 1.25):
        ax.axhline(y, color="#999", ls=":", lw=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("seed")
    ax.set_title("Cox HR with 95% CI (dotted: the 0.8-1.25 bar of the median)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=20, help="seeds of the main variant")
    ap.add_argument("--heldout-seeds", type=int, default=20,
                    help="seeds of the held-out and hybrid variants")
    ap.add_argument("--course-only-seeds", type=int, default=10,
                    help="seeds of the ablation with the real covariates and the DP course")
    ap.add_argument("--nodp-seeds", type=int, default=10,
                    help="seeds of the ablation without privacy")
    ap.add_argument("--generator-epochs", type=int, default=200)
    ap.add_argument("--course-epochs", type=int, default=30)
    ap.add_argument("--fresh", action="store_true",
                    help="ignore the runs recorded by earlier invocations")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "replicate_actg320.json")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    control, treatment = real_arms()
    cache = args.out.parent / f".{args.out.stem}_runs.jsonl"
    settings = {"generator_epochs": args.generator_epochs, "course_epochs": args.course_epochs,
                "censoring": CENSORING}
    done: dict[tuple[str, int], dict[str, Any]] = {}
    if cache.is_file() and not args.fresh:
        for line in cache.read_text().splitlines():
            r = json.loads(line)
            if r.get("settings") == settings:
                done[(r["variant"], r["seed"])] = r
    elif args.fresh:
        cache.unlink(missing_ok=True)
    todo = [("full", s) for s in range(args.seeds)] + \
        [("heldout", s) for s in range(args.heldout_seeds)] + \
        [("course_only", s) for s in range(args.course_only_seeds)] + \
        [("nodp", s) for s in range(args.nodp_seeds)]
    t0 = time.perf_counter()
    bar = tqdm(todo, desc="replications", unit="seed")
    for variant, seed in bar:
        bar.set_postfix(variant=variant, seed=seed)
        if (variant, seed) in done:
            continue
        r = run_one(variant, seed, control, treatment, args)
        done[(variant, seed)] = r
        with cache.open("a") as f:
            f.write(json.dumps(r) + "\n")
    runs = [done[k] for k in todo]
    figures = summarize(runs, control, treatment)
    figures["wall_seconds_this_invocation"] = time.perf_counter() - t0
    # The runs' own times, resumed ones included (wall time on a shared machine).
    figures["seconds_all_runs"] = float(sum(r["seconds"] for r in runs))
    figures["seconds_full_and_heldout"] = float(sum(r["seconds"] for r in runs
                                                    if r["variant"] in ("full", "heldout")))
    figures.update({k: v for k, v in settings.items()})
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    picture(runs, control, treatment, args.out.with_suffix(".png"))
    for k, v in figures.items():
        print(f"{k}: {v:.4g}" if isinstance(v, float) and not isinstance(v, bool) else
              f"{k}: {v}")
    if "epsilon_total_per_arm_median" in figures:
        print(f"privacy: each model (baseline generator, course) gets epsilon {EPSILON:g} at "
              f"delta {DELTA:g}; both read the same patients, so one synthetic arm spends "
              f"their RDP composition, epsilon {figures['epsilon_total_per_arm_median']:.3f} "
              f"at delta {2 * DELTA:g} (the epsilon is not split)")
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
