"""``carecourse learn``: train the DP transition and dwell-time model of a data set, write
its weights and model card, charge the privacy ledger, and derive a GMF module whose
transitions point to the model.

What is public and what spends budget:

- public (stated by the user, or documented for a built-in data set in :data:`PUBLIC`):
  the covariates and their bounds or levels, the bin width and number of bins, the bound
  on transitions per patient, and, when given, the states and transitions; the number of
  patients (it fixes DP-SGD's sampling rate, as in Opacus);
- spends budget: the noisy transition counts that choose a module's structure when it is
  not public (a share ``count_share`` of epsilon, and with unknown states a share of
  delta for partition selection), and DP-SGD. Both are Gaussian mechanisms composed in
  RDP (:mod:`learned.privacy`), calibrated so that together they spend at most the
  (epsilon, delta) asked for;
- free (post-processing of DP outputs): the module, its fallbacks, the pictures, and the
  card's metrics except the training loss, which is computed on the data without noise
  and is for the data owner's eyes (it is marked so in the card).

The ledger is charged with the whole (epsilon, delta) before the data is read, and
``budget`` refuses a run that would take the data set's total over it.

Output, in ``out`` (written to a temporary folder beside it and renamed into place, so a
failed run leaves nothing)::

    out/<name>.json                the derived GMF module (carecourse run --modules-dir out)
    out/models/<name>/weights.pt   the state_dict
    out/models/<name>/card.json    the model card
    out/models/<name>/training.png loss and epsilon spent by epoch
    out/models/<name>/curves.png   cumulative incidence of each exit at the reference covariates
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from learned.covariates import Covariate, encode_frame, feature_bounds, feature_names
from learned.derive import (
    START,
    Structure,
    build_module,
    dp_structure,
    fallback_probabilities,
    patient_paths,
    public_structure,
    stays,
)
from learned.events import EventData
from learned.hazard import HazardSpec, TrainResult, train
from learned.ledger import Ledger, Spend, data_fingerprint
from learned.modelfile import CARD_NAME, model_section, save_model, write_json
from learned.privacy import Mechanism, calibrate_noise, selection_threshold
from modules.errors import ConfigError, OutputError

__all__ = ["PUBLIC", "FHIR_SOURCES", "PublicFacts", "LearnConfig", "LearnResult", "learn",
           "resolve_device"]


@dataclass(frozen=True)
class PublicFacts:
    """What a built-in data set's documentation makes public: its transitions, bounds of
    its covariates, how a covariate reads from a simulated patient, and bins that span its
    follow-up (a model horizon past the follow-up would extrapolate)."""

    edges: tuple[tuple[str, str], ...]
    covariates: Mapping[str, Covariate] = field(default_factory=dict)
    sources: Mapping[str, Any] = field(default_factory=dict)
    bin_days: float = 30.0
    bins: int = 24


def _num(name: str, low: float, high: float) -> tuple[str, Covariate]:
    return name, Covariate(name, "numeric", low, high)


def _cat(name: str, *levels: str) -> tuple[str, Covariate]:
    return name, Covariate(name, "categorical", levels=levels)


#: Public facts of the built-in data sets. The transitions are those the studies define
#: (illness-death: the event, death without it, death after it). The bounds come from the
#: eligibility criteria of the trials where they set one (ACTG 320: CD4 <= 200, at least
#: three months of zidovudine, age 16 or more, Hammer et al. 1997; ACTG 175: CD4 200-500,
#: age 12 or more, Karnofsky 70 or more, Hammer et al. 1996; GBSG-2: node-positive, age up
#: to 65 at entry, Schumacher et al. 1994), else from the coding of the variables and
#: plausible clinical ranges; none is computed from the data. The bins span the follow-up
#: the papers report: ACTG 320 stopped early, at a median of 38 weeks (a year of bins);
#: ACTG 175 followed patients for a median of 143 weeks (three years); GBSG-2 about five
#: years (six of quarters); Stanford patients were followed for up to about five years,
#: most transplants and deaths in the first two.
PUBLIC: dict[str, PublicFacts] = {
    "actg320": PublicFacts(
        (("randomized", "aids"), ("randomized", "death"), ("aids", "death")),
        dict([_num("age", 16, 80), _num("cd4", 0, 200), _num("priorzdv", 3, 150),
              _cat("sex", "1", "2"), _cat("tx", "0", "1"), _cat("strat2", "0", "1"),
              _cat("karnof", "70", "80", "90", "100"), _cat("ivdrug", "1", "2", "3"),
              _cat("hemophil", "0", "1"), _cat("raceth", "1", "2", "3", "4", "5", "6")]),
        {"sex": {"attribute": "gender", "values": {"M": "1", "F": "2"}}}, 30.0, 12),
    "actg175": PublicFacts(
        (("randomized", "failure"),),
        dict([_num("age", 12, 80), _num("cd40", 200, 500), _num("cd80", 0, 3000),
              _num("wtkg", 30, 160), _num("karnof", 70, 100), _num("preanti", 0, 3000),
              _cat("gender", "0", "1"), _cat("arms", "0", "1", "2", "3"),
              _cat("treat", "0", "1"), _cat("race", "0", "1"), _cat("symptom", "0", "1"),
              _cat("str2", "0", "1"), _cat("drugs", "0", "1"), _cat("homo", "0", "1"),
              _cat("hemo", "0", "1")]),
        {"gender": {"attribute": "gender", "values": {"M": "1", "F": "0"}}}, 60.0, 18),
    "lymph_node": PublicFacts(
        (("diagnosed", "recurrence"), ("diagnosed", "death"), ("recurrence", "death")),
        dict([_num("age", 20, 80), _num("size", 0, 120), _num("nodes", 1, 50),
              _num("prog_recp", 0, 2500), _num("estrg_recp", 0, 1500),
              _cat("menopause", "1", "2"), _cat("hormone", "1", "2"),
              _cat("grade", "1", "2", "3")]), {}, 90.0, 24),
    "stanford_heart": PublicFacts(
        (("waiting", "transplant"), ("waiting", "death"), ("transplant", "death")),
        dict([_num("age", -40, 20), _num("year", 0, 7), _cat("surgery", "0", "1")]),
        # the data's age is age at acceptance minus 48 years
        {"age": {"age_plus": -48}}, 30.0, 24),
}

#: How the covariates of FHIR data (learned.fhir) read from a simulated patient.
FHIR_SOURCES: dict[str, Any] = {
    "gender": {"attribute": "gender", "values": {"M": "male", "F": "female"}},
    "race": {"attribute": "race", "values": {
        "white": "White", "black": "Black or African American", "asian": "Asian",
        "native": "American Indian or Alaska Native",
        "hawaiian": "Native Hawaiian or Other Pacific Islander", "other": "Other Race"}},
    "ethnicity": {"attribute": "ethnicity", "values": {
        "hispanic": "Hispanic or Latino", "nonhispanic": "Not Hispanic or Latino"}},
}


@dataclass(frozen=True)
class LearnConfig:
    """Everything ``carecourse learn`` is asked to do. Validated by :meth:`check`."""

    epsilon: float
    delta: float = 1e-5
    covariates: tuple[Covariate, ...] = ()
    bin_days: float = 30.0
    max_bins: int = 24
    #: Knots of the piecewise-linear baseline hazard (0: one parameter per bin).
    time_knots: int = 4
    #: "public", "dp", or "auto": public when transitions are given or documented.
    structure: str = "auto"
    states: tuple[str, ...] = ()
    edges: tuple[tuple[str, str], ...] = ()
    max_transitions: int = 4
    min_count: float = 10.0
    count_share: float = 0.2
    #: Share of delta that partition selection takes when the states are not public.
    selection_share: float = 0.5
    epochs: int = 30
    #: Patients per batch (expected, with Poisson sampling); 0: a quarter of the patients,
    #: at least 128 and at most 2048.
    batch_size: int = 0
    lr: float = 0.03
    #: Clipping bias shows before noise does: at 2, 20,000 patients leaving at 30% a month
    #: came back at 34-38% by the sixth month (long stays have the larger gradients and were
    #: clipped the most); at 5, 30-31%.
    max_grad_norm: float = 5.0
    seed: int = 0
    device: str = "auto"
    name: str | None = None
    start_age: float = 0.0
    #: state -> (system, code, display) for states recorded as conditions.
    codes: tuple[tuple[str, str, str, str], ...] = ()
    budget: float | None = None

    @property
    def private(self) -> bool:
        return math.isfinite(self.epsilon)

    def check(self) -> None:
        if not self.epsilon > 0:
            raise ConfigError(f"--epsilon must be positive (inf: no privacy), got {self.epsilon}")
        if not 0 < self.delta < 1:
            raise ConfigError(f"--delta must be between 0 and 1, got {self.delta}")
        if not self.private and self.budget is not None:
            raise ConfigError("--epsilon inf trains without privacy, which no --budget allows")
        if self.budget is not None and self.budget <= 0:
            raise ConfigError(f"--budget must be positive, got {self.budget}")
        if not self.bin_days > 0 or self.max_bins < 1:
            raise ConfigError("--bin-days must be positive and --bins at least 1")
        if not 0 <= self.time_knots <= self.max_bins:
            raise ConfigError(f"--time-knots must be between 0 (one per bin) and --bins "
                              f"({self.max_bins}), got {self.time_knots}")
        if self.structure not in ("auto", "public", "dp"):
            raise ConfigError("--structure must be public, dp or auto")
        if not 0 < self.count_share < 1 or not 0 < self.selection_share < 1:
            raise ConfigError("--count-share must be between 0 and 1")
        if self.max_transitions < 1 or self.epochs < 1 or self.batch_size < 0:
            raise ConfigError("--max-transitions and --epochs must be at least 1, --batch-size "
                              "0 (automatic) or more")
        if not self.lr > 0 or not self.max_grad_norm > 0:
            raise ConfigError("--lr and --max-grad-norm must be positive")
        if self.start_age < 0:
            raise ConfigError("--start-age must be 0 or more")
        names = [c.name for c in self.covariates]
        if len(set(names)) != len(names):
            raise ConfigError(f"a covariate is given twice: {', '.join(names)}")


@dataclass(frozen=True)
class LearnResult:
    module: Path
    card: Path
    weights: Path
    ledger: Path
    pictures: tuple[Path, ...]
    epsilon: float
    delta: float
    total_epsilon: float
    structure: Structure
    training: TrainResult


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is there, else ``cpu``; ``cuda`` without one is an
    error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available here; use --device "
                          "cpu or auto")
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda, got {device!r}")
    return device


def _prepare_out(out: Path) -> Path:
    """A fresh temporary folder beside ``out``; ``out`` must not exist or be empty."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputError(f"{out}: already exists and is not empty; carecourse learn writes a "
                          "new folder: choose another --out or remove it")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as exc:
        raise OutputError(f"{out}: cannot write there ({exc.strerror}); choose another --out") \
            from None


