"""Covariates of learned models, with the public bounds that make their encoding free of
privacy cost.

A covariate is numeric, with a range ``[low, high]`` that the user states as public (the
trial's eligibility criteria, a physiological range), or categorical, with a public list of
levels. Neither is read from the data: a range or a vocabulary computed from the data would
itself reveal something about the patients, so it would have to spend budget.

Encoding (the same in training and in the engine): a numeric value becomes one feature,
clipped to its range and scaled to [0, 1]; a categorical value becomes one indicator per
level after the first (the first is the reference). A missing value in the data counts as
the middle of the range, or as the reference level; so does a data value outside the
public levels. In the engine, a patient value outside the levels is an error: it almost
always means the covariate mapping of a module is wrong.

>>> age = Covariate.parse("age=18:80")
>>> sex = Covariate.parse("sex=1,2")
>>> age.features(), sex.features()
([('age', (18.0, 80.0))], [('sex=2', (0.0, 1.0))])
>>> sex.encode("2"), sex.encode(None), age.encode(None)
([1.0], [0.0], [49.0])
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from modules.errors import ConfigError

__all__ = ["Covariate", "feature_names", "feature_bounds", "encode_frame"]


@dataclass(frozen=True)
class Covariate:
    """One covariate and its public bounds (numeric) or levels (categorical)."""

    name: str
    kind: Literal["numeric", "categorical"]
    low: float = 0.0
    high: float = 1.0
    levels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("a covariate needs a name")
        if self.kind == "numeric":
            if not (math.isfinite(self.low) and math.isfinite(self.high) and self.high > self.low):
                raise ConfigError(f"covariate {self.name!r}: the range needs finite LOW < HIGH, "
                                  f"got {self.low:g}:{self.high:g}")
        elif self.kind == "categorical":
            if len(self.levels) < 2 or len(set(self.levels)) != len(self.levels):
                raise ConfigError(f"covariate {self.name!r}: give at least two distinct "
                                  f"levels, got {', '.join(self.levels) or 'none'}")
        else:
            raise ConfigError(f"covariate {self.name!r}: kind must be numeric or categorical")

    @classmethod
    def parse(cls, text: str, known: Mapping[str, Covariate] | None = None) -> Covariate:
        """``NAME=LOW:HIGH`` (numeric), ``NAME=A,B,C`` (categorical levels) or ``NAME``
        alone, whose bounds come from ``known`` (public bounds a built-in data set
        documents)."""
        name, sep, rest = text.partition("=")
        name = name.strip()
        if not sep:
            if known and name in known:
                return known[name]
            hint = f"; documented: {', '.join(known)}" if known else ""
            raise ConfigError(f"--covariate {text!r}: state its public bounds, NAME=LOW:HIGH "
                              f"for a number or NAME=A,B,C for categories{hint}")
        rest = rest.strip()
        if "," in rest:
            levels = tuple(x.strip() for x in rest.split(",") if x.strip())
            return cls(name, "categorical", levels=levels)
        lo, colon, hi = rest.partition(":")
        try:
            if not colon:
                raise ValueError
            return cls(name, "numeric", float(lo), float(hi))
        except ValueError:
            raise ConfigError(f"--covariate {text!r}: write NAME=LOW:HIGH (e.g. age=18:80) or "
                              "NAME=A,B,C (e.g. sex=1,2)") from None

    @property
    def reference(self) -> float | str:
        """The value a missing one counts as: the middle of the range, the first level."""
        return (self.low + self.high) / 2 if self.kind == "numeric" else self.levels[0]

    def features(self) -> list[tuple[str, tuple[float, float]]]:
        """The model features this covariate becomes, with the bounds that scale them."""
        if self.kind == "numeric":
            return [(self.name, (self.low, self.high))]
        return [(f"{self.name}={lv}", (0.0, 1.0)) for lv in self.levels[1:]]

    def encode(self, value: Any, *, strict: bool = False) -> list[float]:
        """Feature values (before scaling) of one value. With ``strict``, a value that is
        not a number (numeric) or not a level (categorical) raises ValueError; without, it
        counts as missing."""
        missing = value is None or (isinstance(value, float) and math.isnan(value))
        if self.kind == "numeric":
            if not missing:
                try:
                    return [float(value)]
                except (TypeError, ValueError):
                    if strict:
                        raise ValueError(f"{value!r} is not a number") from None
            return [float(self.reference)]
        text = _level(value) if not missing else None
        if text not in self.levels:
            if strict:
                raise ValueError(f"{value!r} is not one of the levels "
                                 f"{', '.join(self.levels)}")
            text = self.levels[0]
        return [1.0 if text == lv else 0.0 for lv in self.levels[1:]]

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "numeric":
            return {"name": self.name, "kind": "numeric", "low": self.low, "high": self.high}
        return {"name": self.name, "kind": "categorical", "levels": list(self.levels)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Covariate:
        if d.get("kind") == "numeric":
            return cls(str(d["name"]), "numeric", float(d["low"]), float(d["high"]))
        return cls(str(d["name"]), "categorical", levels=tuple(str(x) for x in d["levels"]))


def _level(value: Any) -> str:
    """A categorical value as text; numbers written as whole numbers lose ".0" (as the
    event form writes coded columns)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def feature_names(covariates: Sequence[Covariate]) -> tuple[str, ...]:
    return tuple(n for c in covariates for n, _b in c.features())


def feature_bounds(covariates: Sequence[Covariate]) -> tuple[tuple[float, float], ...]:
    return tuple(b for c in covariates for _n, b in c.features())


def encode_frame(baseline: pd.DataFrame, covariates: Sequence[Covariate], file: str
                 ) -> np.ndarray:
    """[patients, features] raw feature values of the baseline table's covariates (rows
    in the table's order). A covariate the table lacks raises ConfigError naming the
    ones it has."""
    missing = [c.name for c in covariates if c.name not in baseline.columns]
    if missing:
        raise ConfigError(f"{file}: no covariate(s) {', '.join(missing)} in the baseline; it "
                          f"has {', '.join(map(str, baseline.columns)) or 'none'}")
    cols = []
    for c in covariates:
        values = baseline[c.name].astype(object).where(baseline[c.name].notna(), None)
        cols.append(np.array([c.encode(v) for v in values], dtype=np.float64)
                    .reshape(len(baseline), -1))
    if not cols:
        return np.zeros((len(baseline), 0))
    return np.concatenate(cols, axis=1)
