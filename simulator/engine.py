"""The module engine: compiled module programs and the SimPy process that steps one
patient through one module.

Each module is compiled once per run into a :class:`Program` (immutable compiled states).
Per patient and module the engine keeps only a small :class:`ModuleRun`: the current state,
PriorState bookkeeping and, shared with the submodules it calls, the module's open
encounter and the entries its states recorded. A state that continues is a plain call; only
a wait (Delay, Procedure, Guard, wellness Encounter) is a SimPy event, so a Delay is exactly
one timeout and states after it run at its exact end ("time travel" is not needed).
"""

from __future__ import annotations

import math
from collections.abc import Generator
from typing import Any

from modules.errors import ModuleError, SimulationError
from modules.loader import Module, ModuleLibrary
from simulator.person import Person
from simulator.record import Code, Encounter, Entry
from simulator.states import TERMINAL, CompiledState, compile_state
from simulator.timing import compile_duration
from simulator.transitions import compile_transition

__all__ = ["Program", "ModuleRun", "Shared", "compile_library", "compile_module", "run_module"]


_MAX_INSTANT_STEPS = 100_000


class Program:
    """A module compiled for execution."""

    __slots__ = ("key", "name", "states", "initial")

    def __init__(self, key: str, name: str, states: dict[str, CompiledState]) -> None:
        self.key = key
        self.name = name
        self.states = states
        self.initial = states["Initial"]


def compile_module(module: Module, library: ModuleLibrary | None) -> Program:
    """Compile every state of ``module``. Raises ModuleError naming file and state."""
    states: dict[str, CompiledState] = {}
    for name, spec in module.states.items():
        where = f"{module.path}: states.{name}"
        try:
            nxt = compile_transition(name, spec, library)
        except ModuleError as exc:
            raise ModuleError(f"{where}: {exc}") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise ModuleError(f"{where}: malformed transition ({type(exc).__name__}: {exc})") from None
        states[name] = compile_state(name, spec, nxt, where)
        if library is not None:
            _fast_forward(states[name], library)
    if "Initial" not in states:
        raise ModuleError(f"{module.path}: module has no 'Initial' state")
    return Program(module.key, module.name, states)


def _fast_forward(state: CompiledState, library: ModuleLibrary) -> None:
    """Let a fixed Delay that loops to itself through a time-ranged lookup table sleep
    through the stretches of time when the table cannot send it anywhere else.

    Synthea's covid19 module waits 4 days at a time from birth, asking a table of dates
    each time; before the table's first date and after its last the answer is "wait
    again" with certainty. Sleeping until the first loop that ends inside the table's span
    gives the same outcome with one event instead of thousands.
    """
    spec = state.spec
    opts = spec.get("lookup_table_transition")
    if state.type != "Delay" or not isinstance(opts, list) or "exact" not in spec:
        return
    defaults = {o.get("transition"): float(o.get("default_probability") or 0.0) for o in opts}
    if defaults.get(state.name) != 1.0 or sum(defaults.values()) != 1.0:
        return
    table = library.lookup_tables.get(opts[0].get("lookup_table_name"))
    span = table.time_span if table is not None else None
    if span is None:
        return
    first, last = span
    step = compile_duration(spec)
    assert step is not None
    d = step(lambda: 0.0)
    if d <= 0:
        return

    def process(run: Any, t: float) -> Any:
        if t + d > last:
            return run.env.event()  # every later loop lands on "wait again": sleep for good
        n = max(1, math.ceil((first - t) / d - 1e-12))
        return run.env.timeout(n * d)
    state.process = process


def compile_library(library: ModuleLibrary) -> dict[str, Program]:
    """Programs for every module of a library, by key."""
    return {key: compile_module(m, library) for key, m in library.modules.items()}


class Shared:
    """What a module shares with the submodules it calls: its open encounter, the entries
    its states recorded (End states find them by state name), onsets waiting for their
    target encounter, and the last wellness visit it took part in."""

    __slots__ = ("encounter", "entries", "pending", "seen_visit", "seq")

    def __init__(self) -> None:
        self.encounter: Encounter | None = None
        self.entries: dict[str, Entry] = {}
        self.pending: list[tuple[str, Entry, Any, Any]] = []
        self.seen_visit: Any = None
        self.seq = 0

    def record_pending(self, encounter_state: str, t: float) -> None:
        """Record every onset that waits for the encounter state ``encounter_state``."""
        if not self.pending:
            return
        keep = []
        for item in self.pending:
            target, entry, record, run = item
            if target == encounter_state:
                record(run, t, entry)
            else:
                keep.append(item)
        self.pending = keep

    def forget_pending(self, entry: Entry) -> None:
        if self.pending:
            self.pending = [p for p in self.pending if p[1] is not entry]


