"""Run a population: one SimPy Environment per patient, patients split into partitions of
patient indices, each partition streamed to its own output part, parts merged in index
order. The same seed gives byte-identical output whatever the number of processes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import hashlib
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from heapq import heappop, heappush
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import orjson
import simpy

from modules.errors import ConfigError, OutputError
from modules.extensions import LEARNED_KEYS, uses_learned_keys
from modules.loader import ModuleLibrary, default_library_path, load_library
from simulator.demographics import sample_demographics
from simulator.engine import ModuleRun, Program, compile_library, run_module
from simulator.extensions import LearnedSite
from simulator.lifecycle import Lifecycle, social_attributes
from simulator.person import Person, day_of

__all__ = [
    "RunConfig",
    "Sink",
    "PatientWriter",
    "RunSummary",
    "patient_seed",
    "load_extensions",
    "simulate_patient",
    "PatientEnvironment",
    "run_population",
]


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides a run's output. Validated in :meth:`check`."""

    population: int = 10
    seed: int = 0
    age_range: tuple[int, int] = (0, 100)
    gender: str | None = None
    state: str | None = None
    reference_date: dt.date = field(default_factory=lambda: dt.datetime.now(dt.UTC).date())
    end_date: dt.date | None = None
    years_of_history: int = 10
    modules_dir: Path | None = None
    modules: tuple[str, ...] = ()
    out: Path = Path("output")
    processes: int = 1
    lenient: bool = False
    #: Modules to import, in this process and in every worker, before compiling a library
    #: that has learned keys: each registers the learned model kinds it provides
    #: (``carecourse run`` names ``learned.runtime``). Named, not imported by the engine,
    #: so that it does not depend on them, and imported only when a module needs them.
    extensions: tuple[str, ...] = ()
    #: Run learned transitions and delays by their plain GMF fallbacks (no models loaded).
    learned_fallback: bool = False

    @property
    def end(self) -> float:
        return day_of(self.end_date or self.reference_date)

    def check(self) -> None:
        """Raise ConfigError naming the option for any impossible value."""
        if self.population < 1:
            raise ConfigError(f"--population must be at least 1, got {self.population}")
        lo, hi = self.age_range
        if not (0 <= lo <= hi <= 140):
            raise ConfigError(f"--age-range must be LOW-HIGH with 0 <= LOW <= HIGH <= 140, "
                              f"got {lo}-{hi}")
        if self.gender not in (None, "M", "F"):
            raise ConfigError(f"--gender must be M or F, got {self.gender!r}")
        if self.end_date is not None and self.end_date < self.reference_date:
            raise ConfigError(f"--end-date {self.end_date} is before --reference-date "
                              f"{self.reference_date}")
        if self.years_of_history < 0:
            raise ConfigError(f"--years-of-history must be 0 (all) or more, got {self.years_of_history}")
        if self.processes < 1:
            raise ConfigError(f"--processes must be at least 1, got {self.processes}")
        if self.seed < 0:
            raise ConfigError(f"--seed must be a non-negative integer, got {self.seed}")


class PatientWriter(Protocol):
    def write(self, person: Person) -> None: ...
    def close(self) -> None: ...


class Sink(Protocol):
    """An output format. Picklable: it is sent to worker processes."""

    name: str

    def open(self, folder: Path) -> PatientWriter: ...
    def merge(self, parts: list[Path], out: Path) -> None: ...


def patient_seed(run_seed: int, index: int) -> int:
    """The 128-bit seed of patient ``index`` in a run with seed ``run_seed``."""
    state = np.random.SeedSequence(run_seed, spawn_key=(index,)).generate_state(4, np.uint32)
    return int.from_bytes(state.astype("<u4").tobytes(), "little")


