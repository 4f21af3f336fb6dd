"""A patient's health record: what happened to them, in the order it happened.

Times are SimPy clock values: days (float) since 1970-01-01 UTC. Dates appear only at the
edges (export). Entries are small slotted objects, built in the hot path; exporters turn
them into CSV rows, FHIR resources or C-CDA sections after the patient has finished.

Every entry keeps the name of the module state that made it (``state``), the codes that
describe it, and the encounter it was recorded in (``encounter``; None for an entry
recorded outside any encounter, which can only happen for supplies and devices).
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = [
    "Code",
    "Entry",
    "Encounter",
    "Condition",
    "Allergy",
    "Medication",
    "Observation",
    "Report",
    "Procedure",
    "Immunization",
    "CarePlan",
    "Device",
    "ImagingStudy",
    "Supply",
    "HealthRecord",
    "ENCOUNTER_MINUTES",
]

SimTime = float


class Code(NamedTuple):
    """A coded concept: (system, code, display). Systems are GMF's names (SNOMED-CT, ...)."""

    system: str
    code: str
    display: str


#: Default length of an encounter by class (EXPECTED.md section 0): emergency 60 min,
#: inpatient/hospice/SNF a day, everything else 15 minutes.
ENCOUNTER_MINUTES: dict[str, float] = {
    "emergency": 60.0,
    "inpatient": 1440.0,
    "hospice": 1440.0,
    "snf": 1440.0,
}
_DEFAULT_ENCOUNTER_MINUTES = 15.0


class Entry:
    """Something recorded at ``start`` (and possibly ended at ``stop``)."""

    __slots__ = ("state", "start", "stop", "codes", "encounter")

    def __init__(
        self,
        state: str,
        start: SimTime,
        codes: tuple[Code, ...],
        encounter: Encounter | None,
    ) -> None:
        self.state = state
        self.start = start
        self.stop: SimTime | None = None
        self.codes = codes
        self.encounter = encounter

    @property
    def code(self) -> Code | None:
        """The first (primary) code, or None for an uncoded entry."""
        return self.codes[0] if self.codes else None

    def __repr__(self) -> str:
        c = self.codes[0].code if self.codes else "-"
        return f"{type(self).__name__}({self.state!r}, code={c}, start={self.start}, stop={self.stop})"


class Encounter(Entry):
    """A visit. ``encounter_class`` is GMF's (wellness, ambulatory, emergency, inpatient...)."""

    __slots__ = ("encounter_class", "reason", "discharge", "ended", "latest_contained",
                 "scheduled")

    def __init__(
        self,
        state: str,
        start: SimTime,
        codes: tuple[Code, ...],
        encounter_class: str,
        reason: Code | None = None,
    ) -> None:
        # Entry's fields set here, as in Observation (hundreds per patient).
        self.state = state
        self.start = start
        self.stop: SimTime | None = None
        self.codes = codes
        self.encounter = None
        self.encounter_class = encounter_class
        self.reason = reason
        self.discharge: Code | None = None
        self.ended = False
        # Latest stop time of anything recorded inside (procedures with a duration...), so
        # the encounter can be stretched to cover them when it ends.
        self.latest_contained = start
        # True for visits the wellness schedule owns: the schedule, not a module, ends them.
        self.scheduled = False

    def default_stop(self) -> SimTime:
        minutes = ENCOUNTER_MINUTES.get(self.encounter_class, _DEFAULT_ENCOUNTER_MINUTES)
        return self.start + minutes / 1440.0

    def end(self, time: SimTime) -> None:
        """Close the encounter at ``time``, never shorter than its class's default length
        and never before the end of something recorded inside it."""
        self.stop = max(self.default_stop(), self.latest_contained, time)
        self.ended = True


class Condition(Entry):
    __slots__ = ()


class Allergy(Entry):
    """An allergy; ``reactions`` holds (Code, severity) pairs with severity MILD/MODERATE/SEVERE."""

    __slots__ = ("allergy_type", "category", "reactions")

    def __init__(self, state, start, codes, encounter, allergy_type="allergy", category="", reactions=()):
        super().__init__(state, start, codes, encounter)
        self.allergy_type = allergy_type
        self.category = category
        self.reactions: tuple[tuple[Code, str], ...] = tuple(reactions)


