"""A differentially private generator of patients' baseline covariates.

The generator learns the joint distribution of a table of mixed numeric and categorical
columns (one row per patient: age, sex, CD4 count, treatment arm...) with DP-SGD and
samples new rows from it, also conditionally (for a trial's eligibility criteria).

**What is public.** The :class:`Schema` is stated by the user and read from nothing: each
numeric column's bin edges (its bounds are the first and last edge) and each categorical
column's categories. No preprocessing step reads the data, so the whole privacy budget goes
to training; values outside the stated bounds or categories are refused (a
:class:`~modules.errors.DataError` naming the row), not silently fitted.

**The model.** A latent-class model, a finite mixture of products of categorical
distributions over the columns' bins (Lazarsfeld and Henry, *Latent Structure Analysis*,
1968; as a synthesizer of categorical data: Dunson and Xing, JASA 2009;104:1042-1051, and
Hu, Reiter and Wang, J Priv Confid 2014;6(1)). A row comes from one of ``components``
classes; within a class the columns are independent. A numeric value is drawn uniformly
within its bin: the model's density is piecewise constant on the stated edges, so output
is continuous and inside the bounds, and finer edges give a finer density.

It was chosen over an autoregressive model because conditioning is exact and cheap: given
per-column constraints (a range, a set of categories), the posterior over the class is a
product of per-column masses, and within the class each column is truncated on its own.
An autoregressive model can condition exactly only on its leading columns (the rest needs
rejection or importance resampling). The fidelity benchmark (``benchmarks/fidelity.py``)
measures what that costs against MST and AIM at the same epsilon.

Each component's logits are a shared part plus a deviation, ``shared + scale * deviation``:
the shared part sees the gradient of every patient and carries the marginals at the noise
of an independent model, while the deviations, weight-decayed toward zero, carry the
dependence between columns only where the data support it over the DP noise. ``scale``
divides the clipping budget between the two.

**Privacy.** One patient (one row) is one example for DP-SGD (Abadi et al., CCS 2016) through
Opacus: per-sample gradients clipped to ``max_grad_norm``, Gaussian noise calibrated by
Opacus's RDP accountant (Mironov, CSF 2017) so that the whole training spends at most
``(epsilon, delta)``. The released parameters are the average of the iterates of the second
half of training (post-processing, free of privacy cost). Without ``epsilon`` the model is
fitted without noise (no privacy).

>>> schema = Schema((Numeric.uniform("age", 18, 80, bins=4), Categorical("sex", ("F", "M"))))
>>> table = pd.DataFrame({"age": [25.0, 61.0, 47.0, 33.0], "sex": ["F", "M", "M", "F"]})
>>> gen = MixtureGenerator(schema, MixtureConfig(components=2, epochs=50))
>>> gen.fit(table, epsilon=None).fitted
True
>>> rows = gen.sample(5, seed=1, conditions={"age": (18, 30), "sex": {"F"}})
>>> bool(rows["age"].between(18, 30).all()), set(rows["sex"])
(True, {'F'})
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import tempfile
import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from modules.errors import CarecourseError, ConfigError, DataError, OutputError, Problem

__all__ = [
    "Numeric",
    "Categorical",
    "Column",
    "Schema",
    "Range",
    "Condition",
    "Constraints",
    "constraints",
    "NotFittedError",
    "BaselineGenerator",
    "MixtureConfig",
    "MixtureGenerator",
    "FitReport",
    "register_baseline_model",
    "baseline_model_names",
    "get_baseline_model",
    "load_generator",
    "resolve_device",
]

log = logging.getLogger(__name__)

#: A numeric condition: (low, high), inclusive; None leaves that side open. A list of two
#: works too (as JSON gives it); a range reaching past the column's bounds is cut to them.
Range = tuple[float | None, float | None]
#: A condition on one column: a range for a numeric column, a set of allowed categories
#: (or one category) for a categorical one.
Condition = Range | set[str] | frozenset[str] | str

FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.pt"
CARD_FILE = "card.json"


class NotFittedError(CarecourseError):
    """A generator was asked to sample or save before it was fitted."""


# --- schema ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Numeric:
    """A numeric column, modelled on the bins between ``edges`` (public: stated, not read
    from the data). ``edges[0]`` and ``edges[-1]`` are its bounds; values equal to the upper
    bound fall in the last bin."""

    name: str
    edges: tuple[float, ...]

    @classmethod
    def uniform(cls, name: str, low: float, high: float, bins: int = 10) -> Numeric:
        """``bins`` bins of equal width between ``low`` and ``high``."""
        if bins < 1 or not high > low:
            raise ConfigError(f"column {name!r}: need high > low and at least one bin, got "
                              f"low {low}, high {high}, bins {bins}")
        return cls(name, tuple(float(v) for v in np.linspace(low, high, bins + 1)))

    @property
    def low(self) -> float:
        return self.edges[0]

    @property
    def high(self) -> float:
        return self.edges[-1]

    @property
    def size(self) -> int:
        return len(self.edges) - 1

    def problems(self) -> list[str]:
        if len(self.edges) < 2:
            return [f"column {self.name!r}: give at least two bin edges"]
        if not all(math.isfinite(e) for e in self.edges):
            return [f"column {self.name!r}: bin edges must be finite numbers"]
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            return [f"column {self.name!r}: bin edges must increase strictly, got "
                    f"{list(self.edges)}"]
        return []


@dataclass(frozen=True)
class Categorical:
    """A categorical column with its categories (public: stated, not read from the data)."""

    name: str
    categories: tuple[str, ...]

    @property
    def size(self) -> int:
        return len(self.categories)

    def problems(self) -> list[str]:
        if not self.categories:
            return [f"column {self.name!r}: give at least one category"]
        if len(set(self.categories)) != len(self.categories):
            return [f"column {self.name!r}: categories repeat: {list(self.categories)}"]
        return []


Column = Numeric | Categorical


@dataclass(frozen=True)
class Schema:
    """The columns a generator models, in order, with their public bounds and categories."""

    columns: tuple[Column, ...]

    def __post_init__(self) -> None:
        problems = [p for c in self.columns for p in c.problems()]
        names = [c.name for c in self.columns]
        if not names:
            problems.append("a schema needs at least one column")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            problems.append(f"column names repeat: {dup}")
        if problems:
            raise ConfigError("schema: " + "; ".join(problems))

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def sizes(self) -> list[int]:
        return [c.size for c in self.columns]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise ConfigError(f"unknown column {name!r}; the schema has {self.names}")

    def to_dict(self) -> dict[str, Any]:
        out = []
        for c in self.columns:
            if isinstance(c, Numeric):
                out.append({"name": c.name, "type": "numeric", "edges": list(c.edges)})
            else:
                out.append({"name": c.name, "type": "categorical",
                            "categories": list(c.categories)})
        return {"columns": out}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str = "schema") -> Schema:
        """The inverse of :meth:`to_dict`; a malformed entry raises ConfigError naming
        ``source`` and the entry."""
        cols: list[Column] = []
        try:
            for i, c in enumerate(d["columns"]):
                kind = c.get("type")
                if kind == "numeric":
                    cols.append(Numeric(str(c["name"]), tuple(float(e) for e in c["edges"])))
                elif kind == "categorical":
                    cols.append(Categorical(str(c["name"]),
                                            tuple(str(v) for v in c["categories"])))
                else:
                    raise ConfigError(f"{source}: columns[{i}]: type must be 'numeric' or "
                                      f"'categorical', not {kind!r}")
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ConfigError(f"{source}: malformed schema ({e!r}); each column needs "
                              "'name', 'type' and 'edges' or 'categories'") from None
        return cls(tuple(cols))

    def encode(self, table: pd.DataFrame, *, source: str = "table") -> np.ndarray:
        """Each row's bin or category index per column, [rows, columns]. Every problem
        (a missing column, a missing value, a value outside the bounds, an unknown
        category) is collected into one :class:`DataError` naming row and column."""
        if not isinstance(table, pd.DataFrame):
            raise ConfigError(f"{source}: expected a pandas DataFrame, got {type(table).__name__}")
        missing = [n for n in self.names if n not in table.columns]
        if missing:
            raise DataError([Problem(source, "", f"missing column(s) {missing}; the table has "
                                     f"{list(table.columns)}")])
        problems: list[Problem] = []
        codes = np.zeros((len(table), len(self.columns)), dtype=np.int64)
        for j, col in enumerate(self.columns):
            values = table[col.name]
            if isinstance(col, Numeric):
                x = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
                bad = ~np.isfinite(x) | (x < col.low) | (x > col.high)
                codes[:, j] = np.clip(np.searchsorted(col.edges, x, side="right") - 1, 0,
                                      col.size - 1)
                for i in np.flatnonzero(bad):
                    problems.append(Problem(source, f"row {i + 1}, column {col.name!r}",
                                            f"{_show(values.iloc[i])} is not a number within the "
                                            f"stated bounds [{col.low:g}, {col.high:g}]; widen "
                                            "the bounds or drop the row"))
            else:
                index = {c: k for k, c in enumerate(col.categories)}
                for i, v in enumerate(_as_text(values)):
                    k = index.get(v)
                    if k is None:
                        problems.append(Problem(source, f"row {i + 1}, column {col.name!r}",
                                                f"{v!r} is not one of the stated categories "
                                                f"{list(col.categories)}"))
                    else:
                        codes[i, j] = k
        if problems:
            raise DataError(problems)
        return codes

    def fingerprint(self, table: pd.DataFrame) -> str:
        """SHA-256 of the schema's columns of ``table`` (row order kept), to tell which data
        a model was trained on."""
        h = hashlib.sha256()
        h.update(json.dumps(self.to_dict(), sort_keys=True).encode())
        h.update(table[self.names].to_csv(index=False).encode())
        return h.hexdigest()


def _show(v: object) -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return "an empty cell"
    if isinstance(v, int | float | np.number):
        return f"{float(v):g}"
    return repr(v)


def _as_text(values: pd.Series) -> list[str]:
    def one(v: object) -> str:
        if isinstance(v, float) and v.is_integer():
            return str(int(v))
        return "" if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) \
            else str(v).strip()
    return [one(v) for v in values]


# --- conditions --------------------------------------------------------------------------


@dataclass(frozen=True)
class Constraints:
    """Conditions in the model's terms: per column, the allowed share of each bin
    (``weights``) and, for a numeric column under a range, the range (``ranges``)."""

    weights: tuple[np.ndarray, ...]
    ranges: tuple[tuple[float, float] | None, ...]


def constraints(schema: Schema, conditions: Mapping[str, Condition] | None) -> Constraints:
    """Per column, the share of each bin (or category) that ``conditions`` allow: 1 for an
    unconditioned column; for a range, the fraction of the bin's width inside it (the
    model's density is uniform within a bin); for a set, 1 for an allowed category, else 0.
    Raises ConfigError for an unknown column, an empty set, an unknown category or a range
    outside the bounds, each named."""
    weights = [np.ones(c.size) for c in schema.columns]
    ranges: list[tuple[float, float] | None] = [None] * len(schema.columns)
    for name, cond in (conditions or {}).items():
        col = schema.column(name)
        j = schema.names.index(name)
        if isinstance(col, Categorical):
            allowed = {cond} if isinstance(cond, str) else cond
            if not isinstance(allowed, set | frozenset):
                raise ConfigError(f"condition on {name!r}: give a set of categories, e.g. "
                                  f"{{{col.categories[0]!r}}}, not {cond!r}")
            if not allowed:
                raise ConfigError(f"condition on {name!r}: the set of allowed categories is "
                                  "empty; give at least one")
            unknown = sorted(str(a) for a in allowed if a not in col.categories)
            if unknown:
                raise ConfigError(f"condition on {name!r}: {unknown} not among the "
                                  f"categories {list(col.categories)}")
            weights[j] = np.array([float(c in allowed) for c in col.categories])
            continue
        if (not isinstance(cond, tuple | list) or len(cond) != 2
                or not all(v is None or (isinstance(v, int | float) and not isinstance(v, bool))
                           for v in cond)):
            raise ConfigError(f"condition on {name!r}: give a range (low, high), either side "
                              f"None for open, not {cond!r}")
        lo = col.low if cond[0] is None else float(cond[0])
        hi = col.high if cond[1] is None else float(cond[1])
        if not hi > lo:
            raise ConfigError(f"condition on {name!r}: the range ({lo:g}, {hi:g}) is empty "
                              "or has zero width; give low < high")
        if hi <= col.low or lo >= col.high:
            raise ConfigError(f"condition on {name!r}: the range ({lo:g}, {hi:g}) lies outside "
                              f"the column's bounds [{col.low:g}, {col.high:g}]")
        e = np.asarray(col.edges)
        overlap = np.clip(np.minimum(e[1:], hi) - np.maximum(e[:-1], lo), 0.0, None)
        weights[j] = overlap / np.diff(e)
        ranges[j] = (lo, hi)
    return Constraints(tuple(weights), tuple(ranges))


# --- the generic generator (template method) ---------------------------------------------


@dataclass(frozen=True)
class FitReport:
    """What :meth:`BaselineGenerator.fit` did: the privacy spent and the training settings
    (the model card's contents)."""

    rows: int
    fingerprint: str
    epsilon: float | None
    delta: float | None
    accountant: str | None
    noise_multiplier: float | None
    max_grad_norm: float | None
    sample_rate: float | None
    steps: int
    epochs: int
    device: str
    losses: tuple[float, ...] = field(default=())


_REGISTRY: dict[str, type[BaselineGenerator]] = {}


def register_baseline_model(name: str, cls: type[BaselineGenerator]) -> None:
    """Make a generator kind loadable by name; a name already registered raises
    ValueError."""
    if name in _REGISTRY:
        raise ValueError(f"a baseline model kind named {name!r} is already registered")
    _REGISTRY[name] = cls


def baseline_model_names() -> list[str]:
    return list(_REGISTRY)


def get_baseline_model(name: str) -> type[BaselineGenerator]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown baseline model kind {name!r}; known: "
                          f"{', '.join(_REGISTRY)}") from None


