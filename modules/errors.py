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
        lines = [str(p) for p in self.problems[: self.SHOWN]]
        if len(self.problems) > self.SHOWN:
            lines.append(f"... and {len(self.problems) - self.SHOWN} more problem(s)")
        head = f"{len(self.problems)} problem(s) in data:" if len(self.problems) > 1 else ""
        super().__init__("\n".join([head, *lines]) if head else lines[0])
