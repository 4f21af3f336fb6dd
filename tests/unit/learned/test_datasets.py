"""The built-in real data sets: documented sizes, states and transitions, and the
``carecourse datasets`` command."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

import learned.datasets
from learned.datasets import (
    DatasetInfo,
    dataset_names,
    get_dataset,
    load_dataset,
    register_dataset,
)
from modules.errors import ConfigError
from simulator.cli import main

pytest.importorskip("sksurv")
pytest.importorskip("lifelines")


def cli(*args: object) -> int:
    try:
        return main([str(a) for a in args])
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.fixture(scope="module", params=dataset_names())
def loaded(request):
    return get_dataset(request.param), load_dataset(request.param)


def test_docstring_examples_run():
    assert doctest.testmod(learned.datasets).failed == 0


def test_every_data_set_is_documented_and_consistent(loaded):
    info, data = loaded
    assert data.patients == info.patients
    assert data.initial_state == info.initial_state
    assert set(data.states()) <= set(info.states)
    assert list(data.baseline.columns) == list(info.covariates)
    other = set(data.events.loc[data.events["kind"] != "state", "code"])
    assert other <= set(info.other_events)
    assert data.time_unit == info.time_unit == "days"
    assert info.source and info.package and info.origin and info.title
    ev = data.events
    assert (ev["time"] >= 0).all() and np.isfinite(data.end.to_numpy()).all()
    # every patient's states are in time order and none comes after follow-up
    states = ev[ev["kind"] == "state"]
    assert (states["time"].to_numpy()
            <= data.end.reindex(states["patient_id"]).to_numpy()).all()


# Sizes and counts as the data sets' documentation gives them: ACTG 320 (scikit-survival:
# 1,151 patients, 96 AIDS-defining events or deaths, 26 deaths), ACTG 175 (2,139 patients,
# 521 failures; CD4 at week 96 missing for 797), GBSG-2 lymph node (686 patients, 299
# recurrences or deaths, 171 deaths), Stanford (103 patients, 69 transplants, 75 deaths).
EXPECTED = {
    "actg320": ({("randomized", "aids"): 79, ("randomized", "death"): 17, ("aids", "death"): 9},
                {"randomized": 1055, "aids": 70, "death": 26}),
    "actg175": ({("randomized", "failure"): 521}, {"randomized": 1618, "failure": 521}),
    "lymph_node": ({("diagnosed", "recurrence"): 278, ("recurrence", "death"): 150,
                    ("diagnosed", "death"): 21},
                   {"diagnosed": 387, "recurrence": 128, "death": 171}),
    "stanford_heart": ({("waiting", "transplant"): 69, ("transplant", "death"): 45,
                        ("waiting", "death"): 30},
                       {"waiting": 4, "transplant": 24, "death": 75}),
}


def test_transitions_and_final_states(loaded):
    info, data = loaded
    transitions, finals = EXPECTED[info.name]
    s = data.summary()
    assert s.transitions == transitions
    assert s.final_states == finals
    assert sum(finals.values()) == info.patients


def test_actg320_endpoints_match_the_source():
    from sksurv.datasets import load_aids
    _, y = load_aids(endpoint="aids")
    _, yd = load_aids(endpoint="death")
    data = load_dataset("actg320")
    composite = data.events.groupby("patient_id")["time"].min()
    assert len(composite) == y["censor"].sum() == 96
    assert (data.events["code"] == "death").sum() == yd["censor_d"].sum() == 26
    # the arms: 577 control (ZDV + 3TC), 574 with indinavir
    assert data.baseline["tx"].value_counts().to_dict() == {"0": 577, "1": 574}


def test_actg175_arms_and_cd4_schedule():
    data = load_dataset("actg175")
    assert data.baseline["arms"].value_counts().to_dict() == {"3": 561, "0": 532, "2": 524,
                                                              "1": 522}
    cd4 = data.events[data.events["code"] == "cd4"]
    assert cd4.groupby("time").size().to_dict() == {0.0: 2139, 140.0: 2139, 672.0: 2139 - 797}
    assert cd4["value"].notna().all()


def test_registry():
    with pytest.raises(ValueError, match="already registered"):
        register_dataset(get_dataset("actg320"))
    with pytest.raises(ConfigError, match="unknown data set 'nope'; built-in: actg320"):
        get_dataset("nope")
    assert isinstance(get_dataset("stanford_heart"), DatasetInfo)


def test_datasets_lists_them(capsys):
    assert cli("datasets") == 0
    out = capsys.readouterr().out
    for name in dataset_names():
        info = get_dataset(name)
        assert f"{name}: {info.title}" in out
        assert f"{info.patients} patients" in out
    assert "states: randomized, aids, death" in out and "N Engl J Med 1997" in " ".join(out.split())
    assert cli("datasets", "list") == 0
    assert capsys.readouterr().out == out


def test_datasets_show(capsys):
    assert cli("datasets", "show", "lymph_node") == 0
    out = capsys.readouterr().out
    assert "patients: 686" in out
    assert "278  diagnosed -> recurrence" in out and "150  recurrence -> death" in out
    assert "hormone" in out and "J Clin Oncol 1994" in " ".join(out.split())
    assert cli("datasets", "show", "nope") == 2
    err = capsys.readouterr().err
    assert "neither a built-in data set" in err and "actg175" in err


def test_a_missing_package_is_a_clear_error(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "lifelines" else real(name, *a))
    with pytest.raises(ConfigError, match=r"ships in the lifelines package.*carecourse\[learn\]"):
        load_dataset("actg175")


def test_run_does_not_load_the_learned_package(tmp_path):
    """The CLI imports learned inside the commands that need it (DESIGN.md): a plain run
    loads neither it nor pandas."""
    import subprocess
    import sys
    code = ("import sys; from simulator.cli import main; "
            f"main(['run', '-p', '1', '--out', {str(tmp_path / 'out')!r}, '--no-progress']); "
            "print(sorted(m for m in ('learned', 'pandas', 'sksurv', 'lifelines') "
            "if m in sys.modules))")
    from tests.conftest import ROOT
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"