def simulate_patient(index: int, config: RunConfig, programs: dict[str, Program],
                     top: list[str], *, keep_history: bool = False) -> Person:
    """Simulate one patient's life from birth to death or the end date."""
    seed = patient_seed(config.seed, index)
    rng = np.random.Generator(np.random.PCG64(seed))
    ref = day_of(config.reference_date)
    lo, hi = config.age_range
    u = rng.random(3)
    age_years = lo + (hi + 1 - lo) * u[0] if hi > lo else float(lo) + u[0] * 0.999
    birth = ref - age_years * 365.25
    demo = sample_demographics(rng, age_years=age_years, gender=config.gender, state=config.state)
    person = Person(index, seed, rng, birth, demo.gender)
    person.demographics = demo
    attrs = person.attributes
    attrs.update({
        "race": demo.race, "ethnicity": demo.ethnicity, "first_language": demo.first_language,
        "income": demo.income, "education": demo.education,
        "socioeconomic_category": demo.socioeconomic_category, "state": demo.state,
        "city": demo.city, "county": demo.county, "marital_status": demo.marital_status,
        "name": f"{demo.first_name} {demo.last_name}",
    })
    # Sexual orientation shares among US adults: Gallup 2023 (about 92% heterosexual).
    attrs["sexual_orientation"] = "heterosexual" if u[1] < 0.92 else (
        "homosexual" if u[2] < 0.4 else "bisexual")
    attrs.update(social_attributes(person, demo))
    env = PatientEnvironment(initial_time=birth)
    person.env = env
    end = config.end
    stop = env.event()
    # Causes of death that the running modules simulate leave the background life table.
    excluded = frozenset(c for key in top for c in programs[key].background_excludes)
    life = Lifecycle(person, env, end, stop, excluded)
    life.start()
    for key in top:
        run = ModuleRun(person, programs[key], programs, life, keep_history=keep_history)
        env.process(run_module(run))
    end_timer = env.timeout(max(0.0, end - birth))
    end_timer.callbacks.append(lambda _e: None if stop.triggered else stop.succeed())
    env.run(until=stop)
    t_end = min(end, person.death) if person.death is not None else end
    for enc in person.record.encounters:
        if not enc.ended:
            enc.end(max(enc.start, min(t_end, enc.default_stop())))
    person.end = t_end
    env.close()
    return person


_NORMAL = simpy.events.NORMAL
_new_timeout = object.__new__


class PatientEnvironment(simpy.Environment):
    """One patient's SimPy environment, which lets go of the patient's processes when the
    life is over. Modules still waiting then (a Guard that never opened, a loop without
    end) hold the patient in reference cycles with their events; closing their generators
    breaks those, so the record is freed by reference counting once it is written."""

    def __init__(self, initial_time: float = 0) -> None:
        super().__init__(initial_time)
        self._bodies: list[Generator[Any, Any, Any]] = []

    def timeout(self, delay: float, value: Any = None) -> simpy.Timeout:  # type: ignore[override]
        """``simpy.Timeout(self, delay, value)`` built in one call: a patient's modules and
        lifecycle make one for every wait (about 1,500 a life), and SimPy's own path
        goes through three Python calls. The event is the same object SimPy makes, queued
        with the same time, priority and order."""
        if delay < 0:
            raise ValueError(f"Negative delay {delay}")
        ev = _new_timeout(simpy.Timeout)
        ev.env = self
        ev.callbacks = []
        ev._value = value
        ev._delay = delay
        ev._ok = True
        heappush(self._queue, (self._now + delay, _NORMAL, next(self._eid), ev))
        return ev

    def run(self, until: Any = None) -> Any:
        """Step until the event ``until`` has been processed, as ``simpy.Environment.run``
        does, with SimPy's ``step`` inlined in one loop (a life steps through about 1,700
        events). Any other ``until`` goes to SimPy."""
        if not isinstance(until, simpy.Event) or until.callbacks is None:
            return super().run(until)
        queue = self._queue
        while until.callbacks is not None:
            if not queue:
                raise RuntimeError(f'No scheduled events left but "until" event was not '
                                   f"triggered: {until}")
            self._now, _, _, event = heappop(queue)
            callbacks, event.callbacks = event.callbacks, None
            for callback in callbacks:
                callback(event)
            if not event._ok and not hasattr(event, "_defused"):
                # as SimPy does: a failed event nobody handled stops the run with a copy
                exc = type(event._value)(*event._value.args)
                exc.__cause__ = event._value
                raise exc
        if not until._ok:
            raise until._value
        return until._value

    def process(self, generator: Generator[Any, Any, Any]) -> simpy.Process:
        self._bodies.append(generator)
        return super().process(generator)

    def close(self) -> None:
        """Close every process (a finished one is left as it is) and drop pending events."""
        for g in self._bodies:
            g.close()
        self._bodies.clear()
        self._queue.clear()


@dataclass
class RunSummary:
    patients: int = 0
    alive: int = 0
    dead: int = 0
    age_sum: float = 0.0
    conditions: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    def add(self, person: Person, end: float) -> None:
        self.patients += 1
        if person.death is not None and person.death <= end:
            self.dead += 1
            self.age_sum += (person.death - person.birth) / 365.25
        else:
            self.alive += 1
            self.age_sum += (end - person.birth) / 365.25
        seen = {c.codes[0].display or c.codes[0].code for c in person.record.conditions if c.codes}
        self.conditions.update(seen)

    def merge(self, other: RunSummary) -> None:
        self.patients += other.patients
        self.alive += other.alive
        self.dead += other.dead
        self.age_sum += other.age_sum
        self.conditions.update(other.conditions)

    @property
    def mean_age(self) -> float:
        return self.age_sum / self.patients if self.patients else 0.0


