"""``carecourse trial build`` of a "DP baseline + DP learned course" arm, as a user runs it:
the build fits the baseline generator (charging the data's privacy ledger), draws eligible
patients conditionally, steps them through a module derived by ``carecourse learn``, and
lists every model card and the privacy spent in build.json and the report; a build that
would exceed ``--budget`` is refused before anything is fitted or written."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.integration.test_trial_cli import run_cli

PROTOCOL = """\
name: Learned course arm
seed: 3
arm: {{size: 30}}
baseline:
  source:
    fit:
      file: base.csv
      epsilon: 1
      delta: 1e-3
      columns:
        age: {{low: 20, high: 80, bins: 6}}
        sex: [1, 2]
        surgery: [0, 1]
        hemophil: [0, 1]
      settings: {{epochs: 5, components: 2}}
  age: age
  sex: {{column: sex, values: {{1: M, 2: F}}}}
  attributes: [surgery]
  conditions:
    - {{column: hemophil, equals: 1, code: {{system: SNOMED-CT, code: "28293008", display: Hemophilia}}}}
eligibility:
  inclusion:
    - {{condition_type: Age, operator: ">=", quantity: 40, unit: years}}
    - {{condition_type: Gender, gender: F}}
  exclusion:
    - name: hemophilia
      condition: {{condition_type: Active Condition, codes: [{{system: SNOMED-CT, code: "28293008"}}]}}
index: {{event: state, module: stanford_heart, state: waiting, start: 2024-01-01}}
follow_up: {{duration: {{quantity: 365, unit: days}}}}
standard_of_care: {{modules: [stanford_heart], modules_dir: {course}}}
endpoints:
  - {{paramcd: DTH, name: Death, type: time_to_event, events: [{{death: true}}]}}