def resolve_device(device: str) -> torch.device:
    """``auto`` (CUDA when there is a GPU, else CPU), ``cpu`` or ``cuda``; CUDA without a
    GPU raises ConfigError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA device is available here; use "
                              "--device cpu or auto")
        return torch.device("cuda")
    raise ConfigError(f"device {device!r}: choose auto, cpu or cuda")


class BaselineGenerator(ABC):
    """A generative model of baseline covariates. Public :meth:`fit`, :meth:`sample`,
    :meth:`save` and :func:`load_generator` validate, log and account; a subclass
    implements the model-specific steps (``_fit``, ``_bin_probabilities``, ``_state``).

    Subclasses set ``kind`` (the registry name written in the card)."""

    kind: ClassVar[str]

    def __init__(self, schema: Schema) -> None:
        if not isinstance(schema, Schema):
            raise ConfigError(f"expected a Schema, got {type(schema).__name__}")
        self.schema = schema
        self.report: FitReport | None = None
        #: What the training data was, for the card (``name``, ``fingerprint``: the key of
        #: its privacy ledger, ``rows_filter``...); set by whoever fits on a known data set.
        self.data: dict[str, Any] | None = None

    @property
    def fitted(self) -> bool:
        return self.report is not None

    # public template methods

    def fit(self, table: pd.DataFrame, *, epsilon: float | None, delta: float = 1e-5,
            device: str = "cpu", seed: int = 0, progress: bool = False,
            source: str = "table") -> BaselineGenerator:
        """Learn the distribution of ``table``'s schema columns (other columns are ignored).

        With ``epsilon``, the training as a whole is ``(epsilon, delta)``-differentially
        private with one row (one patient) as the unit; ``epsilon=None`` fits without noise
        and without privacy. Returns the generator; the privacy spent and the settings are in
        :attr:`report` and :attr:`card`. Raises DataError for values outside the schema,
        ConfigError for impossible options."""
        if epsilon is not None and not (isinstance(epsilon, int | float) and epsilon > 0
                                        and math.isfinite(epsilon)):
            raise ConfigError(f"epsilon must be a positive number, got {epsilon!r}")
        if epsilon is not None and not 0 < delta < 1:
            raise ConfigError(f"delta must be in (0, 1), got {delta!r}")
        codes = self.schema.encode(table, source=source)
        if len(codes) < 2:
            raise DataError([Problem(source, "", f"{len(codes)} row(s): nothing to learn "
                                     "from; give at least two")])
        dev = resolve_device(device)
        torch.manual_seed(seed)
        log.info("fitting %s on %d rows, %d columns, epsilon %s, delta %s, device %s",
                 self.kind, len(codes), len(self.schema.columns), epsilon, delta, dev)
        report = self._fit(codes, epsilon=epsilon, delta=delta, device=dev, progress=progress)
        self.report = FitReport(**{**asdict(report), "rows": len(codes),
                                   "fingerprint": self.schema.fingerprint(table),
                                   "device": str(dev)})
        log.info("fitted: epsilon spent %s", self.report.epsilon)
        return self

    def sample(self, n: int, *, seed: int | np.random.Generator | np.random.SeedSequence,
               conditions: Mapping[str, Condition] | None = None) -> pd.DataFrame:
        """``n`` rows drawn from the model's distribution given ``conditions``.

        ``conditions`` maps a column to a range ``(low, high)`` (inclusive; ``None`` for an
        open side) or a set of categories, e.g. ``{"age": (18, 65), "sex": {"F"},
        "cd4": (None, 200)}``. Rows are drawn exactly from the model's conditional
        distribution (no rejection; see :meth:`MixtureGenerator.conditional_bin_probabilities`
        for how). Numeric values are uniform within their bin (and within the condition's
        part of it); categorical columns are pandas categoricals of the stated categories.
        Raises NotFittedError before :meth:`fit`, ConfigError for a condition on an unknown
        column, an empty set, a range outside the bounds, or one the model gives
        probability 0."""
        self._check_fitted("sample")
        if not isinstance(n, int | np.integer) or n < 0:
            raise ConfigError(f"number of rows must be a whole number >= 0, got {n!r}")
        allowed = constraints(self.schema, conditions)
        rng = np.random.default_rng(seed)
        codes = self._sample_codes(int(n), list(allowed.weights), rng)
        return self._decode(codes, allowed.ranges, rng)

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``weights.pt`` (a state_dict) and ``card.json`` (the schema, the privacy
        spent, the settings and the SHA-256 of the weights) into ``folder``, each atomically
        (a temporary name, then renamed). Returns the folder."""
        self._check_fitted("save")
        out = Path(folder)
        try:
            out.mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()
            torch.save(self._state(), buf)
            weights = buf.getvalue()
            card = {**self.card, "weights_sha256": hashlib.sha256(weights).hexdigest()}
            _atomic_write(out / WEIGHTS_FILE, weights)
            _atomic_write(out / CARD_FILE, (json.dumps(card, indent=2) + "\n").encode())
        except OSError as e:
            raise OutputError(f"{out}: cannot write the model ({e.strerror or e}); choose a "
                              "writable folder") from None
        return out

    @property
    def card(self) -> dict[str, Any]:
        """The model card: kind, schema with its public bounds, data fingerprint and rows,
        epsilon, delta, accountant, noise multiplier, clipping norm, epochs and losses."""
        self._check_fitted("describe")
        assert self.report is not None
        extra = {"data": dict(self.data)} if self.data else {}
        return {"format_version": FORMAT_VERSION, "kind": self.kind,
                "schema": self.schema.to_dict(), "config": self._config_dict(),
                **extra, "training": asdict(self.report),
                "public": "schema: bin edges and categories were stated, not read from the "
                          "data; no preprocessing spent privacy budget"}

    # the model-specific steps

    @abstractmethod
    def _fit(self, codes: np.ndarray, *, epsilon: float | None, delta: float,
             device: torch.device, progress: bool) -> FitReport: ...

    @abstractmethod
    def _sample_codes(self, n: int, weights: list[np.ndarray], rng: np.random.Generator
                      ) -> np.ndarray: ...

    @abstractmethod
    def _state(self) -> dict[str, torch.Tensor]: ...

    @abstractmethod
    def _load_state(self, state: Mapping[str, torch.Tensor]) -> None: ...

    @abstractmethod
    def _config_dict(self) -> dict[str, Any]: ...

    @classmethod
    @abstractmethod
    def _from_card(cls, schema: Schema, config: Mapping[str, Any]) -> BaselineGenerator: ...

    # helpers

    def _check_fitted(self, what: str) -> None:
        if self.report is None:
            raise NotFittedError(f"cannot {what} a {type(self).__name__} before fit(); fit it "
                                 "on a table or load a saved one")

    def _decode(self, codes: np.ndarray, ranges: Sequence[tuple[float, float] | None],
                rng: np.random.Generator) -> pd.DataFrame:
        out: dict[str, Any] = {}
        for j, col in enumerate(self.schema.columns):
            k = codes[:, j]
            if isinstance(col, Categorical):
                out[col.name] = pd.Categorical.from_codes(k, categories=list(col.categories))
                continue
            # Uniform within the allowed part of the bin: where a range cuts the bin, the
            # part between the range's ends.
            e = np.asarray(col.edges)
            lo, hi = e[k], e[k + 1]
            if ranges[j] is not None:
                lo = np.maximum(lo, ranges[j][0])
                hi = np.minimum(hi, ranges[j][1])
            out[col.name] = lo + (hi - lo) * rng.random(len(k))
        return pd.DataFrame(out)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_generator(folder: str | os.PathLike[str]) -> BaselineGenerator:
    """A generator saved by :meth:`BaselineGenerator.save`. The weights are read with
    ``weights_only=True`` (no pickle) and checked against the card's SHA-256. A missing,
    malformed or mismatched file raises ConfigError naming it."""
    root = Path(folder)
    card_path, weights_path = root / CARD_FILE, root / WEIGHTS_FILE
    try:
        card = json.loads(card_path.read_text())
        weights = weights_path.read_bytes()
    except FileNotFoundError as e:
        raise ConfigError(f"{e.filename}: not found; is {root} a folder written by "
                          "save()?") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"{card_path}: cannot be read as a model card ({e})") from None
    if not isinstance(card, dict) or card.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"{card_path}: not a baseline model card of format version "
                          f"{FORMAT_VERSION}")
    if hashlib.sha256(weights).hexdigest() != card.get("weights_sha256"):
        raise ConfigError(f"{weights_path}: its SHA-256 does not match {card_path}; the files "
                          "belong to different models or one is damaged")
    cls = get_baseline_model(str(card.get("kind")))
    schema = Schema.from_dict(card.get("schema", {}), source=str(card_path))
    gen = cls._from_card(schema, card.get("config", {}))
    try:
        state = torch.load(io.BytesIO(weights), weights_only=True, map_location="cpu")
        gen._load_state(state)
    except (RuntimeError, KeyError, ValueError) as e:
        raise ConfigError(f"{weights_path}: does not fit the model its card describes "
                          f"({e})") from None
    training = dict(card.get("training", {}))
    training["losses"] = tuple(training.get("losses", ()))
    gen.report = FitReport(**training)
    gen.data = dict(card["data"]) if isinstance(card.get("data"), dict) else None
    return gen


