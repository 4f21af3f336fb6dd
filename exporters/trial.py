"""``carecourse trial build``: a synthetic control arm from a protocol, written as CDISC
datasets, FHIR bundles with ResearchStudy / ResearchSubject, and a record of the build.

Everything is written into a temporary folder beside ``--out`` and moved into place only
when the whole arm is done, so a failed build leaves nothing half-written.

Files (see the README's "Clinical-trial control arms"): ``adsl``, ``adtte``, ``adeff``
(when the protocol has binary or observation endpoints) and ``dm`` as ``.csv`` and
``.xpt``; ``baseline.csv`` (each subject's baseline covariates under their source
names, for ``trial compare``); ``fhir/``; ``consort.png``; ``protocol.yaml`` (the
protocol as given) and ``build.json`` (protocol digest, CONSORT counts, endpoints,
files, and the learned models and privacy budget behind the arm: none for a rule-based
course).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pandas as pd

from exporters.cdisc import adeff, adsl, adtte, dm, write_dataset
from exporters.research import TrialFhirWriter
from modules.errors import OutputError
from simulator.cohort import BaselineSource, CohortResult, Subject, run_cohort
from simulator.engine import Program
from simulator.person import Person
from simulator.protocol import Protocol

__all__ = ["BUILD_FILE", "BuildSummary", "build_arm", "read_build"]

BUILD_FILE = "build.json"


@dataclass(frozen=True)
class BuildSummary:
    out: Path
    result: CohortResult
    files: tuple[str, ...]


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputError(f"{out}: already exists and is not an empty folder; choose a new "
                          "--out folder (a build never mixes with other files)")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=out.parent, prefix=".carecourse-probe-")
        probe.close()
    except OSError as exc:
        raise OutputError(f"{out.parent}: cannot write there ({exc.strerror}); choose "
                          "another --out") from None


def build_arm(protocol: Protocol, source: BaselineSource, programs: dict[str, Program],
              out: Path, *, learned: dict[str, Any] | None = None,
              progress: bool = True) -> BuildSummary:
    """Run the protocol's cohort and write the arm into ``out`` (new or empty).
    ``learned`` records the learned models and privacy budget behind the arm
    (``{"models": [model card, ...], "privacy": {"epsilon": .., "delta": ..}}``)."""
    _check_out(out)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        fhir = TrialFhirWriter(work / "fhir", protocol)

        def enrolled(person: Person, subject: Subject) -> None:
            fhir.write(person, subject)

        result = run_cohort(protocol, source, programs, on_enrolled=enrolled,
                            progress=progress)
        subjects = result.subjects
        fhir.close(subjects)
        columns = list(dict.fromkeys(c for s in subjects for c in s.covariates))
        files: list[str] = []
        for ds, stem in ((adsl(protocol, subjects, columns), "adsl"),
                         (adtte(protocol, subjects), "adtte"),
                         (adeff(protocol, subjects), "adeff"),
                         (dm(protocol, subjects), "dm")):
            if ds is not None:
                files += [p.name for p in write_dataset(ds, work, stem)]
        base = pd.DataFrame([{"USUBJID": f"{protocol.study_id}-{s.number + 1:05d}",
                              **s.covariates} for s in subjects])
        base.to_csv(work / "baseline.csv", index=False)
        files.append("baseline.csv")
        from exporters.trial_report import consort_figure

        consort_figure(result.consort, protocol, work / "consort.png")
        files.append("consort.png")
        text = protocol.path.read_bytes() if protocol.path.is_file() else b""
        (work / "protocol.yaml").write_bytes(text)
        files += ["protocol.yaml", "fhir/"]
        record = {
            "protocol": str(protocol.path), "protocol_sha256": hashlib.sha256(text).hexdigest(),
            "name": protocol.name, "study_id": protocol.study_id, "seed": protocol.seed,
            "arm": {"name": protocol.arm.name, "code": protocol.arm.code,
                    "size": protocol.arm.size},
            "modules": list(protocol.modules),
            "baseline_source": source.name,
            "primary_endpoint": protocol.primary.paramcd,
            "endpoints": [{"paramcd": e.paramcd, "name": e.name, "type": e.kind,
                           "at_days": e.at_days} for e in protocol.endpoints],
            "consort": result.consort.as_dict(),
            "learned": learned or {"models": [], "privacy": None},
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "files": files,
        }
        (work / BUILD_FILE).write_bytes(orjson.dumps(record, option=orjson.OPT_INDENT_2))
        if out.exists():
            out.rmdir()
        os.replace(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return BuildSummary(out, result, tuple(files))


def read_build(folder: Path) -> dict[str, Any]:
    """The record of a build folder. Raises OutputError when ``folder`` is not one."""
    path = folder / BUILD_FILE
    try:
        return orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise OutputError(f"{folder}: not a trial build (no {BUILD_FILE}); give the --out "
                          "folder of 'carecourse trial build'") from None
    except orjson.JSONDecodeError as exc:
        raise OutputError(f"{path}: damaged ({exc}); build the arm again") from None
