"""Trial protocol files: a valid protocol loads into frozen dataclasses; every problem of
an invalid one is reported at once, with the YAML path and line and what to do."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from modules.errors import ConfigError, ProtocolError
from simulator.protocol import load_protocol, parse_protocol, sampling_constraints

DATA = Path(__file__).resolve().parents[2] / "data" / "trial"

MINIMAL = """\
name: Demo
arm: {size: 10}
baseline: {source: {file: rows.csv}, age: age, sex: sex}
index: {event: enrollment, start: 2024-01-01}
follow_up: {duration: {quantity: 1, unit: years}}
standard_of_care: {modules: [demo]}
endpoints: [{paramcd: DTH, type: time_to_event, events: [{death: true}]}]
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ProtocolError) as info:
        parse_protocol(text, "p.yaml")
    assert isinstance(info.value, ConfigError)  # the CLI's exit 2
    return [str(p) for p in info.value.problems]


def test_the_test_protocol_loads_with_every_section():
    p = load_protocol(DATA / "protocol.yaml")
    assert p.study_id == "TCOURSE" and p.arm.size == 200 and p.arm.code == "SOC"
    assert p.baseline.path == DATA / "baseline.csv"  # relative to the protocol file
    assert p.baseline.sex.translate(2) == "F" and p.baseline.sex.translate("1") == "M"
    assert [c.name for c in p.eligibility.inclusion] == ["adult", "age <= 75 years"]
    assert p.index.event == "state" and p.index.state == "Randomized"
    assert p.follow_up.days == 365.0
    assert p.modules_dir == DATA / "modules"
    assert [e.paramcd for e in p.endpoints] == ["PFS", "OS", "TTT", "PROG180", "ALIVE365",
                                               "CD4D90"]
    assert p.primary.paramcd == "PFS"
    assert [ev.kind for ev in p.endpoints[0].events] == ["state", "death"]
    assert p.endpoints[4].condition == {"condition_type": "True"}  # YAML's True, as GMF's
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.arm.size = 3  # type: ignore[misc]


def test_gmf_units_give_days():
    p = parse_protocol(MINIMAL.replace("quantity: 1, unit: years", "quantity: 6, unit: months"))
    assert p.follow_up.days == 180.0  # GMF: 30-day months


def test_every_problem_is_reported_at_once_with_path_and_line():
    text = MINIMAL.replace("size: 10", "size: 0").replace("unit: years", "unit: fortnights") \
        .replace("paramcd: DTH", "paramcd: dth").replace("event: enrollment", "event: birth")
    found = problems(text + "colour: blue\n")
    joined = "\n".join(found)
    assert len(found) == 5, joined
    assert "p.yaml: arm.size (line 2): must be at least 1, got 0" in joined
    assert "follow_up.duration.unit (line 5): unknown time unit 'fortnights'" in joined
    assert "endpoints[0].paramcd (line 7)" in joined and "ADaM PARAMCD" in joined
    assert "index.event (line 4): must be enrollment, diagnosis or state" in joined
    assert "colour (line 8): unknown key 'colour'" in joined


@pytest.mark.parametrize("change, expected", [
    ("standard_of_care: {modules: [demo]}\n", "standard_of_care (line"),  # removed: missing
    ("{death: true}", "{death: true, state: X}"),
    ("index: {event: enrollment, start: 2024-01-01}",
     "index: {event: enrollment, start: 2024-01-01, end: 2023-01-01}"),
])
def test_structural_mistakes(change, expected):
    if change.startswith("standard_of_care"):
        found = problems(MINIMAL.replace(change, ""))
        assert any("standard_of_care" in f and "missing" in f for f in found), found
    else:
        found = problems(MINIMAL.replace(change, expected))
        assert len(found) == 1, found


def test_conditions_are_checked_with_the_gmf_rules():
    text = MINIMAL + """\
eligibility:
  inclusion:
    - {condition_type: Age, operator: "=>", quantity: 18, unit: years}
    - {condition_type: Pregnant}
  exclusion:
    - {condition_type: PriorState, name: Sick}
"""
    found = "\n".join(problems(text))
    assert "eligibility.inclusion[0].operator" in found and "unknown operator '=>'" in found
    assert "eligibility.inclusion[1]" in found and "unknown condition_type 'Pregnant'" in found
    assert "eligibility.exclusion[0]" in found and "PriorState" in found


