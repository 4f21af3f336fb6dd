"""Load GMF 1 and 2 modules (Synthea's JSON, unchanged) into networkx graphs, and validate
them, reporting every problem at once with file, state and JSON path.

A *library* is a folder: top-level modules are the ``*.json`` files directly in it;
submodules live in subfolders and are named by their path without ``.json``
(``medications/statin``); lookup tables are ``lookup_tables/*.csv``; learned models (weights
and model cards, which ``learned_transition`` keys point to) live under ``models/``.

>>> from modules.loader import load_library
>>> lib = load_library()                       # the embedded default library
>>> sorted(lib.top_level())[:1]                # doctest: +SKIP
['appendicitis']
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modules.errors import ModuleError, ModuleValidationError, Problem
from modules.extensions import learned_problems
from modules.gmf import (
    STATE_TYPES,
    TRANSITION_KEYS,
    condition_problems,
    distribution_problem,
    referenced_states,
    state_field_problems,
    transition_key,
)
from modules.lookup import LookupTable, load_lookup_table

if TYPE_CHECKING:
    import networkx as nx

__all__ = [
    "Module",
    "ModuleLibrary",
    "default_library_path",
    "load_library",
    "load_module_file",
    "module_graph",
    "validate_library",
    "validate_paths",
]

ERROR = "error"
WARNING = "warning"


def default_library_path() -> Path:
    """The embedded default module library that ships inside the package."""
    return Path(str(resources.files("modules") / "library"))


@dataclass(frozen=True)
class Module:
    """One module file. ``key`` is its name in the library (``asthma``, ``medications/x``)."""

    key: str
    name: str
    path: Path
    spec: dict[str, Any]

    @cached_property
    def graph(self) -> nx.DiGraph:
        """The module's state graph (:func:`module_graph`), built when first asked for:
        running a module never needs it."""
        return module_graph(self.spec, str(self.path))

    @property
    def states(self) -> dict[str, dict[str, Any]]:
        return self.spec["states"]

    @property
    def is_submodule(self) -> bool:
        return "/" in self.key


@dataclass
class ModuleLibrary:
    """Modules and lookup tables of one library folder."""

    root: Path
    modules: dict[str, Module]
    lookup_tables: dict[str, LookupTable] = field(default_factory=dict)
    warnings: list[Problem] = field(default_factory=list)

    def top_level(self) -> list[str]:
        return sorted(k for k, m in self.modules.items() if not m.is_submodule)

    def get(self, key: str) -> Module:
        try:
            return self.modules[key]
        except KeyError:
            known = ", ".join(self.top_level()) or "(none)"
            raise ModuleError(f"no module named {key!r} in {self.root}; known: {known}") from None

    def select(self, names: list[str] | None) -> list[Module]:
        """Top-level modules, all or those named (by key or by the JSON ``name``)."""
        tops = [self.modules[k] for k in self.top_level()]
        if not names:
            return tops
        chosen = []
        for n in names:
            hits = [m for m in tops if n.lower() in (m.key.lower(), m.name.lower())]
            if not hits:
                known = ", ".join(m.key for m in tops)
                raise ModuleError(f"--module {n!r} is not a top-level module in {self.root}; known: {known}")
            chosen.extend(h for h in hits if h not in chosen)
        return chosen


def _read_json(path: Path) -> tuple[dict[str, Any] | None, list[Problem]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        return None, [Problem(str(path), "", f"cannot read file ({exc.strerror})")]
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, [Problem(str(path), f"line {exc.lineno}, column {exc.colno}",
                              f"invalid JSON: {exc.msg}; fix the syntax there")]
    if not isinstance(data, dict):
        return None, [Problem(str(path), "", "a module must be a JSON object with 'name' and 'states'")]
    return data, []


def module_graph(spec: dict[str, Any], path: str = "") -> nx.DiGraph:
    """The state graph of a module: nodes are states (``type``, ``spec``), edges are
    transitions (``kind``, ``label``, ``probability``). Targets that do not exist become
    nodes of type ``Missing``."""
    import networkx as nx  # here, not at the top: loading a checked library never needs it

    g = nx.DiGraph(name=spec.get("name", ""), path=path, gmf_version=spec.get("gmf_version", 1))
    states = spec.get("states") or {}
    for name, st in states.items():
        g.add_node(name, type=st.get("type", "?") if isinstance(st, dict) else "?",
                   spec=st if isinstance(st, dict) else {})
    for name, st in states.items():
        if not isinstance(st, dict):
            continue
        key = transition_key(st)
        kind = (key or "alt_direct_transition").removesuffix("_transition").replace(
            "lookup_table", "lookup")
        for _path, target, label, prob in referenced_states(st):
            if target not in g:
                g.add_node(target, type="Missing", spec={})
            if g.has_edge(name, target):
                e = g.edges[name, target]
                e["label"] = "; ".join(x for x in (e["label"], label) if x)
                if prob is not None and e.get("probability") is not None:
                    e["probability"] += prob
            else:
                g.add_edge(name, target, kind=kind, label=label, probability=prob)
    return g


def _check_module(key: str, path: Path, spec: dict[str, Any], library_keys: set[str],
                  table_dir: Path, check_models: bool = True, graph: nx.DiGraph | None = None
                  ) -> list[tuple[str, Problem]]:
    """(severity, problem) for everything wrong with one module spec; ``graph`` is its
    :func:`module_graph` when the caller has built it already."""
    f = str(path)
    out: list[tuple[str, Problem]] = []

    def err(place: str, msg: str, sev: str = ERROR) -> None:
        out.append((sev, Problem(f, place, msg)))

    name = spec.get("name")
    if not isinstance(name, str) or not name:
        err("name", "module needs a non-empty 'name'")
        name = key
    version = spec.get("gmf_version", 1)
    if not isinstance(version, (int, float)) or isinstance(version, bool):
        err("gmf_version", f"gmf_version must be a number, got {version!r}")
    elif version > 2:
        err("gmf_version", f"{name} Module specifies GMF version {version}; carecourse reads "
                           f"GMF 1 and 2 modules: use a module written for GMF 2 or earlier")
    excludes = spec.get("background_mortality_excludes")
    if excludes is not None and (not isinstance(excludes, list) or not all(
            isinstance(c, str) and c for c in excludes)):
        # carecourse's extension key; the engine checks the names against its cause table
        err("background_mortality_excludes", "must be a list of cause-of-death names "
                                             "(for example [\"covid19\"])")
    states = spec.get("states")
    if not isinstance(states, dict) or not states:
        err("states", "module needs a non-empty 'states' object")
        return out
    if "Initial" not in states:
        err("states", "module has no 'Initial' state; add one (type Initial)")
    for sname, st in states.items():
        where = f"states.{sname}"
        if not isinstance(st, dict):
            err(where, "state must be an object")
            continue
        stype = st.get("type")
        if stype not in STATE_TYPES:
            err(f"{where}.type", f"unknown state type {stype!r}; known: {', '.join(sorted(STATE_TYPES))}")
            continue
        tkey = transition_key(st)
        if tkey is None and stype not in ("Terminal", "Physiology"):
            err(where, f"{stype} state {sname} has no transition; add a direct_transition "
                       f"(or one of {', '.join(TRANSITION_KEYS)})")
        for place, msg in state_field_problems(sname, st):
            err(place, msg)
        for place, msg in _transition_problems(sname, st, tkey):
            # Synthea's own library has sums above 1 (up to 2); they load and run there, so
            # they are warnings here (errors with --strict), with the effect spelled out.
            err(place, msg, WARNING if msg.startswith(("probabilities sum", "default probab"))
                else ERROR)
        for tpath, target, _label, _p in referenced_states(st):
            if target not in states:
                err(f"{where}.{tpath}", f"transition to missing state {target!r}")
        for place, msg in learned_problems(path, sname, st, states, check_models=check_models):
            err(place, msg)
        if stype == "CallSubmodule" and isinstance(st.get("submodule"), str):
            sub = st["submodule"]
            if sub not in library_keys:
                err(f"{where}.submodule", f"submodule {sub!r} not found: expected a file "
                                          f"{sub}.json in the module library")
        if tkey == "lookup_table_transition" and isinstance(st[tkey], list):
            tables = {o.get("lookup_table_name") for o in st[tkey] if isinstance(o, dict)}
            for t in tables:
                if not isinstance(t, str) or not (table_dir / t).is_file():
                    err(f"{where}.lookup_table_transition",
                        f"lookup table {t!r} not found in {table_dir}")
    if "Initial" in states:
        g = graph if graph is not None else module_graph(spec, f)
        import networkx as nx

        reach = nx.descendants(g, "Initial") | {"Initial"}
        for sname in states:
            if sname not in reach:
                err(f"states.{sname}", "state is unreachable from Initial", WARNING)
    return out


_OVER_ONE = ("probabilities sum to {total:.6g}, more than 1: an option whose cumulative share "
             "starts at or above 1 can never be taken; make them sum to at most 1")


def _transition_problems(sname: str, st: dict[str, Any], tkey: str | None) -> list[tuple[str, str]]:
    where = f"states.{sname}"
    out: list[tuple[str, str]] = []
    if tkey is None:
        return out
    spec = st[tkey]
    here = f"{where}.{tkey}"

    def dist_sum(options: Any, path: str) -> None:
        if not isinstance(options, list) or not options:
            out.append((path, "must be a non-empty list of {distribution, transition}"))
            return
        total = 0.0
        for i, o in enumerate(options):
            if not isinstance(o, dict) or "transition" not in o or "distribution" not in o:
                out.append((f"{path}[{i}]", "needs 'distribution' and 'transition'"))
                continue
            d = o["distribution"]
            if isinstance(d, (int, float)) and not isinstance(d, bool):
                if d < 0:
                    out.append((f"{path}[{i}].distribution", f"probability {d} is negative"))
                total += d
            elif not (isinstance(d, dict) and "attribute" in d):
                out.append((f"{path}[{i}].distribution",
                            "must be a number or {attribute, default}"))
        if total > 1.0 + 1e-6:
            out.append((path, _OVER_ONE.format(total=total)))

    if tkey == "direct_transition":
        if not isinstance(spec, str):
            out.append((here, "must be a state name"))
    elif tkey == "distributed_transition":
        dist_sum(spec, here)
    elif tkey in ("conditional_transition", "complex_transition"):
        if not isinstance(spec, list) or not spec:
            out.append((here, "must be a non-empty list of options"))
            return out
        for i, o in enumerate(spec):
            p = f"{here}[{i}]"
            if not isinstance(o, dict):
                out.append((p, "option must be an object"))
                continue
            if "condition" in o:
                out.extend(condition_problems(o["condition"], f"{p}.condition"))
            if tkey == "complex_transition" and o.get("distributions"):
                dist_sum(o["distributions"], f"{p}.distributions")
            elif "transition" not in o:
                out.append((p, "option needs 'transition'"
                            + (" or 'distributions'" if tkey == "complex_transition" else "")))
    elif tkey == "lookup_table_transition":
        if not isinstance(spec, list) or not spec:
            out.append((here, "must be a non-empty list"))
            return out
        total = 0.0
        for i, o in enumerate(spec):
            if not isinstance(o, dict) or not {"transition", "lookup_table_name"} <= o.keys():
                out.append((f"{here}[{i}]", "needs 'transition', 'default_probability' and "
                                            "'lookup_table_name'"))
                continue
            total += float(o.get("default_probability") or 0.0)
        if total > 1.0 + 1e-6:
            out.append((here, "default " + _OVER_ONE.format(total=total)))
    elif tkey == "type_of_care_transition":
        if not isinstance(spec, dict) or not spec:
            out.append((here, "must name states for ambulatory, emergency and telemedicine"))
    elif tkey == "learned_transition":
        # The key's own shape is checked by modules.extensions; its fallback is a plain GMF
        # transition, checked here like one.
        fb = spec.get("fallback") if isinstance(spec, dict) else None
        fkey = transition_key(fb) if isinstance(fb, dict) else None
        if fkey is not None and fkey != "learned_transition":
            inner = _transition_problems(sname, fb, fkey)
            out.extend((f"{here}.fallback{p[len(where):]}", m) for p, m in inner)
    if "distribution" in st and st.get("type") == "Delay" and distribution_problem(st["distribution"]):
        pass  # reported by state_field_problems
    return out


def _scan(root: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for p in sorted(root.rglob("*.json")):
        rel = p.relative_to(root)
        if rel.parts[0] in ("lookup_tables", "models") or \
                any(part.startswith(".") for part in rel.parts):
            continue
        files[rel.with_suffix("").as_posix()] = p
    return files


def _build(root: Path, files: dict[str, Path], library_keys: set[str],
           check_models: bool = True, checked: bool = True
           ) -> tuple[dict[str, Module], list[tuple[str, Problem]]]:
    modules: dict[str, Module] = {}
    found: list[tuple[str, Problem]] = []
    table_dir = root / "lookup_tables"
    for key, path in files.items():
        spec, problems = _read_json(path)
        found.extend((ERROR, p) for p in problems)
        if spec is None:
            continue
        has_states = isinstance(spec.get("states"), dict)
        if checked:
            graph = module_graph(spec, str(path)) if has_states else None
            found.extend(_check_module(key, path, spec, library_keys, table_dir, check_models,
                                       graph))
        if has_states:
            modules[key] = Module(key=key, name=str(spec.get("name") or key), path=path,
                                  spec=spec)
    return modules, found


def _load_tables(root: Path, modules: dict[str, Module]) -> tuple[dict[str, LookupTable], list[Problem]]:
    tables: dict[str, LookupTable] = {}
    problems: list[Problem] = []
    for m in modules.values():
        for sname, st in m.states.items():
            if not isinstance(st, dict) or not isinstance(st.get("lookup_table_transition"), list):
                continue
            opts = [o for o in st["lookup_table_transition"] if isinstance(o, dict)]
            targets = [o.get("transition") for o in opts]
            for tname in {o.get("lookup_table_name") for o in opts}:
                if not isinstance(tname, str) or tname in tables:
                    continue
                tpath = root / "lookup_tables" / tname
                if not tpath.is_file():
                    continue  # reported by the module check
                try:
                    tables[tname] = load_lookup_table(tpath, [str(t) for t in targets])
                except ModuleError as exc:
                    problems.append(Problem(str(m.path), f"states.{sname}.lookup_table_transition",
                                            str(exc)))
    return tables, problems


def validate_library(root: Path | str, *, check_models: bool = True, checked: bool = True
                     ) -> tuple[ModuleLibrary, list[Problem], list[Problem]]:
    """Load everything under ``root``; return (library, errors, warnings). With
    ``check_models`` (the default), the model cards that learned keys point to are checked
    too; without, only the keys' shape. ``checked=False`` skips the module checks (only
    unreadable files and lookup tables that do not parse are errors then)."""
    root = Path(root)
    if not root.is_dir():
        raise ModuleError(f"{root}: module library folder not found")
    files = _scan(root)
    modules, found = _build(root, files, set(files), check_models, checked)
    tables, table_problems = _load_tables(root, modules)
    errors = [p for sev, p in found if sev == ERROR] + table_problems
    warnings = [p for sev, p in found if sev == WARNING]
    return ModuleLibrary(root=root, modules=modules, lookup_tables=tables, warnings=warnings), \
        errors, warnings


def load_library(root: Path | str | None = None, *, lenient: bool = False,
                 check_models: bool = True, checked: bool = True) -> ModuleLibrary:
    """Load and validate a module library (the embedded default when ``root`` is None).

    Raises ModuleValidationError listing every problem. With ``lenient``, transitions to
    missing states are allowed (Synthea loads such modules; the engine raises only if one
    is taken), as some of Synthea's own test fixtures need. ``check_models=False`` skips
    the model cards of learned keys (for a run that uses their fallbacks).
    ``checked=False`` skips the module checks (a third of the load): only for files known
    to be those of a library that passed them (a worker process whose files have the
    digest of those its run's first process checked: ``simulator.population.check_library``).
    """
    lib, errors, _ = validate_library(root if root is not None else default_library_path(),
                                      check_models=check_models, checked=checked)
    if lenient:
        errors = [e for e in errors if "transition to missing state" not in e.message]
    if errors:
        raise ModuleValidationError(errors)
    return lib


def load_module_file(path: Path | str, *, lenient: bool = False,
                     check_models: bool = True) -> Module:
    """Load and validate one module file. Its library (for submodules and lookup tables)
    is the nearest folder above it that holds ``lookup_tables``, else its own folder."""
    path = Path(path)
    if not path.is_file():
        raise ModuleError(f"{path}: no such module file")
    root = _library_root(path)
    resolved = path.resolve()
    key = resolved.relative_to(root).with_suffix("").as_posix() \
        if resolved.is_relative_to(root) else path.stem
    modules, found = _build(root, {key: path}, set(_scan(root)), check_models)
    _tables, table_problems = _load_tables(root, modules)
    errors = [p for sev, p in found if sev == ERROR] + table_problems
    if lenient:
        errors = [e for e in errors if "transition to missing state" not in e.message]
    if errors:
        raise ModuleValidationError(errors)
    return modules[key]


def _library_root(path: Path) -> Path:
    for parent in path.resolve().parents:
        if (parent / "lookup_tables").is_dir():
            return parent
    return path.resolve().parent


def validate_paths(paths: list[Path | str]) -> tuple[int, list[Problem], list[Problem]]:
    """Validate files and folders; return (modules checked, errors, warnings)."""
    errors: list[Problem] = []
    warnings: list[Problem] = []
    count = 0
    seen_roots: dict[Path, tuple[ModuleLibrary, list[Problem], list[Problem]]] = {}
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            errors.append(Problem(str(p), "", "no such file or folder"))
            continue
        root = p.resolve() if p.is_dir() else _library_root(p)
        if root not in seen_roots:
            seen_roots[root] = validate_library(root)
        lib, errs, warns = seen_roots[root]
        if p.is_dir():
            wanted = {str(m.path) for m in lib.modules.values()}
            count += len(_scan(root))
        else:
            wanted = {str(p.resolve())}
            count += 1
        errors.extend(e for e in errs if str(Path(e.file).resolve()) in wanted or e.file in wanted)
        warnings.extend(w for w in warns if str(Path(w.file).resolve()) in wanted or w.file in wanted)
    # a problem may be listed once per path naming it; keep each once
    errors = list(dict.fromkeys(errors))
    warnings = list(dict.fromkeys(warnings))
    return count, errors, warnings
