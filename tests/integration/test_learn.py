"""``carecourse learn`` as a user runs it: a built-in data set in, a model card, weights, a
privacy ledger and a module out, which validates and runs; the budget refuses; bad input
is one clear message and exit status 2."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from tests.integration.test_cli import FIXED, run_cli


def learn(out, ledger, *extra: object) -> int:
    return run_cli("learn", "--data", "stanford_heart", "--epsilon", 1, "--out", out,
                   "--ledger-dir", ledger, "--covariate", "age", "--covariate", "surgery",
                   "--epochs", 3, "--device", "cpu", "--no-progress", *extra)


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    root = tmp_path_factory.mktemp("learn")
    out, ledger = root / "out", root / "ledgers"
    assert learn(out, ledger) == 0
    return out, ledger


def test_learn_writes_module_weights_card_ledger_and_pictures(learned):
    out, ledger = learned
    model = out / "models" / "stanford_heart"
    assert sorted(p.name for p in out.iterdir()) == ["models", "stanford_heart.json"]
    assert sorted(p.name for p in model.iterdir()) == ["card.json", "curves.png",
                                                      "training.png", "weights.pt"]
    card = json.loads((model / "card.json").read_text())
    privacy = card["privacy"]
    assert 0.99 <= privacy["epsilon"] <= 1.0 and privacy["delta"] == 1e-5
    assert privacy["accountant"] == "rdp" and privacy["max_grad_norm"] == 5.0
    assert privacy["noise_multiplier"] > 0 and privacy["steps"] == 3
    assert privacy["sample_rate"] == 1.0   # 103 patients, one batch
    assert card["data"]["patients"] == 103 and card["data"]["rows"] > 0
    assert card["data"]["fingerprint"].startswith("sha256:")
    assert card["training"]["epochs"] == 3
    assert card["model"]["covariates"] == [
        {"name": "age", "kind": "numeric", "low": -40, "high": 20},
        {"name": "surgery", "kind": "categorical", "levels": ["0", "1"]}]
    assert set(card["model"]["exits"]) == {"waiting", "transplant"}
    assert card["metrics"]["epsilon_by_epoch"][-1] == pytest.approx(privacy["epsilon"])
    # Weights are a state_dict of tensors, readable with weights_only=True.
    state = torch.load(model / "weights.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    # The ledger of this data set holds the spend, completed, with what it released.
    (path,) = ledger.glob("sha256-*.json")
    doc = json.loads(path.read_text())
    assert doc["fingerprint"] == card["data"]["fingerprint"]
    (entry,) = doc["entries"]
    assert entry["status"] == "completed" and entry["epsilon"] == 1.0
    assert str(model / "card.json") in entry["outputs"]
    assert doc["total"]["epsilon"] == pytest.approx(privacy["epsilon"])


def test_the_derived_module_validates_draws_and_runs(learned, tmp_path):
    out, _ = learned
    module = json.loads((out / "stanford_heart.json").read_text())
    wait = module["states"]["In waiting"]
    assert wait["learned_transition"]["model"] == "models/stanford_heart/card.json"
    assert wait["learned_transition"]["covariates"]["age"] == {"age_plus": -48}
    assert run_cli("modules", "validate", out) == 0
    assert run_cli("modules", "graph", out / "stanford_heart.json", "--out",
                   tmp_path / "g.svg") == 0
    assert run_cli("run", "-p", 20, "--modules-dir", out, "--out", tmp_path / "run",
                   "--age-range", "40-60", *FIXED) == 0
    assert run_cli("run", "-p", 20, "--modules-dir", out, "--out", tmp_path / "fallback",
                   "--learned-fallback", *FIXED) == 0


def test_the_budget_refuses_before_training(learned, tmp_path, capsys):
    _, ledger = learned
    before = {p: p.read_bytes() for p in ledger.glob("*.json")}
    assert learn(tmp_path / "again", ledger, "--budget", 1.2) == 2
    err = capsys.readouterr().err
    assert "privacy budget exceeded" in err and "--budget 1.2" in err
    assert not (tmp_path / "again").exists()
    assert {p: p.read_bytes() for p in ledger.glob("*.json")} == before
    # A smaller run still fits, and the ledger composes the two in RDP.
    assert learn(tmp_path / "small", ledger, "--epsilon", 0.2, "--budget", 1.2) == 0
    (path,) = ledger.glob("sha256-*.json")
    doc = json.loads(path.read_text())
    assert len(doc["entries"]) == 2 and doc["total"]["epsilon"] < 1.2


@pytest.mark.parametrize("args, needle", [
    (("--covariate", "cd4"), "state its public bounds"),
    (("--covariate", "age=5"), "NAME=LOW:HIGH"),
    (("--covariate", "nope=0:1"), "no covariate(s) nope"),
    (("--epsilon", 0), "--epsilon must be positive"),
    (("--delta", 0.05), "not below 1/patients"),
    (("--epsilon", "inf", "--budget", 5), "no --budget allows"),
    (("--edges", "waiting"), "FROM>TO"),
    (("--edges", "transplant>death"), "no transition leaves the initial state 'waiting'"),
    (("--baseline", "x.csv"), "go(es) with an event table"),
])
def test_bad_options_are_one_message_and_exit_2(tmp_path, capsys, args, needle):
    assert learn(tmp_path / "out", tmp_path / "ledger", *args) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_an_existing_output_folder_is_refused(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert learn(tmp_path / "out", tmp_path / "ledger") == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]
    assert not (tmp_path / "ledger").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is there")
def test_cuda_without_a_gpu_is_refused(tmp_path, capsys):
    assert learn(tmp_path / "out", tmp_path / "ledger", "--device", "cuda") == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_a_dp_structure_from_an_event_table(tmp_path):
    """States given as public, transitions chosen by noisy counts: the frequent ones are
    kept, the one nobody made is not."""
    rng = np.random.default_rng(0)
    n = 1000
    rows, base = [], []
    for i in range(n):
        base.append((i, int(rng.integers(0, 2))))
        if i % 2:
            t = float(rng.exponential(200))
            rows.append((i, t, "ill"))
            if i % 4 == 1:
                rows.append((i, t + float(rng.exponential(100)), "dead"))
    pd.DataFrame(rows, columns=["patient_id", "time", "code"]).to_csv(tmp_path / "ev.csv",
                                                                       index=False)
    pd.DataFrame(base, columns=["patient_id", "male"]).assign(end=2000.0).to_csv(
        tmp_path / "base.csv", index=False)
    out = tmp_path / "out"
    assert run_cli("learn", "--data", tmp_path / "ev.csv", "--baseline", tmp_path / "base.csv",
                   "--initial-state", "well", "--states", "well,ill,dead", "--epsilon", 3,
                   "--covariate", "male=0,1", "--epochs", 2, "--out", out, "--ledger-dir",
                   tmp_path / "ledger", "--device", "cpu", "--no-progress") == 0
    card = json.loads((out / "models" / "ev" / "card.json").read_text())
    assert card["structure"]["how"] == "dp"
    assert {tuple(e) for e in card["structure"]["transitions"]} == {("well", "ill"),
                                                                    ("ill", "dead")}
    assert [m["name"] for m in card["privacy"]["mechanisms"]] == ["transition counts",
                                                                  "DP-SGD"]
    assert card["privacy"]["epsilon"] <= 3.0
    assert not math.isnan(card["structure"]["threshold"])
    assert run_cli("modules", "validate", out) == 0
