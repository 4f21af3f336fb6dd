"""Hybrid graphs: a module whose Delay draws its dwell time and exit from a hazard model
runs through the engine like any module, and reproduces the model's distribution.

The model's weights are set by hand, so its probabilities are known exactly. Tolerances
are binomial: with n patients an observed share of a probability p has standard error
sqrt(p(1-p)/n), and every check allows 4.5 of them (a chance below 1e-5 of failing by
sampling alone).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import learned.runtime  # noqa: F401  (registers the "hazard" kind)
from learned.covariates import Covariate
from learned.hazard import HazardModel, HazardSpec
from learned.modelfile import CARD_NAME, load_weights, model_section, save_model
from learned.runtime import HazardTables, load_tables
from modules.errors import ModuleError, ModuleValidationError, SimulationError
from modules.loader import load_library, validate_library
from simulator.engine import compile_library, compile_module
from tests.conftest import make_harness

N = 3000
SEX = Covariate("sex", "categorical", levels=("M", "F"))
SPEC = HazardSpec({"A": ("B", "C")}, bin_days=30.0, max_bins=6, covariates=("sex=F",),
                  bounds=((0.0, 1.0),))


def hand_made_model() -> HazardModel:
    """Per bin, a man stays with 0.7, leaves to B with 0.1 and to C with 0.2; a woman's
    B logit is 0.7 higher; in bin 2 the C logit is 1 higher (so the exit depends on the
    time in the state)."""
    model = HazardModel(SPEC)
    with torch.no_grad():
        model.linear.bias.copy_(torch.tensor([0.0, math.log(0.1 / 0.7), math.log(0.2 / 0.7)]))
        model.linear.weight[1, 0] = 0.7          # sex=F -> (A, B)
        model.linear.weight[2, 1 + 2] = 1.0      # bin 2 -> (A, C)
    return model


def onset(code: str, nxt: str) -> dict:
    return {"type": "ConditionOnset", "codes": [
        {"system": "SNOMED-CT", "code": code, "display": f"State {code}"}],
        "direct_transition": nxt}


def module_spec(*, model: str = "models/m/card.json", delay: dict | None = None,
                learned_delay: bool = True, **key: object) -> dict:
    wait = {"type": "Delay", **(delay or {"exact": {"quantity": 30, "unit": "days"}}),
            "learned_transition": {
                "model": model, "state": "A",
                "covariates": {"sex": {"attribute": "gender"}},
                "fallback": {"distributed_transition": [
                    {"distribution": 0.1, "transition": "B"},
                    {"distribution": 0.2, "transition": "C"},
                    {"distribution": 0.7, "transition": "Wait"}]},
                **key}}
    if learned_delay:
        wait["learned_delay"] = {}
    return {"name": "hybrid", "states": {
        "Initial": {"type": "Initial", "direct_transition": "A"},
        "A": onset("9100001", "Wait"),
        "Wait": wait,
        "B": onset("9100002", "Terminal"),
        "C": onset("9100003", "Terminal"),
        "D": onset("9100004", "Terminal"),
        "Terminal": {"type": "Terminal"}}}


@pytest.fixture(scope="module")
def library_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hybrid")
    save_model(root / "models" / "m", hand_made_model(), {"model": model_section(SPEC, [SEX])})
    (root / "hybrid.json").write_text(json.dumps(module_spec()))
    return root


def write_module(root: Path, spec: dict, name: str = "hybrid") -> Path:
    (root / f"{name}.json").write_text(json.dumps(spec))
    return root


@pytest.fixture
def copy_dir(library_dir, tmp_path) -> Path:
    """A copy of the library (model included) that a test may change."""
    import shutil

    dst = tmp_path / "lib"
    shutil.copytree(library_dir, dst)
    return dst


def stays(root: Path, gender: str, n: int = N) -> list[tuple[float, str]]:
    """(days in Wait, the state after it) for n patients through the module."""
    lib = load_library(root)
    programs = compile_library(lib)
    out = []
    for i in range(n):
        h = make_harness(programs, gender=gender, seed=1000 * (gender == "F") + i)
        run = h.start("hybrid")
        h.run_until(h.env.now + 100 * 365.0)
        names = [row[0] for row in run.history]
        k = names.index("Wait")
        out.append((run.history[k][2] - run.history[k][1], names[k + 1]))
    return out


def expected(tables: HazardTables, x: tuple[float, ...]) -> tuple[dict[str, float], float]:
    """P(each exit), counting the tail past the last bin, and P(leaving in bin 0)."""
    h = tables.hazards("A", x)
    alive, p = 1.0, np.zeros(2)
    for row in h:
        p += alive * row[1:]
        alive *= row[0]
    p += alive * h[-1, 1:] / (1 - h[-1, 0])
    return dict(zip(("B", "C"), p.tolist(), strict=True)), 1 - h[0, 0]


def within(observed: int, n: int, p: float) -> bool:
    return abs(observed / n - p) <= 4.5 * math.sqrt(p * (1 - p) / n)


def test_numpy_tables_give_the_torch_model_hazards(library_dir):
    tables = load_tables(library_dir / "models" / "m" / CARD_NAME)
    model = hand_made_model()
    for x in ((0.0,), (1.0,)):
        assert np.allclose(tables.hazards("A", x), model.hazards("A", x), atol=1e-6)
        assert tables.exit_distribution("A", x) == pytest.approx(
            model.exit_distribution("A", x), abs=1e-6)


@pytest.mark.parametrize("gender", ["M", "F"])
def test_a_learned_delay_and_transition_reproduce_the_model(library_dir, gender):
    tables = load_tables(library_dir / "models" / "m" / CARD_NAME)
    x = tuple(SEX.encode(gender))
    probs, first_bin = expected(tables, x)
    got = stays(library_dir, gender)
    assert within(sum(e == "B" for _, e in got), N, probs["B"])
    assert within(sum(d <= 30.0 for d, _ in got), N, first_bin)
    # The exit depends on the time in the state: in bin 2, C takes its bin-2 share.
    h = tables.hazards("A", x)[2]
    in_bin_2 = [e for d, e in got if 60.0 < d <= 90.0]
    assert within(sum(e == "C" for e in in_bin_2), len(in_bin_2), h[2] / (h[1] + h[2]))
    # Every stay ends inside a bin, never on the edge below it.
    assert all(d > 0 and tables.bin_of(d) == math.ceil(d / 30.0) - 1 for d, _ in got)


def test_after_a_rule_delay_the_exit_is_the_models_for_that_time(copy_dir):
    """A plain 75-day Delay (bin 2) with a learned transition: the exit follows the
    model's bin-2 hazards."""
    write_module(copy_dir, module_spec(delay={"exact": {"quantity": 75, "unit": "days"}},
                                       learned_delay=False))
    tables = load_tables(copy_dir / "models" / "m" / CARD_NAME)
    h = tables.hazards("A", (0.0,))[2]
    got = stays(copy_dir, "M", 1500)
    assert {d for d, _ in got} == {75.0}
    assert within(sum(e == "C" for _, e in got), 1500, h[2] / (h[1] + h[2]))