# ----------------------------------------------------------------------- partitions

_WORKER: dict[str, Any] = {}


def _library(config: RunConfig, checked: bool = True) -> ModuleLibrary:
    return load_library(config.modules_dir, lenient=config.lenient,
                        check_models=not config.learned_fallback, checked=checked)


def library_digest(config: RunConfig) -> str:
    """A digest of the module files the run reads (with learned models' weights and cards
    kept beside them), so a resume with edited modules is refused instead of mixing two
    libraries in one population, and so that worker processes know whether their files
    are those :func:`check_library` checked. (It reads the bytes only, without parsing
    them, but for the modules with learned keys.)"""
    root = Path(config.modules_dir) if config.modules_dir is not None else default_library_path()
    h = hashlib.sha256()
    learned: list[tuple[Path, bytes]] = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix in (".json", ".csv", ".pt"):
            data = p.read_bytes()
            h.update(str(p.relative_to(root)).encode())
            h.update(data)
            if p.suffix == ".json" and b'"learned_' in data:
                learned.append((p, data))
    # Model cards (and the weights they name) that a learned key finds outside the library
    # folder, e.g. "../models/course.json": retraining one changes the population too.
    inside = root.resolve()
    for p in sorted(_model_files(learned)):
        if inside not in p.resolve().parents and p.is_file():
            h.update(str(p).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def _model_files(modules: list[tuple[Path, bytes]]) -> set[Path]:
    """The model cards named by the learned keys of ``modules`` (each file's path and
    bytes; paths relative to each module file, as the engine resolves them), with their
    weights files."""
    out: set[Path] = set()
    for module, data in modules:
        try:
            spec = orjson.loads(data)
        except orjson.JSONDecodeError:
            continue
        states = spec.get("states") if isinstance(spec, dict) else None
        if not isinstance(states, dict):
            continue
        for name, state in states.items():
            if not isinstance(state, dict):
                continue
            for key in LEARNED_KEYS:
                site = state.get(key)
                if not isinstance(site, dict) or not isinstance(site.get("model"), str):
                    continue
                card = LearnedSite(module, name, key, site).resolve(site["model"])
                out.add(card)
                try:
                    weights = orjson.loads(card.read_bytes()).get("weights")
                except (OSError, orjson.JSONDecodeError, AttributeError):
                    continue
                if isinstance(weights, str):
                    out.add(card.parent / weights)
    return out


def check_library(config: RunConfig) -> str:
    """Load and check the run's library in this process (it raises on a broken one) and
    return the digest of the files checked. Worker processes that find files of that
    digest load them without the checks; files that change during the check stop the run."""
    return checked_library(config)[0]


def checked_library(config: RunConfig) -> tuple[str, tuple[dict[str, Program], list[str]]]:
    """:func:`check_library`, keeping what it loaded: (digest, (programs, top-level
    module keys)), for worker processes forked from this one."""
    digest = library_digest(config)
    prepared = _prepare(config)
    if library_digest(config) != digest:
        raise ConfigError(f"{config.modules_dir or 'the module library'}: files changed "
                          f"while the run checked them; run again once they are saved")
    return digest, prepared


def _prepare_checked_elsewhere(config: RunConfig, digest: str
                               ) -> tuple[dict[str, Program], list[str]]:
    """:func:`_prepare` in a worker process whose parent ran :func:`check_library`: the
    checks are skipped if the files here have the digest of those checked there."""
    return _prepare(config, checked=library_digest(config) != digest)


def load_extensions(names: tuple[str, ...]) -> None:
    """Import the extension modules a run names (they register learned kinds); a name that
    cannot be imported raises ConfigError."""
    import importlib

    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"cannot import the extension {name!r} ({exc}); install the "
                              "package that provides it") from None


def _prepare(config: RunConfig, *, checked: bool = True) -> tuple[dict[str, Program], list[str]]:
    """The run's compiled programs and top-level module keys. ``checked=False``: see
    :func:`modules.loader.load_library`."""
    # Loading a library allocates millions of objects that all stay (JSON trees, graphs,
    # tables, compiled states), so the collector's automatic passes find nothing and were
    # about 40% of the load time (Synthea's library: 0.6 s without them, 1.0-1.3 s with).
    with _gc_paused():
        lib = _library(config, checked)
        if not config.learned_fallback and any(uses_learned_keys(m.spec)
                                               for m in lib.modules.values()):
            load_extensions(config.extensions)
        programs = compile_library(lib, use_fallbacks=config.learned_fallback)
        top = [m.key for m in lib.select(list(config.modules) or None)]
    return programs, top


