"""The privacy ledger: per data set, every budget spent on it, composed.

One JSON file per data set, named by the data's fingerprint (a SHA-256 of its content in the
event form, so the same data read from a CSV, a Parquet file or the built-in copy is one
data set, and any change to it is another). Each entry (a :class:`Spend`) records what was
released and what it cost. The total composes them all:

- entries analysed in RDP (``accountant == "rdp"``, with their Gaussian mechanisms) are
  composed in RDP, their curves added and converted to epsilon at the sum of their deltas
  (less any delta outside the RDP analysis, which is added back); where plain addition of
  their epsilons is smaller, that is used, as both bounds hold;
- any other entry (another accountant, a mechanism outside RDP) adds its (epsilon, delta)
  by basic composition (Dwork and Roth, *The Algorithmic Foundations of Differential
  Privacy*, 2014, theorem 3.16).

A budget is charged when the work that reads the data starts (:meth:`Ledger.reserve`), not
when it ends, so an interrupted training run still counts: the data was read. ``reserve``
refuses, before anything reads the data, a spend that would take the total over the
budget. Reading, checking and writing happen under a file lock, and the file is replaced
atomically, so two runs at once cannot both squeeze under the budget.

>>> from learned.privacy import Mechanism, calibrate_noise
>>> sigma = calibrate_noise(1.0, 1e-5, 0.01, 1000)    # 1,000 steps at rate 1%: epsilon 1
>>> run = Spend("a training", 1.0, 1e-5, "rdp", (Mechanism("DP-SGD", sigma, 0.01, 1000),))
>>> round(compose([run, run]).epsilon, 2)             # two of them: less than 1 + 1
1.37
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from hashlib import sha256
from pathlib import Path
from typing import Any

import pandas as pd

from learned.events import EventData
from learned.privacy import Mechanism, rdp_epsilon
from modules.errors import ConfigError, OutputError

__all__ = ["LEDGER_FORMAT", "LEDGER_ENV", "Spend", "Total", "Ledger", "compose",
           "data_fingerprint", "default_ledger_dir"]

LEDGER_FORMAT = "carecourse-privacy-ledger/1"
#: Environment variable naming the folder of ledgers.
LEDGER_ENV = "CARECOURSE_LEDGER_DIR"


def default_ledger_dir() -> Path:
    """``$CARECOURSE_LEDGER_DIR``, else ``~/.carecourse/ledgers``."""
    env = os.environ.get(LEDGER_ENV)
    return Path(env) if env else Path.home() / ".carecourse" / "ledgers"


def data_fingerprint(data: EventData) -> str:
    """``sha256:<hex>`` of the data's content: events, baseline covariates and end of
    follow-up, with their column names and kinds (pandas row hashes, which do not depend
    on the order of a category's levels)."""
    h = sha256()
    for frame in (data.events, data.baseline.reset_index(), data.end.reset_index()):
        h.update(json.dumps([[str(c), str(frame[c].dtype.kind)] for c in frame.columns])
                 .encode())
        h.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return "sha256:" + h.hexdigest()


@dataclass(frozen=True)
class Spend:
    """One use of a data set and the privacy it cost. ``epsilon`` may be ``inf`` for a
    release without privacy."""

    what: str
    epsilon: float
    delta: float
    accountant: str
    mechanisms: tuple[Mechanism, ...] = ()
    #: Delta outside the RDP analysis of the mechanisms (partition selection).
    extra_delta: float = 0.0
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    time: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(
        timespec="seconds"))
    status: str = "reserved"
    outputs: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "time": self.time, "what": self.what, "status": self.status,
                "epsilon": self.epsilon if math.isfinite(self.epsilon) else "inf",
                "delta": self.delta, "accountant": self.accountant,
                "mechanisms": [m.to_dict() for m in self.mechanisms],
                "extra_delta": self.extra_delta, "outputs": list(self.outputs)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Spend:
        return cls(what=str(d["what"]), epsilon=float(d["epsilon"]), delta=float(d["delta"]),
                   accountant=str(d["accountant"]),
                   mechanisms=tuple(Mechanism.from_dict(m) for m in d.get("mechanisms", [])),
                   extra_delta=float(d.get("extra_delta", 0.0)), id=str(d["id"]),
                   time=str(d["time"]), status=str(d.get("status", "completed")),
                   outputs=tuple(d.get("outputs", [])))


