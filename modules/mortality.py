"""Module death shares: how much of the all-cause (background) mortality a library's modules
cause themselves.

The engine draws each patient's background age at death from the US all-cause life table.
A module that kills (a cancer's fatal course, a hip fracture) adds deaths that the life table
already counts, so without a correction those causes would be counted twice and life
expectancy would fall. A library can carry ``module_deaths.csv`` beside its modules: for each
top-level module, sex and age band, the module's deaths as a share of the life table's
all-cause deaths. The engine takes the shares of the modules that run out of the background
hazard (a cause-deleted life table, Chiang's method), so background and module deaths
together follow the life table again.

    module,sex,age_low,age_high,share,deaths
    lung_cancer,M,60,69,0.0512,37

``age_low`` and ``age_high`` are whole years, inclusive; ``deaths`` is how many deaths the
share was measured from (for the reader; the engine ignores it). Lines starting with ``#``
are comments. ``python benchmarks/module_mortality.py --write`` measures and writes the file
for the embedded library.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from modules.errors import Problem

__all__ = ["DEATHS_FILE", "DeathShare", "load_death_shares"]

DEATHS_FILE = "module_deaths.csv"
_COLUMNS = ("module", "sex", "age_low", "age_high", "share", "deaths")


@dataclass(frozen=True, slots=True)
class DeathShare:
    """Deaths a module causes at ``age_low``-``age_high`` (inclusive) for ``sex``, as a share
    of the all-cause deaths of the life table at those ages."""

    sex: str
    age_low: int
    age_high: int
    share: float


def load_death_shares(path: Path, module_keys: set[str]
                      ) -> tuple[dict[str, tuple[DeathShare, ...]], list[Problem], list[Problem]]:
    """Read ``path``; return (shares by module key, errors, warnings). Every malformed value is
    an error naming its line and column; a module the library does not have is a warning (its
    rows are ignored)."""
    errors: list[Problem] = []
    warnings: list[Problem] = []
    rows: dict[str, list[DeathShare]] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return {}, [Problem(str(path), "", f"cannot read module death shares: {exc}")], []
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1)
             if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        return {}, [Problem(str(path), "", f"no header; expected {','.join(_COLUMNS)}")], []
    header_no, header = lines[0]
    columns = next(csv.reader([header]))
    if tuple(c.strip() for c in columns) != _COLUMNS:
        return {}, [Problem(str(path), f"line {header_no}",
                            f"header is {header!r}; expected {','.join(_COLUMNS)}")], []
    for n, line in lines[1:]:
        values = [v.strip() for v in next(csv.reader([line]))]
        if len(values) != len(_COLUMNS):
            errors.append(Problem(str(path), f"line {n}",
                                  f"{len(values)} fields, expected {len(_COLUMNS)}"))
            continue
        rec = dict(zip(_COLUMNS, values, strict=True))
        where = f"line {n}"
        bad = len(errors)
        if rec["sex"] not in ("M", "F"):
            errors.append(Problem(str(path), f"{where}, column sex", f"{rec['sex']!r} is not M or F"))
        nums: dict[str, float] = {}
        for col in ("age_low", "age_high", "share", "deaths"):
            try:
                nums[col] = float(rec[col])
            except ValueError:
                errors.append(Problem(str(path), f"{where}, column {col}", f"{rec[col]!r} is not a number"))
        if len(errors) > bad:
            continue
        lo, hi, share = nums["age_low"], nums["age_high"], nums["share"]
        if not (lo == int(lo) and hi == int(hi) and 0 <= lo <= hi <= 130):
            errors.append(Problem(str(path), f"{where}, columns age_low/age_high",
                                  f"ages {rec['age_low']}-{rec['age_high']} must be whole years "
                                  "with 0 <= age_low <= age_high <= 130"))
            continue
        if not 0.0 <= share <= 1.0:
            errors.append(Problem(str(path), f"{where}, column share",
                                  f"share {rec['share']} must be between 0 and 1"))
            continue
        if rec["module"] not in module_keys:
            warnings.append(Problem(str(path), f"{where}, column module",
                                    f"no top-level module {rec['module']!r} in this library; row ignored"))
            continue
        rows.setdefault(rec["module"], []).append(DeathShare(rec["sex"], int(lo), int(hi), share))
    return {k: tuple(v) for k, v in rows.items()}, errors, warnings
