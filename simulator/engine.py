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
from modules.gmf import normalize_condition_type, transition_key
from modules.loader import Module, ModuleLibrary
from simulator import facts
from simulator.extensions import delay_site, learned_kind, plain_gmf
from simulator.person import Person
from simulator.record import Code, Encounter, Entry
from simulator.states import TERMINAL, CompiledState, compile_state, no_work
from simulator.timing import compile_duration
from simulator.transitions import compile_transition

__all__ = ["Program", "ModuleRun", "Shared", "compile_library", "compile_module", "run_module"]


_MAX_INSTANT_STEPS = 100_000


class Program:
    """A module compiled for execution."""

    __slots__ = ("key", "name", "states", "initial", "background_excludes")

    def __init__(self, key: str, name: str, states: dict[str, CompiledState],
                 background_excludes: tuple[str, ...] = ()) -> None:
        self.key = key
        self.name = name
        self.states = states
        self.initial = states["Initial"]
        #: Causes of death this module simulates itself, so background mortality leaves
        #: them out (the carecourse extension key ``background_mortality_excludes``).
        self.background_excludes = background_excludes


def compile_module(module: Module, library: ModuleLibrary | None, *,
                   use_fallbacks: bool = False, tracked: frozenset[str] | None = None
                   ) -> Program:
    """Compile every state of ``module``. Raises ModuleError naming file and state.

    Learned keys are compiled by their registered kinds; with ``use_fallbacks`` they are
    replaced by their plain GMF fallbacks instead (see :mod:`simulator.extensions`).
    ``tracked``: the state names PriorState conditions can ask about (by default those of
    ``library`` found by :func:`prior_state_names`; every state when there is none)."""
    if tracked is None and library is not None:
        tracked = prior_state_names(library)
    states: dict[str, CompiledState] = {}
    for name, spec in module.states.items():
        where = f"{module.path}: states.{name}"
        if use_fallbacks:
            spec = plain_gmf(spec)
        try:
            nxt = compile_transition(name, spec, library, module.path)
        except ModuleError as exc:
            msg = str(exc)
            raise ModuleError(msg if msg.startswith(str(module.path)) else f"{where}: {msg}") \
                from None
        except (KeyError, TypeError, ValueError) as exc:
            raise ModuleError(f"{where}: malformed transition ({type(exc).__name__}: {exc})") from None
        states[name] = compile_state(name, spec, nxt, where)
        if "learned_delay" in spec:
            _learned_delay(states[name], module)
        if library is not None:
            _fast_forward(states[name], library)
        _skip_loop(states[name])
        st = states[name]
        st.plain = st.process is no_work and st.submodule is None and st.skip is None
    if "Initial" not in states:
        raise ModuleError(f"{module.path}: module has no 'Initial' state")
    for st in states.values():
        if st.type != "Physiology" and transition_key(st.spec) == "direct_transition":
            st.following = states.get(st.spec["direct_transition"])
        if tracked is not None:
            st.tracked = st.name in tracked
    for st in states.values():
        st.jump = _jump(st)
    return Program(module.key, module.name, states, _background_excludes(module))


def _jump(state: CompiledState) -> CompiledState | None:
    """``state.following``, past the plain untracked states with a direct transition after
    it (stopping where such a chain comes round to a state already passed)."""
    nxt = state.following
    seen = {id(state)}
    while (nxt is not None and nxt.plain and not nxt.tracked and nxt.following is not None
           and id(nxt) not in seen):
        seen.add(id(nxt))
        nxt = nxt.following
    return nxt


def prior_state_names(library: ModuleLibrary) -> frozenset[str]:
    """Every state name that a PriorState condition of ``library`` names (as ``name`` or
    ``since``), wherever the condition sits (transitions, Guards, learned fallbacks). A
    module run notes when it enters and leaves these states; the others' passage is not
    asked about by anything."""
    names: set[str] = set()
    stack: list[Any] = [m.states for m in library.modules.values()]
    while stack:
        node = stack.pop()
        if type(node) is dict:
            kind = node.get("condition_type")
            if isinstance(kind, str) and normalize_condition_type(kind) == "PriorState":
                names.update(v for v in (node.get("name"), node.get("since"))
                             if isinstance(v, str))
            # only containers can hold a condition; code lists never do (most of a module)
            stack.extend(v for k, v in node.items()
                         if type(v) in _CONTAINERS and k != "codes")
        else:
            stack.extend(v for v in node if type(v) in _CONTAINERS)
    return frozenset(names)


