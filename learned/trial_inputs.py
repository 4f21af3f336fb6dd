"""What ``carecourse trial build`` takes from :mod:`learned`: the DP baseline generator as
a cohort's baseline source, and the record of every learned model behind an arm (model
cards and the privacy budget spent per data set).

- :class:`GeneratorSource` makes a fitted :class:`~learned.baseline.BaselineGenerator` a
  :class:`simulator.cohort.BaselineSource`: the cohort's eligibility constraints become
  the generator's conditions, so eligible patients come from the model's exact
  conditional distribution, not from blind rejection.
- :func:`fit_generator` fits one as a protocol's ``baseline.source.fit`` asks, charging
  the data set's privacy ledger (:mod:`learned.ledger`) with the exact DP-SGD mechanism
  before the data are read, and refusing a fit that would take the ledger's total past a
  budget.
- :func:`course_cards` finds the model cards that the learned keys of the protocol's
  modules point to; :func:`learned_record` is what ``build.json`` says about them: each
  card (path, SHA-256, epsilon, delta, accountant, mechanisms) and, per data set, the
  privacy those models spent together, composed as the ledger composes
  (:func:`learned.ledger.compose`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from learned.baseline import (
    CARD_FILE,
    WEIGHTS_FILE,
    BaselineGenerator,
    Categorical,
    MixtureConfig,
    MixtureGenerator,
    Numeric,
    Schema,
    load_generator,
)
from learned.ledger import Ledger, Spend, compose, data_fingerprint
from learned.privacy import Mechanism
from modules.errors import ConfigError, DataError, Problem
from modules.extensions import LEARNED_KEYS, delay_spec
from modules.loader import ModuleLibrary
from simulator.protocol import Constraint, GeneratorFit, Protocol

__all__ = ["GeneratorSource", "FittedGenerator", "fit_generator", "generator_source",
           "course_cards", "card_entry", "learned_record"]


class GeneratorSource:
    """A fitted baseline generator as a cohort's baseline source (an endless one:
    ``available`` is None). ``sample`` draws from the model's distribution conditional on
    the cohort's constraints, translated to the generator's columns (see
    :meth:`conditions`)."""

    def __init__(self, generator: BaselineGenerator, name: str) -> None:
        self.generator = generator
        self.name = name

    @property
    def available(self) -> int | None:
        return None

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(self.generator.schema.names)

    def conditions(self, constraints: Mapping[str, Constraint]) -> dict[str, Any]:
        """The cohort's constraints as the generator's conditions. A range becomes an
        open-ended range (an infinite end: ``None``); on a categorical column, the set of
        categories whose number lies in it; a set of values on a categorical column stays
        a set. Constraints the model cannot state (a range of zero width, which has
        probability 0 under a continuous density; a set of values on a numeric column)
        are left out: the constraints describe a superset of the eligible patients and
        the cohort checks every criterion on every patient anyway."""
        out: dict[str, Any] = {}
        for name, c in constraints.items():
            if name not in self.generator.schema.names:
                continue
            col = self.generator.schema.column(name)
            if isinstance(col, Categorical):
                values = {k: _number(k) for k in col.categories}
                if isinstance(c, frozenset):
                    out[name] = set(c) & set(col.categories)
                elif all(v is not None for v in values.values()):
                    out[name] = {k for k, v in values.items()
                                 if v is not None and c[0] <= v <= c[1]}
            elif isinstance(c, tuple) and c[1] > c[0]:
                out[name] = (None if math.isinf(c[0]) else c[0],
                             None if math.isinf(c[1]) else c[1])
        return out

    def sample(self, n: int | None, *, seed: int,
               conditions: Mapping[str, Constraint]) -> pd.DataFrame:
        if n is None:
            raise ValueError("a generator is endless: give a number of rows")
        cond = self.conditions(conditions)
        empty = sorted(k for k, v in cond.items() if isinstance(v, set) and not v)
        if empty:
            raise ConfigError(f"{self.name}: the eligibility criteria allow no category of "
                              f"{', '.join(empty)} among the generator's; check the criteria "
                              "against the generator's categories")
        try:
            return self.generator.sample(n, seed=seed, conditions=cond)
        except ConfigError as exc:
            raise ConfigError(f"{self.name}: cannot draw patients meeting the eligibility "
                              f"criteria: {exc}") from None


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def generator_source(folder: Path, where: str = "") -> GeneratorSource:
    """The generator saved in ``folder`` as a baseline source. ``where`` (the protocol
    file and key) prefixes the ConfigError of a missing or damaged generator."""
    try:
        gen = load_generator(folder)
    except ConfigError as exc:
        if not where:
            raise
        raise ConfigError(f"{where}: cannot load the generator ({exc}); give the folder a "
                          "generator was saved to (card.json and weights.pt)") from None
    return GeneratorSource(gen, _describe(gen, str(folder)))


def _describe(gen: BaselineGenerator, where: str) -> str:
    assert gen.report is not None
    eps = gen.report.epsilon
    privacy = f"epsilon {eps:.3g}, delta {gen.report.delta:g}" if eps is not None \
        else "without differential privacy"
    return f"DP baseline generator {where} ({gen.kind}, {privacy})"


@dataclass(frozen=True)
class FittedGenerator:
    """A generator fitted by :func:`fit_generator`, the ledger it charged and the entry."""

    source: GeneratorSource
    ledger: Ledger
    spend: Spend


def _training_table(fit: GeneratorFit, protocol: Protocol) -> tuple[pd.DataFrame, str, Any]:
    """(rows to fit on, name of the data, its event data for the ledger's fingerprint)."""
    from simulator.cohort import TableSource, read_baseline_table

    if fit.source == "dataset":
        from learned.datasets import dataset_names, load_dataset

        assert fit.dataset is not None
        if fit.dataset not in dataset_names():
            raise ConfigError(f"{protocol.path}: baseline.source.fit.dataset: no built-in data "
                              f"set {fit.dataset!r}; known: {', '.join(dataset_names())}")
        data = load_dataset(fit.dataset)
        frame, name = data.baseline.reset_index(drop=True), f"data set {fit.dataset}"
    else:
        from learned.sources import TableOptions
        from learned.sources import read_baseline_table as read_covariates

        assert fit.path is not None
        frame, name = read_baseline_table(fit.path), str(fit.path)
        data = read_covariates(fit.path, TableOptions())
    rows = TableSource.filtered(frame, name, fit.where, protocol=protocol).frame
    return rows, name, data


def _schema(fit: GeneratorFit) -> Schema:
    return Schema(tuple(Numeric(c.name, c.edges) if c.edges else
                        Categorical(c.name, c.categories) for c in fit.columns))


def fit_generator(protocol: Protocol, *, ledger_dir: Path, budget: float | None = None,
                  device: str = "cpu", progress: bool = False) -> FittedGenerator:
    """Fit the generator ``protocol.baseline.fit`` describes. The data set's ledger is
    charged with the (epsilon, delta) and the exact DP-SGD mechanism before training;
    with ``budget``, a fit that would take the ledger's total epsilon past it raises
    ConfigError and nothing is charged or trained. Raises DataError for rows outside the
    stated columns' bounds or categories (naming the row and column)."""
    fit = protocol.baseline.fit
    if fit is None:
        raise ValueError("the protocol's baseline source is not 'fit'")
    where = f"{protocol.path}: baseline.source.fit"
    rows, name, data = _training_table(fit, protocol)
    missing = [c.name for c in fit.columns if c.name not in rows.columns]
    if missing:
        raise DataError([Problem(str(protocol.path), "baseline.source.fit.columns",
                                 f"column(s) {', '.join(missing)} are not in {name} (its "
                                 f"columns: {', '.join(map(str, rows.columns))})")])
    if not fit.delta < 1 / max(len(rows), 1):
        raise ConfigError(f"{where}.delta: {fit.delta:g} is not below 1/rows (1/{len(rows)}): "
                          "such a delta allows releasing a patient's record outright; use a "
                          "smaller one")
    try:
        gen = MixtureGenerator(_schema(fit), MixtureConfig(**fit.settings))  # type: ignore[arg-type]
    except ConfigError as exc:
        raise ConfigError(f"{where}.settings: {exc}") from None
    noise, rate, steps = gen.privacy_plan(len(rows), fit.epsilon, fit.delta)
    fingerprint = data_fingerprint(data)
    ledger = Ledger(ledger_dir, fingerprint, name=data.name, patients=data.patients)
    spend = Spend(f"carecourse trial build {protocol.name}: DP baseline generator on {name}"
                  + (f" where {_show_where(fit.where)}" if fit.where else ""),
                  fit.epsilon, fit.delta, "rdp", (Mechanism("DP-SGD", noise, rate, steps),))
    try:
        ledger.reserve(spend, budget)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {str(exc).replace('--epsilon', 'epsilon')}".replace(
            "nothing was trained", "nothing was fitted and no patient was built")) from None
    gen.data = {"name": data.name, "fingerprint": fingerprint, "source": name,
                "where": {k: sorted(v) for k, v in fit.where.items()},
                "rows_note": "the number of training rows in 'training' is an exact count, "
                             "for the data owner: not covered by the privacy guarantee"}
    gen.fit(rows, epsilon=fit.epsilon, delta=fit.delta, device=device, seed=fit.seed,
            progress=progress, source=name)
    return FittedGenerator(GeneratorSource(gen, _describe(gen, f"fitted on {name}")), ledger,
                           spend)


