"""Loading and validating GMF modules: Synthea's whole library, its invalid fixtures, and
every kind of problem the validator must report at once."""

from __future__ import annotations

import json
from pathlib import Path

import networkx as nx
import pytest

from modules.errors import ModuleError, ModuleValidationError
from modules.loader import (
    default_library_path,
    load_library,
    load_module_file,
    module_graph,
    validate_library,
    validate_paths,
)
from tests.conftest import GENERIC, SHARED, SYNTHEA_MODULES, need_shared


def write_module(folder: Path, name: str, states: dict, **extra) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps({"name": name, "states": states, **extra}))
    return path


def simple_states(**more) -> dict:
    return {"Initial": {"type": "Initial", "direct_transition": "Terminal"},
            "Terminal": {"type": "Terminal"}, **more}


def test_every_synthea_module_loads_and_validates():
    need_shared()
    lib, errors, warnings = validate_library(SYNTHEA_MODULES)
    assert errors == []
    files = [p for p in SYNTHEA_MODULES.rglob("*.json")]
    assert len(lib.modules) == len(files) == 242
    assert len(lib.top_level()) == 85
    # load_library succeeds too (warnings are not errors)
    assert load_library(SYNTHEA_MODULES).modules.keys() == lib.modules.keys()
    for m in lib.modules.values():
        assert isinstance(m.graph, nx.DiGraph)
        assert "Initial" in m.graph


def test_an_unchecked_load_gives_the_same_library_and_skips_only_the_checks(tmp_path):
    need_shared()
    checked = load_library(SYNTHEA_MODULES)
    unchecked = load_library(SYNTHEA_MODULES, checked=False)
    assert unchecked.modules.keys() == checked.modules.keys()
    assert all(unchecked.modules[k].spec == m.spec for k, m in checked.modules.items())
    assert unchecked.lookup_tables == checked.lookup_tables
    # The graph is built when asked for, the same either way.
    key = "vhd_aortic"
    assert nx.utils.graphs_equal(unchecked.modules[key].graph, checked.modules[key].graph)
    # A module that fails the checks loads unchecked; files that do not parse never do.
    write_module(tmp_path, "odd", {"Initial": {"type": "Initial", "direct_transition": "Gone"}})
    with pytest.raises(ModuleValidationError, match="missing state 'Gone'"):
        load_library(tmp_path)
    assert "odd" in load_library(tmp_path, checked=False).modules
    (tmp_path / "broken.json").write_text("{ not json")
    with pytest.raises(ModuleValidationError, match="broken.json"):
        load_library(tmp_path, checked=False)


def test_graph_has_states_as_nodes_and_transitions_as_edges():
    need_shared()
    m = load_module_file(GENERIC / "distributed_transition.json")
    g = m.graph
    assert set(m.states) <= set(g.nodes)
    assert g.nodes["Initial"]["type"] == "Initial"
    probs = {v: d["probability"] for _, v, d in g.out_edges("Initial", data=True)}
    assert sum(probs.values()) == pytest.approx(1.0)
    assert all(d["kind"] == "distributed" for _, _, d in g.out_edges("Initial", data=True))


def test_future_gmf_version_is_rejected_with_a_clear_message():
    need_shared()
    with pytest.raises(ModuleValidationError) as exc:
        load_module_file(SHARED / "test-fixtures" / "invalid" / "module_from_the_future.json")
    assert "Module specifies GMF version 99" in str(exc.value)
    assert "module_from_the_future.json" in str(exc.value)


def test_bad_distribution_is_rejected_naming_the_state():
    need_shared()
    with pytest.raises(ModuleValidationError) as exc:
        load_module_file(SHARED / "test-fixtures" / "invalid" / "module_with_bad_distribution.json")
    assert "State 2_Second_Delay contains an invalid distribution" in str(exc.value)