# --- the latent-class mixture ------------------------------------------------------------


@dataclass(frozen=True)
class MixtureConfig:
    """Settings of :class:`MixtureGenerator` (public: they are in the model card).

    ``components``: latent classes (1 = independent columns). ``outcomes``: columns
    modelled by a multinomial-logit head given every other column and the outcomes named
    before them (a trial's event indicator, its time), instead of by the mixture: their
    association with each column (the treatment effect) is then a parameter of its own,
    which a mixture would blur under the DP noise. ``scale`` and ``head_scale``: the
    deviations' and the heads' share of the clipping budget (see the module docstring).
    ``weight_decay``: pull of the deviations and the heads' weights toward no dependence.
    ``epochs``: passes over the data; with ``batch_size=None`` every step sees every
    patient (sample rate 1), which at small n spends the budget best: the subsampled
    Gaussian's RDP grows with the sample rate squared per step, so at a fixed budget the
    noise of a smaller batch grows as fast as its steps multiply."""

    components: int = 8
    outcomes: tuple[str, ...] = ()
    epochs: int = 200
    lr: float = 0.05
    max_grad_norm: float = 2.0
    scale: float = 0.5
    head_scale: float = 1.0
    weight_decay: float = 1e-3
    init_std: float = 1.0
    batch_size: int | None = None

    def check(self, schema: Schema) -> None:
        if self.components < 1 or self.epochs < 1:
            raise ConfigError("components and epochs must be at least 1")
        if not (self.lr > 0 and self.max_grad_norm > 0 and self.scale > 0
                and self.head_scale > 0 and self.weight_decay >= 0 and self.init_std >= 0):
            raise ConfigError("lr, max_grad_norm, scale and head_scale must be > 0, "
                              "weight_decay and init_std >= 0")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError("batch_size must be at least 1 (or None for the full data)")
        for name in self.outcomes:
            schema.column(name)
        if len(set(self.outcomes)) != len(self.outcomes):
            raise ConfigError(f"outcomes repeat: {list(self.outcomes)}")
        if len(self.outcomes) >= len(schema.columns):
            raise ConfigError("at least one column must be modelled by the mixture, not all "
                              "as outcomes")