def _worker_init(config: RunConfig, digest: str) -> None:
    _WORKER["config"] = config
    _WORKER["prepared"] = _prepare_checked_elsewhere(config, digest)
    gc.freeze()  # see _frozen: this process keeps the library to its end


@contextlib.contextmanager
def _frozen() -> Iterator[None]:
    """Leave everything alive now out of the collector's passes until the end (gc.freeze;
    both steps are cheap whatever the size). Called with the run's library just loaded:
    millions of objects that all stay, which every pass of the older generations walked
    again (measured: 0.2-0.3 s of a 400-patient run of Synthea's library)."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _run_partition(args: tuple[int, int, Path, list[Any]]) -> tuple[int, RunSummary]:
    start, stop, folder, sinks = args
    config: RunConfig = _WORKER["config"]
    programs, top = _WORKER["prepared"]
    summary = _simulate_range(start, stop, folder, sinks, config, programs, top, None)
    return stop - start, summary


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No automatic garbage collection inside; the collector's previous state is restored
    afterwards."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


@contextlib.contextmanager
def _collect_per_patient() -> Iterator[Callable[[], None]]:
    """Run the garbage collector once after each patient instead of whenever allocations
    pile up. A patient allocates some hundred thousand objects (entries, then the exporters'
    resources), so Python's default thresholds start a young collection every 700 of them
    and walk the live patient again and again: about a quarter of the run time, measured.
    Once a life is over its processes are closed (:meth:`PatientEnvironment.close`) and,
    once written, its record released (:meth:`Person.release`), so nearly all of it is
    freed by reference counting and the one collection per patient finds little left.
    The collector's previous state is restored afterwards."""
    with _gc_paused():
        yield lambda: gc.collect(0)


def _simulate_range(start: int, stop: int, folder: Path, sinks: list[Any], config: RunConfig,
                    programs: dict[str, Program], top: list[str],
                    tick: Callable[[int], None] | None) -> RunSummary:
    summary = RunSummary()
    writers = []
    for s in sinks:
        d = folder / s.name
        d.mkdir(parents=True, exist_ok=True)
        writers.append(s.open(d))
    try:
        with _collect_per_patient() as patient_done:
            for i in range(start, stop):
                person = simulate_patient(i, config, programs, top)
                summary.add(person, config.end)
                for w in writers:
                    w.write(person)
                if tick is not None:
                    tick(1)
                person.release()
                del person
                patient_done()
    finally:
        for w in writers:
            w.close()
    return summary


def _partitions(n: int, processes: int) -> Iterator[tuple[int, int]]:
    # Small partitions keep workers busy to the end and the progress bar moving; the split
    # never affects output, which depends only on patient indices.
    size = max(1, min(200, -(-n // (processes * 8))))
    for start in range(0, n, size):
        yield start, min(n, start + size)


def _check_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=out, prefix=".carecourse-probe-", delete=True)
        probe.close()
    except OSError as exc:
        raise OutputError(f"{out}: output folder is not writable ({exc.strerror}); choose "
                          f"another with --out") from None


def run_population(config: RunConfig, sinks: list[Any], *, progress: bool = True) -> RunSummary:
    """Simulate ``config.population`` patients and write them through ``sinks``.

    Output appears under ``config.out`` only when the whole run succeeded; a failed or
    interrupted run leaves nothing behind but what was there before.
    """
    import time

    from tqdm import tqdm

    config.check()
    _check_out(config.out)
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix=".carecourse-run-", dir=config.out))
    bar = tqdm(total=config.population, unit="patients", disable=not progress, smoothing=0.1,
               dynamic_ncols=True)
    total = RunSummary()
    try:
        parts = list(_partitions(config.population, config.processes))
        folders = [work / f"part-{k:06d}" for k in range(len(parts))]
        if config.processes == 1:
            programs, top = _prepare(config)
            with _frozen():
                for (a, b), folder in zip(parts, folders, strict=True):
                    total.merge(_simulate_range(a, b, folder, sinks, config, programs, top,
                                                bar.update))
        else:
            digest = check_library(config)  # fail fast, in this process, on a broken library
            ctx = get_context("spawn")
            with ProcessPoolExecutor(config.processes, mp_context=ctx, initializer=_worker_init,
                                     initargs=(config, digest)) as pool:
                jobs = [(a, b, f, sinks) for (a, b), f in zip(parts, folders, strict=True)]
                for n, summary in pool.map(_run_partition, jobs):
                    total.merge(summary)
                    bar.update(n)
        bar.close()
        for s in sinks:
            s.merge([f / s.name for f in folders], config.out)
    finally:
        bar.close()
        shutil.rmtree(work, ignore_errors=True)
    total.seconds = time.perf_counter() - t0
    return total