def _structure_plan(data: EventData, config: LearnConfig, facts: PublicFacts | None
                    ) -> tuple[str, tuple[str, ...] | None, tuple[tuple[str, str], ...]]:
    """(how, public states or None, public edges) of the structure."""
    edges = config.edges or (facts.edges if facts else ())
    how = config.structure
    if how == "auto":
        how = "public" if edges else "dp"
    if how == "public" and not edges:
        raise ConfigError("--structure public needs the transitions: give --edges A>B,B>C "
                          "(or use a built-in data set, whose transitions are documented)")
    states = config.states or (tuple(dict.fromkeys(s for e in edges for s in e)) if edges
                               else ())
    initial = data.initial_state or START
    if states and initial not in states:
        states = (initial, *states)
    return how, (states or None), edges


def _sources(covariates: Sequence[Covariate], hints: Mapping[str, Any]) -> dict[str, Any]:
    """How each covariate reads from a simulated patient, in the derived module: a hint,
    the patient's age for ``age``, else the attribute of the same name with the reference
    value as default (edit the module to set it otherwise)."""
    out: dict[str, Any] = {}
    for c in covariates:
        if c.name in hints:
            out[c.name] = hints[c.name]
        elif c.name == "age" and c.kind == "numeric":
            out[c.name] = "age"
        else:
            out[c.name] = {"attribute": c.name, "default": c.reference}
    return out