def test_learned_fallback_runs_the_gmf_fallback_without_the_model(copy_dir):
    (copy_dir / "models" / "m" / CARD_NAME).unlink()
    with pytest.raises(ModuleValidationError):
        load_library(copy_dir)
    lib = load_library(copy_dir, check_models=False)
    programs = compile_library(lib, use_fallbacks=True)
    n, leave_b = 1500, 0
    for i in range(n):
        h = make_harness(programs, seed=i)
        run = h.start("hybrid")
        h.run_until(h.env.now + 100 * 365.0)
        leave_b += [r[0] for r in run.history][-2] == "B"
    assert within(leave_b, n, 1 / 3)   # 0.1 / (0.1 + 0.2)


def problems_of(root: Path) -> str:
    _lib, errors, _warnings = validate_library(root)
    return "\n".join(str(e) for e in errors)


def test_a_missing_model_names_file_state_and_json_path(copy_dir, tmp_path, capsys):
    from tests.integration.test_cli import FIXED, run_cli

    write_module(copy_dir, module_spec(model="models/gone/card.json"))
    text = problems_of(copy_dir)
    assert str(copy_dir / "hybrid.json") in text
    assert "states.Wait.learned_transition.model" in text
    assert "states.Wait.learned_delay.model" in text
    assert "models/gone/card.json" in text and "not found" in text
    # carecourse run: one message, exit status 2, no output.
    assert run_cli("run", "-p", 2, "--modules-dir", copy_dir, "--out", tmp_path / "o",
                   *FIXED) == 2
    err = capsys.readouterr().err
    assert "states.Wait.learned_transition.model" in err and "Traceback" not in err
    assert not (tmp_path / "o" / "csv").exists()