class _Mixture(nn.Module):
    """Log-likelihood of one-hot rows [B, columns, width]: a mixture of products of
    categoricals over the covariate columns, times one multinomial-logit head per outcome
    column given the covariates and the earlier outcomes.

    Columns are padded to the widest; pads get a logit of -1e9 so they carry no mass (and a
    zero one-hot entry, so they add nothing). Masks are plain attributes, not buffers:
    Opacus's per-sample gradients (torch.func) do not support layers with buffers."""

    def __init__(self, sizes: Sequence[int], outcomes: Sequence[int], components: int,
                 scale: float, head_scale: float, init_std: float) -> None:
        super().__init__()
        width, cols = max(sizes), len(sizes)
        self.scale, self.head_scale = scale, head_scale
        self.outcomes = list(outcomes)
        self.covariates = [j for j in range(cols) if j not in self.outcomes]
        self.mix = nn.Parameter(torch.zeros(components))
        self.shared = nn.Parameter(torch.zeros(cols, width))
        self.deviation = nn.Parameter(torch.randn(components, cols, width) * init_std)
        m = len(self.outcomes)
        self.head_bias = nn.Parameter(torch.zeros(m, width))
        self.head_weight = nn.Parameter(torch.zeros(m, width, cols * width))
        pad = torch.ones(cols, width, dtype=torch.bool)
        for j, s in enumerate(sizes):
            pad[j, :s] = False
        self.pad = pad
        # Head h reads the covariates and the outcomes before it (and no pads).
        reads = torch.zeros(m, cols, width, dtype=torch.bool)
        for h in range(m):
            for i in self.covariates + self.outcomes[:h]:
                reads[h, i] = ~pad[i]
        self.reads = reads.reshape(m, 1, cols * width)

    def log_probs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """log P(class) [K], log P(bin | class) [K, columns, width] (outcome columns are
        there too but unused)."""
        logits = self.shared + self.scale * self.deviation
        logits = logits.masked_fill(self.pad.to(logits.device), -1e9)
        return torch.log_softmax(self.mix, 0), torch.log_softmax(logits, -1)

    def head_log_probs(self, onehot: torch.Tensor) -> torch.Tensor:
        """log P(outcome h's bin | the rest) for each row: [B, outcomes, width]."""
        flat = onehot.reshape(onehot.shape[0], -1)
        w = self.head_weight * self.reads.to(flat.device)
        logits = self.head_bias + self.head_scale * torch.einsum("bd,hwd->bhw", flat, w)
        pad = self.pad[self.outcomes].to(flat.device)
        return torch.log_softmax(logits.masked_fill(pad, -1e9), -1)

    def forward(self, onehot: torch.Tensor) -> torch.Tensor:
        log_mix, log_p = self.log_probs()
        cov = self.covariates
        per_class = torch.einsum("bjw,kjw->bk", onehot[:, cov], log_p[:, cov])
        out = torch.logsumexp(per_class + log_mix, dim=1)
        if self.outcomes:
            out = out + (self.head_log_probs(onehot) * onehot[:, self.outcomes]).sum((1, 2))
        return out


