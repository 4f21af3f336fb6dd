"""Validate FHIR R4 JSON: bundles, single resources and ndjson files, with the
fhir.resources R4B models (the closest release the package carries to R4 4.0.1).

Each problem is reported with its file and its FHIR path
(``Bundle.entry[3].resource(Observation).valueQuantity.value``) and a kind (the
validator's error type), so a summary can count errors by kind.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "FhirProblem",
    "REQUIRED_CODES",
    "ValidationReport",
    "binding_problems",
    "validate_fhir_paths",
    "validate_resource",
]


@dataclass(frozen=True, slots=True)
class FhirProblem:
    file: str
    path: str
    kind: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.path}: {self.message} [{self.kind}]"


@dataclass
class ValidationReport:
    files: int = 0
    resources: int = 0
    problems: list[FhirProblem] = field(default_factory=list)

    @property
    def by_kind(self) -> Counter:
        return Counter(p.kind for p in self.problems)

    @property
    def by_type(self) -> Counter:
        return Counter(p.path.split("(")[-1].split(")")[0] if "(" in p.path else
                       p.path.split(".")[0] for p in self.problems)


def _model(rtype: str) -> Any:
    from fhir.resources.R4B import get_fhir_model_class

    return get_fhir_model_class(rtype)


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}"
    return out


#: Required bindings (FHIR R4 value sets a code must come from) for the elements carecourse
#: writes; fhir.resources checks structure and types but not these.
REQUIRED_CODES: dict[tuple[str, str], frozenset[str]] = {
    ("Bundle", "type"): frozenset({"document", "message", "transaction", "transaction-response",
                                   "batch", "batch-response", "history", "searchset",
                                   "collection"}),
    ("Patient", "gender"): frozenset({"male", "female", "other", "unknown"}),
    ("Encounter", "status"): frozenset({"planned", "arrived", "triaged", "in-progress",
                                        "onleave", "finished", "cancelled", "entered-in-error",
                                        "unknown"}),
    ("Observation", "status"): frozenset({"registered", "preliminary", "final", "amended",
                                          "corrected", "cancelled", "entered-in-error",
                                          "unknown"}),
    ("DiagnosticReport", "status"): frozenset({"registered", "partial", "preliminary", "final",
                                               "amended", "corrected", "appended", "cancelled",
                                               "entered-in-error", "unknown"}),
    ("Procedure", "status"): frozenset({"preparation", "in-progress", "not-done", "on-hold",
                                        "stopped", "completed", "entered-in-error", "unknown"}),
    ("MedicationRequest", "status"): frozenset({"active", "on-hold", "cancelled", "completed",
                                                "entered-in-error", "stopped", "draft",
                                                "unknown"}),
    ("MedicationRequest", "intent"): frozenset({"proposal", "plan", "order", "original-order",
                                                "reflex-order", "filler-order",
                                                "instance-order", "option"}),
    ("Immunization", "status"): frozenset({"completed", "entered-in-error", "not-done"}),
    ("CarePlan", "status"): frozenset({"draft", "active", "on-hold", "revoked", "completed",
                                       "entered-in-error", "unknown"}),
    ("CarePlan", "intent"): frozenset({"proposal", "plan", "order", "option"}),
    ("AllergyIntolerance", "type"): frozenset({"allergy", "intolerance"}),
    ("Device", "status"): frozenset({"active", "inactive", "entered-in-error", "unknown"}),
    ("ImagingStudy", "status"): frozenset({"registered", "available", "cancelled",
                                           "entered-in-error", "unknown"}),
    ("CareTeam", "status"): frozenset({"proposed", "active", "suspended", "inactive",
                                       "entered-in-error"}),
    ("Goal", "lifecycleStatus"): frozenset({"proposed", "planned", "accepted", "active",
                                            "on-hold", "completed", "cancelled",
                                            "entered-in-error", "rejected"}),
    ("DocumentReference", "status"): frozenset({"current", "superseded", "entered-in-error"}),
    ("Medication", "status"): frozenset({"active", "inactive", "entered-in-error"}),
    ("SupplyDelivery", "status"): frozenset({"in-progress", "completed", "abandoned",
                                             "entered-in-error"}),
}
_REACTION_SEVERITY = frozenset({"mild", "moderate", "severe"})
_ALLERGY_CATEGORY = frozenset({"food", "medication", "environment", "biologic"})


def binding_problems(resource: dict[str, Any], where: str, file: str) -> list[FhirProblem]:
    """Codes outside the required value sets of :data:`REQUIRED_CODES`."""
    rtype = resource.get("resourceType")
    out = []
    for (t, element), allowed in REQUIRED_CODES.items():
        if t == rtype and element in resource and str(resource[element]) not in allowed:
            out.append(FhirProblem(file, f"{where}({rtype}).{element}", "required-binding",
                                   f"{resource[element]!r} is not in the required value set"))
    if rtype == "AllergyIntolerance":
        for i, c in enumerate(resource.get("category") or []):
            if c not in _ALLERGY_CATEGORY:
                out.append(FhirProblem(file, f"{where}({rtype}).category[{i}]",
                                       "required-binding", f"{c!r} is not an allergy category"))
        for i, r in enumerate(resource.get("reaction") or []):
            sev = r.get("severity") if isinstance(r, dict) else None
            if sev is not None and sev not in _REACTION_SEVERITY:
                out.append(FhirProblem(file, f"{where}({rtype}).reaction[{i}].severity",
                                       "required-binding", f"{sev!r} is not a reaction severity"))
    if rtype == "Bundle":
        for i, e in enumerate(resource.get("entry") or []):
            method = (e.get("request") or {}).get("method") if isinstance(e, dict) else None
            if method is not None and method not in ("GET", "HEAD", "POST", "PUT", "DELETE",
                                                     "PATCH"):
                out.append(FhirProblem(file, f"{where}(Bundle).entry[{i}].request.method",
                                       "required-binding", f"{method!r} is not an HTTP verb"))
    return out


def validate_resource(resource: Any, where: str, file: str) -> list[FhirProblem]:
    """Problems of one resource (a dict with ``resourceType``); ``where`` prefixes paths."""
    from pydantic import ValidationError

    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        return [FhirProblem(file, where, "structure", "not a FHIR resource (no resourceType)")]
    rtype = resource["resourceType"]
    try:
        model = _model(rtype)
    except (KeyError, ValueError, AttributeError):
        return [FhirProblem(file, where, "unknown-type", f"unknown resourceType {rtype!r}")]
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        return [FhirProblem(file, f"{where}({rtype}){_loc(tuple(e['loc']))}", str(e["type"]),
                            str(e["msg"])) for e in exc.errors()]
    return binding_problems(resource, where, file)


def _resources_of(obj: Any, file: str) -> Iterator[tuple[Any, str]]:
    """(resource, FHIR path) pairs: a bundle is checked entry by entry for precise paths."""
    if isinstance(obj, dict) and obj.get("resourceType") == "Bundle":
        shell = {k: v for k, v in obj.items() if k != "entry"}
        yield shell, "Bundle"
        for i, entry in enumerate(obj.get("entry") or []):
            if isinstance(entry, dict) and "resource" in entry:
                yield entry["resource"], f"Bundle.entry[{i}].resource"
            else:
                yield None, f"Bundle.entry[{i}]"
    else:
        yield obj, ""


def validate_fhir_paths(paths: list[Path | str]) -> ValidationReport:
    """Validate ``.json`` and ``.ndjson`` files, or folders of them (recursively; a Bulk Data
    ``manifest.json`` is skipped)."""
    report = ValidationReport()
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.suffix in (".json", ".ndjson")
                                and f.name != "manifest.json" and not f.name.startswith(".")))
        elif p.is_file():
            files.append(p)
        else:
            report.problems.append(FhirProblem(str(p), "", "missing", "no such file or folder"))
    for f in files:
        report.files += 1
        name = str(f)
        try:
            text = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            report.problems.append(FhirProblem(name, "", "read", str(exc)))
            continue
        if f.suffix == ".ndjson":
            docs = []
            for n, line in enumerate(text.splitlines(), start=1):
                if line.strip():
                    docs.append((line, f"line {n}: "))
        else:
            docs = [(text, "")]
        for doc, prefix in docs:
            try:
                obj = json.loads(doc)
            except json.JSONDecodeError as exc:
                report.problems.append(FhirProblem(name, f"{prefix}line {exc.lineno}", "json",
                                                   f"invalid JSON: {exc.msg}"))
                continue
            for resource, where in _resources_of(obj, name):
                if where == "Bundle":  # the bundle itself, its entries checked one by one
                    report.problems.extend(validate_resource(resource, prefix + where, name))
                    continue
                report.resources += 1
                if resource is None:
                    report.problems.append(FhirProblem(name, prefix + where, "structure",
                                                       "bundle entry without a resource"))
                    continue
                report.problems.extend(validate_resource(resource, prefix + where, name))
    return report