def _reference(covariates: Sequence[Covariate]) -> tuple[float, ...]:
    return tuple(v for c in covariates for v in c.encode(c.reference))


def learn(data: EventData, config: LearnConfig, out: Path | str, *,
          ledger_dir: Path | str, facts: PublicFacts | None = None,
          sources: Mapping[str, Any] | None = None, progress: bool = True,
          echo: Callable[[str], None] = print) -> LearnResult:
    """Train, write and charge (see the module's docstring). ``facts`` are a built-in data
    set's public facts; ``sources`` how covariates read from simulated patients."""
    from learned.runtime import HazardTables

    config.check()
    t0 = time.perf_counter()
    out = Path(out)
    name = config.name or data.name
    device = resolve_device(config.device)
    covariates = config.covariates
    how, public_states, edges = _structure_plan(data, config, facts)
    initial = data.initial_state or START
    patients = [str(p) for p in data.baseline.index]
    n = len(patients)
    if config.private and config.delta >= 1 / n:
        raise ConfigError(f"--delta {config.delta:g} is not below 1/patients (1/{n}): such a "
                          "delta allows releasing a patient's data outright; use a smaller one")
    x = encode_frame(data.baseline, covariates, data.name)
    public = public_structure(initial, edges) if how == "public" else None
    if public is not None and initial not in public.exits:
        raise ConfigError(f"--edges: no transition leaves the initial state {initial!r}; "
                          f"give at least one {initial}>STATE")
    spec_features = feature_names(covariates)
    spec_bounds = feature_bounds(covariates)
    tmp = _prepare_out(out)
    try:
        # --- the privacy plan, fixed before the data are read ---------------------------
        batch = min(config.batch_size or min(2048, max(128, math.ceil(n / 4))), n)
        batches = math.ceil(n / batch)
        sample_rate, steps = 1 / batches, config.epochs * batches
        prior: list[Mechanism] = []
        extra_delta = 0.0
        count_noise = 0.0
        if config.private:
            rdp_delta = config.delta
            if how == "dp":
                if public_states is None:
                    extra_delta = config.delta * config.selection_share
                    rdp_delta = config.delta - extra_delta
                z = calibrate_noise(config.epsilon * config.count_share, rdp_delta, 1.0, 1)
                prior.append(Mechanism("transition counts", z, 1.0, 1))
                count_noise = z * math.sqrt(config.max_transitions)
            noise = calibrate_noise(config.epsilon, rdp_delta, sample_rate, steps, prior=prior)
            mechanisms = (*prior, Mechanism("DP-SGD", noise, sample_rate, steps))
            spend = Spend(f"carecourse learn {name}: hazard model"
                          + (" and module structure" if how == "dp" else ""),
                          config.epsilon, config.delta, "rdp", mechanisms, extra_delta)
        else:
            noise, rdp_delta = 0.0, config.delta
            spend = Spend(f"carecourse learn {name}: hazard model without privacy",
                          math.inf, 0.0, "none")
        ledger = Ledger(ledger_dir, data_fingerprint(data), name=data.name, patients=n)
        total = ledger.reserve(spend, config.budget)

        # --- structure ----------------------------------------------------------------
        paths = patient_paths(data, max_transitions=config.max_transitions,
                              states=public_states)
        rng = np.random.default_rng(config.seed)
        if public is not None:
            structure = public
        else:
            candidates = None
            if public_states is not None:
                candidates = [(a, b) for a in public_states for b in public_states
                              if a != b and b != initial]
            if config.private:
                threshold = (max(config.min_count, 3 * count_noise) if candidates is not None
                             else max(config.min_count, selection_threshold(
                                 count_noise, extra_delta, config.max_transitions)))
            else:
                threshold = config.min_count
            structure = dp_structure(paths, initial, noise=count_noise, rng=rng,
                                     candidates=candidates, threshold=threshold)
        exits = structure.exits
        if initial not in exits:
            raise ConfigError(
                f"no transition out of the initial state {initial!r} passed the threshold "
                f"({structure.threshold:.3g} patients, noisy): at epsilon {config.epsilon:g} "
                "the data are too few to show the structure; state it as public (--edges), "
                "raise --count-share or --epsilon, or lower --max-transitions")

        # --- the model ----------------------------------------------------------------
        spec = HazardSpec(exits, config.bin_days, config.max_bins, spec_features, spec_bounds,
                          config.time_knots)
        by_patient = {p: tuple(row) for p, row in zip(patients, x.tolist(), strict=True)}
        visits = stays(paths, structure, by_patient)
        bar = _bar(config.epochs, progress)

        def tick(epoch: int, loss: float, eps: float | None) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", epsilon=f"{eps:.3f}" if eps is not None else "inf")
        result = train(visits, spec, epsilon=config.epsilon if config.private else None,
                       delta=rdp_delta, noise_multiplier=noise if config.private else None,
                       prior=prior, patients=patients, epochs=config.epochs,
                       batch_size=batch, lr=config.lr,
                       max_grad_norm=config.max_grad_norm, seed=config.seed,
                       device=device, progress=tick)
        bar.close()
        model = result.model.cpu()

        # --- files --------------------------------------------------------------------
        weights_np = {k: v.detach().numpy() for k, v in model.state_dict().items()}
        tables = HazardTables(spec, weights_np, covariates)
        ref = _reference(covariates)
        cif = {s: tables.exit_distribution(s, ref) for s in spec.states}
        model_dir = tmp / "models" / name
        rel = f"models/{name}/{CARD_NAME}"
        epsilon_spent = (result.epsilon if config.private else math.inf)
        card = _card(data, config, structure, spec, result, mechanisms=result.mechanisms,
                     extra_delta=extra_delta, how=how, device=device, cif=cif,
                     public_states=public_states, seconds=time.perf_counter() - t0,
                     fingerprint=ledger.fingerprint, events=len(data.events),
                     visits=len(visits), epsilon_spent=epsilon_spent, batch=batch)
        card = save_model(model_dir, model, card)
        pictures = _pictures(model_dir, result, tables, ref, name)
        module_sources = _sources(covariates, sources or (facts.sources if facts else {}))
        fallbacks = {s: fallback_probabilities(cif[s], config.max_bins) for s in spec.states}
        module = build_module(
            name, structure, fallbacks, model_path=rel, bin_days=config.bin_days,
            sources=module_sources, start_age=config.start_age,
            codes={c[0]: (c[1], c[2], c[3]) for c in config.codes},
            remarks=_remarks(data, config, structure, result, rel, ledger.fingerprint,
                             epsilon_spent))
        write_json(tmp / f"{name}.json", module)
        _self_check(tmp / f"{name}.json")
        _publish(tmp, out)
        tmp = None
        files = [str(out / f"{name}.json"), str(out / rel), str(out / "models" / name /
                                                                  card["weights"])]
        ledger.complete(spend.id, files)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    echo(f"learned {name} from {n} patients ({len(visits)} stays, {result.rows} "
         f"person-period rows) in {time.perf_counter() - t0:.1f} s on {device}; "
         + (f"epsilon {epsilon_spent:.3f} at delta {config.delta:g} ({how} structure); "
            f"the ledger's total for this data: epsilon {total.epsilon:.3f}, delta "
            f"{total.delta:.3g}" if config.private else "WITHOUT differential privacy"))
    return LearnResult(out / f"{name}.json", out / rel, out / "models" / name / card["weights"],
                       ledger.path, tuple(out / "models" / name / p.name for p in pictures),
                       epsilon_spent, config.delta, total.epsilon, structure, result)