class Medication(Entry):
    __slots__ = ("reason", "administration", "chronic", "prescription")

    def __init__(self, state, start, codes, encounter, reason=None, administration=False,
                 chronic=False, prescription=None):
        super().__init__(state, start, codes, encounter)
        self.reason: Code | None = reason
        self.administration = administration
        self.chronic = chronic
        self.prescription: dict[str, Any] | None = prescription


class Observation(Entry):
    """A measurement. ``value`` is a float, a str, a Code, or a tuple of floats (sampled data)."""

    __slots__ = ("value", "unit", "category", "components")

    def __init__(self, state, start, codes, encounter, value=None, unit="", category="",
                 components=()):
        # Entry's fields set here, not through super(): the commonest entry (a thousand and
        # more per patient), and the call chain was a measurable part of recording one.
        self.state = state
        self.start = start
        self.stop = None
        self.codes = codes
        self.encounter = encounter
        self.value = value
        self.unit = unit
        self.category = category
        # MultiObservation: the member observations, recorded as components of this one.
        self.components: tuple[Observation, ...] = tuple(components)


class Report(Entry):
    """A DiagnosticReport grouping observations that are also in the record on their own."""

    __slots__ = ("observations",)

    def __init__(self, state, start, codes, encounter, observations=()):
        super().__init__(state, start, codes, encounter)
        self.observations: tuple[Observation, ...] = tuple(observations)


class Procedure(Entry):
    __slots__ = ("reason",)

    def __init__(self, state, start, codes, encounter, reason=None):
        # Entry's fields set here, as in Observation (hundreds per patient).
        self.state = state
        self.start = start
        self.stop = None
        self.codes = codes
        self.encounter = encounter
        self.reason: Code | None = reason


class Immunization(Entry):
    __slots__ = ()


class CarePlan(Entry):
    __slots__ = ("activities", "goals", "reasons")

    def __init__(self, state, start, codes, encounter, activities=(), goals=(), reasons=()):
        super().__init__(state, start, codes, encounter)
        self.activities: tuple[Code, ...] = tuple(activities)
        self.goals: tuple[dict[str, Any], ...] = tuple(goals)
        self.reasons: tuple[Code, ...] = tuple(reasons)


class Device(Entry):
    __slots__ = ("manufacturer", "model")

    def __init__(self, state, start, codes, encounter, manufacturer="", model=""):
        super().__init__(state, start, codes, encounter)
        self.manufacturer = manufacturer
        self.model = model


class ImagingStudy(Entry):
    """``series`` is a tuple of dicts: body_site, modality, instances (each with title and
    sop_class Codes), all as Codes."""

    __slots__ = ("series",)

    def __init__(self, state, start, codes, encounter, series=()):
        super().__init__(state, start, codes, encounter)
        self.series: tuple[dict[str, Any], ...] = tuple(series)


class Supply(Entry):
    __slots__ = ("quantity",)

    def __init__(self, state, start, codes, encounter, quantity=1):
        super().__init__(state, start, codes, encounter)
        self.quantity = quantity


class HealthRecord:
    """All entries of one patient, one list per kind, each in recording order."""

    __slots__ = (
        "encounters",
        "conditions",
        "allergies",
        "medications",
        "observations",
        "reports",
        "procedures",
        "immunizations",
        "careplans",
        "devices",
        "imaging_studies",
        "supplies",
    )

    def __init__(self) -> None:
        self.encounters: list[Encounter] = []
        self.conditions: list[Condition] = []
        self.allergies: list[Allergy] = []
        self.medications: list[Medication] = []
        self.observations: list[Observation] = []
        self.reports: list[Report] = []
        self.procedures: list[Procedure] = []
        self.immunizations: list[Immunization] = []
        self.careplans: list[CarePlan] = []
        self.devices: list[Device] = []
        self.imaging_studies: list[ImagingStudy] = []
        self.supplies: list[Supply] = []

    def latest_encounter(self) -> Encounter | None:
        return self.encounters[-1] if self.encounters else None

    def entry_count(self) -> int:
        return sum(len(getattr(self, k)) for k in self.__slots__)