"""


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    """A learned course (stanford_heart, 3 epochs), a covariate table, the protocol."""
    root = tmp_path_factory.mktemp("trial_learned")
    ledgers, course = root / "ledgers", root / "course"
    assert run_cli("learn", "--data", "stanford_heart", "--epsilon", 1, "--out", course,
                   "--ledger-dir", ledgers, "--covariate", "age", "--covariate", "surgery",
                   "--epochs", 3, "--device", "cpu", "--no-progress") == 0
    rng = np.random.default_rng(0)
    n = 120
    pd.DataFrame({"age": rng.uniform(25, 75, n).round(1), "sex": rng.integers(1, 3, n),
                  "surgery": rng.integers(0, 2, n),
                  "hemophil": (rng.random(n) < 0.3).astype(int)}).to_csv(
        root / "base.csv", index=False)
    protocol = root / "protocol.yaml"
    protocol.write_text(PROTOCOL.format(course=course))
    return root, protocol, ledgers, course


def test_a_dp_baseline_and_dp_course_arm_lists_its_models_and_budget(setting, capsys):
    root, protocol, ledgers, course = setting
    out = root / "arm"
    capsys.readouterr()
    assert run_cli("trial", "build", protocol, "--out", out, "--ledger-dir", ledgers,
                   "--budget", 2, "--no-progress") == 0
    text = capsys.readouterr().out
    assert "DP baseline generator fitted on" in text and "drawn conditionally on" in text
    record = json.loads((out / "build.json").read_text())
    consort = record["consort"]
    # Conditional sampling: no drawn patient fails a criterion the constraints express
    # (age, sex); only the exclusion, which they cannot express, rejects any, and the
    # counts add up.
    assert consort["enrolled"] == consort["eligible"] == 30
    assert set(consort["not_eligible"]) <= {"excluded: hemophilia"}
    assert consort["generated"] == 30 + consort["not_eligible"].get("excluded: hemophilia", 0)
    assert consort["constraints"] == {"age": [40.0, None], "sex": ["2"]}  # JSON: inf is null
    adsl = pd.read_csv(out / "adsl.csv")
    assert (adsl["AGE"] >= 40).all() and set(adsl["SEX"]) == {"F"}
    base = pd.read_csv(out / "baseline.csv")
    assert set(base["hemophil"].astype(str)) == {"0"}
    # Every model card, with its digest and privacy; the budget per data set.
    gen, hazard = record["learned"]["models"]
    assert gen["role"] == "baseline generator" and gen["path"] == "generator/card.json"
    assert gen["sha256"] == hashlib.sha256((out / gen["path"]).read_bytes()).hexdigest()
    assert 0.9 < gen["epsilon"] <= 1.0 and gen["delta"] == 1e-3 and gen["accountant"] == "rdp"
    card = course / "models" / "stanford_heart" / "card.json"
    assert hazard["role"] == "disease course" and Path(hazard["path"]) == card.resolve()
    assert hazard["sha256"] == hashlib.sha256(card.read_bytes()).hexdigest()
    assert 0.9 < hazard["epsilon"] <= 1.0 and hazard["delta"] == 1e-5
    privacy = {p["data"]: p for p in record["learned"]["privacy"]}
    assert set(privacy) == {"base", "stanford_heart"}  # two data sets, one model each
    assert privacy["base"]["epsilon"] == pytest.approx(gen["epsilon"])
    assert privacy["base"]["ledger"]["releases"] == 1
    assert privacy["stanford_heart"]["ledger"]["epsilon"] == pytest.approx(hazard["epsilon"])
    # The fit was charged to the table's ledger and completed with what it released.
    (doc,) = [json.loads(p.read_text()) for p in ledgers.glob("sha256-*.json")
              if json.loads(p.read_text())["data"] == "base"]
    (entry,) = doc["entries"]
    assert entry["status"] == "completed" and entry["epsilon"] == 1.0
    assert entry["mechanisms"][0]["noise_multiplier"] == pytest.approx(
        gen["mechanisms"][0]["noise_multiplier"])
    # The saved generator serves another build as it is: its card (naming its data set)
    # and the same budget are recorded, and nothing more is charged.
    again = root / "again.yaml"
    again.write_text(protocol.read_text().replace(
        protocol.read_text()[protocol.read_text().index("    fit:"):
                             protocol.read_text().index("  age: age")],
        f"    generator: {out / 'generator'}\n"))
    capsys.readouterr()
    assert run_cli("trial", "build", again, "--out", root / "arm2", "--ledger-dir", ledgers,
                   "--no-progress") == 0
    assert "DP baseline generator " + str(out / "generator") in capsys.readouterr().out
    second = json.loads((root / "arm2" / "build.json").read_text())["learned"]
    assert second["models"][0]["sha256"] == gen["sha256"]
    assert second["models"][0]["fingerprint"] == gen["fingerprint"]
    assert {p["data"]: p["ledger"]["releases"] for p in second["privacy"]} == {
        "base": 1, "stanford_heart": 1}
    # The report shows the budget and the cards.
    times = pd.DataFrame({"time": np.linspace(30, 365, 40), "event": [1, 0] * 20,
                          "age": 50.0})
    times.to_csv(root / "real.csv", index=False)
    assert run_cli("trial", "compare", "--synthetic", out, "--real", root / "real.csv",
                   "--out", root / "report") == 0
    html = (root / "report" / "report.html").read_text()
    for part in ("Model card 1: baseline generator", "Model card 2: disease course",
                 gen["sha256"], hazard["sha256"], "Privacy budget spent"):
        assert part in html, part


def test_a_fit_over_the_budget_is_refused_before_anything_is_written(setting, capsys):
    root, protocol, ledgers, _ = setting
    before = {p.name: p.read_text() for p in ledgers.glob("*.json")}
    out = root / "refused"
    capsys.readouterr()
    # The first test (or this one alone) leaves at most one release on the table.
    spent = any(json.loads(t)["data"] == "base" for t in before.values())
    assert run_cli("trial", "build", protocol, "--out", out, "--ledger-dir", ledgers,
                   "--budget", 1.2 if spent else 0.5, "--no-progress") == 2
    err = capsys.readouterr().err
    assert err.startswith("carecourse: error:") and "privacy budget exceeded" in err
    assert "baseline.source.fit" in err and "Traceback" not in err
    assert not out.exists()
    assert {p.name: p.read_text() for p in ledgers.glob("*.json")} == before


@pytest.mark.parametrize("case", ["missing generator", "budget without fit", "bad column"])
def test_bad_generator_input_exits_2_with_one_message(case, tmp_path, capsys):
    modules = Path(__file__).resolve().parents[1] / "data" / "trial" / "modules"
    text = PROTOCOL.format(course=modules).replace(
        "module: stanford_heart, state: waiting", "module: trial_course, state: Randomized"
    ).replace("modules: [stanford_heart]", "modules: [trial_course]")
    args: list[object] = []
    if case == "missing generator":
        text = text.replace(text[text.index("    fit:"):text.index("  age: age")],
                            "    generator: gone\n")
        expect = "baseline.source.generator: cannot load the generator"
    elif case == "budget without fit":
        text = text.replace(text[text.index("    fit:"):text.index("  age: age")],
                            "    generator: gone\n")
        args = ["--budget", 1]
        expect = "--budget limits what baseline.source.fit spends"
    else:
        text = text.replace("  attributes: [surgery]", "  attributes: [surgery, cd4]")
        expect = "baseline.attributes[1] (line 18): column 'cd4' is not among the generator's"
    (tmp_path / "p.yaml").write_text(text)
    capsys.readouterr()
    assert run_cli("trial", "build", tmp_path / "p.yaml", "--out", tmp_path / "o",
                   "--ledger-dir", tmp_path / "ledgers", *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("carecourse: error:") and expect in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "o").exists() and not (tmp_path / "ledgers").exists()