@dataclass(frozen=True)
class Total:
    epsilon: float
    delta: float
    #: How it was composed, in words.
    method: str


def compose(spends: Sequence[Spend]) -> Total:
    """The total privacy cost of ``spends`` (see the module's docstring)."""
    rdp = [s for s in spends if s.accountant == "rdp" and s.mechanisms
           and math.isfinite(s.epsilon)]
    basic = [s for s in spends if s not in rdp]
    delta = sum(s.delta for s in spends)
    eps_basic = sum(s.epsilon for s in basic)
    parts = []
    eps_rdp = 0.0
    if rdp:
        inner = sum(s.delta - s.extra_delta for s in rdp)
        by_rdp = rdp_epsilon([m for s in rdp for m in s.mechanisms], inner)
        added = sum(s.epsilon for s in rdp)
        eps_rdp = min(by_rdp, added)
        parts.append(f"{len(rdp)} RDP release(s) composed in RDP" if by_rdp <= added else
                     f"{len(rdp)} RDP release(s) added (tighter than RDP here)")
    if basic:
        parts.append(f"{len(basic)} release(s) added by basic composition")
    return Total(eps_rdp + eps_basic, delta, "; ".join(parts) or "nothing spent")


class Ledger:
    """The ledger of one data set, in ``folder / <fingerprint>.json``."""

    def __init__(self, folder: Path | str, fingerprint: str, *, name: str = "",
                 patients: int | None = None) -> None:
        self.folder = Path(folder)
        self.fingerprint = fingerprint
        self.name = name
        self.patients = patients
        self.path = self.folder / (fingerprint.replace(":", "-") + ".json")

    # ----------------------------------------------------------------- reading
    def spends(self) -> list[Spend]:
        """The entries so far (none for a data set never used)."""
        if not self.path.is_file():
            return []
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            if doc.get("format") != LEDGER_FORMAT or doc.get("fingerprint") != self.fingerprint:
                raise ValueError("not the ledger of this data set")
            return [Spend.from_dict(e) for e in doc["entries"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{self.path}: the privacy ledger cannot be read ({exc}); it "
                              "must not be edited by hand: restore it from a backup") from None

    def total(self) -> Total:
        return compose(self.spends())

    # ----------------------------------------------------------------- writing
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            lock = open(self.path.with_suffix(".lock"), "a")  # noqa: SIM115
        except OSError as exc:
            raise OutputError(f"{self.folder}: cannot write the privacy ledger there "
                              f"({exc.strerror}); choose another with --ledger-dir") from None
        try:
            try:
                import fcntl
            except ImportError:  # pragma: no cover - not POSIX: no lock
                yield
                return
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        finally:
            lock.close()

    def _write(self, spends: list[Spend]) -> None:
        doc = {"format": LEDGER_FORMAT, "fingerprint": self.fingerprint, "data": self.name,
               "patients": self.patients, "entries": [s.to_dict() for s in spends]}
        t = compose(spends)
        doc["total"] = {"epsilon": t.epsilon if math.isfinite(t.epsilon) else "inf",
                        "delta": t.delta, "method": t.method}
        fd, tmp = tempfile.mkstemp(prefix=".ledger-", suffix=".tmp", dir=self.folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(doc, f, indent=2)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def reserve(self, spend: Spend, budget: float | None = None) -> Total:
        """Record ``spend`` before the work starts; return the new total. Raises
        ConfigError, recording nothing, when the total would exceed ``budget``."""
        with self._locked():
            spends = self.spends()
            before = compose(spends)
            after = compose([*spends, spend])
            if budget is not None and after.epsilon > budget:
                raise ConfigError(
                    f"privacy budget exceeded: the ledger {self.path} has spent epsilon "
                    f"{before.epsilon:.4g} on this data in {len(spends)} release(s); this one "
                    f"(epsilon {spend.epsilon:g}) would bring it to {after.epsilon:.4g}, over "
                    f"--budget {budget:g}. Lower --epsilon (at most about "
                    f"{max(0.0, budget - before.epsilon):.3g} by basic composition) or raise "
                    "--budget; nothing was trained")
            self._write([*spends, spend])
            return after

    def complete(self, spend_id: str, outputs: Sequence[str]) -> None:
        """Mark a reserved spend as completed, with the files it released."""
        with self._locked():
            spends = self.spends()
            done = [replace(s, status="completed", outputs=tuple(outputs))
                    if s.id == spend_id else s for s in spends]
            self._write(done)