@pytest.mark.parametrize("change, needle", [
    ({"state": "Z"}, "has no state 'Z'"),
    ({"fallback": {"distributed_transition": [
        {"distribution": 0.5, "transition": "B"},
        {"distribution": 0.5, "transition": "D"}]}}, "the fallback to B, D"),
    ({"exits": {"X": "D"}}, "has no exit(s) X"),
    ({"covariates": {"age": "age"}}, "has no covariate 'age'"),
    ({"covariates": {"sex": {"attribute": 3}}}, "must be"),
    ({"kind": "other"}, "asks for kind 'other'"),
])
def test_a_mismatched_model_is_an_error(copy_dir, change, needle):
    spec = module_spec()
    spec["states"]["Wait"]["learned_transition"].update(change)
    write_module(copy_dir, spec)
    assert needle in problems_of(copy_dir)


def test_weights_that_do_not_match_their_card_are_refused(copy_dir):
    weights = copy_dir / "models" / "m" / "weights.pt"
    torch.save({k: v + 1 for k, v in hand_made_model().state_dict().items()}, weights)
    assert "does not match its card" in problems_of(copy_dir)
    with pytest.raises(ModuleError, match="SHA-256 differs"):
        load_weights(copy_dir / "models" / "m" / CARD_NAME)


class NotATensor:
    pass


def test_weights_are_read_with_weights_only(copy_dir):
    folder = copy_dir / "models" / "m"
    state = torch.load(folder / "weights.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    # A file holding an object is refused, even when its card vouches for it.
    torch.save({"linear.weight": NotATensor()}, folder / "weights.pt")
    card = json.loads((folder / CARD_NAME).read_text())
    card["weights_sha256"] = hashlib.sha256((folder / "weights.pt").read_bytes()).hexdigest()
    (folder / CARD_NAME).write_text(json.dumps(card))
    with pytest.raises(ModuleError, match="not a state_dict of tensors"):
        load_weights(folder / CARD_NAME)


def test_an_unregistered_kind_is_an_error_naming_the_place(copy_dir):
    spec = module_spec(kind="unregistered")
    write_module(copy_dir, spec)
    lib, _errors, _ = validate_library(copy_dir, check_models=False)
    with pytest.raises(ModuleError, match=r"states\.Wait\.learned_transition: learned model "
                                          r"kind 'unregistered' is not registered.*"
                                          r"--learned-fallback"):
        compile_module(lib.get("hybrid"), lib)


@pytest.mark.parametrize("source, needle", [
    ({"attribute": "not_set"}, "attribute 'not_set', which is not set"),
    ({"attribute": "gender", "values": {"F": "female"}}, "'female' is not one of the levels"),
])
def test_covariates_the_model_cannot_read_are_errors(copy_dir, source, needle):
    spec = module_spec(covariates={"sex": source})
    write_module(copy_dir, spec)
    programs = compile_library(load_library(copy_dir))
    h = make_harness(programs, gender="F")
    h.start("hybrid")
    with pytest.raises(SimulationError, match=needle):
        h.run_until(h.env.now + 365.0)


def test_a_default_stands_in_for_a_missing_attribute(copy_dir):
    spec = module_spec(covariates={"sex": {"attribute": "not_set", "default": "F"}})
    write_module(copy_dir, spec)
    programs = compile_library(load_library(copy_dir))
    h = make_harness(programs, gender="M")
    run = h.start("hybrid")
    h.run_until(h.env.now + 100 * 365.0)
    assert [r[0] for r in run.history][-1] == "Terminal"


def test_same_bytes_with_one_or_two_processes(library_dir, tmp_path):
    from tests.integration.test_cli import FIXED, digest, rows, run_cli

    a, b = tmp_path / "a", tmp_path / "b"
    common = ("run", "-p", 20, "-s", 5, "--modules-dir", library_dir, "--age-range", "0-2",
              *FIXED)
    assert run_cli(*common, "--out", a, "--processes", 1) == 0
    assert run_cli(*common, "--out", b, "--processes", 2) == 0
    assert digest(a) == digest(b)
    codes = {r["CODE"] for r in rows(a, "conditions")}
    assert "9100001" in codes and codes & {"9100002", "9100003"}


def test_the_fallbacks_load_neither_learned_nor_torch(library_dir, tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = ("import sys; from simulator.cli import main; "
            f"rc = main(['run', '-p', '3', '--modules-dir', {str(library_dir)!r}, '--out', "
            f"{str(tmp_path / 'out')!r}, '--learned-fallback', '--no-progress']); "
            "print(rc, sorted(m for m in ('learned', 'torch', 'opacus') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "0 []"
