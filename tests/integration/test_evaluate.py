"""carecourse evaluate as a user runs it: a population simulated by carecourse run, counted
from birth, against a real event table counted from enrolment; and the inputs it refuses.

The study module enrols each patient 0-100 days after birth and makes it ill after an
exponential time of mean 300 days. The "real" table is drawn from the same law, so the
log-rank test of the time to illness holds its null (it rejects with probability 1e-4
at the threshold used). That the test finds a different course is tested in
tests/unit/learned/test_evaluate.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import run_cli as cli

STUDY = {
    "name": "study", "gmf_version": 2,
    "states": {
        "Initial": {"type": "Initial", "direct_transition": "Before"},
        "Before": {"type": "Delay", "distribution": {"kind": "UNIFORM", "parameters": {
            "low": 0, "high": 100}}, "unit": "days", "direct_transition": "Enrolled"},
        "Enrolled": {"type": "ConditionOnset", "codes": [
            {"system": "SNOMED-CT", "code": "9100001", "display": "Enrolled in study"}],
            "direct_transition": "Course"},
        "Course": {"type": "Delay", "distribution": {"kind": "EXPONENTIAL", "parameters": {
            "mean": 300}}, "unit": "days", "direct_transition": "Ill"},
        "Ill": {"type": "ConditionOnset", "codes": [
            {"system": "SNOMED-CT", "code": "9100002", "display": "ill"}],
            "direct_transition": "Terminal"},
        "Terminal": {"type": "Terminal"},
    },
}


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("evaluate")
    (root / "modules").mkdir()
    (root / "modules" / "study.json").write_text(json.dumps(STUDY))
    assert cli("run", "-p", 300, "-s", 1, "--age-range", "2-3", "--reference-date",
               "2024-06-30", "--years-of-history", 0, "--modules-dir", root / "modules",
               "--out", root / "run", "--no-progress") == 0
    return root / "run"


def real_tables(folder: Path, mean: float = 300, n: int = 400, seed: int = 5
                ) -> tuple[Path, Path]:
    """Enrolled patients who fall ill after an exponential time of ``mean`` days, followed
    for 200 to 400 days."""
    rng = np.random.default_rng(seed)
    ids = [f"r{i}" for i in range(n)]
    ill, end = rng.exponential(mean, n), rng.uniform(200, 400, n)
    seen = ill <= end
    folder.mkdir(exist_ok=True)
    events, base = folder / f"events{mean:g}.csv", folder / f"patients{mean:g}.csv"
    pd.DataFrame({"patient_id": np.array(ids)[seen], "time": ill[seen], "code": "ill"}) \
        .to_csv(events, index=False)
    pd.DataFrame({"patient_id": ids, "age": rng.uniform(0, 100 / 365.25, n),
                  "gender": rng.choice(["male", "female"], n), "end": end}) \
        .to_csv(base, index=False)
    return events, base


def evaluate(simulated: Path, events: Path, base: Path, out: Path, *extra: object) -> int:
    return cli("evaluate", "--real", events, "--real-baseline", base, "--initial-state",
               "enrolled", "--synthetic", simulated, "--origin-state", "Enrolled in study",
               "--holdout-fraction", 0.3, "--resamples", 200, "--out", out, "--no-progress",
               *extra)


def test_evaluate_a_simulated_population_against_a_real_table(simulated, tmp_path, capsys):
    events, base = real_tables(tmp_path / "real", mean=300)
    out = tmp_path / "report"
    assert evaluate(simulated, events, base, out) == 0
    text = capsys.readouterr().out
    assert "fidelity:" in text and "utility:" in text and "privacy:" in text
    assert sorted(p.name for p in out.iterdir()) == ["figures", "metrics.json", "report.html"]
    m = json.loads((out / "metrics.json").read_text())
    assert m["real_patients"] == 280 and m["holdout_patients"] == 120
    assert 290 <= m["synthetic_patients"] <= 300  # those who lived to enrol
    assert any("SNOMED-CT|9100002 -> ill" in n for n in m["notes"])  # matched by display
    f = m["fidelity"]
    assert f["covariates"] == ["age", "gender"] and f["follow_up"] <= 400
    (ill,) = f["time_to_state"]
    assert ill["state"] == "ill" and ill["synthetic_events"] > 100
    assert ill["logrank_p"] > 1e-4
    assert m["utility"]["outcome"] == "ill" and m["utility"]["tstr"] is not None
    assert m["privacy"]["mia_auc"] is not None
    page = (out / "report.html").read_text()
    assert "Enrolled in study" in page and "re-timed" in page


@pytest.mark.parametrize("change, message", [
    (("--origin-state", "nope"), "--origin-state 'nope' is not a state of the data"),
    (("--origin-state", None), "time 0 is birth"),
    (("--real-baseline", "only_x"), "no covariate in common"),
    (("--synthetic", "empty"), "no rows"),
    (("--holdout-fraction", "1.5"), "between 0 and 1"),
    (("--holdout", "x"), "not allowed with argument --holdout-fraction"),
    (("--outcome", "nope"), "--outcome 'nope' is neither a state"),
    (("--out", "a_file"), "exists and is not a folder"),
])
def test_inputs_that_cannot_be_compared_exit_2(simulated, tmp_path, capsys, change, message):
    events, base = real_tables(tmp_path, mean=300, n=60)
    only_x = tmp_path / "only_x.csv"
    only_x.write_text("patient_id,x\n" + "".join(f"r{i},1\n" for i in range(60)))
    empty = tmp_path / "empty.csv"
    empty.write_text("age,gender\n")
    (tmp_path / "a_file").write_text("keep me")
    args = {"--real": events, "--real-baseline": base, "--initial-state": "enrolled",
            "--synthetic": simulated, "--origin-state": "9100001",
            "--holdout-fraction": "0.3", "--out": tmp_path / "out"}
    flag, value = change
    if flag == "--holdout":
        args[flag] = value
    elif value is None:
        del args[flag]
    else:
        args[flag] = {"only_x": only_x, "empty": empty, "a_file": tmp_path / "a_file"} \
            .get(value, value)
    argv = [str(x) for k, v in args.items() for x in (k, v)]
    assert cli("evaluate", *argv, "--no-progress", "--resamples", 100) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing half-written
    assert (tmp_path / "a_file").read_text() == "keep me"
