"""The project's exception hierarchy.

Every error carecourse raises on purpose derives from :class:`CarecourseError`, so the command
line can print one clear message and exit with status 2, while library users can catch
precisely. It lives in ``modules`` because that is the lowest layer: ``simulator``,
``learned`` and ``exporters`` all import from here.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CarecourseError",
    "ModuleError",
    "ModuleValidationError",
    "Problem",
    "ConfigError",
    "SimulationError",
    "OutputError",
    "DataError",
    "ProtocolError",
]


class CarecourseError(Exception):
    """Root of every error carecourse raises deliberately."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One validation finding: where it is and what to do about it."""

    file: str
    place: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.place}" if self.place else self.file
        return f"{where}: {self.message}"


class ModuleError(CarecourseError):
    """A module file cannot be read or compiled."""


class ModuleValidationError(ModuleError):
    """A module has one or more problems; ``problems`` lists all of them."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        lines = [str(p) for p in self.problems]
        head = f"{len(lines)} problem(s) in module(s):" if len(lines) > 1 else ""
        super().__init__("\n".join([head, *lines]) if head else lines[0])


class ConfigError(CarecourseError):
    """An option or configuration value is impossible."""


class SimulationError(CarecourseError):
    """A module did something the engine cannot carry out (for a named state)."""


class OutputError(CarecourseError):
    """Output cannot be written where it was asked to go."""


def _problems_message(problems: list[Problem], shown: int, noun: str) -> str:
    """One message listing the first ``shown`` problems (with a count of the rest)."""
    lines = [str(p) for p in problems[:shown]]
    if len(problems) > shown:
        lines.append(f"... and {len(problems) - shown} more problem(s)")
    head = f"{len(problems)} problem(s) in {noun}:" if len(problems) > 1 else ""
    return "\n".join([head, *lines]) if head else lines[0]


class DataError(CarecourseError):
    """A data file (event table, baseline table, FHIR resources, a bundled data set) is
    malformed; ``problems`` lists every finding, each with its file and place (row and
    column, or FHIR path)."""

    #: At most this many problems are spelled out in the message; all are in ``problems``.
    SHOWN = 20

    def __init__(self, problems: list[Problem]) -> None:
        if not problems:
            raise ValueError("DataError needs at least one problem")
        self.problems = list(problems)
        super().__init__(_problems_message(self.problems, self.SHOWN, "data"))


class ProtocolError(ConfigError):
    """A trial protocol file is invalid; ``problems`` lists every finding, each with the
    file and the YAML path (and line) of the value, and what to do."""

    SHOWN = 30

    def __init__(self, problems: list[Problem]) -> None:
        if not problems:
            raise ValueError("ProtocolError needs at least one problem")
        self.problems = list(problems)
        super().__init__(_problems_message(self.problems, self.SHOWN, "the trial protocol"))
