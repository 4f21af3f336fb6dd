"""Record checks that every library test population must pass: what a real practice's
records never show."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


def assert_no_medication_before_its_reason(population: Iterable[Any]) -> None:
    """Every medication that gives a reason comes at or after that condition's first onset
    (so every reason is a diagnosed condition)."""
    for p in population:
        onset: dict[str, float] = {}
        for c in p.record.conditions:
            onset[c.codes[0].code] = min(onset.get(c.codes[0].code, math.inf), c.start)
        for m in p.record.medications:
            if m.reason is not None:
                assert onset.get(m.reason.code, math.inf) <= m.start + 1e-9, (m.state, m.reason)


def assert_nothing_after_death(population: Iterable[Any]) -> None:
    """No entry of any kind starts after the patient's death (and some patients died)."""
    dead = [p for p in population if p.death is not None and p.death <= p.end + 1e-9]
    assert dead, "the population should include deaths"
    for p in dead:
        rec = p.record
        for kind in rec.__slots__:
            for e in getattr(rec, kind):
                assert e.start <= p.death + 1e-9, (kind, e.state)
