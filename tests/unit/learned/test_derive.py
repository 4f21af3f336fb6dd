"""Deriving a module from event data: paths cut at the public bound, structures chosen by
noisy counts, stays with their censoring, and the GMF module that results."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from learned.derive import (
    START,
    build_module,
    dp_structure,
    fallback_probabilities,
    patient_paths,
    public_structure,
    stays,
    transition_counts,
)
from learned.events import make_event_data
from modules.extensions import uses_learned_keys
from modules.loader import load_module_file


def data_of(paths: dict[str, list[tuple[float, str]]], end: dict[str, float],
            initial: str | None = "well"):
    rows = [(p, t, s) for p, seq in paths.items() for t, s in seq]
    ev = pd.DataFrame(rows, columns=["patient_id", "time", "code"])
    base = pd.DataFrame({"patient_id": list(paths), "age": [50.0] * len(paths)})
    return make_event_data(ev, base, name="toy", origin="diagnosis", end=end,
                           initial_state=initial)


def test_paths_are_cut_after_the_allowed_transitions():
    data = data_of({"a": [(5.0, "ill"), (9.0, "well2"), (12.0, "ill2")], "b": []},
                   {"a": 20.0, "b": 7.0})
    cut = {p.patient: p for p in patient_paths(data, max_transitions=2)}
    assert [s for _, s in cut["a"].states] == ["well", "ill", "well2"]
    assert cut["a"].censored_at == 12.0   # the first transition left out
    assert cut["b"].states == ((0.0, "well"),) and cut["b"].censored_at == 7.0
    # Data without an initial state start in the pseudo-state.
    first = patient_paths(data_of({"a": [(5.0, "ill")]}, {"a": 9.0}, None), max_transitions=3)
    assert first[0].states == ((0.0, START), (5.0, "ill"))


def many(n_ill: int, n_dead: int, n_stay: int):
    paths = {f"i{k}": [(10.0 + k % 7, "ill")] for k in range(n_ill)}
    paths |= {f"d{k}": [(3.0, "ill"), (40.0 + k % 5, "death")] for k in range(n_dead)}
    paths |= {f"s{k}": [] for k in range(n_stay)}
    return data_of(paths, dict.fromkeys(paths, 100.0))


def test_noisy_counts_keep_frequent_transitions_and_drop_absent_ones():
    data = many(500, 400, 300)
    paths = patient_paths(data, max_transitions=2)
    assert transition_counts(paths) == {("well", "ill"): 900, ("ill", "death"): 400}
    states = ["well", "ill", "death"]
    candidates = [(a, b) for a in states for b in states if a != b and b != "well"]
    # Noise 10, threshold 3 noise deviations: a count of 400 fails, or one of 0 passes,
    # with probability below 1e-30 and 0.0013 (six candidates: below 1%).
    s = dp_structure(paths, "well", noise=10.0, rng=np.random.default_rng(7),
                     candidates=candidates, threshold=30.0)
    assert set(s.edges) == {("well", "ill"), ("ill", "death")}
    assert s.how == "dp" and s.exits == {"well": ("ill",), "ill": ("death",)}
    # Without public states, only what the data has is a candidate.
    s = dp_structure(paths, "well", noise=10.0, rng=np.random.default_rng(7),
                     candidates=None, threshold=30.0)
    assert set(s.noisy_counts) == {("well", "ill"), ("ill", "death")}


def test_transitions_out_of_death_and_unreachable_ones_are_dropped():
    s = public_structure("well", [("well", "ill"), ("death", "ill"), ("ill", "death")])
    assert s.edges == (("well", "ill"), ("ill", "death"))
    paths = patient_paths(many(0, 500, 0), max_transitions=2)
    s = dp_structure(paths, "well", noise=1.0, rng=np.random.default_rng(0),
                     candidates=[("ill", "death")], threshold=3.0)
    assert s.edges == ()   # "ill" is not reachable from "well" without well -> ill


def test_stays_end_by_a_modelled_exit_or_are_censored():
    data = data_of({"a": [(5.0, "ill"), (9.0, "death")], "b": [(4.0, "death")], "c": []},
                   {"a": 9.0, "b": 4.0, "c": 30.0})
    s = public_structure("well", [("well", "ill"), ("ill", "death")])
    got = {(v.patient, v.state): (v.days, v.exit)
           for v in stays(patient_paths(data, max_transitions=4), s, {})}
    assert got == {("a", "well"): (5.0, "ill"), ("a", "ill"): (4.0, "death"),
                   # well -> death is not modelled: censored when it happens
                   ("b", "well"): (4.0, None),
                   ("c", "well"): (30.0, None)}


def test_fallbacks_leave_within_the_horizon_as_often_as_the_model():
    probs = fallback_probabilities({"ill": 0.3, "death": 0.1}, max_bins=12)
    q = sum(probs.values())
    assert 1 - (1 - q) ** 12 == pytest.approx(0.4)
    assert probs["ill"] / probs["death"] == pytest.approx(3.0)


def test_the_derived_module_is_readable_gmf_with_learned_keys(tmp_path):
    s = public_structure("well", [("well", "SNOMED-CT|44054006"), ("well", "death"),
                                  ("SNOMED-CT|44054006", "death")])
    fallbacks = {"well": {"SNOMED-CT|44054006": 0.02, "death": 0.01},
                 "SNOMED-CT|44054006": {"death": 0.05}}
    spec = build_module("toy", s, fallbacks, model_path="models/toy/card.json", bin_days=30.0,
                        sources={"age": "age"}, remarks=["r"], start_age=40)
    states = spec["states"]
    assert states["SNOMED-CT|44054006"]["type"] == "ConditionOnset"
    assert states["death"]["type"] == "Death" and states["well"]["type"] == "SetAttribute"
    assert states["Start age"]["allow"]["quantity"] == 40
    wait = states["In well"]
    assert wait["learned_delay"] == {} and wait["learned_transition"]["state"] == "well"
    options = wait["learned_transition"]["fallback"]["distributed_transition"]
    assert [o["transition"] for o in options] == ["SNOMED-CT|44054006", "death", "In well"]
    assert sum(o["distribution"] for o in options) == pytest.approx(1.0)
    path = tmp_path / "toy.json"
    path.write_text(json.dumps(spec))
    module = load_module_file(path, check_models=False)
    assert uses_learned_keys(module.spec)
    assert set(module.graph.successors("In well")) == {"SNOMED-CT|44054006", "death",
                                                        "In well"}