def _bar(epochs: int, progress: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=epochs, unit="epoch", disable=not progress, dynamic_ncols=True,
                desc="DP-SGD")


def _card(data: EventData, config: LearnConfig, structure: Structure, spec: HazardSpec,
          result: TrainResult, *, mechanisms: Sequence[Mechanism], extra_delta: float,
          how: str, device: str, cif: Mapping[str, Mapping[str, float]],
          public_states: Sequence[str] | None, seconds: float, fingerprint: str,
          events: int, visits: int, epsilon_spent: float, batch: int) -> dict[str, Any]:
    dp_sgd = next((m for m in mechanisms if m.name == "DP-SGD"), None)
    public = ["covariates and their bounds or levels", "bin width and number of bins",
              "the bound on transitions per patient", "the number of patients"]
    if how == "public":
        public.append("the states and transitions")
    elif public_states is not None:
        public.append("the states")
    spent = ["DP-SGD training of the hazard model"]
    if how == "dp" and config.private:
        spent.append("noisy transition counts choosing the structure"
                     + ("" if public_states is not None else ", with partition selection"))
    return {
        "kind": "hazard",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": model_section(spec, config.covariates),
        "data": {"name": data.name, "fingerprint": fingerprint, "rows": events,
                 "patients": data.patients, "stays": visits,
                 "person_period_rows": result.rows, "origin": data.origin,
                 "initial_state": data.initial_state,
                 "counts_note": "rows, patients, stays and person-period rows are exact "
                                "counts, for the data owner: they are not covered by the "
                                "privacy guarantee (remove them before publishing the card)"},
        "privacy": {
            "private": config.private,
            "epsilon": epsilon_spent if math.isfinite(epsilon_spent) else None,
            "target_epsilon": config.epsilon if config.private else None,
            "delta": config.delta if config.private else None,
            "accountant": "rdp" if config.private else None,
            "mechanisms": [m.to_dict() for m in mechanisms],
            "partition_selection_delta": extra_delta,
            "noise_multiplier": dp_sgd.noise_multiplier if dp_sgd else None,
            "max_grad_norm": config.max_grad_norm if config.private else None,
            "sample_rate": dp_sgd.sample_rate if dp_sgd else None,
            "steps": dp_sgd.steps if dp_sgd else None,
            "privacy_unit": "patient (one patient's whole trajectory is one example)",
            "public": public,
            "spent_on": spent if config.private else [],
        },
        "training": {"epochs": config.epochs, "epochs_run": len(result.losses),
                     "stopped_at_budget": result.stopped_early,
                     "batch_size": batch, "lr": config.lr,
                     "optimizer": "Adam, averaged iterates of the second half" if config.private
                     else "L-BFGS", "seed": config.seed, "device": device,
                     "seconds": round(seconds, 2), "max_transitions": config.max_transitions},
        "structure": {"how": how, "transitions": [list(e) for e in structure.edges],
                      "noisy_counts": {f"{a} -> {b}": round(c, 3)
                                       for (a, b), c in structure.noisy_counts.items()},
                      "threshold": structure.threshold},
        "metrics": {
            "exit_probability_within_horizon_at_reference": {
                s: {e: round(p, 6) for e, p in d.items()} for s, d in cif.items()},
            "epsilon_by_epoch": [round(e, 6) for e in result.epsilons],
            "training_loss_by_epoch": [round(v, 6) for v in result.losses],
            "training_loss_note": "mean negative log-likelihood per patient of the sampled "
                                  "batches, computed without noise: for the data owner, not "
                                  "covered by the privacy guarantee",
        },
    }


