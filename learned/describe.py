"""Plain-text descriptions of data sets: what ``carecourse datasets`` prints."""

from __future__ import annotations

import textwrap

from learned.datasets import DatasetInfo, dataset_names, get_dataset, load_dataset
from learned.events import EventData
from modules.errors import ConfigError

__all__ = ["catalogue", "describe"]

_WIDTH = 96


def _wrap(text: str, indent: str) -> str:
    return textwrap.fill(text, _WIDTH, initial_indent=indent, subsequent_indent=indent)


def catalogue() -> str:
    """One entry per built-in data set: patients, events, states, covariates and source
    (loading each; a data set whose package is missing says how to install it)."""
    out = []
    for name in dataset_names():
        info = get_dataset(name)
        try:
            data = load_dataset(name)
        except ConfigError as exc:
            counts = f"not available: {exc}"
        else:
            counts = (f"{data.patients} patients, {len(data.events)} events, "
                      f"{len(data.baseline.columns)} covariates, time in {data.time_unit} "
                      f"since {info.origin}")
        out.append(f"{name}: {info.title}")
        out.append(_wrap(counts, "    "))
        out.append(_wrap("states: " + ", ".join(info.states), "    "))
        out.append(_wrap("covariates: " + ", ".join(info.covariates), "    "))
        out.append(_wrap(f"source: {info.source} Shipped in {info.package}.", "    "))
        out.append("")
    out.append(f"{len(dataset_names())} data sets; carecourse datasets show NAME for counts "
               "per state and transition")
    return "\n".join(out)


def describe(data: EventData, info: DatasetInfo | None = None, *, top: int = 15) -> str:
    """A summary of ``data``: counts, follow-up, codes per kind, transitions between states
    and where follow-up ended, covariates. ``info`` adds a built-in data set's meanings."""
    s = data.summary()
    meaning: dict[str, str] = {}
    if info is not None:
        meaning = {**info.states, **info.other_events}
    displays = (data.events.drop_duplicates("code").set_index("code")["display"].to_dict()
                if len(data.events) else {})

    def label(code: str) -> str:
        text = displays.get(code) or ""
        return f"{code} ({text})" if text and text != code else code

    out = [f"{info.name}: {info.title}" if info else f"{data.name}"]
    if info:
        out.append(_wrap(f"source: {info.source} Shipped in {info.package}.", "  "))
    out.append(f"  patients: {s.patients}   events: {s.events}   time: {s.time_unit} since "
               f"{s.origin}")
    out.append(f"  follow-up: median {s.follow_up_median:g}, max {s.follow_up_max:g} "
               f"{s.time_unit}")
    for note in s.notes:
        out.append(_wrap(f"note: {note}", "  "))
    if data.initial_state:
        out.append(f"  initial state: {label(data.initial_state)}")
    for code, text in meaning.items():
        out.append(_wrap(f"{code}: {text}", "    ").replace("    ", "  - ", 1))

    out.append("")
    out.append(f"  {'events':>8s} {'patients':>8s}  {'kind':11s} code")
    shown = list(s.codes.items())
    for (code, kind), (n, p) in shown[:top]:
        out.append(f"  {n:8d} {p:8d}  {kind:11s} {label(code)}")
    if len(shown) > top:
        out.append(f"  ... {len(shown) - top} more code(s) (--top N shows more)")

    out.append("")
    out.append("  transitions between states (patients):" if data.initial_state else
               "  consecutive state entries (patients; (start) is before the first):")
    trans = list(s.transitions.items())
    for (a, b), n in trans[:top]:
        out.append(f"  {n:8d}  {label(a)} -> {label(b)}")
    if not trans:
        out.append("         none")
    elif len(trans) > top:
        out.append(f"  ... {len(trans) - top} more transition(s)")
    out.append("  state at the end of follow-up (patients):")
    finals = list(s.final_states.items())
    for state, n in finals[:top]:
        out.append(f"  {n:8d}  {label(state)}")
    if len(finals) > top:
        out.append(f"  ... {len(finals) - top} more state(s)")

    out.append("")
    out.append(f"  covariates ({len(s.covariates)}):")
    for name, (kind, values) in s.covariates.items():
        what = info.covariates.get(name) if info else None
        out.append(f"    {name:12s} {kind:11s} {values}")
        if what:
            out.append(_wrap(what, " " * 29))
    return "\n".join(out)