def _show_where(where: Mapping[str, frozenset[str]]) -> str:
    return ", ".join(f"{k} in {{{', '.join(sorted(v))}}}" for k, v in where.items())


# --------------------------------------------------------------------------- records

def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def course_cards(library: ModuleLibrary, modules: Iterable[str]) -> list[Path]:
    """The model cards the learned keys of ``modules`` (and the submodules they call)
    point to, each once, in the order found."""
    seen: set[str] = set()
    todo = list(modules)
    cards: list[Path] = []
    while todo:
        key = todo.pop(0)
        if key in seen or key not in library.modules:
            continue
        seen.add(key)
        module = library.modules[key]
        for state in module.states.values():
            if not isinstance(state, dict):
                continue
            if state.get("type") == "CallSubmodule" and isinstance(state.get("submodule"), str):
                todo.append(state["submodule"])
            for spec in ([state[k] for k in LEARNED_KEYS[:1] if isinstance(state.get(k), dict)]
                         + ([delay_spec(state)] if "learned_delay" in state else [])):
                model = spec.get("model")
                if not isinstance(model, str):
                    continue
                p = Path(model)
                path = (p if p.is_absolute() else module.path.parent / p).resolve()
                if path not in cards:
                    cards.append(path)
    return cards


def card_entry(path: Path, role: str) -> dict[str, Any]:
    """What ``build.json`` records of one model card: its path and SHA-256, the data it
    was trained on (name, ledger fingerprint) and its privacy (epsilon, delta, accountant,
    mechanisms). ``path`` is a hazard model's ``card.json`` or a baseline generator's
    folder or card. Raises ConfigError for a card that cannot be read."""
    card_path = path / CARD_FILE if path.is_dir() else path
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{card_path}: the model card cannot be read ({exc})") from None
    entry: dict[str, Any] = {"role": role, "path": str(card_path),
                             "sha256": _sha256(card_path), "kind": card.get("kind"),
                             "weights_sha256": card.get("weights_sha256")}
    if "privacy" in card:  # a learned-transition (hazard) model card
        priv, data = card["privacy"], card.get("data", {})
        entry.update(data=data.get("name"), fingerprint=data.get("fingerprint"),
                     epsilon=priv.get("epsilon"), delta=priv.get("delta"),
                     accountant=priv.get("accountant"),
                     mechanisms=priv.get("mechanisms", []),
                     extra_delta=priv.get("partition_selection_delta", 0.0))
    else:  # a baseline generator's card
        tr, data = card.get("training", {}), card.get("data") or {}
        mech = [] if tr.get("noise_multiplier") is None else [Mechanism(
            "DP-SGD", float(tr["noise_multiplier"]), float(tr["sample_rate"]),
            int(tr["steps"])).to_dict()]
        entry.update(data=data.get("name") or "unknown (the card names no data set)",
                     fingerprint=data.get("fingerprint") or f"generator:{tr.get('fingerprint')}",
                     epsilon=tr.get("epsilon"), delta=tr.get("delta"),
                     accountant=tr.get("accountant"), mechanisms=mech, extra_delta=0.0)
        entry["weights"] = str(card_path.parent / WEIGHTS_FILE)
    return entry