_CONTAINERS = frozenset({dict, list})


def _background_excludes(module: Module) -> tuple[str, ...]:
    causes = module.spec.get("background_mortality_excludes") or []
    known = facts.mortality_causes()
    if not isinstance(causes, list) or not all(isinstance(c, str) for c in causes):
        raise ModuleError(f"{module.path}: background_mortality_excludes must be a list of "
                          f"cause names, one of {', '.join(known)}")
    unknown = [c for c in causes if c not in known]
    if unknown:
        raise ModuleError(f"{module.path}: background_mortality_excludes: unknown cause "
                          f"{unknown[0]!r}; known: {', '.join(known)} (simulator/data/"
                          f"cause_death_rates.csv)")
    return tuple(causes)


def _learned_delay(state: CompiledState, module: Module) -> None:
    """A Delay whose dwell time comes from a learned model: one timeout of the drawn
    length (an infinite one never ends)."""
    site = delay_site(module.path, state.name, state.spec)
    fallback = compile_duration(state.spec)
    assert fallback is not None  # validation: a Delay has exact, range or distribution
    duration = learned_kind(site).delay(site, fallback)

    def process(run: Any, t: float) -> Any:
        d = duration(run, t)
        return run.env.event() if d == math.inf else run.env.timeout(d)
    state.process = process


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
        return run.env.timeout(_table_turn(t, d, first) - t)
    state.process = process
    # Inside the table's span the turns are drawn one by one, without an event each
    # (covid19's loop turns every 4 days through 2020-2022).
    assert state.next is not None
    state.skip = LoopSkip(state.name, spec, state.next, step, d,
                          frozenset(table.attribute_columns), span=span)


def _table_turn(t: float, step: float, first: float) -> float:
    """The next turn after ``t`` of a loop of ``step`` through a table whose span starts at
    ``first``: the next one, or the first at or after ``first`` (the turns before it all
    stay)."""
    return t + max(1, math.ceil((first - t) / step - 1e-12)) * step


_CLOCK_CONDITIONS = frozenset({"Age", "Date", "True", "False"})
#: Conditions that read one patient attribute (set only through ``set_attribute``).
_ATTRIBUTE_CONDITIONS = {"Attribute": None, "Gender": "gender", "Race": None,
                         "SocioeconomicStatus": "socioeconomic_category"}
_COMBINATIONS = frozenset({"And", "Or", "AtLeast", "AtMost"})
#: A loop that never leaves stops being drawn this long after birth (the oldest age a life
#: reaches), so drawing always ends.
_LIFE_HORIZON_DAYS = 141 * 365.25


def _reads(cond: Any, attrs: set[str], loop: str) -> bool:
    """Whether a GMF condition tested in the loop state ``loop`` reads nothing but the clock
    (age, date), patient attributes and the module's earlier states; the attributes it reads
    are added to ``attrs``. A PriorState on another state cannot change while the module
    turns in the loop (only this module run enters its states), and its ``within`` window
    closes at a known time."""
    if not isinstance(cond, dict) or not isinstance(cond.get("condition_type"), str):
        return False
    kind = normalize_condition_type(cond["condition_type"])
    if kind in _CLOCK_CONDITIONS:
        return True
    if kind == "PriorState":
        return isinstance(cond.get("name"), str) and loop not in (cond["name"], cond.get("since"))
    if kind in _ATTRIBUTE_CONDITIONS:
        if kind == "Race":
            attrs.update(("race", "ethnicity"))
        elif kind == "Attribute":
            if not isinstance(cond.get("attribute"), str):
                return False
            attrs.add(cond["attribute"])
        else:
            attrs.add(_ATTRIBUTE_CONDITIONS[kind])  # type: ignore[arg-type]
        return True
    if kind in _COMBINATIONS:
        return all(_reads(c, attrs, loop) for c in cond.get("conditions") or [])
    if kind == "Not":
        return _reads(cond.get("condition"), attrs, loop)
    return False