def test_validation_reports_every_problem_at_once(tmp_path):
    states = simple_states(
        Unknown={"type": "Teleport", "direct_transition": "Terminal"},
        NoTransition={"type": "Simple"},
        ToNowhere={"type": "Simple", "direct_transition": "Nowhere"},
        TooLikely={"type": "Simple", "distributed_transition": [
            {"distribution": 0.7, "transition": "Terminal"},
            {"distribution": 0.6, "transition": "Terminal"}]},
        BadCondition={"type": "Guard", "allow": {"condition_type": "Mood"},
                      "direct_transition": "Terminal"},
        Sub={"type": "CallSubmodule", "submodule": "missing/sub", "direct_transition": "Terminal"},
        Lookup={"type": "Simple", "lookup_table_transition": [
            {"transition": "Terminal", "default_probability": 1, "lookup_table_name": "nope.csv"}]},
    )
    states["Initial"] = {"type": "Initial", "distributed_transition": [
        {"distribution": 0.1, "transition": s} for s in
        ("Unknown", "NoTransition", "ToNowhere", "TooLikely", "BadCondition", "Sub", "Lookup")]}
    write_module(tmp_path, "broken", states)
    _, errors, warnings = validate_library(tmp_path)
    text = "\n".join(str(e) for e in errors)
    assert "states.Unknown.type: unknown state type 'Teleport'" in text
    assert "NoTransition has no transition" in text
    assert "transition to missing state 'Nowhere'" in text
    assert "unknown condition_type 'Mood'" in text
    assert "submodule 'missing/sub' not found" in text
    assert "lookup table 'nope.csv' not found" in text
    assert all(e.file.endswith("broken.json") for e in errors)
    assert any("sum to 1.3" in str(w) for w in warnings)
    with pytest.raises(ModuleValidationError) as exc:
        load_library(tmp_path)
    assert len(exc.value.problems) == len(errors)


def test_unreachable_state_is_a_warning(tmp_path):
    write_module(tmp_path, "island", simple_states(Island={"type": "Simple",
                                                           "direct_transition": "Terminal"}))
    _, errors, warnings = validate_library(tmp_path)
    assert errors == []
    assert [w.place for w in warnings] == ["states.Island"]


def test_invalid_json_names_line_and_column(tmp_path):
    (tmp_path / "bad.json").write_text('{"name": "bad",\n "states": {,}}')
    _, errors, _ = validate_library(tmp_path)
    assert len(errors) == 1
    assert errors[0].place.startswith("line 2, column")
    assert "invalid JSON" in errors[0].message


def test_lenient_loading_allows_missing_targets():
    need_shared()
    with pytest.raises(ModuleValidationError):
        load_module_file(GENERIC / "counter.json")
    m = load_module_file(GENERIC / "counter.json", lenient=True)
    assert m.graph.nodes["Counter_Decrement"]["type"] == "Missing"


def test_lookup_table_errors_are_named():
    need_shared()
    _, errors, _ = validate_library(GENERIC)
    text = "\n".join(str(e) for e in errors)
    assert "Age Range must be in the form: 'ageLow-ageHigh'" in text
    assert "CSV column state name" in text
    assert "does not match a JSON state to transition to in CSV table" in text


def test_validate_paths_on_files_and_folders():
    need_shared()
    count, errors, _ = validate_paths([SYNTHEA_MODULES])
    assert count == 242 and errors == []
    count, errors, _ = validate_paths([SHARED / "test-fixtures" / "invalid"])
    assert count == 2 and len(errors) == 2
    count, errors, _ = validate_paths([SYNTHEA_MODULES / "medications" / "statin.json"])
    assert count == 1 and errors == []


def test_embedded_library_is_strictly_valid():
    lib, errors, warnings = validate_library(default_library_path())
    assert errors == [] and warnings == []
    assert len(lib.top_level()) >= 3


def test_select_unknown_module_lists_known_ones():
    lib = load_library()
    with pytest.raises(ModuleError, match="known:"):
        lib.select(["no_such_module"])


def test_module_graph_of_a_plain_dict():
    g = module_graph({"name": "x", "states": simple_states()})
    assert list(g.edges) == [("Initial", "Terminal")]
