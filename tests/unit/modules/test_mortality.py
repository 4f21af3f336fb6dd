"""module_deaths.csv: the deaths a library's modules cause, taken out of background mortality
so that they are not counted twice. Reading (every malformed value named by line and
column), validation through the loader and the CLI, the cause-deleted life table, and the
engine using it."""

from __future__ import annotations

import datetime as dt
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from modules.errors import ModuleValidationError
from modules.loader import default_library_path, load_library, validate_library, validate_paths
from modules.mortality import DEATHS_FILE, DeathShare, load_death_shares
from simulator import facts
from simulator.lifecycle import background_survival, sample_age_at_death
from simulator.population import RunConfig, _prepare, simulate_patient

HEADER = "module,sex,age_low,age_high,share,deaths\n"


def _library(tmp_path: Path, shares: str) -> Path:
    """A library of one module that does nothing for a lifetime, with ``shares``."""
    root = tmp_path / "lib"
    root.mkdir()
    (root / "idle.json").write_text(json.dumps({"name": "Idle", "states": {
        "Initial": {"type": "Initial", "direct_transition": "Wait"},
        "Wait": {"type": "Guard", "allow": {"condition_type": "Age", "operator": ">", "quantity": 200,
                                             "unit": "years"}, "direct_transition": "Done"},
        "Done": {"type": "Terminal"}}}))
    (root / DEATHS_FILE).write_text(shares)
    return root


def test_reads_shares_by_module_and_skips_comments(tmp_path):
    path = tmp_path / DEATHS_FILE
    path.write_text("# measured by a benchmark\n" + HEADER + "a,M,60,69,0.05,12\na,F,70,79,0.1,30\n")
    shares, errors, warnings = load_death_shares(path, {"a"})
    assert errors == [] and warnings == []
    assert shares == {"a": (DeathShare("M", 60, 69, 0.05), DeathShare("F", 70, 79, 0.1))}


def test_every_malformed_value_is_reported_with_its_line_and_column(tmp_path):
    path = tmp_path / DEATHS_FILE
    path.write_text(HEADER + "a,X,60,69,0.05,1\na,M,sixty,69,0.05,1\na,M,70,60,0.05,1\n"
                    "a,M,60,69,1.5,1\na,M,60,69\nghost,M,60,69,0.1,1\n")
    _shares, errors, warnings = load_death_shares(path, {"a"})
    places = [e.place for e in errors]
    assert places == ["line 2, column sex", "line 3, column age_low", "line 4, columns age_low/age_high",
                      "line 5, column share", "line 6"]
    assert all(e.file == str(path) for e in errors)
    assert [w.place for w in warnings] == ["line 7, column module"]


def test_a_wrong_header_is_one_clear_error(tmp_path):
    path = tmp_path / DEATHS_FILE
    path.write_text("module,sex,share\n")
    _shares, errors, _ = load_death_shares(path, set())
    assert len(errors) == 1 and "expected module,sex,age_low,age_high,share,deaths" in errors[0].message


def test_the_loader_and_modules_validate_report_a_malformed_file(tmp_path, capsys):
    from simulator.cli import main

    root = _library(tmp_path, HEADER + "idle,M,60,69,abc,1\n")
    with pytest.raises(ModuleValidationError, match="column share"):
        load_library(root)
    _count, errors, _ = validate_paths([root])
    assert [e.place for e in errors] == ["line 2, column share"]
    assert main(["modules", "validate", str(root)]) == 1
    assert f"{DEATHS_FILE}: line 2, column share" in capsys.readouterr().out


def test_the_embedded_library_has_valid_shares_for_its_own_modules():
    lib, errors, warnings = validate_library(default_library_path())
    assert errors == [] and warnings == []
    assert lib.death_shares, "the embedded library should say which deaths its modules cause"
    assert set(lib.death_shares) <= set(lib.top_level())


def test_without_shares_the_background_is_the_life_table():
    for sex in ("M", "F"):
        q = np.array([facts.annual_death_probability(a, sex) for a in range(101)])
        q[-1] = 1.0
        expected = np.concatenate([[1.0], np.cumprod(1.0 - q)])
        assert np.allclose(background_survival(sex, ()), expected)


def test_a_share_scales_the_background_hazard_at_its_ages_only():
    share = (DeathShare("F", 60, 69, 0.25),)
    base, deleted = background_survival("F", ()), background_survival("F", share)
    for a in range(100):
        h_base = -math.log(base[a + 1] / base[a])
        h_new = -math.log(deleted[a + 1] / deleted[a])
        assert h_new == pytest.approx(h_base * (0.75 if 60 <= a <= 69 else 1.0), rel=1e-9)
    assert np.allclose(background_survival("M", share), background_survival("M", ()))


def test_removed_background_deaths_show_in_life_expectancy():
    rng = np.random.default_rng(5)
    u = rng.random(20000)
    share = (DeathShare("M", 50, 130, 0.3),)
    before = np.array([sample_age_at_death(x, "M") for x in u])
    after = np.array([sample_age_at_death(x, "M", share) for x in u])
    assert np.all(after >= before - 1e-9)  # same draws: a lower hazard can only delay death
    assert after.mean() - before.mean() > 1.0


def test_the_engine_takes_the_running_modules_shares_out(tmp_path):
    # Shares of 1 at every age leave no background mortality below 100 (the open interval
    # of the table still ends every life): patients aged 85-95, who would mostly be dead by
    # the end date under the life table, all live.
    lines = "".join(f"idle,{s},0,130,1,0\n" for s in ("M", "F"))
    root = _library(tmp_path, HEADER + lines)
    config = RunConfig(population=40, seed=3, age_range=(85, 95), reference_date=dt.date(2025, 1, 1),
                       modules_dir=root)
    programs, top = _prepare(config)
    people = [simulate_patient(i, config, programs, top) for i in range(40)]
    assert all(p.death is None or p.death > config.end for p in people)
    # the same library without the file: most die before the end date
    shutil.move(str(root / DEATHS_FILE), str(tmp_path / "away.csv"))
    config = RunConfig(population=40, seed=3, age_range=(85, 95), reference_date=dt.date(2025, 1, 1),
                       modules_dir=root)
    programs, top = _prepare(config)
    dead = sum(1 for i in range(40) if (p := simulate_patient(i, config, programs, top)).death is not None
               and p.death <= config.end)
    assert dead >= 20  # about two thirds of people born 85-95 years ago are dead (2021 table)


def test_module_deaths_are_attributed_to_their_top_level_module(tmp_path):
    root = tmp_path / "lib"
    root.mkdir()
    (root / "fatal.json").write_text(json.dumps({"name": "Fatal", "states": {
        "Initial": {"type": "Initial", "direct_transition": "Die"},
        "Die": {"type": "Death", "codes": [{"system": "SNOMED-CT", "code": "22298006",
                                            "display": "Myocardial infarction (disorder)"}],
                "direct_transition": "Dead"},
        "Dead": {"type": "Terminal"}}}))
    config = RunConfig(population=1, seed=1, age_range=(30, 30), reference_date=dt.date(2025, 1, 1),
                       modules_dir=root)
    programs, top = _prepare(config)
    p = simulate_patient(0, config, programs, top)
    assert p.death_module == "fatal"