def _weights(distributions: Any, attrs: set[str]) -> bool:
    if not isinstance(distributions, list):
        return False
    for o in distributions:
        d = o.get("distribution")
        if isinstance(d, dict) and isinstance(d.get("attribute"), str):
            attrs.add(d["attribute"])
        elif not isinstance(d, (int, float)) or isinstance(d, bool):
            return False
    return True


def _loop_reads(name: str, spec: dict[str, Any]) -> set[str] | None:
    """For a Delay whose transition can lead back to itself and reads nothing but the clock
    and patient attributes (Synthea's "each month, a small chance" loops): the attributes
    it reads. None for any other state."""
    if spec.get("type") != "Delay":
        return None
    key = transition_key(spec)
    opts = spec.get(key) if key else None
    if not isinstance(opts, list) or not opts:
        return None
    attrs: set[str] = set()
    if key == "distributed_transition":
        ok = _weights(opts, attrs)
        targets = [o.get("transition") for o in opts]
    elif key in ("conditional_transition", "complex_transition"):
        ok = all(("condition" not in o or _reads(o["condition"], attrs, name))
                 and ("distributions" in o and _weights(o["distributions"], attrs)
                      or "distributions" not in o and isinstance(o.get("transition"), str))
                 for o in opts)
        targets = [o.get("transition") for o in opts]
        targets += [d.get("transition") for o in opts for d in o.get("distributions") or []]
    else:
        return None
    return attrs if ok and name in targets else None


def _weight_fn(distributions: list[dict[str, Any]]) -> Any:
    """``weights(person) -> [(target, effective probability)]`` as ``_pick`` draws them:
    cumulative probabilities cut at 1, whatever is left over going to the last option."""
    targets = [o["transition"] for o in distributions]
    specs = [o["distribution"] for o in distributions]

    def weights(person: Person) -> list[tuple[str, float]]:
        attrs = person.attributes
        out = []
        acc = 0.0
        for i, (tg, d) in enumerate(zip(targets, specs, strict=True)):
            if isinstance(d, dict):
                v = attrs.get(d["attribute"], d.get("default", 0.0))
                w = float(v) if isinstance(v, (int, float)) else float(d.get("default", 0.0))
            else:
                w = float(d)
            lo = min(max(acc, 0.0), 1.0)
            acc += w
            hi = 1.0 if i == len(targets) - 1 else min(max(acc, 0.0), 1.0)
            out.append((tg, max(0.0, hi - lo)))
        return out
    return weights


