"""Helpers every exporter shares: deterministic entry ids and time formatting."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

__all__ = ["entry_id", "dicom_uid", "Clock", "MS_PER_DAY"]

MS_PER_DAY = 86_400_000
_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()
# Formatting caches are cleared when they reach this size, so memory stays bounded.
_CACHE_LIMIT = 100_000


def entry_id(seed: int, kind: str, index: int) -> str:
    """A UUID (version 4 layout) for the ``index``-th entry of ``kind`` in the record of the
    patient with ``seed``: the same inputs always give the same Id, and different patients,
    kinds or positions give different ones (a 128-bit BLAKE2b digest).

    >>> entry_id(12345, "encounter", 0) == entry_id(12345, "encounter", 0)
    True
    >>> entry_id(12345, "encounter", 0) != entry_id(12345, "encounter", 1)
    True
    >>> import uuid
    >>> str(uuid.UUID(entry_id(7, "x", 3))) == entry_id(7, "x", 3)
    True
    """
    # The version-4 layout, as uuid.UUID(bytes=..., version=4) sets it, on the hex digits:
    # version nibble 4, and the two top bits of the variant nibble 10.
    h = _hasher(seed, kind, index).hexdigest()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


#: Hex digit of a byte's high nibble -> the same nibble with its top two bits set to 10.
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def _hasher(seed: int, kind: str, index: int) -> Any:
    """The BLAKE2b state keyed by the patient's seed, fed with the entry's kind and index."""
    h = _keyed.get(seed)
    if h is None:
        # Keying a BLAKE2b hasher costs a compression of its own: do it once per patient
        # and copy the keyed state for each of the patient's hundreds of entries.
        if len(_keyed) >= 64:
            _keyed.clear()
        key = (seed & ((1 << 128) - 1)).to_bytes(16, "little")
        h = _keyed[seed] = hashlib.blake2b(digest_size=16, key=key)
    d = h.copy()
    d.update(f"{kind}:{index}".encode())
    return d


#: Keyed hashers of the patients whose ids are being made (a few at a time).
_keyed: dict[int, Any] = {}


def dicom_uid(seed: int, kind: str, index: int) -> str:
    # ITU-T X.667: a UUID as an OID is "2.25." followed by the UUID's decimal integer.
    return f"2.25.{int.from_bytes(_hasher(seed, kind, index).digest(), 'big')}"


class Clock:
    """Formats clock values (days since 1970-01-01 UTC, to the millisecond like
    :func:`simulator.person.date_of`) as dates and ISO timestamps, with bounded caches: the
    rows of one patient repeat the same times many times."""

    __slots__ = ("_days", "_dates", "_stamps")

    def __init__(self) -> None:
        self._days: dict[int, str] = {}
        self._dates: dict[float, str] = {}
        self._stamps: dict[float, str] = {}

    def _day(self, day: int) -> str:
        s = self._days.get(day)
        if s is None:
            if len(self._days) >= _CACHE_LIMIT:
                self._days.clear()
            s = self._days[day] = dt.date.fromordinal(_EPOCH_ORDINAL + day).isoformat()
        return s

    def date(self, t: float | None) -> str:
        """``YYYY-MM-DD``, or an empty string for None."""
        if t is None:
            return ""
        s = self._dates.get(t)
        if s is None:
            if len(self._dates) >= _CACHE_LIMIT:
                self._dates.clear()
            s = self._dates[t] = self._day(round(t * MS_PER_DAY) // MS_PER_DAY)
        return s

    def stamp(self, t: float | None) -> str:
        """``YYYY-MM-DDTHH:MM:SSZ`` (milliseconds dropped), or an empty string for None."""
        if t is None:
            return ""
        s = self._stamps.get(t)
        if s is None:
            if len(self._stamps) >= _CACHE_LIMIT:
                self._stamps.clear()
            day, rest = divmod(round(t * MS_PER_DAY) // 1000, 86400)
            h, rest = divmod(rest, 3600)
            m, sec = divmod(rest, 60)
            s = self._stamps[t] = f"{self._day(day)}T{h:02d}:{m:02d}:{sec:02d}Z"
        return s