def _spend(entry: Mapping[str, Any]) -> Spend:
    eps = entry.get("epsilon")
    if eps is None:  # trained without privacy
        return Spend(entry["path"], math.inf, 0.0, "none")
    return Spend(entry["path"], float(eps), float(entry.get("delta") or 0.0),
                 str(entry.get("accountant")),
                 tuple(Mechanism.from_dict(m) for m in entry.get("mechanisms", [])),
                 float(entry.get("extra_delta") or 0.0))


def learned_record(entries: list[dict[str, Any]], *, ledger_dir: Path | None = None
                   ) -> dict[str, Any]:
    """``build.json``'s ``learned``: the model ``entries`` (:func:`card_entry`) and, per
    data set, what they spent together (composed in RDP where every model was analysed in
    RDP, as the ledger composes) and, when ``ledger_dir`` holds the data set's ledger, the
    ledger's total over every release from that data so far."""
    by_data: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        by_data.setdefault(str(e["fingerprint"]), []).append(e)
    privacy = []
    for fp, group in by_data.items():
        total = compose([_spend(e) for e in group])
        item: dict[str, Any] = {
            "data": group[0]["data"], "fingerprint": fp, "models": len(group),
            "epsilon": total.epsilon if math.isfinite(total.epsilon) else "inf",
            "delta": total.delta, "method": total.method,
            "epsilon_added": sum(float(e["epsilon"]) if e["epsilon"] is not None
                                 else math.inf for e in group)}
        if not math.isfinite(item["epsilon_added"]):
            item["epsilon_added"] = "inf"
        if ledger_dir is not None and fp.startswith("sha256:"):
            ledger = Ledger(ledger_dir, fp)
            if ledger.path.is_file():
                lt = ledger.total()
                item["ledger"] = {"path": str(ledger.path), "releases": len(ledger.spends()),
                                  "epsilon": lt.epsilon if math.isfinite(lt.epsilon) else "inf",
                                  "delta": lt.delta}
        privacy.append(item)
    return {"models": entries, "privacy": privacy}