class LoopSkip:
    """How the engine runs a loop found by :func:`_loop_reads` without an event per turn.

    Each turn waits the Delay, then draws the transition, whose probabilities depend only
    on the time of the turn and the attributes in ``reads``. Between the moments when an
    age or date condition flips, the probability of leaving is the same at every turn, so
    the number of turns until the loop is left is geometric: one draw per stretch instead
    of one per turn, then one more for which exit. The engine then waits once, until that
    turn. If another module sets one of the attributes first, the turns before that moment
    stand (they had the values of their time) and the rest are drawn again from the last
    turn with the new values; the geometric law has no memory, so this is exact. The
    distribution of what happens is the same as turn by turn; the patient's random stream
    is consumed differently. Synthea's acute-illness and heart modules loop this way every
    month of a life (the heart ones on risk attributes that may never be set), so this
    saves thousands of events per patient. A loop with a random Delay and no attributes is
    drawn turn by turn, in a plain loop, without events.
    """

    __slots__ = ("name", "nxt", "dur", "step", "reads", "options", "timed", "span")

    def __init__(self, name: str, spec: dict[str, Any], nxt: Any, dur: Any,
                 step: float | None, reads: frozenset[str],
                 span: tuple[float, float] | None = None) -> None:
        from simulator.logic import compile_condition

        self.name = name
        self.nxt = nxt
        self.dur = dur
        self.step = step
        self.reads = reads
        #: For a loop through a time-ranged lookup table: the table's first and last time.
        #: Before the first, every turn stays; after the last, the loop sleeps for good.
        self.span = span
        key = transition_key(spec)
        opts = spec[key]
        self.options: list[tuple[Any, Any]] = []
        self.timed: list[Any] = []
        if span is not None:
            return
        if key == "distributed_transition":
            self.options.append((None, _weight_fn(opts)))
        else:
            for o in opts:
                cond = compile_condition(o["condition"]) if "condition" in o else None
                if "distributions" in o:
                    go = _weight_fn(o["distributions"])
                else:
                    fixed = [(o["transition"], 1.0)]
                    go = (lambda w: (lambda person: w))(fixed)
                self.options.append((cond, go))
        self.timed = [c.next_change for c, _ in self.options if c is not None and c.timed]

    def _probabilities(self, run: ModuleRun, t: float) -> tuple[list[tuple[str, float]], float]:
        """The exits of a turn at ``t``, and when an age or date condition may next flip."""
        change = math.inf
        for f in self.timed:
            c = f(run, t)
            if c < change:
                change = c
        for cond, go in self.options:
            if cond is None or cond.test(run, t):
                return go(run.person), change
        return self.options[-1][1](run.person), change

    def plan(self, run: ModuleRun, t: float) -> tuple[float, str]:
        """(time of the first turn after ``t`` that leaves, the state it goes to); the time
        is infinite when no turn can leave until an attribute changes."""
        person = run.person
        u = person.uniform
        limit = person.birth + _LIFE_HORIZON_DAYS
        if person.death is not None and person.death < limit:
            limit = person.death
        name = self.name
        step = self.step
        if self.span is not None:
            assert step is not None and step > 0
            first, last = self.span
            nxt = self.nxt
            while True:
                turn = _table_turn(t, step, first)
                if turn > limit:
                    return turn, name
                if turn > last:
                    return math.inf, name
                target = nxt(run, turn)
                if target != name:
                    return turn, target
                t = turn
        if step is None or step <= 0:
            nxt, dur = self.nxt, self.dur
            while True:
                d = dur(u)
                t += d
                target = nxt(run, t)
                if target != name or t > limit or d <= 0:
                    return t, target
        while True:
            turn = t + step
            if turn > limit:
                return turn, name
            exits, change = self._probabilities(run, turn)
            leave = sum(p for tg, p in exits if tg != name)
            end = min(change, limit + step)
            if end == math.inf:
                turns = math.inf
            else:
                turns = max(1, math.ceil((end - turn) / step - 1e-9))
            if leave > 0:
                k = 1 if leave >= 1 else 1 + math.floor(math.log1p(-u()) / math.log1p(-leave))
                if k <= turns:
                    v = u() * leave
                    acc = 0.0
                    chosen = name
                    for tg, p in exits:
                        if tg != name:
                            acc += p
                            chosen = tg
                            if v < acc:
                                break
                    return turn + (k - 1) * step, chosen
            if turns == math.inf:
                return math.inf, name
            t = turn + (turns - 1) * step

    def last_turn(self, base: float, now: float) -> float:
        """The last turn at or before ``now`` of a loop whose turns started at ``base``."""
        assert self.step is not None
        k = math.floor((now - base) / self.step + 1e-9)
        return base + max(0, k) * self.step


def _skip_loop(state: CompiledState) -> None:
    if state.next is None:
        return
    reads = _loop_reads(state.name, state.spec)
    dur = compile_duration(state.spec) if reads is not None else None
    if reads is None or dur is None:
        return
    step = dur(lambda: 0.0) if "exact" in state.spec else None
    if reads and step is None:
        return  # re-planning after a change needs turns on a fixed grid
    state.skip = LoopSkip(state.name, state.spec, state.next, dur, step, frozenset(reads))


