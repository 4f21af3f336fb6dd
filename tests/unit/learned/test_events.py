"""The common event form: normalization, validation that names file and row, summaries."""

from __future__ import annotations

import doctest

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import learned.events
from learned.events import EVENT_COLUMNS, KINDS, make_event_data
from modules.errors import CarecourseError, DataError


def test_docstring_examples_run():
    assert doctest.testmod(learned.events).failed == 0


def frames(events: dict, baseline: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.DataFrame(events), pd.DataFrame(baseline)


def test_normalizes_columns_types_and_order():
    ev, base = frames({"patient_id": [2, 1, 1], "time": ["5", 3, 1.5], "code": ["x", "b", "a"],
                       "kind": ["observation", "", "state"], "value": ["7.5", None, ""]},
                      {"patient_id": [2, 1], "age": [40, 50], "sex": ["M", "F"],
                       "arm": [0, 1]})
    data = make_event_data(ev, base, name="t", origin="day 0", categorical=["arm"])
    assert tuple(data.events.columns) == EVENT_COLUMNS
    assert data.events["patient_id"].tolist() == ["1", "1", "2"]  # sorted by patient, time
    assert data.events["time"].tolist() == [1.5, 3.0, 5.0]
    assert data.events["kind"].tolist() == ["state", "state", "observation"]
    assert list(data.events["kind"].cat.categories) == list(KINDS)
    assert data.events["value"].iloc[2] == 7.5 and np.isnan(data.events["value"].iloc[0])
    assert data.baseline.index.tolist() == ["1", "2"]
    assert data.covariate_kinds() == {"age": "numeric", "sex": "categorical",
                                      "arm": "categorical"}
    assert data.baseline["arm"].cat.categories.tolist() == ["0", "1"]
    # no end given: follow-up ends at each patient's last event
    assert data.end.to_dict() == {"1": 3.0, "2": 5.0}


def test_every_problem_is_reported_at_once_with_its_row():
    ev, base = frames({"patient_id": ["a", "", "a", "c"], "time": [1, 2, "soon", 4],
                       "code": ["x", "y", "", "z"], "kind": ["state", "state", "bogus", "state"],
                       "value": ["", "", "", "lots"]},
                      {"patient_id": ["a", "a"], "age": [1, 2]})
    with pytest.raises(DataError) as err:
        make_event_data(ev, base, name="t", origin="o", events_file="ev.csv",
                        baseline_file="base.csv")
    text = str(err.value)
    assert "ev.csv: row 2, column 'patient_id': the patient id is empty" in text
    assert "ev.csv: row 3, column 'time': 'soon' is not a finite number" in text
    assert "ev.csv: row 3, column 'code': the code is empty" in text
    assert "ev.csv: row 3, column 'kind': unknown kind 'bogus'" in text
    assert "ev.csv: row 4, column 'value': 'lots' is not a number" in text
    assert "base.csv: row 2, column 'patient_id': patient 'a' appears again" in text
    assert "ev.csv: row 4, column 'patient_id': patient 'c' is not in the baseline" in text
    assert len(err.value.problems) == 7
    assert isinstance(err.value, CarecourseError)


def test_missing_columns_are_named():
    with pytest.raises(DataError, match=r"ev: header: missing column\(s\) time, code"):
        make_event_data(pd.DataFrame({"patient_id": [1]}), pd.DataFrame({"patient_id": [1]}),
                        name="t", origin="o", events_file="ev")
    with pytest.raises(DataError, match="b: header: missing column patient_id; found id"):
        make_event_data(pd.DataFrame({"patient_id": [1], "time": [0], "code": ["x"]}),
                        pd.DataFrame({"id": [1]}), name="t", origin="o", baseline_file="b")


def test_a_state_after_the_end_of_follow_up_is_an_error():
    ev, base = frames({"patient_id": [1, 1], "time": [1, 9], "code": ["ill", "dead"]},
                      {"patient_id": [1]})
    with pytest.raises(DataError, match=r"row 2, column 'time': state entered at 9 days, "
                                        r"after the end of follow-up of patient '1' \(5 days\)"):
        make_event_data(ev, base, name="t", origin="o", end={"1": 5.0})
    # observations may come after it (trials measure on schedule after an endpoint)
    ev["kind"] = ["state", "observation"]
    data = make_event_data(ev, base, name="t", origin="o", end={"1": 5.0})
    assert data.end["1"] == 5.0


def test_many_problems_are_summarised_in_the_message():
    n = 30
    ev, base = frames({"patient_id": ["p"] * n, "time": ["x"] * n, "code": ["c"] * n},
                      {"patient_id": ["p"]})
    with pytest.raises(DataError) as err:
        make_event_data(ev, base, name="t", origin="o")
    assert len(err.value.problems) == n
    assert f"{n} problem(s)" in str(err.value) and "... and 10 more problem(s)" in str(err.value)


def test_paths_transitions_and_summary():
    ev, base = frames({"patient_id": ["a", "a", "a", "b", "c"], "time": [1, 1, 5, 2, 0],
                       "code": ["ill", "ill", "dead", "dead", "bp"],
                       "kind": ["state", "state", "state", "state", "observation"],
                       "value": [None, None, None, None, 120]},
                      {"patient_id": ["a", "b", "c"], "age": [1.0, None, 3.0]})
    data = make_event_data(ev, base, name="t", origin="o", initial_state="well",
                           end={"a": 5, "b": 10, "c": 7})
    assert data.paths()["a"] == [(0.0, "well"), (1.0, "ill"), (5.0, "dead")]
    assert data.states() == ["well", "ill", "dead"]
    assert data.transition_counts() == {("well", "ill"): 1, ("ill", "dead"): 1,
                                        ("well", "dead"): 1}
    s = data.summary()
    assert (s.patients, s.events) == (3, 5)
    assert s.codes[("dead", "state")] == (2, 2) and s.codes[("ill", "state")] == (2, 1)
    assert s.final_states == {"dead": 2, "well": 1}
    assert s.covariates["age"][0] == "numeric" and "1 missing" in s.covariates["age"][1]
    assert s.follow_up_median == 7.0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcd"), st.floats(0, 1000), st.sampled_from("xyz")),
                min_size=0, max_size=40))
def test_any_valid_table_round_trips_and_transitions_add_up(rows):
    """Whatever the input order, each event comes out once, sorted by patient and time, and
    each patient's transitions are one fewer than its path's states."""
    ev = pd.DataFrame(rows, columns=["patient_id", "time", "code"])
    base = pd.DataFrame({"patient_id": list("abcd")})
    data = make_event_data(ev, base, name="t", origin="o", initial_state="start")
    assert len(data.events) == len(rows)
    key = list(zip(data.events["patient_id"], data.events["time"], strict=True))
    assert key == sorted(key)
    paths = data.paths()
    assert sum(data.transition_counts().values()) == sum(len(p) - 1 for p in paths.values())
    shuffled = ev.sample(frac=1.0, random_state=1)
    again = make_event_data(shuffled, base, name="t", origin="o", initial_state="start")
    pd.testing.assert_frame_equal(
        again.events.sort_values(["patient_id", "time", "code"]).reset_index(drop=True),
        data.events.sort_values(["patient_id", "time", "code"]).reset_index(drop=True))
