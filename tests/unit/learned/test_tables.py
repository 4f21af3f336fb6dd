"""CSV and Parquet event tables: column names, numeric times and dates, and malformed files
reported with file, line and column (and exit status 2 from the command line)."""

from __future__ import annotations

import doctest
from pathlib import Path

import pandas as pd
import pytest

import learned.tables
from learned.tables import TableColumns, read_event_tables
from modules.errors import ConfigError, DataError
from simulator.cli import main


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def cli(*args: object) -> int:
    try:
        return main([str(a) for a in args])
    except SystemExit as exc:  # argparse's usage errors
        return int(exc.code or 0)


def test_docstring_examples_run():
    assert doctest.testmod(learned.tables).failed == 0


def test_default_columns_numeric_times_in_weeks(tmp_path):
    ev = write(tmp_path / "ev.csv", "patient_id,time,code,kind,value\n"
                                    "p1,0,cd4,observation,350\n"
                                    "p1,2,aids,,\n"
                                    "p2,1.5,death,state,\n")
    base = write(tmp_path / "base.csv", "patient_id,age,arm,end\np1,34,0,10\np2,51,1,\n")
    data = read_event_tables(ev, base, time_unit="weeks", categorical=("arm",),
                             initial_state="randomized")
    assert data.events[["patient_id", "time", "code", "kind"]].values.tolist() == [
        ["p1", 0.0, "cd4", "observation"], ["p1", 14.0, "aids", "state"],
        ["p2", 10.5, "death", "state"]]
    assert data.events["value"].iloc[0] == 350.0
    # an empty end of follow-up is the last event
    assert data.end.to_dict() == {"p1": 70.0, "p2": 10.5}
    assert data.covariate_kinds() == {"age": "numeric", "arm": "categorical"}
    assert data.transition_counts() == {("randomized", "aids"): 1, ("randomized", "death"): 1}
    assert "weeks" in data.origin


def test_user_column_names_and_dates_from_an_origin_column(tmp_path):
    ev = write(tmp_path / "ev.tsv", "pid\twhen\tevent\n"
                                    "7\t2021-03-01\tadmitted\n"
                                    "7\t2021-03-11T12:00:00Z\tdischarged\n"
                                    "8\t2021-02-01\tadmitted\n")
    base = write(tmp_path / "base.tsv", "id\tstart\tstop\tsex\n"
                                        "7\t2021-02-27\t2021-04-01\tF\n"
                                        "8\t2021-01-31\t2021-02-28\tM\n")
    cols = TableColumns.parse("patient=pid,time=when,code=event,baseline_patient=id,"
                              "origin=start,end=stop")
    data = read_event_tables(ev, base, columns=cols)
    assert data.events["time"].tolist() == [2.0, 12.5, 1.0]
    assert data.end.to_dict() == {"7": 33.0, "8": 28.0}
    assert list(data.baseline.columns) == ["sex"]
    assert "start" in data.origin


def test_dates_without_an_origin_count_from_the_first_event(tmp_path):
    ev = write(tmp_path / "ev.csv", "patient_id,time,code\n1,03/01/2020,a\n1,05/01/2020,b\n")
    base = write(tmp_path / "base.csv", "patient_id\n1\n")
    data = read_event_tables(ev, base, date_format="%d/%m/%Y")
    assert data.events["time"].tolist() == [0.0, 2.0]
    assert data.origin == "each patient's first event date"


def test_parquet_with_timestamps_and_numbers(tmp_path):
    pytest.importorskip("pyarrow")
    ev = pd.DataFrame({"patient_id": [1, 1, 2], "code": ["a", "b", "a"],
                       "time": pd.to_datetime(["2020-01-01", "2020-01-03", "2020-06-01"])})
    ev.to_parquet(tmp_path / "ev.parquet")
    base = pd.DataFrame({"patient_id": [1, 2], "bmi": [22.5, 31.0], "smoker": [True, False]})
    base.to_parquet(tmp_path / "base.parquet")
    data = read_event_tables(tmp_path / "ev.parquet", tmp_path / "base.parquet")
    assert data.events["time"].tolist() == [0.0, 2.0, 0.0]
    assert data.covariate_kinds() == {"bmi": "numeric", "smoker": "categorical"}
    ev["time"] = [0.0, 1.0, 2.0]
    ev.to_parquet(tmp_path / "ev2.parquet")
    data = read_event_tables(tmp_path / "ev2.parquet", tmp_path / "base.parquet",
                             time_unit="years")
    assert data.events["time"].tolist() == [0.0, 365.25, 730.5]


def test_parquet_problems_name_the_row(tmp_path):
    pytest.importorskip("pyarrow")
    pd.DataFrame({"patient_id": ["1", "1"], "time": [0.0, None], "code": ["a", "b"]}) \
        .to_parquet(tmp_path / "ev.parquet")
    pd.DataFrame({"patient_id": ["1"]}).to_parquet(tmp_path / "base.parquet")
    with pytest.raises(DataError, match=r"ev.parquet: row 2, column 'time': time empty is not "
                                        "a number"):
        read_event_tables(tmp_path / "ev.parquet", tmp_path / "base.parquet")