def compile_library(library: ModuleLibrary, *, use_fallbacks: bool = False
                    ) -> dict[str, Program]:
    """Programs for every module of a library, by key (``use_fallbacks``: see
    :func:`compile_module`)."""
    tracked = prior_state_names(library)
    return {key: compile_module(m, library, use_fallbacks=use_fallbacks, tracked=tracked)
            for key, m in library.modules.items()}


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
                 "last_exit", "history", "hooks", "programs", "top", "top_key", "entered")

    def __init__(self, person: Person, program: Program, programs: dict[str, Program],
                 hooks: Any = None, *, ctx: Shared | None = None, module_name: str | None = None,
                 keep_history: bool = False, top: bool = True, top_key: str | None = None) -> None:
        self.person = person
        self.env = person.env
        self.program = program
        self.programs = programs
        self.module_name = module_name or program.name
        self.ctx = ctx or Shared()
        self.state_name = "Initial"
        #: When the current state was entered (learned transitions read the time in state).
        self.entered = self.env.now if self.env is not None else 0.0
        self.last_seq: dict[str, int] = {}
        self.last_exit: dict[str, float | None] = {}
        self.history: list[list[Any]] | None = [] if keep_history else None
        self.hooks = hooks
        self.top = top
        # the top-level module this run belongs to: deaths are attributed to it
        self.top_key = top_key or program.key

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
        p = self.person
        before = p.death
        if self.hooks is not None:
            self.hooks.die(p, when, cause)
        elif p.death is None or when < p.death:
            p.death = when
            p.death_cause = cause
        if p.death != before:
            p.death_module = self.top_key


def run_module(run: ModuleRun) -> Generator[Any, Any, bool]:
    """The SimPy process body of one module run. Returns True when the module reached a
    Terminal, False when the patient died first."""
    person = run.person
    env = run.env
    states = run.program.states
    state = run.program.initial
    t = env.now
    steps = 0  # states run since time last passed: a module that never waits is a bug
    # ModuleRun.enter, inlined when nothing is recorded: this loop runs for every state.
    # Without a history only the states a PriorState names are noted (ctx.seq orders
    # those alone): a tenth of the states entered, and smaller notes for each submodule
    # call to copy.
    ctx = run.ctx
    last_seq = run.last_seq
    last_exit = run.last_exit
    recording = run.history is not None
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
        run.entered = t
        if state.plain and not recording:
            # A state that does nothing but move on (half of all): entered and left now,
            # noted only if a PriorState can ask.
            if state.tracked:
                ctx.seq += 1
                last_seq[name] = ctx.seq
                last_exit[name] = t
        else:
            if recording:
                run.enter(name, t)
            elif state.tracked:
                ctx.seq += 1
                last_seq[name] = ctx.seq
                last_exit[name] = None
            if state.submodule is not None:
                try:
                    sub_program = run.programs[state.submodule]
                except KeyError:
                    raise SimulationError(f"module {run.module_name!r}, state {name!r}: submodule "
                                          f"{state.submodule!r} is not in the module library") from None
                sub = ModuleRun(person, sub_program, run.programs, run.hooks, ctx=run.ctx,
                                module_name=run.module_name, keep_history=run.history is not None,
                                top=False, top_key=run.top_key)
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
                if recording or state.tracked:
                    run.enter(name, t)
            elif state.skip is not None and run.history is None:
                skip = state.skip
                base = t
                while True:
                    at, target = skip.plan(run, base)
                    tm = None
                    if not skip.reads:
                        # An infinite wait is a loop that can never leave: sleep for good.
                        yield env.timeout(at - t) if at != math.inf else env.event()
                    else:
                        wake = env.event()
                        for key in skip.reads:
                            person.watch(key, wake)
                        if at != math.inf:
                            tm = env.timeout(at - t)
                            tm.callbacks.append(
                                lambda _ev, w=wake: None if w.triggered else w.succeed())
                        yield wake
                    t = env.now
                    steps = 0
                    if person.death is not None and person.death <= t:
                        return False
                    if not skip.reads or (tm is not None and tm.triggered):
                        break
                    base = skip.last_turn(base, t)  # an attribute changed: draw again from here
                if state.tracked:
                    last_exit[name] = t
                try:
                    state = states[target]
                except KeyError:
                    raise _missing(run, name, target) from None
                continue
            elif state.process is not no_work:
                r = state.process(run, t)
                while r is not None:
                    if r is TERMINAL:
                        if recording or state.tracked:
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
            if recording:
                run.exit(name, t)
            elif state.tracked:
                last_exit[name] = t
        nxt = state.following if recording else state.jump
        if nxt is None:
            target = state.next(run, t)
            try:
                nxt = states[target]
            except KeyError:
                raise _missing(run, name, target) from None
        state = nxt


def _missing(run: ModuleRun, name: str, target: str) -> SimulationError:
    return SimulationError(f"module {run.module_name!r}, state {name!r}: transition to "
                           f"missing state {target!r}")