def test_endpoint_shapes():
    text = MINIMAL.replace(
        "endpoints: [{paramcd: DTH, type: time_to_event, events: [{death: true}]}]",
        """endpoints:
  - {paramcd: B1, type: binary, events: [{death: true}]}
  - {paramcd: O1, type: observation, at: {quantity: 30, unit: days}}
  - {paramcd: T1, type: time_to_event, events: [{death: true}], at: {quantity: 3, unit: days}}
  - {paramcd: B2, type: binary, at: {quantity: 2, unit: years}, condition: {condition_type: "True"}}
  - {paramcd: B2, type: survival}
""")
    found = "\n".join(problems(text))
    assert "endpoints[0].at" in found and "needs 'at:" in found
    assert "endpoints[1]" in found and "exactly one of 'code:', 'vital_sign:'" in found
    assert "endpoints[2].at" in found and "does not go with a time_to_event" in found
    assert "endpoints[3].at" in found and "after the end of follow-up" in found
    assert "endpoints[4].paramcd" in found and "used by another endpoint" in found
    assert "endpoints[4].type" in found


def test_malformed_yaml_and_missing_file(tmp_path):
    found = problems("name: [unclosed\n")
    assert found[0].startswith("p.yaml: line") and "invalid YAML" in found[0]
    with pytest.raises(ProtocolError, match="cannot read the protocol file"):
        load_protocol(tmp_path / "nope.yaml")


def test_sampling_constraints_from_inclusion_criteria():
    text = MINIMAL.replace("sex: sex}", "sex: {column: sex, values: {1: M, 2: F}},\n"
                           "  observations: [{column: cd4, code: {system: LOINC, code: 24467-3}}]}") \
        + """\
eligibility:
  inclusion:
    - {condition_type: And, conditions: [
        {condition_type: Age, operator: ">=", quantity: 18, unit: years},
        {condition_type: Age, operator: "<=", quantity: 65, unit: years}]}
    - {condition_type: Gender, gender: M}
    - {condition_type: Observation, codes: [{system: LOINC, code: 24467-3}], operator: "<=", value: 200}
    - {condition_type: Attribute, attribute: karnof, operator: ">", value: 70}
    - {condition_type: Or, conditions: [{condition_type: Attribute, attribute: x, operator: "==", value: a}]}
"""
    c = sampling_constraints(parse_protocol(text))
    lo, hi = c["age"]
    assert lo == 18.0 and 65.99 < hi < 66.0  # whole years: 65.9 years old is 65
    assert c["sex"] == frozenset({"1"})
    assert c["cd4"] == (-math.inf, 200.0)
    assert c["karnof"] == (70.0, math.inf)  # a superset: every criterion is checked later
    assert "x" not in c  # an Or is not a constraint


def test_protocol_keys_documented_in_the_readme():
    """Every key the validator knows appears in the README's protocol reference."""
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    section = readme.split("## Clinical-trial control arms", 1)[1]
    example = yaml.safe_load(section.split("```yaml", 1)[1].split("```", 1)[0])
    assert parse_protocol(yaml.safe_dump(example, sort_keys=False), DATA / "x.yaml")

    def keys(node: object) -> set[str]:
        if isinstance(node, dict):
            return set(node) | set().union(*(keys(v) for v in node.values()))
        if isinstance(node, list):
            return set().union(*(keys(v) for v in node)) if node else set()
        return set()

    shown = keys(example) | {"code", "file"}  # the commented-out alternatives
    for key in ("name", "study_id", "description", "seed", "arm", "size", "baseline",
                "source", "dataset", "where", "replace", "id", "age", "sex", "values",
                "race", "ethnicity", "attributes", "conditions", "medications",
                "observations", "vital_signs", "column", "equals", "unit", "vital_sign",
                "eligibility", "inclusion", "exclusion", "index", "event", "module", "state",
                "start", "end", "follow_up", "duration", "data_cutoff", "dropout",
                "per_year", "background_mortality", "standard_of_care", "modules",
                "modules_dir", "endpoints", "paramcd", "type", "events", "death",
                "condition_onset", "medication_start", "condition", "at", "if_dead",
                "primary", "attribute"):
        assert key in shown, key


@settings(max_examples=300, deadline=None)
@given(op=st.sampled_from(["<", "<=", "==", ">=", ">"]),
       q=st.integers(0, 100) | st.floats(0, 100, allow_nan=False),
       x=st.floats(0, 130, allow_nan=False))
def test_an_age_constraint_never_excludes_an_eligible_age(op, q, x):
    """Ages compare in whole years (GMF Age): whenever floor(x) op q holds, x lies in the
    column range the constraint gives, so drawing from it loses no eligible patient."""
    from simulator.logic import _OPS
    from simulator.protocol import _range

    r = _range(op, float(q), whole=True)
    assert r is not None
    if _OPS[op](math.floor(x), q):
        assert r[0] <= x <= r[1]