class MixtureGenerator(BaselineGenerator):
    """The latent-class mixture with outcome heads (see the module docstring and
    :class:`MixtureConfig`), trained with DP-SGD."""

    kind = "mixture"

    def __init__(self, schema: Schema, config: MixtureConfig | None = None) -> None:
        super().__init__(schema)
        self.config = config or MixtureConfig()
        self.config.check(schema)
        self._outcomes = [schema.names.index(n) for n in self.config.outcomes]
        self._model = self._new_model()

    def privacy_plan(self, rows: int, epsilon: float, delta: float) -> tuple[float, float, int]:
        """(noise multiplier, sample rate, steps) that :meth:`fit` on ``rows`` rows at
        ``(epsilon, delta)`` will use: Opacus's own calibration
        (``get_noise_multiplier``, as ``make_private_with_epsilon`` calls it), so a privacy
        ledger can be charged with the exact mechanism before the data are read."""
        from opacus.accountants.utils import get_noise_multiplier

        batch = self._batch(rows)
        sample_rate = 1 / math.ceil(rows / batch)
        noise = get_noise_multiplier(target_epsilon=epsilon, target_delta=delta,
                                     sample_rate=sample_rate, epochs=self.config.epochs,
                                     accountant="rdp")
        return float(noise), sample_rate, self.config.epochs * math.ceil(rows / batch)

    def _batch(self, rows: int) -> int:
        """The batch size a fit on ``rows`` rows uses (all of them without ``batch_size``)."""
        return rows if self.config.batch_size is None else min(self.config.batch_size, rows)

    def _new_model(self) -> _Mixture:
        cfg = self.config
        return _Mixture(self.schema.sizes, self._outcomes, cfg.components, cfg.scale,
                        cfg.head_scale, cfg.init_std)

    def _onehot(self, codes: np.ndarray) -> torch.Tensor:
        width = max(self.schema.sizes)
        return nn.functional.one_hot(torch.from_numpy(codes), width).float()

    def _fit(self, codes: np.ndarray, *, epsilon: float | None, delta: float,
             device: torch.device, progress: bool) -> FitReport:
        from torch.utils.data import DataLoader, TensorDataset
        from tqdm import tqdm

        cfg = self.config
        model = self._new_model().to(device)
        x = self._onehot(codes).to(device)
        n = len(x)
        batch = self._batch(n)
        groups = [{"params": [model.mix, model.shared, model.head_bias], "weight_decay": 0.0},
                  {"params": [model.deviation, model.head_weight],
                   "weight_decay": cfg.weight_decay}]
        opt: torch.optim.Optimizer = torch.optim.Adam(groups, lr=cfg.lr)
        loader = DataLoader(TensorDataset(x), batch_size=batch, shuffle=True)
        engine = None
        trained: nn.Module = model
        if epsilon is not None:
            from opacus import PrivacyEngine

            with warnings.catch_warnings():
                # Opacus warns that its default RNG is not cryptographically secure; the
                # card says which accountant and settings were used.
                warnings.filterwarnings("ignore", message="Secure RNG turned off")
                engine = PrivacyEngine(accountant="rdp")
                trained, opt, loader = engine.make_private_with_epsilon(
                    module=model, optimizer=opt, data_loader=loader, target_epsilon=epsilon,
                    target_delta=delta, epochs=cfg.epochs, max_grad_norm=cfg.max_grad_norm)
        # Polyak-Ruppert averaging of the second half's iterates: post-processing, free of
        # privacy cost, and it damps the noise of the last steps.
        average = [torch.zeros_like(p) for p in model.parameters()]
        averaged, steps = 0, 0
        losses: list[float] = []
        bar = tqdm(range(cfg.epochs), desc="baseline", unit="epoch", disable=not progress)
        for epoch in bar:
            total, seen = 0.0, 0
            for (xb,) in loader:
                if len(xb) == 0:  # Poisson sampling can draw an empty batch
                    continue
                opt.zero_grad()
                loss = -trained(xb).mean()
                with warnings.catch_warnings():
                    # The input needs no gradient; Opacus's hooks work on the output's.
                    warnings.filterwarnings("ignore", message="Full backward hook is firing")
                    loss.backward()
                opt.step()
                steps += 1
                total += float(loss.detach()) * len(xb)
                seen += len(xb)
                if epoch >= cfg.epochs // 2:
                    with torch.no_grad():
                        for a, p in zip(average, model.parameters(), strict=True):
                            a += p
                    averaged += 1
            losses.append(total / max(seen, 1))
            if progress:
                post = {"loss": f"{losses[-1]:.3f}"}
                if engine is not None:
                    post["epsilon"] = f"{engine.get_epsilon(delta):.3f}"
                bar.set_postfix(post)
        if averaged:
            with torch.no_grad():
                for a, p in zip(average, model.parameters(), strict=True):
                    p.copy_(a / averaged)
        if hasattr(trained, "_close"):
            trained._close()  # remove Opacus's hooks from the released model
        self._model = model.to("cpu")
        if engine is None:
            return FitReport(n, "", None, None, None, None, None, None, steps, cfg.epochs,
                             str(device), tuple(losses))
        return FitReport(n, "", float(engine.get_epsilon(delta)), delta, "rdp",
                         float(opt.noise_multiplier), cfg.max_grad_norm, 1 / len(loader),
                         steps, cfg.epochs, str(device), tuple(losses))

    @torch.no_grad()
    def bin_probabilities(self) -> tuple[np.ndarray, list[np.ndarray]]:
        """The mixture: P(class) [K] and, per column, P(bin | class) [K, bins] (for an
        outcome column, unused: see :meth:`outcome_probabilities`)."""
        log_mix, log_p = self._model.log_probs()
        mix = log_mix.exp().double().numpy()
        p = log_p.exp().double().numpy()
        return mix, [p[:, j, :s] / p[:, j, :s].sum(1, keepdims=True)
                     for j, s in enumerate(self.schema.sizes)]

    @torch.no_grad()
    def outcome_probabilities(self, codes: np.ndarray, outcome: str) -> np.ndarray:
        """P(bin of ``outcome`` | the rest of each row) [rows, bins]: the head reads the
        covariates and the outcomes before it in ``codes``."""
        h = list(self.config.outcomes).index(outcome)
        size = self.schema.sizes[self._outcomes[h]]
        logp = self._model.head_log_probs(self._onehot(np.asarray(codes, dtype=np.int64)))
        p = logp[:, h, :size].exp().double().numpy()
        return p / p.sum(1, keepdims=True)

    def log_likelihood(self, codes: np.ndarray) -> np.ndarray:
        """The model's log probability of each row's bins (and categories) [rows]; a
        numeric value's density is this minus the log of its bin's width."""
        with torch.no_grad():
            out = self._model(self._onehot(np.asarray(codes, dtype=np.int64)))
        return out.double().numpy()

    def conditional_bin_probabilities(self, weights: list[np.ndarray]
                                      ) -> tuple[np.ndarray, list[np.ndarray]]:
        """The mixture's distribution of the covariate columns given per-column bin weights
        ``w_j`` (the allowed share of each bin): P(class | conditions) and, per column,
        P(bin | class, conditions) (outcome columns are left as they are).

        This is exact: the conditional of ``sum_k pi_k prod_j p_jk(b_j)`` given
        ``prod_j w_j(b_j)`` is the mixture with weights ``pi_k prod_j m_jk`` (where
        ``m_jk = sum_b p_jk(b) w_j(b)`` is the allowed mass of column j in class k) of the
        products of ``p_jk(b) w_j(b) / m_jk``. Raises ConfigError when the conditions have
        probability 0 under the model."""
        mix, probs = self.bin_probabilities()
        log_post = np.log(mix)
        out = []
        for j, (p, w) in enumerate(zip(probs, weights, strict=True)):
            if j in self._outcomes:
                out.append(p)
                continue
            q = p * w[None, :]
            m = q.sum(1)
            with np.errstate(divide="ignore"):
                log_post = log_post + np.log(m)
            out.append(q / np.where(m > 0, m, 1.0)[:, None])
        if not np.isfinite(log_post).any():
            raise ConfigError("the conditions have probability 0 under the model; relax them")
        post = np.exp(log_post - log_post.max())
        return post / post.sum(), out

    #: Rows drawn for each accepted one before conditions on outcomes count as impossible.
    MAX_TRIES = 10_000

    def _sample_codes(self, n: int, weights: list[np.ndarray], rng: np.random.Generator
                      ) -> np.ndarray:
        # Covariates: exactly from the mixture's conditional. Outcomes: from their heads,
        # each truncated to what the conditions allow, then each row kept with probability
        # the product of the allowed masses: rejection sampling whose proposal is the
        # truncated ancestral draw, so the rows kept follow the exact conditional. Without
        # conditions on outcomes every row is kept.
        post, probs = self.conditional_bin_probabilities(weights)
        on_outcomes = any(weights[j].min() < 1.0 for j in self._outcomes)
        kept: list[np.ndarray] = []
        have, drawn = 0, 0
        while have < n:
            m = n - have if not on_outcomes else max(64, 2 * (n - have))
            codes = np.zeros((m, len(probs)), dtype=np.int64)
            z = rng.choice(len(post), size=m, p=post)
            for j, p in enumerate(probs):
                if j not in self._outcomes:
                    codes[:, j] = _draw(p[z], rng)
            accept = np.ones(m)
            for name, j in zip(self.config.outcomes, self._outcomes, strict=True):
                q = self.outcome_probabilities(codes, name) * weights[j][None, :]
                mass = q.sum(1)
                accept *= mass
                codes[:, j] = _draw(q / np.where(mass > 0, mass, 1.0)[:, None], rng)
            keep = rng.random(m) < accept if on_outcomes else np.ones(m, dtype=bool)
            kept.append(codes[keep])
            have += int(keep.sum())
            drawn += m
            if have == 0 and drawn >= self.MAX_TRIES * max(n, 1):
                raise ConfigError(f"no row met the conditions on the outcome column(s) in "
                                  f"{drawn} draws: under the model they are (almost) "
                                  "impossible; relax them")
        return np.concatenate(kept)[:n] if kept else np.zeros((0, len(probs)), np.int64)

    def _state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self._model.state_dict().items()}

    def _load_state(self, state: Mapping[str, torch.Tensor]) -> None:
        self._model.load_state_dict(dict(state))

    def _config_dict(self) -> dict[str, Any]:
        return {**asdict(self.config), "outcomes": list(self.config.outcomes)}

    @classmethod
    def _from_card(cls, schema: Schema, config: Mapping[str, Any]) -> MixtureGenerator:
        try:
            cfg = dict(config)
            cfg["outcomes"] = tuple(cfg.get("outcomes", ()))
            return cls(schema, MixtureConfig(**cfg))
        except TypeError as e:
            raise ConfigError(f"model card: bad mixture settings ({e})") from None


def _draw(p: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One index per row of the probability rows ``p`` [rows, bins]."""
    cdf = np.cumsum(p, axis=1)
    u = rng.random(len(p))[:, None] * cdf[:, -1:]
    return np.minimum((u >= cdf).sum(1), p.shape[1] - 1)


register_baseline_model(MixtureGenerator.kind, MixtureGenerator)