@pytest.mark.parametrize(("events", "baseline", "expected"), [
    ("patient_id,time,code\n1,0,a\n1,x,b\n", "patient_id\n1\n",
     ["ev.csv: line 3, column 'time': time 'x' is not a number"]),
    ("patient_id,time,code\n1,2020-01-01,a\n1,2020-02-30,b\n", "patient_id\n1\n",
     ["ev.csv: line 3, column 'time': time '2020-02-30' is not a date"]),
    ("patient_id,time,code\n1,0,a\n2,1,b\n", "patient_id\n1\n",
     ["ev.csv: line 3, column 'patient_id': patient '2' is not in the baseline table"]),
    ("patient_id,time,code\n1,0,a\n", "patient_id,age\n1,3\n1,4\n",
     ["base.csv: line 3, column 'patient_id': patient '1' appears again (first at line 2)"]),
    ("patient_id,time,code,kind\n1,0,,state\n1,1,b,sometimes\n", "patient_id\n1\n",
     ["ev.csv: line 2, column 'code': the code is empty",
      "ev.csv: line 3, column 'kind': unknown kind 'sometimes'"]),
    ("id,time,code\n1,0,a\n", "patient_id\n1\n",
     ["ev.csv: header: missing column(s) 'patient_id'; the file has 'id', 'time', 'code'"]),
    ("patient_id,time,code\n1,5,a\n", "patient_id,end\n1,3\n",
     ["ev.csv: line 2, column 'time': state entered at 5 days, after the end of follow-up"]),
    ("patient_id,time,code\n1,2020-01-05,a\n", "patient_id,origin\n1,\n",
     ["base.csv: line 2, column 'origin': time empty is not a date"]),
    ("patient_id,time,code\n1,0,a\n", "patient_id,origin\n1,2020-01-01\n",
     ["base.csv: column 'origin': an origin date is only used with dated events"]),
    ("patient_id,time,code\n1,0,a,extra\n", "patient_id\n1\n",
     ["ev.csv: line 2: 4 fields but the header names 3 columns"]),
    ("patient_id,time,code\n1,0,a\n1,2,b,extra\n", "patient_id\n1\n",
     ["ev.csv: not readable as CSV", "line 3"]),
    ("", "patient_id\n1\n", ["ev.csv: the file is empty"]),
])
def test_malformed_tables_name_file_and_line_and_exit_2(tmp_path, capsys, events, baseline,
                                                         expected):
    ev = write(tmp_path / "ev.csv", events)
    base = write(tmp_path / "base.csv", baseline)
    with pytest.raises(DataError) as err:
        read_event_tables(ev, base)
    for text in expected:
        assert any(text in str(p) for p in err.value.problems), (text, err.value.problems)
    assert cli("datasets", "show", ev, "--baseline", base) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("carecourse: error:")
    assert all(text in captured.err for text in expected)
    assert "Traceback" not in captured.err


def test_bad_options(tmp_path, capsys):
    ev = write(tmp_path / "ev.csv", "patient_id,time,code\n1,0,a\n")
    base = write(tmp_path / "base.csv", "patient_id\n1\n")
    with pytest.raises(ConfigError, match="roles:"):
        TableColumns.parse("subject=pid")
    with pytest.raises(ConfigError, match="unknown time unit"):
        read_event_tables(ev, base, time_unit="fortnights")
    with pytest.raises(ConfigError, match="no such file"):
        read_event_tables(tmp_path / "missing.csv", base)
    with pytest.raises(ConfigError, match="unknown table format"):
        read_event_tables(write(tmp_path / "ev.xlsx", ""), base)
    with pytest.raises(DataError, match=r"missing column\(s\) 'visit'"):
        read_event_tables(ev, base, columns=TableColumns(value="visit"))
    assert cli("datasets", "show", ev) == 2
    assert "--baseline FILE" in capsys.readouterr().err
    assert cli("datasets", "show", ev, "--baseline", base, "--columns", "nope") == 2
    assert "ROLE=COLUMN" in capsys.readouterr().err
    assert cli("datasets", "show", "actg320", "--baseline", base) == 2
    assert "--baseline go(es) with an event table" in capsys.readouterr().err
    assert cli("datasets", "show", ev, "--baseline", base, "--reference-date",
               "2020-01-01") == 2
    assert "--reference-date goes with FHIR data" in capsys.readouterr().err


def test_show_summarises_an_event_table(tmp_path, capsys):
    ev = write(tmp_path / "ev.csv", "pid,t,state\n1,1,ill\n1,3,dead\n2,2,dead\n")
    base = write(tmp_path / "base.csv", "pid,age,arm\n1,30,0\n2,40,1\n3,50,1\n")
    assert cli("datasets", "show", ev, "--baseline", base, "--columns",
               "patient=pid,time=t,code=state", "--initial-state", "well",
               "--categorical", "arm") == 0
    out = capsys.readouterr().out
    assert "patients: 3   events: 3" in out
    assert "1  well -> ill" in out and "1  ill -> dead" in out and "1  well -> dead" in out
    assert "arm          categorical 1: 2, 0: 1" in out