def _remarks(data: EventData, config: LearnConfig, structure: Structure, result: TrainResult,
             rel: str, fingerprint: str, epsilon: float) -> list[str]:
    privacy = (f"differentially private (epsilon {epsilon:.3f}, delta {config.delta:g}, "
               f"RDP accountant, the patient as privacy unit)" if config.private
               else "WITHOUT differential privacy")
    return [
        f"Derived by carecourse learn from the data set {data.name} ({data.patients} "
        f"patients; fingerprint {fingerprint}).",
        f"Time 0 of the data is {data.origin}. Each state with exits waits in 'In <state>', "
        f"whose dwell time and exit are drawn from the hazard model {rel}, {privacy}; "
        f"its covariates are read as 'covariates' says (edit them to match your patients).",
        f"Transitions ({structure.how}): " + ", ".join(f"{a} -> {b}" for a, b in
                                                         structure.edges) + ".",
        f"Fallbacks (carecourse run --learned-fallback): the model at the reference "
        f"covariates as a loop of {config.bin_days:g} days: leave with the average hazard of "
        f"the first {config.max_bins} bins, split by each exit's cumulative incidence.",
    ]


def _pictures(folder: Path, result: TrainResult, tables: Any, ref: tuple[float, ...],
              name: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(6, 3.6))
    epochs = range(1, len(result.losses) + 1)
    ax.plot(epochs, result.losses, marker="o", color="tab:blue")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (per patient)", color="tab:blue")
    if result.epsilons:
        ax2 = ax.twinx()
        ax2.plot(epochs, result.epsilons, marker="s", color="tab:red")
        ax2.set_ylabel("epsilon spent", color="tab:red")
    ax.set_title(f"{name}: training")
    fig.tight_layout()
    paths.append(folder / "training.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    states = tables.spec.states
    fig, axes = plt.subplots(1, len(states), figsize=(4.2 * len(states), 3.4), squeeze=False)
    w = tables.spec.bin_days
    for ax, s in zip(axes[0], states, strict=True):
        h = tables.hazards(s, ref)
        alive = np.concatenate([[1.0], np.cumprod(h[:, 0])])
        t = np.arange(len(h) + 1) * w
        for i, e in enumerate(tables.exits(s)):
            cif = np.concatenate([[0.0], np.cumsum(alive[:-1] * h[:, 1 + i])])
            ax.step(t, cif, where="post", label=e)
        ax.set_title(f"from {s}")
        ax.set_xlabel("days in state")
        ax.set_ylabel("cumulative incidence")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
    fig.suptitle(f"{name}: exits at the reference covariates", fontsize=10)
    fig.tight_layout()
    paths.append(folder / "curves.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def _self_check(module_file: Path) -> None:
    """The derived module must load as any module does (a bug here is ours, not the
    user's, but it must not reach the output)."""
    from modules.loader import load_module_file

    load_module_file(module_file)


def _publish(tmp: Path, out: Path) -> None:
    try:
        if out.exists():
            out.rmdir()  # empty: checked before training
        os.replace(tmp, out)
    except OSError as exc:
        raise OutputError(f"{out}: cannot move the results into place ({exc.strerror})") \
            from None