class ModuleRun:
    """One patient's progress through one module (or submodule)."""

    __slots__ = ("person", "env", "program", "module_name", "ctx", "state_name", "last_seq",
                 "last_exit", "history", "hooks", "programs", "top")

    def __init__(self, person: Person, program: Program, programs: dict[str, Program],
                 hooks: Any = None, *, ctx: Shared | None = None, module_name: str | None = None,
                 keep_history: bool = False, top: bool = True) -> None:
        self.person = person
        self.env = person.env
        self.program = program
        self.programs = programs
        self.module_name = module_name or program.name
        self.ctx = ctx or Shared()
        self.state_name = "Initial"
        self.last_seq: dict[str, int] = {}
        self.last_exit: dict[str, float | None] = {}
        self.history: list[list[Any]] | None = [] if keep_history else None
        self.hooks = hooks
        self.top = top

    def enter(self, name: str, t: float) -> None:
        ctx = self.ctx
        ctx.seq += 1
        self.last_seq[name] = ctx.seq
        self.last_exit[name] = None
        if self.history is not None:
            self.history.append([name, t, None, self.program.key])

    def exit(self, name: str, t: float) -> None:
        self.last_exit[name] = t
        if self.history is not None:
            self.history[-1][2] = t

    def die(self, when: float, cause: tuple[Code, ...]) -> None:
        if self.hooks is not None:
            self.hooks.die(self.person, when, cause)
        else:
            p = self.person
            if p.death is None or when < p.death:
                p.death = when
                p.death_cause = cause


def run_module(run: ModuleRun) -> Generator[Any, Any, bool]:
    """The SimPy process body of one module run. Returns True when the module reached a
    Terminal, False when the patient died first."""
    person = run.person
    env = run.env
    states = run.program.states
    state = run.program.initial
    t = env.now
    steps = 0  # states run since time last passed: a module that never waits is a bug
    while True:
        if person.death is not None and person.death <= t:
            return False
        steps += 1
        if steps > _MAX_INSTANT_STEPS:
            raise SimulationError(
                f"module {run.module_name!r}: more than {_MAX_INSTANT_STEPS} states in one "
                f"instant, last {state.name!r}; a loop in the module has no Delay, Guard or "
                f"Encounter to let time pass")
        name = state.name
        run.state_name = name
        run.enter(name, t)
        if state.submodule is not None:
            try:
                sub_program = run.programs[state.submodule]
            except KeyError:
                raise SimulationError(f"module {run.module_name!r}, state {name!r}: submodule "
                                      f"{state.submodule!r} is not in the module library") from None
            sub = ModuleRun(person, sub_program, run.programs, run.hooks, ctx=run.ctx,
                            module_name=run.module_name, keep_history=run.history is not None,
                            top=False)
            finished = yield from run_module(sub)
            run.last_seq.update(sub.last_seq)
            run.last_exit.update(sub.last_exit)
            if run.history is not None and sub.history is not None:
                run.history.extend(sub.history)
            if not finished:
                return False
            t = env.now
            # The calling state appears again after the submodule's states.
            run.state_name = name
            run.enter(name, t)
        else:
            r = state.process(run, t)
            while r is not None:
                if r is TERMINAL:
                    run.exit(name, t)
                    if run.top:
                        enc = run.ctx.encounter
                        if enc is not None and not enc.ended and not enc.scheduled:
                            enc.end(t)
                    return True
                yield r
                t = env.now
                steps = 0
                if person.death is not None and person.death <= t:
                    return False
                if not state.recheck:
                    break
                r = state.process(run, t)
        run.exit(name, t)
        target = state.next(run, t)
        nxt = states.get(target)
        if nxt is None:
            raise SimulationError(f"module {run.module_name!r}, state {name!r}: transition to "
                                  f"missing state {target!r}")
        state = nxt
