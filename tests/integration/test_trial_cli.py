"""``carecourse trial build`` and ``trial compare`` as a user runs them, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from simulator.cli import main

DATA = Path(__file__).resolve().parents[1] / "data" / "trial"


def run_cli(*args: object) -> int:
    try:
        return main([str(a) for a in args])
    except SystemExit as exc:
        return int(exc.code or 0)


def protocol_copy(tmp_path: Path, size: int, **replace: str) -> Path:
    text = (DATA / "protocol.yaml").read_text().replace("size: 200", f"size: {size}")
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "protocol.yaml"
    path.write_text(text.replace("file: baseline.csv", f"file: {DATA / 'baseline.csv'}")
                    .replace("modules_dir: modules", f"modules_dir: {DATA / 'modules'}"))
    return path


def real_arm(path: Path, n: int, mean_days: float, seed: int) -> Path:
    """A 'real' arm whose time to progression or death is exponential like the module's,
    with covariates drawn from the same table."""
    rng = np.random.default_rng(seed)
    base = pd.read_csv(DATA / "baseline.csv")
    rows = base[(base.age >= 18) & (base.age <= 75) & (base.hemophil == 0)]
    rows = rows.sample(n, replace=True, random_state=seed).drop(columns=["pid"])
    t = rng.exponential(mean_days, n)
    rows.assign(time=np.minimum(t, 365.0), event=(t <= 365.0).astype(int)).to_csv(
        path, index=False)
    return path


@pytest.fixture(scope="module")
def arm(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trial")
    out = tmp / "arm"
    assert run_cli("trial", "build", protocol_copy(tmp, 120), "--out", out,
                   "--no-progress") == 0
    return tmp, out


def test_build_then_compare_with_a_hybrid_analysis(arm, capsys):
    tmp, out = arm
    assert (out / "adsl.xpt").is_file() and (out / "fhir" / "researchStudy.json").is_file()
    real = real_arm(tmp / "real.csv", 120, 300.0, 1)
    trt = real_arm(tmp / "trt.csv", 150, 600.0, 2)
    report = tmp / "report"
    capsys.readouterr()
    assert run_cli("trial", "compare", "--synthetic", out, "--real", real, "--treatment", trt,
                   "--hybrid", "--out", report) == 0
    text = capsys.readouterr().out
    assert "HR synthetic vs real control" in text and "synthetic patients borrowed" in text
    assert sorted(p.name for p in report.iterdir()) == ["compare.json", "km.png",
                                                       "report.html", "smd.png"]
    figures = json.loads((report / "compare.json").read_text())
    assert figures["endpoint"] == "PFS" and figures["synthetic_n"] == 120
    # the same law on both sides: the synthetic-vs-real hazard ratio is unremarkable
    assert 0.5 < figures["hr_synth_vs_real"] < 2.0
    assert 0 <= figures["effective_borrowed"] <= 120
    html = (report / "report.html").read_text()
    for part in ("Table 1", "Kaplan-Meier", "Hazard ratios", "Hybrid control arm",
                 "no differential-privacy budget was spent", "data:image/png;base64,"):
        assert part in html, part
    assert "<script" not in html


def test_a_built_in_data_sets_control_arm_as_the_baseline_source(tmp_path, capsys):
    path = protocol_copy(tmp_path, 60, **{
        "source: {file:": "source: {dataset: actg320, where: {tx: 0}}\n  #",
        "  id: pid\n": "",
        "race: {column: race, values: {1: WHITE, 2: BLACK OR AFRICAN AMERICAN, 3: ASIAN}}":
            "race: {column: raceth, values: {1: WHITE, 2: BLACK OR AFRICAN AMERICAN, "
            "3: OTHER, 4: ASIAN, 5: AMERICAN INDIAN OR ALASKA NATIVE, 6: OTHER}}"})
    out = tmp_path / "arm"
    assert run_cli("trial", "build", path, "--out", out, "--no-progress") == 0
    text = capsys.readouterr().out
    assert "data set actg320" in text and "enrolled: 60" in text
    adsl = pd.read_csv(out / "adsl.csv")
    assert set(adsl["TX"]) == {0} and len(adsl) == 60  # the control arm only
    assert set(adsl["RACE"]) <= {"WHITE", "BLACK OR AFRICAN AMERICAN", "OTHER", "ASIAN",
                                 "AMERICAN INDIAN OR ALASKA NATIVE"}


@pytest.mark.parametrize("case", ["protocol", "module", "state", "out", "hybrid", "real",
                                  "synthetic"])
def test_bad_input_exits_2_with_one_message(case, arm, tmp_path, capsys):
    tmp, out = arm
    if case == "protocol":
        bad = tmp_path / "p.yaml"
        bad.write_text("name: x\narm: {size: -1}\n")
        args = ["trial", "build", bad, "--out", tmp_path / "o"]
        expect = "arm.size (line 2): must be at least 1"
    elif case == "module":
        args = ["trial", "build", protocol_copy(tmp_path, 5, **{
            "modules: [trial_course]": "modules: [trial_course, nope]"}), "--out", tmp_path / "o"]
        expect = "standard_of_care.modules: no module 'nope'"
    elif case == "state":
        args = ["trial", "build", protocol_copy(tmp_path, 5, **{"state: Randomized":
                                                                "state: Randomised"}),
                "--out", tmp_path / "o"]
        expect = "index.state: module 'trial_course' has no state 'Randomised'"
    elif case == "out":
        args = ["trial", "build", protocol_copy(tmp_path, 5), "--out", out]
        expect = "already exists and is not an empty folder"
    elif case == "hybrid":
        args = ["trial", "compare", "--synthetic", out, "--real", DATA / "baseline.csv",
                "--hybrid"]
        expect = "--hybrid needs --treatment"
    elif case == "real":
        args = ["trial", "compare", "--synthetic", out, "--real", DATA / "baseline.csv"]
        expect = "column 'time'"
    else:
        args = ["trial", "compare", "--synthetic", tmp_path, "--real", DATA / "baseline.csv"]
        expect = "not a trial build"
    capsys.readouterr()
    assert run_cli(*args) == 2
    err = capsys.readouterr().err
    assert err.startswith("carecourse: error:") and expect in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "o").exists()  # nothing half-written
